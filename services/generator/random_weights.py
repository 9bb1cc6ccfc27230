"""Random StyleGAN2 weights written in the official checkpoint layouts (tests, demos, benchmarks).

* `random_rosinality_state_dict` — a rosinality `g_ema` state dict, keys in the official order
  (docs/checkpoints.md, "StyleGAN2: rosinality checkpoint"), built here from that table rather than from our module, so that loading
  it tests our module against the layout.
* `write_rosinality_checkpoint` — `torch.save({'g_ema', 'latent_avg'})` like `convert_weight.py`
  (or a training checkpoint without `latent_avg`).

The values are random, not an initialisation scheme: every bias, noise strength and noise buffer is
non-zero so that a mis-mapped key changes the image. With the same keyword arguments both writers
produce the same weights (tests/helpers/nvlabs_pickle.py writes the same weights as an NVlabs pickle).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "rosinality_layout",
    "random_rosinality_state_dict",
    "random_latent_avg",
    "write_rosinality_checkpoint",
]

_LR_MLP = 0.01
# NVlabs torch_utils.persistence._version when ada-pytorch was released.
_PERSISTENCE_VERSION = 6
_MODULE_SRC = "# stand-in for training/networks.py: written by sfhq random_weights, never executed\n"


def _channels(size: int, channel_multiplier: int, max_channels: int) -> dict[int, int]:
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16, 2048: 8}
    resolutions = [2**i for i in range(2, int(math.log2(size)) + 1)]
    if size < 8 or 2 ** int(math.log2(size)) != size or size > 2048:
        raise ValueError(f"size must be a power of two in [8, 2048], got {size}")
    return {
        res: min(table[res] * (channel_multiplier if res >= 64 else 1), max_channels) for res in resolutions
    }


def rosinality_layout(
    size: int = 64, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2, max_channels: int = 512
) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every entry of a rosinality `g_ema` state dict, in the official order."""
    ch = _channels(size, channel_multiplier, max_channels)
    log_size = int(math.log2(size))
    layout: list[tuple[str, tuple[int, ...]]] = []
    for i in range(1, n_mlp + 1):
        layout += [(f"style.{i}.weight", (style_dim, style_dim)), (f"style.{i}.bias", (style_dim,))]
    layout.append(("input.input", (1, ch[4], 4, 4)))

    def styled_conv(prefix: str, c_in: int, c_out: int, upsample: bool) -> None:
        layout.append((f"{prefix}.conv.weight", (1, c_out, c_in, 3, 3)))
        if upsample:
            layout.append((f"{prefix}.conv.blur.kernel", (4, 4)))
        layout.extend(
            [
                (f"{prefix}.conv.modulation.weight", (c_in, style_dim)),
                (f"{prefix}.conv.modulation.bias", (c_in,)),
                (f"{prefix}.noise.weight", (1,)),
                (f"{prefix}.activate.bias", (c_out,)),
            ]
        )

    def to_rgb(prefix: str, c_in: int, upsample: bool) -> None:
        layout.append((f"{prefix}.bias", (1, 3, 1, 1)))
        if upsample:
            layout.append((f"{prefix}.upsample.kernel", (4, 4)))
        layout.extend(
            [
                (f"{prefix}.conv.weight", (1, 3, c_in, 1, 1)),
                (f"{prefix}.conv.modulation.weight", (c_in, style_dim)),
                (f"{prefix}.conv.modulation.bias", (c_in,)),
            ]
        )

    styled_conv("conv1", ch[4], ch[4], upsample=False)
    to_rgb("to_rgb1", ch[4], upsample=False)
    for k in range(log_size - 2):
        res = 2 ** (k + 3)
        styled_conv(f"convs.{2 * k}", ch[res // 2], ch[res], upsample=True)
        styled_conv(f"convs.{2 * k + 1}", ch[res], ch[res], upsample=False)
    for k in range(log_size - 2):
        to_rgb(f"to_rgbs.{k}", ch[2 ** (k + 3)], upsample=True)
    for i in range(2 * log_size - 3):
        side = 2 ** ((i + 5) // 2)
        layout.append((f"noises.noise_{i}", (1, 1, side, side)))
    return layout


def resample_kernel(scale: float) -> Tensor:
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = torch.outer(taps, taps)
    return kernel / kernel.sum() * scale


def random_rosinality_state_dict(
    size: int = 64,
    style_dim: int = 512,
    n_mlp: int = 8,
    channel_multiplier: int = 2,
    max_channels: int = 512,
    seed: int = 0,
) -> dict[str, Tensor]:
    """A random rosinality `g_ema` state dict (official key names, order and shapes)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for key, shape in rosinality_layout(size, style_dim, n_mlp, channel_multiplier, max_channels):
        if key.endswith(("blur.kernel", "upsample.kernel")):
            value = resample_kernel(4.0)
        elif key.startswith("style.") and key.endswith(".weight"):
            value = torch.randn(shape, generator=gen) / _LR_MLP  # stored ×1/lr_mul, as trained
        elif key.endswith("modulation.bias"):
            value = 1.0 + 0.2 * torch.randn(shape, generator=gen)  # styles start around 1
        elif (
            key.endswith(("noise.weight", "activate.bias"))
            or key.startswith("to_rgb")
            and key.endswith(".bias")
        ):
            value = 0.2 * torch.randn(shape, generator=gen)
        else:
            value = torch.randn(shape, generator=gen)
        state[key] = value.contiguous()
    return state


def random_latent_avg(style_dim: int = 512, seed: int = 0) -> Tensor:
    """A random w_avg for the random weights (seeded apart from the weights)."""
    return 0.5 * torch.randn(style_dim, generator=torch.Generator().manual_seed(seed + 1_000_003))


def write_rosinality_checkpoint(
    path: str | Path, *, include_latent_avg: bool = True, training_checkpoint: bool = False, **kw: Any
) -> Path:
    """Write `{'g_ema': state_dict, 'latent_avg': [512]}` as rosinality's `convert_weight.py` does.

    `include_latent_avg=False` leaves it out (like a training checkpoint); `training_checkpoint=True`
    also adds `g`, `args` (an `argparse.Namespace`) and `ada_aug_p` as `train.py` saves them.
    Other keywords go to `random_rosinality_state_dict`.
    """
    import argparse

    state = random_rosinality_state_dict(**kw)
    checkpoint: dict[str, Any] = {"g_ema": state}
    if include_latent_avg:
        checkpoint["latent_avg"] = random_latent_avg(kw.get("style_dim", 512), kw.get("seed", 0))
    if training_checkpoint:
        checkpoint.update(g=state, args=argparse.Namespace(size=kw.get("size", 64), batch=4), ada_aug_p=0.0)
    path = Path(path)
    torch.save(checkpoint, path)
    return path


# ----------------------------------------------------------------------------- NVlabs pickle
