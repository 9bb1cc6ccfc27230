"""Label log: durable, append-only JSONL in the blob store; the latest label of an item wins."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from services.common.blobs import BlobStore
from services.search.labels import LabelRecord, LabelStore
from services.search.taste import TasteInputError


def record(i: int, positive: bool, item: str | None = None) -> LabelRecord:
    features = np.random.default_rng(i).standard_normal(16).astype(np.float32)
    return LabelRecord(features=features, positive=positive, item_id=item, labeler="ana")


def test_labels_survive_a_new_store_object_exactly(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    labels = LabelStore(blobs)
    first = [record(i, i % 2 == 0, f"item{i}") for i in range(5)]
    key = labels.append("ann/faces", first)
    assert key.startswith("taste/ann/faces/labels/") and key.endswith(".jsonl")
    read = LabelStore(BlobStore(tmp_path / "blobs")).records("ann/faces")
    assert [r.item_id for r in read] == [f"item{i}" for i in range(5)]
    np.testing.assert_array_equal(read[3].features, first[3].features)  # bit-exact float32
    assert read[0].labeler == "ana" and read[0].time.endswith("Z")
    assert read[0].feature_key == "CLIP_ViTL_14@336"


def test_the_latest_label_of_an_item_wins_and_anonymous_labels_all_count(tmp_path: Path) -> None:
    labels = LabelStore(BlobStore(tmp_path / "blobs"))
    labels.append("ann/faces", [record(1, True, "a"), record(2, False, "b")])
    labels.append("ann/faces", [record(3, False, "a")])  # the labeller changed their mind about "a"
    labels.append("ann/faces", [record(4, True), record(5, True)])  # explicit features, no item
    features, positive = labels.training_set("ann/faces")
    assert features.shape == (4, 16)
    assert labels.counts("ann/faces") == (2, 2)
    row_of_a = [i for i in range(4) if np.array_equal(features[i], record(3, False).features)]
    assert row_of_a and not positive[row_of_a[0]]
    assert (
        len(BlobStore(tmp_path / "blobs").list("taste/ann/faces/labels/")) == 3
    )  # append-only: one file per call
    assert labels.training_set("ann/other")[0].shape[0] == 0


def test_concurrent_labellers_do_not_lose_labels(tmp_path: Path) -> None:
    labels = LabelStore(BlobStore(tmp_path / "blobs"))

    def label(worker: int) -> None:
        for i in range(10):
            labels.append("ann/faces", [record(worker * 100 + i, True, f"w{worker}-{i}")])

    threads = [threading.Thread(target=label, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert labels.counts("ann/faces") == (40, 0)


def test_bad_labels_are_refused(tmp_path: Path) -> None:
    labels = LabelStore(BlobStore(tmp_path / "blobs"))
    with pytest.raises(TasteInputError, match="finite"):
        labels.append("ann/faces", [LabelRecord(features=np.array([np.nan, 1.0]), positive=True)])
    with pytest.raises(TasteInputError, match="name"):
        labels.append("ann/no/slashes", [record(1, True)])
    labels.append("ann/faces", [record(1, True, "a")])
    labels.append("ann/faces", [LabelRecord(features=np.ones(8, np.float32), positive=False, item_id="b")])
    with pytest.raises(TasteInputError, match="mix feature dimensions"):
        labels.training_set("ann/faces")
