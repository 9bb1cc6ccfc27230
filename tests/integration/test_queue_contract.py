"""The Redis Streams queue and StageWorker threads against a real redis-server.

Covers the queue contract of docs/architecture.md: FIFO per stage, batches of up to B, the cap
(QueueFull, atomic), reclaim after the visibility timeout, lease renewal for slow batches, poison
tasks dead-lettered with a failed result, permanent errors failing one task only, graceful stop.
Worker *processes* (SIGKILL, SIGTERM) are in test_queue_processes.py.
"""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from services.common.errors import NotFound
from services.common.images import ImageError
from services.common.metrics import Metrics
from services.common.queue import (
    DEAD_STREAM,
    RESULTS_STREAM,
    QueueFull,
    RedisQueue,
    Task,
    TaskResult,
    stage_stream,
)
from services.common.worker import StageWorker


def make_queue(client, **overrides) -> RedisQueue:
    options = {"stream_maxlen": 100, "visibility_timeout_s": 0.3, "max_deliveries": 2}
    options.update(overrides)
    queue = RedisQueue(client, **options)
    queue.ensure_groups()
    return queue


def tasks_for(stage: str, n: int, job: str = "job1", **payload) -> list[Task]:
    return [Task.make(job, f"item{i:03d}", stage, {"index": i, **payload}) for i in range(n)]


def drain_results(queue: RedisQueue, expected: int, timeout: float = 10.0) -> dict[str, TaskResult]:
    """Read results as the coordinator would, applying each task_id once."""
    applied: dict[str, TaskResult] = {}
    deadline = time.monotonic() + timeout
    while len(applied) < expected:
        assert time.monotonic() < deadline, f"only {len(applied)} of {expected} results arrived"
        entries = queue.read_results("test-coordinator", 50, 50)
        for _, result in entries:
            applied.setdefault(result.task_id, result)
        queue.ack_results([entry_id for entry_id, _ in entries])
    return applied


def start_worker(queue: RedisQueue, stage: str, handler, **options) -> StageWorker:
    worker = StageWorker(
        queue,
        stage,
        handler,
        consumer=options.pop("consumer", f"test-{stage}"),
        batch_size=options.pop("batch_size", 4),
        block_ms=options.pop("block_ms", 20),
        metrics=options.pop("metrics", Metrics(CollectorRegistry())),
    )
    worker.start()
    return worker


# ---- tasks and results ------------------------------------------------------------------------


def test_task_fields_round_trip_and_ids_are_validated():
    task = Task.make("j1", "i1", "encode", {"image": "jobs/j1/items/i1/align/aligned.png", "n": [1, 2]})
    assert task.task_id == "j1/i1/encode"
    fields = task.to_fields()
    assert set(fields) == {"task_id", "job_id", "item_id", "stage", "payload"}
    back = Task.from_fields("1-0", fields)
    assert (back.task_id, back.payload, back.entry_id) == (task.task_id, task.payload, "1-0")

    result = TaskResult.failure(task, "INVALID_ARGUMENT", "no face")
    assert result.to_fields()["ok"] == "0"
    assert TaskResult.from_fields(result.to_fields()) == result
    assert TaskResult.from_fields(TaskResult.success(task, {"latent": "k"}).to_fields()).output == {
        "latent": "k"
    }

    with pytest.raises(ValueError, match="job_id"):
        Task.make("j/1", "i1", "encode", {})
    with pytest.raises(ValueError, match="unknown stage"):
        Task.make("j1", "i1", "paint", {})
    with pytest.raises(ValueError, match="JSON"):
        Task.make("j1", "i1", "encode", {"array": object()})


# ---- ordering, batching, cap --------------------------------------------------------------------


def test_fifo_within_a_stage_and_batches_of_at_most_count(redis_client):
    queue = make_queue(redis_client)
    queue.enqueue_many(tasks_for("encode", 20))
    queue.enqueue_many(tasks_for("embed", 3))  # another stage does not interleave
    seen: list[int] = []
    sizes: list[int] = []
    while batch := queue.read_batch("encode", "c1", 7, 0):
        sizes.append(len(batch))
        seen += [task.payload["index"] for task in batch]
        assert all(task.deliveries == 1 and task.stage == "encode" for task in batch)
        queue.ack("encode", [task.entry_id for task in batch])
    assert seen == list(range(20))
    assert sizes == [7, 7, 6]
    assert queue.backlog("encode") == 0 and queue.backlog("embed") == 3


def test_worker_runs_batches_of_up_to_batch_size(redis_client):
    queue = make_queue(redis_client)
    queue.enqueue_many(tasks_for("embed", 10))
    batch_sizes: list[int] = []

    def handler(tasks: list[Task]) -> list[TaskResult]:
        batch_sizes.append(len(tasks))
        return [TaskResult.success(task, {"double": task.payload["index"] * 2}) for task in tasks]

    metrics = Metrics(CollectorRegistry())
    worker = start_worker(queue, "embed", handler, batch_size=4, metrics=metrics)
    results = drain_results(queue, 10)
    assert worker.stop(5)
    assert batch_sizes == [4, 4, 2]
    assert all(r.ok and r.output["double"] == int(r.item_id[4:]) * 2 for r in results.values())
    assert {r.worker for r in results.values()} == {"test-embed"}
    assert queue.backlog("embed") == 0
    assert (
        metrics.registry.get_sample_value("sfhq_worker_tasks_total", {"stage": "embed", "outcome": "ok"})
        == 10
    )
    assert metrics.registry.get_sample_value("sfhq_worker_batch_size_count", {"stage": "embed"}) == 3


def test_a_full_stage_refuses_new_work_atomically(redis_client):
    queue = make_queue(redis_client, stream_maxlen=3)
    queue.enqueue_many(tasks_for("align", 3))
    assert not queue.has_room("align")
    with pytest.raises(QueueFull) as refused:
        queue.enqueue(Task.make("job2", "x", "align", {}))
    assert (refused.value.stage, refused.value.backlog, refused.value.limit) == ("align", 3, 3)
    assert "full" in str(refused.value)
    assert queue.has_room("encode", 3)  # the cap is per stage

    # Finishing one makes room for exactly one; a batch of two is refused as a whole.
    first = queue.read_batch("align", "c", 1, 0)
    queue.ack("align", [first[0].entry_id])
    with pytest.raises(QueueFull):
        queue.enqueue_many([Task.make("job2", "a", "align", {}), Task.make("job2", "b", "align", {})])
    assert queue.backlog("align") == 2
    queue.enqueue(Task.make("job2", "a", "align", {}))
    assert queue.backlog("align") == 3


# ---- redelivery ---------------------------------------------------------------------------------


def test_unacked_work_is_reclaimed_after_the_visibility_timeout(redis_client):
    queue = make_queue(redis_client, visibility_timeout_s=0.3)
    queue.enqueue(Task.make("j", "i", "encode", {}))
    taken = queue.read_batch("encode", "dead-worker", 1, 0)
    assert len(taken) == 1
    assert queue.read_batch("encode", "live-worker", 1, 0) == []  # still leased
    time.sleep(0.35)
    again = queue.read_batch("encode", "live-worker", 1, 0)
    assert [t.task_id for t in again] == ["j/i/encode"]
    assert again[0].deliveries == 2
    assert queue.stats()["stages"]["encode"] == {"backlog": 1, "pending": 1}
    queue.ack("encode", [again[0].entry_id])
    assert queue.stats()["stages"]["encode"] == {"backlog": 0, "pending": 0}


def test_a_slow_batch_keeps_its_lease(redis_client):
    queue = make_queue(redis_client, visibility_timeout_s=0.3)
    queue.enqueue(Task.make("j", "slow", "synthesize", {}))
    started = threading.Event()

    def slow_handler(tasks):
        started.set()
        time.sleep(1.0)  # > 3 visibility timeouts
        return [TaskResult.success(task, {"deliveries": task.deliveries}) for task in tasks]

    worker = start_worker(queue, "synthesize", slow_handler, consumer="slow")
    assert started.wait(5)
    thief_got = []
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:
        thief_got += queue.read_batch("synthesize", "thief", 1, 0)
        time.sleep(0.05)
    results = drain_results(queue, 1)
    assert worker.stop(5)
    assert thief_got == []
    assert results["j/slow/synthesize"].output == {"deliveries": 1}


def test_a_poison_task_is_dead_lettered_and_fails_only_its_item(redis_client):
    queue = make_queue(redis_client, visibility_timeout_s=0.2, max_deliveries=2)
    tasks = tasks_for("curate", 3)
    tasks[1].payload["poison"] = True
    queue.enqueue_many(tasks)
    attempts: dict[str, int] = {}

    def handler(batch: list[Task]) -> list[TaskResult]:
        for task in batch:
            attempts[task.item_id] = attempts.get(task.item_id, 0) + 1
        if any(task.payload.get("poison") for task in batch):
            raise RuntimeError("boom: the model produced NaNs")
        return [TaskResult.success(task, {}) for task in batch]

    metrics = Metrics(CollectorRegistry())
    worker = start_worker(queue, "curate", handler, batch_size=3, metrics=metrics)
    results = drain_results(queue, 3, timeout=10)
    assert worker.stop(5)

    poison = results["job1/item001/curate"]
    assert not poison.ok and poison.error_code == "ABORTED"
    assert (
        poison.error_message == "delivered 3 times; last error: RuntimeError: boom: the model produced NaNs"
    )
    assert results["job1/item000/curate"].ok and results["job1/item002/curate"].ok
    # Everyone once in the failed batch, then once alone; the poison once more on its 2nd delivery.
    assert attempts == {"item000": 2, "item001": 3, "item002": 2}
    letters = queue.dead_letters()
    assert len(letters) == 1
    assert letters[0]["task_id"] == "job1/item001/curate"
    assert letters[0]["deliveries"] == 3 and letters[0]["payload"]["poison"] is True
    assert letters[0]["reason"] == poison.error_message
    assert queue.backlog("curate") == 0 and queue.stats()["dead"] == 1
    assert (
        metrics.registry.get_sample_value(
            "sfhq_worker_task_failures_total", {"stage": "curate", "kind": "transient"}
        )
        == 2
    )


def test_permanent_errors_fail_one_task_without_retry(redis_client):
    queue = make_queue(redis_client)
    tasks = tasks_for("align", 4)
    tasks[1].payload["bad"] = "image"
    tasks[2].payload["bad"] = "face"
    queue.enqueue_many(tasks)
    calls: list[list[str]] = []

    def handler(batch: list[Task]) -> list[TaskResult]:
        calls.append([task.item_id for task in batch])
        for task in batch:
            if task.payload.get("bad") == "image":
                raise ImageError("image data is truncated or corrupt (JPEG)")
            if task.payload.get("bad") == "face":
                raise NotFound("no face found")
        return [TaskResult.success(task, {"aligned": f"{task.item_id}.png"}) for task in batch]

    worker = start_worker(queue, "align", handler, batch_size=4)
    results = drain_results(queue, 4)
    assert worker.stop(5)
    assert results["job1/item001/align"].error_code == "INVALID_ARGUMENT"
    assert "truncated" in results["job1/item001/align"].error_message
    assert (results["job1/item002/align"].error_code, results["job1/item002/align"].error_message) == (
        "NOT_FOUND",
        "no face found",
    )
    assert results["job1/item000/align"].ok and results["job1/item003/align"].ok
    assert calls[0] == ["item000", "item001", "item002", "item003"]  # the batch, then one by one
    assert sorted(map(tuple, calls[1:])) == [("item000",), ("item001",), ("item002",), ("item003",)]
    assert queue.backlog("align") == 0 and queue.dead_letters() == []


def test_a_handler_breaking_its_contract_is_retried_then_dead_lettered(redis_client):
    queue = make_queue(redis_client, visibility_timeout_s=0.2, max_deliveries=1)
    queue.enqueue(Task.make("j", "i", "embed", {}))
    worker = start_worker(queue, "embed", lambda tasks: [], batch_size=1)
    results = drain_results(queue, 1)
    assert worker.stop(5)
    assert (
        "HandlerContractError: handler returned 0 results for 1 tasks" in results["j/i/embed"].error_message
    )


def test_malformed_entries_go_to_the_dead_letter_stream(redis_client):
    queue = make_queue(redis_client)
    redis_client.xadd(stage_stream("encode"), {"task_id": "x/y/encode", "payload": "{not json"})
    assert queue.read_batch("encode", "c", 5, 0) == []
    letters = queue.dead_letters()
    assert len(letters) == 1 and letters[0]["reason"].startswith("malformed entry")
    assert queue.backlog("encode") == 0
    assert redis_client.xlen(RESULTS_STREAM) == 0  # no job/item ids: nothing to fail


def test_graceful_stop_finishes_the_batch_in_hand(redis_client):
    queue = make_queue(redis_client, visibility_timeout_s=5)
    queue.enqueue_many(tasks_for("annotate", 5))
    in_handler = threading.Event()

    def handler(batch):
        in_handler.set()
        time.sleep(0.4)
        return [TaskResult.success(task, {}) for task in batch]

    worker = start_worker(queue, "annotate", handler, batch_size=2)
    assert in_handler.wait(5)
    assert worker.stop(5)
    assert not worker.is_alive()
    results = drain_results(queue, 2)
    assert sorted(results) == ["job1/item000/annotate", "job1/item001/annotate"]
    # The rest was never read: waiting, not pending, ready for the next worker.
    assert queue.stats()["stages"]["annotate"] == {"backlog": 3, "pending": 0}


def test_results_are_reclaimed_from_a_dead_coordinator(redis_client):
    queue = make_queue(redis_client, visibility_timeout_s=0.2)
    task = Task.make("j", "i", "embed", {})
    queue.publish_result(TaskResult.success(task, {"dim": 768}))
    first = queue.read_results("coordinator-a", 10, 0)
    assert [r.output for _, r in first] == [{"dim": 768}]
    assert queue.read_results("coordinator-b", 10, 0) == []
    time.sleep(0.25)
    again = queue.read_results("coordinator-b", 10, 0)
    assert [entry_id for entry_id, _ in again] == [entry_id for entry_id, _ in first]
    assert queue.ack_results([again[0][0]]) == 1
    assert redis_client.xlen(RESULTS_STREAM) == 0 and redis_client.xlen(DEAD_STREAM) == 0


def test_groups_are_recreated_after_redis_lost_them(redis_client):
    queue = make_queue(redis_client)
    redis_client.flushall()  # e.g. a Redis restart without persistence
    queue.enqueue(Task.make("j", "i", "sample", {"seed": 1}))
    assert [t.payload for t in queue.read_batch("sample", "c", 1, 0)] == [{"seed": 1}]


def test_a_pipelined_worker_overlaps_batches_and_reruns_a_batch_whose_stores_failed(redis_client):
    from concurrent.futures import ThreadPoolExecutor

    from services.common.stage_handler import batched_handler

    queue = make_queue(redis_client, visibility_timeout_s=5)
    queue.enqueue_many(tasks_for("embed", 12))
    release = threading.Event()
    runs: list[list[int]] = []
    stores_in_flight_at_run: list[int] = []
    pending_stores = [0]
    failed_once: set[int] = set()
    lock = threading.Lock()

    def run(indices: list[int]) -> list[int]:
        with lock:
            runs.append(list(indices))
            stores_in_flight_at_run.append(pending_stores[0])
            pending_stores[0] += len(indices)
        return [i * 10 for i in indices]

    def store(task: Task, index: int, value: int) -> dict:
        try:
            release.wait(5)  # the first batch's stores wait until a later batch has run
            if index == 5 and index not in failed_once:
                failed_once.add(index)
                raise ConnectionError("blob store hiccup")  # transient: the batch is re-run
            return {"value": value}
        finally:
            with lock:
                pending_stores[0] -= 1

    handler = batched_handler(lambda t: t.payload["index"], run, store, store_pool=ThreadPoolExecutor(4))
    worker = start_worker(queue, "embed", handler, batch_size=4)
    deadline = time.monotonic() + 10
    while len(runs) < 2:
        assert time.monotonic() < deadline, runs
        time.sleep(0.01)
    release.set()
    results = drain_results(queue, 12)
    assert worker.stop(5)
    assert stores_in_flight_at_run[1] > 0  # batch 2 ran on the model while batch 1 was being stored
    assert all(r.ok for r in results.values())
    assert {r.task_id: r.output["value"] for r in results.values()} == {
        f"job1/item{i:03d}/embed": 10 * i for i in range(12)
    }
    assert [4, 5, 6, 7] in runs[2:]  # the failed batch, run again
    assert queue.backlog("embed") == 0 and queue.dead_letters() == []
