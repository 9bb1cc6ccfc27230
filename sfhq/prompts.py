"""Building the prompts of a PROMPTS job on the client side (light: protobuf only).

Three ways in, which combine: prompts given one by one, a prompt file (one per line; blank lines
and lines starting with `#` are skipped), and a template with slot values, either on the command
line (`--slot "age=20 year old|30 year old"`, `--slot expression=@expressions.txt`) or as a JSON
recipe file: {"template": "...", "slots": {"age": [...], ...}, "negative_prompt": "..."}.
The gateway checks and expands them (gateway/prompts.py); docs/prompts.md has the details.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sfhq.v1 import gateway_pb2

MAX_FILE_BYTES = 16 << 20  # a prompt or recipe file larger than this is a mistake


def _read_text(path: str | os.PathLike[str], what: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} {file}: no such file")
    if file.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{what} {file}: larger than {MAX_FILE_BYTES} bytes")
    return file.read_text(encoding="utf-8")


def read_lines(path: str | os.PathLike[str], what: str = "prompt file") -> list[str]:
    """The non-empty, non-comment lines of a text file, stripped."""
    lines = (line.strip() for line in _read_text(path, what).splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def parse_slot(text: str) -> tuple[str, list[str]]:
    """'name=a|b|c' or 'name=@values.txt' -> (name, values); ValueError saying what is wrong.
    A value may be empty ('colour=|red|blue'): that combination leaves the slot out."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"slot {text!r}: write NAME=value|value|... or NAME=@file")
    if values.startswith("@"):
        return name.strip(), read_lines(values[1:], f"values of slot {name.strip()!r}")
    return name.strip(), [v.strip() for v in values.split("|")]


def read_recipe(path: str | os.PathLike[str]) -> dict[str, object]:
    """A JSON recipe: {"template": str, "slots": {name: [values]}, optional "negative_prompt"}."""
    try:
        recipe = json.loads(_read_text(path, "recipe"))
    except json.JSONDecodeError as error:
        raise ValueError(f"recipe {path}: not JSON ({error})") from None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("template"), str):
        raise ValueError(f'recipe {path}: expected {{"template": "...", "slots": {{...}}}}')
    slots = recipe.get("slots", {})
    if not isinstance(slots, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in slots.values()
    ):
        raise ValueError(f"recipe {path}: 'slots' must map each name to a list of strings")
    unknown = set(recipe) - {"template", "slots", "negative_prompt"}
    if unknown:
        raise ValueError(f"recipe {path}: unknown keys {', '.join(sorted(unknown))}")
    return recipe


def prompt_spec(
    *,
    prompts: Sequence[str] = (),
    template: str = "",
    slots: Mapping[str, Sequence[str]] | None = None,
    negative_prompt: str = "",
    images_per_prompt: int = 0,
    first_seed: int = 0,
    guidance_scale: float | None = None,
    steps: int = 0,
    width: int = 0,
    height: int = 0,
    pipeline: str = "",
) -> gateway_pb2.PromptSpec:
    """A PromptSpec from plain values (0 / "" / None: the gateway's default)."""
    spec = gateway_pb2.PromptSpec(
        prompts=list(prompts),
        template=template,
        negative_prompt=negative_prompt,
        images_per_prompt=images_per_prompt,
        first_seed=first_seed,
        steps=steps,
        width=width,
        height=height,
        pipeline=pipeline,
    )
    for name, values in (slots or {}).items():
        spec.slots[name].values.extend(values)
    if guidance_scale is not None:
        spec.guidance_scale = guidance_scale
    return spec


def cli_prompt_spec(
    *,
    prompt: Sequence[str] = (),
    prompts_file: str | os.PathLike[str] | None = None,
    template: str = "",
    recipe: str | os.PathLike[str] | None = None,
    slot: Sequence[str] = (),
    negative_prompt: str = "",
    **settings: Any,
) -> gateway_pb2.PromptSpec:
    """What the CLI options say: listed prompts, a prompt file, a template or recipe with slots
    (a --slot overrides the recipe's slot of the same name); `settings` go to `prompt_spec`."""
    listed = list(prompt) + (read_lines(prompts_file) if prompts_file else [])
    slots: dict[str, list[str]] = {}
    if recipe:
        loaded = read_recipe(recipe)
        if template:
            raise ValueError("give --template or --recipe, not both")
        template = str(loaded["template"])
        recipe_slots = loaded.get("slots", {})
        assert isinstance(recipe_slots, dict)  # read_recipe checked it
        slots.update({str(k): list(v) for k, v in recipe_slots.items()})
        negative_prompt = negative_prompt or str(loaded.get("negative_prompt", ""))
    slots.update(dict(parse_slot(s) for s in slot))
    return prompt_spec(
        prompts=listed, template=template, slots=slots, negative_prompt=negative_prompt, **settings
    )
