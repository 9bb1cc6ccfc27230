"""Pipeline stage names and which service runs them.

Kept apart from `queue` so that settings and the light client can know the stages without
importing Redis.
"""

from __future__ import annotations

# Order follows the pipeline; one Redis stream per stage (sfhq:stage:<name>).
STAGES: tuple[str, ...] = (
    "diffuse",
    "align",
    "encode",
    "sample",
    "synthesize",
    "embed",
    "curate",
    "annotate",
)

# The service whose workers consume each stage (docs/architecture.md, "Stage handlers").
SERVICE_STAGES: dict[str, tuple[str, ...]] = {
    "annotator": ("align", "annotate"),
    "encoder": ("encode",),
    "generator": ("diffuse", "sample", "synthesize"),
    "search": ("embed", "curate"),
    "gateway": (),
}


def check_stage(stage: str) -> str:
    """Return `stage` if it is a known stage, else raise ValueError listing the known ones."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of: {', '.join(STAGES)}")
    return stage
