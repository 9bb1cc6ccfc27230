"""CLIP ViT-L/14@336 image and text features, the same model as SFHQ's released `pretrained_features`.

The weights are a local folder in the Hugging Face `openai/clip-vit-large-patch14-336` layout (config.json,
model.safetensors, vocab.json, merges.txt) registered as `clip-vit-l-14-336`. We use transformers'
`CLIPModel` rather than open_clip because open_clip needs torchvision, which must not be installed here.

Features are exactly OpenAI's `encode_image` / `encode_text`: the projected embeddings, not normalised
(SFHQ stores them raw; the index normalises). The image preprocessing is CLIP's own, re-implemented
without torchvision: shortest side to 336 with PIL bicubic, centre crop, /255, CLIP mean/std.

Backends: "torch" (CPU float32, or CUDA float16 when `fp16`), and "onnx" for the image tower (exported
once from the same weights, run by ONNX Runtime). Text always runs in torch: it is small and cheap.

On CUDA the image preprocessing runs on the device too (`preprocess_pixels`): the uint8 pixels of a
batch are copied once (pinned, `non_blocking`) and resized by PyTorch's antialiased bicubic, which
uses Pillow's kernel (a = -0.5); the result differs from Pillow's only by Pillow's rounding to 8 bits
between resize and normalisation. On the CPU the Pillow path above is kept as is.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from services.common.accel import configure_device, to_device, to_host
from services.common.errors import InvalidInput
from services.common.model_holder import Provenance
from services.common.weights import WeightsError, WeightsMissing
from services.search.random_weights import RANDOM_MARKER
from sfhq.annotations import CLIP_FEATURE_KEY

log = logging.getLogger(__name__)

FEATURE_KEY = CLIP_FEATURE_KEY  # SFHQ's pickle key for these features (sfhq/annotations.py)
REGISTRY_NAME = "clip-vit-l-14-336"  # name in `sfhq weights`
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONTEXT_LENGTH = 77  # CLIP's text context: start token + 75 tokens + end token
REQUIRED_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")
# Older exports of the official checkpoint carry these buffers; transformers now rebuilds them itself.
_LEGACY_BUFFER_SUFFIX = "embeddings.position_ids"

Backend = Literal["torch", "onnx"]
Towers = Literal["both", "text", "image"]


class ClipWeightsError(WeightsError):
    """The CLIP folder does not match the official key layout (a missing folder raises WeightsMissing)."""


class ClipInputError(InvalidInput):
    """An input to the embedder is unusable (wrong type, empty or degenerate image)."""


def preprocess_image(image: Image.Image, size: int) -> np.ndarray:
    """CLIP's preprocessing of one image → float32 [3, size, size].

    Same steps and order as OpenAI's `clip.load(...)[1]`: Resize(size, bicubic) of the shortest side
    (the long side truncated like torchvision does), CenterCrop(size) with torchvision's rounding,
    convert to RGB, scale to [0, 1], normalise with CLIP's mean and std.
    """
    if not isinstance(image, Image.Image):
        raise ClipInputError(f"expected a PIL image, got {type(image).__name__}")
    width, height = image.size
    if width < 1 or height < 1:
        raise ClipInputError(f"image has no pixels ({width}x{height})")
    new_size = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
    resized = image.resize(new_size, Image.Resampling.BICUBIC)
    left = int(round((new_size[0] - size) / 2.0))
    top = int(round((new_size[1] - size) / 2.0))
    cropped = resized.crop((left, top, left + size, top + size)).convert("RGB")
    pixels = np.asarray(cropped, dtype=np.float32) / 255.0
    pixels = (pixels - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def preprocess_pixels(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """`preprocess_image` for a batch of same-sized RGB images `[B, H, W, 3]` uint8 on any device →
    float32 `[B, 3, size, size]` on that device (antialiased bicubic resize of the shortest side,
    centre crop with torchvision's rounding, CLIP's mean/std)."""
    if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != torch.uint8:
        raise ClipInputError(f"pixels must be [B, H, W, 3] uint8, got {pixels.dtype} {list(pixels.shape)}")
    height, width = int(pixels.shape[1]), int(pixels.shape[2])
    new_w, new_h = (
        (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
    )
    x = pixels.permute(0, 3, 1, 2).float()
    if (new_h, new_w) != (height, width):
        x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    x = x[:, :, top : top + size, left : left + size].clamp(0, 255) / 255.0
    mean = torch.tensor(CLIP_MEAN, device=x.device).reshape(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).reshape(1, 3, 1, 1)
    return (x - mean) / std


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ClipEmbedder:
    """Batched CLIP image/text features (float32 numpy, raw projections, [B, dim])."""

    feature_key = FEATURE_KEY

    def __init__(
        self,
        *,
        folder: Path,
        model: torch.nn.Module,
        tokenizer,
        image_size: int | None,
        dim: int,
        device: torch.device,
        dtype: torch.dtype,
        batch_size: int,
        has_image_tower: bool,
        has_text_tower: bool,
        is_random: bool,
    ) -> None:
        self.folder = folder
        self.image_size = image_size
        self.dim = dim
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.is_random = is_random
        self.backend: Backend = "torch"
        self._model = model
        self._tokenizer = tokenizer
        self._has_image_tower = has_image_tower
        self._has_text_tower = has_text_tower
        self._onnx_session = None
        self._sha256: str | None = None

    # ---- images -------------------------------------------------------------------------------------

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """CLIP image features of `images` (any size/mode), float32 [len(images), dim]."""
        if not self._has_image_tower:
            raise RuntimeError("this CLIP embedder was loaded text-only (towers='text')")
        images = list(images)
        chunks = []
        for batch in _batches(images, self.batch_size):
            if self.device.type == "cuda" and self._onnx_session is None and _same_size_rgb(batch):
                chunks.append(self._embed_on_device(batch))
                continue
            pixels = np.stack([preprocess_image(im, self.image_size) for im in batch])
            chunks.append(self.embed_pixels(pixels))
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    def _embed_on_device(self, batch: Sequence[Image.Image]) -> np.ndarray:
        """Decoded pixels to the GPU once (uint8, pinned, `non_blocking`); resize, crop, normalise
        and the tower there; only the `[B, dim]` features come back."""
        assert self.image_size is not None
        pixels = to_device(np.stack([np.asarray(image) for image in batch]), self.device)
        with torch.inference_mode():
            tensor = preprocess_pixels(pixels, self.image_size).to(self.dtype)
            features = self._model.get_image_features(pixel_values=tensor).pooler_output
            return to_host(features.float())

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Features of already preprocessed pixels [B, 3, S, S] (one batch, no further splitting)."""
        if self._onnx_session is not None:
            (features,) = self._onnx_session.run(None, {"pixel_values": pixels.astype(np.float32)})
            return np.asarray(features, dtype=np.float32)
        tensor = torch.from_numpy(pixels).to(self.device, self.dtype)
        with torch.inference_mode():
            features = self._model.get_image_features(pixel_values=tensor).pooler_output
        return features.float().cpu().numpy()

    # ---- text ---------------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP token ids [B, 77] (lower-cased, truncated to 75 tokens between start and end)."""
        for text in texts:
            if not isinstance(text, str):
                raise ClipInputError(f"texts must be strings, got {type(text).__name__}")
        encoded = self._tokenizer(
            list(texts), padding="max_length", max_length=CONTEXT_LENGTH, truncation=True, return_tensors="np"
        )
        return encoded["input_ids"].astype(np.int64)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP text features, float32 [len(texts), dim]."""
        if not self._has_text_tower:
            raise RuntimeError("this CLIP embedder was loaded image-only (towers='image')")
        texts = list(texts)
        chunks = []
        for batch in _batches(texts, max(self.batch_size, 32)):
            ids = torch.from_numpy(self.tokenize(batch)).to(self.device)
            with torch.inference_mode():
                if hasattr(self._model, "get_text_features"):
                    features = self._model.get_text_features(input_ids=ids).pooler_output
                else:  # text-only model (CLIPTextModelWithProjection)
                    features = self._model(input_ids=ids).text_embeds
            chunks.append(features.float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    # ---- ONNX ---------------------------------------------------------------------------------------

    def export_image_onnx(self, path: str | Path) -> Path:
        """Export the image tower (pixels → projected features) to ONNX, float32, dynamic batch."""
        if not self._has_image_tower:
            raise RuntimeError("no image tower to export")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tower = _ImageTower(self._model).to("cpu", torch.float32).eval()
        example = torch.zeros(1, 3, self.image_size, self.image_size)
        tmp = path.with_suffix(".tmp.onnx")
        with torch.inference_mode(), warnings.catch_warnings():
            # The tracer warns about shape checks that are constant for a fixed image size: expected.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                tower,
                (example,),
                str(tmp),
                input_names=["pixel_values"],
                output_names=["image_features"],
                opset_version=17,
                dynamo=False,
                dynamic_axes={"pixel_values": {0: "batch"}, "image_features": {0: "batch"}},
            )
        os.replace(tmp, path)  # a half-written file is never picked up by the next start
        # The export moved the shared weights to CPU/float32; put them back where the torch path runs.
        self._model.to(self.device, self.dtype)
        return path

    def use_onnx(self, onnx_path: str | Path) -> None:
        """Run the image tower with ONNX Runtime from `onnx_path` (CUDA provider when on a GPU)."""
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see parsing._OnnxRunner
        self._onnx_session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.backend = "onnx"

    # ---- provenance ---------------------------------------------------------------------------------

    def weights_sha256(self) -> str:
        """sha256 of model.safetensors (computed once; for dataset provenance)."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            with open(self.folder / "model.safetensors", "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def provenance(self) -> dict:
        return {
            "feature_key": FEATURE_KEY,
            "weights": REGISTRY_NAME,
            "folder": str(self.folder),
            "sha256": self.weights_sha256(),
            "random_weights": self.is_random,
            "dim": self.dim,
            "backend": self.backend,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }


class _ImageTower(torch.nn.Module):
    """pixels → projected image features, as one module for ONNX export."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.clip.get_image_features(pixel_values=pixel_values).pooler_output


def load_clip(
    path: str | Path,
    device: str = "cpu",
    backend: Backend = "torch",
    *,
    towers: Towers = "both",
    fp16: bool = True,
    batch_size: int = 16,
    onnx_path: str | Path | None = None,
) -> ClipEmbedder:
    """Load CLIP from a local folder in the official layout, strictly (no missing or unexpected keys).

    `towers="text"` loads only the text transformer (what text search over SFHQ's precomputed features
    needs: no GPU, a third of the memory). `fp16` applies on CUDA only. `backend="onnx"` exports the image
    tower once to `onnx_path` (default: `<folder>/onnx/image_tower.onnx`, or a temp dir if read-only) and
    runs it with ONNX Runtime.
    """
    from transformers import (
        CLIPModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        CLIPVisionModelWithProjection,
    )

    if backend not in ("torch", "onnx"):
        raise ValueError(f"unknown CLIP backend {backend!r} (use 'torch' or 'onnx')")
    if backend == "onnx" and towers == "text":
        raise ValueError("the ONNX backend runs the image tower; it needs towers='both' or 'image'")
    folder = Path(path)
    _check_folder(folder)
    torch_device = resolve_device(device)
    dtype = torch.float16 if (fp16 and torch_device.type == "cuda") else torch.float32
    model_class = {
        "both": CLIPModel,
        "text": CLIPTextModelWithProjection,
        "image": CLIPVisionModelWithProjection,
    }[towers]
    with _quiet_transformers():
        try:
            model, info = model_class.from_pretrained(
                folder,
                local_files_only=True,
                use_safetensors=True,
                dtype=torch.float32,
                output_loading_info=True,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise ClipWeightsError(f"cannot load CLIP from {folder}: {exc}") from exc
        tokenizer = (
            CLIPTokenizer.from_pretrained(folder, local_files_only=True) if towers != "image" else None
        )
    _check_loading_info(folder, towers, info)

    if towers == "image":
        model = _VisionOnly(model)
    model = model.to(torch_device, dtype).eval()
    configure_device(torch_device)
    config = model.config
    vision_config = getattr(config, "vision_config", config if towers == "image" else None)
    # The marker sits in the CLIP folder (write_random_clip_folder) or in the whole weights folder.
    is_random = (folder / RANDOM_MARKER).exists() or (folder.parent / RANDOM_MARKER).exists()
    if is_random:
        log.warning(
            "CLIP weights in %s are RANDOM (made by `sfhq weights make-random`): features are meaningless",
            folder,
        )
    embedder = ClipEmbedder(
        folder=folder,
        model=model,
        tokenizer=tokenizer,
        image_size=int(vision_config.image_size) if vision_config is not None else None,
        dim=int(config.projection_dim),
        device=torch_device,
        dtype=dtype,
        batch_size=batch_size,
        has_image_tower=towers != "text",
        has_text_tower=towers != "image",
        is_random=is_random,
    )
    if backend == "onnx":
        target = Path(onnx_path) if onnx_path else _default_onnx_path(folder)
        # Re-export when the weights are newer than the cached export.
        if not target.exists() or target.stat().st_mtime < (folder / "model.safetensors").stat().st_mtime:
            embedder.export_image_onnx(target)
        embedder.use_onnx(target)
    return embedder


def clip_provenance(embedder: ClipEmbedder) -> Provenance:
    """The provenance record of a loaded CLIP (its folder's sha256, random or not, backend...)."""
    record = embedder.provenance()
    details = {key: record[key] for key in ("feature_key", "dim", "backend", "device", "dtype")}
    return Provenance(REGISTRY_NAME, embedder.folder.name, record["sha256"], embedder.is_random, details)


def load_clip_from_registry(
    registry, device: str = "cpu", backend: Backend = "torch", **kwargs
) -> ClipEmbedder:
    """Load the registered `clip-vit-l-14-336` folder; a missing one raises the registry's WeightsMissing."""
    return load_clip(registry.path(REGISTRY_NAME), device=device, backend=backend, **kwargs)


class _VisionOnly(torch.nn.Module):
    """Gives CLIPVisionModelWithProjection the `get_image_features` interface of CLIPModel."""

    def __init__(self, vision: torch.nn.Module) -> None:
        super().__init__()
        self.vision = vision
        self.config = vision.config

    def get_image_features(self, pixel_values: torch.Tensor):  # -> CLIPVisionModelOutput
        out = self.vision(pixel_values=pixel_values)
        out.pooler_output = out.image_embeds
        return out


def _check_folder(folder: Path) -> None:
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise WeightsMissing(
            REGISTRY_NAME,
            folder,
            f" (missing files: {', '.join(missing)}; the folder must be "
            "the official openai/clip-vit-large-patch14-336 layout)",
        )


def _check_loading_info(folder: Path, towers: Towers, info: dict) -> None:
    """Refuse anything but an exact match of the official key layout (the tower subset when partial)."""
    missing = sorted(info.get("missing_keys") or [])
    unexpected = [
        k for k in sorted(info.get("unexpected_keys") or []) if not k.endswith(_LEGACY_BUFFER_SUFFIX)
    ]
    mismatched = list(info.get("mismatched_keys") or [])
    if towers == "text":
        unexpected = [
            k for k in unexpected if not k.startswith(("vision_model.", "visual_projection.", "logit_scale"))
        ]
    elif towers == "image":
        unexpected = [
            k for k in unexpected if not k.startswith(("text_model.", "text_projection.", "logit_scale"))
        ]
    if missing or unexpected or mismatched:
        raise ClipWeightsError(
            f"{folder}/model.safetensors does not match the CLIP key layout: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, mismatched {mismatched[:5]}"
        )


def _default_onnx_path(folder: Path) -> Path:
    target = folder / "onnx"
    with contextlib.suppress(OSError):
        target.mkdir(exist_ok=True)
    if os.access(target, os.W_OK):
        return target / "image_tower.onnx"
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "sfhq-onnx" / key / "image_tower.onnx"


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers prints progress bars and load reports; we check and report loading ourselves."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        hf_logging.enable_progress_bar()


def _same_size_rgb(images: Sequence[Image.Image]) -> bool:
    return all(
        isinstance(im, Image.Image) and im.mode == "RGB" and im.size == images[0].size for im in images
    )


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "FEATURE_KEY",
    "REGISTRY_NAME",
    "ClipEmbedder",
    "ClipInputError",
    "ClipWeightsError",
    "load_clip",
    "load_clip_from_registry",
    "preprocess_image",
    "preprocess_pixels",
    "resolve_device",
]
