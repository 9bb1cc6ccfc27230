"""The search service's `embed` stage: `EmbedPayload` -> `EmbedOutput`.

Wiring only: CLIP ViT-L/14@336 (services.search.clip_model) gives the features the index and
the taste models use; the extractors `SFHQ_EXTRA_FEATURES` names (services.search.extractors)
add theirs under SFHQ's keys, for the pickles and for taste models trained on them. One model
batch per model for every readable image of a worker batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from services.common.blobs import BlobStore, item_key
from services.common.config import Settings
from services.common.contracts import FEATURE_KEY, EmbedOutput, EmbedPayload
from services.common.model_holder import LazyModel, Provenance
from services.common.queue import Task
from services.common.rpc import read_blob_image
from services.common.stage_handler import StageHandler, batched_handler
from services.common.weights import RANDOM_MARKER, WeightsRegistry
from services.search.clip_model import ClipEmbedder
from services.search.extractors import FeatureExtractor, extractor_spec

ExtraModels = dict[str, LazyModel[FeatureExtractor]]
Features = dict[str, np.ndarray]  # feature key -> [dim] of one image


def extractor_models(settings: Settings, registry: WeightsRegistry | None = None) -> ExtraModels:
    """One lazy model per configured extra extractor (an unknown key is an error now, at start)."""
    registry = registry or WeightsRegistry(settings.weights_dir)

    def loader(key: str) -> Callable[[], tuple[FeatureExtractor, Provenance]]:
        spec = extractor_spec(key)

        def load() -> tuple[FeatureExtractor, Provenance]:
            device, folder = torch.device(settings.resolved_device()), registry.path(spec.checkpoint)
            extractor = spec.load(folder, device, settings.use_fp16())
            provenance = Provenance.from_registry(registry, spec.checkpoint, feature_key=key)
            if (folder / RANDOM_MARKER).exists():  # a random folder registered among real ones
                provenance = dataclasses.replace(provenance, random_weights=True)
            return extractor, provenance

        return load

    return {key: LazyModel(f"features:{key}", loader(key)) for key in settings.extra_features}


def embed_stage(
    clip: LazyModel[ClipEmbedder], blobs: BlobStore, settings: Settings, extras: ExtraModels | None = None
) -> StageHandler:
    """`embed`: CLIP features (and the extra extractors') of every readable image of a batch."""
    extras = extras or {}

    def parse(task: Task) -> Image.Image:
        return read_blob_image(EmbedPayload.parse(task.payload, "embed").image, blobs, settings)

    def run(images: list[Image.Image]) -> list[Features]:
        columns = {FEATURE_KEY: clip.run(lambda c: c.embed_images(images))}
        for key, model in extras.items():
            columns[key] = model.run(lambda m: m.embed_images(images))
        return [{key: rows[n] for key, rows in columns.items()} for n in range(len(images))]

    def store(task: Task, _image: Image.Image, features: Features) -> EmbedOutput:
        keys: dict[str, str] = {}
        for key, vector in features.items():
            name = "features.npy" if key == FEATURE_KEY else f"features-{key}.npy"
            keys[key] = item_key(task.job_id, task.item_id, "embed", name)
            blobs.put_npy(keys[key], vector.astype(np.float32), durable=False)
        provenance = clip.provenance_record()
        for model in extras.values():
            provenance.update(model.provenance_record())
        return EmbedOutput(
            features=keys.pop(FEATURE_KEY),
            feature_key=FEATURE_KEY,
            dim=int(features[FEATURE_KEY].size),
            extra_features=keys,
            provenance=provenance,
        )

    return batched_handler(parse, run, store)
