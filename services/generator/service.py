"""Generator service: StyleGAN2 behind gRPC (`sfhq.v1.Generator`), the `sample` / `synthesize` stages
and Stable Diffusion's `diffuse` (services.generator.prompts_stage). Wiring only: see engine, diffusion.

* `Synthesize`: W `[512]` or W+ `[n_latent, 512]` latents → images (optional truncation, noise mode).
* `Sample`: seeds → z → w with truncation psi (psi > 1 allowed) → images and w.
* `Candidates`: one W+ code + strategies → photoreal candidates (services.generator.manipulate).
* `sample`: `SamplePayload` → `SampleOutput`; `synthesize`: `SynthesizePayload` → `SynthesizeOutput`
  (K candidates per task). Both run a worker batch as one model batch (`low_prior` refinements,
  with their identity term, too), leaving QOI encoding and writing to the store threads.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor

import grpc
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from services.common.blobs import BlobStore, item_key
from services.common.config import Settings
from services.common.contracts import (
    Candidate,
    SampleOutput,
    SamplePayload,
    StrategyRecord,
    SynthesizeOutput,
    SynthesizePayload,
)
from services.common.errors import InvalidInput
from services.common.images import INTERMEDIATE_SUFFIX, encode_intermediate
from services.common.model_holder import LazyModel, Provenance
from services.common.queue import Task
from services.common.rpc import OutputFormat, check_count, read_array, read_blob_image, read_image
from services.common.server import ServiceProcess, run_service
from services.common.stage_handler import StageHandler, batched_handler
from services.common.weights import WeightsRegistry
from services.encoder.service import EncoderModel
from services.generator import engine, messages
from services.generator.checkpoint import load_generator
from services.generator.engine import to_w_plus
from services.generator.identity import identity_for, identity_model, identity_provenance
from services.generator.manipulate import STRATEGIES, CandidateJob, LossFn, StrategySpec
from services.generator.model import Generator
from services.generator.prompts_stage import DiffusionModels, diffuse_stage, diffusion_models
from sfhq.v1 import common_pb2, generator_pb2, generator_pb2_grpc

log = logging.getLogger(__name__)

# Tried in order: rosinality config-f, then NVlabs ada-pytorch FFHQ, then e4e's bundled decoder.
CHECKPOINT_NAMES: tuple[str, ...] = ("stylegan2-ffhq-config-f", "stylegan2-ada-ffhq", "e4e-ffhq-encode")
MAX_ITEMS_PER_REQUEST = 64  # latents or seeds per call: each is a full-size image in the response
MAX_STRATEGIES_PER_REQUEST = 16
MAX_OUTPUT_PIXELS = MAX_ITEMS_PER_REQUEST * 1024 * 1024  # 64 at 4096 px once took 5 min and 1.5 GB

GeneratorModel = LazyModel[Generator]


def generator_model(settings: Settings, registry: WeightsRegistry | None = None) -> GeneratorModel:
    """The first registered checkpoint of CHECKPOINT_NAMES (none: the error names `sfhq weights`)."""
    registry = registry or WeightsRegistry(settings.weights_dir)

    def load() -> tuple[Generator, Provenance]:
        name = next((n for n in CHECKPOINT_NAMES if registry.has(n)), CHECKPOINT_NAMES[0])
        device = settings.resolved_device()
        generator = engine.configure_runtime(
            load_generator(registry.path(name), device), device, settings.use_fp16()
        )
        return generator, Provenance.from_registry(registry, name, format=generator.source.get("format"))

    return LazyModel("generator", load)


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    """`sfhq.v1.Generator`: typed errors raised here become the call's status."""

    def __init__(
        self,
        model: GeneratorModel,
        blobs: BlobStore,
        settings: Settings,
        loss_fn: LossFn | None,
        identity: EncoderModel | None = None,
    ) -> None:
        self.model = model
        self.blobs = blobs
        self.settings = settings
        self.loss_fn = loss_fn  # low_prior's loss (None: pixel + multi-scale)
        self.identity = identity  # low_prior's identity term (None: pixel + multi-scale only)

    def _output(self, options: common_pb2.OutputOptions, count: int) -> OutputFormat:
        output = OutputFormat.from_proto(options)
        output.check_budget(count, self.model.get().size, MAX_OUTPUT_PIXELS)
        return output

    def _images(self, images: np.ndarray, output: OutputFormat) -> list[common_pb2.Image]:
        return [output.message(Image.fromarray(image), self.blobs, "generator") for image in images]

    def Synthesize(
        self, request: generator_pb2.SynthesizeRequest, context: grpc.ServicerContext
    ) -> generator_pb2.SynthesizeResponse:
        output = self._output(request.output, check_count(request.latents, "latents", MAX_ITEMS_PER_REQUEST))
        generator = self.model.get()
        batch = messages.latents(request.latents, generator)
        truncation = messages.truncation(request, "truncation_psi", generator.n_latent)
        noise, size = messages.noise_mode(request.noise_mode), self.settings.batch_size
        images = self.model.run(lambda g: engine.synthesize_uint8(g, batch, size, truncation, noise))
        return generator_pb2.SynthesizeResponse(images=self._images(images, output))

    def Sample(
        self, request: generator_pb2.SampleRequest, context: grpc.ServicerContext
    ) -> generator_pb2.SampleResponse:
        seeds = list(request.seeds)
        output = self._output(request.output, check_count(seeds, "seeds", MAX_ITEMS_PER_REQUEST))
        truncation = messages.truncation(request, "psi", self.model.get().n_latent)
        noise, size = messages.noise_mode(request.noise_mode), self.settings.batch_size
        w = self.model.run(
            lambda g: engine.sample_w(g, seeds, [truncation.psi] * len(seeds), truncation.cutoff)
        )
        images = engine.to_uint8(
            self.model.run(lambda g: engine.synthesize_samples(g, w, seeds, size, noise))
        )
        return messages.samples_response(seeds, w, self._images(images, output))

    def Candidates(
        self, request: generator_pb2.CandidatesRequest, context: grpc.ServicerContext
    ) -> generator_pb2.CandidatesResponse:
        count = check_count(request.strategies, "strategies", MAX_STRATEGIES_PER_REQUEST)
        output, generator = self._output(request.output, count), self.model.get()
        if not request.HasField("latent"):
            raise InvalidInput("latent: the W+ code is required")
        w_plus = engine.as_w_plus(read_array(request.latent, "latent"), generator, "latent", allow_w=False)
        specs = messages.strategies(request.strategies)
        target = sampled_w = None
        if request.HasField("target"):
            target = engine.tensor_from_image(read_image(request.target, self.blobs, self.settings, "target"))
        if request.HasField("sampled_w"):
            sampled_w = engine.as_w_plus(read_array(request.sampled_w, "sampled_w"), generator, "sampled_w")
        e4e, loss_fn = identity_for(self.identity, [CandidateJob(w_plus, specs)]), self.loss_fn
        pairs = self.model.run(lambda g: engine.candidates(g, w_plus, specs, target, sampled_w, loss_fn, e4e))
        latents = torch.stack([latent for _, latent in pairs])
        images = self.model.run(lambda g: engine.synthesize_uint8(g, latents, self.settings.batch_size))
        return messages.candidates_response(pairs, self._images(images, output))


def sample_stage(
    model: GeneratorModel, blobs: BlobStore, settings: Settings, store_pool: Executor | None = None
) -> StageHandler:
    """`sample`: every sample of a worker batch in one model batch."""

    def run(payloads: list[SamplePayload]) -> list[tuple[Tensor, np.ndarray]]:
        def work(g: Generator) -> list[tuple[Tensor, np.ndarray]]:
            w = engine.sample_w(g, [p.seed for p in payloads], [p.psi for p in payloads])
            images = engine.synthesize_uint8(g, w, settings.batch_size)
            return list(zip(to_w_plus(w, g.n_latent), images, strict=True))

        return model.run(work)

    def store(task: Task, _payload: SamplePayload, result: tuple[Tensor, np.ndarray]) -> SampleOutput:
        w_key, image_key = (
            item_key(task.job_id, task.item_id, "sample", name)
            for name in ("w.npy", f"image{INTERMEDIATE_SUFFIX}")
        )
        blobs.put_npy(w_key, result[0].numpy().astype(np.float32), durable=False)
        blobs.put(image_key, encode_intermediate(result[1]), durable=False)
        return SampleOutput(w=w_key, image=image_key, provenance=model.provenance_record())

    parse = lambda task: SamplePayload.parse(task.payload, "sample")  # noqa: E731
    return batched_handler(parse, run, store, store_pool=store_pool)


def synthesize_stage(
    model: GeneratorModel,
    blobs: BlobStore,
    settings: Settings,
    loss_fn: LossFn | None,
    store_pool: Executor | None = None,
    *,
    identity: EncoderModel | None = None,
) -> StageHandler:
    """`synthesize`: K candidates per task; every candidate of the worker batch in one model batch,
    the `low_prior` ones refined together (`engine.candidates_batch`, identity term on `identity`)."""
    Pairs = list[tuple[StrategySpec, Tensor]]

    def parse(task: Task) -> CandidateJob:
        payload = SynthesizePayload.parse(task.payload, "synthesize")
        generator = model.get()
        specs = [
            engine.strategy_spec(s.name, s.params, s.seed, f"strategies[{i}]")
            for i, s in enumerate(payload.strategies)
        ]
        target = sampled_w = None
        if payload.target:  # low_prior fits the aligned inspiration
            target = engine.tensor_from_image(read_blob_image(payload.target, blobs, settings))
        if payload.sampled_w:  # part 3: the psi > 1 sample that the encoder corrects
            sampled_w = engine.as_w_plus(blobs.get_npy(payload.sampled_w), generator, "payload 'sampled_w'")
        w_plus = engine.as_w_plus(blobs.get_npy(payload.latent), generator, "payload 'latent'")
        return CandidateJob(w_plus, specs, target, sampled_w)

    def run(jobs: list[CandidateJob]) -> list[tuple[Pairs, np.ndarray] | InvalidInput]:
        def work(g: Generator) -> list[tuple[Pairs, np.ndarray] | InvalidInput]:
            encoder = identity_for(identity, jobs)
            outcomes = engine.candidates_batch(g, jobs, loss_fn, settings.batch_size, encoder)
            latents = [code for pairs in outcomes if isinstance(pairs, list) for _, code in pairs]
            pixels = iter(
                engine.synthesize_uint8(g, torch.stack(latents), settings.batch_size) if latents else []
            )
            return [
                pairs if isinstance(pairs, InvalidInput) else (pairs, np.stack([next(pixels) for _ in pairs]))
                for pairs in outcomes
            ]

        return model.run(work)

    def store(task: Task, _job: CandidateJob, result: tuple[Pairs, np.ndarray]) -> SynthesizeOutput:
        candidates = []
        for k, ((spec, code), image) in enumerate(zip(*result, strict=True)):
            key = item_key(task.job_id, task.item_id, "synthesize", f"candidate-{k}")
            blobs.put(f"{key}{INTERMEDIATE_SUFFIX}", encode_intermediate(image), durable=False)
            blobs.put_npy(f"{key}.npy", code.numpy().astype(np.float32), durable=False)
            strategy = StrategyRecord.parse(spec.record())
            provenance = identity_provenance(model, identity)
            candidates.append(
                Candidate(
                    image=f"{key}{INTERMEDIATE_SUFFIX}",
                    latent=f"{key}.npy",
                    strategy=strategy,
                    provenance=provenance,
                )
            )
        return SynthesizeOutput(candidates=candidates)

    return batched_handler(parse, run, store, store_pool=store_pool)


def build_process(
    settings: Settings,
    *,
    model: GeneratorModel | None = None,
    blobs: BlobStore | None = None,
    loss_fn: LossFn | None = None,
    identity: EncoderModel | None = None,
    diffusion: DiffusionModels | None = None,
) -> ServiceProcess:
    """The generator process (gRPC servicer + `diffuse`/`sample`/`synthesize` workers), not started."""
    blobs = blobs or BlobStore(settings.blob_url)
    if model is None:
        model = generator_model(settings)
        model.preload()
        identity = identity or identity_model(settings, preload=True)
    process = ServiceProcess("generator", settings)
    process.add_servicer(
        GeneratorServicer(model, blobs, settings, loss_fn, identity),
        generator_pb2_grpc.add_GeneratorServicer_to_server,
        generator_pb2,
    )
    pool, diffusion = process.store_pool, diffusion or diffusion_models(settings)
    process.add_worker("diffuse", diffuse_stage(diffusion, blobs, settings, pool))
    process.add_worker("sample", sample_stage(model, blobs, settings, pool))
    synthesize = synthesize_stage(model, blobs, settings, loss_fn, pool, identity=identity)
    process.add_worker("synthesize", synthesize)
    return process


def main(settings: Settings | None = None) -> None:
    """Run the generator service until SIGTERM/SIGINT."""
    log.info("generator: strategies available: %s", ", ".join(STRATEGIES))
    run_service(build_process, settings)


if __name__ == "__main__":
    main()
