"""The one loop every batched stage handler runs: parse → run the batch → store, one result per task.

A stage is three functions:

* `parse(task) -> P`: read and check the task's payload and blobs (decode the image...);
* `run(inputs) -> [R | exception]`: the model call for a whole batch of parsed inputs (one entry
  per input, in order; an entry may be the exception that input raised);
* `store(task, parsed, result) -> output`: write the result's blobs and say what they are (a
  `contracts.StageOutput` or a plain dict).

`batched_handler` owns the rest, the same way for every stage: a `PermanentError`
(`services.common.errors`) fails its own task only; when the batch call itself raises one (a
missing checkpoint) every task of the batch fails with it; any other exception propagates, and
the `StageWorker` retries the tasks one by one to find the culprit, then redelivers and
dead-letters as usual. `group_by` splits a batch into model calls that must not be mixed (different
sizes, different jobs).

With a `store_pool` (a thread pool) the handler is a `PipelinedHandler`: `submit(tasks)` runs
parse and the model call in the caller's thread and hands the `store` calls (encoding, writing
blobs: CPU work) to the pool, returning a future of the results. The `StageWorker` then reads and
runs batch k+1 on the model (the GPU) while the pool encodes and writes batch k, and the stores of
one batch run in parallel. Calling the handler directly still returns the results, the same as
without a pool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from pydantic import BaseModel

from services.common.errors import PermanentError
from services.common.queue import Task, TaskResult

P = TypeVar("P")
R = TypeVar("R")

StageHandler = Callable[[list[Task]], list[TaskResult]]
Output = BaseModel | Mapping[str, Any]


def _as_dict(output: Output) -> dict[str, Any]:
    if isinstance(output, BaseModel):
        return output.model_dump(mode="json", exclude_none=False)
    return dict(output)


class PipelinedHandler:
    """A stage handler whose `store` calls run in a thread pool: `submit(tasks)` returns at once
    after the model call, with a future of the results; calling it waits for them."""

    def __init__(self, submit: Callable[[list[Task]], Future[list[TaskResult]]]) -> None:
        self.submit = submit

    def __call__(self, tasks: list[Task]) -> list[TaskResult]:
        return self.submit(tasks).result()


def _gather(futures: list[Future[None]], finish: Callable[[], list[TaskResult]]) -> Future[list[TaskResult]]:
    """A future that completes with `finish()` once every one of `futures` is done (or with the
    first exception one of them raised)."""
    combined: Future[list[TaskResult]] = Future()
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(_: Future[None]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        error = next((f.exception() for f in futures if f.exception() is not None), None)
        if error is not None:
            combined.set_exception(error)
            return
        try:
            combined.set_result(finish())
        except BaseException as exc:  # finish() is bookkeeping: its failure belongs to the caller
            combined.set_exception(exc)

    if not futures:
        one_done(Future())  # nothing to wait for
        return combined
    for future in futures:
        future.add_done_callback(one_done)
    return combined


def batched_handler(
    parse: Callable[[Task], P],
    run: Callable[[list[P]], Sequence[R | BaseException]],
    store: Callable[[Task, P, R], Output],
    *,
    group_by: Callable[[Task, P], Hashable] | None = None,
    store_pool: Executor | None = None,
) -> StageHandler:
    """A stage handler from its three parts (see the module docstring); a `PipelinedHandler` when
    `store_pool` is given."""

    def model_phase(
        tasks: list[Task],
    ) -> tuple[dict[int, TaskResult], list[tuple[int, P, R | BaseException]]]:
        """Parse and run every group: the failures so far, and what is left to store."""
        results: dict[int, TaskResult] = {}
        to_store: list[tuple[int, P, R | BaseException]] = []
        groups: dict[Hashable, list[tuple[int, P]]] = {}
        for position, task in enumerate(tasks):
            try:
                parsed = parse(task)
            except PermanentError as error:
                results[position] = TaskResult.failure(task, error.code, error.message)
                continue
            key = group_by(task, parsed) if group_by is not None else None
            groups.setdefault(key, []).append((position, parsed))

        for members in groups.values():
            try:
                outcomes = run([parsed for _, parsed in members])
            except PermanentError as error:  # e.g. the checkpoint is missing: the whole batch fails alike
                for position, _ in members:
                    results[position] = TaskResult.failure(tasks[position], error.code, error.message)
                continue
            if len(outcomes) != len(members):
                raise RuntimeError(f"a batch of {len(members)} inputs gave {len(outcomes)} results")
            for (position, parsed), outcome in zip(members, outcomes, strict=True):
                to_store.append((position, parsed, outcome))
        return results, to_store

    def store_one(task: Task, parsed: P, outcome: R | BaseException) -> TaskResult:
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            return TaskResult.success(task, _as_dict(store(task, parsed, outcome)))
        except PermanentError as error:
            return TaskResult.failure(task, error.code, error.message)

    def handle(tasks: list[Task]) -> list[TaskResult]:
        results, to_store = model_phase(tasks)
        for position, parsed, outcome in to_store:
            results[position] = store_one(tasks[position], parsed, outcome)
        return [results[position] for position in range(len(tasks))]

    if store_pool is None:
        return handle
    pool = store_pool

    def submit(tasks: list[Task]) -> Future[list[TaskResult]]:
        results, to_store = model_phase(tasks)

        def store_into(position: int, parsed: P, outcome: R | BaseException) -> None:
            results[position] = store_one(tasks[position], parsed, outcome)

        futures = [pool.submit(store_into, *entry) for entry in to_store]
        return _gather(futures, lambda: [results[position] for position in range(len(tasks))])

    return PipelinedHandler(submit)


def one_by_one(call: Callable[[P], R]) -> Callable[[list[P]], list[R | BaseException]]:
    """A batch function from a per-input one: each input's PermanentError becomes its own entry."""

    def run(inputs: list[P]) -> list[R | BaseException]:
        outcomes: list[R | BaseException] = []
        for parsed in inputs:
            try:
                outcomes.append(call(parsed))
            except PermanentError as error:
                outcomes.append(error)
        return outcomes

    return run
