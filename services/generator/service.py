"""Generator service: StyleGAN2 behind gRPC (``sfhq.v1.Generator``) and the ``sample``/``synthesize`` stages.

* ``Synthesize``: W ``[512]`` or W+ ``[n_latent, 512]`` latents → images (optional truncation, noise mode).
* ``Sample``: seeds → z (NVlabs' seed → z) → w with truncation psi (psi > 1 allowed) → images and w.
* ``Candidates``: one W+ code + strategies → photoreal candidates (:mod:`services.generator.manipulate`).
  Images come back as PNG/JPEG bytes, or are written to the blob store and returned as URIs.
* ``sample`` stage: payload ``seed``, ``psi`` → output ``w`` (npy key, the truncated sample as W+
  ``[n_latent, 512]``) and ``image`` (PNG key).
* ``synthesize`` stage: payload ``latent`` (npy key), ``strategies`` (list of ``{name, params, seed}``),
  ``target`` (PNG key or null), ``sampled_w`` (npy key or null) → output ``candidates``: list of
  ``{image, latent, strategy}`` (PNG key, npy key, the resolved strategy record).

Both stages batch across jobs: every task of a worker batch is synthesized in one model batch.
Bad input (wrong latent shape, NaN/inf, unknown strategy, psi out of range...) → INVALID_ARGUMENT
naming the problem; a missing checkpoint → FAILED_PRECONDITION naming ``sfhq weights``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from services.common.blobs import BlobStore, item_key
from services.common.config import Settings, get_settings
from services.common.errors import PermanentError, as_permanent, error_status
from services.common.images import decode_image, encode_image
from services.common.queue import Task, TaskResult
from services.common.server import ServiceProcess
from services.common.weights import WeightsMissing, WeightsRegistry
from services.generator.manipulate import STRATEGIES, LossFn, StrategySpec, candidate_latents
from services.generator.model import (
    CheckpointFormatError,
    CheckpointNotFoundError,
    Generator,
    InvalidLatentError,
    load_generator,
    z_from_seed,
)
from sfhq.tensors import numpy_to_tensor, tensor_to_numpy
from sfhq.v1 import common_pb2, generator_pb2, generator_pb2_grpc

__all__ = [
    "CHECKPOINT_NAMES",
    "GeneratorLoader",
    "GeneratorRunner",
    "GeneratorServicer",
    "build_process",
    "main",
    "sample_handler",
    "synthesize_handler",
]

log = logging.getLogger(__name__)

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name
# Tried in order: rosinality config-f, then NVlabs ada-pytorch FFHQ, then e4e's bundled decoder.
CHECKPOINT_NAMES: tuple[str, ...] = ("stylegan2-ffhq-config-f", "stylegan2-ada-ffhq", "e4e-ffhq-encode")
# psi outside this range gives no face at all; SFHQ part 3 samples up to ~2 (the gateway allows 4).
PSI_RANGE: tuple[float, float] = (0.0, 4.0)
MAX_ITEMS_PER_REQUEST = 64  # latents or seeds per call: each is a full-size image in the response
MAX_STRATEGIES_PER_REQUEST = 16
MAX_OUTPUT_SIZE = 4096
# Pixels one call may return in all: 64 full-size (1024 px) images. Without it, 64 images at 4096 px
# took ~5 min and 1.5 GB of one generator process (found by reliability/fuzz.py's generators).
MAX_OUTPUT_PIXELS = MAX_ITEMS_PER_REQUEST * 1024 * 1024
DEFAULT_JPEG_QUALITY = 95
NOISE_MODES = {
    generator_pb2.NOISE_MODE_UNSPECIFIED: "const",
    generator_pb2.NOISE_MODE_CONST: "const",
    generator_pb2.NOISE_MODE_RANDOM: "random",
    generator_pb2.NOISE_MODE_NONE: "none",
}


class GeneratorRequestError(PermanentError):
    """A bad request or payload (INVALID_ARGUMENT), with the reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="INVALID_ARGUMENT")


def status_of(error: BaseException) -> tuple[str, str] | None:
    """(gRPC status name, message) for errors that retrying cannot fix; None for unexpected ones."""
    if isinstance(error, CheckpointNotFoundError | CheckpointFormatError):
        return "FAILED_PRECONDITION", str(error)
    if isinstance(error, InvalidLatentError):
        return "INVALID_ARGUMENT", str(error)
    return error_status(error)


def typed_errors() -> AbstractContextManager[None]:
    """Our typed errors become PermanentError, which the shared interceptor turns into a status."""
    return as_permanent(status_of)

# ----------------------------------------------------------------------------- model


class GeneratorLoader:
    """The process's generator, loaded once on first use from the weights registry.

    Checkpoints are tried in :data:`CHECKPOINT_NAMES` order. When none is present each call fails with
    FAILED_PRECONDITION naming ``sfhq weights`` and the next call looks again, so downloading the
    weights needs no restart.
    """

    def __init__(
        self, settings: Settings, *, registry: WeightsRegistry | None = None, path: Path | None = None
    ):
        self.settings = settings
        self.registry = registry or WeightsRegistry(settings.weights_dir)
        self.path = path
        self._generator: Generator | None = None
        self._lock = threading.Lock()

    def _checkpoint(self) -> tuple[str | None, Path]:
        if self.path is not None:
            return None, self.path
        for name in CHECKPOINT_NAMES:
            try:
                return name, self.registry.path(name)
            except WeightsMissing:
                continue
        # Name the preferred checkpoint: its message says `sfhq weights download ...`.
        return CHECKPOINT_NAMES[0], self.registry.path(CHECKPOINT_NAMES[0])

    def get(self) -> Generator:
        with self._lock:
            if self._generator is None:
                name, path = self._checkpoint()
                device = self.settings.resolved_device()
                generator = load_generator(path, device=device)
                if name is not None:  # recorded with every candidate (dataset provenance)
                    generator.source["provenance"] = self.registry.provenance(name)
                configure_runtime(generator, device, self.settings.use_fp16())
                if self.registry.is_random():
                    log.warning("generator: RANDOM demo weights from %s: images are not faces", path)
                log.info(
                    "generator: loaded %s (%s, %d px, %d layers) on %s", path, generator.source.get("format"),
                    generator.size, generator.n_latent, device,
                )  # fmt: skip
                self._generator = generator
            return self._generator

    def preload(self) -> bool:
        """Load now if possible (start-up); log and return False when no checkpoint is usable."""
        try:
            self.get()
            return True
        except Exception as error:
            log.error("generator: model not loaded, calls will fail until it is: %s", error)
            return False


def configure_runtime(generator: Generator, device: str, fp16: bool) -> Generator:
    """CUDA: the batched modconv with channels_last, and fp16 for the top 4 resolutions with clamping
    (as NVlabs runs them). CPU: the exact grouped form — on CPU the batched form gained nothing
    consistent (bench/generator.py), and the grouped one reproduces the reference numbers bit for bit."""
    if device.startswith("cuda"):
        generator.set_runtime(fp16_resolutions=4 if fp16 else 0, modconv="batched", channels_last=True)
    return generator


GeneratorSource = Callable[[], Generator]


@dataclass(frozen=True)
class Truncation:
    psi: float = 1.0
    cutoff: int | None = None


class GeneratorRunner:
    """All model calls of the process: one at a time (gRPC threads and the workers share the model),
    in chunks of ``batch_size`` images."""

    def __init__(self, source: GeneratorSource, batch_size: int):
        self.source = source
        self.batch_size = max(1, int(batch_size))
        self._lock = threading.Lock()

    @property
    def generator(self) -> Generator:
        return self.source()

    def synthesize(
        self,
        latents: Tensor,
        truncation: Truncation = Truncation(),
        noise_mode: str = "const",
        noise_seed: int | None = None,
    ) -> Tensor:
        """Latents ``[B, 512]`` / ``[B, L, 512]`` → images ``[B, 3, S, S]`` (float32 on the CPU)."""
        generator = self.source()
        chunks = []
        with self._lock, torch.inference_mode():
            for first in range(0, latents.shape[0], self.batch_size):
                part = latents[first : first + self.batch_size]
                seed = None if noise_seed is None else (noise_seed + first) % 2**64
                images = generator.synthesize(
                    part,
                    truncation.psi,
                    None,
                    noise_mode,
                    truncation_cutoff=truncation.cutoff,
                    noise_seed=seed,
                )
                chunks.append(images.float().cpu())
        return torch.cat(chunks)

    def sample_w(self, seeds: Sequence[int], psis: Sequence[float], cutoff: int | None = None) -> Tensor:
        """The truncated w of each seed: W ``[B, 512]``, or W+ ``[B, L, 512]`` when ``cutoff`` is set."""
        generator = self.source()
        z = torch.stack([z_from_seed(seed, generator.style_dim) for seed in seeds]).to(generator.device)
        with self._lock, torch.inference_mode():
            w = generator.mapping(z)
            return torch.cat(
                [generator.truncate(w[i : i + 1], psi, cutoff=cutoff) for i, psi in enumerate(psis)]
            ).cpu()

    def candidate_latents(
        self,
        w_plus: Tensor,
        specs: Sequence[StrategySpec],
        target: Tensor | None,
        sampled_w: Tensor | None,
        loss_fn: LossFn | None,
    ) -> list[tuple[StrategySpec, Tensor]]:
        generator = self.source()
        with self._lock, torch.no_grad():  # low_prior turns autograd back on for its own loop
            pairs = candidate_latents(generator, w_plus, specs, target, sampled_w, loss_fn)
        return [(spec, latent.cpu()) for spec, latent in pairs]


# ----------------------------------------------------------------------------- conversions


def to_uint8(images: Tensor) -> np.ndarray:
    """``[B, 3, S, S]`` in ~[-1, 1] → ``[B, S, S, 3]`` uint8, as NVlabs' generate.py does (x·127.5 + 128, clipped)."""
    return (images.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()


def image_from_tensor(image: Tensor) -> Image.Image:
    return Image.fromarray(to_uint8(image[None])[0])


def tensor_from_image(image: Image.Image) -> Tensor:
    """RGB PIL image → ``[3, H, W]`` float in [-1, 1] (the generator's range)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def check_psi(psi: float, what: str = "psi") -> float:
    if not math.isfinite(psi) or not PSI_RANGE[0] <= psi <= PSI_RANGE[1]:
        raise GeneratorRequestError(
            f"{what} must be a finite number in [{PSI_RANGE[0]:g}, {PSI_RANGE[1]:g}], got {psi}"
        )
    return float(psi)


def check_cutoff(cutoff: int, n_latent: int) -> int:
    if not 0 <= cutoff <= n_latent:
        raise GeneratorRequestError(f"truncation_cutoff must be in [0, {n_latent}], got {cutoff}")
    return int(cutoff)


def check_seed(seed: Any, what: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise GeneratorRequestError(f"{what} must be an integer in [0, 2**64), got {seed!r}")
    return seed


def as_latents(array: np.ndarray, generator: Generator, what: str) -> Tensor:
    """One latent: W ``[512]`` → ``[1, 512]``; W+ ``[L, 512]`` (or ``[1, L, 512]``) → ``[1, L, 512]``."""
    if not np.isfinite(array).all():
        raise GeneratorRequestError(f"{what}: contains NaN or infinity")
    shape = tuple(array.shape)
    if shape == (generator.style_dim,):
        return torch.from_numpy(np.array(array, dtype=np.float32)).reshape(1, -1)
    if shape in ((generator.n_latent, generator.style_dim), (1, generator.n_latent, generator.style_dim)):
        return torch.from_numpy(np.array(array, dtype=np.float32)).reshape(1, generator.n_latent, -1)
    raise GeneratorRequestError(
        f"{what}: shape {list(shape)} is neither W [{generator.style_dim}] nor W+ [{generator.n_latent}, {generator.style_dim}]"
    )


def to_w_plus(latent: Tensor, n_latent: int) -> Tensor:
    return latent.unsqueeze(1).expand(-1, n_latent, -1) if latent.ndim == 2 else latent


@dataclass(frozen=True)
class OutputFormat:
    """How this call returns images (from common.OutputOptions)."""

    fmt: str = "png"
    quality: int = DEFAULT_JPEG_QUALITY
    to_blob_store: bool = False
    size: int = 0

    @classmethod
    def from_proto(cls, options: common_pb2.OutputOptions) -> OutputFormat:
        fmt = "jpeg" if options.format == common_pb2.IMAGE_FORMAT_JPEG else "png"
        quality = options.jpeg_quality or DEFAULT_JPEG_QUALITY
        if not 1 <= quality <= 100:
            raise GeneratorRequestError(f"output.jpeg_quality must be in 1..100, got {options.jpeg_quality}")
        if not 0 <= options.size <= MAX_OUTPUT_SIZE:
            raise GeneratorRequestError(
                f"output.size must be in 0..{MAX_OUTPUT_SIZE} (0 = native), got {options.size}"
            )
        return cls(fmt, quality, options.to_blob_store, options.size)

    def check_budget(self, count: int, native_size: int) -> None:
        """Refuse a call whose ``count`` images would together pass MAX_OUTPUT_PIXELS."""
        side = self.size or native_size
        if count * side * side > MAX_OUTPUT_PIXELS:
            raise GeneratorRequestError(
                f"{count} images of {side}x{side} px are {count * side * side / 1e6:.0f} MP in one call; "
                f"at most {MAX_OUTPUT_PIXELS / 1e6:.0f} MP: ask for fewer or smaller images"
            )

    def encode(self, image: Image.Image) -> bytes:
        if self.size and self.size != image.width:
            image = image.resize((self.size, self.size), Image.Resampling.LANCZOS)
        return encode_image(image, self.fmt, self.quality)

    def message(self, image: Image.Image, blobs: BlobStore) -> common_pb2.Image:
        data = self.encode(image)
        if not self.to_blob_store:
            return common_pb2.Image(data=data)
        # Content-addressed: the same image always lands under the same key (idempotent retries).
        key = (
            f"rpc/generator/{hashlib.sha256(data).hexdigest()[:32]}.{'jpg' if self.fmt == 'jpeg' else 'png'}"
        )
        return common_pb2.Image(uri=blobs.put(key, data))


# ----------------------------------------------------------------------------- gRPC


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    def __init__(
        self, runner: GeneratorRunner, blobs: BlobStore, settings: Settings, *, loss_fn: LossFn | None = None
    ):
        self.runner = runner
        self.blobs = blobs
        self.settings = settings
        self.loss_fn = loss_fn  # low_prior's loss (None: pixel + multi-scale)

    def Synthesize(
        self, request: generator_pb2.SynthesizeRequest, context: grpc.ServicerContext
    ) -> generator_pb2.SynthesizeResponse:
        with typed_errors():
            output = OutputFormat.from_proto(request.output)
            generator = self.runner.generator
            count = len(request.latents)
            if not 1 <= count <= MAX_ITEMS_PER_REQUEST:
                raise GeneratorRequestError(
                    f"latents: expected 1..{MAX_ITEMS_PER_REQUEST} latents, got {count}"
                )
            output.check_budget(count, generator.size)
            latents = [
                as_latents(_tensor(msg, f"latents[{i}]"), generator, f"latents[{i}]")
                for i, msg in enumerate(request.latents)
            ]
            if len({latent.ndim for latent in latents}) > 1:  # mixed W and W+: broadcast the W ones
                latents = [to_w_plus(latent, generator.n_latent) for latent in latents]
            truncation = Truncation(
                psi=check_psi(request.truncation_psi, "truncation_psi")
                if request.HasField("truncation_psi")
                else 1.0,
                cutoff=check_cutoff(request.truncation_cutoff, generator.n_latent)
                if request.HasField("truncation_cutoff")
                else None,
            )
            images = self.runner.synthesize(torch.cat(latents), truncation, _noise_mode(request.noise_mode))
            return generator_pb2.SynthesizeResponse(
                images=[output.message(image_from_tensor(img), self.blobs) for img in images]
            )

    def Sample(
        self, request: generator_pb2.SampleRequest, context: grpc.ServicerContext
    ) -> generator_pb2.SampleResponse:
        with typed_errors():
            output = OutputFormat.from_proto(request.output)
            generator = self.runner.generator
            seeds = list(request.seeds)
            if not 1 <= len(seeds) <= MAX_ITEMS_PER_REQUEST:
                raise GeneratorRequestError(
                    f"seeds: expected 1..{MAX_ITEMS_PER_REQUEST} seeds, got {len(seeds)}"
                )
            output.check_budget(len(seeds), generator.size)
            psi = check_psi(request.psi) if request.HasField("psi") else 1.0
            cutoff = (
                check_cutoff(request.truncation_cutoff, generator.n_latent)
                if request.HasField("truncation_cutoff")
                else None
            )
            w = self.runner.sample_w(seeds, [psi] * len(seeds), cutoff)
            noise_mode = _noise_mode(request.noise_mode)
            if noise_mode == "random":
                # Drawn from each sample's own seed, so a sample is reproducible in every noise mode.
                images = torch.cat(
                    [
                        self.runner.synthesize(w[i : i + 1], noise_mode=noise_mode, noise_seed=seed)
                        for i, seed in enumerate(seeds)
                    ]
                )
            else:
                images = self.runner.synthesize(w, noise_mode=noise_mode)
            return generator_pb2.SampleResponse(
                samples=[
                    generator_pb2.Sample(
                        seed=seed,
                        w=numpy_to_tensor(w[i].numpy()),
                        image=output.message(image_from_tensor(images[i]), self.blobs),
                    )
                    for i, seed in enumerate(seeds)
                ]
            )

    def Candidates(
        self, request: generator_pb2.CandidatesRequest, context: grpc.ServicerContext
    ) -> generator_pb2.CandidatesResponse:
        with typed_errors():
            output = OutputFormat.from_proto(request.output)
            generator = self.runner.generator
            if not request.HasField("latent"):
                raise GeneratorRequestError("latent: the W+ code is required")
            w_plus = as_latents(_tensor(request.latent, "latent"), generator, "latent")
            if w_plus.ndim != 3:
                raise GeneratorRequestError(
                    f"latent: expected a W+ code [{generator.n_latent}, {generator.style_dim}], got a W vector"
                )
            count = len(request.strategies)
            if not 1 <= count <= MAX_STRATEGIES_PER_REQUEST:
                raise GeneratorRequestError(
                    f"strategies: expected 1..{MAX_STRATEGIES_PER_REQUEST}, got {count}"
                )
            output.check_budget(count, generator.size)
            specs = [
                _spec(s.name, dict(s.params), s.seed, f"strategies[{i}]")
                for i, s in enumerate(request.strategies)
            ]
            target = self._target(request.target) if request.HasField("target") else None
            sampled_w = None
            if request.HasField("sampled_w"):
                sampled_w = to_w_plus(
                    as_latents(_tensor(request.sampled_w, "sampled_w"), generator, "sampled_w"),
                    generator.n_latent,
                )[0]
            pairs = _checked(
                lambda: self.runner.candidate_latents(w_plus[0], specs, target, sampled_w, self.loss_fn)
            )
            images = self.runner.synthesize(torch.stack([latent for _, latent in pairs]))
            return generator_pb2.CandidatesResponse(
                candidates=[
                    generator_pb2.Candidate(
                        strategy=_strategy_message(spec),
                        image=output.message(image_from_tensor(image), self.blobs),
                        latent=numpy_to_tensor(latent.numpy()),
                    )
                    for (spec, latent), image in zip(pairs, images, strict=True)
                ]
            )

    def _target(self, image: common_pb2.Image) -> Tensor:
        source = image.WhichOneof("source")
        if source == "data":
            data = image.data
        elif source == "uri":
            data = self.blobs.get(image.uri)
        else:
            raise GeneratorRequestError("target: neither data nor uri is set")
        decoded = decode_image(
            data, max_bytes=self.settings.max_image_bytes, max_pixels=self.settings.max_image_pixels
        )
        return tensor_from_image(decoded)


def _tensor(message: common_pb2.Tensor, what: str) -> np.ndarray:
    try:
        return tensor_to_numpy(message, name=what)
    except ValueError as error:
        raise GeneratorRequestError(str(error)) from None


def _noise_mode(value: int) -> str:
    try:
        return NOISE_MODES[value]
    except KeyError:
        raise GeneratorRequestError(f"noise_mode: unknown value {value}") from None


def _spec(name: Any, params: Any, seed: Any, what: str) -> StrategySpec:
    if not isinstance(params, dict):
        raise GeneratorRequestError(f"{what}.params must be an object of numbers")
    try:
        return StrategySpec(str(name), params, check_seed(seed, f"{what}.seed"))
    except ValueError as error:
        raise GeneratorRequestError(f"{what}: {error}") from None


def _checked(call: Callable[[], Any]) -> Any:
    """Run a manipulation; its ValueErrors are about the inputs (a missing target, a bad shape)."""
    try:
        return call()
    except InvalidLatentError:
        raise
    except ValueError as error:
        raise GeneratorRequestError(str(error)) from None


def _strategy_message(spec: StrategySpec) -> common_pb2.Strategy:
    record = spec.record()
    return common_pb2.Strategy(
        name=record["name"], params={k: float(v) for k, v in record["params"].items()}, seed=record["seed"]
    )


# ----------------------------------------------------------------------------- queue stages

StageHandler = Callable[[list[Task]], list[TaskResult]]


def _fail_or_raise(task: Task, error: Exception) -> TaskResult:
    status = status_of(error)
    if status is None:
        raise error  # transient (storage hiccup...): the worker retries
    return TaskResult.failure(task, *status)


def _payload_key(payload: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise GeneratorRequestError(f"payload needs {name!r}: a blob key" + ("" if required else " or null"))
    return value


def sample_handler(runner: GeneratorRunner, blobs: BlobStore, settings: Settings) -> StageHandler:
    """The ``sample`` stage: payload ``{seed, psi}`` → ``{w: npy key [L, 512], image: PNG key}``.
    All samples of a worker batch are synthesized as one model batch."""

    def handle(tasks: list[Task]) -> list[TaskResult]:
        results: list[TaskResult | None] = [None] * len(tasks)
        seeds: list[int] = []
        psis: list[float] = []
        positions: list[int] = []
        for index, task in enumerate(tasks):
            try:
                seed = check_seed(task.payload.get("seed"), "payload 'seed'")
                psi = task.payload.get("psi")
                if isinstance(psi, bool) or not isinstance(psi, int | float):
                    raise GeneratorRequestError(f"payload 'psi' must be a number, got {psi!r}")
                psis.append(check_psi(float(psi), "payload 'psi'"))
                seeds.append(seed)
                positions.append(index)
            except Exception as error:
                results[index] = _fail_or_raise(task, error)
        if positions:
            try:
                w = runner.sample_w(seeds, psis)
                generator = runner.generator
                images = runner.synthesize(w)
            except Exception as error:
                for index in positions:
                    results[index] = _fail_or_raise(tasks[index], error)
            else:
                w_plus = to_w_plus(w, generator.n_latent)
                for slot, index in enumerate(positions):
                    task = tasks[index]
                    w_key = item_key(task.job_id, task.item_id, "sample", "w.npy")
                    image_key = item_key(task.job_id, task.item_id, "sample", "image.png")
                    blobs.put_npy(w_key, w_plus[slot].numpy().astype(np.float32))
                    blobs.put(image_key, encode_image(image_from_tensor(images[slot]), "png"))
                    results[index] = TaskResult.success(task, {"w": w_key, "image": image_key})
        return [result for result in results if result is not None]

    return handle


def synthesize_handler(
    runner: GeneratorRunner, blobs: BlobStore, settings: Settings, *, loss_fn: LossFn | None = None
) -> StageHandler:
    """The ``synthesize`` stage: K candidates per task; every candidate of the batch in one model batch."""

    def read_latent(key: str, what: str, generator: Generator) -> Tensor:
        try:
            array = blobs.get_npy(key)
        except ValueError as error:
            raise GeneratorRequestError(f"payload {what!r}: {error}") from None
        return to_w_plus(as_latents(array, generator, f"payload {what!r}"), generator.n_latent)[0]

    def prepare(task: Task) -> list[tuple[StrategySpec, Tensor]]:
        generator = runner.generator
        payload = task.payload
        w_plus = read_latent(_payload_key(payload, "latent"), "latent", generator)
        strategies = payload.get("strategies")
        if not isinstance(strategies, list) or not 1 <= len(strategies) <= MAX_STRATEGIES_PER_REQUEST:
            raise GeneratorRequestError(
                f"payload 'strategies' must be a list of 1..{MAX_STRATEGIES_PER_REQUEST} {{name, params, seed}}"
            )
        specs = []
        for i, entry in enumerate(strategies):
            if not isinstance(entry, dict):
                raise GeneratorRequestError(
                    f"payload 'strategies[{i}]' must be an object {{name, params, seed}}"
                )
            specs.append(
                _spec(entry.get("name"), entry.get("params") or {}, entry.get("seed", 0), f"strategies[{i}]")
            )
        target_key = _payload_key(payload, "target", required=False)
        target = None
        if target_key is not None:
            image = decode_image(
                blobs.get(target_key),
                max_bytes=settings.max_image_bytes,
                max_pixels=settings.max_image_pixels,
            )
            target = tensor_from_image(image)
        sampled_key = _payload_key(payload, "sampled_w", required=False)
        sampled_w = read_latent(sampled_key, "sampled_w", generator) if sampled_key is not None else None
        return _checked(lambda: runner.candidate_latents(w_plus, specs, target, sampled_w, loss_fn))

    def handle(tasks: list[Task]) -> list[TaskResult]:
        results: list[TaskResult | None] = [None] * len(tasks)
        prepared: list[tuple[int, list[tuple[StrategySpec, Tensor]]]] = []
        for index, task in enumerate(tasks):
            try:
                prepared.append((index, prepare(task)))
            except Exception as error:
                results[index] = _fail_or_raise(task, error)
        all_latents = [latent for _, pairs in prepared for _, latent in pairs]
        if all_latents:
            try:
                images = runner.synthesize(torch.stack(all_latents))
            except Exception as error:
                for index, _ in prepared:
                    results[index] = _fail_or_raise(tasks[index], error)
            else:
                offset = 0
                for index, pairs in prepared:
                    task = tasks[index]
                    candidates = []
                    for k, (spec, latent) in enumerate(pairs):
                        image_key = item_key(task.job_id, task.item_id, "synthesize", f"candidate-{k}.png")
                        latent_key = item_key(task.job_id, task.item_id, "synthesize", f"candidate-{k}.npy")
                        blobs.put(image_key, encode_image(image_from_tensor(images[offset + k]), "png"))
                        blobs.put_npy(latent_key, latent.numpy().astype(np.float32))
                        candidates.append(
                            {"image": image_key, "latent": latent_key, "strategy": spec.record(),
                             "provenance": {"generator": runner.generator.source.get("provenance", {})}}
                        )
                    offset += len(pairs)
                    results[index] = TaskResult.success(task, {"candidates": candidates})
        return [result for result in results if result is not None]

    return handle


# ----------------------------------------------------------------------------- process


def build_process(
    settings: Settings,
    *,
    source: GeneratorSource | None = None,
    blobs: BlobStore | None = None,
    loss_fn: LossFn | None = None,
) -> tuple[ServiceProcess, GeneratorServicer]:
    """The generator process (gRPC servicer + ``sample``/``synthesize`` workers), not started.
    ``source`` overrides the model (tests, tools)."""
    blobs = blobs or BlobStore(settings.blob_url)
    if source is None:
        loader = GeneratorLoader(settings)
        loader.preload()
        source = loader.get
    runner = GeneratorRunner(source, settings.batch_size)
    process = ServiceProcess("generator", settings)
    servicer = GeneratorServicer(runner, blobs, settings, loss_fn=loss_fn)
    generator_pb2_grpc.add_GeneratorServicer_to_server(servicer, process.server)
    process.add_service_name(SERVICE_NAME)
    stages = settings.stages_for("generator")
    if "sample" in stages:
        process.add_worker("sample", sample_handler(runner, blobs, settings))
    if "synthesize" in stages:
        process.add_worker("synthesize", synthesize_handler(runner, blobs, settings, loss_fn=loss_fn))
    return process, servicer


def main(settings: Settings | None = None) -> None:
    """Run the generator service until SIGTERM/SIGINT."""
    settings = settings or get_settings()
    settings.configure_logging()
    log.info("generator: strategies available: %s", ", ".join(STRATEGIES))
    process, _ = build_process(settings)
    process.serve_forever()


if __name__ == "__main__":
    main()
