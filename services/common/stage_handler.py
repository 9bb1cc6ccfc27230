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
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
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


def batched_handler(
    parse: Callable[[Task], P],
    run: Callable[[list[P]], Sequence[R | BaseException]],
    store: Callable[[Task, P, R], Output],
    *,
    group_by: Callable[[Task, P], Hashable] | None = None,
) -> StageHandler:
    """A stage handler from its three parts (see the module docstring)."""

    def handle(tasks: list[Task]) -> list[TaskResult]:
        results: dict[int, TaskResult] = {}
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
                task = tasks[position]
                try:
                    if isinstance(outcome, BaseException):
                        raise outcome
                    results[position] = TaskResult.success(task, _as_dict(store(task, parsed, outcome)))
                except PermanentError as error:
                    results[position] = TaskResult.failure(task, error.code, error.message)
        return [results[position] for position in range(len(tasks))]

    return handle


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
