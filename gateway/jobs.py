"""Job specs: validation, defaults, and the Redis keys that hold job state.

The gateway is the only writer of these keys. A job is one hash, its items one hash
(item id -> JSON record), its progress one stream of events, and the ids of the task results
already applied one set (the idempotency record of the coordinator).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from gateway.prompts import PIPELINE_PARTS, resolve_prompts
from services.common.errors import InvalidInput
from services.common.strategies import SCHEMAS, check_params
from sfhq.v1 import common_pb2, gateway_pb2

# SFHQ's own two candidates per inspiration image (docs/sfhq-format.md, "Candidate types").
DEFAULT_STRATEGIES: tuple[tuple[str, dict[str, float]], ...] = (("e4e_strict_prior", {}), ("low_prior", {}))
DEFAULT_CORRECTION = ("encoder_truncation", {"coarse": 0.3, "middle": 0.3, "fine": 0.3})
# Part 3's default: three pull-backs towards the psi > 1 sample per layer group (`a` of
# docs/sfhq-format.md, "Part 3"), one candidate each; curation keeps the ones that look right.
DEFAULT_CORRECTIONS: tuple[tuple[str, dict[str, float]], ...] = (
    (
        "encoder_truncation",
        {"coarse": 0.1, "middle": 0.3, "fine": 0.5},
    ),  # the encoder's structure, the sample's texture
    DEFAULT_CORRECTION,
    (
        "encoder_truncation",
        {"coarse": 0.5, "middle": 0.5, "fine": 0.5},
    ),  # nearer the sample: more variety, more risk
)
SAMPLING_PART = 3  # SFHQ part 3 is the sampling part
MAX_INPUTS = 100_000
MAX_SAMPLES = 1_000_000
MAX_CANDIDATE_STRATEGIES = 16
MAX_NAME = 200
MAX_LABELS = 64
LANDMARK_CONVENTIONS = (
    "sfhq",
    "pixel_centres",
)  # services.annotator.landmarks110 (the gateway imports no model)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

# Internal job states (the API maps FINALIZING to RUNNING).
QUEUED, RUNNING, FINALIZING, CANCELLING = "QUEUED", "RUNNING", "FINALIZING", "CANCELLING"
SUCCEEDED, FAILED, CANCELLED = "SUCCEEDED", "FAILED", "CANCELLED"
TERMINAL = {SUCCEEDED, FAILED, CANCELLED}
COUNTERS = (
    "inputs",
    "items",
    "candidates",
    "accepted",
    "rejected_taste",
    "rejected_duplicate",
    "failed",
    "written",
    "cancelled",
    "review",
)


class SpecError(InvalidInput):
    """A job spec field is invalid; the message names the field."""


def job_key(job_id: str) -> str:
    return f"sfhq:job:{job_id}"


def items_key(job_id: str) -> str:
    return f"sfhq:job:{job_id}:items"


def applied_key(job_id: str) -> str:
    return f"sfhq:job:{job_id}:applied"


def events_key(job_id: str) -> str:
    return f"sfhq:job:{job_id}:events"


JOBS_INDEX = "sfhq:jobs"  # zset job_id -> created time (s)


def owner_jobs_key(owner: str) -> str:
    """zset job_id -> created time (s) of one user's jobs (ListJobs of a non-admin reads only this)."""
    return f"sfhq:jobs:owner:{owner}"


def feed_key(job_id: str) -> str:
    """list of the held first tasks of a job larger than a stage's cap (JSON: stream + fields)."""
    return f"sfhq:job:{job_id}:feed"


FEEDING = "sfhq:jobs:feeding"  # hash job_id -> the stage its held tasks go to
TO_FINALIZE = "sfhq:jobs:finalizing"  # set of drained jobs whose manifest is still to be written
EPOCH_KEY = "sfhq:epoch"  # set once per Redis dataset; its disappearance means Redis lost its data


def request_key(request_id: str) -> str:
    return f"sfhq:request:{request_id}"


JOB_ID_TIME_FORMAT = "%Y%m%d-%H%M%S"  # job ids are "<UTC creation time>-<8 hex digits>"


def job_created_ms(job_id: str) -> int | None:
    """The creation time (ms, second resolution) a gateway-made job id carries; None for other ids."""
    import calendar
    import time

    stamp, _, suffix = job_id.rpartition("-")
    if len(suffix) != 8 or len(stamp) != 15:
        return None
    try:
        return calendar.timegm(time.strptime(stamp, JOB_ID_TIME_FORMAT)) * 1000
    except ValueError:
        return None


def derive_seed(*parts: Any) -> int:
    """A stable 63-bit seed from the job seed and item identity (same job spec -> same candidates)."""
    digest = hashlib.blake2b("|".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class ResolvedSpec:
    """A validated job spec with every default filled in (what the coordinator reads)."""

    mode: str  # "inspiration" | "sampling" | "annotate_only" | "prompts"
    strategies: list[dict[str, Any]]
    sampling: dict[str, Any]
    taste_model: str  # "name@version" once submitted (the version the job uses), "" = none
    accept_threshold: float | None
    dedup_threshold: float  # negative = dedup off
    dataset_uri: str
    part: int
    image_size: int
    jpeg_quality: int
    annotation_size: int
    seed: int
    owner: str = ""  # the user who submitted the job
    reject_threshold: float | None = None  # below: rejected; up to accept_threshold: review
    write_mode: str = "new"  # "new" | "append" | "overwrite" (gateway/datasets.py)
    dataset_id: str = ""  # set when the job attaches to its dataset
    stem_base: int = 0  # the first stem index of the job's block in the dataset's numbering
    landmark_convention: str = "sfhq"  # "sfhq" (x * 4) or "pixel_centres" (docs/landmarks.md)
    prompts: dict[str, Any] = field(default_factory=dict)  # prompts jobs: gateway.prompts.resolve_prompts

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ResolvedSpec:
        return cls(**json.loads(text))


def _finite(value: float, field: str, lo: float, hi: float) -> float:
    if not math.isfinite(value) or not lo <= value <= hi:
        raise SpecError(f"{field}: {value} is outside [{lo}, {hi}]")
    return float(value)


def _strategy(msg: common_pb2.Strategy, field: str) -> dict[str, Any]:
    """A strategy checked against the generator's parameter table (services.common.strategies)."""
    if msg.name not in SCHEMAS:
        raise SpecError(f"{field}.name: unknown strategy {msg.name!r} (known: {', '.join(SCHEMAS)})")
    if len(msg.params) > 64 or any(len(key) > 64 for key in msg.params):
        raise SpecError(f"{field}.params: too many parameters or a name too long")
    try:
        params = check_params(msg.name, dict(msg.params))
    except ValueError as exc:
        raise SpecError(f"{field}.params: {exc}") from None
    return {"name": msg.name, "params": params, "seed": int(msg.seed)}


def validate_spec(
    spec: gateway_pb2.JobSpec, *, default_dataset_uri: str, max_image_bytes: int, owner: str = ""
) -> ResolvedSpec:
    """Checks every field; raises SpecError naming the first bad one."""
    if len(spec.name) > MAX_NAME:
        raise SpecError(f"name: longer than {MAX_NAME} characters")
    if len(spec.labels) > MAX_LABELS or any(len(k) > 128 or len(v) > 1024 for k, v in spec.labels.items()):
        raise SpecError("labels: too many or too long")
    modes = {
        gateway_pb2.JOB_MODE_INSPIRATION: "inspiration",
        gateway_pb2.JOB_MODE_SAMPLING: "sampling",
        gateway_pb2.JOB_MODE_ANNOTATE_ONLY: "annotate_only",
        gateway_pb2.JOB_MODE_PROMPTS: "prompts",
    }
    if spec.mode not in modes:
        raise SpecError(
            f"mode: must be one of INSPIRATION, SAMPLING, ANNOTATE_ONLY, PROMPTS (got {spec.mode})"
        )
    mode = modes[spec.mode]
    if mode != "prompts" and spec.HasField("prompts"):
        raise SpecError(f"prompts: only a PROMPTS job takes prompts (this is {mode.upper()})")
    prompts: dict[str, Any] = {}
    if mode == "prompts":
        if spec.inputs or spec.input_folder:
            raise SpecError("inputs: a PROMPTS job takes no input images (its images come from its prompts)")
        prompts = resolve_prompts(spec.prompts, MAX_SAMPLES)
    elif mode == "sampling":
        if spec.inputs or spec.input_folder:
            raise SpecError("inputs: a SAMPLING job takes no input images")
        if not 1 <= spec.sampling.count <= MAX_SAMPLES:
            raise SpecError(f"sampling.count: must be in [1, {MAX_SAMPLES}]")
    else:
        if not spec.inputs and not spec.input_folder:
            raise SpecError("inputs: give input images or an input_folder")
        if len(spec.inputs) > MAX_INPUTS:
            raise SpecError(f"inputs: more than {MAX_INPUTS} images; use input_folder")
        for i, image in enumerate(spec.inputs):
            kind = image.WhichOneof("source")
            if kind is None:
                raise SpecError(f"inputs[{i}]: neither data nor uri is set")
            if kind == "data" and not image.data:
                raise SpecError(f"inputs[{i}].data: empty")
            if kind == "data" and len(image.data) > max_image_bytes:
                raise SpecError(
                    f"inputs[{i}].data: {len(image.data)} bytes is over the {max_image_bytes}-byte limit"
                )
            if kind == "uri" and (not image.uri or len(image.uri) > 4096 or ".." in image.uri.split("/")):
                raise SpecError(f"inputs[{i}].uri: invalid")
        if len(spec.input_folder) > 4096 or ".." in spec.input_folder.split("/"):
            raise SpecError("input_folder: invalid path")

    if len(spec.strategies) > MAX_CANDIDATE_STRATEGIES:
        raise SpecError(f"strategies: at most {MAX_CANDIDATE_STRATEGIES}")
    strategies = [_strategy(s, f"strategies[{i}]") for i, s in enumerate(spec.strategies)]
    if not strategies:
        strategies = [{"name": n, "params": dict(p), "seed": 0} for n, p in DEFAULT_STRATEGIES]

    sampling: dict[str, Any] = {}
    if mode == "sampling":
        s = spec.sampling
        psi_min = _finite(s.psi_min or 1.2, "sampling.psi_min", 0.0, 4.0)
        psi_max = _finite(s.psi_max or 2.0, "sampling.psi_max", 0.0, 4.0)
        if psi_max < psi_min:
            raise SpecError("sampling.psi_max: smaller than psi_min")
        if s.HasField("correction") and s.corrections:
            raise SpecError("sampling.corrections: give either correction or corrections, not both")
        if len(s.corrections) > MAX_CANDIDATE_STRATEGIES:
            raise SpecError(f"sampling.corrections: at most {MAX_CANDIDATE_STRATEGIES}")
        if s.HasField("correction"):
            corrections = [_strategy(s.correction, "sampling.correction")]
        elif s.corrections:
            corrections = [_strategy(c, f"sampling.corrections[{i}]") for i, c in enumerate(s.corrections)]
        else:
            corrections = [{"name": n, "params": dict(p), "seed": 0} for n, p in DEFAULT_CORRECTIONS]
        sampling = {
            "count": int(s.count),
            "first_seed": int(s.first_seed),
            "psi_min": psi_min,
            "psi_max": psi_max,
            "corrections": corrections,
        }

    cur = spec.curation
    if len(cur.taste_model) > 128:
        raise SpecError("curation.taste_model: too long")
    accept = (
        _finite(cur.accept_threshold, "curation.accept_threshold", 0.0, 1.0)
        if cur.HasField("accept_threshold")
        else None
    )
    reject = (
        _finite(cur.reject_threshold, "curation.reject_threshold", 0.0, 1.0)
        if cur.HasField("reject_threshold")
        else None
    )
    if reject is not None and accept is not None and reject > accept:
        raise SpecError(
            "curation.reject_threshold: above accept_threshold (the review band lies between them)"
        )
    if (accept is not None or reject is not None) and not cur.taste_model:
        raise SpecError("curation.accept_threshold: thresholds need a taste_model")
    dedup = (
        _finite(cur.dedup_threshold, "curation.dedup_threshold", 0.0, 1.0)
        if cur.HasField("dedup_threshold")
        else 0.92
    )
    if cur.disable_dedup:
        dedup = -1.0

    out = spec.output
    if len(out.dataset_uri) > 4096 or ".." in out.dataset_uri.split("/"):
        raise SpecError("output.dataset_uri: invalid")
    part = out.part or (
        SAMPLING_PART if mode == "sampling" else PIPELINE_PARTS[prompts["pipeline"]] if prompts else 1
    )
    if not 0 <= part <= 9999:
        raise SpecError("output.part: must be in [0, 9999]")
    image_size = out.image_size or 1024
    if not 64 <= image_size <= 4096:
        raise SpecError("output.image_size: must be in [64, 4096]")
    quality = out.jpeg_quality or 95
    if not 1 <= quality <= 100:
        raise SpecError("output.jpeg_quality: must be in [1, 100]")
    annotation = out.annotation_size or 256
    if not 64 <= annotation <= 1024:
        raise SpecError("output.annotation_size: must be in [64, 1024]")
    convention = out.landmark_convention or "sfhq"
    if convention not in LANDMARK_CONVENTIONS:
        raise SpecError(
            f"output.landmark_convention: {out.landmark_convention[:40]!r} is not one of {', '.join(LANDMARK_CONVENTIONS)}"
        )
    write_modes = {
        gateway_pb2.WRITE_MODE_NEW: "new",
        gateway_pb2.WRITE_MODE_APPEND: "append",
        gateway_pb2.WRITE_MODE_OVERWRITE: "overwrite",
    }
    if out.write_mode not in write_modes:
        raise SpecError(f"output.write_mode: must be NEW, APPEND or OVERWRITE (got {out.write_mode})")
    return ResolvedSpec(
        mode=mode,
        strategies=strategies,
        sampling=sampling,
        taste_model=cur.taste_model,
        accept_threshold=accept,
        dedup_threshold=dedup,
        dataset_uri=out.dataset_uri or default_dataset_uri,
        part=part,
        image_size=image_size,
        jpeg_quality=quality,
        annotation_size=annotation,
        seed=int(spec.seed),
        owner=owner,
        reject_threshold=reject,
        write_mode=write_modes[out.write_mode],
        landmark_convention=convention,
        prompts=prompts,
    )


def spec_for_display(spec: gateway_pb2.JobSpec) -> str:
    """The spec as JSON without inline image bytes (those can be large)."""
    light = gateway_pb2.JobSpec()
    light.CopyFrom(spec)
    for image in light.inputs:
        if image.WhichOneof("source") == "data":
            size = len(image.data)
            image.ClearField("data")
            image.name = image.name or f"<{size} bytes>"
    return json_format.MessageToJson(light, preserving_proto_field_name=True, indent=None)
