"""Curation a person can run, end to end with real processes: label -> train -> a job with the
model (accepted / review / rejected) -> review verdicts -> dataset-wide near-duplicates across jobs
(the better-scored copy stays, even an earlier job's written one leaves) -> re-curation and a
dedup pass over a dataset.

Random CLIP weights make distinct test faces 0.95-0.98 similar and a brightened copy 0.998
similar, so the near-duplicate threshold here is 0.995: copies are duplicates, different faces not.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from sfhq.sdk import Client, SfhqError, build_spec
from sfhq.v1 import gateway_pb2
from tests.helpers import ONE_CORRECTION
from tests.helpers.cluster import random_cluster
from tests.helpers.data import face_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SUCCEEDED = gateway_pb2.JOB_STATE_SUCCEEDED
COPY_THRESHOLD = 0.995
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(redis_server, tmp_path_factory):
    with random_cluster(redis_server, tmp_path_factory) as running:
        yield running


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster.addr("gateway"), timeout=120) as c:
        yield c


def face(n: int) -> bytes:
    return face_path(n).read_bytes()


def brighter(n: int) -> bytes:
    """A near-copy of test face `n` (what two candidates of one inspiration image often are)."""
    buf = io.BytesIO()
    ImageEnhance.Brightness(Image.open(face_path(n)).convert("RGB")).enhance(1.05).save(
        buf, "JPEG", quality=95
    )
    return buf.getvalue()


def run(client: Client, spec: gateway_pb2.JobSpec) -> gateway_pb2.Job:
    job = client.wait(client.submit(spec).job_id, timeout=300)
    assert job.state == SUCCEEDED, job.error
    return job


def rows(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line.strip()]


def consistent(root: Path) -> list[dict]:
    listed = rows(root)
    stems = {r["stem"] for r in listed}
    assert {p.stem for p in (root / "images").glob("*.jpg")} == stems
    assert {p.stem for p in (root / "pretrained_features").glob("*.pickle")} == stems
    return listed


def sfhq_cli(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sfhq.cli", *args, "--address", cluster.addr("gateway")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={**os.environ, "SFHQ_STATE_DIR": str(REPO / ".no-cluster"), "COLUMNS": "200"},
    )


@pytest.fixture(scope="module")
def trained(cluster, client, tmp_path_factory) -> str:
    """A taste model trained through the CLI from 24 labels: 20 given through the SDK, 4 from a file."""
    out = tmp_path_factory.mktemp("labelled") / "ds"
    spec = build_spec(
        mode="sampling",
        samples=24,
        corrections=ONE_CORRECTION,
        annotation_size=64,
        image_size=64,
        disable_dedup=True,
        output_uri=str(out),
    )
    job = run(client, spec)
    items = [r["item_id"] for r in rows(out)]
    assert len(items) == 24
    reply = client.label(
        {item: n % 2 == 0 for n, item in enumerate(items[:20])}, taste_model="mine", job_id=job.job_id
    )
    assert (reply.positives, reply.negatives) == (10, 10)
    label_file = out.parent / "labels.csv"
    label_file.write_text(
        "item_id,label\n"
        + "".join(f"{item},{'good' if n % 2 == 0 else 'bad'}\n" for n, item in enumerate(items[20:]))
    )
    trained = sfhq_cli(
        cluster, "taste", "train", "mine", "--from-labels", str(label_file), "--job", job.job_id
    )
    assert trained.returncode == 0, trained.stderr
    assert "added 4 labels" in trained.stdout
    assert "mine" in trained.stdout and "CV AUC" in trained.stdout and "12/12" in trained.stdout
    listed = sfhq_cli(cluster, "taste", "list")
    assert listed.returncode == 0 and "mine" in listed.stdout
    return "mine"


def test_bad_curation_input_gets_clear_errors(client, tmp_path):
    with pytest.raises(SfhqError) as unknown:
        client.label({"nope-c0": True}, taste_model="mine", job_id="20990101-000000-00000000")
    assert unknown.value.code.name == "NOT_FOUND"
    with pytest.raises(SfhqError) as few:
        client.train_taste("empty")
    assert few.value.code.name == "FAILED_PRECONDITION" and "at least 10 positive" in few.value.details
    with pytest.raises(SfhqError) as missing:
        client.submit(
            build_spec(
                images=[face(0)], mode="annotate", taste_model="nobody", output_uri=str(tmp_path / "x")
            )
        )
    assert missing.value.code.name == "INVALID_ARGUMENT" and "curation.taste_model" in missing.value.details


def test_a_job_with_a_taste_model_has_a_review_band_and_verdicts_write_into_the_dataset(
    cluster, client, trained, tmp_path
):
    out = tmp_path / "ds"
    spec = build_spec(
        mode="sampling",
        samples=8,
        corrections=ONE_CORRECTION,
        annotation_size=64,
        image_size=64,
        disable_dedup=True,
        taste_model=trained,
        accept_threshold=0.99,
        reject_threshold=0.01,  # a wide band: nearly every candidate waits for a person
        output_uri=str(out),
    )
    job = run(client, spec)
    assert job.counts.review >= 2
    assert job.counts.review + job.counts.accepted + job.counts.rejected_taste == 8
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["jobs"][0]["resolved"]["taste_model"] == f"{trained}@1"  # the version the job used

    queue = client.review_queue(job.job_id, count=50)
    assert queue.waiting == job.counts.review and len(queue.items) == job.counts.review
    uncertainty = [entry.uncertainty for entry in queue.items]
    assert uncertainty == sorted(uncertainty, reverse=True)  # the most informative first
    good, bad = queue.items[0].item.item_id, queue.items[1].item.item_id
    reviewed = sfhq_cli(cluster, "review", job.job_id, "--accept", good, "--reject", bad)
    assert reviewed.returncode == 0, reviewed.stderr
    after = client.wait(job.job_id, timeout=120)
    assert after.state == SUCCEEDED and after.counts.written == job.counts.written + 1
    assert after.counts.review == job.counts.review - 2
    assert client.get_item(job.job_id, bad, image=False).state == "rejected_taste"
    listed = consistent(out)
    assert good in {r["item_id"] for r in listed} and bad not in {r["item_id"] for r in listed}
    with pytest.raises(SfhqError) as twice:
        client.review(job.job_id, good, False)
    assert twice.value.code.name == "FAILED_PRECONDITION"
    # both verdicts became labels for the next training
    retrained = client.train_taste(trained)
    assert (retrained.version, retrained.positives, retrained.negatives) == (2, 13, 13)


def test_duplicates_are_removed_dataset_wide_keeping_the_better_scored_copy(
    cluster, client, trained, tmp_path
):
    out = tmp_path / "ds"
    first = run(
        client,
        build_spec(
            mode="annotate",
            images=[face(0), face(1), face(2), brighter(0)],  # face 0 twice: one copy must go
            dedup_threshold=COPY_THRESHOLD,
            output_uri=str(out),
        ),
    )
    assert (first.counts.written, first.counts.rejected_duplicate) == (3, 1)
    dropped = client.list_items(first.job_id, state="rejected_duplicate")
    assert [i.item_id for i in dropped] == ["i000003"]  # equal (no) scores: the first copy stays
    assert dropped[0].duplicate_of == f"{first.job_id}/i000000"
    face1_stem = next(r["stem"] for r in rows(out) if r["item_id"] == "i000001")

    # A second job into the same dataset, with a taste model: its copy of face 1 scores above the
    # first job's unscored one, so the first job's written copy leaves for rejected/.
    second = run(
        client,
        build_spec(
            mode="annotate",
            images=[brighter(1), face(5)],
            taste_model=trained,
            accept_threshold=0.0,
            dedup_threshold=COPY_THRESHOLD,
            output_uri=str(out),
            write_mode="append",
        ),
    )
    assert second.counts.written == 2 and second.counts.rejected_duplicate == 0
    taken_out = [json.loads(line) for line in (out / "rejected" / "manifest.jsonl").read_text().splitlines()]
    assert [(r["stem"], r["reason"], r["job_id"]) for r in taken_out] == [
        (face1_stem, "duplicate", first.job_id)
    ]
    assert (out / "rejected" / "images" / f"{face1_stem}.jpg").exists()
    listed = consistent(out)
    assert len(listed) == 4 and face1_stem not in {r["stem"] for r in listed}
    assert json.loads((out / "dataset_info.json").read_text())["rejected_later"] == 1

    report = sfhq_cli(cluster, "dedup", str(out), "--threshold", str(COPY_THRESHOLD), "--dry-run")
    assert report.returncode == 0 and "0 groups" in report.stdout, report.stdout  # clean now


def test_a_dataset_pass_finds_planted_duplicates_and_re_curation_moves_low_scores(
    cluster, client, trained, tmp_path
):
    out = tmp_path / "ds"
    job = run(
        client,
        build_spec(
            mode="annotate",
            images=[face(2), brighter(2), face(3), face(4)],
            disable_dedup=True,
            output_uri=str(out),
        ),
    )
    assert job.counts.written == 4
    dry = client.dedup_dataset(str(out), threshold=COPY_THRESHOLD, dry_run=True)
    assert len(dry.groups) == 1 and len(dry.groups[0].removed) == 1 and len(rows(out)) == 4
    done = sfhq_cli(cluster, "dedup", str(out), "--threshold", str(COPY_THRESHOLD))
    assert done.returncode == 0 and "1 groups, 1 moved" in done.stdout, done.stdout
    assert len(consistent(out)) == 3

    scores = client.score_items(trained, dataset_uri=str(out))
    assert len(scores.items) == 3 and sum(scores.histogram) == 3
    cut = sorted(i.score for i in scores.items)[1] + 1e-6  # between the lowest two and the highest
    preview = sfhq_cli(
        cluster, "curate", str(out), "--taste-model", trained, "--threshold", str(cut), "--dry-run"
    )
    assert preview.returncode == 0 and "2 would move" in preview.stdout and len(rows(out)) == 3
    moved = client.curate_dataset(str(out), trained, threshold=cut)
    assert len(moved.moved) == 2 and moved.kept == 1
    assert len(consistent(out)) == 1
    reasons = [
        json.loads(line)["reason"] for line in (out / "rejected" / "manifest.jsonl").read_text().splitlines()
    ]
    assert sorted(reasons) == ["duplicate", "taste", "taste"]
