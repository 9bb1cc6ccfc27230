"""Datasets as objects (gateway/datasets.py) against a real Redis, the merged manifest
(services/common/dataset.py), exports (sfhq/export.py) and the submit-time strategy check."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gateway import jobs
from gateway.datasets import DatasetBook, WriteMode, dataset_key
from gateway.pipeline import stem_of, stems_needed
from services.common.auth import Principal
from services.common.dataset import DatasetWriter
from services.common.errors import FailedPrecondition, PermissionDenied
from sfhq.export import Exporter
from sfhq.sdk import build_spec
from sfhq.tensors import numpy_to_tensor
from sfhq.v1 import gateway_pb2

ALICE, BOB, ADMIN = Principal("alice"), Principal("bob"), Principal("admin")


def resolved(out: Path, **output) -> tuple[jobs.ResolvedSpec, gateway_pb2.OutputSpec]:
    spec = build_spec(mode="sampling", samples=3, output_uri=str(out), **output)
    return jobs.validate_spec(
        spec, default_dataset_uri="", max_image_bytes=1 << 20, owner="alice"
    ), spec.output


def attach(book: DatasetBook, out: Path, job_id: str, caller: Principal = ALICE, stems: int = 3, **output):
    spec, message = resolved(out, **output)
    return book.attach(
        spec,
        message,
        location=str(out.resolve()),
        mode=WriteMode(spec.write_mode),
        caller=caller,
        job_id=job_id,
        stems=stems,
    )


def test_jobs_get_disjoint_blocks_of_one_counter_and_a_retry_gets_the_same(redis_client, tmp_path):
    book = DatasetBook(redis_client)
    out = tmp_path / "ds"
    first, record = attach(book, out, "j1", stems=5)
    assert (first.stem_base, first.dataset_id) == (0, record.dataset_id)
    assert json.loads((out / "dataset_info.json").read_text())["dataset_id"] == record.dataset_id
    second, _ = attach(book, out, "j2", stems=4, write_mode="append")
    third, _ = attach(book, out, "j3", stems=2, write_mode="append")
    assert (second.stem_base, third.stem_base) == (5, 9)
    retried, _ = attach(book, out, "j2", stems=4, write_mode="append")  # the same submission again
    assert retried.stem_base == 5
    assert int(redis_client.hget(dataset_key(record.dataset_id), "next_index")) == 11
    assert stem_of(third, {"ordinal": 1}) == "SFHQ_pt3_00000010"  # sampling jobs: part 3
    assert book.job_ids(record.dataset_id) == ["j1", "j2", "j3"]


def test_the_write_mode_rules(redis_client, tmp_path):
    book = DatasetBook(redis_client)
    out = tmp_path / "ds"
    attach(book, out, "j1", part=3, image_size=512)
    with pytest.raises(FailedPrecondition, match="--append to add to it, or --overwrite"):
        attach(book, out, "j2")
    with pytest.raises(FailedPrecondition, match="output.part: .* part=3"):
        attach(book, out, "j2", write_mode="append", part=4)
    inherited, _ = attach(book, out, "j2", write_mode="append")  # unset settings: the dataset's
    assert (inherited.part, inherited.image_size) == (3, 512)
    with pytest.raises(PermissionDenied, match="another user"):
        attach(book, out, "j3", caller=BOB, write_mode="append")
    redis_client.hset(jobs.job_key("j2"), "state", jobs.RUNNING)
    with pytest.raises(FailedPrecondition, match="being written by job j2"):
        attach(book, out, "j4", write_mode="overwrite")
    redis_client.hset(jobs.job_key("j2"), "state", jobs.SUCCEEDED)
    (out / "images").mkdir(exist_ok=True)
    (out / "images" / "SFHQ_pt3_00000000.jpg").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    fresh, record = attach(book, out, "j4", write_mode="overwrite", caller=ADMIN)
    assert fresh.stem_base == 0 and fresh.part == 3  # a new dataset: its own settings (sampling: part 3)
    assert not (out / "images" / "SFHQ_pt3_00000000.jpg").exists() and (out / "notes.txt").exists()


def test_a_folder_holding_other_files_is_refused_unless_overwritten(redis_client, tmp_path):
    book = DatasetBook(redis_client)
    out = tmp_path / "photos"
    out.mkdir()
    (out / ".DS_Store").write_text("hidden files do not count")
    attach(book, out, "j0")  # empty but for hidden files: fine
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    for mode in ("new", "append"):
        with pytest.raises(FailedPrecondition, match="not empty and holds no sfhq-factory dataset"):
            attach(book, other, f"j-{mode}", write_mode=mode)
    attach(book, other, "j1", write_mode="overwrite")
    assert (other / "a.jpg").exists()  # not part of our layout


def test_two_new_jobs_racing_for_one_folder_get_one_dataset(redis_client, tmp_path):
    out = tmp_path / "ds"
    outcomes: list[object] = []

    def submit(job_id: str) -> None:
        try:
            outcomes.append(attach(DatasetBook(redis_client), out, job_id)[1].dataset_id)
        except FailedPrecondition as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=submit, args=(f"j{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    made = [o for o in outcomes if isinstance(o, str)]
    assert len(made) == 1 and sum(isinstance(o, FailedPrecondition) for o in outcomes) == 3


def test_a_dataset_redis_lost_is_adopted_from_its_folder_and_numbering_resumes(redis_client, tmp_path):
    book = DatasetBook(redis_client)
    out = tmp_path / "ds"
    spec, record = attach(book, out, "j1", stems=3)
    (out / "images").mkdir()
    for index in (0, 2):
        (out / "images" / f"SFHQ_pt3_{index:08d}.jpg").write_bytes(b"x")  # a sampling job: part 3
    redis_client.flushall()  # a Redis without persistence restarted
    adopted, again = attach(book, out, "j2", write_mode="append")
    assert again.dataset_id == record.dataset_id and adopted.stem_base == 3


def test_the_manifest_merges_every_jobs_part(tmp_path):
    writer = DatasetWriter(str(tmp_path / "ds"))
    random = {"e4e": {"random_weights": True}}
    writer.write_job_part(
        "j2", [{"stem": "SFHQ_pt1_00000003", "job_id": "j2"}], {"job_id": "j2", "counts": {"written": 1}}
    )
    writer.write_job_part(
        "j1",
        [{"stem": "SFHQ_pt1_00000001", "job_id": "j1"}, {"stem": "SFHQ_pt1_00000000", "job_id": "j1"}],
        {"job_id": "j1", "counts": {"written": 2}, "random_weights": True, "provenance": random},
    )
    info = writer.merge({"dataset_id": "d1", "part": 1})
    rows = [json.loads(line) for line in (tmp_path / "ds" / "manifest.jsonl").read_text().splitlines()]
    assert [r["stem"] for r in rows] == [f"SFHQ_pt1_0000000{i}" for i in (0, 1, 3)]
    assert (
        info["items"] == 3
        and info["counts"] == {"written": 3}
        and [j["job_id"] for j in info["jobs"]] == ["j1", "j2"]
    )
    assert info["random_weights"] and (tmp_path / "ds" / "RANDOM_WEIGHTS.txt").exists()
    assert writer.used_indices(1) == [0, 1, 3]


def test_a_misspelt_strategy_parameter_is_refused_at_submit_naming_the_field():
    spec = build_spec(images=[b"x"], strategies=["e4e_strict_prior", "low_prior:corse=0.2"])
    with pytest.raises(jobs.SpecError, match=r"strategies\[1\].params: .*unknown parameter 'corse'"):
        jobs.validate_spec(spec, default_dataset_uri="/d", max_image_bytes=1 << 20)
    spec = build_spec(images=[b"x"], strategies=["low_prior:steps=2.5"])
    with pytest.raises(jobs.SpecError, match="whole number"):
        jobs.validate_spec(spec, default_dataset_uri="/d", max_image_bytes=1 << 20)


def test_stems_needed_is_one_per_possible_candidate():
    spec = jobs.validate_spec(
        build_spec(images=[b"x"], strategies=["e4e_strict_prior", "style_mix"]),
        default_dataset_uri="/d",
        max_image_bytes=9,
    )
    assert stems_needed(spec, 10) == 20
    assert stems_needed(replace(spec, mode="annotate_only"), 10) == 10
    three = {"count": 7, "corrections": [{"name": "encoder_truncation", "params": {}, "seed": 0}] * 3}
    assert stems_needed(replace(spec, mode="sampling", sampling=three), 0) == 21  # one per correction
    older = {"count": 7, "correction": three["corrections"][0]}  # a job from before corrections were a list
    assert stems_needed(replace(spec, mode="sampling", sampling=older), 0) == 7


def _item(job_id: str, item_id: str, stem: str) -> gateway_pb2.Item:
    item = gateway_pb2.Item(
        job_id=job_id, item_id=item_id, stem=stem, state="written", dataset_id=f"d-{job_id}"
    )
    item.image.data = b"\xff\xd8jpeg"
    item.landmarks.CopyFrom(numpy_to_tensor(np.zeros((110, 2), np.float32)))
    item.features["CLIP_ViTL_14@336"].CopyFrom(numpy_to_tensor(np.ones((1, 4)), "float16"))
    item.manifest_json = json.dumps({"stem": stem, "provenance": {"clip": {"sha256": "ab"}}})
    return item


def test_exports_keep_stems_unless_taken_and_add_to_what_is_there(tmp_path):
    export = Exporter(tmp_path / "x")
    assert export.add(_item("ja", "c0", "SFHQ_pt1_00000000")).name == "SFHQ_pt1_00000000.jpg"
    assert export.add(_item("jb", "c0", "SFHQ_pt1_00000000")).name == "SFHQ_pt1_00000001.jpg"  # taken
    export.finish()
    again = Exporter(tmp_path / "x")  # a later export into the same folder
    assert again.add(_item("jb", "c0", "SFHQ_pt1_00000000")).name == "SFHQ_pt1_00000001.jpg"  # known item
    assert again.add(_item("jc", "c5", "SFHQ_pt1_00000001")).name == "SFHQ_pt1_00000002.jpg"
    info = again.finish()
    assert info["items"] == 3 and info["jobs"] == ["ja", "jb", "jc"] and not info["random_weights"]
    rows = [json.loads(line) for line in (tmp_path / "x" / "manifest.jsonl").read_text().splitlines()]
    assert [(r["job_id"], r["source_stem"]) for r in rows] == [
        ("ja", "SFHQ_pt1_00000000"),
        ("jb", "SFHQ_pt1_00000000"),
        ("jc", "SFHQ_pt1_00000001"),
    ]
    import pickle

    features = pickle.loads(
        (tmp_path / "x" / "pretrained_features" / "SFHQ_pt1_00000002.pickle").read_bytes()
    )
    assert features["CLIP_ViTL_14@336"].dtype == np.float16 and features["CLIP_ViTL_14@336"].shape == (1, 4)
    assert "3 items" in (tmp_path / "x" / "README.md").read_text()
