"""The prompts job mode, gateway side: templates, spec checks, the plan from prompts to written
candidates, and the client's prompt files and slot options."""

from __future__ import annotations

import json

import pytest

from gateway import jobs
from gateway.pipeline import advance, first_tasks, stems_needed, written_row
from gateway.prompts import PromptSpecError, expand, template_slots, tidy
from services.common.errors import InvalidInput
from services.common.queue import TaskResult
from sfhq.prompts import cli_prompt_spec, parse_slot, prompt_spec, read_lines, read_recipe
from sfhq.sdk import build_spec
from tests.unit.test_gateway_pipeline import CANNED, resolve, run_item

SFHQ_LIKE = "A portrait photo of a {age} {person} with {expression} expression and {style} {colour} hair"
SLOTS = {
    "age": ["20 year old", "70 year old"],
    "person": ["man", "woman"],
    "expression": ["happy"],
    "style": ["curly"],
    "colour": ["", "red"],
}


def diffused(task):
    return {"image": f"{task.item_id}/sd.qoi", "width": 512, "height": 512}


def prompts_job(**options):
    spec = prompt_spec(**{"template": SFHQ_LIKE, "slots": SLOTS, **options})
    return build_spec(mode="prompts", prompts=spec, strategies=["e4e_strict_prior", "low_prior"])


def test_a_template_expands_combinatorially_in_template_order_and_tidies_empty_slots():
    assert template_slots(SFHQ_LIKE) == ["age", "person", "expression", "style", "colour"]
    prompts = list(expand(SFHQ_LIKE, SLOTS))
    assert len(prompts) == 8  # 2 x 2 x 1 x 1 x 2
    assert prompts[0] == "A portrait photo of a 20 year old man with happy expression and curly hair"
    assert prompts[1] == "A portrait photo of a 20 year old man with happy expression and curly red hair"
    assert prompts[-1].startswith("A portrait photo of a 70 year old woman")  # first slot varies slowest
    assert tidy("a {x} , photo") == "a {x}, photo" and tidy("a  b ") == "a b"
    assert list(expand("{a}{{literal}}", {"a": ["x"]})) == ["x{literal}"]


@pytest.mark.parametrize(
    "template",
    ["{0.__class__}", "{x!r}", "{x:>10}", "{x[0]}", "unbalanced {", "a } b"],
)
def test_a_template_field_that_is_not_a_plain_slot_is_refused(template):
    with pytest.raises(PromptSpecError, match="prompts.template"):
        template_slots(template)


def test_a_prompts_spec_resolves_with_sfhq_defaults_and_part_by_pipeline():
    spec = resolve(prompts_job(negative_prompt="blurry", first_seed=10))
    assert spec.mode == "prompts" and spec.part == 4  # SD v2.1: SFHQ part 4
    p = spec.prompts
    assert (p["count"], p["steps"], p["guidance_scale"], p["pipeline"]) == (
        8,
        30,
        7.5,
        "stable-diffusion-2-1",
    )
    v14 = resolve(prompts_job(pipeline="stable-diffusion-v1-4"))
    assert v14.part == 2  # SD v1.4: SFHQ part 2
    no_guidance = resolve(prompts_job(guidance_scale=0.0))
    assert no_guidance.prompts["guidance_scale"] == 0.0  # an explicit 0 is kept, not defaulted
    assert jobs.ResolvedSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"slots": {**SLOTS, "unused": ["x"]}}, r"prompts.slots\['unused'\]"),
        ({"slots": {k: v for k, v in SLOTS.items() if k != "age"}}, r"no values for \{age\}"),
        ({"slots": {**SLOTS, "age": []}}, r"prompts.slots\['age'\]"),
        ({"images_per_prompt": 200_000}, "prompts.images_per_prompt"),
        ({"images_per_prompt": 900, "slots": {**SLOTS, "expression": ["a"] * 1000}}, "at most 1000000"),
        ({"width": 500}, "prompts.width"),
        ({"steps": 501}, "prompts.steps"),
        ({"guidance_scale": 51.0}, "prompts.guidance_scale"),
        ({"pipeline": "sdxl"}, "prompts.pipeline"),
        ({"first_seed": 2**64 - 3}, "prompts.first_seed"),
        ({"template": "", "slots": {}}, "give prompts or a template"),
        ({"template": "x" * 1001, "slots": {}}, "prompts.template"),
        ({"prompts": ["ok", " "]}, r"prompts.prompts\[1\]: empty"),
        ({"negative_prompt": "bad\x00"}, "prompts.negative_prompt"),
    ],
)
def test_a_bad_prompts_field_is_refused_naming_it(options, field):
    with pytest.raises(InvalidInput, match=field):  # PromptSpecError or SpecError
        resolve(prompts_job(**options))


def test_prompts_belong_to_the_prompts_mode_only():
    with pytest.raises(jobs.SpecError, match="inputs: a PROMPTS job takes no input images"):
        resolve(build_spec(mode="prompts", images=[b"x"], prompts=prompt_spec(prompts=["a face"])))
    inspiration = build_spec(images=[b"x"])
    inspiration.prompts.prompts.append("a face")
    with pytest.raises(jobs.SpecError, match="only a PROMPTS job takes prompts"):
        resolve(inspiration)
    with pytest.raises(ValueError, match="only the prompts mode"):
        build_spec(images=[b"x"], prompts=prompt_spec(prompts=["a face"]))


def test_the_plan_diffuses_each_image_with_its_own_seed_then_follows_the_inspiration_flow():
    spec = resolve(prompts_job(prompts=["a listed portrait"], images_per_prompt=2, first_seed=100))
    plan = first_tasks(spec, "job1", [])
    assert len(plan.tasks) == 18 and {t.stage for t in plan.tasks} == {"diffuse"}  # (1 + 8) x 2
    first, second, third = (plan.tasks[i].payload for i in range(3))
    assert first["prompt"] == second["prompt"] == "a listed portrait"  # the list comes first
    assert [first["seed"], second["seed"], third["seed"]] == [100, 101, 102]
    assert third["prompt"].startswith("A portrait photo of a 20 year old man")
    assert first["steps"] == 30 and first["pipeline"] == "stable-diffusion-2-1" and first["width"] == 0
    assert stems_needed(spec, 0) == 36  # 18 images x 2 strategies

    aligned = []

    def align(task):
        aligned.append(task.payload)
        return CANNED["align"](task)

    records, counters, stages = run_item(spec, plan, {**CANNED, "diffuse": diffused, "align": align})
    assert stages.count("diffuse") == 18 and stages.count("encode") == 18
    assert all(p["output_size"] == 256 and p["transform_size"] == 256 for p in aligned)  # e4e's alignment
    assert all(p["input"].endswith("/sd.qoi") for p in aligned)
    assert counters["written"] == 36 and spec.part == 4
    row = written_row(spec, "job1", records["p0000002-c1"], records["p0000002"], {})
    assert row["stem"] == "SFHQ_pt4_00000005"
    assert row["source"] == {
        "prompt": third["prompt"],
        "prompt_index": 1,
        "seed": 102,
        "negative_prompt": "",
        "guidance_scale": 7.5,
        "steps": 30,
        "pipeline": "stable-diffusion-2-1",
        "width": 512,  # the size the pipeline made, recorded after the diffuse stage
        "height": 512,
    }


def test_an_image_without_a_face_fails_its_item_naming_its_prompt_and_seed():
    spec = resolve(prompts_job(first_seed=7))
    plan = first_tasks(spec, "job1", [])
    task = plan.tasks[0]
    step = advance(spec, "job1", plan.items[task.item_id], TaskResult(**_ok(task, diffused(task))))
    align = step.tasks[0]
    failed = TaskResult(
        align.task_id, "job1", align.item_id, "align", False, {}, "INVALID_ARGUMENT", "no face found"
    )
    after = advance(spec, "job1", step.items[align.item_id], failed)
    error = after.items[align.item_id]["error"]
    assert error["stage"] == "align" and error["message"].endswith(": no face found")
    assert error["message"].startswith("prompt 0 seed 7 (A portrait photo of a 20 year old man")
    assert after.tasks == [] and after.counters["failed"] == 1


def _ok(task, output):
    return {
        "task_id": task.task_id,
        "job_id": task.job_id,
        "item_id": task.item_id,
        "stage": task.stage,
        "ok": True,
        "output": output,
    }


def test_prompt_files_slots_and_recipes_on_the_client(tmp_path):
    listing = tmp_path / "prompts.txt"
    listing.write_text("# portraits\nan old man\n\n  a young woman  \n")
    assert read_lines(listing) == ["an old man", "a young woman"]
    values = tmp_path / "expressions.txt"
    values.write_text("happy\nsad\n")
    assert parse_slot("expression=@" + str(values)) == ("expression", ["happy", "sad"])
    assert parse_slot("colour=|red| blue") == ("colour", ["", "red", "blue"])
    with pytest.raises(ValueError, match="NAME=value"):
        parse_slot("novalues")
    recipe = tmp_path / "recipe.json"
    recipe.write_text(
        json.dumps({"template": "a {age} {person}", "slots": {"age": ["old"], "person": ["man"]}})
    )
    spec = cli_prompt_spec(
        prompt=["x"], prompts_file=listing, recipe=recipe, slot=["person=woman|man"], steps=5
    )
    assert list(spec.prompts) == ["x", "an old man", "a young woman"]
    assert spec.template == "a {age} {person}" and list(spec.slots["person"].values) == ["woman", "man"]
    assert spec.steps == 5 and not spec.HasField("guidance_scale")
    recipe.write_text(json.dumps({"template": "t", "slots": {"a": "not a list"}}))
    with pytest.raises(ValueError, match="'slots' must map"):
        read_recipe(recipe)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_lines(tmp_path / "missing.txt")
