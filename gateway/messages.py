"""Protobuf for the gateway's API, from job state in Redis: jobs, counts, events, items."""

from __future__ import annotations

import json
import math
from typing import Any

from google.protobuf import json_format

from gateway import jobs
from services.common.errors import InvalidInput
from sfhq.v1 import common_pb2, gateway_pb2

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
    "diffuse": common_pb2.STAGE_DIFFUSE,
    "align": common_pb2.STAGE_ALIGN,
    "encode": common_pb2.STAGE_ENCODE,
    "sample": common_pb2.STAGE_SAMPLE,
    "synthesize": common_pb2.STAGE_SYNTHESIZE,
    "embed": common_pb2.STAGE_EMBED,
    "curate": common_pb2.STAGE_CURATE,
    "annotate": common_pb2.STAGE_ANNOTATE,
}
MODE_TO_PROTO = {
    "inspiration": gateway_pb2.JOB_MODE_INSPIRATION,
    "sampling": gateway_pb2.JOB_MODE_SAMPLING,
    "annotate_only": gateway_pb2.JOB_MODE_ANNOTATE_ONLY,
    "prompts": gateway_pb2.JOB_MODE_PROMPTS,
}


def state(name: str) -> gateway_pb2.JobState:
    return STATE_TO_PROTO.get(name, gateway_pb2.JOB_STATE_UNSPECIFIED)


def stage(name: str) -> common_pb2.Stage:
    return STAGE_TO_PROTO.get(name, common_pb2.STAGE_UNSPECIFIED)


def job_counts(job: dict[str, str]) -> gateway_pb2.JobCounts:
    counts = gateway_pb2.JobCounts(in_flight=max(0, int(job.get("in_flight", 0))))
    for name in jobs.COUNTERS:
        if name in gateway_pb2.JobCounts.DESCRIPTOR.fields_by_name:
            setattr(counts, name, int(job.get(name, 0)))
    for key, value in job.items():
        if key.startswith("done:"):
            counts.done_by_stage[key[5:]] = int(value)
    return counts


def job(job_id: str, record: dict[str, str], *, with_spec: bool = True) -> gateway_pb2.Job:
    """A job from its Redis hash; `with_spec=False` gives the summary ListJobs returns."""
    message = gateway_pb2.Job(
        job_id=job_id,
        state=state(record.get("state", "")),
        counts=job_counts(record),
        dataset_uri=record.get("dataset_uri", ""),
        created_at=record.get("created_at", ""),
        updated_at=record.get("updated_at", ""),
        error=record.get("error", ""),
        owner=record.get("owner", ""),
        name=record.get("name", ""),
        mode=MODE_TO_PROTO.get(record.get("mode", ""), gateway_pb2.JOB_MODE_UNSPECIFIED),
        dataset_id=record.get("dataset_id", ""),
    )
    if record.get("state") == jobs.FINALIZING and record.get("cancel_requested") == "1":
        message.state = gateway_pb2.JOB_STATE_CANCELLING  # a cancelled job writing its manifest
    if with_spec and record.get("spec"):
        json_format.Parse(record["spec"], message.spec, ignore_unknown_fields=True)
    return message


def event(
    job_id: str, event_id: str, fields: dict[str, str], counts: gateway_pb2.JobCounts
) -> gateway_pb2.JobEvent:
    message = gateway_pb2.JobEvent(
        event_id=event_id,
        job_id=job_id,
        kind=fields.get("kind", ""),
        item_id=fields.get("item_id", ""),
        message=fields.get("message", ""),
        stage=stage(fields.get("stage", "")),
        time_ms=int(fields.get("time_ms", "0") or 0),
        counts=counts,
    )
    if fields.get("state"):
        message.state = state(fields["state"])
    if fields.get("kind") == "item_failed":
        message.error.CopyFrom(
            common_pb2.Error(
                stage=message.stage, code=fields.get("code", ""), message=fields.get("message", "")
            )
        )
    return message


def item(job_id: str, record: dict[str, Any]) -> gateway_pb2.Item:
    message = gateway_pb2.Item(
        item_id=record["id"],
        job_id=job_id,
        parent_id=record["parent"],
        state=record["state"],
        stage=stage(record["stage"]),
        stem=record["stem"],
        duplicate_of=record["duplicate_of"] or "",
        provenance_json=json.dumps(
            {"source": record["source"], "strategy": record["strategy"]}, sort_keys=True
        ),
    )
    if record["taste_score"] is not None:
        message.taste_score = float(record["taste_score"])
    pose = (record["outputs"].get("annotate") or {}).get("pose")
    if isinstance(pose, dict):
        message.pose.CopyFrom(common_pb2.HeadPose(**{k: float(pose[k]) for k in ("yaw", "pitch", "roll")}))
    if record["error"]:
        error = record["error"]
        message.error.CopyFrom(
            common_pb2.Error(stage=stage(error["stage"]), code=error["code"], message=error["message"])
        )
    return message


def lost_state_message(job_id: str) -> str:
    return (
        f"the state of job {job_id!r} was lost: Redis restarted without persistence (enable appendonly) "
        "or was flushed; submit the job again"
    )


MAX_ANGLE = 180.0


def angle_ranges(message: Any, prefix: str = "filter.") -> dict[str, tuple[float | None, float | None]]:
    """The head-pose ranges a request sets (`yaw`, `pitch`, `roll` AngleRange fields), checked:
    InvalidInput names the field of a bound that is not finite, outside [-180, 180] or reversed."""
    ranges: dict[str, tuple[float | None, float | None]] = {}
    for angle in ("yaw", "pitch", "roll"):
        if not message.HasField(angle):
            continue
        bounds = getattr(message, angle)
        low = bounds.min if bounds.HasField("min") else None
        high = bounds.max if bounds.HasField("max") else None
        for name, value in (("min", low), ("max", high)):
            if value is not None and not (math.isfinite(value) and -MAX_ANGLE <= value <= MAX_ANGLE):
                raise InvalidInput(f"{prefix}{angle}.{name}: {value} is not an angle in [-180, 180]")
        if low is not None and high is not None and low > high:
            raise InvalidInput(f"{prefix}{angle}: min {low} is above max {high}")
        if low is not None or high is not None:
            ranges[angle] = (low, high)
    return ranges
