"""Which stage comes next: the pipeline as pure functions over item records.

No Redis and no gRPC here, so the whole flow is unit-testable. The coordinator reads an item
record and a task result, asks `advance` for a Plan (records to write, tasks to enqueue,
counters to bump, events to emit) and applies that plan atomically.

Flows (DESIGN.md §1):
  inspiration   input:  align(256) -> encode -> synthesize K strategies -> K candidates
  sampling      sample: sample(seed, psi) -> encode -> synthesize(correction)  -> 1 candidate
  annotate_only input:  align(image_size) -> (the item itself is the candidate)
  every candidate:      embed -> curate -> annotate (writes the SFHQ files) -> written
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.jobs import ResolvedSpec, derive_seed
from services.common.dataset import stem_for
from services.common.queue import Task, TaskResult

FEATURE_KEY = "CLIP_ViTL_14@336"
E4E_ALIGN_SIZE = 256  # e4e's own alignment setting (MODELS.md §3): output 256, no supersampling


@dataclass
class Plan:
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: list[Task] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def bump(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by


def new_item(item_id: str, kind: str, ordinal: int, *, parent: str = "", source: dict | None = None,
             strategy: dict | None = None) -> dict[str, Any]:
    return {"id": item_id, "parent": parent, "kind": kind, "ordinal": ordinal, "state": "pending", "stage": "",
            "source": source or {}, "strategy": strategy, "outputs": {}, "stem": "", "taste_score": None,
            "duplicate_of": None, "similarity": None, "error": None}


def input_item_id(ordinal: int) -> str:
    return f"i{ordinal:06d}"


def sample_item_id(ordinal: int) -> str:
    return f"s{ordinal:07d}"


def candidates_per_parent(spec: ResolvedSpec) -> int:
    return 1 if spec.mode == "sampling" else len(spec.strategies)


def first_tasks(spec: ResolvedSpec, job_id: str, inputs: list[dict[str, Any]]) -> Plan:
    """The plan of a new job: one item per input (or per sample) and its first task.

    ``inputs`` are {"uri": ..., "name": ...} for image jobs; ignored for sampling jobs.
    """
    plan = Plan()
    if spec.mode == "sampling":
        s = spec.sampling
        for n in range(s["count"]):
            seed = s["first_seed"] + n
            # Each sample's psi is a deterministic draw from [psi_min, psi_max] by its seed.
            frac = (derive_seed("psi", spec.seed, seed) % 1_000_000) / 1_000_000
            psi = round(s["psi_min"] + frac * (s["psi_max"] - s["psi_min"]), 4)
            item = new_item(sample_item_id(n), "sample", n, source={"seed": seed, "psi": psi})
            plan.items[item["id"]] = item
            plan.tasks.append(Task.make(job_id, item["id"], "sample", {"seed": seed, "psi": psi}))
        plan.bump("inputs", len(plan.items))
    else:
        size = E4E_ALIGN_SIZE if spec.mode == "inspiration" else spec.image_size
        transform = size if spec.mode == "inspiration" else 4 * size  # FFHQ supersamples 4x for its 1024 crops
        for n, source in enumerate(inputs):
            item = new_item(input_item_id(n), "input", n, source=source)
            plan.items[item["id"]] = item
            plan.tasks.append(Task.make(job_id, item["id"], "align",
                                        {"input": source["uri"], "output_size": size, "transform_size": transform}))
        plan.bump("inputs", len(plan.items))
    plan.bump("items", len(plan.items))
    plan.bump("in_flight", len(plan.tasks))
    for item_id in plan.items:
        plan.items[item_id]["stage"] = plan_stage(plan, item_id)
    return plan


def plan_stage(plan: Plan, item_id: str) -> str:
    return next((t.stage for t in plan.tasks if t.item_id == item_id), "")


def _curate_payload(spec: ResolvedSpec, item: dict) -> dict[str, Any]:
    return {"features": item["outputs"]["embed"]["features"], "image": _candidate_image(item),
            "taste_model": spec.taste_model, "accept_threshold": spec.accept_threshold,
            "dedup_threshold": spec.dedup_threshold}


def _candidate_image(item: dict) -> str:
    """The image a candidate item stands for: its synthesized image, or its aligned input (annotate_only)."""
    if "synthesize" in item["outputs"]:
        return item["outputs"]["synthesize"]["image"]
    return item["outputs"]["align"]["aligned"]


def _annotate_payload(spec: ResolvedSpec, item: dict) -> dict[str, Any]:
    latent = (item["outputs"].get("synthesize") or {}).get("latent")
    return {"image": _candidate_image(item), "features": item["outputs"]["embed"]["features"],
            "feature_key": item["outputs"]["embed"].get("feature_key", FEATURE_KEY), "stem": item["stem"],
            "dataset_uri": spec.dataset_uri, "image_size": spec.image_size, "jpeg_quality": spec.jpeg_quality,
            "working_size": spec.annotation_size, "detect_faces": False, "latent": latent}


def _strategies_for(spec: ResolvedSpec, item: dict) -> list[dict[str, Any]]:
    """Per-candidate strategies with seeds derived from the job seed and the item (deterministic)."""
    chosen = [spec.sampling["correction"]] if spec.mode == "sampling" else spec.strategies
    return [{"name": s["name"], "params": s["params"],
             "seed": s["seed"] or derive_seed(spec.seed, item["id"], k, s["name"])} for k, s in enumerate(chosen)]


def advance(spec: ResolvedSpec, job_id: str, item: dict[str, Any], result: TaskResult, *,
            cancelling: bool = False) -> Plan:
    """What applying ``result`` to ``item`` means: the next state, tasks, counters and events."""
    plan = Plan()
    plan.bump("in_flight", -1)
    plan.bump(f"done:{result.stage}")
    item = {**item, "outputs": dict(item["outputs"])}
    plan.items[item["id"]] = item
    event = {"kind": "stage_done", "item_id": item["id"], "stage": result.stage}

    if cancelling:  # record what came back, schedule nothing (workers answer CANCELLED for queued tasks)
        if result.ok:
            item["outputs"][result.stage] = result.output
        item["state"] = "cancelled"
        plan.bump("cancelled")
        plan.events.append(event)
        return plan

    if not result.ok:
        item["state"] = "failed"
        item["error"] = {"stage": result.stage, "code": result.error_code or "UNKNOWN",
                         "message": result.error_message}
        plan.bump("failed")
        plan.events.append({**event, "kind": "item_failed", "code": item["error"]["code"],
                            "message": result.error_message})
        return plan

    item["outputs"][result.stage] = result.output
    plan.events.append(event)

    def enqueue(target: dict, stage: str, payload: dict) -> None:
        target["stage"] = stage
        plan.tasks.append(Task.make(job_id, target["id"], stage, payload))

    stage = result.stage
    if stage == "align" and spec.mode == "inspiration":
        enqueue(item, "encode", {"image": result.output["aligned"]})
    elif stage == "align":  # annotate_only: the aligned input is the candidate
        plan.bump("candidates")
        enqueue(item, "embed", {"image": result.output["aligned"]})
    elif stage == "sample":
        enqueue(item, "encode", {"image": result.output["image"]})
    elif stage == "encode":
        sampled_w = item["outputs"].get("sample", {}).get("w")
        target = item["outputs"].get("align", {}).get("aligned")
        enqueue(item, "synthesize", {"latent": result.output["latent"], "strategies": _strategies_for(spec, item),
                                     "target": target, "sampled_w": sampled_w})
    elif stage == "synthesize":
        item["state"] = "expanded"
        per_parent = candidates_per_parent(spec)
        for k, cand in enumerate(result.output.get("candidates", [])[:per_parent]):
            child = new_item(f"{item['id']}-c{k}", "candidate", item["ordinal"] * per_parent + k,
                             parent=item["id"], source=item["source"], strategy=cand.get("strategy"))
            child["outputs"]["synthesize"] = cand
            plan.items[child["id"]] = child
            enqueue(child, "embed", {"image": cand["image"]})
            plan.bump("items")
            plan.bump("candidates")
    elif stage == "embed":
        enqueue(item, "curate", _curate_payload(spec, item))
    elif stage == "curate":
        decision = result.output.get("decision", "")
        item["taste_score"] = result.output.get("taste_score")
        item["duplicate_of"] = result.output.get("duplicate_of")
        item["similarity"] = result.output.get("similarity")
        if decision == "accepted":
            item["state"] = "accepted"
            item["stem"] = stem_for(spec.part, item["ordinal"])
            plan.bump("accepted")
            plan.events.append({"kind": "item_accepted", "item_id": item["id"], "stage": stage,
                                "message": item["stem"]})
            enqueue(item, "annotate", _annotate_payload(spec, item))
        elif decision in ("rejected_taste", "rejected_duplicate"):
            item["state"] = decision
            plan.bump(decision)
            plan.events.append({"kind": "item_rejected", "item_id": item["id"], "stage": stage, "message": decision})
        else:
            item["state"] = "failed"
            item["error"] = {"stage": stage, "code": "INTERNAL", "message": f"unknown curate decision {decision!r}"}
            plan.bump("failed")
    elif stage == "annotate":
        item["state"] = "written"
        plan.bump("written")
        plan.events.append({"kind": "item_written", "item_id": item["id"], "stage": stage, "message": item["stem"]})
    else:
        item["state"] = "failed"
        item["error"] = {"stage": stage, "code": "INTERNAL", "message": f"no transition after stage {stage!r}"}
        plan.bump("failed")
    plan.bump("in_flight", len(plan.tasks))
    return plan


def manifest_row(spec: ResolvedSpec, job_id: str, item: dict[str, Any], files: dict[str, str],
                 provenance: dict[str, Any]) -> dict[str, Any]:
    """One manifest row per written item (DESIGN.md §5)."""
    synth = item["outputs"].get("synthesize") or {}
    return {
        "stem": item["stem"], "item_id": item["id"], "job_id": job_id, "parent_id": item["parent"],
        "source": item["source"], "strategy": item.get("strategy") or {}, "taste_score": item["taste_score"],
        "duplicate_of": item["duplicate_of"], "latent_path": files.get("latent", ""),
        "image_path": files.get("image", ""), "segmentation_path": files.get("segmentation", ""),
        "landmarks_path": files.get("landmarks", ""), "features_path": files.get("features", ""),
        "latent_blob": synth.get("latent", ""), "provenance": provenance,
    }
