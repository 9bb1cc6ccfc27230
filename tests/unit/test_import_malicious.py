"""Hostile files on the import paths not already covered elsewhere.

Covered elsewhere (checked before writing this file): SFHQ imports with code-running feature
pickles, symlinked files and folders, zip members with `..`/backslash names and link members
(tests/unit/test_search_import.py); the restricted unpickler itself (test_safe_pickle.py); e4e,
rosinality and NVlabs generator checkpoints that run code (test_encoder_model.py,
test_generator_model.py, test_generator_nvlabs.py).

Here: the BiSeNet and FAN checkpoint loaders, and the files the search service reads back from the
blob store at start-up (the vector index and taste models), given objects whose unpickling would
run a command. The marker file such a command would create must never appear.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from services.annotator.fan import FanCheckpointError, load_fan
from services.annotator.parsing import CheckpointError, load_bisenet
from services.common.blobs import BlobStore
from services.search.index import VectorIndex


class RunsACommand:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    ("loader", "error"),
    [(load_bisenet, CheckpointError), (load_fan, FanCheckpointError)],
    ids=["bisenet", "fan"],
)
def test_checkpoints_whose_pickle_runs_code_are_refused(tmp_path, loader, error):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "model.pth"
    # a plausible state dict with one poisoned entry, saved the way torch saves any checkpoint
    torch.save({"cp.conv.weight": torch.zeros(1), "payload": RunsACommand(marker)}, checkpoint)
    with pytest.raises(error, match="weights_only|Unsupported|not allowed|global"):
        loader(checkpoint)
    assert not marker.exists()


def test_a_symlinked_checkpoint_is_read_like_any_file_but_a_dangling_one_is_a_clear_error(tmp_path):
    (tmp_path / "bisenet.pth").symlink_to(tmp_path / "nowhere.pth")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_bisenet(tmp_path / "bisenet.pth")


def _saved_index(store: BlobStore) -> str:
    index = VectorIndex(8)
    index.add(["a", "b"], np.eye(2, 8, dtype=np.float32))
    return index.save(store, "index/main")


def test_an_index_file_holding_pickled_objects_is_refused(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    version = _saved_index(store)
    marker = tmp_path / "pwned"
    poisoned = io.BytesIO()
    vectors = np.empty(2, dtype=object)
    vectors[0] = RunsACommand(marker)
    np.savez(
        poisoned,
        vectors=vectors,
        alive=np.ones(2, bool),
        job=np.zeros(2, np.int32),
        source=np.zeros(2, np.int32),
        taste=np.zeros(2, np.float32),
    )
    store.put(f"index/main/{version}/arrays.npz", poisoned.getvalue())
    with pytest.raises(ValueError, match="allow_pickle"):
        VectorIndex.load(store, "index/main")
    assert not marker.exists()


def test_a_corrupt_faiss_file_is_an_error_not_a_crash(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    version = _saved_index(store)
    manifest = json.loads(store.get(f"index/main/{version}/manifest.json"))
    store.put(f"index/main/{version}/faiss.index", b"IxFI" + os.urandom(64))
    if manifest.get("spec", {}).get("kind", "flat") == "flat" and not store.get(
        f"index/main/{version}/faiss.index"
    ):
        pytest.skip("this index keeps no FAISS structure to corrupt")
    with pytest.raises(RuntimeError):
        VectorIndex.load(store, "index/main")


def test_a_taste_model_holding_pickled_objects_is_refused(tmp_path):
    from services.search.taste import FORMAT_VERSION, TasteModel

    marker = tmp_path / "pwned"
    poisoned = io.BytesIO()
    coef = np.empty(1, dtype=object)
    coef[0] = RunsACommand(marker)
    np.savez(poisoned, lr_coef=coef)
    meta = json.dumps({"format": FORMAT_VERSION, "name": "default", "dim": 8, "knn_k": None}).encode()
    with pytest.raises(ValueError, match="allow_pickle"):
        TasteModel.from_files(poisoned.getvalue(), meta)
    assert not marker.exists()
