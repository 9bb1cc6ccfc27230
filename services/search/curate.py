"""The curate stage: the taste model's verdict on a candidate, and the candidate indexed with it.

Decisions (docs/curation.md): with a taste model, a score at or above the high threshold is
ACCEPTED, below the low threshold REJECTED_TASTE, in between REVIEW (a person decides); without one,
every candidate is ACCEPTED. Every candidate is indexed with its decision and dataset, rejected ones
too, so any item can be found, labelled and re-decided later. Near-duplicates are not decided here:
the gateway runs one dataset-wide pass per job once its candidates are all curated
(`services/search/dedup.py`, `dataset_groups`), which keeps the better-scored copy whatever order the
items finished in.

Correct with several curate workers (in one process or many):
- Decisions of one job are serialised by a Redis lock (`SET NX PX`, renewed while held).
- The job's decided items are a shared, append-only Redis list (features blob key, image, score,
  decision), so a worker first catches up with what others decided; its local index is only a cache.
- The decision is committed by a Lua script that first checks the lock is still ours (a fencing check:
  a worker that lost its lock in a long pause cannot commit a stale decision), then records it in the
  hash `sfhq:curate:<job_id>` and appends to the list.
- Idempotent under redelivery: a recorded decision is returned as is.
The same list repopulates the index after a crash (`catch_up_all` on start): nothing decided is lost
between two debounced saves; later decisions (a review, a dedup pass) are read from the hash.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from services.common.contracts import FEATURE_KEY, CurateOutput, CuratePayload, Decision
from services.common.errors import InvalidInput
from services.search.feature_sets import FeatureSets, MissingFeatures
from services.search.index import ItemMeta
from services.search.state import IndexState
from services.search.taste import TasteModel, qualified_name

log = logging.getLogger(__name__)

KEY_TTL_S = 30 * 24 * 3600  # curate state of a job outlives any realistic job, then cleans itself up
LOCK_TTL_MS = 30_000
LOCK_WAIT_S = 120.0

_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_COMMIT_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('RPUSH', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[5])
return 1
"""


class CurateInputError(InvalidInput):
    """A curate payload is unusable (missing keys, wrong types, features of the wrong shape)."""


class LockUnavailable(RuntimeError):
    """The job lock could not be taken or was lost; the task is retried (a transient error)."""


def decisions_key(job_id: str) -> str:
    return f"sfhq:curate:{job_id}"


def decided_key(job_id: str) -> str:
    """The job's decided candidates, in decision order (what rebuilds the index after a crash)."""
    return f"sfhq:curate:{job_id}:decided"


def lock_key(job_id: str) -> str:
    return f"sfhq:curate:{job_id}:lock"


def index_item_id(job_id: str, item_id: str) -> str:
    """Item ids are per job ("i000001-c0"); the index is shared, so job items are "<job_id>/<item_id>"."""
    return f"{job_id}/{item_id}"


class JobLock:
    """A Redis lock for one job, renewed in the background while held."""

    def __init__(self, redis, job_id: str, *, ttl_ms: int = LOCK_TTL_MS, wait_s: float = LOCK_WAIT_S) -> None:
        self.redis = redis
        self.key = lock_key(job_id)
        self.token = uuid.uuid4().hex
        self.ttl_ms = ttl_ms
        self.wait_s = wait_s
        self._renew = redis.register_script(_RENEW_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def __enter__(self) -> JobLock:
        deadline = time.monotonic() + self.wait_s
        pause = 0.01
        while not self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            if time.monotonic() > deadline:
                raise LockUnavailable(f"{self.key} still held by another worker after {self.wait_s:.0f} s")
            time.sleep(pause)
            pause = min(0.2, pause * 2)
        self._thread = threading.Thread(target=self._keep_alive, name=f"lock-{self.key}", daemon=True)
        self._thread.start()
        return self

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self._renew(keys=[self.key], args=[self.token, self.ttl_ms]):
                    self.lost = True
                    return
            except Exception:  # a Redis hiccup: the commit's fencing check still protects us
                log.warning("could not renew %s", self.key, exc_info=True)

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._release(keys=[self.key], args=[self.token])
        except Exception:  # it expires on its own
            log.warning("could not release %s", self.key, exc_info=True)


@dataclass(frozen=True)
class CurateRequest:
    """One item to decide: its job, its id and its (checked) payload."""

    job_id: str
    item_id: str
    payload: CuratePayload

    @property
    def features_key(self) -> str:
        return self.payload.features


class Curator:
    """Makes curate decisions against the shared per-job state in Redis and the local index."""

    def __init__(
        self,
        redis,
        state: IndexState,
        blobs,
        taste_source: Callable[[str], TasteModel],
        *,
        lock_ttl_ms: int = LOCK_TTL_MS,
        lock_wait_s: float = LOCK_WAIT_S,
    ) -> None:
        self.redis = redis
        self.state = state
        self.blobs = blobs
        self.feature_sets = FeatureSets(blobs)
        self.taste_source = taste_source
        self.lock_ttl_ms = lock_ttl_ms
        self.lock_wait_s = lock_wait_s
        self._commit = redis.register_script(_COMMIT_LUA)
        self._synced: dict[str, int] = {}  # per job: entries of the accepted list already in the index
        self._local = threading.Lock()  # workers of this process share the index and cursors

    # ---- the decision -------------------------------------------------------------------------------

    def lock(self, job_id: str) -> JobLock:
        return JobLock(self.redis, job_id, ttl_ms=self.lock_ttl_ms, wait_s=self.lock_wait_s)

    def decide(self, request: CurateRequest, job_lock: JobLock) -> CurateOutput:
        """The decision for one item; call with the job's lock held. Returns the stage output."""
        recorded = self.redis.hget(decisions_key(request.job_id), request.item_id)
        if recorded is not None:
            return CurateOutput.parse(_public(json.loads(recorded)))
        vector = self._features(request)
        payload = request.payload
        extras = self._extra_features(request)
        with self._local:
            self._catch_up(request.job_id)
            score: float | None = None
            decision = Decision.ACCEPTED
            if payload.taste_model:
                model = self.taste_source(qualified_name(payload.owner, payload.taste_model))
                score = float(model.predict_proba(_model_inputs(model, vector, extras))[0])
                decision = taste_decision(score, model, payload.accept_threshold, payload.reject_threshold)
            output = _output(decision, score, None, None)
            entry = {
                "item_id": request.item_id,
                "features": request.features_key,
                "image_uri": self.blobs.uri(payload.image),
                "taste_score": score,
                "owner": payload.owner,
                "dataset_id": payload.dataset_id,
                "decision": decision.value,
            }
            # kept before the decision is final: whatever later trains or scores on it finds them
            self.feature_sets.put(index_item_id(request.job_id, request.item_id), extras)
            self._commit_decision(request, job_lock, output, entry)
            self._add(request.job_id, entry, vector)
            self._synced[request.job_id] = self._synced.get(request.job_id, 0) + 1
            return output

    def _commit_decision(
        self, request: CurateRequest, job_lock: JobLock, output: CurateOutput, entry: dict
    ) -> None:
        if job_lock.lost:
            raise LockUnavailable(f"lost the curate lock of job {request.job_id}; retrying")
        status = self._commit(
            keys=[job_lock.key, decisions_key(request.job_id), decided_key(request.job_id)],
            args=[
                job_lock.token,
                request.item_id,
                json.dumps(output.to_dict()),
                json.dumps(entry),
                KEY_TTL_S,
            ],
        )
        if status == -1:
            raise LockUnavailable(f"lost the curate lock of job {request.job_id} before committing; retrying")

    def record_decisions(self, item_ids: list[str], decision: str) -> int:
        """A later decision (a person's review, a dedup pass) for indexed job items: in the index, and in
        the job's decision record, which is what rebuilds the index after a crash."""
        with self._local:
            index = self.state.index
            changed = index.set_decision(item_ids, decision) if index is not None else 0
            for index_id in item_ids:
                job_id, sep, item_id = index_id.partition("/")
                if not sep:
                    continue  # an imported item: no job record
                recorded = self.redis.hget(decisions_key(job_id), item_id)
                if recorded is not None:
                    record = json.loads(recorded)
                    record["decision"] = decision
                    self.redis.hset(decisions_key(job_id), item_id, json.dumps(record))
        if changed:
            self.state.mark_dirty()
        return changed

    def _extra_features(self, request: CurateRequest) -> dict[str, np.ndarray]:
        extras = {}
        for key, blob in request.payload.extra_features.items():
            vector = np.asarray(self.blobs.get_npy(blob), dtype=np.float32).reshape(-1)
            if vector.size == 0 or not np.isfinite(vector).all():
                raise CurateInputError(f"extra_features[{key!r}] are empty or not finite")
            extras[key] = vector
        return extras

    def _features(self, request: CurateRequest) -> np.ndarray:
        try:
            vector = np.asarray(self.blobs.get_npy(request.features_key), dtype=np.float32).reshape(-1)
        except ValueError as exc:
            raise CurateInputError(f"features {request.features_key!r}: {exc}") from None
        if vector.size == 0 or not np.isfinite(vector).all() or not np.any(vector):
            raise CurateInputError(f"features {request.features_key!r} are empty, zero or not finite")
        index = self.state.index
        if index is not None and vector.size != index.dim:
            raise CurateInputError(
                f"features {request.features_key!r} are {vector.size}-d; the index holds "
                f"{index.dim}-d vectors"
            )
        return vector

    # ---- shared state -------------------------------------------------------------------------------

    def _catch_up(self, job_id: str) -> None:
        """Add the job's items decided elsewhere (another worker, or before a crash) to the local index,
        with their current decision."""
        start = self._synced.get(job_id, 0)
        entries = self.redis.lrange(decided_key(job_id), start, -1)
        for raw in entries:
            entry = json.loads(raw)
            recorded = self.redis.hget(decisions_key(job_id), entry["item_id"])
            if recorded is not None:
                entry["decision"] = json.loads(recorded).get("decision", entry.get("decision", ""))
            index = self.state.index
            if index is None or index_item_id(job_id, entry["item_id"]) not in index:
                try:
                    vector = np.asarray(self.blobs.get_npy(entry["features"]), np.float32).reshape(-1)
                except (FileNotFoundError, ValueError) as exc:  # the job's blobs were deleted meanwhile
                    log.warning(
                        "job %s: accepted item %s has no readable features (%s); not indexed",
                        job_id,
                        entry["item_id"],
                        exc,
                    )
                    continue
                self._add(job_id, entry, vector)
        self._synced[job_id] = start + len(entries)

    def _add(self, job_id: str, entry: dict, vector: np.ndarray) -> None:
        index = self.state.index_for(vector.size)
        index.add(
            [index_item_id(job_id, entry["item_id"])],
            vector[None, :],
            [
                ItemMeta(
                    job_id=job_id,
                    source=f"job:{job_id}",
                    image_uri=entry.get("image_uri") or "",
                    owner=entry.get("owner") or "",
                    taste_score=entry.get("taste_score"),
                    dataset_id=entry.get("dataset_id") or "",
                    decision=entry.get("decision") or "accepted",
                )
            ],
        )
        self.state.mark_dirty()

    def catch_up_all(self) -> int:
        """On start: bring every job's decided items into the index; returns how many were missing."""
        before = len(self.state.index) if self.state.index is not None else 0
        with self._local:
            for key in self.redis.scan_iter(match="sfhq:curate:*:decided", count=1000):
                job_id = key[len("sfhq:curate:") : -len(":decided")]
                self._catch_up(job_id)
        after = len(self.state.index) if self.state.index is not None else 0
        if after > before:
            log.info("search: %d decided items were missing from the saved index; added", after - before)
        return after - before


def taste_decision(
    score: float, model: TasteModel, accept_threshold: float | None, reject_threshold: float | None
) -> Decision:
    """At or above the high threshold: accepted; below the low one: rejected; between: review."""
    high = model.high_threshold if accept_threshold is None else accept_threshold
    low = min(high, model.low_threshold if reject_threshold is None else reject_threshold)
    if score >= high:
        return Decision.ACCEPTED
    return Decision.REJECTED_TASTE if score < low else Decision.REVIEW


def _output(
    decision: Decision, score: float | None, duplicate_of: str | None, similarity: float | None
) -> CurateOutput:
    return CurateOutput(
        decision=decision, taste_score=score, duplicate_of=duplicate_of, similarity=similarity
    )


def _public(recorded: dict) -> dict:
    return {key: recorded.get(key) for key in ("decision", "taste_score", "duplicate_of", "similarity")}


def _model_inputs(
    model: TasteModel, vector: np.ndarray, extras: dict[str, np.ndarray]
) -> np.ndarray | dict[str, np.ndarray]:
    """One item's input to `model`: its CLIP vector, or its feature sets when the model uses more."""
    if model.feature_keys == [FEATURE_KEY]:
        return vector
    missing = [key for key in model.feature_keys if key != FEATURE_KEY and key not in extras]
    if missing:
        raise MissingFeatures(
            f"taste model {model.name!r} uses {', '.join(missing)}: set SFHQ_EXTRA_FEATURES on the "
            "search service so that the embed stage makes them"
        )
    return {key: (vector if key == FEATURE_KEY else extras[key])[None] for key in model.feature_keys}
