"""Which stage comes next: the pipeline as pure functions over item records.

No Redis and no gRPC here, so the whole flow is unit-testable. The coordinator reads an item
record and a task result, asks `advance` for a Plan (records to write, tasks to enqueue, counters
to bump, events to emit) and applies that plan atomically. Payloads and outputs are the typed
contracts of `services.common.contracts`, shared with the stage handlers.

Flows (docs/pipeline.md):
  inspiration   input:  align(256) -> encode -> synthesize K strategies -> K candidates
  sampling      sample: sample(seed, psi) -> encode -> synthesize(corrections) -> one candidate per correction
  annotate_only input:  align(image_size) -> (the item itself is the candidate)
  prompts       prompt: diffuse(prompt, seed) -> then as inspiration: align(256) -> encode -> synthesize
  every candidate:      embed -> curate -> annotate (writes the SFHQ files) -> written

Planning is linear in a job's items: each item's first task is made with the item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.jobs import ResolvedSpec, derive_seed
from gateway.prompts import image_sources
from services.common.contracts import (
    FEATURE_KEY,
    AlignOutput,
    AlignPayload,
    AnnotatePayload,
    CurateOutput,
    CuratePayload,
    Decision,
    DiffuseOutput,
    DiffusePayload,
    EmbedOutput,
    EmbedPayload,
    EncodeOutput,
    EncodePayload,
    ItemState,
    Payload,
    SampleOutput,
    SamplePayload,
    StrategyRecord,
    SynthesizeOutput,
    SynthesizePayload,
)
from services.common.dataset import stem_for
from services.common.queue import Task, TaskResult

PSI_STREAM = 0x7051  # the random stream of sample psis (any constant: it only has to stay the same)
E4E_ALIGN_SIZE = 256  # e4e's own alignment setting (docs/alignment.md): output 256, no supersampling

ItemRecord = dict[str, Any]


@dataclass
class Plan:
    items: dict[str, ItemRecord] = field(default_factory=dict)
    tasks: list[Task] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    # First tasks of a job larger than a stage's cap: kept in the job's feed list and moved into the
    # stage as its backlog drains (Coordinator.feed_jobs); they count as in flight already.
    held: list[Task] = field(default_factory=list)

    def bump(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    def enqueue(self, job_id: str, item: ItemRecord, stage: str, payload: Payload) -> None:
        """Queue `item`'s next task; the item records the stage it waits for."""
        item["stage"] = stage
        # A contract is JSON by construction: no need for Task.make's serialisation check.
        self.tasks.append(
            Task(f"{job_id}/{item['id']}/{stage}", job_id, item["id"], stage, payload.to_dict())
        )


def new_item(
    item_id: str,
    kind: str,
    ordinal: int,
    *,
    parent: str = "",
    source: dict[str, Any] | None = None,
    strategy: dict[str, Any] | None = None,
) -> ItemRecord:
    return {
        "id": item_id,
        "parent": parent,
        "kind": kind,
        "ordinal": ordinal,
        "state": ItemState.PENDING,
        "stage": "",
        "source": source or {},
        "strategy": strategy,
        "outputs": {},
        "stem": "",
        "taste_score": None,
        "duplicate_of": None,
        "similarity": None,
        "error": None,
    }


def input_item_id(ordinal: int) -> str:
    return f"i{ordinal:06d}"


def sample_item_id(ordinal: int) -> str:
    return f"s{ordinal:07d}"


def prompt_item_id(ordinal: int) -> str:
    return f"p{ordinal:07d}"


def sampling_corrections(spec: ResolvedSpec) -> list[dict[str, Any]]:
    """A sampling job's corrections, one candidate each (jobs submitted before corrections were a
    list carry one `correction`)."""
    s = spec.sampling
    return list(s["corrections"]) if "corrections" in s else [s["correction"]]


def candidates_per_parent(spec: ResolvedSpec) -> int:
    return len(sampling_corrections(spec)) if spec.mode == "sampling" else len(spec.strategies)


def stems_needed(spec: ResolvedSpec, inputs: int) -> int:
    """How many stems a job may use: one per possible candidate (its block in the dataset's numbering)."""
    if spec.mode == "sampling":
        return int(spec.sampling["count"]) * candidates_per_parent(spec)
    if spec.mode == "prompts":
        return int(spec.prompts["count"]) * candidates_per_parent(spec)
    return inputs * (1 if spec.mode == "annotate_only" else len(spec.strategies))


def stem_of(spec: ResolvedSpec, item: ItemRecord) -> str:
    """A candidate's stem: its place in the job (deterministic) within the job's block of the dataset's
    numbering (unique across jobs: gateway/datasets.py reserves the block at submit)."""
    return stem_for(spec.part, spec.stem_base + item["ordinal"])


def first_tasks(spec: ResolvedSpec, job_id: str, inputs: list[dict[str, Any]]) -> Plan:
    """The plan of a new job: one item per input (or per sample) and its first task."""
    return first_plans(spec, job_id, inputs)[0]


def first_plans(
    spec: ResolvedSpec, job_id: str, inputs: list[dict[str, Any]], chunk_size: int | None = None
) -> list[Plan]:
    """A new job's items and first tasks, in plans of at most `chunk_size` items (each with the
    counters of its own items), so that the gateway can enqueue a huge job in atomic steps.

    `inputs` are {"uri": ..., "name": ...} for image jobs; ignored for sampling and prompts jobs. The payloads
    are checked against their contract in one pass; every step is linear in the job's size.
    """
    if spec.mode == "sampling":
        s = spec.sampling
        seeds = range(s["first_seed"], s["first_seed"] + s["count"])
        items = [
            new_item(sample_item_id(n), "sample", n, source={"seed": seed, "psi": psi})
            for n, (seed, psi) in enumerate(zip(seeds, sample_psis(spec), strict=True))
        ]
        stage = "sample"
        payloads = SamplePayload.validate_many([item["source"] for item in items], stage)
    elif spec.mode == "prompts":
        items = [
            new_item(prompt_item_id(n), "prompt", n, source=source)
            for n, source in enumerate(image_sources(spec.prompts))
        ]
        stage = "diffuse"
        rows = [{k: v for k, v in item["source"].items() if k != "prompt_index"} for item in items]
        payloads = DiffusePayload.validate_many(rows, stage)
    else:
        size = E4E_ALIGN_SIZE if spec.mode == "inspiration" else spec.image_size
        transform = (
            size if spec.mode == "inspiration" else 4 * size
        )  # FFHQ supersamples 4x for its 1024 crops
        items = [new_item(input_item_id(n), "input", n, source=source) for n, source in enumerate(inputs)]
        stage = "align"
        rows = [
            {"input": source["uri"], "output_size": size, "transform_size": transform} for source in inputs
        ]
        payloads = AlignPayload.validate_many(rows, stage)
    step = chunk_size or max(1, len(items))
    plans = []
    for start in range(0, max(1, len(items)), step):
        plan = Plan()
        for item, payload in zip(items[start : start + step], payloads[start : start + step], strict=True):
            item["stage"] = stage
            plan.items[item["id"]] = item
            plan.tasks.append(Task(f"{job_id}/{item['id']}/{stage}", job_id, item["id"], stage, payload))
        plan.counters = {"inputs": len(plan.items), "items": len(plan.items), "in_flight": len(plan.tasks)}
        plans.append(plan)
    return plans


def hold_beyond(plans: list[Plan], direct: int) -> None:
    """Keep the first `direct` tasks of a new job's plans for the stage now, hold the rest (Plan.held)."""
    for plan in plans:
        keep = max(0, min(direct, len(plan.tasks)))
        plan.tasks, plan.held = plan.tasks[:keep], plan.tasks[keep:]
        direct -= keep


def sample_psis(spec: ResolvedSpec) -> list[float]:
    """Each sample's psi: a draw from [psi_min, psi_max] that depends only on the job seed and the
    sample's position (the same spec gives the same psis, whatever the count)."""
    s = spec.sampling
    fractions = np.random.default_rng([spec.seed & 0xFFFF_FFFF_FFFF_FFFF, PSI_STREAM]).random(s["count"])
    return [round(float(p), 4) for p in s["psi_min"] + fractions * (s["psi_max"] - s["psi_min"])]


def candidate_image(item: ItemRecord) -> str:
    """The image a candidate item stands for: its synthesized image, or its aligned input (annotate_only)."""
    if "synthesize" in item["outputs"]:
        return str(item["outputs"]["synthesize"]["image"])
    return str(item["outputs"]["align"]["aligned"])


def _strategies_for(spec: ResolvedSpec, item: ItemRecord) -> list[StrategyRecord]:
    """Per-candidate strategies with seeds derived from the job seed and the item (deterministic)."""
    chosen = sampling_corrections(spec) if spec.mode == "sampling" else spec.strategies
    return [
        StrategyRecord(
            name=s["name"],
            params=s["params"],
            seed=s["seed"] or derive_seed(spec.seed, item["id"], k, s["name"]),
        )
        for k, s in enumerate(chosen)
    ]


def _annotate_payload(spec: ResolvedSpec, item: ItemRecord) -> AnnotatePayload:
    embed = EmbedOutput.parse(item["outputs"]["embed"], "embed")
    latent = (item["outputs"].get("synthesize") or {}).get("latent")
    return AnnotatePayload(
        image=candidate_image(item),
        features=embed.features,
        feature_key=embed.feature_key or FEATURE_KEY,
        stem=item["stem"],
        dataset_uri=spec.dataset_uri,
        image_size=spec.image_size,
        jpeg_quality=spec.jpeg_quality,
        working_size=spec.annotation_size,
        detect_faces=False,
        latent=latent,
        extra_features=embed.extra_features,
        landmark_convention="pixel_centres" if spec.landmark_convention == "pixel_centres" else "sfhq",
    )


def source_name(item: ItemRecord) -> str:
    """What a person calls the item's origin: its input file's name, or its sample's seed."""
    source = item.get("source") or {}
    if source.get("name"):
        return str(source["name"])
    if "prompt" in source:
        prompt = str(source["prompt"])
        return f"prompt {source.get('prompt_index', '?')} seed {source['seed']} ({prompt[:60]}{'...' if len(prompt) > 60 else ''})"
    return f"sample seed {source['seed']}" if "seed" in source else ""


def _fail(plan: Plan, item: ItemRecord, stage: str, code: str, message: str) -> None:
    name = source_name(item)
    if name and not message.startswith(name):  # a failure names the file it came from
        message = f"{name}: {message}"
    item["state"] = ItemState.FAILED
    item["error"] = {"stage": stage, "code": code or "UNKNOWN", "message": message}
    plan.bump("failed")
    plan.events.append(
        {"kind": "item_failed", "item_id": item["id"], "stage": stage, "code": code, "message": message}
    )


def advance(
    spec: ResolvedSpec,
    job_id: str,
    item: ItemRecord,
    result: TaskResult,
    *,
    cancelling: bool = False,
) -> Plan:
    """What applying `result` to `item` means: the next state, tasks, counters and events."""
    plan = Plan()
    plan.bump("in_flight", -1)
    plan.bump(f"done:{result.stage}")
    item = {**item, "outputs": dict(item["outputs"])}
    plan.items[item["id"]] = item
    event = {"kind": "stage_done", "item_id": item["id"], "stage": result.stage}

    if cancelling:  # record what came back, schedule nothing (workers answer CANCELLED for queued tasks)
        if result.ok:
            item["outputs"][result.stage] = result.output
        if result.ok and result.stage == "annotate":  # its files are in the dataset: count and list it
            item["state"] = ItemState.WRITTEN
            plan.bump("written")
            plan.events.append(event)
            return plan
        item["state"] = ItemState.CANCELLED
        plan.bump("cancelled")
        plan.events.append(event)
        return plan
    if not result.ok:
        _fail(plan, item, result.stage, result.error_code, result.error_message)
        return plan

    item["outputs"][result.stage] = result.output
    plan.events.append(event)
    try:
        _next(spec, job_id, item, result, plan)
    except ValueError as error:  # an output that breaks the contract (InvalidInput is a ValueError)
        _fail(plan, item, result.stage, "INTERNAL", str(error))
    plan.bump("in_flight", len(plan.tasks))
    return plan


def _next(spec: ResolvedSpec, job_id: str, item: ItemRecord, result: TaskResult, plan: Plan) -> None:
    stage, output = result.stage, result.output
    if stage == "diffuse":  # the image's real size goes with its recipe (0 asked for the pipeline's own)
        made = DiffuseOutput.parse(output, stage)
        item["source"] = {**item["source"], "width": made.width, "height": made.height}
        align = AlignPayload(input=made.image, output_size=E4E_ALIGN_SIZE, transform_size=E4E_ALIGN_SIZE)
        plan.enqueue(job_id, item, "align", align)
    elif stage == "align" and spec.mode in ("inspiration", "prompts"):
        plan.enqueue(job_id, item, "encode", EncodePayload(image=AlignOutput.parse(output, stage).aligned))
    elif stage == "align":  # annotate_only: the aligned input is the candidate
        plan.bump("candidates")
        plan.enqueue(job_id, item, "embed", EmbedPayload(image=AlignOutput.parse(output, stage).aligned))
    elif stage == "sample":
        plan.enqueue(job_id, item, "encode", EncodePayload(image=SampleOutput.parse(output, stage).image))
    elif stage == "encode":
        payload = SynthesizePayload(
            latent=EncodeOutput.parse(output, stage).latent,
            strategies=_strategies_for(spec, item),
            target=item["outputs"].get("align", {}).get("aligned"),
            sampled_w=item["outputs"].get("sample", {}).get("w"),
        )
        plan.enqueue(job_id, item, "synthesize", payload)
    elif stage == "synthesize":
        item["state"] = ItemState.EXPANDED
        per_parent = candidates_per_parent(spec)
        for k, candidate in enumerate(SynthesizeOutput.parse(output, stage).candidates[:per_parent]):
            child = new_item(
                f"{item['id']}-c{k}",
                "candidate",
                item["ordinal"] * per_parent + k,
                parent=item["id"],
                source=item["source"],
                strategy=candidate.strategy.to_dict(),
            )
            child["outputs"]["synthesize"] = candidate.to_dict()
            plan.items[child["id"]] = child
            plan.enqueue(job_id, child, "embed", EmbedPayload(image=candidate.image))
            plan.bump("items")
            plan.bump("candidates")
    elif stage == "embed":
        embedded = EmbedOutput.parse(output, stage)
        curate = CuratePayload(
            features=embedded.features,
            extra_features=embedded.extra_features,
            image=candidate_image(item),
            taste_model=spec.taste_model,
            accept_threshold=spec.accept_threshold,
            reject_threshold=spec.reject_threshold,
            owner=spec.owner,
            dataset_id=spec.dataset_id,
            dedup_threshold=spec.dedup_threshold,
        )
        plan.enqueue(job_id, item, "curate", curate)
    elif stage == "curate":
        curated = CurateOutput.parse(output, stage)
        item.update(
            taste_score=curated.taste_score, duplicate_of=curated.duplicate_of, similarity=curated.similarity
        )
        if curated.decision == Decision.ACCEPTED:
            taste_passed(spec, job_id, item, plan, stage)
        elif curated.decision == Decision.REVIEW:
            item["state"] = ItemState.REVIEW
            plan.bump("review")
            plan.events.append({"kind": "item_review", "item_id": item["id"], "stage": stage, "message": ""})
        else:
            item["state"] = ItemState(curated.decision.value)
            plan.bump(curated.decision.value)
            plan.events.append(
                {
                    "kind": "item_rejected",
                    "item_id": item["id"],
                    "stage": stage,
                    "message": curated.decision.value,
                }
            )
    elif stage == "annotate":
        item["state"] = ItemState.WRITTEN
        plan.bump("written")
        plan.events.append(
            {"kind": "item_written", "item_id": item["id"], "stage": stage, "message": item["stem"]}
        )
    else:
        _fail(plan, item, stage, "INTERNAL", f"no transition after stage {stage!r}")


def written_row(
    spec: ResolvedSpec, job_id: str, item: ItemRecord, parent: ItemRecord | None, base: dict[str, Any]
) -> dict[str, Any]:
    """The manifest row of a written item. Each stage reports the checkpoints it used (`provenance`
    in its output); a candidate inherits its parent's (align, encode); `base` is the gateway's own."""
    provenance = dict(base)
    for source in ((parent or {}).get("outputs", {}), item["outputs"]):
        for stage_out in source.values():
            if isinstance(stage_out, dict):
                provenance.update(stage_out.get("provenance", {}))
    files = (item["outputs"].get("annotate") or {}).get("files", {})
    return manifest_row(spec, job_id, item, files, provenance)


def taste_passed(spec: ResolvedSpec, job_id: str, item: ItemRecord, plan: Plan, stage: str) -> None:
    """A candidate the taste model (or a person) let through: it waits for the job's dataset-wide
    near-duplicate pass (`dedup_verdicts`), or, with dedup off, is accepted and annotated now."""
    if spec.dedup_threshold >= 0:
        item["state"] = ItemState.CURATED
        return
    accept(spec, job_id, item, plan, stage)


def accept(spec: ResolvedSpec, job_id: str, item: ItemRecord, plan: Plan, stage: str) -> None:
    item["state"] = ItemState.ACCEPTED
    item["stem"] = stem_of(spec, item)
    plan.bump("accepted")
    plan.events.append(
        {"kind": "item_accepted", "item_id": item["id"], "stage": stage, "message": item["stem"]}
    )
    plan.enqueue(job_id, item, "annotate", _annotate_payload(spec, item))


def dedup_verdicts(
    spec: ResolvedSpec, job_id: str, curated: list[ItemRecord], duplicates: dict[str, tuple[str, float]]
) -> Plan:
    """After the dataset-wide pass: `duplicates` (item id -> the index id of the copy that stays, and
    the similarity) are rejected, every other curated item is accepted and annotated."""
    plan = Plan()
    for record in curated:
        item = {**record, "outputs": dict(record["outputs"])}
        plan.items[item["id"]] = item
        if item["id"] in duplicates:
            kept, similarity = duplicates[item["id"]]
            item.update(state=ItemState.REJECTED_DUPLICATE, duplicate_of=kept, similarity=similarity)
            plan.bump("rejected_duplicate")
            plan.events.append(
                {
                    "kind": "item_rejected",
                    "item_id": item["id"],
                    "stage": "curate",
                    "message": f"duplicate of {kept}",
                }
            )
        else:
            accept(spec, job_id, item, plan, "curate")
    plan.bump("in_flight", len(plan.tasks))
    return plan


def review_verdict(spec: ResolvedSpec, job_id: str, record: ItemRecord, good: bool) -> Plan:
    """A person's verdict on an item in review (or a rescue of one the taste model rejected)."""
    plan = Plan()
    item = {**record, "outputs": dict(record["outputs"])}
    plan.items[item["id"]] = item
    plan.bump("review" if record["state"] == ItemState.REVIEW else "rejected_taste", -1)
    if good:
        taste_passed(spec, job_id, item, plan, "curate")
    else:
        item["state"] = ItemState.REJECTED_TASTE
        plan.bump("rejected_taste")
    plan.events.append(
        {
            "kind": "item_reviewed",
            "item_id": item["id"],
            "stage": "curate",
            "message": "good" if good else "bad",
        }
    )
    plan.bump("in_flight", len(plan.tasks))
    return plan


def manifest_row(
    spec: ResolvedSpec, job_id: str, item: ItemRecord, files: dict[str, str], provenance: dict[str, Any]
) -> dict[str, Any]:
    """One manifest row per written item (docs/pipeline.md, "Datasets")."""
    synth = item["outputs"].get("synthesize") or {}
    pose = item_pose(item) or {}
    return {
        "stem": item["stem"],
        "item_id": item["id"],
        "job_id": job_id,
        "parent_id": item["parent"],
        "source": item["source"],
        "dataset_id": spec.dataset_id,
        "strategy": item.get("strategy") or {},
        "taste_score": item["taste_score"],
        "duplicate_of": item["duplicate_of"],
        "latent_path": files.get("latent", ""),
        "image_path": files.get("image", ""),
        "segmentation_path": files.get("segmentation", ""),
        "landmarks_path": files.get("landmarks", ""),
        "features_path": files.get("features", ""),
        "latent_blob": synth.get("latent", ""),
        "landmark_convention": spec.landmark_convention,
        "yaw": pose.get("yaw"),
        "pitch": pose.get("pitch"),
        "roll": pose.get("roll"),
        "provenance": provenance,
    }


def item_pose(item: ItemRecord) -> dict[str, float] | None:
    """The head pose the annotate stage measured ({yaw, pitch, roll} in degrees), or None."""
    pose = (item["outputs"].get("annotate") or {}).get("pose")
    return pose if isinstance(pose, dict) else None


def pose_in_ranges(
    pose: dict[str, float] | None, ranges: dict[str, tuple[float | None, float | None]]
) -> bool:
    """True when every named angle range holds `pose` (an unknown pose is in no range)."""
    if not ranges:
        return True
    if pose is None:
        return False
    for angle, (low, high) in ranges.items():
        value = pose.get(angle)
        # bounds arrive as float32 (protobuf `float`): a pose equal to a bound stays inside it
        if (
            value is None
            or (low is not None and value < low - 1e-4)
            or (high is not None and value > high + 1e-4)
        ):
            return False
    return True
