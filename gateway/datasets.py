"""Datasets as first-class objects: created once, then any number of jobs append to them.

A dataset is one Redis hash (`sfhq:dataset:<id>`): its URI, the canonical location that names it
(`sfhq:datasets` maps location -> id), its owner, the settings every job writing into it must
share (part, image size, JPEG quality, annotation size) and `next_index`, the atomic stem counter.
Each job reserves a block of that counter at submit, one number per candidate it may make (one
Lua script, which also remembers the block in `sfhq:dataset:<id>:blocks`, so a retried submission
gets the same one): two jobs, on any number of gateways, never share a stem, and within its block
a job's stems follow its items' order, so the same spec gives the same names. Rejected
candidates leave their numbers unused; the manifest lists exactly the stems on disk.

The folder itself says what it is, too: `dataset_info.json` carries the dataset's id and settings,
so a dataset survives a Redis that lost its data (it is adopted again, and its numbering resumes
after the highest stem on disk).

Write modes (`OutputSpec.write_mode`): NEW refuses a folder that holds anything (a dataset of ours
or not) and names `--append` / `--overwrite`; APPEND continues a dataset (unset settings are taken
from it, different ones are refused); OVERWRITE removes our layout's files (never other files)
when no job is still writing there, and starts a new dataset.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import redis
from redis.lock import Lock

from gateway import jobs
from gateway.jobs import ResolvedSpec
from services.common.auth import Principal
from services.common.dataset import DatasetWriter
from services.common.errors import FailedPrecondition, PermissionDenied

log = logging.getLogger("sfhq.datasets")

DATASETS_BY_LOCATION = "sfhq:datasets"
FIXED_SETTINGS = ("part", "image_size", "jpeg_quality", "annotation_size")
LOCK_TIMEOUT_S = 120  # a gateway killed while holding the lock delays the next merge by at most this
LOCK_WAIT_S = 600


class WriteMode(StrEnum):
    NEW = "new"
    APPEND = "append"
    OVERWRITE = "overwrite"


def dataset_key(dataset_id: str) -> str:
    return f"sfhq:dataset:{dataset_id}"


def dataset_jobs_key(dataset_id: str) -> str:
    """zset job_id -> time the job attached."""
    return f"sfhq:dataset:{dataset_id}:jobs"


def dataset_blocks_key(dataset_id: str) -> str:
    """hash job_id -> first stem index of the job's block."""
    return f"sfhq:dataset:{dataset_id}:blocks"


def dataset_lock_key(dataset_id: str) -> str:
    return f"sfhq:dataset:{dataset_id}:lock"


# KEYS: by-location hash, dataset hash. ARGV: location, new id, fields JSON.
# Returns {the id that holds the location, 1 if this call created it}.
CREATE_LUA = """
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return {existing, 0} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local fields = cjson.decode(ARGV[3])
for name, value in pairs(fields) do redis.call('HSET', KEYS[2], name, tostring(value)) end
return {ARGV[2], 1}
"""

# KEYS: blocks hash, dataset hash. ARGV: job id, block size. Returns the block's first index (stable).
RESERVE_LUA = """
local known = redis.call('HGET', KEYS[1], ARGV[1])
if known then return tonumber(known) end
local size = tonumber(ARGV[2])
local first = redis.call('HINCRBY', KEYS[2], 'next_index', size) - size
redis.call('HSET', KEYS[1], ARGV[1], first)
return first
"""


@dataclass(frozen=True)
class DatasetRecord:
    dataset_id: str
    uri: str
    location: str
    owner: str
    settings: dict[str, int]
    created_at: str

    @property
    def part(self) -> int:
        return int(self.settings["part"])

    def identity(self) -> dict[str, Any]:
        """What dataset_info.json says about the dataset itself."""
        return {
            "dataset_id": self.dataset_id,
            "uri": self.uri,
            "owner": self.owner,
            "part": self.part,
            "settings": dict(self.settings),
            "created_at": self.created_at,
        }

    @classmethod
    def from_hash(cls, dataset_id: str, fields: dict[str, str]) -> DatasetRecord:
        return cls(
            dataset_id=dataset_id,
            uri=fields["uri"],
            location=fields["location"],
            owner=fields.get("owner", ""),
            settings={k: int(v) for k, v in json.loads(fields["settings"]).items()},
            created_at=fields.get("created_at", ""),
        )


def settings_of(spec: ResolvedSpec) -> dict[str, int]:
    return {name: int(getattr(spec, name)) for name in FIXED_SETTINGS}


class DatasetBook:
    """The datasets in Redis, and the rules for attaching a job to one."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._create = client.register_script(CREATE_LUA)
        self._reserve = client.register_script(RESERVE_LUA)

    # ---- reading ----------------------------------------------------------------------------------

    def get(self, dataset_id: str) -> DatasetRecord | None:
        fields = self.redis.hgetall(dataset_key(dataset_id)) if dataset_id else {}
        return DatasetRecord.from_hash(dataset_id, fields) if fields else None

    def find(self, location: str) -> DatasetRecord | None:
        dataset_id = self.redis.hget(DATASETS_BY_LOCATION, location)
        return self.get(dataset_id) if dataset_id else None

    def job_ids(self, dataset_id: str) -> list[str]:
        return list(self.redis.zrange(dataset_jobs_key(dataset_id), 0, -1))

    def active_jobs(self, dataset_id: str) -> list[str]:
        """Jobs attached to the dataset that have not ended (they may still write files)."""
        active = []
        for job_id in self.job_ids(dataset_id):
            state = self.redis.hget(jobs.job_key(job_id), "state")
            if state is not None and state not in jobs.TERMINAL:
                active.append(job_id)
        return active

    def describe(self, record: DatasetRecord) -> str:
        stems = int(self.redis.hget(dataset_key(record.dataset_id), "next_index") or 0)
        return f"dataset {record.dataset_id} ({stems} stems taken by {len(self.job_ids(record.dataset_id))} jobs)"

    # ---- stems and the lock -----------------------------------------------------------------------

    def reserve(self, dataset_id: str, job_id: str, count: int) -> int:
        """The first index of the job's block of `count` stems (the same on a retried submission)."""
        keys = [dataset_blocks_key(dataset_id), dataset_key(dataset_id)]
        return int(self._reserve(keys=keys, args=[job_id, max(0, count)]))

    def lock(self, dataset_id: str) -> Lock:
        """Held while a job's part is merged into the dataset's manifest (one merge at a time)."""
        return self.redis.lock(
            dataset_lock_key(dataset_id), timeout=LOCK_TIMEOUT_S, blocking_timeout=LOCK_WAIT_S
        )

    # ---- attaching a job --------------------------------------------------------------------------

    def attach(
        self,
        spec: ResolvedSpec,
        output_msg: Any,
        *,
        location: str,
        mode: WriteMode,
        caller: Principal,
        job_id: str,
        stems: int,
    ) -> tuple[ResolvedSpec, DatasetRecord]:
        """The job's dataset under the write-mode rules, and its block of `stems` stem numbers; returns
        the spec (settings inherited when appending) with its dataset id and block. `output_msg` is the
        request's OutputSpec (to tell set fields from defaults). Raises FailedPrecondition /
        PermissionDenied naming the field."""
        spec, record = self._attach(
            spec, output_msg, location=location, mode=mode, caller=caller, job_id=job_id
        )
        base = self.reserve(record.dataset_id, job_id, stems)
        return replace(spec, dataset_id=record.dataset_id, stem_base=base), record

    def _attach(
        self,
        spec: ResolvedSpec,
        output_msg: Any,
        *,
        location: str,
        mode: WriteMode,
        caller: Principal,
        job_id: str,
    ) -> tuple[ResolvedSpec, DatasetRecord]:
        uri = spec.dataset_uri
        writer = DatasetWriter(uri)
        existing = self.find(location)
        if existing is None:
            info = writer.read_info()
            if info and str(info.get("format", "")).startswith("sfhq-factory") and info.get("dataset_id"):
                existing = self._adopt(info, uri, location, writer)
            elif not writer.is_empty():
                if mode != WriteMode.OVERWRITE:
                    raise FailedPrecondition(
                        f"output.dataset_uri: {uri} is not empty and holds no sfhq-factory dataset: choose "
                        "an empty folder, or pass --overwrite to replace the SFHQ files there "
                        "(--append only adds to a dataset made by sfhq-factory)"
                    )
                removed = writer.clear_layout()
                log.warning("job %s overwrites %s: removed %d files of the SFHQ layout", job_id, uri, removed)
        if (
            existing is not None
            and self.redis.zscore(dataset_jobs_key(existing.dataset_id), job_id) is not None
        ):
            # a retried submission (same request_id) of a job that attached already
            return replace(
                self._inherit(spec, output_msg, existing), dataset_id=existing.dataset_id
            ), existing
        if existing is not None:
            if not caller.owns(existing.owner):
                raise PermissionDenied(
                    f"output.dataset_uri: {uri} holds dataset {existing.dataset_id} of another user"
                )
            if mode == WriteMode.NEW:
                raise FailedPrecondition(
                    f"output.dataset_uri: {uri} already holds {self.describe(existing)}: pass --append to "
                    "add to it, or --overwrite to replace it"
                )
            if mode == WriteMode.APPEND:
                spec = self._inherit(spec, output_msg, existing)
                self._add_job(existing.dataset_id, job_id)
                return replace(spec, dataset_id=existing.dataset_id), existing
            active = self.active_jobs(existing.dataset_id)
            if active:
                raise FailedPrecondition(
                    f"output.dataset_uri: {uri} is being written by job {active[0]} "
                    f"({len(active)} unfinished jobs); cancel them or wait before --overwrite"
                )
            removed = writer.clear_layout()
            self.forget(existing)
            log.warning(
                "job %s overwrites dataset %s: removed %d files", job_id, existing.dataset_id, removed
            )
        record, created = self._create_record(spec, uri, location, caller.name)
        if not created:  # another submission created it a moment ago: the rules above apply to it
            return self._attach(spec, output_msg, location=location, mode=mode, caller=caller, job_id=job_id)
        with self.lock(record.dataset_id):
            writer.merge(record.identity())  # dataset_info.json now names the dataset, before any item
        self._add_job(record.dataset_id, job_id)
        return replace(spec, dataset_id=record.dataset_id), record

    def _inherit(self, spec: ResolvedSpec, output_msg: Any, dataset: DatasetRecord) -> ResolvedSpec:
        changes: dict[str, Any] = {}
        for name in FIXED_SETTINGS:
            given = int(getattr(output_msg, name, 0) or 0)
            wanted = dataset.settings[name]
            if given and given != wanted:
                raise FailedPrecondition(
                    f"output.{name}: dataset {dataset.dataset_id} at {dataset.uri} was made with "
                    f"{name}={wanted}; a job appending to it must use the same (got {given})"
                )
            changes[name] = wanted
        return replace(spec, **changes)

    def _create_record(
        self, spec: ResolvedSpec, uri: str, location: str, owner: str
    ) -> tuple[DatasetRecord, bool]:
        """A new dataset record; (the record that holds the location, whether it is ours)."""
        dataset_id = uuid.uuid4().hex[:12]
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        fields = {
            "uri": uri,
            "location": location,
            "owner": owner,
            "settings": json.dumps(settings_of(spec), sort_keys=True),
            "created_at": created,
            "next_index": 0,
        }
        holder, created = self._create(
            keys=[DATASETS_BY_LOCATION, dataset_key(dataset_id)],
            args=[location, dataset_id, json.dumps(fields)],
        )
        record = self.get(str(holder))
        assert record is not None
        return record, bool(created)

    def _adopt(self, info: dict[str, Any], uri: str, location: str, writer: DatasetWriter) -> DatasetRecord:
        """Register a dataset found on disk (Redis lost it): its numbering resumes after its files."""
        dataset_id = str(info["dataset_id"])
        settings = {k: int(v) for k, v in dict(info.get("settings") or {}).items() if k in FIXED_SETTINGS}
        settings.setdefault("part", int(info.get("part") or 1))
        used = writer.used_indices(settings["part"])
        fields = {
            "uri": uri,
            "location": location,
            "owner": str(info.get("owner", "")),
            "settings": json.dumps(settings, sort_keys=True),
            "created_at": str(info.get("created_at", "")),
            "next_index": (used[-1] + 1) if used else 0,
        }
        holder, created = self._create(
            keys=[DATASETS_BY_LOCATION, dataset_key(dataset_id)],
            args=[location, dataset_id, json.dumps(fields)],
        )
        if created:
            log.warning(
                "dataset %s at %s was not in Redis: adopted from its dataset_info.json (next stem index %s)",
                dataset_id,
                uri,
                fields["next_index"],
            )
        record = self.get(str(holder))
        assert record is not None
        return record

    def _add_job(self, dataset_id: str, job_id: str) -> None:
        self.redis.zadd(dataset_jobs_key(dataset_id), {job_id: time.time()}, nx=True)

    def forget(self, record: DatasetRecord) -> None:
        with self.redis.pipeline() as pipe:
            pipe.hdel(DATASETS_BY_LOCATION, record.location)
            pipe.delete(
                dataset_key(record.dataset_id),
                dataset_jobs_key(record.dataset_id),
                dataset_blocks_key(record.dataset_id),
            )
            pipe.execute()
