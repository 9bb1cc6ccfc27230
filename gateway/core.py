"""What the gateway's RPCs do, as plain (blocking) methods that raise typed errors.

`gateway/server.py` runs these in worker threads under its asyncio server. Every method acts for
one principal (`services.common.auth`): jobs and their items belong to the user who submitted
them, and other users get NOT_FOUND (the admin user sees everything).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import uuid
from typing import Any

import fsspec
import numpy as np

from gateway import jobs, messages
from gateway.coordinator import JobStore, now_iso
from gateway.curation import Curation
from gateway.datasets import DatasetBook, WriteMode
from gateway.jobs import ResolvedSpec, SpecError
from gateway.locations import FolderLimits, Locations, user_area
from gateway.pipeline import (
    Plan,
    first_plans,
    hold_beyond,
    item_pose,
    pose_in_ranges,
    stems_needed,
    written_row,
)
from gateway.search_client import SearchClient
from services.common import tracing
from services.common.auth import Principal
from services.common.blobs import BlobStore
from services.common.config import Settings
from services.common.dataset import DatasetWriter
from services.common.errors import DataLoss, InvalidInput, NotFound, ResourceExhausted
from services.common.images import portable_image_bytes
from services.common.queue import RedisQueue
from services.common.safe_pickle import load_feature_pickle
from sfhq import __version__
from sfhq.tensors import numpy_to_tensor
from sfhq.v1 import gateway_pb2

log = logging.getLogger("sfhq.gateway")

SUBMIT_CHUNK = 500  # items per atomic enqueue, so a huge job never blocks Redis for long
REQUEST_ID_TTL_S = 7 * 24 * 3600  # how long a request_id keeps answering with its job
MAX_LIST_JOBS = 1000
MAX_LIST_ITEMS = 10_000
# Writes a new job's record unless it exists (a resumed submission must not reset the counters).
CREATE_JOB_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fields = cjson.decode(ARGV[1])
for name, value in pairs(fields) do redis.call('HSET', KEYS[1], name, tostring(value)) end
return 1
"""


def _safe_name(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "._-" else "_" for c in os.path.basename(name))[:80]
    return keep or "image"


def new_job_id() -> str:
    return time.strftime(jobs.JOB_ID_TIME_FORMAT + "-", time.gmtime()) + uuid.uuid4().hex[:8]


class GatewayCore:
    def __init__(
        self,
        settings: Settings,
        queue: RedisQueue,
        store: JobStore,
        blobs: BlobStore,
        search: SearchClient | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.store = store
        self.blobs = blobs
        limits = FolderLimits(
            files=min(settings.max_input_files, jobs.MAX_INPUTS),
            total_bytes=settings.max_input_bytes,
            depth=settings.max_input_depth,
        )
        self.locations = Locations(blobs, settings.data_roots, limits)
        self._create_record = store.redis.register_script(CREATE_JOB_LUA)
        self.datasets = DatasetBook(store.redis)
        self.search = search
        self.curation = (
            Curation(store, self.datasets, self.locations, search, self.job_for, self.get_item)
            if search is not None
            else None
        )

    # ---- jobs -----------------------------------------------------------------------------------

    def submit(self, request: gateway_pb2.SubmitJobRequest, caller: Principal) -> gateway_pb2.Job:
        if len(request.request_id) > 128:
            raise InvalidInput("request_id: longer than 128 characters")
        owner = caller.name
        request_key = jobs.request_key(f"{owner}:{request.request_id}") if request.request_id else ""
        job_id = ""
        if request_key:
            job_id = self.store.redis.get(request_key) or ""
            existing = self.store.job(job_id) if job_id else {}
            if existing and existing.get("state") != jobs.QUEUED:
                return messages.job(job_id, existing)
            # else: new, or a retry of a submission whose gateway died half-way: finish creating it
        job_id = job_id or new_job_id()
        display = jobs.spec_for_display(request.spec)
        if len(display) > self.settings.max_spec_bytes:
            raise InvalidInput(
                f"spec: {len(display)} bytes without inline images; at most {self.settings.max_spec_bytes} "
                "(SFHQ_MAX_SPEC_BYTES): use input_folder for many inputs, a template with slots for many prompts"
            )
        default_uri = self.blobs.uri(f"{user_area(owner)}/datasets/{job_id}")
        spec = jobs.validate_spec(
            request.spec,
            default_dataset_uri=default_uri,
            max_image_bytes=self.settings.max_image_bytes,
            owner=owner,
        )
        self.locations.place("output.dataset_uri", spec.dataset_uri, owner)
        if self.curation is not None:
            spec = self.curation.check_model(spec)  # the model exists; the job records its version
        folder = self._list_folder(request.spec, owner)
        # Refuse before staging or planning: a full stage would only make us copy and plan for nothing.
        first_stage, count = {
            "sampling": ("sample", spec.sampling.get("count", 0)),
            "prompts": ("diffuse", spec.prompts.get("count", 0)),
        }.get(spec.mode, ("align", len(request.spec.inputs) + len(folder)))
        # A job larger than the stage's cap is fed to it as it drains (Coordinator.feed_jobs); a
        # smaller one goes in at once, or is refused while the stage is full.
        if count > self.settings.max_job_items:  # refused before planning: items cost memory and time
            raise ResourceExhausted(
                f"the job has {count} first tasks ({first_stage}); at most {self.settings.max_job_items} "
                "per job (SFHQ_MAX_JOB_ITEMS): split it into several jobs (append to one dataset), or raise it"
            )
        big = count > self.queue.stream_maxlen
        if not big and not self.store.job(job_id) and not self.queue.has_room(first_stage, count):
            raise ResourceExhausted(
                f"stage {first_stage!r} is full ({self.queue.backlog(first_stage)} tasks waiting); "
                "retry in about 30 s or submit a smaller job"
            )
        if request_key and not self.store.redis.set(request_key, job_id, nx=True, ex=REQUEST_ID_TTL_S):
            claimed = self.store.redis.get(request_key) or job_id  # a concurrent retry won the race
            if claimed != job_id:
                return self.submit(request, caller)
        spec, _dataset = self.datasets.attach(
            spec,
            request.spec.output,
            location=self.locations.canonical("output.dataset_uri", spec.dataset_uri),
            mode=WriteMode(spec.write_mode),
            caller=caller,
            job_id=job_id,
            stems=stems_needed(spec, len(request.spec.inputs) + len(folder)),
        )
        inputs = self._stage_inputs(job_id, request.spec, spec, folder, owner)
        plans = first_plans(spec, job_id, inputs, SUBMIT_CHUNK)
        if big:
            direct = max(0, min(self.queue.stream_maxlen // 2 - self.queue.backlog(first_stage), count))
            hold_beyond(plans, direct)
        traceparent = tracing.inject()  # the job's trace: SubmitJob's span, carried by every task
        for plan in plans:
            for task in plan.tasks + plan.held:
                task.trace = traceparent
        self._create(job_id, request.spec, spec, display, plans, traceparent)
        return messages.job(job_id, self.store.job(job_id))

    def _list_folder(self, spec_msg: gateway_pb2.JobSpec, owner: str) -> list[tuple[str, int]]:
        if not spec_msg.input_folder:
            return []
        if len(spec_msg.inputs) >= jobs.MAX_INPUTS:
            raise SpecError(f"inputs: already {len(spec_msg.inputs)} images; no room for input_folder")
        return self.locations.list_images("input_folder", spec_msg.input_folder, owner)

    def _stage_inputs(
        self,
        job_id: str,
        spec_msg: gateway_pb2.JobSpec,
        spec: ResolvedSpec,
        folder: list[tuple[str, int]],
        owner: str,
    ) -> list[dict[str, Any]]:
        """Inline images and folder files go into the blob store (workers read only the blob store);
        blob keys must be the caller's own. Returns [{uri, name}] in input order."""
        if spec.mode in ("sampling", "prompts"):
            return []
        inputs = []
        for n, image in enumerate(spec_msg.inputs):
            if image.WhichOneof("source") == "data":
                key = f"jobs/{job_id}/inputs/{n:06d}-{_safe_name(image.name)}"
                self.blobs.put(key, image.data)
                inputs.append({"uri": key, "name": image.name or f"inputs[{n}]"})
                continue
            place = self.locations.place(
                f"inputs[{n}].uri", image.uri if "://" in image.uri else self.blobs.uri(image.uri), owner
            )
            if place.in_blob_store:
                inputs.append({"uri": self.blobs.key_for(place.uri), "name": image.name or image.uri})
            else:
                inputs.append({"uri": self._copy_in(job_id, n, image.uri), "name": image.name or image.uri})
        for n, (path, _size) in enumerate(folder, start=len(inputs)):
            inputs.append({"uri": self._copy_in(job_id, n, path), "name": os.path.basename(path)})
        return inputs

    def _copy_in(self, job_id: str, n: int, path: str) -> str:
        """Copy one file of a data root into the job's blob area, capped just past the image size
        limit (an oversized file then fails its own item at align instead of the submission)."""
        key = f"jobs/{job_id}/inputs/{n:06d}-{_safe_name(path)}"
        with fsspec.open(path, "rb") as handle:
            self.blobs.put(key, handle.read(self.settings.max_image_bytes + 1))
        return key

    def _create(
        self,
        job_id: str,
        spec_msg: gateway_pb2.JobSpec,
        spec: ResolvedSpec,
        display: str,
        plans: list[Plan],
        traceparent: str,
    ) -> None:
        """Write the job and enqueue its first tasks. Safe to run again for the same job after a crash:
        the record is written once, and each chunk of tasks is applied once (it has an idempotency id)."""
        created = now_iso()
        record = {
            "spec": display, "resolved": spec.to_json(), "state": jobs.QUEUED, "created_at": created,
            "updated_at": created, "dataset_uri": spec.dataset_uri, "error": "", "in_flight": 0,
            "owner": spec.owner, "dataset_id": spec.dataset_id,
            "trace": traceparent, "name": spec_msg.name, "mode": spec.mode, **dict.fromkeys(jobs.COUNTERS, 0),
        }  # fmt: skip
        self._create_record(keys=[jobs.job_key(job_id)], args=[json.dumps(record)])
        now = time.time()
        self.store.redis.zadd(jobs.JOBS_INDEX, {job_id: now}, nx=True)
        self.store.redis.zadd(jobs.owner_jobs_key(spec.owner), {job_id: now}, nx=True)
        # Enqueue in chunks; the job stays QUEUED meanwhile so early results cannot finish it too soon.
        for number, chunk in enumerate(plans):
            self.store.apply(job_id, chunk, task_id=f"{job_id}/create/{number * SUBMIT_CHUNK}")
        self.store.set_state(job_id, jobs.RUNNING, only_from={jobs.QUEUED})
        self.store.apply(job_id, Plan())  # finishes at once if every task already completed
        items = sum(len(plan.items) for plan in plans)
        log.info("job %s (%s) of %s: %d items -> %s", job_id, spec.mode, spec.owner, items, spec.dataset_uri)

    def job_for(self, job_id: str, caller: Principal) -> dict[str, str]:
        """The job's record if the caller may see it; NOT_FOUND (or DATA_LOSS) otherwise."""
        if not job_id or len(job_id) > 64:
            raise InvalidInput("job_id: missing or too long")
        job = self.store.job(job_id)
        if job and caller.owns(job.get("owner", "")):
            return job
        if not job and self.store.state_lost(job_id):
            raise DataLoss(messages.lost_state_message(job_id))
        hint = ""
        if not job and self.store.predates_data(job_id):
            hint = " (its id predates this Redis data set: if it existed, Redis lost it in a restart without persistence)"
        raise NotFound(f"job {job_id!r} not found{hint}")

    def get_job(self, job_id: str, caller: Principal) -> gateway_pb2.Job:
        return messages.job(job_id, self.job_for(job_id, caller))

    def cancel(self, job_id: str, caller: Principal) -> gateway_pb2.Job:
        self.job_for(job_id, caller)
        if self.store.set_state(job_id, jobs.CANCELLING, only_from={jobs.QUEUED, jobs.RUNNING}):
            self.queue.mark_cancelled(job_id)
            self.store.apply(job_id, Plan())  # drained already -> CANCELLED now
        return messages.job(job_id, self.store.job(job_id))

    def list_jobs(
        self, request: gateway_pb2.ListJobsRequest, caller: Principal
    ) -> gateway_pb2.ListJobsResponse:
        limit = request.limit or 50
        if not 1 <= limit <= MAX_LIST_JOBS:
            raise InvalidInput(f"limit: must be in [1, {MAX_LIST_JOBS}]")
        wanted = messages.PROTO_TO_STATE.get(request.state) if request.state else None
        if request.state and wanted is None:
            raise InvalidInput(f"state: unknown value {request.state}")
        index = jobs.JOBS_INDEX if caller.is_admin else jobs.owner_jobs_key(caller.name)
        out = gateway_pb2.ListJobsResponse()
        start = 0
        while len(out.jobs) < limit:
            page = self.store.redis.zrevrange(index, start, start + 4 * limit - 1)
            if not page:
                break
            start += len(page)
            for job_id in page:
                job = self.store.job(job_id)
                if job and (wanted is None or job.get("state") == wanted):
                    out.jobs.append(messages.job(job_id, job, with_spec=False))  # summaries: no spec
                    if len(out.jobs) >= limit:
                        break
        return out

    # ---- items ----------------------------------------------------------------------------------

    def list_items(
        self, request: gateway_pb2.ListItemsRequest, caller: Principal
    ) -> gateway_pb2.ListItemsResponse:
        self.job_for(request.job_id, caller)
        limit = request.limit or 1000
        if not 1 <= limit <= MAX_LIST_ITEMS or request.offset < 0 or len(request.state) > 32:
            raise InvalidInput(f"limit/offset/state: limit must be in [1, {MAX_LIST_ITEMS}], offset >= 0")
        ranges = messages.angle_ranges(request, "")
        items = [
            i
            for i in self.store.items(request.job_id)
            if (not request.state or i["state"] == request.state) and pose_in_ranges(item_pose(i), ranges)
        ]
        out = gateway_pb2.ListItemsResponse()
        for record in items[request.offset : request.offset + limit]:
            out.items.append(messages.item(request.job_id, record))
        return out

    def item_id_of_stem(self, job_id: str, stem: str) -> str:
        """The id of the job's item written under `stem` (NOT_FOUND naming it otherwise)."""
        found = next((i["id"] for i in self.store.items(job_id) if i["stem"] == stem), None)
        if found is None:
            raise NotFound(f"item_id: no item with stem {stem!r} in job {job_id!r}")
        return found

    def get_item(self, request: gateway_pb2.GetItemRequest, caller: Principal) -> gateway_pb2.Item:
        job = self.job_for(request.job_id, caller)
        item_id = request.item_id.removeprefix(f"{request.job_id}/")  # search hits carry the index id
        if not item_id or len(item_id) > 200:
            raise InvalidInput("item_id: missing or too long")
        record = self.store.item(request.job_id, item_id)
        if record is None and item_id.startswith("SFHQ_"):
            record = next((i for i in self.store.items(request.job_id) if i["stem"] == item_id), None)
        if record is None:
            raise NotFound(f"item {request.item_id!r} not found in job {request.job_id!r}")
        message = messages.item(request.job_id, record)
        written = (
            (record["outputs"].get("annotate") or {}).get("files", {}) if record["state"] == "written" else {}
        )
        dataset = DatasetWriter(job["dataset_uri"]).store
        try:
            if request.include_image:
                if "image" in written:
                    message.image.data = dataset.get(written["image"])
                else:
                    outputs = record["outputs"]
                    key = (  # the furthest image it has: a candidate, an aligned face, an SD image
                        (outputs.get("synthesize") or {}).get("image")
                        or (outputs.get("align") or {}).get("aligned")
                        or (outputs.get("diffuse") or {}).get("image")
                    )
                    if key:  # an intermediate (QOI) becomes PNG: clients need no QOI reader
                        message.image.data = portable_image_bytes(
                            self.blobs.get(key), max_pixels=self.settings.max_image_pixels
                        )
            if request.include_annotations and written:
                spec = ResolvedSpec.from_json(job["resolved"])
                parent = self.store.item(request.job_id, record["parent"]) if record["parent"] else None
                row = written_row(spec, request.job_id, record, parent, {"code_version": __version__})
                message.manifest_json = json.dumps(row, sort_keys=True)
                message.dataset_id = spec.dataset_id
                for key, value in load_feature_pickle(dataset.get(written["features"])).items():
                    kind = "float16" if value.dtype == np.float16 else "float32"  # SFHQ's are float16
                    message.features[key].CopyFrom(numpy_to_tensor(value, kind))
                message.segmentation.data = dataset.get(written["segmentation"])
                with np.load(io.BytesIO(dataset.get(written["landmarks"])), allow_pickle=False) as npz:
                    message.landmarks.CopyFrom(numpy_to_tensor(npz["landmarks"]))
                if "latent" in written:
                    latent = np.load(io.BytesIO(dataset.get(written["latent"])), allow_pickle=False)
                    message.latent.CopyFrom(numpy_to_tensor(latent))
        except (FileNotFoundError, KeyError) as exc:
            raise DataLoss(f"files of item {record['id']} are missing: {exc}") from None
        return message
