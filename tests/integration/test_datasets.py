"""Datasets that last, end to end with real processes: many jobs into one dataset (one after the
other, at the same time, with the gateway SIGKILLed half-way), the write-mode refusals, cancel
finalization, imports into the running search service, and exports loaded back with `datasets`.

One cluster (Redis, the four services, the gateway; tiny random models) serves the module.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.local_run import wait_healthy
from sfhq.sdk import Client, SfhqError, build_spec
from sfhq.v1 import gateway_pb2
from tests.helpers import ONE_CORRECTION
from tests.helpers.cluster import random_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SUCCEEDED, CANCELLED = gateway_pb2.JOB_STATE_SUCCEEDED, gateway_pb2.JOB_STATE_CANCELLED
ITEM_FOLDERS = {
    "images": ".jpg",
    "segmentations": ".png",
    "landmarks": ".npz",
    "pretrained_features": ".pickle",
    "latents": ".npy",
}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(redis_server, tmp_path_factory):
    with random_cluster(redis_server, tmp_path_factory) as running:
        yield running


@pytest.fixture()
def client(cluster):
    with Client(cluster.addr("gateway"), timeout=60) as c:
        yield c


def samples(count: int, out: Path, *, first_seed: int = 0, write_mode: str = "new", **options):
    """The cheapest real job (no alignment, 64-px annotation, no dedup): every sample is written."""
    return build_spec(
        mode="sampling",
        samples=count,
        first_seed=first_seed,
        annotation_size=64,
        image_size=64,
        disable_dedup=True,
        output_uri=str(out),
        write_mode=write_mode,
        corrections=ONE_CORRECTION,
        **options,
    )


def wait(client: Client, job_id: str, timeout: float = 300) -> gateway_pb2.Job:
    return client.wait(job_id, timeout=timeout)


def rows_of(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line.strip()]


def check_merged(root: Path, jobs: list[gateway_pb2.Job]) -> list[dict]:
    """One manifest row per item of every job, every row's files on disk, no file without a row."""
    rows = rows_of(root)
    stems = [row["stem"] for row in rows]
    assert len(stems) == len(set(stems)), "a stem was used twice"
    assert len(rows) == sum(job.counts.written for job in jobs)
    assert {row["job_id"] for row in rows} == {job.job_id for job in jobs if job.counts.written}
    for folder, suffix in ITEM_FOLDERS.items():
        on_disk = {p.name.removesuffix(suffix) for p in (root / folder).glob(f"*{suffix}")}
        assert on_disk == set(stems), folder
    assert not list(root.rglob(".sfhq-tmp-*")), "unfinished writes were left"
    info = json.loads((root / "dataset_info.json").read_text())
    assert info["items"] == len(rows)
    assert {j["job_id"] for j in info["jobs"]} == {job.job_id for job in jobs}
    assert info["random_weights"] is True and "RANDOM WEIGHTS" in info["warning"]
    assert (root / "RANDOM_WEIGHTS.txt").exists()
    assert len({job.dataset_id for job in jobs}) == 1 and info["dataset_id"] == jobs[0].dataset_id
    return rows


def digests(root: Path, stems: list[str]) -> dict[str, str]:
    return {s: hashlib.sha256((root / "images" / f"{s}.jpg").read_bytes()).hexdigest() for s in stems}


def test_jobs_append_into_one_dataset_one_after_the_other_and_at_once(client, tmp_path):
    out = tmp_path / "ds"
    first = wait(client, client.submit(samples(3, out)).job_id)
    assert first.state == SUCCEEDED, first.error
    before = digests(out, [r["stem"] for r in rows_of(out)])

    with pytest.raises(SfhqError) as refused:
        client.submit(samples(2, out, first_seed=50))  # no --append
    assert refused.value.code.name == "FAILED_PRECONDITION"
    assert "--append" in refused.value.details and "--overwrite" in refused.value.details

    with pytest.raises(SfhqError) as mismatch:
        client.submit(samples(2, out, first_seed=50, write_mode="append", part=2))
    assert mismatch.value.code.name == "FAILED_PRECONDITION" and "output.part" in mismatch.value.details

    second = wait(client, client.submit(samples(2, out, first_seed=100, write_mode="append")).job_id)
    together = [client.submit(samples(3, out, first_seed=s, write_mode="append")).job_id for s in (200, 300)]
    done = [first, second, *(wait(client, job_id) for job_id in together)]
    assert all(job.state == SUCCEEDED for job in done), [job.error for job in done]
    rows = check_merged(out, done)
    assert len(rows) == 11
    assert digests(out, list(before)) == before  # the first job's images were not touched


def test_a_gateway_killed_mid_way_loses_and_duplicates_nothing(cluster, client, tmp_path):
    out = tmp_path / "ds"
    ids = [client.submit(samples(6, out, first_seed=s, write_mode="append")).job_id for s in (0, 1000)]
    deadline = time.monotonic() + 120
    while sum(client.get_job(i).counts.written for i in ids) < 2:
        assert time.monotonic() < deadline, "no item was written"
        time.sleep(0.2)
    cluster.kill("gateway")
    gateway = cluster.start("gateway")
    wait_healthy(cluster.addr("gateway"), time.monotonic() + 120, gateway)
    with Client(cluster.addr("gateway"), timeout=60) as fresh:
        done = [wait(fresh, i) for i in ids]
    assert all(job.state == SUCCEEDED for job in done), [job.error for job in done]
    assert sum(job.counts.written for job in done) == 12
    check_merged(out, done)


def test_folders_that_are_not_our_datasets_are_refused_and_overwrite_keeps_foreign_files(client, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.txt").write_text("not a dataset")
    for mode in ("new", "append"):
        with pytest.raises(SfhqError) as refused:
            client.submit(samples(1, out, write_mode=mode))
        assert refused.value.code.name == "FAILED_PRECONDITION"
        assert "--overwrite" in refused.value.details and "not empty" in refused.value.details
    job = wait(client, client.submit(samples(2, out, write_mode="overwrite")).job_id)
    assert job.state == SUCCEEDED, job.error
    check_merged(out, [job])
    assert (out / "holiday.txt").read_text() == "not a dataset"  # only our layout is replaced

    again = wait(client, client.submit(samples(1, out, first_seed=9, write_mode="overwrite")).job_id)
    assert again.state == SUCCEEDED and again.dataset_id != job.dataset_id
    rows = check_merged(out, [again])
    assert [r["stem"] for r in rows] == ["SFHQ_pt3_00000000"]


def test_a_cancelled_job_still_writes_its_manifest_for_what_it_wrote(client, tmp_path):
    out = tmp_path / "ds"
    job_id = client.submit(samples(40, out)).job_id
    for event in client.watch(job_id):
        if event.kind == "item_written":
            client.cancel(job_id)
            break
    job = wait(client, job_id)
    assert job.state == CANCELLED
    assert 1 <= job.counts.written < 40
    check_merged(out, [job])
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["jobs"][0]["state"] == "CANCELLED" and info["jobs"][0]["written"] == job.counts.written


def _sfhq_part(folder: Path, dim: int, count: int, seed: int) -> np.ndarray:
    """A small SFHQ part (images + CLIP feature pickles, float16 (1, D) as released); returns the vectors."""
    (folder / "images").mkdir(parents=True)
    (folder / "pretrained_features").mkdir()
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    for i, vector in enumerate(vectors):
        stem = f"SFHQ_pt4_{i:08d}"
        Image.new("RGB", (8, 8)).save(folder / "images" / f"{stem}.jpg")
        (folder / "pretrained_features" / f"{stem}.pickle").write_bytes(
            pickle.dumps({"CLIP_ViTL_14@336": vector.astype(np.float16)[None, :]})
        )
    return vectors


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sfhq.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "SFHQ_STATE_DIR": str(REPO / ".no-cluster"), **(env or {})},
    )


def test_an_import_reaches_the_running_index_at_once_and_survives_a_restart(cluster, client, tmp_path):
    job = wait(client, client.submit(samples(1, tmp_path / "ds")).job_id)  # the index exists, with its dim
    dim = next(
        iter(pickle.loads(next((tmp_path / "ds" / "pretrained_features").iterdir()).read_bytes()).values())
    ).shape[1]
    vectors = _sfhq_part(tmp_path / "SFHQ_part4", dim, 5, seed=4)
    imported = _cli("import-sfhq", str(tmp_path / "SFHQ_part4"), "--address", cluster.addr("gateway"))
    assert imported.returncode == 0, imported.stderr
    report = json.loads(imported.stdout)
    assert report["indexed"] == 5 and report["source"] == "sfhq_part4"

    def top_hit() -> str:
        return client.search(vector=vectors[3], top_k=1).hits[0].item_id

    assert top_hit() == "SFHQ_pt4_00000003"  # the running index has it, no restart needed
    search = cluster.processes["search"]
    search.send_signal(signal.SIGTERM)  # a restart: the index is saved on the way down
    search.wait(60)
    wait_healthy(cluster.addr("search"), time.monotonic() + 120, cluster.start("search"))
    assert top_hit() == "SFHQ_pt4_00000003"
    assert client.get_job(job.job_id).state == SUCCEEDED

    _sfhq_part(tmp_path / "wrong", dim + 1, 2, seed=5)
    wrong = _cli("import-sfhq", str(tmp_path / "wrong"), "--address", cluster.addr("gateway"))
    assert wrong.returncode != 0
    assert "Traceback" not in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert "dim" in wrong.stderr.lower() or "dimension" in wrong.stderr.lower(), wrong.stderr


def test_exports_of_several_datasets_never_collide_and_load_with_hugging_face_datasets(client, tmp_path):
    import datasets

    jobs = [
        wait(client, client.submit(samples(2, tmp_path / name, first_seed=n)).job_id)
        for n, name in enumerate("ab")
    ]
    assert all(job.state == SUCCEEDED for job in jobs)
    export = tmp_path / "export"
    for job in jobs:  # both datasets number from SFHQ_pt3_00000000
        assert len(client.download(job.job_id, export)) == 2
    client.download(jobs[0].job_id, export)  # again: the same items keep their stems
    rows = rows_of(export)
    assert len(rows) == 4 and len({r["stem"] for r in rows}) == 4
    assert {(r["job_id"], r["source_stem"]) for r in rows} == {
        (job.job_id, f"SFHQ_pt3_{i:08d}") for job in jobs for i in range(2)
    }
    for folder, suffix in ITEM_FOLDERS.items():
        assert {p.name.removesuffix(suffix) for p in (export / folder).glob(f"*{suffix}")} == {
            r["stem"] for r in rows
        }
    features = pickle.loads((export / "pretrained_features" / f"{rows[0]['stem']}.pickle").read_bytes())
    assert features["CLIP_ViTL_14@336"].shape[0] == 1
    info = json.loads((export / "dataset_info.json").read_text())
    assert info["items"] == 4 and set(info["jobs"]) == {job.job_id for job in jobs}
    assert info["random_weights"] and all(r["provenance"] for r in rows)
    card = (export / "README.md").read_text()
    assert "4 items" in card and "RANDOM WEIGHTS" in card and "License" in card

    hf = datasets.load_dataset("parquet", data_files=str(export / "data" / "*.parquet"))["train"]
    assert len(hf) == 4 and sorted(hf["stem"]) == sorted(r["stem"] for r in rows)
    first = hf[0]
    assert first["image"].size == (64, 64) and first["segmentation"].mode in ("L", "P")
    assert np.asarray(first["landmarks"]).shape == (110, 2)
