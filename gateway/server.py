"""The gateway: the public gRPC API (jobs, items, progress, search, labels) + the coordinator.

It is the only writer of job state. Model work happens in the services; the gateway stores the
inputs, enqueues each job's first tasks and lets the coordinator drive the items from there.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
import uuid
from typing import Any

import fsspec
import grpc
import numpy as np

from gateway import jobs
from gateway.coordinator import EVENTS_MAXLEN, Coordinator, JobStore, now_iso
from gateway.jobs import ResolvedSpec, SpecError
from gateway.pipeline import Plan, first_plans
from services.common.blobs import BlobStore
from services.common.config import ConfigError, Settings
from services.common.dataset import DatasetWriter
from services.common.images import portable_image_bytes
from services.common.queue import RedisQueue, connect_redis
from services.common.server import ServiceProcess, abort_with, client_channel
from sfhq import __version__
from sfhq.tensors import numpy_to_tensor
from sfhq.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, search_pb2, search_pb2_grpc

log = logging.getLogger("sfhq.gateway")
SUBMIT_CHUNK = 500  # items per atomic enqueue, so a huge job never blocks Redis for long
STATE_TO_PROTO: dict[str, gateway_pb2.JobState] = {
    jobs.QUEUED: gateway_pb2.JOB_STATE_QUEUED,
    jobs.RUNNING: gateway_pb2.JOB_STATE_RUNNING,
    jobs.FINALIZING: gateway_pb2.JOB_STATE_RUNNING,
    jobs.CANCELLING: gateway_pb2.JOB_STATE_CANCELLING,
    jobs.CANCELLED: gateway_pb2.JOB_STATE_CANCELLED,
    jobs.SUCCEEDED: gateway_pb2.JOB_STATE_SUCCEEDED,
    jobs.FAILED: gateway_pb2.JOB_STATE_FAILED,
}
PROTO_TO_STATE = {v: k for k, v in STATE_TO_PROTO.items() if k != jobs.FINALIZING}
STAGE_TO_PROTO: dict[str, common_pb2.Stage] = {
    "align": common_pb2.STAGE_ALIGN,
    "encode": common_pb2.STAGE_ENCODE,
    "sample": common_pb2.STAGE_SAMPLE,
    "synthesize": common_pb2.STAGE_SYNTHESIZE,
    "embed": common_pb2.STAGE_EMBED,
    "curate": common_pb2.STAGE_CURATE,
    "annotate": common_pb2.STAGE_ANNOTATE,
}


REQUEST_ID_TTL_S = 7 * 24 * 3600  # how long a request_id keeps answering with its job
# Writes a new job's record unless it exists (a resumed submission must not reset the counters).
CREATE_JOB_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fields = cjson.decode(ARGV[1])
for name, value in pairs(fields) do redis.call('HSET', KEYS[1], name, tostring(value)) end
return 1
"""


def _list_images(fs: Any, root: str) -> list[str]:
    """Image files under `root`; stops (SpecError) past MAX_INPUTS instead of walking a whole disk."""
    found: list[str] = []
    for folder, _, files in fs.walk(root):
        for name in files:
            if name.lower().endswith(jobs.IMAGE_EXTENSIONS):
                found.append(f"{folder.rstrip('/')}/{name}")
                if len(found) > jobs.MAX_INPUTS:
                    raise SpecError(f"input_folder: more than {jobs.MAX_INPUTS} images under {root!r}")
    return found


def lost_state_message(job_id: str) -> str:
    return (
        f"the state of job {job_id!r} was lost: Redis restarted without persistence (enable appendonly) "
        "or was flushed; submit the job again"
    )


def _safe_name(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "._-" else "_" for c in os.path.basename(name))[:80]
    return keep or "image"


def job_counts(job: dict[str, str]) -> gateway_pb2.JobCounts:
    counts = gateway_pb2.JobCounts(in_flight=max(0, int(job.get("in_flight", 0))))
    for name in jobs.COUNTERS:
        if name in gateway_pb2.JobCounts.DESCRIPTOR.fields_by_name:
            setattr(counts, name, int(job.get(name, 0)))
    for key, value in job.items():
        if key.startswith("done:"):
            counts.done_by_stage[key[5:]] = int(value)
    return counts


def job_message(job_id: str, job: dict[str, str]) -> gateway_pb2.Job:
    msg = gateway_pb2.Job(
        job_id=job_id,
        state=STATE_TO_PROTO.get(job.get("state", ""), gateway_pb2.JOB_STATE_UNSPECIFIED),
        counts=job_counts(job),
        dataset_uri=job.get("dataset_uri", ""),
        created_at=job.get("created_at", ""),
        updated_at=job.get("updated_at", ""),
        error=job.get("error", ""),
    )
    if job.get("spec"):
        from google.protobuf import json_format

        json_format.Parse(job["spec"], msg.spec, ignore_unknown_fields=True)
    return msg


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, settings: Settings, queue: RedisQueue, store: JobStore, blobs: BlobStore) -> None:
        self.settings = settings
        self.queue = queue
        self.store = store
        self.blobs = blobs
        self._search_stub: search_pb2_grpc.SearchStub | None = None
        self._create_script: Any = None

    # -- jobs ---------------------------------------------------------------------------------
    def SubmitJob(
        self, request: gateway_pb2.SubmitJobRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.Job:
        if len(request.request_id) > 128:
            abort_with(context, "INVALID_ARGUMENT", "request_id: longer than 128 characters")
        job_id = ""
        if request.request_id:
            job_id = self.store.redis.get(jobs.request_key(request.request_id)) or ""
            existing = self.store.job(job_id) if job_id else {}
            if existing and existing.get("state") != jobs.QUEUED:
                return job_message(job_id, existing)
            # else: new, or a retry of a submission whose gateway died half-way: finish creating it
        job_id = job_id or time.strftime(jobs.JOB_ID_TIME_FORMAT + "-", time.gmtime()) + uuid.uuid4().hex[:8]
        default_uri = self.blobs.uri(f"datasets/{job_id}")
        try:
            spec = jobs.validate_spec(
                request.spec, default_dataset_uri=default_uri, max_image_bytes=self.settings.max_image_bytes
            )
            self._check_locations(request.spec, spec)
            inputs = self._stage_inputs(job_id, request.spec, spec)
        except SpecError as exc:
            abort_with(context, "INVALID_ARGUMENT", str(exc))
        # Refuse before planning: the plan of a million-sample job alone would take seconds and gigabytes.
        first_stage, first_count = (
            ("sample", spec.sampling["count"]) if spec.mode == "sampling" else ("align", len(inputs))
        )
        if not self.store.job(job_id) and not self.queue.has_room(first_stage, first_count):
            context.set_trailing_metadata((("retry-after-s", "30"),))
            abort_with(
                context,
                "RESOURCE_EXHAUSTED",
                f"stage {first_stage!r} is full ({self.queue.backlog(first_stage)} tasks waiting); "
                "retry in about 30 s or submit a smaller job",
            )
        if request.request_id:
            # Claim the request id before anything else exists: a concurrent retry then joins this job.
            key = jobs.request_key(request.request_id)
            if not self.store.redis.set(key, job_id, nx=True, ex=REQUEST_ID_TTL_S):
                claimed = self.store.redis.get(key) or job_id
                if claimed != job_id:
                    return self.SubmitJob(request, context)  # another call won the race: answer with its job
        self._create(job_id, request, spec, first_plans(spec, job_id, inputs, SUBMIT_CHUNK))
        return job_message(job_id, self.store.job(job_id))

    def _check_locations(self, spec_msg: gateway_pb2.JobSpec, spec: ResolvedSpec) -> None:
        """Where a job reads and writes: a backend that exists and, with SFHQ_DATA_ROOTS set, a place
        inside those roots (or the blob store), so that a caller cannot make the services write or list
        anywhere on their disks."""
        allowed = [self.blobs.uri_root(), *self.settings.data_roots]
        locations = [("output.dataset_uri", spec.dataset_uri)]
        if spec_msg.input_folder:
            locations.append(("input_folder", spec_msg.input_folder))
        locations += [
            (f"inputs[{i}].uri", image.uri)
            for i, image in enumerate(spec_msg.inputs)
            if image.WhichOneof("source") == "uri" and "://" in image.uri
        ]
        for field, uri in locations:
            try:
                fsspec.core.url_to_fs(uri)
            except Exception as exc:  # e.g. s3:// without s3fs installed, or an unknown protocol
                raise SpecError(f"{field}: cannot use {uri!r}: {type(exc).__name__}: {exc}") from exc
            if self.settings.data_roots and not jobs.location_within(uri, allowed):
                raise SpecError(
                    f"{field}: {uri!r} is outside the allowed data roots "
                    f"({', '.join(self.settings.data_roots)}; see SFHQ_DATA_ROOTS)"
                )

    def _stage_inputs(
        self, job_id: str, spec_msg: gateway_pb2.JobSpec, spec: ResolvedSpec
    ) -> list[dict[str, Any]]:
        """Puts inline images in the blob store and lists the input folder; returns [{uri, name}]."""
        if spec.mode == "sampling":
            return []
        inputs = []
        for n, image in enumerate(spec_msg.inputs):
            if image.WhichOneof("source") == "data":
                key = f"jobs/{job_id}/inputs/{n:06d}-{_safe_name(image.name)}"
                self.blobs.put(key, image.data)
                inputs.append({"uri": key, "name": image.name or f"inputs[{n}]"})
            else:
                inputs.append({"uri": image.uri, "name": image.name or image.uri})
        if spec_msg.input_folder:
            try:
                fs, root = fsspec.core.url_to_fs(spec_msg.input_folder)
                names = sorted(_list_images(fs, root))
            except SpecError:
                raise
            except Exception as exc:  # unknown protocol, missing fsspec backend, unreachable host...
                raise SpecError(
                    f"input_folder: cannot list {spec_msg.input_folder!r}: {type(exc).__name__}: {exc}"
                ) from exc
            if len(inputs) + len(names) > jobs.MAX_INPUTS:
                raise SpecError(f"inputs: {len(inputs) + len(names)} images is more than {jobs.MAX_INPUTS}")
            # The gateway may read the folder (it passed the data-roots check); the workers read only the
            # blob store. So each image is copied in, capped just past the size limit: an oversized file
            # then fails its own item at the align stage ("too large") instead of the whole submission.
            for n, path in enumerate(names, start=len(inputs)):
                key = f"jobs/{job_id}/inputs/{n:06d}-{_safe_name(path)}"
                with fs.open(path, "rb") as f:
                    self.blobs.put(key, f.read(self.settings.max_image_bytes + 1))
                inputs.append({"uri": key, "name": os.path.basename(path)})
            if not names:
                raise SpecError(
                    f"input_folder: no images ({', '.join(jobs.IMAGE_EXTENSIONS)}) in {spec_msg.input_folder!r}"
                )
        if len(inputs) > jobs.MAX_INPUTS:
            raise SpecError(f"inputs: {len(inputs)} images is more than {jobs.MAX_INPUTS}")
        return inputs

    def _create(
        self, job_id: str, request: gateway_pb2.SubmitJobRequest, spec: ResolvedSpec, plans: list[Plan]
    ) -> None:
        """Write the job and enqueue its first tasks. Safe to run again for the same job after a crash:
        the record is written once, and each chunk of tasks is applied once (it has an idempotency id)."""
        r = self.store.redis
        created = now_iso()
        self._create_record(
            keys=[jobs.job_key(job_id)],
            args=[
                json.dumps(
                    {
                        "spec": jobs.spec_for_display(request.spec),
                        "resolved": spec.to_json(),
                        "state": jobs.QUEUED,
                        "created_at": created,
                        "updated_at": created,
                        "dataset_uri": spec.dataset_uri,
                        "error": "",
                        "in_flight": 0,
                        **{name: 0 for name in jobs.COUNTERS},
                    }
                )
            ],
        )
        r.zadd(jobs.JOBS_INDEX, {job_id: time.time()}, nx=True)
        # Enqueue in chunks; the job stays QUEUED meanwhile so early results cannot finish it too soon.
        for number, chunk in enumerate(plans):
            self.store.apply(job_id, chunk, task_id=f"{job_id}/create/{number * SUBMIT_CHUNK}")
        self.store.set_state(job_id, jobs.RUNNING, only_from={jobs.QUEUED})
        self.store.apply(job_id, Plan())  # finishes at once if every task already completed

    @property
    def _create_record(self) -> Any:
        if self._create_script is None:
            self._create_script = self.store.redis.register_script(CREATE_JOB_LUA)
        return self._create_script

    def GetJob(self, request: gateway_pb2.GetJobRequest, context: grpc.ServicerContext) -> gateway_pb2.Job:
        return job_message(request.job_id, self._job_or_abort(request.job_id, context))

    def _job_or_abort(self, job_id: str, context: grpc.ServicerContext) -> dict[str, str]:
        if not job_id or len(job_id) > 64:
            abort_with(context, "INVALID_ARGUMENT", "job_id: missing or too long")
        job = self.store.job(job_id)
        if not job:
            if self.store.state_lost(job_id):
                abort_with(context, "DATA_LOSS", lost_state_message(job_id))
            hint = (
                (
                    " (its id predates this Redis data set: if it existed, Redis lost it in a restart "
                    "without persistence)"
                )
                if self.store.predates_data(job_id)
                else ""
            )
            abort_with(context, "NOT_FOUND", f"job {job_id!r} not found{hint}")
        return job

    def WatchJob(self, request: gateway_pb2.WatchJobRequest, context: grpc.ServicerContext):
        self._job_or_abort(request.job_id, context)
        last = request.after_event_id or "0-0"
        if len(last) > 64 or not all(part.isdigit() for part in last.split("-", 1)):
            abort_with(context, "INVALID_ARGUMENT", f"after_event_id: {last!r} is not a stream id")
        key = jobs.events_key(request.job_id)
        while context.is_active():
            entries = self.store.redis.xread({key: last}, count=200, block=1000)
            job = self.store.job(request.job_id)
            if not job:
                abort_with(context, "DATA_LOSS", lost_state_message(request.job_id))
            counts = job_counts(job)
            for _, events in entries:
                for event_id, fields in events:
                    last = event_id
                    yield self._event(request.job_id, event_id, fields, counts)
            if not entries and job.get("state") in jobs.TERMINAL:
                return

    @staticmethod
    def _event(
        job_id: str, event_id: str, fields: dict[str, str], counts: gateway_pb2.JobCounts
    ) -> gateway_pb2.JobEvent:
        event = gateway_pb2.JobEvent(
            event_id=event_id,
            job_id=job_id,
            kind=fields.get("kind", ""),
            item_id=fields.get("item_id", ""),
            message=fields.get("message", ""),
            stage=STAGE_TO_PROTO.get(fields.get("stage", ""), common_pb2.STAGE_UNSPECIFIED),
            time_ms=int(fields.get("time_ms", "0") or 0),
            counts=counts,
        )
        if fields.get("state"):
            event.state = STATE_TO_PROTO.get(fields["state"], gateway_pb2.JOB_STATE_UNSPECIFIED)
        if fields.get("kind") == "item_failed":
            event.error.CopyFrom(
                common_pb2.Error(
                    stage=event.stage, code=fields.get("code", ""), message=fields.get("message", "")
                )
            )
        return event

    def CancelJob(
        self, request: gateway_pb2.CancelJobRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.Job:
        self._job_or_abort(request.job_id, context)
        if self.store.set_state(request.job_id, jobs.CANCELLING, only_from={jobs.QUEUED, jobs.RUNNING}):
            self.queue.mark_cancelled(request.job_id)
            self.store.apply(request.job_id, Plan())  # drained already -> CANCELLED now
        return job_message(request.job_id, self.store.job(request.job_id))

    def ListJobs(
        self, request: gateway_pb2.ListJobsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListJobsResponse:
        limit = request.limit or 50
        if not 1 <= limit <= 1000:
            abort_with(context, "INVALID_ARGUMENT", "limit: must be in [1, 1000]")
        wanted = PROTO_TO_STATE.get(request.state) if request.state else None
        if request.state and wanted is None:
            abort_with(context, "INVALID_ARGUMENT", f"state: unknown value {request.state}")
        out = gateway_pb2.ListJobsResponse()
        for job_id in self.store.redis.zrevrange(jobs.JOBS_INDEX, 0, -1):
            job = self.store.job(job_id)
            if not job or (wanted and job.get("state") != wanted):
                continue
            out.jobs.append(job_message(job_id, job))
            if len(out.jobs) >= limit:
                break
        return out

    # -- items --------------------------------------------------------------------------------
    def _item_message(self, job_id: str, item: dict[str, Any]) -> gateway_pb2.Item:
        msg = gateway_pb2.Item(
            item_id=item["id"],
            job_id=job_id,
            parent_id=item["parent"],
            state=item["state"],
            stage=STAGE_TO_PROTO.get(item["stage"], common_pb2.STAGE_UNSPECIFIED),
            stem=item["stem"],
            duplicate_of=item["duplicate_of"] or "",
            provenance_json=json.dumps(
                {"source": item["source"], "strategy": item["strategy"]}, sort_keys=True
            ),
        )
        if item["taste_score"] is not None:
            msg.taste_score = float(item["taste_score"])
        if item["error"]:
            err = item["error"]
            msg.error.CopyFrom(
                common_pb2.Error(
                    stage=STAGE_TO_PROTO.get(err["stage"], common_pb2.STAGE_UNSPECIFIED),
                    code=err["code"],
                    message=err["message"],
                )
            )
        return msg

    def ListItems(
        self, request: gateway_pb2.ListItemsRequest, context: grpc.ServicerContext
    ) -> gateway_pb2.ListItemsResponse:
        self._job_or_abort(request.job_id, context)
        limit = request.limit or 1000
        if not 1 <= limit <= 10000 or request.offset < 0:
            abort_with(context, "INVALID_ARGUMENT", "limit/offset: limit must be in [1, 10000], offset >= 0")
        items = [
            i for i in self.store.items(request.job_id) if not request.state or i["state"] == request.state
        ]
        out = gateway_pb2.ListItemsResponse()
        for item in items[request.offset : request.offset + limit]:
            out.items.append(self._item_message(request.job_id, item))
        return out

    def GetItem(self, request: gateway_pb2.GetItemRequest, context: grpc.ServicerContext) -> gateway_pb2.Item:
        job = self._job_or_abort(request.job_id, context)
        item_id = request.item_id.removeprefix(f"{request.job_id}/")  # search hits carry the index id
        item = self.store.item(request.job_id, item_id)
        if item is None and item_id.startswith("SFHQ_"):
            item = next((i for i in self.store.items(request.job_id) if i["stem"] == item_id), None)
        if item is None:
            abort_with(context, "NOT_FOUND", f"item {request.item_id!r} not found in job {request.job_id!r}")
        msg = self._item_message(request.job_id, item)
        written = (
            (item["outputs"].get("annotate") or {}).get("files", {}) if item["state"] == "written" else {}
        )
        dataset = DatasetWriter(job["dataset_uri"]).store
        try:
            if request.include_image:
                if written and "image" in written:
                    msg.image.data = dataset.get(written["image"])
                else:
                    key = (item["outputs"].get("synthesize") or {}).get("image") or (
                        item["outputs"].get("align") or {}
                    ).get("aligned")
                    if key:  # an intermediate (QOI) becomes PNG: clients need no QOI reader
                        msg.image.data = portable_image_bytes(
                            self.blobs.get(key), max_pixels=self.settings.max_image_pixels
                        )
            if request.include_annotations and written:
                msg.segmentation.data = dataset.get(written["segmentation"])
                with np.load(io.BytesIO(dataset.get(written["landmarks"])), allow_pickle=False) as npz:
                    msg.landmarks.CopyFrom(numpy_to_tensor(npz["landmarks"]))
                if "latent" in written:
                    msg.latent.CopyFrom(
                        numpy_to_tensor(
                            np.load(io.BytesIO(dataset.get(written["latent"])), allow_pickle=False)
                        )
                    )
        except (FileNotFoundError, KeyError) as exc:
            abort_with(context, "DATA_LOSS", f"files of item {item['id']} are missing: {exc}")
        return msg

    # -- proxied to the search service -------------------------------------------------------
    def _search(self) -> search_pb2_grpc.SearchStub:
        if self._search_stub is None:
            self._search_stub = search_pb2_grpc.SearchStub(
                client_channel(self.settings.addr_for("search"), self.settings)
            )
        return self._search_stub

    def _proxy(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        remaining = context.time_remaining()
        timeout = min(remaining, 60.0) if remaining is not None else 60.0
        try:
            return getattr(self._search(), method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNAVAILABLE
            abort_with(context, code.name if code else "UNAVAILABLE", f"search service: {exc.details()}")

    def Search(
        self, request: search_pb2.SearchRequest, context: grpc.ServicerContext
    ) -> search_pb2.SearchResponse:
        return self._proxy("Search", request, context)

    def Label(
        self, request: search_pb2.LabelRequest, context: grpc.ServicerContext
    ) -> search_pb2.LabelResponse:
        return self._proxy("Label", request, context)


def main(settings: Settings) -> None:
    if not settings.redis_url:
        raise ConfigError("the gateway keeps job state in Redis: set REDIS_URL (or SFHQ_REDIS_URL)")
    process = ServiceProcess("gateway", settings)
    client = connect_redis(settings.redis_url)
    queue = RedisQueue(
        client,
        stream_maxlen=settings.stream_maxlen,
        visibility_timeout_s=settings.visibility_timeout_s,
        max_deliveries=settings.max_deliveries,
    )
    queue.ensure_groups()
    store = JobStore(client)
    store.epoch_ms()  # record when this Redis data set began (see JobStore.state_lost)
    blobs = BlobStore(settings.blob_url)
    servicer = GatewayServicer(settings, queue, store, blobs)
    gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, process.server)
    coordinator = Coordinator(
        queue,
        store,
        blobs,
        consumer=f"gateway-{socket.gethostname()}-{os.getpid()}",
        provenance={"code_version": __version__},
    )
    process.on_stop(coordinator.stop)
    coordinator.start()
    log.info(
        "gateway ready on port %s (events kept: %d per job)", settings.port_for("gateway"), EVENTS_MAXLEN
    )
    process.serve_forever(["sfhq.v1.Gateway"])
