"""Taking a label back (the studio's undo): the item no longer trains the model, and it survives a restart."""

from __future__ import annotations

import numpy as np

from services.common.blobs import BlobStore
from services.search.labels import LabelRecord, LabelStore


def _record(item: str, positive: bool, *, cleared: bool = False) -> LabelRecord:
    rng = np.random.default_rng(abs(hash(item)) % 1000)
    return LabelRecord(rng.standard_normal(8).astype(np.float32), positive, item_id=item, cleared=cleared)


def test_a_cleared_label_leaves_the_training_set(tmp_path):
    store = LabelStore(BlobStore(str(tmp_path)))
    store.append("u/default", [_record("j/a", True), _record("j/b", False), _record("j/c", True)])
    assert store.counts("u/default") == (2, 1)
    store.append("u/default", [_record("j/a", False, cleared=True)])
    assert store.counts("u/default") == (1, 1)
    x, y = store.training_set("u/default")
    assert len(x) == 2 and sorted(y.tolist()) == [0, 1]
    # a fresh store (another process) replays the log to the same state
    again = LabelStore(BlobStore(str(tmp_path)))
    assert again.counts("u/default") == (1, 1)
    # labelling it again after the undo counts it once more
    again.append("u/default", [_record("j/a", False)])
    assert again.counts("u/default") == (1, 2)
