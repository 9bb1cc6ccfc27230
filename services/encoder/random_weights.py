"""Random e4e checkpoints in the official `e4e_ffhq_encode.pt` layout (tests and `--random-weights` demos).

The file holds exactly what e4e's training coach saves: {'state_dict': encoder.* + decoder.*,
'opts': plain dict, 'latent_avg': [n_latent, 512]}. The decoder part comes from the generator's
own random rosinality writer, so both halves follow the layouts the real loaders expect.
Codes from such a model are meaningless; `opts['sfhq_random_weights']` marks it so loaders can say so.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from services.encoder.model import (
    IRSE50_UNITS,
    OFFICIAL_INPUT_SIZE,
    STYLE_DIM,
    Encoder4Editing,
    EncoderConfig,
    n_latent_for_size,
)


def _normal_(tensor: Tensor, std: float, generator: torch.Generator, mean: float = 0.0) -> None:
    tensor.normal_(mean, std, generator=generator)


def _uniform_(tensor: Tensor, low: float, high: float, generator: torch.Generator) -> None:
    tensor.uniform_(low, high, generator=generator)


@torch.no_grad()
def random_encoder_state_dict(config: EncoderConfig, seed: int = 0) -> dict[str, Tensor]:
    """Encoder4Editing weights (no prefix) with non-trivial values everywhere.

    Every tensor is drawn, including BatchNorm running statistics, so a loader that drops or
    mixes up a single key changes the output. Conv weights use He-normal scaling and each residual
    branch ends in a small BatchNorm gain, so activations keep a magnitude near 1 through the deep
    body (numerical comparisons are then meaningful at float32 precision).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        skeleton = Encoder4Editing(config)
    net = skeleton.to_empty(device="cpu")
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            _normal_(module.weight, math.sqrt(2.0 / fan_in), generator)
            if module.bias is not None:
                _normal_(module.bias, 0.1, generator)
        elif isinstance(module, nn.BatchNorm2d):
            _uniform_(module.weight, 0.5, 1.5, generator)
            _normal_(module.bias, 0.1, generator)
            _normal_(module.running_mean, 0.1, generator)
            _uniform_(module.running_var, 0.5, 2.0, generator)
            module.num_batches_tracked.zero_()
        elif isinstance(module, nn.PReLU):
            _uniform_(module.weight, 0.05, 0.4, generator)
    for name, parameter in net.named_parameters():
        if name.endswith("linear.weight"):
            _normal_(parameter, 1.0, generator)  # EqualLinear scales by 1/sqrt(512) at run time
        elif name.endswith("linear.bias"):
            _normal_(parameter, 0.1, generator)
        elif name.endswith("res_layer.4.weight"):
            _uniform_(parameter, 0.05, 0.25, generator)  # residual branch gain: keeps the sum from growing
    return dict(net.state_dict())


def e4e_opts(stylegan_size: int, *, random_weights: bool = True) -> dict[str, Any]:
    """The `opts` dict of an e4e checkpoint: plain data, the fields e4e's inference reads plus a few others."""
    return {
        "exp_dir": "",
        "dataset_type": "ffhq_encode",
        "encoder_type": "Encoder4Editing",
        "input_nc": 3,
        "batch_size": 8,
        "stylegan_size": stylegan_size,
        "start_from_latent_avg": True,
        "checkpoint_path": None,
        "stylegan_weights": "",
        "progressive_start": 20000,
        "progressive_step_every": 2000,
        "device": "cpu",
        "sfhq_random_weights": random_weights,
    }


def random_e4e_checkpoint(
    *,
    stylegan_size: int = 64,
    num_layers: int | tuple[int, int, int, int] = 50,
    input_size: int = OFFICIAL_INPUT_SIZE,
    seed: int = 0,
    decoder_max_channels: int = 512,
    decoder_channel_multiplier: int = 2,
) -> dict[str, Any]:
    """An in-memory e4e checkpoint dict (see write_random_e4e_checkpoint)."""
    from services.generator.checkpoint import generator_from_state_dict
    from services.generator.random_weights import random_rosinality_state_dict

    if isinstance(num_layers, int):
        if num_layers != 50:
            raise ValueError(
                "num_layers is 50 (IR-SE-50) or a tuple of IR-SE units per stage, e.g. (1, 1, 1, 1)"
            )
        units = IRSE50_UNITS
    else:
        units = tuple(num_layers)
    config = EncoderConfig(
        n_styles=n_latent_for_size(stylegan_size), units_per_stage=units, input_size=input_size
    )

    state: dict[str, Tensor] = {f"encoder.{k}": v for k, v in random_encoder_state_dict(config, seed).items()}
    decoder = random_rosinality_state_dict(
        size=stylegan_size,
        style_dim=STYLE_DIM,
        n_mlp=8,
        channel_multiplier=decoder_channel_multiplier,
        max_channels=decoder_max_channels,
        seed=seed,
    )
    state.update({f"decoder.{k}": v for k, v in decoder.items()})
    # e4e stores the generator's average w (here: the random mapping network's mean) once per W+ row.
    average_w = generator_from_state_dict(decoder).latent_avg
    return {
        "state_dict": state,
        "opts": e4e_opts(stylegan_size),
        "latent_avg": average_w.repeat(config.n_styles, 1),
    }


def write_random_e4e_checkpoint(
    path: str | Path,
    *,
    stylegan_size: int = 64,
    num_layers: int | tuple[int, int, int, int] = 50,
    input_size: int = OFFICIAL_INPUT_SIZE,
    seed: int = 0,
    decoder_max_channels: int = 512,
    decoder_channel_multiplier: int = 2,
) -> Path:
    """Write a random e4e checkpoint in the official file layout and return its path.

    num_layers: 50 (the official IR-SE-50) or a reduced depth as IR-SE units per stage, e.g. (1, 1, 1, 1).
    input_size: the encoder input resolution (256 official; 64 or 128 make fast test models).
    """
    checkpoint = random_e4e_checkpoint(
        stylegan_size=stylegan_size,
        num_layers=num_layers,
        input_size=input_size,
        seed=seed,
        decoder_max_channels=decoder_max_channels,
        decoder_channel_multiplier=decoder_channel_multiplier,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path
