"""Stable Diffusion for the `prompts` job mode: prompts and seeds in, uint8 images out.

The pipeline is diffusers' own `StableDiffusionPipeline` (v1.x and v2.x share it; v2.1's
v-prediction lives in its scheduler config), loaded from a local diffusers folder that
`sfhq weights add` registered. What this module adds:

* a strict load: each network is read from safetensors with its loading report, and a folder
  whose files miss or add weights is refused (diffusers alone would warn and run half-random);
* one seed per image: noise comes from its own CPU `torch.Generator`, so an image depends on its
  prompt and seed only, not on the batch it ran in nor on the device (fp16 on CUDA, fp32 on CPU);
* no safety checker (SFHQ's portraits were made without one; a person curates the result).

Knows nothing of gRPC or Redis (services/generator/prompts_stage.py wires it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.common.errors import FailedPrecondition

log = logging.getLogger(__name__)

PIPELINE_CLASS = "StableDiffusionPipeline"  # what model_index.json must name (v1.x and v2.x)
NETWORKS = {  # folder -> the diffusers / transformers class that reads it
    "unet": "UNet2DConditionModel",
    "vae": "AutoencoderKL",
    "text_encoder": "CLIPTextModel",
}


class DiffusionFolderError(FailedPrecondition):
    """The registered folder is not a Stable Diffusion pipeline this project can load."""


@dataclass(frozen=True)
class DiffusionRequest:
    """One image to make. `width`/`height` 0: the pipeline's own size."""

    prompt: str
    seed: int
    negative_prompt: str = ""
    guidance_scale: float = 7.5
    steps: int = 30
    width: int = 0
    height: int = 0

    def batch_key(self) -> tuple[int, float, int, int]:
        """Requests with the same key can share one pipeline call."""
        return (self.steps, self.guidance_scale, self.width, self.height)


class DiffusionModel:
    """A loaded pipeline; `generate` makes one image per request, in batches."""

    def __init__(self, pipeline: Any, device: torch.device) -> None:
        self.pipeline = pipeline
        self.device = device
        pipeline.set_progress_bar_config(disable=True)

    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height) the pipeline makes when none is asked for (512 for v1.x, 768 for v2.1)."""
        side = int(self.pipeline.unet.config.sample_size) * int(self.pipeline.vae_scale_factor)
        return side, side

    def resolved_size(self, request: DiffusionRequest) -> tuple[int, int]:
        width, height = self.default_size
        return request.width or width, request.height or height

    @torch.inference_mode()
    def generate(self, requests: Sequence[DiffusionRequest], batch_size: int = 4) -> list[np.ndarray]:
        """HxWx3 uint8 images in the order of `requests`; requests with different steps, guidance or
        size run in separate calls (a pipeline call shares them)."""
        images: list[np.ndarray | None] = [None] * len(requests)
        groups: dict[tuple[int, float, int, int], list[int]] = {}
        for position, request in enumerate(requests):
            groups.setdefault(request.batch_key(), []).append(position)
        for (steps, guidance, _, _), positions in groups.items():
            for start in range(0, len(positions), max(1, batch_size)):
                chunk = positions[start : start + max(1, batch_size)]
                batch = [requests[p] for p in chunk]
                width, height = self.resolved_size(batch[0])
                result = self.pipeline(
                    prompt=[r.prompt for r in batch],
                    negative_prompt=[r.negative_prompt for r in batch] if guidance > 1 else None,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    width=width,
                    height=height,
                    # CPU generators: the same noise on every device, one stream per image
                    generator=[torch.Generator("cpu").manual_seed(r.seed) for r in batch],
                    output_type="np",
                )
                pixels = np.clip(np.rint(np.asarray(result.images) * 255.0), 0, 255).astype(np.uint8)
                for position, image in zip(chunk, pixels, strict=True):
                    images[position] = image
        return [image for image in images if image is not None]


def _read_index(folder: Path) -> dict[str, Any]:
    index_path = folder / "model_index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as error:
        raise DiffusionFolderError(f"{index_path}: not a diffusers pipeline index ({error})") from None
    if index.get("_class_name") != PIPELINE_CLASS:
        raise DiffusionFolderError(
            f"{index_path}: a {index.get('_class_name')!r}; the prompts mode runs {PIPELINE_CLASS} "
            "folders (Stable Diffusion v1.x / v2.x)"
        )
    return index


def _load_network(folder: Path, name: str, dtype: torch.dtype) -> Any:
    """One network of the pipeline, refusing a checkpoint whose keys do not match its config."""
    import diffusers
    import transformers

    cls = getattr(diffusers, NETWORKS[name], None) or getattr(transformers, NETWORKS[name])
    kwargs: dict[str, Any] = {"use_safetensors": True, "local_files_only": True, "torch_dtype": dtype}
    try:
        model, info = cls.from_pretrained(folder / name, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as error:
        raise DiffusionFolderError(f"{folder / name}: cannot load {NETWORKS[name]}: {error}") from None
    problems = {k: list(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys") and v}
    if problems:
        detail = "; ".join(f"{k}: {', '.join(v[:5])}" for k, v in problems.items())
        raise DiffusionFolderError(f"{folder / name}: the weights do not match the config ({detail})")
    return model


def load_diffusion(folder: str | Path, device: torch.device, fp16: bool) -> DiffusionModel:
    """A strict load of a diffusers Stable Diffusion folder (safetensors only, nothing downloaded)."""
    import diffusers
    import transformers

    folder = Path(folder)
    index = _read_index(folder)
    dtype = torch.float16 if fp16 and device.type == "cuda" else torch.float32
    networks = {name: _load_network(folder, name, dtype) for name in NETWORKS}
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    scheduler_class = index.get("scheduler", [None, "PNDMScheduler"])[1]
    scheduler_cls = getattr(diffusers, str(scheduler_class), None)
    if scheduler_cls is None:
        raise DiffusionFolderError(f"{folder}: unknown scheduler {scheduler_class!r}")
    scheduler = scheduler_cls.from_pretrained(folder / "scheduler", local_files_only=True)
    pipeline = diffusers.StableDiffusionPipeline(
        **networks,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device)
    log.info("stable diffusion: %s on %s (%s)", folder.name, device, dtype)
    return DiffusionModel(pipeline, device)
