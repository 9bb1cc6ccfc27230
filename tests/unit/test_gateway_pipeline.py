"""The pipeline's transitions (pure functions) and job spec validation."""

from __future__ import annotations

import pytest

from gateway import jobs
from gateway.messages import angle_ranges
from gateway.pipeline import (
    advance,
    dedup_verdicts,
    first_tasks,
    manifest_row,
    pose_in_ranges,
    review_verdict,
)
from services.common.errors import InvalidInput
from services.common.queue import TaskResult
from sfhq.sdk import build_spec, parse_strategy
from sfhq.v1 import common_pb2, gateway_pb2


def resolve(spec: gateway_pb2.JobSpec) -> jobs.ResolvedSpec:
    return jobs.validate_spec(spec, default_dataset_uri="/tmp/ds", max_image_bytes=1 << 20)


def ok(task, output) -> TaskResult:
    return TaskResult(task.task_id, task.job_id, task.item_id, task.stage, True, output)


def run_item(spec, plan, outputs_by_stage, duplicates=None):
    """Drives every task to completion with canned outputs, and the dataset-wide near-duplicate pass
    once everything is curated (`duplicates`: item id -> (kept index id, similarity)), as the
    coordinator does; returns the final records and counters."""
    records = dict(plan.items)
    counters = dict(plan.counters)
    queue = list(plan.tasks)
    seen_stages = []

    def take(step):
        records.update(step.items)
        for key, value in step.counters.items():
            counters[key] = counters.get(key, 0) + value
        queue.extend(step.tasks)

    while True:
        while queue:
            task = queue.pop(0)
            seen_stages.append(task.stage)
            output = outputs_by_stage[task.stage](task)
            take(advance(spec, "job1", records[task.item_id], ok(task, output)))
        curated = [r for r in records.values() if r["state"] == "curated"]
        if not curated:
            return records, counters, seen_stages
        seen_stages.append("dedup pass")
        take(dedup_verdicts(spec, "job1", curated, duplicates or {}))


CANNED = {
    "align": lambda t: {
        "aligned": f"{t.item_id}/aligned.png",
        "landmarks68": [],
        "source_landmarks68": [],
        "transform": [[1, 0, 0], [0, 1, 0]],
        "face_count": 1,
    },
    "encode": lambda t: {"latent": f"{t.item_id}/latent.npy"},
    "sample": lambda t: {"w": f"{t.item_id}/w.npy", "image": f"{t.item_id}/sample.png"},
    "synthesize": lambda t: {
        "candidates": [
            {"image": f"{t.item_id}/c{k}.png", "latent": f"{t.item_id}/c{k}.npy", "strategy": s}
            for k, s in enumerate(t.payload["strategies"])
        ]
    },
    "embed": lambda t: {"features": f"{t.item_id}/f.npy", "feature_key": "CLIP_ViTL_14@336", "dim": 768},
    "curate": lambda t: {
        "decision": "accepted",
        "taste_score": None,
        "duplicate_of": None,
        "similarity": 0.1,
    },
    "annotate": lambda t: {"files": {"image": "images/x.jpg"}, "face_count": 1, "fallback_points": 0},
}


def test_inspiration_flow_makes_one_written_candidate_per_strategy():
    spec = resolve(build_spec(images=[b"a", b"b"], strategies=["e4e_strict_prior", "low_prior:steps=5"]))
    plan = first_tasks(spec, "job1", [{"uri": "in/a", "name": "a"}, {"uri": "in/b", "name": "b"}])
    assert [t.stage for t in plan.tasks] == ["align", "align"]
    assert plan.tasks[0].payload["output_size"] == 256
    records, counters, stages = run_item(spec, plan, CANNED)
    written = sorted(r["stem"] for r in records.values() if r["state"] == "written")
    assert written == [f"SFHQ_pt1_{n:08d}" for n in range(4)]  # 2 inputs x 2 strategies, stems by ordinal
    assert counters["in_flight"] == 0
    assert counters["candidates"] == 4 and counters["accepted"] == 4 and counters["written"] == 4
    assert stages.count("synthesize") == 2 and stages.count("annotate") == 4
    synth_strategies = [r["strategy"]["name"] for r in records.values() if r["kind"] == "candidate"]
    assert sorted(synth_strategies) == ["e4e_strict_prior", "e4e_strict_prior", "low_prior", "low_prior"]


def test_candidate_seeds_are_deterministic_and_distinct():
    spec = resolve(build_spec(images=[b"a"], seed=7))
    plan1 = first_tasks(spec, "jobA", [{"uri": "in/a", "name": "a"}])
    plan2 = first_tasks(spec, "jobB", [{"uri": "in/a", "name": "a"}])
    r1, _, _ = run_item(spec, plan1, CANNED)
    r2, _, _ = run_item(spec, plan2, CANNED)
    seeds1 = [r1[k]["strategy"]["seed"] for k in sorted(r1) if r1[k]["kind"] == "candidate"]
    seeds2 = [r2[k]["strategy"]["seed"] for k in sorted(r2) if r2[k]["kind"] == "candidate"]
    assert seeds1 == seeds2  # the job id does not enter the seeds: same spec, same candidates
    assert len(set(seeds1)) == len(seeds1)


def test_sampling_flow_goes_sample_encode_synthesize_with_the_sampled_w():
    spec = resolve(build_spec(mode="sampling", samples=3, first_seed=100, psi_min=1.5, psi_max=1.5))
    plan = first_tasks(spec, "job1", [])
    assert [t.payload for t in plan.tasks] == [{"seed": s, "psi": 1.5} for s in (100, 101, 102)]
    synth_payloads = []

    def synth(task):
        synth_payloads.append(task.payload)
        return CANNED["synthesize"](task)

    records, counters, stages = run_item(spec, plan, {**CANNED, "synthesize": synth})
    assert stages.count("sample") == 3 and stages.count("encode") == 3
    assert all(p["sampled_w"].endswith("w.npy") and p["target"] is None for p in synth_payloads)
    assert all(p["strategies"][0]["name"] == "encoder_truncation" for p in synth_payloads)
    # part 3 by default, and three corrections (strengths per layer group) per sample: 3 candidates each
    assert spec.part == 3 and counters["written"] == 9 and counters["candidates"] == 9
    assert all(len(p["strategies"]) == 3 for p in synth_payloads)
    coarse = [s["params"]["coarse"] for s in synth_payloads[0]["strategies"]]
    assert coarse == [0.1, 0.3, 0.5]
    seeds = [s["seed"] for s in synth_payloads[0]["strategies"]]
    assert len(set(seeds)) == 3
    written = sorted(r["stem"] for r in records.values() if r["state"] == "written")
    assert written == [f"SFHQ_pt3_{n:08d}" for n in range(9)]  # sample ordinal x correction index
    assert {r["strategy"]["params"]["fine"] for r in records.values() if r["kind"] == "candidate"} == {
        0.3,
        0.5,
    }


def test_sampling_corrections_are_chosen_checked_and_old_specs_still_plan():
    chosen = [
        "encoder_truncation:coarse=0.2,middle=0.2,fine=0.2",
        "encoder_truncation:coarse=0,middle=0.4,fine=0.8",
    ]
    spec = resolve(build_spec(mode="sampling", samples=2, corrections=chosen, part=7))
    assert spec.part == 7 and [c["params"]["fine"] for c in spec.sampling["corrections"]] == [0.2, 0.8]
    _, counters, _ = run_item(spec, first_tasks(spec, "job1", []), CANNED)
    assert counters["written"] == 4
    single = build_spec(mode="sampling", samples=2)
    single.sampling.correction.CopyFrom(parse_strategy("encoder_truncation:coarse=0.3,middle=0.3,fine=0.3"))
    assert len(resolve(single).sampling["corrections"]) == 1
    both = build_spec(mode="sampling", samples=2, corrections=chosen)
    both.sampling.correction.CopyFrom(parse_strategy("encoder_truncation"))
    with pytest.raises(jobs.SpecError, match="sampling.corrections"):
        resolve(both)
    bad = build_spec(mode="sampling", samples=2, corrections=["encoder_truncation:coarse=7"])
    with pytest.raises(jobs.SpecError, match=r"sampling.corrections\[0\]"):
        resolve(bad)
    # a job submitted before corrections were a list (its resolved spec in Redis has one correction)
    old = dict(spec.__dict__, sampling={k: v for k, v in spec.sampling.items() if k != "corrections"})
    old["sampling"]["correction"] = spec.sampling["corrections"][0]
    _, counters, _ = run_item(jobs.ResolvedSpec(**old), first_tasks(spec, "job1", []), CANNED)
    assert counters["written"] == 2


def test_annotate_only_flow_aligns_at_output_size_and_skips_generation():
    spec = resolve(build_spec(mode="annotate", images=[b"a"]))
    plan = first_tasks(spec, "job1", [{"uri": "in/a", "name": "a"}])
    assert plan.tasks[0].payload["output_size"] == 1024 and plan.tasks[0].payload["transform_size"] == 4096
    records, counters, stages = run_item(spec, plan, CANNED)
    assert stages == ["align", "embed", "curate", "dedup pass", "annotate"]
    assert records["i000000"]["state"] == "written"


def test_rejections_and_failures_are_counted_and_stop_the_item():
    spec = resolve(build_spec(images=[b"a"], strategies=["e4e_strict_prior", "low_prior"]))
    plan = first_tasks(spec, "job1", [{"uri": "in/a", "name": "a"}])

    duplicates = {"i000000-c1": ("job1/i000000-c0", 0.97)}  # what the dataset-wide pass found
    records, counters, stages = run_item(spec, plan, CANNED, duplicates)
    assert stages.count("dedup pass") == 1 and stages.index("dedup pass") < stages.index("annotate")
    assert records["i000000-c1"]["state"] == "rejected_duplicate"
    assert records["i000000-c1"]["duplicate_of"] == "job1/i000000-c0" and not records["i000000-c1"]["stem"]
    assert counters["rejected_duplicate"] == 1 and counters["written"] == 1 and counters["accepted"] == 1

    task = first_tasks(spec, "job1", [{"uri": "in/a", "name": "a"}]).tasks[0]
    failed = TaskResult(
        task.task_id, "job1", task.item_id, "align", False, {}, "INVALID_ARGUMENT", "no face found"
    )
    step = advance(spec, "job1", plan.items[task.item_id], failed)
    assert step.items[task.item_id]["state"] == "failed"
    assert step.items[task.item_id]["error"]["message"] == "a: no face found"  # names its source file
    assert step.tasks == [] and step.counters["failed"] == 1 and step.counters["in_flight"] == -1


def test_the_review_band_waits_for_a_person_and_a_verdict_moves_the_item_on():
    spec = resolve(
        build_spec(images=[b"a"], strategies=["e4e_strict_prior", "low_prior"], disable_dedup=True)
    )
    plan = first_tasks(spec, "job1", [{"uri": "in/a", "name": "a"}])

    def curate(task):
        decision = "review" if task.item_id.endswith("c0") else "rejected_taste"
        return {"decision": decision, "taste_score": 0.5, "duplicate_of": None, "similarity": None}

    records, counters, stages = run_item(spec, plan, {**CANNED, "curate": curate})
    assert records["i000000-c0"]["state"] == "review" and counters["review"] == 1 and "annotate" not in stages
    good = review_verdict(spec, "job1", records["i000000-c0"], True)
    assert good.items["i000000-c0"]["state"] == "accepted" and [t.stage for t in good.tasks] == ["annotate"]
    assert good.counters == {"review": -1, "accepted": 1, "in_flight": 1}
    rescued = review_verdict(spec, "job1", records["i000000-c1"], True)  # a person overrules a reject
    assert (
        rescued.counters["rejected_taste"] == -1
        and rescued.items["i000000-c1"]["stem"] == "SFHQ_pt1_00000001"
    )
    bad = review_verdict(spec, "job1", records["i000000-c0"], False)
    assert bad.items["i000000-c0"]["state"] == "rejected_taste" and not bad.tasks


def test_cancelling_records_the_output_but_schedules_nothing():
    spec = resolve(build_spec(images=[b"a"]))
    plan = first_tasks(spec, "job1", [{"uri": "in/a", "name": "a"}])
    task = plan.tasks[0]
    step = advance(spec, "job1", plan.items[task.item_id], ok(task, CANNED["align"](task)), cancelling=True)
    assert step.tasks == []
    assert step.items[task.item_id]["state"] == "cancelled"


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda s: s.ClearField("inputs"), "inputs"),
        (lambda s: setattr(s, "mode", 42), "mode"),
        (lambda s: s.strategies.add(name="nope"), "strategies[0].name"),
        (
            lambda s: s.strategies.add(name="low_prior").params.__setitem__("steps", float("nan")),
            "strategies[0].params",
        ),
        (lambda s: setattr(s.output, "image_size", 10), "output.image_size"),
        (lambda s: setattr(s.output, "jpeg_quality", 101), "output.jpeg_quality"),
        (lambda s: setattr(s.curation, "dedup_threshold", 1.5), "curation.dedup_threshold"),
        (lambda s: s.inputs.add(), "inputs[1]"),
        (lambda s: s.inputs.add(data=b"x" * (2 << 20)), "inputs[1].data"),
        (lambda s: setattr(s, "input_folder", "../../etc"), "input_folder"),
    ],
)
def test_invalid_specs_name_the_field(mutate, field):
    spec = build_spec(images=[b"a"])
    mutate(spec)
    with pytest.raises(jobs.SpecError, match=field.replace("[", r"\[").replace("]", r"\]")):
        resolve(spec)


def test_sampling_spec_needs_a_count_and_ordered_psi():
    with pytest.raises(jobs.SpecError, match="sampling.count"):
        resolve(build_spec(mode="sampling", samples=0))
    with pytest.raises(jobs.SpecError, match="psi_max"):
        resolve(build_spec(mode="sampling", samples=2, psi_min=1.8, psi_max=1.2))
    resolved = resolve(build_spec(mode="sampling", samples=2))
    assert resolved.sampling["psi_min"] == pytest.approx(1.2) and resolved.sampling[
        "psi_max"
    ] == pytest.approx(2.0)
    assert resolved.dedup_threshold == pytest.approx(0.92)


def test_the_manifest_row_carries_the_head_pose_and_the_gallery_filters_by_it():
    spec = resolve(build_spec(images=[b"a"]))
    plan = first_tasks(spec, "job1", [{"uri": "in/a", "name": "a"}])
    posed = dict(CANNED)
    posed["annotate"] = lambda t: {**CANNED["annotate"](t), "pose": {"yaw": 12.5, "pitch": -3.0, "roll": 1.0}}
    records, _, _ = run_item(spec, plan, posed)
    written = [r for r in records.values() if r["state"] == "written"]
    row = manifest_row(spec, "job1", written[0], {}, {})
    assert (row["yaw"], row["pitch"], row["roll"]) == (12.5, -3.0, 1.0)
    pose = written[0]["outputs"]["annotate"]["pose"]
    assert pose_in_ranges(pose, {"yaw": (10.0, None)}) and not pose_in_ranges(pose, {"yaw": (-10.0, 10.0)})
    assert not pose_in_ranges(None, {"yaw": (None, 90.0)}) and pose_in_ranges(None, {})
    request = gateway_pb2.ListItemsRequest(
        job_id="j", yaw=common_pb2.AngleRange(min=-10), roll=common_pb2.AngleRange()
    )
    assert angle_ranges(request) == {"yaw": (-10.0, None)}
    with pytest.raises(InvalidInput, match="pitch"):
        angle_ranges(gateway_pb2.ListItemsRequest(pitch=common_pb2.AngleRange(min=5, max=-5)), "")
    with pytest.raises(InvalidInput, match="yaw.max"):
        angle_ranges(gateway_pb2.ListItemsRequest(yaw=common_pb2.AngleRange(max=float("nan"))), "")
