"""`sfhq run`: "up, submit, watch, down" for one job on the local cluster of `services.cluster`.

The cluster keeps its data under `<output>.work` (or `--data DIR`): when it is already up, the
job runs on it and it stays up; otherwise it is started for the job and stopped afterwards, and
the closing hint says how to get back to the job, its dataset and its search index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from services.common.config import get_settings
from services.common.weights import WeightsMissing, WeightsRegistry

# What a job needs: the generator may instead use e4e's bundled decoder, so it is not listed.
REQUIRED_WEIGHTS = ("e4e-ffhq-encode", "bisenet-face-parsing", "clip-vit-l-14-336")


@dataclass
class LocalRunOptions:
    inputs: Path
    output: Path
    random_weights: bool = False
    mode: str = "inspiration"
    strategies: list[str] = field(default_factory=list)
    samples: int = 8
    dedup: float | None = None  # None: SFHQ's 0.92, or off with random weights
    taste_model: str = ""
    seed: int = 0
    image_size: int = 1024
    startup_timeout_s: float = 180.0
    write_mode: str = "new"  # "append" continues the dataset in `output`, "overwrite" replaces it
    data_dir: Path | None = None  # the cluster's data (default: <output>.work)
    prompts: Any = None  # prompts mode: a gateway_pb2.PromptSpec (sfhq.prompts)


def run_local(options: LocalRunOptions, console: Console | None = None) -> int:
    """Runs one job end to end ("up, submit, watch, down"); returns a process exit code (0 = success).

    The cluster is the persistent one of `sfhq up` (services.cluster) with its data under
    `options.data_dir` (default `<output>.work`): when it is already up, the job runs on it and it
    stays up; otherwise it is started for the job and stopped afterwards, keeping its data.
    """
    from services import cluster
    from sfhq.progress import follow
    from sfhq.sdk import Client, SfhqError, build_spec, image_files

    console = console or Console(stderr=True)
    output = options.output.resolve()
    data_dir = (options.data_dir or output.with_name(output.name + ".work")).resolve()

    # Everything a user can get wrong is checked before anything is written (random weights are 374 MB).
    images: list[Path] = []
    if options.mode not in ("sampling", "prompts"):
        try:
            images = image_files([options.inputs])
        except FileNotFoundError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            return 2
    try:
        spec = build_spec(
            mode=options.mode,
            images=images,
            strategies=options.strategies,
            samples=options.samples if options.mode == "sampling" else 0,
            taste_model=options.taste_model,
            output_uri=str(output),
            image_size=options.image_size,
            seed=options.seed,
            name="sfhq run",
            write_mode=options.write_mode,
            prompts=options.prompts if options.mode == "prompts" else None,
        )
    except ValueError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    already_up = cluster.running(data_dir)
    random_weights = options.random_weights or bool(already_up and already_up.random_weights)
    if not random_weights and already_up is None:
        registry = WeightsRegistry(get_settings().weights_dir)
        try:
            for name in REQUIRED_WEIGHTS:
                registry.path(name)
        except WeightsMissing as exc:
            console.print(
                f"[bold red]missing checkpoint:[/] {exc}\n"
                "Register the official checkpoints with `sfhq weights download NAME` (or "
                "`sfhq weights add NAME PATH`), or try the pipeline with `sfhq run --random-weights`."
            )
            return 2
    dedup = options.dedup
    if dedup is None:
        dedup = 0.0 if random_weights else 0.92
        if random_weights:
            console.print(
                "near-duplicate removal is off: a random CLIP cannot tell faces apart "
                "(pass --dedup 0.92 to see it anyway)"
            )
    if dedup > 0:
        spec.curation.dedup_threshold = dedup
    spec.curation.disable_dedup = dedup <= 0

    with console.status("starting services ..."):
        try:
            state = cluster.up(
                data_dir,
                random_weights=options.random_weights,
                data_roots=(output.parent,),
                timeout_s=options.startup_timeout_s,
                say=console.print,
            )
        except cluster.ClusterError as exc:
            console.print(f"[bold red]{exc}[/]")
            return 1
    console.print(f"cluster up ({data_dir}): gateway {state.gateway_addr}")
    try:
        with Client(state.gateway_addr, timeout=60) as client:
            try:
                job = client.submit(spec)
                console.print(f"job {job.job_id}: {job.counts.inputs} inputs -> {output}")
                job = follow(client, job.job_id, console)
            except SfhqError as exc:
                console.print(f"[bold red]error:[/] {exc.details}")
                return 1
            _report(console, client, job, output, Path(state.weights_dir), state.random_weights)
    finally:
        if already_up is None:
            cluster.down(data_dir, say=console.print)
    _hint(console, job.job_id, data_dir, stopped=already_up is None)
    return 0 if job.state == 5 else 1  # JOB_STATE_SUCCEEDED


def _hint(console: Console, job_id: str, data_dir: Path, *, stopped: bool) -> None:
    if stopped:
        console.print(
            f"the cluster is stopped; its jobs, dataset and search index are kept in {data_dir}. Later:\n"
            f"  sfhq up --data {data_dir}\n"
            f"  sfhq search 'a smiling person' --job {job_id}\n"
            "  sfhq down"
        )
    else:
        console.print(
            f"the cluster stays up: `sfhq search 'a smiling person' --job {job_id}`; `sfhq down` stops it"
        )


def _report(console: Console, client, job, output: Path, weights_dir: Path, random_weights: bool) -> None:
    from sfhq.v1 import gateway_pb2

    c = job.counts
    state = gateway_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
    console.print(
        f"\n[bold]{state}[/]: {c.inputs} inputs, {c.candidates} candidates, {c.accepted} accepted, "
        f"{c.written} written, {c.rejected_taste} rejected by taste, {c.rejected_duplicate} near-duplicates, "
        f"{c.failed} failed"
    )
    if job.error:
        console.print(f"[red]{job.error}[/]")
    if c.failed:  # each was shown as it failed
        console.print(f"{c.failed} items failed: listed above, and in {output}/jobs/{job.job_id}/info.json")
        if random_weights and job.mode == gateway_pb2.JOB_MODE_PROMPTS:
            console.print(
                "(expected here: random Stable Diffusion weights draw noise, in which no face is found)"
            )
    if not c.written:
        console.print(f"nothing was written to {output}")
        return
    try:
        hits = client.search("a smiling person", job_id=job.job_id, top_k=3).hits
        if hits:
            console.print(
                "search 'a smiling person': " + ", ".join(f"{h.item_id} ({h.score:.2f})" for h in hits)
            )
    except Exception as exc:  # search is a bonus here; the dataset is the result
        console.print(f"(search unavailable: {exc})")
    console.print(
        f"dataset: {output}  (images/, segmentations/, landmarks/, pretrained_features/, latents/, "
        "manifest.jsonl, manifest.parquet, dataset_info.json)"
    )
    if random_weights:
        console.print(
            f"[bold yellow]made with RANDOM weights ({weights_dir}); register real checkpoints with "
            "`sfhq weights` for real faces[/]"
        )
