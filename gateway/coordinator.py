"""The coordinator: consumes the results stream and advances each item to its next stage.

Each result is applied exactly once in effect: one Lua script marks the task id as applied,
writes the item records, bumps the counters, enqueues the next tasks, appends the progress
events and acks the result entry — all or nothing. A crash before the script leaves the result
pending, and it is reclaimed after the visibility timeout; a duplicate delivery finds the task
id already applied and is only acked.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis

from gateway import jobs
from gateway.datasets import DatasetBook
from gateway.jobs import ResolvedSpec
from gateway.pipeline import Plan, advance, dedup_verdicts, written_row
from gateway.search_client import SearchClient
from services.common.blobs import BlobStore
from services.common.contracts import ItemState
from services.common.dataset import FOLDERS, DatasetWriter
from services.common.errors import PermanentError
from services.common.queue import (
    CANCELLED_JOBS,
    COORDINATOR_GROUP,
    RESULTS_STREAM,
    RedisQueue,
    TaskResult,
    stage_stream,
)

log = logging.getLogger("sfhq.coordinator")
EVENTS_MAXLEN = 200_000

FEED_CHUNK = 1000  # held tasks moved per job per coordinator round

# KEYS: applied set, job hash, items hash, events stream, results stream, jobs-to-finalize set,
#       the job's feed list, the feeding hash
# ARGV: task id ("" = not a result, e.g. job creation), result entry id, group, plan JSON, now (ISO), job id
APPLY_LUA = """
if ARGV[1] ~= '' then
  if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
    if ARGV[2] ~= '' then
      redis.call('XACK', KEYS[5], ARGV[3], ARGV[2])
      redis.call('XDEL', KEYS[5], ARGV[2])
    end
    return 0
  end
end
local plan = cjson.decode(ARGV[4])
for id, rec in pairs(plan.items) do redis.call('HSET', KEYS[3], id, rec) end
for fieldname, n in pairs(plan.counters) do redis.call('HINCRBY', KEYS[2], fieldname, n) end
for _, t in ipairs(plan.tasks) do redis.call('XADD', unpack(t)) end
for _, h in ipairs(plan.held) do redis.call('RPUSH', KEYS[7], h) end
if #plan.held > 0 then redis.call('HSET', KEYS[8], ARGV[6], plan.held_stage) end
for _, e in ipairs(plan.events) do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', plan.events_maxlen, '*', unpack(e))
end
redis.call('HSET', KEYS[2], 'updated_at', ARGV[5])
-- ack AND delete: an applied result is history, and the results stream would otherwise grow forever
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[5], ARGV[3], ARGV[2])
  redis.call('XDEL', KEYS[5], ARGV[2])
end
local state = redis.call('HGET', KEYS[2], 'state')
local in_flight = tonumber(redis.call('HGET', KEYS[2], 'in_flight') or '0')
if in_flight <= 0 and (state == 'RUNNING' or state == 'CANCELLING') then
  -- a cancelled job, too, writes its manifest for what it wrote before it ends CANCELLED
  if state == 'CANCELLING' then redis.call('HSET', KEYS[2], 'cancel_requested', '1') end
  redis.call('HSET', KEYS[2], 'state', 'FINALIZING')
  redis.call('SADD', KEYS[6], ARGV[6])
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', plan.events_maxlen, '*', 'kind', 'state', 'state', 'FINALIZING',
             'time_ms', plan.time_ms)
  return 2
end
return 1
"""


# Moves up to ARGV[1] held tasks of a job (KEYS[1]) into their stage, atomically: none is lost or
# doubled if the gateway dies; returns {moved, left}. KEYS[2] is the FEEDING hash, ARGV[2] the job.
FEED_LUA = """
local n = tonumber(ARGV[1])
local entries = redis.call('LRANGE', KEYS[1], 0, n - 1)
for _, e in ipairs(entries) do redis.call('XADD', unpack(cjson.decode(e))) end
redis.call('LTRIM', KEYS[1], #entries, -1)
local left = redis.call('LLEN', KEYS[1])
if left == 0 then redis.call('HDEL', KEYS[2], ARGV[2]) end
return {#entries, left}
"""


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _xadd_args(task: Any) -> list[str]:  # task: services.common.queue.Task
    """The XADD arguments that put `task` into its stage stream (held tasks keep them as JSON)."""
    return [stage_stream(task.stage), "*", *[x for kv in task.to_fields().items() for x in kv]]


def event_fields(event: dict[str, Any], time_ms: int) -> list[str]:
    flat = {k: ("" if v is None else str(v)) for k, v in event.items()}
    flat["time_ms"] = str(time_ms)
    return [x for kv in flat.items() for x in kv]


class JobStore:
    """Reads and atomically updates job state in Redis. Shared by the gateway's API and the coordinator."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._apply = client.register_script(APPLY_LUA)
        self._feed = client.register_script(FEED_LUA)
        self._first_epoch_ms: int | None = None  # the data set this process first saw (see state_lost)

    def apply(self, job_id: str, plan: Plan, *, task_id: str = "", result_entry: str = "") -> int:
        """Applies a plan atomically; returns 0 (already applied), 1 (applied) or 2 (job has drained)."""
        time_ms = int(time.time() * 1000)
        payload = {
            "items": {item_id: json.dumps(rec, sort_keys=True) for item_id, rec in plan.items.items()},
            "counters": plan.counters,
            "tasks": [_xadd_args(t) for t in plan.tasks],
            "events": [event_fields(e, time_ms) for e in plan.events],
            "held": [json.dumps(_xadd_args(t)) for t in plan.held],
            "held_stage": plan.held[0].stage if plan.held else "",
            "events_maxlen": EVENTS_MAXLEN,
            "time_ms": time_ms,
        }
        # cjson turns an empty Lua table into {} but we need [] for ipairs; both iterate fine as empty.
        keys = [
            jobs.applied_key(job_id),
            jobs.job_key(job_id),
            jobs.items_key(job_id),
            jobs.events_key(job_id),
            RESULTS_STREAM,
            jobs.TO_FINALIZE,
            jobs.feed_key(job_id),
            jobs.FEEDING,
        ]
        args = [task_id, result_entry, COORDINATOR_GROUP, json.dumps(payload), now_iso(), job_id]
        return int(self._apply(keys=keys, args=args))

    def feed(self, job_id: str, count: int) -> tuple[int, int]:
        """Move up to `count` held first tasks of a job into their stage: (moved, still held)."""
        moved, left = self._feed(keys=[jobs.feed_key(job_id), jobs.FEEDING], args=[count, job_id])
        return int(moved), int(left)

    def job(self, job_id: str) -> dict[str, str]:
        return self.redis.hgetall(jobs.job_key(job_id))

    def epoch_ms(self) -> int:
        """When this Redis data set began, as far as gateways know (ms since 1970).

        The first gateway call on an empty Redis records the time; a Redis restarted without
        persistence has lost the record with everything else, so the next call records a new one.
        """
        now_ms = int(time.time() * 1000)
        self.redis.set(jobs.EPOCH_KEY, now_ms, nx=True)
        epoch = int(self.redis.get(jobs.EPOCH_KEY) or now_ms)
        if self._first_epoch_ms is None:
            self._first_epoch_ms = epoch
        return epoch

    def predates_data(self, job_id: str) -> bool:
        """True when a job id says it was created before the current Redis data set began."""
        created_ms = jobs.job_created_ms(job_id)
        # job ids have second resolution: only a whole second before the epoch is surely older
        return created_ms is not None and created_ms + 1000 <= self.epoch_ms()

    def state_lost(self, job_id: str) -> bool:
        """True when a job missing from Redis surely existed: Redis lost its data while this process
        watched (the epoch changed) and the job is older than the new data set. A made-up id of an
        old-looking job is not "lost" unless such a loss happened."""
        lost_while_watching = self._first_epoch_ms is not None and self.epoch_ms() != self._first_epoch_ms
        return lost_while_watching and self.predates_data(job_id)

    def forget(self, job_id: str, owner: str) -> None:
        """Delete every Redis key of a job (state, items, events, applied results, curate state)."""
        keys = [
            jobs.job_key(job_id),
            jobs.items_key(job_id),
            jobs.events_key(job_id),
            jobs.applied_key(job_id),
            jobs.feed_key(job_id),
        ]
        keys += list(self.redis.scan_iter(match=f"sfhq:curate:{job_id}*", count=1000))
        with self.redis.pipeline() as pipe:
            pipe.delete(*keys)
            pipe.zrem(jobs.JOBS_INDEX, job_id)
            pipe.zrem(jobs.owner_jobs_key(owner), job_id)
            pipe.srem(CANCELLED_JOBS, job_id)
            pipe.hdel(jobs.FEEDING, job_id)
            pipe.execute()

    def item(self, job_id: str, item_id: str) -> dict[str, Any] | None:
        raw = self.redis.hget(jobs.items_key(job_id), item_id)
        return json.loads(raw) if raw else None

    def items(self, job_id: str) -> list[dict[str, Any]]:
        out = []
        for _, raw in self.redis.hscan_iter(jobs.items_key(job_id), count=1000):
            out.append(json.loads(raw))
        return sorted(out, key=lambda r: r["id"])

    def set_state(
        self, job_id: str, state: str, *, error: str = "", only_from: set[str] | None = None
    ) -> bool:
        """Moves a job to `state` (optionally only from some states) and records an event."""
        key = jobs.job_key(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    current: str | None = pipe.hget(key, "state")  # immediate mode (watched)
                    if current is None or (only_from is not None and current not in only_from):
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    fields = {"state": state, "updated_at": now_iso(), "error": error}
                    if state in jobs.TERMINAL:
                        fields["finished_s"] = str(int(time.time()))  # the retention clock starts
                    pipe.hset(key, mapping=fields)
                    pipe.xadd(
                        jobs.events_key(job_id),
                        {
                            "kind": "state",
                            "state": state,
                            "message": error,
                            "time_ms": str(int(time.time() * 1000)),
                        },
                        maxlen=EVENTS_MAXLEN,
                        approximate=True,
                    )
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue


class Coordinator:
    """A thread that applies task results to job state and finalizes drained jobs."""

    def __init__(
        self,
        queue: RedisQueue,
        store: JobStore,
        blobs: BlobStore,
        *,
        consumer: str,
        batch: int = 64,
        block_ms: int = 500,
        provenance: dict[str, Any] | None = None,
        retention_s: float = 30 * 24 * 3600,
        sweep_every_s: float = 60.0,
        search: SearchClient | None = None,
    ) -> None:
        self.queue = queue
        self.store = store
        self.blobs = blobs
        self.consumer = consumer
        self.batch = batch
        self.block_ms = block_ms
        self.provenance = provenance or {}
        self.retention_s = retention_s
        self.sweep_every_s = sweep_every_s
        self.search = search
        self._next_sweep = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="coordinator", daemon=True)
        self._specs: dict[str, ResolvedSpec] = {}
        self.datasets = DatasetBook(store.redis)
        self._orphans: set[str] = set()  # jobs whose results were dropped (logged once each)

    def start(self) -> None:
        self.finalize_pending()  # a gateway that died mid-finalization finishes the job on restart
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _spec(self, job_id: str, job: dict[str, str]) -> ResolvedSpec:
        if job_id not in self._specs:
            self._specs[job_id] = ResolvedSpec.from_json(job["resolved"])
        return self._specs[job_id]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                entries = self.queue.read_results(self.consumer, self.batch, self.block_ms)
                for entry_id, result in entries:
                    self.handle(entry_id, result)
                self.feed_jobs()
                self.finalize_pending()  # jobs drained by a cancel or by another gateway's apply
                if time.monotonic() >= self._next_sweep:
                    self._next_sweep = time.monotonic() + self.sweep_every_s
                    self.expire_finished_jobs()
            except redis.ConnectionError as exc:
                log.warning("redis unavailable (%s); retrying", exc)
                self._stop.wait(1.0)
            except Exception:  # keep coordinating; the entry stays pending and is retried
                log.exception("coordinator loop error")
                self._stop.wait(0.5)

    def handle(self, entry_id: str, result: TaskResult) -> None:
        job = self.store.job(result.job_id)
        if not job or "resolved" not in job:
            self._drop_orphan(entry_id, result)
            return
        item = self.store.item(result.job_id, result.item_id)
        if item is None:
            log.error("result %s for unknown item; dropping", result.task_id)
            self.queue.ack_results([entry_id])
            return
        cancelling = (
            job.get("state") in (jobs.CANCELLING, jobs.CANCELLED) or job.get("cancel_requested") == "1"
        )
        plan = advance(self._spec(result.job_id, job), result.job_id, item, result, cancelling=cancelling)
        for task in plan.tasks:  # the next stages stay in the job's trace
            task.trace = job.get("trace", "")
        outcome = self.store.apply(result.job_id, plan, task_id=result.task_id, result_entry=entry_id)
        if outcome == 2:
            self.finalize(result.job_id)

    def feed_jobs(self) -> int:
        """Top up the stages that big jobs wait for: each to half its cap (the other half is room
        for smaller jobs), a chunk at a time; returns how many tasks moved."""
        moved = 0
        for job_id, stage in self.store.redis.hgetall(jobs.FEEDING).items():
            room = self.queue.stream_maxlen // 2 - self.queue.backlog(stage)
            if room > 0:
                moved += self.store.feed(job_id, min(room, FEED_CHUNK))[0]
        return moved

    def expire_finished_jobs(self, now: float | None = None) -> list[str]:
        """Forget jobs that finished more than `retention_s` ago: their Redis state and intermediate
        blobs go (their datasets stay). Idempotent, so several gateways may sweep at once."""
        now = time.time() if now is None else now
        cutoff = now - self.retention_s
        expired = []
        # A job cannot finish before it was created: only jobs created before the cutoff qualify.
        for job_id in self.store.redis.zrangebyscore(jobs.JOBS_INDEX, "-inf", cutoff, start=0, num=1000):
            job = self.store.job(job_id)
            if job and (
                job.get("state") not in jobs.TERMINAL or float(job.get("finished_s") or now) > cutoff
            ):
                continue
            self.store.forget(job_id, job.get("owner", "") if job else "")
            self.blobs.delete_folder(f"jobs/{job_id}")
            expired.append(job_id)
        if expired:
            log.info(
                "expired %d finished jobs older than %.0f s (first: %s)",
                len(expired),
                self.retention_s,
                expired[0],
            )
        return expired

    def _drop_orphan(self, entry_id: str, result: TaskResult) -> None:
        """Ack a result whose job is gone; say why once per job (a lost Redis can bring thousands)."""
        if result.job_id not in self._orphans:
            if len(self._orphans) > 10_000:
                self._orphans.clear()
            self._orphans.add(result.job_id)
            why = (
                "its state was lost: Redis restarted without persistence (enable appendonly) or was flushed"
                if self.store.state_lost(result.job_id)
                else "no such job"
            )
            log.error("dropping results for job %s (first: %s): %s", result.job_id, result.task_id, why)
        self.queue.ack_results([entry_id])

    def finalize_pending(self) -> None:
        """Finalize every drained job (the set the apply script fills; a job stays in it until done)."""
        for job_id in sorted(self.store.redis.smembers(jobs.TO_FINALIZE)):
            self.finalize(job_id)

    def finalize(self, job_id: str) -> None:
        """Writes the job's part of its dataset's manifest, merges every part into manifest.jsonl /
        .parquet and dataset_info.json, then ends the job (SUCCEEDED, FAILED or, after a cancel,
        CANCELLED). Idempotent: a gateway killed half-way does it again on restart."""
        job = self.store.job(job_id)
        if job.get("state") != jobs.FINALIZING:
            self.store.redis.srem(jobs.TO_FINALIZE, job_id)
            return
        spec = self._spec(job_id, job)
        if int(job.get("in_flight") or 0) > 0:  # work was added after the drain (a crash mid-pass)
            self.store.set_state(job_id, jobs.RUNNING, only_from={jobs.FINALIZING})
            self.store.redis.srem(jobs.TO_FINALIZE, job_id)
            return
        items = self.store.items(job_id)
        cancelled = job.get("cancel_requested") == "1"
        curated = [item for item in items if item["state"] == ItemState.CURATED]
        if curated and not cancelled:
            self._dedup_pass(job_id, spec, curated)
            return
        writer = DatasetWriter(spec.dataset_uri)
        rows, failures = self._rows(spec, job_id, items), self._failures(items)
        counts = {name: int(job.get(name, 0)) for name in jobs.COUNTERS}
        final_state = jobs.CANCELLED if cancelled else jobs.SUCCEEDED
        error = ""
        if not rows and counts["failed"] > 0 and not cancelled:
            final_state = jobs.FAILED
            error = f"all {counts['failed']} items failed; first: {failures[0].get('message', '') if failures else ''}"
        try:
            removed = self._remove_unlisted(writer, items)
            info = {
                "job_id": job_id,
                "owner": job.get("owner", ""),
                "name": job.get("name", ""),
                "state": final_state,
                "created_at": job.get("created_at", ""),
                "finished_at": now_iso(),
                "spec": json.loads(job["spec"]),
                "resolved": json.loads(job["resolved"]),
                "counts": counts,
                "written": len(rows),
                "failures": failures[:1000],
                "failures_total": len(failures),
                "removed_unlisted": removed,
                "provenance": self.provenance | self._checkpoints(rows),
                # failed items count too: a job whose every image failed was still made by random models
                "random_weights": any(_is_random(row["provenance"]) for row in rows)
                or any(
                    _is_random(out.get("provenance", {}))
                    for item in items
                    for out in item["outputs"].values()
                ),
            }
            writer.write_job_part(job_id, rows, info)
            self._merge(spec, writer)
            self._index_poses(job_id, rows)
        except Exception as exc:  # the dataset location is broken: the job fails with the reason
            log.exception("writing the manifest of %s failed", job_id)
            self.store.set_state(
                job_id, jobs.FAILED, error=f"writing the manifest failed: {exc}", only_from={jobs.FINALIZING}
            )
            self.store.redis.srem(jobs.TO_FINALIZE, job_id)
            return
        self.store.set_state(job_id, final_state, error=error, only_from={jobs.FINALIZING})
        self.store.redis.srem(jobs.TO_FINALIZE, job_id)
        self._specs.pop(job_id, None)

    def _index_poses(self, job_id: str, rows: list[dict[str, Any]]) -> None:
        """Hand the written items' head poses to the search index (curate indexed them before the
        annotate stage measured the pose), so search can filter by pose. Best effort: a search service
        that is away costs the filter these poses, never the job."""
        posed = [row for row in rows if row.get("yaw") is not None]
        if self.search is None or not posed:
            return
        try:
            self.search.set_poses(
                [f"{job_id}/{row['item_id']}" for row in posed],
                [(float(row["yaw"]), float(row["pitch"]), float(row["roll"])) for row in posed],
            )
        except PermanentError as exc:
            log.warning("job %s: head poses not indexed: %s", job_id, exc)

    def _dedup_pass(self, job_id: str, spec: ResolvedSpec, curated: list[dict[str, Any]]) -> None:
        """The job's candidates are all curated: one dataset-wide near-duplicate pass (the best-scored
        copy of each group stays, whatever order they finished in), then the survivors are annotated.
        An earlier job's written item that loses to a better new one leaves the dataset for its
        rejected/ folder. Held under the dataset's lock, so two jobs' passes do not interleave."""
        if self.search is None:
            raise RuntimeError("the coordinator needs the search service for near-duplicate passes")
        own = {f"{job_id}/{item['id']}": item["id"] for item in curated}
        writer = DatasetWriter(spec.dataset_uri)
        with self.datasets.lock(spec.dataset_id):
            found, _ = self.search.dedup_groups(
                spec.dataset_id, spec.dedup_threshold, candidate_ids=list(own)
            )
            duplicates = {own[d.removed]: (d.kept, d.similarity) for d in found if d.removed in own}
            others = {d.removed: d for d in found if d.removed not in own}
            moved = self._take_out_written(writer, spec, others)
            self.search.set_decisions(
                [d.removed for d in found if d.removed in own or d.removed in moved], "rejected_duplicate"
            )
        plan = dedup_verdicts(spec, job_id, curated, duplicates)
        for task in plan.tasks:
            task.trace = self.store.job(job_id).get("trace", "")
        # Applied while FINALIZING (nothing else moves the job), then the job runs again: its
        # annotate tasks drain it once more, and finalization finds nothing curated.
        self.store.apply(job_id, plan, task_id=f"{job_id}/dedup/{len(curated)}-{now_iso()}")
        self.store.set_state(job_id, jobs.RUNNING, only_from={jobs.FINALIZING})
        self.store.redis.srem(jobs.TO_FINALIZE, job_id)
        self.store.apply(job_id, Plan())  # nothing left to annotate: drained at once
        log.info(
            "job %s: near-duplicate pass over dataset %s: %d of %d candidates removed, %d earlier items taken out",
            job_id,
            spec.dataset_id,
            len(duplicates),
            len(curated),
            len(moved),
        )

    def _take_out_written(
        self, writer: DatasetWriter, spec: ResolvedSpec, losers: dict[str, Any]
    ) -> set[str]:
        """Move written items of other jobs that lost to a new candidate into rejected/ (index ids)."""
        if not losers:
            return set()
        rows = {f"{r.get('job_id')}/{r.get('item_id')}": r for r in writer.all_rows()}
        taken = [(index_id, rows[index_id]) for index_id in losers if index_id in rows]
        writer.move_to_rejected(
            [
                {
                    "stem": row["stem"],
                    "job_id": row.get("job_id"),
                    "item_id": row.get("item_id"),
                    "reason": "duplicate",
                    "duplicate_of": losers[index_id].kept,
                    "similarity": losers[index_id].similarity,
                    "taste_score": row.get("taste_score"),
                }
                for index_id, row in taken
            ]
        )
        record = self.datasets.get(spec.dataset_id)
        if taken and record is not None:
            writer.merge(record.identity())
        return {index_id for index_id, _ in taken}

    def _rows(self, spec: ResolvedSpec, job_id: str, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        by_id = {item["id"]: item for item in items}
        return [
            written_row(spec, job_id, item, by_id.get(item["parent"]), self.provenance)
            for item in items
            if item["state"] == ItemState.WRITTEN
        ]

    @staticmethod
    def _failures(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        failures = []
        for item in items:
            if item["state"] == ItemState.FAILED and item["error"]:
                source = item.get("source") or {}
                recipe = {k: source[k] for k in ("prompt", "seed") if "prompt" in source}
                failures.append(
                    {"item_id": item["id"], "source": source.get("name", ""), **recipe, **item["error"]}
                )
        return failures

    @staticmethod
    def _checkpoints(rows: list[dict[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for row in rows:
            seen.update(row.get("provenance") or {})
        return seen

    @staticmethod
    def _remove_unlisted(writer: DatasetWriter, items: list[dict[str, Any]]) -> list[str]:
        """Files of items that got a stem but did not end written (an annotate cut short by a cancel or
        a failure): removed, so every file in the dataset is in its manifest. Also the temporary files
        of killed writers of this job's stems."""
        own = {item["stem"] for item in items if item.get("stem")}
        removed = writer.discard_partial_writes(own)
        for item in items:
            if item.get("stem") and item["state"] != ItemState.WRITTEN:
                for kind in FOLDERS:
                    path = writer.path_of(kind, item["stem"])
                    if writer.store.delete(path):
                        removed.append(path)
        if removed:
            log.warning("removed %d files no manifest row lists: %s", len(removed), ", ".join(removed[:5]))
        return removed

    def _merge(self, spec: ResolvedSpec, writer: DatasetWriter) -> None:
        record = self.datasets.get(spec.dataset_id)
        if record is None:  # a job without a dataset record (made before datasets had one)
            identity = {k: v for k, v in (writer.read_info() or {}).items() if k in IDENTITY_FIELDS}
            identity.setdefault("uri", spec.dataset_uri)
            identity.setdefault("part", spec.part)
            with self.store.redis.lock(f"sfhq:dataset-uri-lock:{spec.dataset_uri}", timeout=120):
                writer.merge(identity)
            return
        with self.datasets.lock(record.dataset_id):
            writer.merge(record.identity())


IDENTITY_FIELDS = ("dataset_id", "uri", "owner", "part", "settings", "created_at")


def _is_random(provenance: dict[str, Any]) -> bool:
    """Whether any checkpoint in a row's provenance was random demo weights."""
    return any(isinstance(value, dict) and value.get("random_weights") for value in provenance.values())
