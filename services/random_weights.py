"""DEMO/TESTS ONLY: a weights folder of small random models in the official checkpoint layouts.

`sfhq run --random-weights`, `sfhq weights make-random DIR` and the integration tests use it.
The files go through the same strict loaders as the real checkpoints; the folder carries the
RANDOM_WEIGHTS marker, so every service logs loudly and provenance says "random".
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from services.common.contracts import DIFFUSION_PIPELINES
from services.common.weights import WeightsRegistry

# Small enough for two CPU cores: a 64-px generator with 64 channels, a 4-unit IR-SE encoder on 64-px
# inputs, and a tiny CLIP; BiSeNet keeps its fixed architecture (13M parameters).
DEMO_GENERATOR_SIZE = 64
DEMO_GENERATOR_CHANNELS = 64
DEMO_ENCODER_UNITS = (1, 1, 1, 1)
DEMO_ENCODER_INPUT = 64


def write_random_weights(folder: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """Writes e4e (+ its decoder), the same StyleGAN2 as a rosinality file, BiSeNet, a tiny CLIP and
    a tiny Stable Diffusion pipeline (under both pipeline names)."""
    from services.annotator.random_weights import write_random_bisenet_checkpoint
    from services.encoder.random_weights import write_random_e4e_checkpoint
    from services.generator.random_diffusion import write_random_diffusion_folder
    from services.search.random_weights import write_random_clip_folder, write_random_convnext_folder

    registry = WeightsRegistry(folder)
    Path(folder).mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    written["e4e-ffhq-encode"] = write_random_e4e_checkpoint(
        registry.expected_path("e4e-ffhq-encode"),
        stylegan_size=DEMO_GENERATOR_SIZE,
        num_layers=DEMO_ENCODER_UNITS,
        input_size=DEMO_ENCODER_INPUT,
        seed=seed,
        decoder_max_channels=DEMO_GENERATOR_CHANNELS,
    )
    # The generator must be e4e's own decoder, or encoded latents would mean nothing to it.
    e4e = torch.load(written["e4e-ffhq-encode"], map_location="cpu", weights_only=True)
    g_ema = {k.removeprefix("decoder."): v for k, v in e4e["state_dict"].items() if k.startswith("decoder.")}
    generator_path = registry.expected_path("stylegan2-ffhq-config-f")
    torch.save({"g_ema": g_ema, "latent_avg": e4e["latent_avg"][0].clone()}, generator_path)
    written["stylegan2-ffhq-config-f"] = generator_path
    written["bisenet-face-parsing"] = write_random_bisenet_checkpoint(
        registry.expected_path("bisenet-face-parsing"), seed=seed
    )
    written["clip-vit-l-14-336"] = write_random_clip_folder(
        registry.expected_path("clip-vit-l-14-336"), tiny=True, seed=seed
    )
    # the extra feature extractors (SFHQ_EXTRA_FEATURES): a second tiny CLIP and a tiny ConvNeXt
    written["clip-vit-l-14"] = write_random_clip_folder(
        registry.expected_path("clip-vit-l-14"), tiny=True, seed=seed + 1
    )
    written["convnext-xlarge-224-22k"] = write_random_convnext_folder(
        registry.expected_path("convnext-xlarge-224-22k"), seed=seed
    )
    first, *others = DIFFUSION_PIPELINES
    written[first] = write_random_diffusion_folder(registry.expected_path(first), seed=seed)
    for name in others:  # the same tiny pipeline: both names work in a demo
        shutil.copytree(written[first], registry.expected_path(name), dirs_exist_ok=True)
        written[name] = registry.expected_path(name)
    registry.mark_random(f"random demo weights (seed {seed}); generator {DEMO_GENERATOR_SIZE} px")
    return written
