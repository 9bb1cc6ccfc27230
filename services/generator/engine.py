"""What the generator service does with a loaded StyleGAN2, free of gRPC and Redis.

* `synthesize`: latents → images, in chunks of the batch size, with optional truncation and noise;
  `synthesize_uint8` gives them as uint8 pixels converted on the device (what stages store);
* `sample_w`: seeds → z (NVlabs' seed → z) → w, truncated with each sample's psi (psi > 1 allowed);
* `candidates`: one W+ code + strategies → the candidates' W+ codes (services.generator.manipulate);
  `candidates_batch` does many at once, with their `low_prior` refinements batched;
* conversions between images and the generator's [-1, 1] tensors, and checks on request values
  (psi, cutoff, seeds, latent shapes) that raise `InvalidInput` naming the value.

The caller holds the model (`LazyModel.run`), so one process never runs two model calls at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from services.common.accel import configure_device, images_to_uint8, to_host
from services.common.errors import InvalidInput
from services.encoder.model import Encoder
from services.generator.manipulate import (
    CandidateJob,
    LossFn,
    StrategySpec,
    candidate_latents,
    candidate_latents_batch,
)
from services.generator.model import Generator, z_from_seed

# psi outside this range gives no face at all; SFHQ part 3 samples up to ~2 (the gateway allows 4).
PSI_RANGE: tuple[float, float] = (0.0, 4.0)


@dataclass(frozen=True)
class Truncation:
    psi: float = 1.0
    cutoff: int | None = None  # truncate only the first `cutoff` layers


def synthesize(
    generator: Generator,
    latents: Tensor,
    batch_size: int,
    truncation: Truncation = Truncation(),
    noise_mode: str = "const",
    noise_seed: int | None = None,
) -> Tensor:
    """Latents `[B, 512]` / `[B, L, 512]` → images `[B, 3, S, S]` (float32 on the CPU)."""
    chunks = []
    with torch.inference_mode():
        for first in range(0, latents.shape[0], max(1, batch_size)):
            part = latents[first : first + batch_size]
            seed = None if noise_seed is None else (noise_seed + first) % 2**64
            images = generator.synthesize(
                part, truncation.psi, None, noise_mode, truncation_cutoff=truncation.cutoff, noise_seed=seed
            )
            chunks.append(images.float().cpu())
    return torch.cat(chunks)


def synthesize_uint8(
    generator: Generator,
    latents: Tensor,
    batch_size: int,
    truncation: Truncation = Truncation(),
    noise_mode: str = "const",
    noise_seed: int | None = None,
) -> np.ndarray:
    """Latents → `[B, S, S, 3]` uint8 pixels. The conversion runs on the device and the chunks
    are copied to the host once, through pinned memory (`services.common.accel.to_host`); on the
    CPU the pixels equal `to_uint8(synthesize(...))`."""
    chunks = []
    with torch.inference_mode():
        for first in range(0, latents.shape[0], max(1, batch_size)):
            part = latents[first : first + batch_size]
            seed = None if noise_seed is None else (noise_seed + first) % 2**64
            images = generator.synthesize(
                part, truncation.psi, None, noise_mode, truncation_cutoff=truncation.cutoff, noise_seed=seed
            )
            chunks.append(images_to_uint8(images))  # queued: the device runs ahead of the host
        if not chunks:
            return np.zeros((0, generator.size, generator.size, 3), np.uint8)
        return to_host(torch.cat(chunks) if len(chunks) > 1 else chunks[0])


def synthesize_samples(
    generator: Generator, w: Tensor, seeds: Sequence[int], batch_size: int, noise_mode: str
) -> Tensor:
    """Images of sampled w; random noise is drawn from each sample's own seed, so a sample is
    reproducible in every noise mode."""
    if noise_mode != "random":
        return synthesize(generator, w, batch_size, noise_mode=noise_mode)
    return torch.cat(
        [
            synthesize(generator, w[i : i + 1], 1, noise_mode=noise_mode, noise_seed=seed)
            for i, seed in enumerate(seeds)
        ]
    )


def sample_w(
    generator: Generator, seeds: Sequence[int], psis: Sequence[float], cutoff: int | None = None
) -> Tensor:
    """The truncated w of each seed: W `[B, 512]`, or W+ `[B, L, 512]` when `cutoff` is set."""
    z = torch.stack([z_from_seed(seed, generator.style_dim) for seed in seeds]).to(generator.device)
    with torch.inference_mode():
        w = generator.mapping(z)
        truncated = [generator.truncate(w[i : i + 1], psi, cutoff=cutoff) for i, psi in enumerate(psis)]
        return torch.cat(truncated).cpu()


def candidates(
    generator: Generator,
    w_plus: Tensor,
    specs: Sequence[StrategySpec],
    target: Tensor | None,
    sampled_w: Tensor | None,
    loss_fn: LossFn | None,
    identity: Encoder | None = None,
) -> list[tuple[StrategySpec, Tensor]]:
    """The W+ code of each candidate (on the CPU), with its resolved strategy. `identity`: the e4e
    encoder whose backbone gives `low_prior` its identity term (None: pixel + multi-scale only)."""
    try:
        with torch.no_grad():  # low_prior turns autograd back on for its own loop
            pairs = candidate_latents(generator, w_plus, specs, target, sampled_w, loss_fn, identity)
    except InvalidInput:
        raise
    except ValueError as error:  # a manipulation's ValueError is about its inputs (no target, bad shape)
        raise InvalidInput(str(error)) from None
    return [(spec, latent.cpu()) for spec, latent in pairs]


def candidates_batch(
    generator: Generator,
    jobs: Sequence[CandidateJob],
    loss_fn: LossFn | None,
    max_batch: int,
    identity: Encoder | None = None,
) -> list[list[tuple[StrategySpec, Tensor]] | InvalidInput]:
    """`candidates` of many candidate sets at once (their `low_prior` codes refined as batches of up
    to `max_batch`); a set with bad inputs gets its `InvalidInput` in its place."""
    with torch.no_grad():
        outcomes = candidate_latents_batch(generator, jobs, loss_fn, max_batch, identity)
    results: list[list[tuple[StrategySpec, Tensor]] | InvalidInput] = []
    for outcome in outcomes:
        if isinstance(outcome, InvalidInput):
            results.append(outcome)
        elif isinstance(outcome, ValueError):  # about that set's inputs (no target, bad shape)
            results.append(InvalidInput(str(outcome)))
        else:
            results.append([(spec, latent.cpu()) for spec, latent in outcome])
    return results


# ---- conversions ----------------------------------------------------------------------------------


def to_uint8(images: Tensor) -> np.ndarray:
    """`[B, 3, S, S]` in ~[-1, 1] → `[B, S, S, 3]` uint8, as NVlabs' generate.py does (x·127.5 + 128, clipped)."""
    return to_host(images_to_uint8(images))


def image_from_tensor(image: Tensor) -> Image.Image:
    return Image.fromarray(to_uint8(image[None])[0])


def tensor_from_image(image: Image.Image) -> Tensor:
    """RGB image → `[3, H, W]` float in [-1, 1] (the generator's range)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def as_latent(array: np.ndarray, generator: Generator, what: str) -> Tensor:
    """One latent: W `[512]` → `[1, 512]`; W+ `[L, 512]` (or `[1, L, 512]`) → `[1, L, 512]`."""
    if not np.isfinite(array).all():
        raise InvalidInput(f"{what}: contains NaN or infinity")
    shape = tuple(array.shape)
    dim, layers = generator.style_dim, generator.n_latent
    if shape == (dim,):
        return torch.from_numpy(np.array(array, dtype=np.float32)).reshape(1, -1)
    if shape in ((layers, dim), (1, layers, dim)):
        return torch.from_numpy(np.array(array, dtype=np.float32)).reshape(1, layers, -1)
    raise InvalidInput(f"{what}: shape {list(shape)} is neither W [{dim}] nor W+ [{layers}, {dim}]")


def to_w_plus(latent: Tensor, n_latent: int) -> Tensor:
    """W `[B, 512]` broadcast to W+ `[B, n_latent, 512]`; W+ unchanged."""
    return latent.unsqueeze(1).expand(-1, n_latent, -1) if latent.ndim == 2 else latent


def as_w_plus(array: np.ndarray, generator: Generator, what: str, *, allow_w: bool = True) -> Tensor:
    """One latent as a W+ code `[n_latent, 512]` (a W vector is broadcast unless `allow_w` is False)."""
    latent = as_latent(array, generator, what)
    if latent.ndim == 2 and not allow_w:
        raise InvalidInput(
            f"{what}: expected a W+ code [{generator.n_latent}, {generator.style_dim}], got a W vector"
        )
    return to_w_plus(latent, generator.n_latent)[0]


# ---- checks on request values -----------------------------------------------------------------------


def check_psi(psi: float, what: str = "psi") -> float:
    if not math.isfinite(psi) or not PSI_RANGE[0] <= psi <= PSI_RANGE[1]:
        raise InvalidInput(
            f"{what} must be a finite number in [{PSI_RANGE[0]:g}, {PSI_RANGE[1]:g}], got {psi}"
        )
    return float(psi)


def check_cutoff(cutoff: int, n_latent: int) -> int:
    if not 0 <= cutoff <= n_latent:
        raise InvalidInput(f"truncation_cutoff must be in [0, {n_latent}], got {cutoff}")
    return int(cutoff)


def check_seed(seed: Any, what: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise InvalidInput(f"{what} must be an integer in [0, 2**64), got {seed!r}")
    return seed


def wants_identity(jobs: Sequence[CandidateJob]) -> bool:
    """True if some `low_prior` candidate of `jobs` has an identity term (`identity_weight` > 0)."""
    return any(
        spec.name == "low_prior" and spec.resolved().params["identity_weight"] > 0
        for job in jobs
        for spec in job.strategies
        if isinstance(spec, StrategySpec)
    )


def strategy_spec(name: Any, params: Any, seed: Any, what: str) -> StrategySpec:
    """A checked strategy (known name, known parameters in range, a valid seed)."""
    if not isinstance(params, dict):
        raise InvalidInput(f"{what}.params must be an object of numbers")
    try:
        return StrategySpec(str(name), params, check_seed(seed, f"{what}.seed"))
    except ValueError as error:
        raise InvalidInput(f"{what}: {error}") from None


def configure_runtime(generator: Generator, device: str, fp16: bool) -> Generator:
    """CUDA: the batched modulated conv with channels_last, and fp16 for the top 4 resolutions with
    clamping (as NVlabs runs them). CPU: the exact grouped form -- there the batched form gained
    nothing consistent (bench/generator.py), and the grouped one reproduces the reference bit for bit."""
    if device.startswith("cuda"):
        configure_device(device)
        generator.set_runtime(fp16_resolutions=4 if fp16 else 0, modconv="batched", channels_last=True)
    return generator
