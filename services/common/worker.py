"""Stage workers: a thread that pulls batches of one stage from the queue and runs a handler on them.

The loop is read_batch -> handler -> one result per task (published and acked in one Redis
transaction). Failures are sorted so that one bad input never costs the others:

* the handler raises for a whole batch -> the tasks are retried one by one to find the culprit;
* `PermanentError` (or another typed error of `services.common.errors`) for one task -> a failed
  result is published and the entry acked: no retry;
* any other exception for one task -> it is logged and recorded, and the entry stays unacked, so it
  is redelivered after the visibility timeout and dead-lettered after `max_deliveries`.

A handler with a `submit` method (`stage_handler.PipelinedHandler`) is pipelined: the worker
submits batch k (its model call runs here, its stores in the handler's thread pool), then reads
and submits batch k+1 while batch k's stores finish, and completes batches in order. When a
submitted batch fails as a whole, it is re-run through the plain call, like any failed batch.

While a batch runs, a lease thread renews the visibility timeout of its entries, so that a slow
batch is not handed to a second worker. Renewal stops once the batch has run for `max_lease_s`
(default: `MAX_LEASE_FACTOR` visibility timeouts): a handler that hangs forever would otherwise
hold its entries forever. Another worker then reclaims them, and a task that hangs every worker it
reaches ends in the dead-letter stream like any other poison input.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import redis

from services.common.errors import PermanentError, error_status
from services.common.metrics import METRICS, Metrics
from services.common.queue import RedisQueue, Task, TaskResult
from services.common.stages import check_stage
from services.common.tracing import task_spans

__all__ = ["HandlerContractError", "PermanentError", "StageHandler", "StageWorker", "default_consumer_name"]

log = logging.getLogger(__name__)

StageHandler = Callable[[list[Task]], list[TaskResult]]

# How often the backlog gauge is refreshed (an XLEN per refresh).
DEPTH_REFRESH_S = 2.0
# A batch keeps its lease for at most this many visibility timeouts, unless max_lease_s says otherwise.
MAX_LEASE_FACTOR = 10.0


@dataclass
class _InFlight:
    """A batch submitted to a pipelined handler and not yet completed."""

    token: int  # its entry in the worker's batches in hand
    tasks: list[Task]
    skipped: list[tuple[str, TaskResult]]
    future: Future[list[TaskResult]] | None
    started: float = field(default_factory=time.perf_counter)
    error: Exception | None = None  # the submit itself raised


class HandlerContractError(RuntimeError):
    """The handler broke its contract: not one TaskResult per task, in order."""


def default_consumer_name(service: str) -> str:
    """A consumer name unique to this process: `<service>-<host>-<pid>`."""
    return f"{service}-{socket.gethostname()}-{os.getpid()}"


class StageWorker(threading.Thread):
    """Consumes one stage with one handler until `stop()`."""

    def __init__(
        self,
        queue: RedisQueue,
        stage: str,
        handler: StageHandler,
        *,
        consumer: str,
        batch_size: int,
        block_ms: int,
        metrics: Metrics | None = None,
        max_lease_s: float | None = None,
    ) -> None:
        super().__init__(name=f"sfhq-worker-{stage}", daemon=True)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_lease_s is not None and max_lease_s <= 0:
            raise ValueError(f"max_lease_s must be > 0 (or None for the default), got {max_lease_s}")
        self.queue = queue
        self.stage = check_stage(stage)
        self.handler = handler
        self.consumer = consumer
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.metrics = metrics or METRICS
        self.batches_done = 0
        # Longest a batch may hold its entries; past it they are left to be reclaimed by others.
        self.max_lease_s = max_lease_s or MAX_LEASE_FACTOR * queue.visibility_timeout_s
        self.leases_given_up = 0  # batches that outran max_lease_s (each one is logged)
        self._stopping = threading.Event()
        self._finished = threading.Event()  # set when run() returns; ends the lease thread
        # Entry ids of the batches in hand and when each started (monotonic), renewed by the lease thread.
        self._batches_in_hand: dict[int, tuple[float, list[str]]] = {}
        self._in_hand_lock = threading.Lock()
        self._next_token = 0
        self._pipelined = callable(getattr(handler, "submit", None))
        self._next_depth_refresh = 0.0

    # ---- control ----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop reading new batches; returns at once (see `stop` to wait)."""
        self._stopping.set()

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop reading, let the batch in hand finish, and wait up to `timeout` s.

        Returns False if the batch was still running at the timeout. Its entries stay unacked
        and another worker reclaims them after the visibility timeout.
        """
        self._stopping.set()
        if self.is_alive():
            self.join(timeout)
        return not self.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # ---- main loop --------------------------------------------------------------------------

    def run(self) -> None:
        lease_thread = threading.Thread(target=self._renew_leases, name=f"{self.name}-lease", daemon=True)
        lease_thread.start()
        log.info("worker %s consuming stage %s (batch <= %d)", self.consumer, self.stage, self.batch_size)
        try:
            self._loop()
        finally:
            self._finished.set()
        log.info("worker %s stopped (%d batches)", self.consumer, self.batches_done)

    def _hold(self, tasks: list[Task]) -> int:
        with self._in_hand_lock:
            self._next_token += 1
            token = self._next_token
            self._batches_in_hand[token] = (time.monotonic(), [task.entry_id for task in tasks])
        return token

    def _release(self, token: int) -> None:
        with self._in_hand_lock:
            self._batches_in_hand.pop(token, None)

    def _loop(self) -> None:
        if self._pipelined:
            self._pipelined_loop()
            return
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                tasks = self.queue.read_batch(self.stage, self.consumer, self.batch_size, self.block_ms)
                self._refresh_depth()
            except redis.RedisError as exc:
                # Redis restarting or unreachable: keep the worker alive and try again.
                log.warning(
                    "worker %s: reading %s failed (%s); retrying in %.1f s",
                    self.consumer,
                    self.stage,
                    exc,
                    backoff,
                )
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if not tasks:
                continue
            # Delivered to us, so finished even when a stop was requested meanwhile.
            try:
                self._process(tasks)
            except Exception:
                # A bug in the bookkeeping, not in the handler: the entries stay pending and are retried.
                log.exception("worker %s: unexpected error around a batch of %d", self.consumer, len(tasks))

    def _pipelined_loop(self) -> None:
        """Submit each batch as it arrives; complete the oldest once a newer one is submitted (or
        nothing new came), so one batch's stores overlap the next one's model call."""
        in_flight: deque[_InFlight] = deque()
        backoff = 0.1
        try:
            while not self._stopping.is_set():
                try:
                    tasks = self.queue.read_batch(
                        self.stage, self.consumer, self.batch_size, 0 if in_flight else self.block_ms
                    )
                    self._refresh_depth()
                except redis.RedisError as exc:
                    log.warning(
                        "worker %s: reading %s failed (%s); retrying in %.1f s",
                        self.consumer, self.stage, exc, backoff,
                    )  # fmt: skip
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.1
                if tasks:
                    try:
                        in_flight.append(self._submit(tasks))
                    except Exception:  # bookkeeping (Redis), not the handler: the entries stay pending
                        log.exception("worker %s: could not submit a batch of %d", self.consumer, len(tasks))
                while in_flight and (len(in_flight) > 1 or not tasks):
                    self._complete_in_flight(in_flight.popleft())
        finally:
            while in_flight:  # delivered to us: finished even when a stop was requested
                self._complete_in_flight(in_flight.popleft())

    def _submit(self, tasks: list[Task]) -> _InFlight:
        token = self._hold(tasks)
        try:
            skipped, tasks = self._skip_cancelled(tasks)
        except Exception:
            self._release(token)
            raise
        batch = _InFlight(token, tasks, skipped, None)
        if tasks:
            try:
                with task_spans(self.stage, tasks):  # the span covers the submission; the model runs after
                    batch.future = self.handler.submit(list(tasks))  # type: ignore[attr-defined]
            except Exception as exc:
                batch.error = exc
        return batch

    def _complete_in_flight(self, batch: _InFlight) -> None:
        tasks = batch.tasks
        try:
            done: list[tuple[str, TaskResult]] = []
            transient: list[tuple[Task, str]] = []
            if tasks:
                try:
                    if batch.error is not None:
                        raise batch.error
                    assert batch.future is not None
                    results = self._checked(tasks, batch.future.result())
                    done = [(task.entry_id, result) for task, result in zip(tasks, results, strict=True)]
                except Exception as exc:
                    log.warning(
                        "worker %s: pipelined batch of %d %s tasks failed (%s: %s); re-running it",
                        self.consumer, len(tasks), self.stage, type(exc).__name__, exc,
                    )  # fmt: skip
                    done, transient = self._run_isolating(tasks)
            self._publish(batch.skipped + done, transient, len(tasks), time.perf_counter() - batch.started)
        except Exception:
            log.exception("worker %s: unexpected error around a batch of %d", self.consumer, len(tasks))
        finally:
            self._release(batch.token)

    def _skip_cancelled(self, tasks: list[Task]) -> tuple[list[tuple[str, TaskResult]], list[Task]]:
        """Tasks of cancelled jobs are answered without running: cancel drains a big job quickly."""
        cancelled = self.queue.cancelled_among(task.job_id for task in tasks)
        skipped = [
            (t.entry_id, TaskResult.failure(t, "CANCELLED", "job cancelled"))
            for t in tasks
            if t.job_id in cancelled
        ]
        return skipped, [t for t in tasks if t.job_id not in cancelled]

    def _process(self, tasks: list[Task]) -> None:
        token = self._hold(tasks)
        started = time.perf_counter()
        skipped, tasks = self._skip_cancelled(tasks)
        try:
            done, transient = self._run_isolating(tasks) if tasks else ([], [])
            done = skipped + done
        finally:
            self._release(token)
        self._publish(done, transient, len(tasks), time.perf_counter() - started)

    def _publish(
        self,
        done: list[tuple[str, TaskResult]],
        transient: list[tuple[Task, str]],
        count: int,
        elapsed: float,
    ) -> None:
        self.metrics.batch_size.labels(self.stage).observe(count)
        self.metrics.batch_latency.labels(self.stage).observe(elapsed)
        for _, result in done:
            self.metrics.tasks.labels(self.stage, "ok" if result.ok else "failed").inc()
        try:
            if done:
                self.queue.complete(self.stage, done)
            for task, error in transient:
                self.queue.record_failure(self.stage, task.entry_id, error)
        except redis.RedisError as exc:
            # The entries stay pending and are redone after the visibility timeout: idempotent.
            log.error("worker %s: could not publish/ack %d results: %s", self.consumer, len(done), exc)
        self.batches_done += 1

    def _run_isolating(
        self, tasks: list[Task]
    ) -> tuple[list[tuple[str, TaskResult]], list[tuple[Task, str]]]:
        """Run the batch; if it fails as a whole, run its tasks one by one. Returns (done, transient)."""
        try:
            results = self._call(tasks)
            return [(task.entry_id, result) for task, result in zip(tasks, results, strict=True)], []
        except Exception as exc:
            if len(tasks) == 1:
                return self._single_failure(tasks[0], exc)
            log.warning(
                "worker %s: batch of %d %s tasks failed (%s: %s); retrying one by one to isolate the bad input",
                self.consumer, len(tasks), self.stage, type(exc).__name__, exc,
            )  # fmt: skip
        done: list[tuple[str, TaskResult]] = []
        transient: list[tuple[Task, str]] = []
        for task in tasks:
            try:
                done.append((task.entry_id, self._call([task])[0]))
            except Exception as exc:
                one_done, one_transient = self._single_failure(task, exc)
                done += one_done
                transient += one_transient
        return done, transient

    def _call(self, tasks: list[Task]) -> list[TaskResult]:
        with task_spans(self.stage, tasks):  # one span per task, under its own job's trace
            results = self.handler(list(tasks))
        return self._checked(tasks, results)

    def _checked(self, tasks: list[Task], results: list[TaskResult]) -> list[TaskResult]:
        if not isinstance(results, Sequence) or len(results) != len(tasks):
            count = len(results) if isinstance(results, Sequence) else type(results).__name__
            raise HandlerContractError(f"handler returned {count} results for {len(tasks)} tasks")
        for task, result in zip(tasks, results, strict=True):
            if not isinstance(result, TaskResult) or result.task_id != task.task_id:
                raise HandlerContractError(
                    f"handler result {result!r} does not belong to task {task.task_id}"
                )
            if not result.worker:
                result.worker = self.consumer
        return list(results)

    def _single_failure(
        self, task: Task, exc: Exception
    ) -> tuple[list[tuple[str, TaskResult]], list[tuple[Task, str]]]:
        status = error_status(exc)
        if status is not None:
            code, message = status
            log.info("task %s failed permanently: %s %s", task.task_id, code, message)
            self.metrics.task_failures.labels(self.stage, "permanent").inc()
            result = TaskResult.failure(task, code, message)
            result.worker = self.consumer
            return [(task.entry_id, result)], []
        then = "retried" if task.deliveries < self.queue.max_deliveries else "dead-lettered"
        log.error(
            "task %s failed (delivery %d of %d); it will be %s",
            task.task_id, task.deliveries, self.queue.max_deliveries, then, exc_info=exc,
        )  # fmt: skip
        self.metrics.task_failures.labels(self.stage, "transient").inc()
        return [], [(task, f"{type(exc).__name__}: {exc}")]

    # ---- background duties ------------------------------------------------------------------

    def _renew_leases(self) -> None:
        """Renew the entries in hand every third of the visibility timeout, until the loop ends.

        A batch older than `max_lease_s` is not renewed any more (logged once): its handler is
        presumed hung, and its entries go to the next worker after the visibility timeout.
        """
        period = max(self.queue.visibility_timeout_s / 3.0, 0.05)
        given_up: list[str] = []
        while not self._finished.wait(period):
            with self._in_hand_lock:
                held = list(self._batches_in_hand.values())
            ids = [entry for _, batch_ids in held for entry in batch_ids]
            running_s = time.monotonic() - min((since for since, _ in held), default=time.monotonic())
            if not ids:
                continue
            if running_s > self.max_lease_s:
                if ids != given_up:
                    given_up = ids
                    self.leases_given_up += 1
                    self.metrics.task_failures.labels(self.stage, "lease_expired").inc(len(ids))
                    log.error(
                        "worker %s: a batch of %d %s tasks has run %.0f s, past the %.0f s lease limit; "
                        "no longer renewing it, so another worker takes it over (is the handler hung?)",
                        self.consumer, len(ids), self.stage, running_s, self.max_lease_s,
                    )  # fmt: skip
                continue
            try:
                self.queue.extend(self.stage, self.consumer, ids)
            except redis.RedisError as exc:
                log.warning("worker %s: could not renew %d leases: %s", self.consumer, len(ids), exc)

    def _refresh_depth(self) -> None:
        now = time.monotonic()
        if now >= self._next_depth_refresh:
            self._next_depth_refresh = now + DEPTH_REFRESH_S
            self.metrics.queue_depth.labels(self.stage).set(self.queue.backlog(self.stage))
