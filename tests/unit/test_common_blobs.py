"""Blob store: keys, URIs, atomic writes, write failures, arrays, non-local fsspec stores."""

from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest

from services.common.blobs import (
    TMP_PREFIX,
    BlobKeyError,
    BlobNotFound,
    BlobStore,
    BlobWriteError,
    item_key,
)


@pytest.fixture()
def store(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_put_get_exists_delete_list(store, tmp_path):
    uri = store.put("jobs/j1/items/i1/align/aligned.png", b"png-bytes")
    assert uri == (tmp_path / "blobs/jobs/j1/items/i1/align/aligned.png").as_uri()
    assert store.get("jobs/j1/items/i1/align/aligned.png") == b"png-bytes"
    assert store.get(uri) == b"png-bytes"  # by URI too
    assert store.key_for(uri) == "jobs/j1/items/i1/align/aligned.png"
    store.put("jobs/j1/items/i2/align/aligned.png", b"x")
    store.put("jobs/j2/manifest.json", b"{}")
    assert store.list("jobs/j1/") == [
        "jobs/j1/items/i1/align/aligned.png",
        "jobs/j1/items/i2/align/aligned.png",
    ]
    assert store.list("jobs/j") == [*store.list("jobs/j1/"), "jobs/j2/manifest.json"]
    assert store.list("nothing/") == []
    assert store.exists("jobs/j2/manifest.json")
    assert store.delete("jobs/j2/manifest.json") is True
    assert store.delete("jobs/j2/manifest.json") is False
    assert not store.exists("jobs/j2/manifest.json")
    with pytest.raises(BlobNotFound, match="jobs/j2/manifest.json"):
        store.get("jobs/j2/manifest.json")


def test_item_key_layout_and_validation():
    assert item_key("j1", "i7", "encode", "latent.npy") == "jobs/j1/items/i7/encode/latent.npy"
    with pytest.raises(BlobKeyError, match="job_id"):
        item_key("../j1", "i", "encode", "x")
    with pytest.raises(BlobKeyError, match="item_id"):
        item_key("j1", "a/b", "encode", "x")
    assert BlobStore.item_key("j", "i", "s", "n") == "jobs/j/items/i/s/n"


@pytest.mark.parametrize(
    "bad_key",
    [
        "../escape",
        "jobs/../../etc/passwd",
        "/etc/passwd",
        "C:/windows/system32",
        "a//b",
        "a/./b",
        "trailing/",
        "back\\slash",
        "nul\x00byte",
        "",
        f"jobs/{TMP_PREFIX}abc",
    ],
)
def test_unsafe_keys_are_rejected(store, bad_key):
    with pytest.raises(BlobKeyError):
        store.put(bad_key, b"x")
    with pytest.raises(BlobKeyError):
        store.get(bad_key)


def test_uris_outside_the_store_are_rejected(store, tmp_path):
    (tmp_path / "secret.txt").write_text("secret")
    for uri in [
        (tmp_path / "secret.txt").as_uri(),
        "file:///etc/passwd",
        (tmp_path / "blobs").as_uri() + "/../secret.txt",
        "s3://bucket/blobs/x",
        "file://otherhost" + str(tmp_path / "blobs/x"),
    ]:
        with pytest.raises(BlobKeyError):
            store.get(uri)


def test_writes_are_atomic_for_concurrent_readers(store):
    size = 1 << 20
    versions = [bytes([65 + i]) * size for i in range(4)]
    store.put("hot.bin", versions[0])
    stop = threading.Event()
    torn: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            data = store.get("hot.bin")
            if len(data) != size or data.count(data[:1]) != size:
                torn.append(len(data))

    thread = threading.Thread(target=reader)
    thread.start()
    for round_ in range(24):
        store.put("hot.bin", versions[round_ % 4])
    stop.set()
    thread.join()
    assert torn == []
    assert os.listdir(store.root) == ["hot.bin"]  # no temporary file left behind


def test_a_failed_write_leaves_no_partial_file(store, monkeypatch):
    store.put("jobs/j/out.png", b"old version")

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(BlobWriteError, match=r"jobs/j/out\.png.*No space left") as failure:
        store.put("jobs/j/out.png", b"new version, never complete")
    assert failure.value.key == "jobs/j/out.png"
    monkeypatch.undo()
    assert store.get("jobs/j/out.png") == b"old version"  # the old blob is untouched
    assert sorted(os.listdir(os.path.join(store.root, "jobs/j"))) == ["out.png"]


def test_an_unwritable_folder_is_a_clear_write_error(store):
    with open(os.path.join(store.root, "jobs"), "wb"):
        pass  # a file where a folder should be
    with pytest.raises(BlobWriteError, match="jobs/j/out.png"):
        store.put("jobs/j/out.png", b"x")
    assert store.list() == ["jobs"]  # only the obstacle: no temporary file was left


def test_leftover_temporary_files_are_not_listed(store):
    store.put("jobs/a.png", b"x")
    with open(os.path.join(store.root, "jobs", f"{TMP_PREFIX}1234-b.png"), "wb") as handle:
        handle.write(b"half")
    assert store.list("jobs/") == ["jobs/a.png"]


def test_npy_round_trip_without_pickle(store):
    latent = np.random.default_rng(0).standard_normal((18, 512)).astype(np.float32)
    store.put_npy("jobs/j/items/i/encode/latent.npy", latent)
    back = store.get_npy("jobs/j/items/i/encode/latent.npy")
    assert back.dtype == np.float32 and np.array_equal(back, latent)
    with pytest.raises(ValueError, match="plain numeric"):
        store.put_npy("objects.npy", np.array([{"a": 1}], dtype=object))
    # A pickled object array written by someone else is refused on read.
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    store.put("evil.npy", buffer.getvalue())
    with pytest.raises(ValueError, match="not a plain .npy"):
        store.get_npy("evil.npy")


def test_data_must_be_bytes(store):
    with pytest.raises(TypeError):
        store.put("a.txt", "text")  # type: ignore[arg-type]


def test_any_fsspec_url_works_the_same(tmp_path):
    store = BlobStore("memory://sfhq-test-bucket/prefix")
    uri = store.put("jobs/j/items/i/embed/features.npy", b"abc")
    assert uri == "memory:///sfhq-test-bucket/prefix/jobs/j/items/i/embed/features.npy"
    assert store.get(uri) == b"abc" and store.exists("jobs/j/items/i/embed/features.npy")
    assert store.list("jobs/") == ["jobs/j/items/i/embed/features.npy"]
    with pytest.raises(BlobKeyError):
        store.get("memory:///other-bucket/x")
    with pytest.raises(BlobKeyError):
        store.get((tmp_path / "x").as_uri())
    assert store.local_path("jobs/j/items/i/embed/features.npy") is None
    assert store.delete("jobs/j/items/i/embed/features.npy")
    with pytest.raises(BlobNotFound):
        store.get("jobs/j/items/i/embed/features.npy")


def test_intermediates_skip_the_fsyncs_and_stay_atomic(tmp_path, monkeypatch) -> None:
    store = BlobStore(tmp_path / "blobs")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    store.put("jobs/j/a.qoi", b"intermediate", durable=False)
    store.put_npy("jobs/j/a.npy", np.zeros(3, np.float32), durable=False)
    assert synced == []
    assert store.get("jobs/j/a.qoi") == b"intermediate" and store.list("jobs/j/") == [
        "jobs/j/a.npy",
        "jobs/j/a.qoi",
    ]
    store.put("datasets/d/images/x.jpg", b"dataset file")  # durable by default: file and folder
    assert len(synced) == 2
