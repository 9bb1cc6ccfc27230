"""The work queue on Redis Streams (the contract is in docs/architecture.md, "Queue contract").

One stream per stage (`sfhq:stage:<stage>`) read by the consumer group `workers`; one results
stream (`sfhq:results`) read by the group `coordinator`; one dead-letter stream (`sfhq:dead`).

Delivery is at-least-once. The invariants this module keeps:

* A stage stream holds only unfinished work: an entry is deleted when it is acked (XACK + XDEL),
  so `XLEN` *is* the backlog and enqueue can refuse work (`QueueFull`) once it reaches
  `stream_maxlen`. The check and the XADD run in one Lua script, so concurrent producers cannot
  overshoot the cap.
* An entry whose worker died stays pending; after `visibility_timeout_s` any live worker reclaims it
  (XAUTOCLAIM). A worker that is still busy extends its lease (`extend`) so slow batches are not
  stolen.
* An entry delivered more than `max_deliveries` times is a poison input: it moves to `sfhq:dead`
  with the reason, and a failed result (`ABORTED`) is published so the item is marked failed
  instead of blocking its stage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from services.common.errors import InvalidInput, ResourceExhausted
from services.common.stages import STAGES, check_stage

log = logging.getLogger(__name__)

__all__ = [
    "COORDINATOR_GROUP",
    "DEAD_STREAM",
    "RESULTS_STREAM",
    "STAGES",
    "WORKER_GROUP",
    "MalformedEntry",
    "QueueFull",
    "RedisQueue",
    "Task",
    "TaskResult",
    "connect_redis",
    "stage_stream",
]

RESULTS_STREAM = "sfhq:results"
DEAD_STREAM = "sfhq:dead"
# Job ids whose queued tasks workers skip (the gateway adds a job here when it is cancelled).
CANCELLED_JOBS = "sfhq:cancelled"
WORKER_GROUP = "workers"
COORDINATOR_GROUP = "coordinator"

# Longest a single XREADGROUP may block: the client's socket timeout must stay above it.
MAX_BLOCK_MS = 10_000
# Longest error text kept per entry for the dead-letter reason.
MAX_ERROR_CHARS = 2000


def stage_stream(stage: str) -> str:
    """Name of the Redis stream that holds the pending work of `stage`."""
    return f"sfhq:stage:{check_stage(stage)}"


def _errors_key(stream: str) -> str:
    # Last transient error per entry id, so the dead-letter reason can say what went wrong.
    return f"{stream}:errors"


class MalformedEntry(InvalidInput):
    """A stream entry lacks a field or holds invalid JSON (never written by this module)."""


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise MalformedEntry(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedEntry(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _dump_json(value: dict[str, Any], what: str) -> str:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a dict, got {type(value).__name__}")
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from None


def _required(fields: dict[str, str], name: str) -> str:
    try:
        return fields[name]
    except KeyError:
        raise MalformedEntry(f"entry has no {name!r} field (fields: {sorted(fields)})") from None


def _check_id_part(value: str, what: str) -> str:
    # The task id is "<job>/<item>/<stage>": a slash inside a part would make it ambiguous.
    if not isinstance(value, str) or not value or "/" in value:
        raise ValueError(f"{what} must be a non-empty string without '/', got {value!r}")
    return value


@dataclass(slots=True)
class Task:
    """One unit of work for one stage: an item of a job, with its stage payload."""

    task_id: str
    job_id: str
    item_id: str
    stage: str
    payload: dict[str, Any]
    entry_id: str = ""  # Redis stream entry id; set when read from the queue
    deliveries: int = 1  # how many times this entry has been handed to a worker, this one included
    trace: str = ""  # W3C traceparent of the job's trace (services.common.tracing); "" = none

    @classmethod
    def make(cls, job_id: str, item_id: str, stage: str, payload: dict[str, Any]) -> Task:
        _check_id_part(job_id, "job_id")
        _check_id_part(item_id, "item_id")
        check_stage(stage)
        _dump_json(payload, "payload")  # fail here, at the producer, not in a worker
        return cls(f"{job_id}/{item_id}/{stage}", job_id, item_id, stage, dict(payload))

    def to_fields(self) -> dict[str, str]:
        fields = {
            "task_id": self.task_id,
            "job_id": self.job_id,
            "item_id": self.item_id,
            "stage": self.stage,
            "payload": _dump_json(self.payload, "payload"),
        }
        if self.trace:
            fields["trace"] = self.trace[:256]
        return fields

    @classmethod
    def from_fields(cls, entry_id: str, fields: dict[str, str]) -> Task:
        return cls(
            task_id=_required(fields, "task_id"),
            job_id=_required(fields, "job_id"),
            item_id=_required(fields, "item_id"),
            stage=_required(fields, "stage"),
            payload=_json_object(_required(fields, "payload"), "payload"),
            entry_id=entry_id,
            trace=fields.get("trace", "")[:256],
        )


@dataclass
class TaskResult:
    """The outcome of one task, published on `sfhq:results` for the coordinator."""

    task_id: str
    job_id: str
    item_id: str
    stage: str
    ok: bool
    output: dict[str, Any] = field(default_factory=dict)
    error_code: str = ""  # gRPC status name, e.g. "INVALID_ARGUMENT"
    error_message: str = ""
    worker: str = ""  # consumer that produced it (diagnostics only)

    @classmethod
    def success(cls, task: Task, output: dict[str, Any]) -> TaskResult:
        return cls(task.task_id, task.job_id, task.item_id, task.stage, True, dict(output))

    @classmethod
    def failure(cls, task: Task, code: str, message: str) -> TaskResult:
        return cls(task.task_id, task.job_id, task.item_id, task.stage, False, {}, code, message)

    def to_fields(self) -> dict[str, str]:
        fields = {
            "task_id": self.task_id,
            "job_id": self.job_id,
            "item_id": self.item_id,
            "stage": self.stage,
            "ok": "1" if self.ok else "0",
            "output": _dump_json(self.output, "output"),
            "error_code": self.error_code,
            "error_message": self.error_message,
        }
        if self.worker:
            fields["worker"] = self.worker
        return fields

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> TaskResult:
        return cls(
            task_id=_required(fields, "task_id"),
            job_id=_required(fields, "job_id"),
            item_id=_required(fields, "item_id"),
            stage=_required(fields, "stage"),
            ok=_required(fields, "ok") == "1",
            output=_json_object(fields.get("output", "{}"), "output"),
            error_code=fields.get("error_code", ""),
            error_message=fields.get("error_message", ""),
            worker=fields.get("worker", ""),
        )


class QueueFull(ResourceExhausted):
    """A stage's backlog is at its cap; the caller should retry later (gRPC: RESOURCE_EXHAUSTED)."""

    def __init__(self, stage: str, backlog: int, limit: int, retry_after_s: float) -> None:
        self.stage = stage
        self.backlog = backlog
        self.limit = limit
        self.retry_after_s = retry_after_s
        super().__init__(
            f"the {stage!r} queue is full: {backlog} tasks waiting (limit {limit}); "
            f"retry in about {retry_after_s:g} s"
        )


# Check every touched stream's backlog, then add all entries, atomically.
# KEYS: the streams. ARGV[1]: cap. Then per entry: key index, n (number of field/value items), items...
_ENQUEUE_LUA = """
local cap = tonumber(ARGV[1])
local wanted = {}
local i = 2
while i <= #ARGV do
  local k = tonumber(ARGV[i])
  wanted[k] = (wanted[k] or 0) + 1
  i = i + 2 + tonumber(ARGV[i + 1])
end
for k, key in ipairs(KEYS) do
  local backlog = redis.call('XLEN', key)
  if backlog + (wanted[k] or 0) > cap then
    return {'full', key, backlog}
  end
end
local ids = {'ok'}
i = 2
while i <= #ARGV do
  local k = tonumber(ARGV[i])
  local n = tonumber(ARGV[i + 1])
  ids[#ids + 1] = redis.call('XADD', KEYS[k], '*', unpack(ARGV, i + 2, i + 1 + n))
  i = i + 2 + n
end
return ids
"""

# Reset the idle time of entries this consumer still owns (JUSTID: the delivery count is unchanged).
# An entry another worker has already reclaimed is left alone.
_EXTEND_LUA = """
local extended = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    extended = extended + 1
  end
end
return extended
"""


def connect_redis(url: str, *, socket_timeout: float = 30.0, client_name: str | None = None) -> redis.Redis:
    """A Redis client for the queue: str replies, health checks, keepalive.

    Password and ACL user come from the URL (`redis://user:pass@host:6379/0`); `rediss://`
    turns on TLS (CA file and verification via URL query: `?ssl_ca_certs=/ca.pem`).
    """
    if not url:
        raise ValueError("no Redis URL: set REDIS_URL (or SFHQ_REDIS_URL), e.g. redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_keepalive=True,
        socket_connect_timeout=5.0,
        socket_timeout=socket_timeout,  # above MAX_BLOCK_MS, so blocking reads never time out
        client_name=client_name,
    )
    return client


def _stream_entries(response: Any, stream: str) -> list[tuple[str, dict[str, str]]]:
    """Entries of `stream` from an XREADGROUP reply.

    RESP2 replies are `[[stream, entries]]`; RESP3 replies are `{stream: [entries]}`.
    """
    if not response:
        return []
    if isinstance(response, dict):
        return [entry for batch in response.get(stream) or [] for entry in batch]
    return [entry for name, entries in response if name == stream for entry in entries]


class RedisQueue:
    """Stage streams, the results stream and dead letters, on one Redis client."""

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        stream_maxlen: int = 10_000,
        visibility_timeout_s: float = 300.0,
        max_deliveries: int = 3,
        retry_after_s: float = 5.0,
        dead_maxlen: int = 100_000,
        claim_interval_s: float | None = None,
    ) -> None:
        if stream_maxlen < 1 or max_deliveries < 1 or visibility_timeout_s <= 0:
            raise ValueError("stream_maxlen and max_deliveries must be >= 1 and visibility_timeout_s > 0")
        self.redis = redis_client
        self.stream_maxlen = stream_maxlen
        self.visibility_timeout_s = visibility_timeout_s
        self.max_deliveries = max_deliveries
        self.retry_after_s = retry_after_s
        self.dead_maxlen = dead_maxlen
        self._enqueue_script = redis_client.register_script(_ENQUEUE_LUA)
        self._extend_script = redis_client.register_script(_EXTEND_LUA)
        # XAUTOCLAIM cursor per stream: a scan resumes where the previous one stopped.
        self._claim_cursor: dict[str, str] = {}
        # Nothing can go stale faster than the visibility timeout, so scanning for stale entries on
        # every read would only add a round trip; scan at most this often (per stream).
        self.claim_interval_s = (
            min(visibility_timeout_s / 4, 5.0) if claim_interval_s is None else claim_interval_s
        )
        self._claim_due: dict[str, float] = {}

    @classmethod
    def from_settings(cls, settings: Any, client: redis.Redis | None = None) -> RedisQueue:
        """Build the queue from a `Settings` (`redis_url`, caps and timeouts)."""
        if client is None:
            client = connect_redis(settings.redis_url or "")
        return cls(
            client,
            stream_maxlen=settings.stream_maxlen,
            visibility_timeout_s=settings.visibility_timeout_s,
            max_deliveries=settings.max_deliveries,
        )

    # ---- set-up -----------------------------------------------------------------------------

    def ensure_groups(self) -> None:
        """Create every stream and consumer group that is missing (idempotent)."""
        groups = [(stage_stream(stage), WORKER_GROUP) for stage in STAGES] + [
            (RESULTS_STREAM, COORDINATOR_GROUP)
        ]
        for stream, group in groups:
            try:
                # id "0": entries added before the group existed are still delivered
                self.redis.xgroup_create(stream, group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _with_groups(self, call: Any) -> Any:
        """Run `call`; if a group is missing (fresh or flushed Redis), create the groups and retry once."""
        try:
            return call()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_groups()
            return call()

    # ---- producing --------------------------------------------------------------------------

    def enqueue(self, task: Task) -> str:
        """Append `task` to its stage stream; raises `QueueFull` when the stage is at its cap."""
        return self.enqueue_many([task])[0]

    def enqueue_many(self, tasks: Sequence[Task]) -> list[str]:
        """Append several tasks atomically: all are added, or none (`QueueFull`) if a stage lacks room."""
        if not tasks:
            return []
        keys: list[str] = []
        args: list[Any] = [self.stream_maxlen]
        for task in tasks:
            stream = stage_stream(task.stage)
            if stream not in keys:
                keys.append(stream)
            items = [part for pair in task.to_fields().items() for part in pair]
            args += [keys.index(stream) + 1, len(items), *items]
        reply = self._enqueue_script(keys=keys, args=args)
        if reply[0] == "full":
            stage = str(reply[1]).rsplit(":", 1)[-1]
            raise QueueFull(stage, int(reply[2]), self.stream_maxlen, self.retry_after_s)
        return list(reply[1:])

    def backlog(self, stage: str) -> int:
        """Tasks of `stage` not yet finished (waiting or in progress)."""
        return int(self.redis.xlen(stage_stream(stage)))

    def has_room(self, stage: str, n: int = 1) -> bool:
        return self.backlog(stage) + n <= self.stream_maxlen

    # ---- consuming --------------------------------------------------------------------------

    def read_batch(self, stage: str, consumer: str, count: int, block_ms: int) -> list[Task]:
        """Up to `count` tasks for `consumer`: stale entries first (reclaimed), then new ones.

        Blocks up to `block_ms` only when nothing was reclaimed. Entries delivered more than
        `max_deliveries` times are dead-lettered here and not returned.
        """
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        stream = stage_stream(stage)
        tasks = self._reclaim(stream, WORKER_GROUP, consumer, count)
        remaining = count - len(tasks)
        if remaining > 0:
            block = min(block_ms, MAX_BLOCK_MS) if (block_ms > 0 and not tasks) else None
            response = self._with_groups(
                lambda: self.redis.xreadgroup(
                    WORKER_GROUP, consumer, {stream: ">"}, count=remaining, block=block
                )
            )
            for entry_id, fields in _stream_entries(response, stream):
                task = self._parse_task(stream, entry_id, fields, deliveries=1)
                if task is not None:
                    tasks.append(task)
        return tasks

    def _reclaim(self, stream: str, group: str, consumer: str, count: int) -> list[Task]:
        """Claim entries idle longer than the visibility timeout; dead-letter the over-delivered."""
        claimed = self._autoclaim(stream, group, consumer, count)
        if not claimed:
            return []
        if any(fields is None for _, fields in claimed):
            self._drop_deleted_pending(stream, group, consumer)
        live = [(entry_id, fields) for entry_id, fields in claimed if fields is not None]
        counts = self._delivery_counts(stream, group, [entry_id for entry_id, _ in live])
        tasks: list[Task] = []
        for entry_id, fields in live:
            deliveries = counts.get(entry_id, 1)
            if deliveries > self.max_deliveries:
                self._dead_letter(stream, group, entry_id, fields, deliveries)
                continue
            task = self._parse_task(stream, entry_id, fields, deliveries)
            if task is not None:
                tasks.append(task)
        return tasks

    def _autoclaim(
        self, stream: str, group: str, consumer: str, count: int
    ) -> list[tuple[str, dict[str, str] | None]]:
        """XAUTOCLAIM up to `count` entries idle past the visibility timeout (throttled scan)."""
        now = time.monotonic()
        if now < self._claim_due.get(stream, 0.0):
            return []
        idle_ms = int(self.visibility_timeout_s * 1000)
        start = self._claim_cursor.get(stream, "0-0")
        reply = self._with_groups(
            lambda: self.redis.xautoclaim(stream, group, consumer, idle_ms, start_id=start, count=count)
        )
        cursor = reply[0] or "0-0"
        claimed = list(reply[1])
        self._claim_cursor[stream] = cursor
        # A scan cut short (more of the PEL to look at, or a full batch claimed) continues at once.
        more = cursor != "0-0" or len(claimed) >= count
        self._claim_due[stream] = now if more else now + self.claim_interval_s
        return claimed

    def _drop_deleted_pending(self, stream: str, group: str, consumer: str) -> None:
        """Ack pending entries that were deleted from the stream by someone else.

        Our own ack deletes after XACK, so this only happens when a tool XDELs pending work.
        Redis 6.2's XAUTOCLAIM then returns such entries with a nil id (7.x drops them itself).
        """
        rows = self.redis.xpending_range(stream, group, min="-", max="+", count=1000, consumername=consumer)
        pipe = self.redis.pipeline(transaction=False)
        for row in rows:
            pipe.xrange(stream, min=row["message_id"], max=row["message_id"], count=1)
        missing = [row["message_id"] for row, found in zip(rows, pipe.execute(), strict=True) if not found]
        if missing:
            self.redis.xack(stream, group, *missing)

    def _delivery_counts(self, stream: str, group: str, entry_ids: list[str]) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)
        counts: dict[str, int] = {}
        for rows in pipe.execute():
            for row in rows:
                counts[row["message_id"]] = int(row["times_delivered"])
        return counts

    def _parse_task(self, stream: str, entry_id: str, fields: dict[str, str], deliveries: int) -> Task | None:
        """A Task, or None after dead-lettering an entry nobody could ever process."""
        try:
            task = Task.from_fields(entry_id, fields)
        except MalformedEntry as exc:
            log.error("dead-lettering malformed entry %s on %s: %s", entry_id, stream, exc)
            self._dead_letter(
                stream, WORKER_GROUP, entry_id, fields, deliveries, reason=f"malformed entry: {exc}"
            )
            return None
        task.deliveries = deliveries
        return task

    def _dead_letter(
        self,
        stream: str,
        group: str,
        entry_id: str,
        fields: dict[str, str],
        deliveries: int,
        reason: str | None = None,
    ) -> None:
        """Move an entry to `sfhq:dead` (and, for a task, publish its failed result) atomically."""
        errors_key = _errors_key(stream)
        if reason is None:
            last_error = self.redis.hget(errors_key, entry_id) or (
                "none recorded (the worker probably crashed or ran past the visibility timeout)"
            )
            reason = f"delivered {deliveries} times; last error: {last_error}"
        is_result = stream == RESULTS_STREAM
        dead_fields = {
            **fields,
            "kind": "result" if is_result else "task",
            "source_stream": stream,
            "source_entry_id": entry_id,
            "deliveries": str(deliveries),
            "reason": reason,
            "dead_at": f"{time.time():.3f}",
        }
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(DEAD_STREAM, dead_fields, maxlen=self.dead_maxlen, approximate=True)
        # A failed result lets the coordinator mark the item failed. Not for a dead *result*: that
        # would loop, and not when the entry lacks the ids a result needs.
        if not is_result and all(name in fields for name in ("task_id", "job_id", "item_id", "stage")):
            failed = TaskResult(
                fields["task_id"],
                fields["job_id"],
                fields["item_id"],
                fields["stage"],
                False,
                {},
                "ABORTED",
                reason,
            )
            pipe.xadd(RESULTS_STREAM, failed.to_fields())
        pipe.xack(stream, group, entry_id)
        pipe.xdel(stream, entry_id)
        pipe.hdel(errors_key, entry_id)
        pipe.execute()
        log.warning("dead-lettered %s from %s: %s", entry_id, stream, reason)

    def extend(self, stage: str, consumer: str, entry_ids: Sequence[str]) -> int:
        """Renew the lease of entries `consumer` still holds, so a slow batch is not reclaimed."""
        if not entry_ids:
            return 0
        stream = stage_stream(stage)
        return int(self._extend_script(keys=[stream], args=[WORKER_GROUP, consumer, *entry_ids]))

    def record_failure(self, stage: str, entry_id: str, error: str) -> None:
        """Remember the last transient error of an entry; it becomes the dead-letter reason."""
        self.redis.hset(_errors_key(stage_stream(stage)), entry_id, error[:MAX_ERROR_CHARS])

    def ack(self, stage: str, entry_ids: Iterable[str]) -> int:
        """Finish entries: XACK + XDEL, so they no longer count as backlog. Returns how many were pending."""
        ids = list(entry_ids)
        if not ids:
            return 0
        stream = stage_stream(stage)
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(stream, WORKER_GROUP, *ids)
        pipe.xdel(stream, *ids)
        pipe.hdel(_errors_key(stream), *ids)
        acked, _, _ = pipe.execute()
        return int(acked)

    def complete(self, stage: str, done: Sequence[tuple[str, TaskResult]]) -> list[str]:
        """Publish the results of `(entry_id, result)` pairs and ack their entries in one transaction.

        Equivalent to `publish_result` for each then `ack`, minus the window in which a crash
        would publish a result twice.
        """
        if not done:
            return []
        stream = stage_stream(stage)
        ids = [entry_id for entry_id, _ in done]
        pipe = self.redis.pipeline(transaction=True)
        for _, result in done:
            pipe.xadd(RESULTS_STREAM, result.to_fields())
        pipe.xack(stream, WORKER_GROUP, *ids)
        pipe.xdel(stream, *ids)
        pipe.hdel(_errors_key(stream), *ids)
        replies = pipe.execute()
        return list(replies[: len(done)])

    # ---- results ----------------------------------------------------------------------------

    def publish_result(self, result: TaskResult) -> str:
        return self.redis.xadd(RESULTS_STREAM, result.to_fields())

    def read_results(self, consumer: str, count: int, block_ms: int) -> list[tuple[str, TaskResult]]:
        """Up to `count` results for the coordinator `consumer`, stale ones (a dead coordinator's) first."""
        out: list[tuple[str, TaskResult]] = []
        reply = self._autoclaim(RESULTS_STREAM, COORDINATOR_GROUP, consumer, count)
        claimed = [(entry_id, fields) for entry_id, fields in reply if fields is not None]
        if len(claimed) < len(reply):
            self._drop_deleted_pending(RESULTS_STREAM, COORDINATOR_GROUP, consumer)
        counts = self._delivery_counts(
            RESULTS_STREAM, COORDINATOR_GROUP, [entry_id for entry_id, _ in claimed]
        )
        fresh: list[tuple[str, dict[str, str]]] = []
        for entry_id, fields in claimed:
            deliveries = counts.get(entry_id, 1)
            if deliveries > self.max_deliveries:
                self._dead_letter(RESULTS_STREAM, COORDINATOR_GROUP, entry_id, fields, deliveries)
            else:
                fresh.append((entry_id, fields))
        remaining = count - len(fresh)
        if remaining > 0:
            block = min(block_ms, MAX_BLOCK_MS) if (block_ms > 0 and not fresh) else None
            response = self._with_groups(
                lambda: self.redis.xreadgroup(
                    COORDINATOR_GROUP, consumer, {RESULTS_STREAM: ">"}, count=remaining, block=block
                )
            )
            fresh += _stream_entries(response, RESULTS_STREAM)
        for entry_id, fields in fresh:
            try:
                out.append((entry_id, TaskResult.from_fields(fields)))
            except MalformedEntry as exc:
                self._dead_letter(
                    RESULTS_STREAM, COORDINATOR_GROUP, entry_id, fields, 1, reason=f"malformed result: {exc}"
                )
        return out

    def ack_results(self, entry_ids: Iterable[str]) -> int:
        ids = list(entry_ids)
        if not ids:
            return 0
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(RESULTS_STREAM, COORDINATOR_GROUP, *ids)
        pipe.xdel(RESULTS_STREAM, *ids)
        acked, _ = pipe.execute()
        return int(acked)

    # ---- inspection -------------------------------------------------------------------------

    def dead_letters(self, count: int = 100) -> list[dict[str, Any]]:
        """The oldest `count` dead letters, each a dict of its fields plus `entry_id`; payload decoded."""
        letters: list[dict[str, Any]] = []
        for entry_id, fields in self.redis.xrange(DEAD_STREAM, count=count):
            letter: dict[str, Any] = {"entry_id": entry_id, **fields}
            if "payload" in fields:
                # a malformed payload stays raw text: exactly what one wants to see here
                with contextlib.suppress(json.JSONDecodeError):
                    letter["payload"] = json.loads(fields["payload"])
            if "deliveries" in fields:
                letter["deliveries"] = int(fields["deliveries"])
            letters.append(letter)
        return letters

    def mark_cancelled(self, job_id: str) -> None:
        self.redis.sadd(CANCELLED_JOBS, job_id)

    def cancelled_among(self, job_ids: Iterable[str]) -> set[str]:
        """Which of these jobs were cancelled (one round trip)."""
        ids = sorted(set(job_ids))
        if not ids:
            return set()
        return {
            job_id for job_id, hit in zip(ids, self.redis.smismember(CANCELLED_JOBS, ids), strict=True) if hit
        }

    def stats(self) -> dict[str, Any]:
        """Backlog and pending counts per stage, the same for results, and the dead-letter count."""
        streams = [(stage, stage_stream(stage), WORKER_GROUP) for stage in STAGES]
        streams.append(("results", RESULTS_STREAM, COORDINATOR_GROUP))
        pipe = self.redis.pipeline(transaction=False)
        for _, stream, group in streams:
            pipe.xlen(stream)
            pipe.xpending(stream, group)
        pipe.xlen(DEAD_STREAM)
        replies = pipe.execute(raise_on_error=False)
        out: dict[str, Any] = {"stages": {}}
        for index, (name, _, _) in enumerate(streams):
            length, pending = replies[2 * index], replies[2 * index + 1]
            entry = {
                "backlog": int(length) if isinstance(length, int) else 0,
                # a missing group (nothing ever enqueued) reads as an error: nothing pending then
                "pending": int(pending["pending"]) if isinstance(pending, dict) else 0,
            }
            if name == "results":
                out["results"] = entry
            else:
                out["stages"][name] = entry
        out["dead"] = int(replies[-1]) if isinstance(replies[-1], int) else 0
        return out
