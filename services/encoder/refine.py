"""What latent refinement ("low prior" candidates) needs from the image side.

The generator's `low_prior` strategy starts from the e4e code and optimizes it so that the
synthesized image gets closer to the inspiration image, with a weaker pull toward W. It takes a
`loss_fn(image, target) -> scalar`; this module provides that loss and the target preprocessing:

* `prepare_target`: the inspiration image as a [1,3,S,S] tensor in [-1,1] (e4e's preprocessing).
* `ReconstructionLoss`: pixel distance + a multi-scale (image pyramid) term + an optional
  perceptual term computed on the e4e IR-SE backbone's features. That backbone ships inside the
  e4e checkpoint we already load (it was initialised from an ArcFace face-recognition network),
  so an identity-aware feature extractor is available offline, without extra downloads.

Pure PyTorch; differentiable with respect to `image`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from services.encoder.model import Encoder, Encoder4Editing, EncoderInputError, ImageLike, preprocess

PixelDistance = Literal["l2", "l1"]


def resize_image(image: Tensor, size: int) -> Tensor:
    """Differentiable resize of [B,C,H,W] to size x size.

    Integer shrink factors use box averaging (what pSp's AdaptiveAvgPool2d does for 1024 -> 256);
    other factors use antialiased bilinear so that downsampling does not alias.
    """
    height, width = image.shape[-2:]
    if (height, width) == (size, size):
        return image
    if height == width and height > size and height % size == 0:
        return F.avg_pool2d(image, kernel_size=height // size)
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def prepare_target(image: ImageLike | Tensor, size: int) -> Tensor:
    """An aligned target face -> float32 [1,3,size,size] in [-1,1].

    PIL/numpy images go through e4e's preprocessing (Pillow bilinear resize, /255, (x-0.5)/0.5).
    A tensor is taken to be in [-1,1] already ([3,H,W] or [1,3,H,W]) and is only resized.
    """
    if isinstance(image, Tensor):
        if image.ndim == 3:
            image = image.unsqueeze(0)
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise EncoderInputError(f"target tensor must be [3,H,W] or [1,3,H,W], got {tuple(image.shape)}")
        return resize_image(image.detach().to(torch.float32), size)
    return preprocess([image], size=size)


class IdentityFeatures(nn.Module):
    """Frozen e4e IR-SE backbone: image in [-1,1] -> its three pyramid feature maps (c1, c2, c3)."""

    def __init__(self, net: Encoder4Editing) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    @classmethod
    def from_encoder(cls, encoder: Encoder) -> IdentityFeatures:
        return cls(encoder.net)

    @property
    def input_size(self) -> int:
        return self.net.config.input_size

    def train(self, mode: bool = True) -> IdentityFeatures:
        # BatchNorm must keep its running statistics even if a caller puts the loss in train mode.
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, image: Tensor) -> list[Tensor]:
        return list(self.net.backbone_features(resize_image(image, self.input_size)))


def normalized_feature_distance(features_a: Sequence[Tensor], features_b: Sequence[Tensor]) -> Tensor:
    """LPIPS-style distance without learned weights: unit-normalise each location's channel vector,
    then average the squared differences (summed over channels) over space and levels."""
    distances = []
    for a, b in zip(features_a, features_b, strict=True):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-8)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-8)
        distances.append((a - b).square().sum(dim=1).mean())
    return torch.stack(distances).mean()


def identity_similarity(features_a: Sequence[Tensor], features_b: Sequence[Tensor]) -> Tensor:
    """Per-sample cosine similarity `[B]` of two images' backbone features: the cosine of each
    location's channel vectors, averaged over space and the three levels. It is what the
    perceptual term optimises (for one sample, `1 − normalized_feature_distance / 2`)."""
    levels = [
        F.cosine_similarity(a, b, dim=1, eps=1e-8).mean(dim=(1, 2))
        for a, b in zip(features_a, features_b, strict=True)
    ]
    return torch.stack(levels).mean(dim=0)


class ReconstructionLoss(nn.Module):
    """loss(image, target) -> scalar: how far a synthesized image is from the target face.

    image: [B,3,H,W] in [-1,1] (e.g. the generator output, any square size).
    target: [1 or B,3,h,w] in [-1,1] (from `prepare_target`). When the sizes differ, both are
    brought to the smaller one, so a 1024 synthesis can be compared with a 256 target.

    Terms (see `terms()`): `pixel` (mean L2 or L1), `multiscale` (the same distance on a 2x,
    4x, ... box-downsampled pyramid: it weighs colour and layout over texture and gives smoother
    gradients early in the optimization), `perceptual` (identity features, only when an
    extractor is given).
    """

    def __init__(
        self,
        *,
        pixel: PixelDistance = "l2",
        pixel_weight: float = 1.0,
        multiscale_weight: float = 1.0,
        levels: int = 3,
        perceptual: IdentityFeatures | None = None,
        perceptual_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if pixel not in ("l2", "l1"):
            raise ValueError(f"pixel must be 'l2' or 'l1', got {pixel!r}")
        if levels < 0:
            raise ValueError(f"levels must be >= 0, got {levels}")
        self.pixel = pixel
        self.pixel_weight = pixel_weight
        self.multiscale_weight = multiscale_weight
        self.levels = levels
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight
        # The target is fixed over an optimization: its features are computed once, not per step.
        self._target_features: tuple[Tensor, tuple, list[Tensor]] | None = None

    @classmethod
    def for_encoder(cls, encoder: Encoder | None, **kwargs: float | int | str) -> ReconstructionLoss:
        """The loss with the perceptual term on `encoder`'s backbone, or pixel + multi-scale when None."""
        perceptual = IdentityFeatures.from_encoder(encoder) if encoder is not None else None
        return cls(perceptual=perceptual, **kwargs)  # type: ignore[arg-type]

    def _distance(self, a: Tensor, b: Tensor) -> Tensor:
        return (a - b).square().mean() if self.pixel == "l2" else (a - b).abs().mean()

    def _align(self, image: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        if image.ndim != 4 or image.shape[1] != 3 or target.ndim != 4 or target.shape[1] != 3:
            raise EncoderInputError(
                f"loss expects [B,3,H,W] image and target, got {tuple(image.shape)} and {tuple(target.shape)}"
            )
        target = target.to(device=image.device, dtype=image.dtype)
        size = min(image.shape[-1], target.shape[-1])
        image, target = resize_image(image, size), resize_image(target, size)
        if target.shape[0] != image.shape[0]:
            if target.shape[0] != 1:
                raise EncoderInputError(
                    f"target batch {target.shape[0]} does not match image batch {image.shape[0]}"
                )
            target = target.expand_as(image)
        return image, target

    def terms(self, image: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Each unweighted term, for logging and tests."""
        original_target = target
        image, target = self._align(image, target)
        terms = {"pixel": self._distance(image, target)}
        pyramid = []
        small_image, small_target = image, target
        for _ in range(self.levels):
            if small_image.shape[-1] < 8:  # below 8 px a level carries no useful signal
                break
            small_image, small_target = F.avg_pool2d(small_image, 2), F.avg_pool2d(small_target, 2)
            pyramid.append(self._distance(small_image, small_target))
        terms["multiscale"] = torch.stack(pyramid).mean() if pyramid else image.new_zeros(())
        if self.perceptual is not None:
            features = self.perceptual(image)
            target_features = self._features_of_target(original_target, target)
            if target_features[0].shape[0] != image.shape[0]:
                target_features = [f.expand(image.shape[0], -1, -1, -1) for f in target_features]
            terms["perceptual"] = normalized_feature_distance(features, target_features)
        return terms

    @staticmethod
    def _target_key(original: Tensor, aligned: Tensor) -> tuple:
        """Identifies the target's pixels: the same memory (views such as `goal.expand_as(image)`,
        made anew at every step, included), not modified in place since (the version counter is
        shared by all views), compared at the same size."""
        return (
            original.untyped_storage().data_ptr(),
            original.storage_offset(),
            tuple(original.shape),
            original.stride(),
            original._version,
            tuple(aligned.shape[-2:]),
            aligned.dtype,
            aligned.device,
        )

    def _features_of_target(self, original: Tensor, aligned: Tensor) -> list[Tensor]:
        assert self.perceptual is not None
        key = self._target_key(original, aligned)
        cached = self._target_features
        if cached is not None and cached[1] == key:
            return cached[2]
        # One target broadcast over the batch (batch of 1, or an expanded view) is run once.
        single = original.shape[0] == 1 or original.stride(0) == 0
        with torch.no_grad():
            features = [f.detach() for f in self.perceptual(aligned[:1] if single else aligned)]
        # Holding `original` keeps its memory alive, so no other tensor can reuse the address in the key.
        self._target_features = (original, key, features)
        return features

    def forward(self, image: Tensor, target: Tensor) -> Tensor:
        terms = self.terms(image, target)
        total = self.pixel_weight * terms["pixel"] + self.multiscale_weight * terms["multiscale"]
        if "perceptual" in terms:
            total = total + self.perceptual_weight * terms["perceptual"]
        return total
