"""Reading StyleGAN2 checkpoint files into a `services.generator.model.Generator`, strictly.

Layouts (docs/checkpoints.md): rosinality `.pt` (`g_ema` + `latent_avg`), e4e checkpoints
(the same state dict under `decoder.`), a bare rosinality state dict, and NVlabs
stylegan2-ada-pytorch network pickles (read without NVlabs code by `services.generator.nvlabs`).
Every key must be present and used, every shape right: a file that is not one of these is refused
with a message naming the first mismatch.
"""

from __future__ import annotations

import argparse
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from services.common.safe_pickle import UnsafePickleError
from services.generator import nvlabs
from services.generator.errors import (
    WEIGHTS_HINT,
    CheckpointFormatError,
    CheckpointLayoutError,
    CheckpointNotFoundError,
)
from services.generator.model import Generator, GeneratorConfig, blur_kernel

__all__ = [
    "check_state_dict",
    "generator_from_state_dict",
    "infer_config",
    "load_generator",
]


def infer_config(state_dict: Mapping[str, Tensor], conv_clamp: float | None = None) -> GeneratorConfig:
    """Read size, style_dim, n_mlp and the channel table off the shapes of a rosinality state dict."""

    def shape_of(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise CheckpointLayoutError(
                f"missing key {key!r}: not a rosinality StyleGAN2 generator state dict"
            )
        return tuple(state_dict[key].shape)

    style_dim = shape_of("style.1.weight")[1]
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in state_dict:
        n_mlp += 1
    n_blocks = 0
    while f"to_rgbs.{n_blocks}.conv.weight" in state_dict:
        n_blocks += 1
    size = 2 ** (n_blocks + 2)
    channels = {4: shape_of("input.input")[1]}
    for block in range(n_blocks):
        channels[2 ** (block + 3)] = shape_of(f"convs.{2 * block}.conv.weight")[1]
    return GeneratorConfig(
        size=size, style_dim=style_dim, n_mlp=n_mlp, channels=channels, conv_clamp=conv_clamp
    )


def check_state_dict(state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> None:
    """Strict check of `state_dict` against the layout `expected` (an empty model's state dict):
    every key present and used, every shape right, the resample filters the standard ones.

    Raises `CheckpointLayoutError` naming the first mismatch (in state-dict order).
    """
    for key, reference in expected.items():
        if key not in state_dict:
            raise CheckpointLayoutError(
                f"missing key {key!r} (expected shape {list(reference.shape)}; "
                f"{sum(k not in state_dict for k in expected)} key(s) missing in all)"
            )
        value = state_dict[key]
        if not isinstance(value, Tensor):
            raise CheckpointLayoutError(f"key {key!r} holds a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(reference.shape):
            raise CheckpointLayoutError(
                f"shape mismatch at {key!r}: expected {list(reference.shape)}, got {list(value.shape)}"
            )
        if not value.is_floating_point():
            raise CheckpointLayoutError(f"key {key!r} has dtype {value.dtype}, expected floating point")
    unexpected = [key for key in state_dict if key not in expected]
    if unexpected:
        raise CheckpointLayoutError(
            f"unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected key(s) in all)"
        )
    # The blur/upsample kernels are constants of the architecture; anything else means a different model.
    reference_kernel = blur_kernel(scale=4.0)
    for key, value in state_dict.items():
        if key.endswith(("blur.kernel", "upsample.kernel")) and not torch.allclose(
            value.float().cpu(), reference_kernel, atol=1e-6
        ):
            raise CheckpointLayoutError(f"{key!r} is not the StyleGAN2 [1,3,3,1] filter")


def generator_from_state_dict(
    state_dict: Mapping[str, Tensor],
    latent_avg: Tensor | None = None,
    *,
    conv_clamp: float | None = None,
    device: str | torch.device = "cpu",
) -> Generator:
    """Build a `Generator` from a rosinality-layout state dict, strictly; config from the shapes.

    `latent_avg` may be `[512]`, `[1, 512]` or an e4e-style `[n_latent, 512]` (rows averaged).
    Without it, w_avg is the mean of 4096 seeded mapped z (what rosinality's generate.py computes).
    """
    config = infer_config(state_dict, conv_clamp=conv_clamp)
    generator = Generator(config, random_init=False)  # allocation only: the checkpoint fills it
    check_state_dict(state_dict, generator.state_dict())
    weights = {
        key: value.detach().to(device=device, dtype=torch.float32) for key, value in state_dict.items()
    }
    generator.load_state_dict(weights, strict=True, assign=True)
    generator.latent_avg = torch.zeros(config.style_dim, device=device)
    generator.requires_grad_(False).eval()
    if latent_avg is None:
        generator.latent_avg = generator.mean_latent()
    else:
        generator.latent_avg = _latent_avg_vector(latent_avg, config).to(device)
    return generator


def _latent_avg_vector(latent_avg: Tensor, config: GeneratorConfig) -> Tensor:
    if not isinstance(latent_avg, Tensor) or not latent_avg.is_floating_point():
        raise CheckpointLayoutError("latent_avg must be a floating-point tensor")
    value = latent_avg.detach().float().cpu()
    if value.ndim == 2 and value.shape[1] == config.style_dim:
        # e4e stores the w_avg repeated once per layer; fall back to the mean if the rows differ.
        value = value[0] if bool((value == value[:1]).all()) else value.mean(0)
    if tuple(value.shape) != (config.style_dim,):
        raise CheckpointLayoutError(
            f"latent_avg must have shape [{config.style_dim}], got {list(latent_avg.shape)}"
        )
    if not bool(torch.isfinite(value).all()):
        raise CheckpointLayoutError("latent_avg contains NaN or infinite values")
    return value


# ----------------------------------------------------------------------------- checkpoint files

# The first pickle of a legacy (pre-zip) torch.save file is this magic number as a long.
_TORCH_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """Load a StyleGAN2 generator from any of the official layouts, detected from the file's content.

    * rosinality `.pt`: `{'g_ema': state_dict, 'latent_avg': [512]}` (training checkpoints without
      `latent_avg` get the mean of 4096 seeded mapped z);
    * e4e checkpoint: `{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg': [18, 512], ...}`;
    * a bare rosinality generator state dict;
    * NVlabs stylegan2-ada-pytorch network pickle (`G_ema`), read with a restricted unpickler.

    Raises `CheckpointNotFoundError` (naming `sfhq weights`) when the file is missing and
    `CheckpointFormatError` / `CheckpointLayoutError` when it is not a generator we know.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointNotFoundError(f"StyleGAN2 checkpoint not found: {path}; {WEIGHTS_HINT}")
    if zipfile.is_zipfile(path) or _starts_with_torch_legacy_magic(path):
        generator = _from_torch_file(path, device)
    else:
        generator = _from_nvlabs_pickle(path, device)
    generator.source.setdefault("path", str(path))
    return generator


def _starts_with_torch_legacy_magic(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(16)
    # PROTO 2, LONG1 of 10 bytes, then the magic number.
    return head[:4] == b"\x80\x02\x8a\x0a" and head[4:14] == _TORCH_LEGACY_MAGIC


def _from_torch_file(path: Path, device: str | torch.device) -> Generator:
    try:
        # Training checkpoints store their argparse options; a Namespace is a plain attribute bag.
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            # Zip-format files are memory-mapped: an e4e file (1.2 GB) only pages in its decoder.
            checkpoint = torch.load(
                path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
            )
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointFormatError(
            f"{path} could not be read as a torch checkpoint (weights_only): {error}"
        ) from error
    if not isinstance(checkpoint, Mapping):
        raise CheckpointFormatError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")

    if "g_ema" in checkpoint:
        generator = generator_from_state_dict(
            checkpoint["g_ema"], checkpoint.get("latent_avg"), device=device
        )
        generator.source["format"] = "rosinality"
        return generator
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        decoder = {
            k[len("decoder.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("decoder.")
        }
        if not decoder:
            raise CheckpointFormatError(
                f"{path} has a 'state_dict' without 'decoder.*' keys: not an e4e checkpoint"
            )
        generator = generator_from_state_dict(decoder, checkpoint.get("latent_avg"), device=device)
        generator.source["format"] = "e4e-decoder"
        return generator
    if "style.1.weight" in checkpoint:
        generator = generator_from_state_dict(checkpoint, None, device=device)
        generator.source["format"] = "rosinality-state-dict"
        return generator
    keys = sorted(str(k) for k in checkpoint)[:8]
    raise CheckpointFormatError(
        f"{path} is a torch file without 'g_ema', an e4e 'state_dict' or generator keys (top-level keys: {keys})"
    )


def _from_nvlabs_pickle(path: Path, device: str | torch.device) -> Generator:
    try:
        network = nvlabs.load_nvlabs_state(path)
    except UnsafePickleError as error:
        raise CheckpointFormatError(f"{path}: refused to unpickle ({error})") from error
    state_dict, w_avg = nvlabs.nvlabs_to_rosinality(network.state_dict)
    generator = generator_from_state_dict(state_dict, w_avg, conv_clamp=network.conv_clamp, device=device)
    generator.source.update(format="nvlabs", num_fp16_res=network.num_fp16_res, conv_clamp=network.conv_clamp)
    return generator
