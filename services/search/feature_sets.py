"""Feature sets beyond CLIP for taste models: the extra vectors of indexed items, kept by index id.

The index holds each item's CLIP ViT-L/14@336 vector, which is what search and a CLIP-only taste
model need. A taste model trained on a feature set (say CLIP + `ConvNext_XL_Imagenet21k`, as SFHQ's
VTA could) needs the item's other vectors too, whenever it is trained, scored or reviewed. The curate
stage keeps them here when the embed stage made them (`SFHQ_EXTRA_FEATURES`): one `.npz` per item,
`features/<job_id>/<item_id>.npz` in the blob store (arrays only, read with allow_pickle=False).

`inputs` turns rows of CLIP vectors plus stored extras into what `TasteModel` takes: the CLIP rows
alone for a CLIP-only model, else {feature key: [N, D_k]}.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from services.common.contracts import FEATURE_KEY
from services.common.errors import FailedPrecondition
from services.search.taste import TasteModel

Inputs = np.ndarray | dict[str, np.ndarray]


class MissingFeatures(FailedPrecondition):
    """A taste model needs a feature set some items were not embedded with."""


def _key(index_id: str) -> str:
    return f"features/{index_id}.npz"


class FeatureSets:
    """Extra feature vectors of indexed items in the blob store."""

    def __init__(self, blobs) -> None:
        self.blobs = blobs

    def put(self, index_id: str, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        buffer = io.BytesIO()
        np.savez(buffer, **{key: np.asarray(v, np.float32).reshape(-1) for key, v in vectors.items()})
        self.blobs.put(_key(index_id), buffer.getvalue())

    def get(self, index_id: str) -> dict[str, np.ndarray]:
        """The item's extra vectors ({} when it has none)."""
        try:
            data = self.blobs.get(_key(index_id))
        except FileNotFoundError:
            return {}
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}

    def inputs(self, model: TasteModel, index_ids: Sequence[str], clip_rows: np.ndarray) -> Inputs:
        """What `model` scores for these items (MissingFeatures names the first item lacking a set)."""
        extra_keys = [key for key in model.feature_keys if key != FEATURE_KEY]
        if not extra_keys:
            return clip_rows
        columns: dict[str, list[np.ndarray]] = {key: [] for key in extra_keys}
        for index_id in index_ids:
            stored = self.get(index_id)
            missing = [key for key in extra_keys if key not in stored]
            if missing:
                raise MissingFeatures(
                    f"taste model {model.name!r} uses {', '.join(missing)}, which item {index_id!r} was not "
                    "embedded with (SFHQ_EXTRA_FEATURES on the search service)"
                )
            for key in extra_keys:
                columns[key].append(stored[key])
        sets = {key: np.stack(rows) for key, rows in columns.items()}
        return {FEATURE_KEY: clip_rows, **sets} if FEATURE_KEY in model.feature_keys else sets

    def training_sets(
        self, keys: Sequence[str], index_ids: Sequence[str | None], clip_rows: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """({key: [M, D_k]}, kept row numbers): the labelled rows whose items have every set of `keys`."""
        kept: list[int] = []
        columns: dict[str, list[np.ndarray]] = {key: [] for key in keys}
        for row, index_id in enumerate(index_ids):
            stored = self.get(index_id) if index_id else {}
            if any(key != FEATURE_KEY and key not in stored for key in keys):
                continue
            kept.append(row)
            for key in keys:
                columns[key].append(clip_rows[row] if key == FEATURE_KEY else stored[key])
        if not kept:
            return {key: np.zeros((0, 1), np.float32) for key in keys}, np.zeros(0, int)
        return {key: np.stack(rows) for key, rows in columns.items()}, np.array(kept)
