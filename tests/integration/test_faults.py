"""Faults with real processes and real signals, and what must hold after each.

* a handler that hangs forever gives up its lease after `max_lease_s`; another worker takes over;
* a worker *process* frozen with SIGSTOP is taken over after the visibility timeout, and its late
  results, once it thaws, are applied zero times (every stage counts each item exactly once);
* Redis SIGKILLed mid-job with the append-only file on: the job completes, nothing lost or doubled;
* Redis restarted *without* persistence: callers get DATA_LOSS naming the cause, not a hang, and the
  cluster keeps serving new jobs;
* a blob store that refuses writes (permission denied; a full disk, as a file-size limit): the items
  fail with the reason, and no partial file is left in the dataset.

The cluster tests share the session's hardened cluster (reliability/harness.py: tokens, mTLS, a
Redis ACL user, AOF). Small jobs (sampling mode, 64-px annotation) keep them to seconds each.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from reliability import harness
from services.common.blobs import BlobStore, BlobWriteError
from services.common.dataset import DatasetWriter
from services.common.metrics import Metrics
from services.common.queue import RedisQueue, Task, TaskResult, stage_stream
from services.common.worker import StageWorker
from sfhq.sdk import SfhqError
from sfhq.v1 import gateway_pb2
from tests.helpers.processes import wait_until

ITEM_FOLDERS = {"images", "segmentations", "landmarks", "pretrained_features", "latents"}
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SUCCEEDED, FAILED = gateway_pb2.JOB_STATE_SUCCEEDED, gateway_pb2.JOB_STATE_FAILED
SAMPLING_STAGES = ("sample", "encode", "synthesize", "embed", "curate", "annotate")
NOBODY = 65534


# ---- hung handlers (worker threads on the test Redis) -------------------------------------------


def _worker(queue: RedisQueue, name: str, handler, **options) -> StageWorker:
    worker = StageWorker(
        queue,
        "encode",
        handler,
        consumer=name,
        batch_size=1,
        block_ms=20,
        metrics=Metrics(CollectorRegistry()),
        **options,
    )
    worker.start()
    return worker


def _results(queue: RedisQueue, wanted: int, timeout: float = 10.0) -> list[TaskResult]:
    found: list[TaskResult] = []
    deadline = time.monotonic() + timeout
    while len(found) < wanted:
        assert time.monotonic() < deadline, f"{len(found)} of {wanted} results after {timeout} s: {found}"
        entries = queue.read_results("test", 10, 50)
        found += [result for _, result in entries]
        queue.ack_results([entry_id for entry_id, _ in entries])
    return found


def test_a_hung_handler_gives_up_its_lease_and_another_worker_takes_over(redis_client):
    queue = RedisQueue(redis_client, visibility_timeout_s=0.3, max_deliveries=3)
    queue.ensure_groups()
    release = threading.Event()

    def hangs(tasks: list[Task]) -> list[TaskResult]:
        release.wait(30)  # "forever", as far as this test is concerned
        return [TaskResult.success(task, {"by": "hung"}) for task in tasks]

    queue.enqueue(Task.make("job", "item", "encode", {}))
    hung = _worker(queue, "hung", hangs, max_lease_s=1.2)
    wait_until(
        lambda: queue.stats()["stages"]["encode"]["pending"] == 1, 5, "the hung worker to take the task"
    )
    started = time.monotonic()
    healthy = _worker(
        queue,
        "healthy",
        lambda tasks: [TaskResult.success(t, {"by": "healthy", "n": t.deliveries}) for t in tasks],
    )
    try:
        [result] = _results(queue, 1)
        waited = time.monotonic() - started
        # the lease was renewed while the batch was young, then given up: reclaimed after about
        # max_lease_s + one visibility timeout, not after one visibility timeout
        assert 0.9 < waited < 4.0, waited
        assert result.output == {"by": "healthy", "n": 2} and result.worker == "healthy"
        assert hung.leases_given_up == 1
        assert queue.stats()["stages"]["encode"] == {"backlog": 0, "pending": 0}
        # when the hung handler finally returns, its late result is one more delivery of the same
        # task id: the coordinator applies a task id once (tested in test_queue_contract)
        release.set()
        [late] = _results(queue, 1)
        assert late.task_id == result.task_id and late.output == {"by": "hung"}
    finally:
        release.set()
        assert hung.stop(5) and healthy.stop(5)


def test_a_task_that_hangs_every_worker_ends_in_the_dead_letter_stream(redis_client):
    queue = RedisQueue(redis_client, visibility_timeout_s=0.2, max_deliveries=2)
    queue.ensure_groups()
    release = threading.Event()

    def hangs(tasks: list[Task]) -> list[TaskResult]:
        release.wait(30)
        return [TaskResult.success(task, {}) for task in tasks]

    queue.enqueue(Task.make("job", "poison", "encode", {}))
    # each hung worker holds one delivery until its lease runs out; the third worker finds the
    # entry delivered too often and dead-letters it instead of running it
    workers = [_worker(queue, f"w{n}", hangs, max_lease_s=0.5) for n in range(3)]
    try:
        [failed] = _results(queue, 1, timeout=15)
        assert not failed.ok and failed.error_code == "ABORTED"
        assert failed.error_message.startswith("delivered 3 times; last error: none recorded")
        [letter] = queue.dead_letters()
        assert letter["task_id"] == "job/poison/encode" and letter["deliveries"] == 3
    finally:
        release.set()
        for worker in workers:
            assert worker.stop(5)


def test_an_item_is_written_whole_or_not_at_all(tmp_path):
    writer = DatasetWriter(str(tmp_path / "dataset"))
    real_put = BlobStore.put
    calls = []

    def put_until_the_disk_fills(store: BlobStore, key: str, data: bytes) -> str:
        calls.append(key)
        if len(calls) == 3:  # image and segmentation are written, then the disk is full
            raise BlobWriteError(key, OSError(28, "No space left on device"))
        return real_put(store, key, data)

    writer.store.put = put_until_the_disk_fills.__get__(writer.store)
    with pytest.raises(BlobWriteError, match="No space left on device"):
        writer.write_item(
            "SFHQ_pt1_00000000",
            image_jpeg=b"jpeg",
            segmentation_png=b"png",
            landmarks=np.zeros((110, 2), np.float32),
            features={"k": np.zeros((1, 4), np.float16)},
        )
    assert len(calls) == 3
    assert [p for p in (tmp_path / "dataset").rglob("*") if p.is_file()] == []


def test_finalizing_discards_the_unfinished_files_of_killed_writers(tmp_path):
    writer = DatasetWriter(str(tmp_path / "dataset"))
    writer.write_item(
        "SFHQ_pt1_00000000",
        image_jpeg=b"jpeg",
        segmentation_png=b"png",
        landmarks=np.zeros((110, 2), np.float32),
        features={"k": np.zeros((1, 4), np.float16)},
    )
    # what a writer SIGKILLed between its write and its rename leaves behind
    leftover = tmp_path / "dataset" / "images" / ".sfhq-tmp-0a1b2c3d4e5f-SFHQ_pt1_00000001.jpg"
    leftover.write_bytes(b"half a jpe")
    # another job writing into the same folder (another part): its in-flight file is not ours to delete
    in_flight = tmp_path / "dataset" / "images" / ".sfhq-tmp-00112233aabb-SFHQ_pt2_00000001.jpg"
    in_flight.write_bytes(b"being written")
    own = {"SFHQ_pt1_00000000", "SFHQ_pt1_00000001", "manifest.jsonl"}
    assert writer.discard_partial_writes(own) == ["images/.sfhq-tmp-0a1b2c3d4e5f-SFHQ_pt1_00000001.jpg"]
    assert not leftover.exists() and in_flight.exists()
    assert (tmp_path / "dataset" / "images" / "SFHQ_pt1_00000000.jpg").exists()
    assert writer.discard_partial_writes(own) == []


def test_a_job_lost_with_redis_data_is_told_apart_from_a_made_up_one(redis_client):
    from gateway.coordinator import JobStore

    store = JobStore(redis_client)
    store.epoch_ms()  # the gateway records the data set it starts on
    time.sleep(1.1)  # job ids have whole seconds
    old_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() - 5)) + "-75dd33a3"
    assert store.predates_data(old_id) and not store.state_lost(old_id)  # no loss seen: just not found
    redis_client.flushall()  # what a restart without persistence leaves behind
    assert store.state_lost(old_id)
    assert not store.state_lost(time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() + 5)) + "-00000000")
    assert not store.state_lost("not-a-gateway-job-id")


# ---- the cluster --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> harness.ReliabilityCluster:
    cluster = harness.shared_cluster()
    cluster.ensure_healthy()
    yield cluster
    cluster.ensure_healthy()  # leave it whole for the next module


def _folder(cluster: harness.ReliabilityCluster, name: str) -> Path:
    return cluster.workdir / f"{name}-{uuid.uuid4().hex[:6]}"


def _assert_exactly_once(
    cluster: harness.ReliabilityCluster, job: gateway_pb2.Job, out: Path, samples: int
) -> None:
    assert job.state == SUCCEEDED, job.error
    counts = job.counts
    assert (counts.written, counts.failed, counts.in_flight) == (samples, 0, 0)
    assert {stage: counts.done_by_stage[stage] for stage in SAMPLING_STAGES} == dict.fromkeys(
        SAMPLING_STAGES, samples
    )
    check = harness.check_dataset(out, harness.sample_item_ids(samples))
    assert check.exactly_once, check
    report = harness.wait_for_quiet_queue(cluster.admin_redis())
    assert harness.nothing_pending(report), report


def test_redis_killed_mid_job_with_aof_loses_nothing(cluster):
    out = _folder(cluster, "aof")
    with cluster.client() as client:
        job = client.submit(harness.sampling_spec(12, out))
        wait_until(
            lambda: client.get_job(job.job_id).counts.done_by_stage["encode"] >= 2,
            120,
            "some progress",
            interval=0.2,
        )
        # SIGKILL: only what the append-only file (fsync'd every second) holds survives
        cluster.redis_server.restart(kill=True)
        final = client.wait(job.job_id, timeout=240)
    _assert_exactly_once(cluster, final, out, 12)


def test_redis_restarted_without_persistence_reports_lost_state(cluster):
    with cluster.client() as client:
        job = client.submit(harness.sampling_spec(40, _folder(cluster, "lost")))
        submitted = time.monotonic()
        wait_until(
            lambda: client.get_job(job.job_id).counts.done_by_stage["sample"] >= 1,
            120,
            "some progress",
            interval=0.2,
        )
        time.sleep(max(0.0, 1.2 - (time.monotonic() - submitted)))  # job ids carry whole seconds
        cluster.redis_server.restart(persistent=False)
        try:
            started = time.monotonic()
            with pytest.raises(SfhqError) as lost:
                client.wait(job.job_id, timeout=60)
            assert time.monotonic() - started < 30  # said so, instead of hanging
            assert lost.value.code == grpc.StatusCode.DATA_LOSS
            assert "restarted without persistence" in lost.value.details
            for call in (client.get_job, client.list_items, client.cancel):
                with pytest.raises(SfhqError) as again:
                    call(job.job_id)
                assert again.value.code == grpc.StatusCode.DATA_LOSS, call
            with pytest.raises(SfhqError) as unknown:  # a job that never existed is still just not found
                client.get_job(time.strftime("%Y%m%d-%H%M%S", time.gmtime(time.time() + 3600)) + "-00000000")
            assert unknown.value.code == grpc.StatusCode.NOT_FOUND

            # the services recreate their streams and groups: the next job runs as usual
            out = _folder(cluster, "after-loss")
            final = client.wait(client.submit(harness.sampling_spec(3, out)).job_id, timeout=180)
            _assert_exactly_once(cluster, final, out, 3)
        finally:
            cluster.redis_server.enable_persistence()


def test_blob_write_failures_fail_items_with_the_reason_and_leave_no_partial_files(cluster):
    read_only = _folder(cluster, "read-only")
    read_only.mkdir()
    if os.geteuid() == 0:
        os.chown(read_only, NOBODY, NOBODY)  # not the annotator's, and it runs without root's override
    read_only.chmod(0o555)
    disk_full = _folder(cluster, "disk-full")
    disk_full.mkdir()  # writable, but the annotator may not write a file past 16 KiB
    cluster.kill("annotator")
    cluster.start(
        "annotator", obey_file_permissions=True, max_file_bytes=16 * 1024, log_name="annotator-restricted"
    )
    try:
        cluster.wait_healthy("annotator")
        with cluster.client() as client:
            jobs = {
                reason: client.submit(harness.sampling_spec(2, folder, image_size=256)).job_id
                for reason, folder in (("Permission denied", read_only), ("File too large", disk_full))
            }
            for reason, job_id in jobs.items():
                job = client.wait(job_id, timeout=180)
                assert job.state == FAILED and job.error.startswith("all 2 items failed"), job
                failed = client.list_items(job_id, state="failed")
                assert len(failed) == 2
                for item in failed:
                    assert item.error.stage == 7  # annotate
                    assert item.error.code == "ABORTED"  # retried max_deliveries times, then given up
                    assert "could not write blob" in item.error.message and reason in item.error.message, item
        for folder in (read_only, disk_full):
            left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            # no item file: only the (empty) manifests the gateway wrote when it finalized the failed job
            assert not [p for p in left if p.split("/")[0] in ITEM_FOLDERS], left
            assert (folder / "manifest.jsonl").read_text() == ""
    finally:
        cluster.restart("annotator")


def test_a_frozen_worker_process_is_taken_over_and_its_late_results_count_once(cluster):
    cluster.start("encoder#2", env={"SFHQ_STAGES": "encode"})  # a second encoder replica
    try:
        cluster.wait_healthy("encoder#2")
        frozen_consumer = f"encoder-{socket.gethostname()}-{cluster.processes['encoder'].pid}-encode"
        admin = cluster.admin_redis()
        out = _folder(cluster, "frozen")
        with cluster.client() as client:
            job = client.submit(harness.sampling_spec(12, out))

            def frozen_one_holds_work() -> bool:
                return bool(
                    admin.xpending_range(
                        stage_stream("encode"), "workers", "-", "+", 10, consumername=frozen_consumer
                    )
                )

            wait_until(frozen_one_holds_work, 120, "the first encoder to hold tasks", interval=0.01)
            cluster.pause("encoder")  # SIGSTOP mid-batch: alive, silent, holding its entries
            try:
                final = client.wait(job.job_id, timeout=240)
            finally:
                cluster.resume("encoder")  # it wakes up and publishes results nobody needs any more
            time.sleep(2)
            final = client.get_job(job.job_id)
        _assert_exactly_once(cluster, final, out, 12)
        assert cluster.alive("encoder")
    finally:
        cluster.kill("encoder#2")
