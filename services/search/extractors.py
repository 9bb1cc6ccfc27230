"""Extra image features for the SFHQ pickles beyond CLIP ViT-L/14@336: pluggable extractors.

SFHQ's `pretrained_features/*.pickle` carry more keys than the CLIP features the index uses:
`CLIP_ViTL_14` (768) and `ConvNext_XL_Imagenet21k` (2048) among them (docs/sfhq-format.md). When
`SFHQ_EXTRA_FEATURES` names extractors, the embed stage computes them for every candidate, the
pickles carry them under those keys, the curate stage keeps them beside the index
(services/search/feature_sets.py), and taste models can be trained on them next to CLIP
(`feature_keys`; docs/curation.md).

Built in, through transformers from local Hugging Face folders (`sfhq weights add`):

* `CLIP_ViTL_14`: OpenAI CLIP ViT-L/14 (224 px) image tower, `openai/clip-vit-large-patch14`
  (the CLIP loader of services/search/clip_model.py, strict, image tower only);
* `ConvNext_XL_Imagenet21k`: ConvNeXt-XL trained on ImageNet-22k, `facebook/convnext-xlarge-224-22k`;
  the pooled, layer-normed 2048-D features, what timm's `convnext_xlarge_in22k` with
  `num_classes=0` returns from the same official weights; timm's default transform (shortest side
  to 224 / 0.875 = 256 with bicubic, centre crop 224, ImageNet mean and std).

Another extractor is a `register(ExtractorSpec(...))` away, or an installed package's entry point
in the `sfhq.feature_extractors` group (a callable that returns its ExtractorSpec).
Knows nothing of gRPC or Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from services.common.errors import FailedPrecondition

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PLUGIN_GROUP = "sfhq.feature_extractors"


class FeatureExtractor(Protocol):
    """What the embed stage needs: images in, float32 [N, dim] out."""

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...


@dataclass(frozen=True)
class ExtractorSpec:
    key: str  # the pickle key, as SFHQ spells it
    checkpoint: str  # its name in the weights registry
    dim: int  # of the published model (random demo models are smaller)
    load: Callable[[Path, torch.device, bool], FeatureExtractor]  # (folder, device, fp16)
    description: str = ""


class ExtractorError(FailedPrecondition):
    """An extractor's folder does not hold the model its key names."""


def _load_clip_vit_l_14(folder: Path, device: torch.device, fp16: bool) -> FeatureExtractor:
    from services.search.clip_model import load_clip

    return load_clip(folder, device=str(device), towers="image", fp16=fp16)


class ConvNextExtractor:
    """transformers' ConvNextModel: the pooled (global average + layer norm) features."""

    def __init__(self, model: torch.nn.Module, image_size: int, device: torch.device, batch_size: int = 16):
        self.model = model
        self.image_size = image_size
        self.device = device
        self.batch_size = batch_size
        self.dtype = next(model.parameters()).dtype

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """timm's default eval transform: shortest side to size / 0.875 (bicubic), centre crop."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        resize = int(self.image_size / 0.875)
        scale = resize / min(image.size)
        width, height = max(resize, round(image.width * scale)), max(resize, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        left, top = (width - self.image_size) // 2, (height - self.image_size) // 2
        image = image.crop((left, top, left + self.image_size, top + self.image_size))
        pixels = np.asarray(image, np.float32) / 255.0
        return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).astype(np.float32)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = np.stack([self.preprocess(im) for im in images[start : start + self.batch_size]])
            pixels = torch.from_numpy(batch).to(self.device, self.dtype)
            chunks.append(self.model(pixel_values=pixels).pooler_output.float().cpu().numpy())
        dim = int(self.model.config.hidden_sizes[-1])
        return np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)


def _load_convnext(folder: Path, device: torch.device, fp16: bool) -> FeatureExtractor:
    from transformers import ConvNextModel

    dtype = torch.float16 if fp16 and device.type == "cuda" else torch.float32
    try:
        model, info = ConvNextModel.from_pretrained(
            folder, local_files_only=True, output_loading_info=True, dtype=dtype
        )
    except (OSError, ValueError, RuntimeError) as error:
        raise ExtractorError(f"cannot load ConvNeXt from {folder}: {error}") from None
    # the classifier head of the published ImageNet-22k checkpoint is the only thing left out
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.startswith("classifier.")]
    missing = list(info.get("missing_keys", []))
    if missing or unexpected:
        raise ExtractorError(
            f"{folder}: not the ConvNeXt key layout (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model = model.to(device).eval()
    return ConvNextExtractor(model, int(getattr(model.config, "image_size", 224)), device)


EXTRACTORS: dict[str, ExtractorSpec] = {}


def register(spec: ExtractorSpec) -> ExtractorSpec:
    """Make an extractor known by its key (a later registration of the same key replaces it)."""
    EXTRACTORS[spec.key] = spec
    return spec


register(
    ExtractorSpec(
        "CLIP_ViTL_14",
        "clip-vit-l-14",
        768,
        _load_clip_vit_l_14,
        "OpenAI CLIP ViT-L/14 image tower (224 px)",
    )
)
register(
    ExtractorSpec(
        "ConvNext_XL_Imagenet21k",
        "convnext-xlarge-224-22k",
        2048,
        _load_convnext,
        "ConvNeXt-XL, ImageNet-22k, pooled features",
    )
)


def load_plugins() -> list[str]:
    """Register the extractors of installed packages (entry points of PLUGIN_GROUP)."""
    loaded = []
    for entry in entry_points(group=PLUGIN_GROUP):
        loaded.append(register(entry.load()()).key)
    return loaded


def extractor_spec(key: str) -> ExtractorSpec:
    if key not in EXTRACTORS:
        load_plugins()
    if key not in EXTRACTORS:
        raise ExtractorError(f"unknown feature extractor {key!r} (known: {', '.join(EXTRACTORS)})")
    return EXTRACTORS[key]
