"""End to end with real processes: Redis, the four services and the gateway, tiny random models.

One cluster serves every test in this module (starting five torch processes on two cores takes
a while); each test submits its own job.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.local_run import LocalCluster
from sfhq.sdk import Client, SfhqError, build_spec
from sfhq.v1 import gateway_pb2
from tests.helpers import ONE_CORRECTION
from tests.helpers.data import face_path, inspiration_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]
INSPIRATION = [inspiration_path(f"sd_0{i}") for i in range(3)]
EXTRA_KEYS = ("CLIP_ViTL_14", "ConvNext_XL_Imagenet21k")
STREAM_CAP = 16


@pytest.fixture(scope="module")
def random_weights_dir(tmp_path_factory) -> Path:
    from services.random_weights import write_random_weights

    folder = tmp_path_factory.mktemp("weights")
    write_random_weights(folder)
    return folder


@pytest.fixture(scope="module")
def cluster(redis_server, random_weights_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cluster")
    with LocalCluster(
        workdir,
        redis_server,
        random_weights_dir,
        extra_env={
            "SFHQ_VISIBILITY_TIMEOUT_S": "5",
            "SFHQ_BATCH_WAIT_MS": "20",
            "SFHQ_EXTRA_FEATURES": ",".join(EXTRA_KEYS),  # SFHQ's other pickle keys, tiny random models
            "SFHQ_STREAM_MAXLEN": str(STREAM_CAP),  # small, so that a job can be bigger than a stage
            "SFHQ_MAX_JOB_ITEMS": "100",
        },
        data_roots=(tmp_path_factory.getbasetemp(),),
    ) as c:
        c.start_all(timeout_s=240)
        yield c


@pytest.fixture()
def client(cluster):
    with Client(cluster.addr("gateway"), timeout=60) as c:
        yield c


def run_job(client: Client, spec: gateway_pb2.JobSpec, timeout: float = 300) -> gateway_pb2.Job:
    job = client.submit(spec)
    return client.wait(job.job_id, timeout=timeout)


def check_dataset(root: Path, job: gateway_pb2.Job) -> list[dict]:
    """Every manifest row has its four SFHQ files in the right formats, and nothing else is there."""
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == job.counts.written
    stems = {row["stem"] for row in rows}
    assert {p.stem for p in (root / "images").glob("*.jpg")} == stems
    assert {p.stem for p in (root / "segmentations").glob("*.png")} == stems
    assert {p.stem for p in (root / "landmarks").glob("*.npz")} == stems
    assert {p.stem for p in (root / "pretrained_features").glob("*.pickle")} == stems
    for row in rows:
        stem = row["stem"]
        image = Image.open(root / "images" / f"{stem}.jpg")
        assert image.size == (1024, 1024) and image.mode == "RGB"
        seg = Image.open(root / "segmentations" / f"{stem}.png")
        assert seg.size == (1024, 1024) and seg.mode in ("L", "P")
        assert np.asarray(seg).max() <= 18
        landmarks = np.load(root / "landmarks" / f"{stem}.npz")["landmarks"]
        assert landmarks.shape == (110, 2) and landmarks.dtype == np.float32
        assert np.isfinite(landmarks).all()
        with open(root / "pretrained_features" / f"{stem}.pickle", "rb") as f:
            features = pickle.load(f)  # our own file, written by this test's job
        assert (
            list(features) == ["CLIP_ViTL_14@336", *EXTRA_KEYS] and features["CLIP_ViTL_14@336"].shape[0] == 1
        )
    assert (root / "manifest.parquet").exists() and (root / "dataset_info.json").exists()
    return rows


def test_inspiration_job_writes_a_complete_consistent_dataset(client, tmp_path):
    out = tmp_path / "dataset"
    spec = build_spec(
        images=INSPIRATION,
        strategies=["e4e_strict_prior", "low_prior:steps=3"],
        output_uri=str(out),
        disable_dedup=True,
        seed=1,
    )
    job = run_job(client, spec)
    assert job.state == gateway_pb2.JOB_STATE_SUCCEEDED, job.error
    c = job.counts
    assert (c.inputs, c.candidates, c.accepted, c.written, c.failed) == (3, 6, 6, 6, 0)
    assert c.in_flight == 0
    rows = check_dataset(out, job)
    assert sorted(row["strategy"]["name"] for row in rows) == ["e4e_strict_prior"] * 3 + ["low_prior"] * 3
    assert all(row["provenance"] for row in rows)
    assert all(-90 <= row["yaw"] <= 90 and -90 <= row["pitch"] <= 90 for row in rows)  # head pose

    # The gallery and search filter by head pose.
    median_yaw = sorted(row["yaw"] for row in rows)[len(rows) // 2]
    turned = client.list_items(job.job_id, yaw=(median_yaw, None))
    assert {i.item_id for i in turned} == {r["item_id"] for r in rows if r["yaw"] >= median_yaw}
    assert turned and all(i.pose.yaw >= median_yaw - 1e-3 for i in turned)
    posed = client.search("a portrait photo", job_id=job.job_id, top_k=10, yaw=(median_yaw, None)).hits
    assert {h.item_id for h in posed} == {
        f"{job.job_id}/{r['item_id']}" for r in rows if r["yaw"] >= median_yaw
    }

    # Items are reachable through the API, with annotations.
    item = client.get_item(job.job_id, rows[0]["item_id"])
    assert item.state == "written" and item.stem == rows[0]["stem"]
    assert Image.open(io.BytesIO(item.image.data)).size == (1024, 1024)
    assert item.landmarks.shape == [110, 2]

    # Search finds this job's items (text and by the stored vector of an item).
    hits = client.search("a portrait photo of a smiling woman", job_id=job.job_id, top_k=5).hits
    assert hits and {h.job_id for h in hits} == {job.job_id}
    assert {h.item_id for h in hits} <= {f"{job.job_id}/{row['item_id']}" for row in rows}
    assert client.get_item(job.job_id, hits[0].item_id, image=False).state == "written"

    # Progress events were recorded and can be replayed from any point.
    events = list(client.watch(job.job_id))
    assert events[-1].state == gateway_pb2.JOB_STATE_SUCCEEDED
    later = list(client.watch(job.job_id, after_event_id=events[len(events) // 2].event_id))
    assert [e.event_id for e in later] == [e.event_id for e in events[len(events) // 2 + 1 :]]


def test_a_second_identical_job_is_deterministic(client, tmp_path):
    outs = []
    for n in range(2):
        out = tmp_path / f"run{n}"
        spec = build_spec(
            images=INSPIRATION[:2],
            strategies=["e4e_strict_prior", "low_prior:steps=2"],
            output_uri=str(out),
            disable_dedup=True,
            seed=5,
        )
        job = run_job(client, spec)
        assert job.state == gateway_pb2.JOB_STATE_SUCCEEDED, job.error
        outs.append(out)
    first = sorted(p.name for p in (outs[0] / "images").glob("*.jpg"))
    assert first == sorted(p.name for p in (outs[1] / "images").glob("*.jpg")) and len(first) == 4
    for name in first:
        a = np.asarray(Image.open(outs[0] / "images" / name), dtype=np.int16)
        b = np.asarray(Image.open(outs[1] / "images" / name), dtype=np.int16)
        assert np.abs(a - b).max() <= 1, name
        la = np.load(outs[0] / "latents" / name.replace(".jpg", ".npy"))
        lb = np.load(outs[1] / "latents" / name.replace(".jpg", ".npy"))
        np.testing.assert_allclose(la, lb, atol=1e-5)


def test_a_poison_input_fails_only_its_own_item(client, tmp_path):
    out = tmp_path / "dataset"
    spec = build_spec(
        images=[INSPIRATION[0], b"this is not an image", np.zeros(10).tobytes()],
        strategies=["e4e_strict_prior"],
        output_uri=str(out),
        seed=2,
    )
    # a blank image: decodes fine but has no face
    blank = io.BytesIO()
    Image.new("RGB", (300, 300), (128, 128, 128)).save(blank, "PNG")
    spec.inputs.add(data=blank.getvalue(), name="blank.png")
    job = run_job(client, spec)
    assert job.state == gateway_pb2.JOB_STATE_SUCCEEDED
    assert job.counts.written == 1 and job.counts.failed == 3
    failed = {item.item_id: item for item in client.list_items(job.job_id, state="failed")}
    assert set(failed) == {"i000001", "i000002", "i000003"}
    assert all(item.error.code == "INVALID_ARGUMENT" for item in failed.values())
    assert "no face" in failed["i000003"].error.message.lower()
    check_dataset(out, job)


def test_annotate_only_and_sampling_jobs(client, tmp_path):
    faces = [face_path(0), face_path(1)]
    job = run_job(
        client,
        build_spec(mode="annotate", images=faces, output_uri=str(tmp_path / "ann"), disable_dedup=True),
    )
    assert job.state == gateway_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.counts.written == 2
    check_dataset(tmp_path / "ann", job)

    job = run_job(
        client,
        build_spec(
            mode="sampling",
            samples=2,
            first_seed=10,
            psi_min=1.5,
            psi_max=1.8,
            output_uri=str(tmp_path / "p3"),
            disable_dedup=True,
            corrections=ONE_CORRECTION,
        ),
    )
    assert job.state == gateway_pb2.JOB_STATE_SUCCEEDED, job.error
    rows = check_dataset(tmp_path / "p3", job)
    assert [row["stem"] for row in rows] == ["SFHQ_pt3_00000000", "SFHQ_pt3_00000001"]
    assert {row["source"]["seed"] for row in rows} == {10, 11}


def test_bad_requests_get_clear_status_codes(client):
    with pytest.raises(SfhqError) as err:
        client.submit(gateway_pb2.JobSpec(mode=gateway_pb2.JOB_MODE_INSPIRATION))
    assert err.value.code.name == "INVALID_ARGUMENT" and "inputs" in err.value.details
    with pytest.raises(SfhqError) as err:
        client.get_job("no-such-job")
    assert err.value.code.name == "NOT_FOUND"


def test_folder_input_and_cancel(client, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in INSPIRATION:
        shutil.copy(path, folder / path.name)
    spec = build_spec(
        input_folder=str(folder),
        strategies=["e4e_strict_prior"],
        output_uri=str(tmp_path / "all"),
        disable_dedup=True,
    )  # a random CLIP finds every pair of images alike
    done = run_job(client, spec)  # the gateway copies the folder's images into the blob store
    assert done.state == gateway_pb2.JOB_STATE_SUCCEEDED and done.counts.written == 3, done.error
    spec = build_spec(
        input_folder=str(folder), strategies=["e4e_strict_prior"], output_uri=str(tmp_path / "o")
    )
    job = client.submit(spec)
    assert job.counts.inputs == 3
    cancelled = client.cancel(job.job_id)
    assert cancelled.state in (gateway_pb2.JOB_STATE_CANCELLING, gateway_pb2.JOB_STATE_CANCELLED)
    final = client.wait(job.job_id, timeout=120)
    assert final.state == gateway_pb2.JOB_STATE_CANCELLED
    assert final.counts.in_flight == 0
    assert final.counts.written < 3


def test_a_written_dataset_reads_with_only_sfhqs_published_conventions(client, tmp_path):
    from tests.helpers.sfhq_reader import read_sfhq_part

    out = tmp_path / "sfhq_like"
    spec = build_spec(
        mode="sampling", samples=2, output_uri=str(out), disable_dedup=True, corrections=ONE_CORRECTION
    )
    job = run_job(client, spec)
    assert job.state == gateway_pb2.JOB_STATE_SUCCEEDED, job.error
    items = read_sfhq_part(out)  # numpy 1.x names only for the pickles
    assert [item.stem for item in items] == ["SFHQ_pt3_00000000", "SFHQ_pt3_00000001"]
    for item in items:
        assert item.part == 3 and item.image.size == (1024, 1024)
        assert item.segmentation.shape == (1024, 1024) and item.segmentation.max() <= 18
        assert item.landmarks.shape == (110, 2) and np.isfinite(item.landmarks).all()
        assert (item.landmarks[:68] >= 0).all() and (item.landmarks[:68] < 1024).all()  # x, y in image pixels
        assert list(item.features) == ["CLIP_ViTL_14@336", *EXTRA_KEYS]  # SFHQ's keys, as configured
        assert all(value.ndim == 2 and value.shape[0] == 1 for value in item.features.values())
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {row["landmark_convention"] for row in rows} == {"sfhq"}  # the default, recorded per row


def test_a_prompts_job_runs_stable_diffusion_and_fails_faceless_images_with_that_reason(client, tmp_path):
    """The whole prompts mode on the tiny random pipeline of the random weights: every image is made
    (its recipe recorded), none has a face (noise), so each item fails at align saying so; the job
    runs to its end (FAILED, as any job all of whose items failed) with a failure list naming
    prompt and seed."""
    from sfhq.prompts import prompt_spec

    prompts = prompt_spec(
        template="A portrait photo of a {age} {person}",
        slots={"age": ["20 year old", "70 year old"], "person": ["man", "woman"]},
        negative_prompt="blurry",
        images_per_prompt=2,
        first_seed=500,
        steps=3,
    )
    out = tmp_path / "pt4"
    job = run_job(client, build_spec(mode="prompts", prompts=prompts, output_uri=str(out)))
    assert job.state == gateway_pb2.JOB_STATE_FAILED
    assert job.error.startswith("all 8 items failed; first: prompt ") and job.error.endswith("no face found")
    assert (job.counts.inputs, job.counts.failed, job.counts.written, job.counts.in_flight) == (8, 8, 0, 0)
    assert job.counts.done_by_stage["diffuse"] == 8 and job.counts.done_by_stage["align"] == 8
    items = client.list_items(job.job_id, state="failed")
    assert len(items) == 8
    item = client.get_item(job.job_id, items[0].item_id)
    recipe = json.loads(item.provenance_json)["source"]
    assert recipe["prompt"] == "A portrait photo of a 20 year old man" and recipe["seed"] == 500
    assert (recipe["negative_prompt"], recipe["steps"], recipe["guidance_scale"]) == ("blurry", 3, 7.5)
    assert (recipe["width"], recipe["height"]) == (64, 64)  # the tiny pipeline's own size
    assert Image.open(io.BytesIO(item.image.data)).size == (64, 64)  # what SD made, to look at
    info = json.loads((out / "jobs" / job.job_id / "info.json").read_text())
    failures = sorted(info["failures"], key=lambda f: f["seed"])
    assert [f["seed"] for f in failures] == list(range(500, 508))
    assert all(f["stage"] == "align" and f["message"].endswith("no face found") for f in failures)
    assert failures[7]["prompt"] == "A portrait photo of a 70 year old woman"
    assert info["random_weights"] is True
    again = run_job(client, build_spec(mode="prompts", prompts=prompts, output_uri=str(tmp_path / "again")))
    first_image = client.get_item(again.job_id, items[0].item_id).image.data
    assert first_image == item.image.data  # same prompt and seed, same image


def test_a_job_bigger_than_a_stage_is_fed_to_it_as_it_drains(client, redis_server, tmp_path):
    """40 samples into a stage capped at 16: accepted at once, never more than the cap waiting, all written."""
    from services.common.queue import connect_redis, stage_stream

    redis = connect_redis(redis_server)
    spec = build_spec(
        mode="sampling",
        samples=40,
        output_uri=str(tmp_path / "big"),
        disable_dedup=True,
        corrections=ONE_CORRECTION,
    )
    job = client.submit(spec)
    assert job.counts.inputs == 40
    held = redis.llen(f"sfhq:job:{job.job_id}:feed")
    assert held >= 40 - STREAM_CAP // 2  # at most half the cap went in directly
    longest = 0
    while (job := client.get_job(job.job_id)).state not in (
        gateway_pb2.JOB_STATE_SUCCEEDED,
        gateway_pb2.JOB_STATE_FAILED,
    ):
        longest = max(longest, redis.xlen(stage_stream("sample")))
        time.sleep(0.05)
    assert job.state == gateway_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.counts.written == 40 and longest <= STREAM_CAP
    assert redis.llen(f"sfhq:job:{job.job_id}:feed") == 0 and not redis.hexists(
        "sfhq:jobs:feeding", job.job_id
    )
    with pytest.raises(SfhqError) as refused:  # over the per-job limit: refused before any planning
        client.submit(build_spec(mode="sampling", samples=101, output_uri=str(tmp_path / "huge")))
    assert refused.value.code.name == "RESOURCE_EXHAUSTED" and "SFHQ_MAX_JOB_ITEMS" in refused.value.details
