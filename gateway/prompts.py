"""Prompts of a PROMPTS job: checking a PromptSpec and expanding its template (pure functions).

A template names slots in braces, "A portrait photo of a {age} {person} with {expression}
expression"; each slot has a list of values and the job makes one prompt per combination (the
first slot varies slowest, as in nested loops in template order). An empty value leaves its slot
out; the spaces around it are tidied. Literal braces are written `{{` and `}}`.

Slots are plain names: a field such as `{0.__class__}` or `{x!r}` is refused, so expansion is only
ever a substitution of the caller's own strings.
"""

from __future__ import annotations

import itertools
import math
import re
import string
from collections.abc import Iterator
from typing import Any

from services.common.contracts import DIFFUSION_PIPELINES, MAX_PROMPT_CHARS
from services.common.errors import InvalidInput

MAX_LIST_PROMPTS = 100_000
MAX_SLOTS = 32
MAX_SLOT_VALUES = 1_000
MAX_SLOT_VALUE_CHARS = 200
MAX_IMAGES_PER_PROMPT = 1_000
DEFAULT_GUIDANCE = 7.5
DEFAULT_STEPS = 30  # the SD v1.4 samples SFHQ's tooling shows were made with 30 steps
MAX_STEPS = 500
PIPELINE_PARTS = {"stable-diffusion-2-1": 4, "stable-diffusion-v1-4": 2}  # SFHQ's part of each
_SLOT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class PromptSpecError(InvalidInput):
    """A field of `prompts` is invalid; the message names it."""


def template_slots(template: str) -> list[str]:
    """The slot names of `template` in first-appearance order; PromptSpecError for a malformed one."""
    names: list[str] = []
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as error:
        raise PromptSpecError(f"prompts.template: {error} (write a literal brace as {{{{ or }}}})") from None
    for _literal, name, spec, conversion in fields:
        if name is None:
            continue
        if not _SLOT_NAME.match(name) or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise PromptSpecError(f"prompts.template: {shown[:60]!r} is not a slot (slots are plain names)")
        if name not in names:
            names.append(name)
    return names


def tidy(prompt: str) -> str:
    """Collapse the spaces an empty slot leaves, and a space before a comma or full stop."""
    return re.sub(r"\s+([,.])", r"\1", " ".join(prompt.split()))


def expand(template: str, slots: dict[str, list[str]]) -> Iterator[str]:
    """Every prompt of the template, slot values combined in nested-loop order."""
    names = template_slots(template)
    for values in itertools.product(*(slots[name] for name in names)):
        yield tidy(template.format_map(dict(zip(names, values, strict=True))))


def template_count(template: str, slots: dict[str, list[str]]) -> int:
    return math.prod(len(slots[name]) for name in template_slots(template)) if template else 0


def _text(value: str, field: str, limit: int, *, empty_ok: bool = False) -> str:
    if len(value) > limit:
        raise PromptSpecError(f"{field}: {len(value)} characters; at most {limit}")
    if not empty_ok and not value.strip():
        raise PromptSpecError(f"{field}: empty")
    if any(ord(c) < 32 and c not in "\t\n" for c in value):
        raise PromptSpecError(f"{field}: holds control characters")
    return value


def resolve_prompts(msg: Any, max_images: int) -> dict[str, Any]:  # msg: gateway_pb2.PromptSpec
    """A PromptSpec checked, with defaults filled in: what ResolvedSpec.prompts holds."""
    if len(msg.prompts) > MAX_LIST_PROMPTS:
        raise PromptSpecError(f"prompts.prompts: {len(msg.prompts)} prompts; at most {MAX_LIST_PROMPTS}")
    listed = [tidy(_text(p, f"prompts.prompts[{i}]", MAX_PROMPT_CHARS)) for i, p in enumerate(msg.prompts)]
    template = _text(msg.template, "prompts.template", MAX_PROMPT_CHARS, empty_ok=True)
    names = template_slots(template) if template.strip() else []
    if len(msg.slots) > MAX_SLOTS:
        raise PromptSpecError(f"prompts.slots: {len(msg.slots)} slots; at most {MAX_SLOTS}")
    slots: dict[str, list[str]] = {}
    for name in sorted(msg.slots):
        if name not in names:
            raise PromptSpecError(f"prompts.slots[{name[:40]!r}]: the template has no {{{name[:40]}}}")
        values = list(msg.slots[name].values)
        if not values or len(values) > MAX_SLOT_VALUES:
            raise PromptSpecError(f"prompts.slots[{name!r}]: give 1 to {MAX_SLOT_VALUES} values")
        slots[name] = [
            _text(v, f"prompts.slots[{name!r}].values[{i}]", MAX_SLOT_VALUE_CHARS, empty_ok=True)
            for i, v in enumerate(values)
        ]
    missing = [name for name in names if name not in slots]
    if missing:
        raise PromptSpecError(f"prompts.slots: no values for {', '.join('{' + n + '}' for n in missing)}")
    longest = len(template) + sum(max(len(v) for v in slots[name]) for name in names)
    if longest > MAX_PROMPT_CHARS:
        raise PromptSpecError(
            f"prompts.template: expands to up to {longest} characters; at most {MAX_PROMPT_CHARS}"
        )
    per_prompt = msg.images_per_prompt or 1
    if not 1 <= per_prompt <= MAX_IMAGES_PER_PROMPT:
        raise PromptSpecError(f"prompts.images_per_prompt: must be in [1, {MAX_IMAGES_PER_PROMPT}]")
    prompt_count = len(listed) + (template_count(template, slots) if template.strip() else 0)
    if prompt_count == 0:
        raise PromptSpecError("prompts: give prompts or a template")
    count = prompt_count * per_prompt
    if count > max_images:
        raise PromptSpecError(
            f"prompts: {count} images ({prompt_count} prompts x {per_prompt}); at most {max_images}"
        )
    if msg.first_seed + count > 2**64:
        raise PromptSpecError("prompts.first_seed: the seeds of the job's images pass 2**64")
    guidance = msg.guidance_scale if msg.HasField("guidance_scale") else DEFAULT_GUIDANCE
    if not math.isfinite(guidance) or not 0.0 <= guidance <= 50.0:
        raise PromptSpecError(f"prompts.guidance_scale: {guidance} is outside [0, 50]")
    steps = msg.steps or DEFAULT_STEPS
    if not 1 <= steps <= MAX_STEPS:
        raise PromptSpecError(f"prompts.steps: must be in [1, {MAX_STEPS}]")
    for field in ("width", "height"):
        side = getattr(msg, field)
        if side and (not 64 <= side <= 2048 or side % 8):
            raise PromptSpecError(f"prompts.{field}: {side} is not a multiple of 8 in [64, 2048]")
    pipeline = msg.pipeline or DIFFUSION_PIPELINES[0]
    if pipeline not in DIFFUSION_PIPELINES:
        raise PromptSpecError(
            f"prompts.pipeline: {pipeline[:60]!r} is not one of {', '.join(DIFFUSION_PIPELINES)}"
        )
    return {
        "prompts": listed,
        "template": template if template.strip() else "",
        "slots": slots,
        "negative_prompt": _text(
            msg.negative_prompt, "prompts.negative_prompt", MAX_PROMPT_CHARS, empty_ok=True
        ),
        "images_per_prompt": per_prompt,
        "first_seed": int(msg.first_seed),
        "guidance_scale": round(float(guidance), 4),
        "steps": int(steps),
        "width": int(msg.width),
        "height": int(msg.height),
        "pipeline": pipeline,
        "count": count,
    }


def all_prompts(prompts: dict[str, Any]) -> Iterator[str]:
    """The job's prompts in order: the listed ones, then the template's combinations."""
    yield from prompts["prompts"]
    if prompts["template"]:
        yield from expand(prompts["template"], prompts["slots"])


def image_sources(prompts: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Each image's recipe (its item's `source`): prompt, its number, seed and the shared settings."""
    shared = {k: prompts[k] for k in ("negative_prompt", "guidance_scale", "steps", "pipeline")}
    size = {k: prompts[k] for k in ("width", "height") if prompts[k]}
    n = 0
    for index, prompt in enumerate(all_prompts(prompts)):
        for _ in range(prompts["images_per_prompt"]):
            yield {
                "prompt": prompt,
                "prompt_index": index,
                "seed": prompts["first_seed"] + n,
                **shared,
                **size,
            }
            n += 1
