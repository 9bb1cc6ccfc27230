"""The generator's `diffuse` stage (the prompts job mode): `DiffusePayload` -> `DiffuseOutput`.

Wiring only: the pipelines are `services.generator.diffusion`. Each registered pipeline is a lazy
model of its own (loaded by the first task that names it); a worker batch runs as few pipeline
calls as its tasks allow (tasks of one pipeline, steps, guidance and size share a call), and the
QOI encoding and writing go to the store threads while the next batch runs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from concurrent.futures import Executor

import numpy as np
import torch

from services.common.blobs import BlobStore, item_key
from services.common.config import Settings
from services.common.contracts import DIFFUSION_PIPELINES, DiffuseOutput, DiffusePayload
from services.common.images import INTERMEDIATE_SUFFIX, encode_intermediate
from services.common.model_holder import LazyModel, Provenance
from services.common.queue import Task
from services.common.stage_handler import StageHandler, batched_handler
from services.common.weights import WeightsRegistry
from services.generator.diffusion import DiffusionModel, DiffusionRequest, load_diffusion

DiffusionModels = dict[str, LazyModel[DiffusionModel]]


def diffusion_models(settings: Settings, registry: WeightsRegistry | None = None) -> DiffusionModels:
    """One lazy model per known pipeline name; a task naming an unregistered one fails with the
    registry's error (it names `sfhq weights`)."""
    registry = registry or WeightsRegistry(settings.weights_dir)

    def loader(name: str) -> Callable[[], tuple[DiffusionModel, Provenance]]:
        def load() -> tuple[DiffusionModel, Provenance]:
            device = torch.device(settings.resolved_device())
            model = load_diffusion(registry.path(name), device, settings.use_fp16())
            return model, Provenance.from_registry(registry, name, format="diffusers-stable-diffusion")

        return load

    return {name: LazyModel("diffusion", loader(name)) for name in DIFFUSION_PIPELINES}


def _request(payload: DiffusePayload) -> DiffusionRequest:
    return DiffusionRequest(
        prompt=payload.prompt,
        seed=payload.seed,
        negative_prompt=payload.negative_prompt,
        guidance_scale=payload.guidance_scale,
        steps=payload.steps,
        width=payload.width,
        height=payload.height,
    )


def diffuse_stage(
    models: DiffusionModels, blobs: BlobStore, settings: Settings, store_pool: Executor | None = None
) -> StageHandler:
    """`diffuse`: one Stable Diffusion image per task, batched per pipeline."""

    def group(_task: Task, payload: DiffusePayload) -> Hashable:
        return payload.pipeline

    def run(payloads: list[DiffusePayload]) -> list[np.ndarray]:
        model = models[payloads[0].pipeline]  # one group is one pipeline
        requests = [_request(p) for p in payloads]
        return model.run(lambda m: m.generate(requests, settings.batch_size))

    def store(task: Task, payload: DiffusePayload, image: np.ndarray) -> DiffuseOutput:
        key = item_key(task.job_id, task.item_id, "diffuse", f"image{INTERMEDIATE_SUFFIX}")
        blobs.put(key, encode_intermediate(image), durable=False)
        return DiffuseOutput(
            image=key,
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            provenance=models[payload.pipeline].provenance_record(),
        )

    parse = lambda task: DiffusePayload.parse(task.payload, "diffuse")  # noqa: E731
    return batched_handler(parse, run, store, group_by=group, store_pool=store_pool)
