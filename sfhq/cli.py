"""The `sfhq` command line.

Client commands (submit, watch, status, cancel, search, get, export, label) need only the light
install. `run`, `serve`, `weights`, `overlay` and `import-sfhq` need the services extra
(`pip install 'sfhq-factory[services]'`) and import it lazily.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sfhq import __version__
from sfhq.sdk import DEFAULT_ADDRESS, TERMINAL_STATES, Client, SfhqError, build_spec, image_files
from sfhq.v1 import gateway_pb2

app = typer.Typer(help="sfhq-factory: make SFHQ-style synthetic face datasets.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
weights_app = typer.Typer(help="Official checkpoints: list, download, add, verify.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
console = Console(stderr=True)
out = Console()

AddressOpt = Annotated[str, typer.Option("--address", "-a", envvar="SFHQ_GATEWAY_ADDR", help="gateway host:port")]
TokenOpt = Annotated[str, typer.Option("--token", envvar="SFHQ_TOKEN", help="bearer token", show_default=False)]
STAGE_ORDER = ("align", "sample", "encode", "synthesize", "embed", "curate", "annotate")


def _client(address: str, token: str) -> Client:
    return Client(address, token=token or None)


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _services_needed() -> None:
    try:
        import services.common  # noqa: F401
    except ImportError as exc:
        _fail(f"this command needs the services extra: pip install 'sfhq-factory[services]' ({exc})")


def _job_line(job: gateway_pb2.Job) -> str:
    c = job.counts
    return (f"{job.job_id}  {gateway_pb2.JobState.Name(job.state).removeprefix('JOB_STATE_')}  "
            f"inputs {c.inputs}  candidates {c.candidates}  accepted {c.accepted}  written {c.written}  "
            f"rejected {c.rejected_taste} by taste + {c.rejected_duplicate} duplicates  failed {c.failed}")


def follow(client: Client, job_id: str, *, quiet: bool = False) -> gateway_pb2.Job:
    """Shows a progress bar per stage until the job ends; returns the final job."""
    job = client.get_job(job_id)
    with Progress(TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=quiet, transient=False) as progress:
        bars: dict[str, int] = {}
        for event in client.watch(job_id):
            counts = event.counts
            expected = {"align": counts.inputs, "sample": counts.inputs, "encode": counts.inputs,
                        "synthesize": counts.inputs, "embed": counts.candidates, "curate": counts.candidates,
                        "annotate": counts.accepted}
            for stage in STAGE_ORDER:
                done = counts.done_by_stage.get(stage, 0)
                if stage not in bars and done == 0:
                    continue
                if stage not in bars:
                    bars[stage] = progress.add_task(stage, total=max(expected[stage], done))
                progress.update(bars[stage], completed=done, total=max(expected[stage], done))
            if event.kind == "item_failed" and not quiet:
                progress.console.print(f"[yellow]item {event.item_id} failed at "
                                       f"{event.error.code}: {event.error.message}[/]")
    job = client.get_job(job_id)
    while job.state not in TERMINAL_STATES:
        job = client.wait(job_id)
    return job


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


@app.command()
def submit(inputs: Annotated[list[Path] | None, typer.Argument(help="image files or folders (uploaded)")] = None,
           mode: Annotated[str, typer.Option(help="inspiration | sampling | annotate")] = "inspiration",
           folder: Annotated[str, typer.Option(help="a folder URL the services can read (not uploaded)")] = "",
           strategy: Annotated[list[str] | None, typer.Option("--strategy", "-s",
                               help="name[:k=v,...]; repeat for several candidates")] = None,
           samples: Annotated[int, typer.Option(help="sampling mode: number of samples")] = 0,
           first_seed: int = 0, psi_min: float = 0.0, psi_max: float = 0.0,
           taste_model: Annotated[str, typer.Option(help="taste model name (empty: no taste filter)")] = "",
           dedup: Annotated[float, typer.Option(help="near-duplicate cosine threshold; 0 disables")] = 0.92,
           output: Annotated[str, typer.Option("--output", "-o", help="dataset URI")] = "",
           part: int = 1, seed: int = 0, name: str = "",
           watch_job: Annotated[bool, typer.Option("--watch/--no-watch")] = False,
           address: AddressOpt = DEFAULT_ADDRESS, token: TokenOpt = "") -> None:
    """Submit a job to the gateway."""
    spec = build_spec(mode=mode, images=image_files(inputs or []), input_folder=folder, strategies=strategy or [],
                      samples=samples, first_seed=first_seed, psi_min=psi_min, psi_max=psi_max,
                      taste_model=taste_model, dedup_threshold=dedup if dedup > 0 else None,
                      disable_dedup=dedup <= 0, output_uri=output, part=part, seed=seed, name=name)
    with _client(address, token) as client:
        try:
            job = client.submit(spec)
            out.print(job.job_id)
            if watch_job:
                console.print(_job_line(follow(client, job.job_id)))
        except SfhqError as exc:
            _fail(str(exc))


@app.command()
def watch(job_id: str, address: AddressOpt = DEFAULT_ADDRESS, token: TokenOpt = "") -> None:
    """Follow a job's progress (a bar per stage) until it ends."""
    with _client(address, token) as client:
        try:
            job = follow(client, job_id)
        except SfhqError as exc:
            _fail(str(exc))
        out.print(_job_line(job))


@app.command()
def status(job_id: Annotated[str, typer.Argument()] = "", address: AddressOpt = DEFAULT_ADDRESS,
           token: TokenOpt = "", as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show one job, or list recent jobs."""
    from google.protobuf import json_format
    with _client(address, token) as client:
        try:
            found = [client.get_job(job_id)] if job_id else client.list_jobs()
        except SfhqError as exc:
            _fail(str(exc))
    for job in found:
        if as_json:
            out.print_json(json_format.MessageToJson(job, preserving_proto_field_name=True))
        else:
            out.print(_job_line(job) + (f"  error: {job.error}" if job.error else ""))


@app.command()
def cancel(job_id: str, address: AddressOpt = DEFAULT_ADDRESS, token: TokenOpt = "") -> None:
    """Cancel a job: stop scheduling new work and let in-flight work drain."""
    with _client(address, token) as client:
        try:
            out.print(_job_line(client.cancel(job_id)))
        except SfhqError as exc:
            _fail(str(exc))


@app.command()
def search(text: str, job: Annotated[str, typer.Option(help="only this job's items")] = "",
           source: str = "", top_k: int = 10, download: Annotated[Path | None, typer.Option()] = None,
           address: AddressOpt = DEFAULT_ADDRESS, token: TokenOpt = "") -> None:
    """Text search over indexed images (CLIP)."""
    with _client(address, token) as client:
        try:
            hits = client.search(text, job_id=job, source=source, top_k=top_k).hits
            table = Table("score", "item", "job", "image")
            for hit in hits:
                table.add_row(f"{hit.score:.3f}", hit.item_id, hit.job_id, hit.image_uri)
            out.print(table)
            if download and job:
                paths = client.download(job, download, item_ids=[h.item_id for h in hits if h.job_id == job])
                console.print(f"downloaded {len(paths)} items to {download}")
        except SfhqError as exc:
            _fail(str(exc))


@app.command()
def get(job_id: str, item_id: str, dest: Annotated[Path, typer.Argument()] = Path("."),
        address: AddressOpt = DEFAULT_ADDRESS, token: TokenOpt = "") -> None:
    """Fetch one item (image, segmentation, landmarks, provenance) into DEST in the SFHQ layout."""
    with _client(address, token) as client:
        try:
            paths = client.download(job_id, dest, item_ids=[item_id])
        except SfhqError as exc:
            _fail(str(exc))
    out.print(str(paths[0]))


@app.command()
def export(job_id: str, dest: Path, ids: Annotated[list[str] | None, typer.Option("--id")] = None,
           query: Annotated[str, typer.Option(help="only the best matches of this text")] = "",
           top_k: int = 100, address: AddressOpt = DEFAULT_ADDRESS, token: TokenOpt = "") -> None:
    """Download a job's written items (all, some ids, or the matches of a text query)."""
    with _client(address, token) as client:
        try:
            paths = client.download(job_id, dest, item_ids=ids or None, query=query or None, top_k=top_k)
        except SfhqError as exc:
            _fail(str(exc))
    out.print(f"{len(paths)} items in {dest}")


@app.command()
def label(item_ids: list[str], bad: Annotated[bool, typer.Option("--bad/--good")] = False,
          taste_model: str = "default", labeler: str = "", address: AddressOpt = DEFAULT_ADDRESS,
          token: TokenOpt = "") -> None:
    """Label indexed items good (default) or bad for a taste model."""
    with _client(address, token) as client:
        try:
            reply = client.label({i: not bad for i in item_ids}, taste_model=taste_model, labeler=labeler)
        except SfhqError as exc:
            _fail(str(exc))
    out.print(f"{taste_model}: {reply.positives} positive, {reply.negatives} negative labels")


@app.command()
def serve(service: Annotated[str, typer.Argument(help="gateway | encoder | generator | annotator | search")]) -> None:
    """Run one service (gRPC server + its queue workers) until SIGTERM."""
    _services_needed()
    from services.common.config import get_settings
    from services.launch import SERVICES, serve_service
    if service not in SERVICES:
        _fail(f"unknown service {service!r}; choose from {', '.join(SERVICES)}")
    serve_service(service, get_settings())


@app.command()
def run(inputs: Annotated[Path, typer.Argument(help="folder of inspiration images")] = Path("examples/inspiration"),
        output: Annotated[Path, typer.Argument(help="dataset folder to write")] = Path("out/example"),
        random_weights: Annotated[bool, typer.Option("--random-weights",
                                  help="DEMO ONLY: random models at a small size instead of checkpoints")] = False,
        mode: str = "inspiration", strategy: Annotated[list[str] | None, typer.Option("--strategy", "-s")] = None,
        samples: int = 8,
        dedup: Annotated[float | None, typer.Option(help="near-duplicate cosine threshold (0 = off); default "
                                                    "0.92, off with --random-weights")] = None,
        taste_model: str = "", seed: int = 0,
        image_size: int = 1024) -> None:
    """The main job on one machine: start Redis (embedded unless REDIS_URL), every service, run, write the dataset."""
    _services_needed()
    from services.local_run import LocalRunOptions, run_local
    options = LocalRunOptions(inputs=inputs, output=output, random_weights=random_weights, mode=mode,
                              strategies=strategy or [], samples=samples, dedup=dedup, taste_model=taste_model,
                              seed=seed, image_size=image_size)
    sys.exit(run_local(options, console=console))


@app.command()
def overlay(dataset: Path, stem: str, output: Annotated[Path | None, typer.Argument()] = None) -> None:
    """Draw an item's parsing map and 110 landmarks over its image (PNG)."""
    _services_needed()
    import numpy as np
    from PIL import Image

    from services.annotator.overlay import render_overlay
    image = Image.open(dataset / "images" / f"{stem}.jpg").convert("RGB")
    seg_path, lm_path = dataset / "segmentations" / f"{stem}.png", dataset / "landmarks" / f"{stem}.npz"
    label_map = np.asarray(Image.open(seg_path)) if seg_path.exists() else None
    landmarks = np.load(lm_path, allow_pickle=False)["landmarks"] if lm_path.exists() else None
    target = output or dataset / "overlays" / f"{stem}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    render_overlay(image, label_map=label_map, landmarks=landmarks).save(target)
    out.print(str(target))


@app.command("import-sfhq")
def import_sfhq(path: Path, part: Annotated[int, typer.Option(help="SFHQ part number (source name)")] = 0) -> None:
    """Index a downloaded SFHQ part (its released CLIP features) into the search index in the blob store."""
    _services_needed()
    from services.common.config import get_settings
    from services.search.service import import_into_store
    report = import_into_store(path, get_settings(), part=part)
    out.print(json.dumps(report, indent=2, default=str))


@weights_app.command("list")
def weights_list() -> None:
    """Known checkpoints and whether each is present."""
    _services_needed()
    from services.common.config import get_settings
    from services.common.weights import WeightsRegistry
    registry = WeightsRegistry(get_settings().weights_dir)
    table = Table("name", "present", "file", "format", "description")
    for row in registry.list():
        table.add_row(row["name"], "yes" if row.get("present") else "no", str(row.get("filename", "")),
                      str(row.get("format", "")), str(row.get("description", "")))
    out.print(table)
    if registry.is_random():
        console.print("[bold yellow]this weights folder holds RANDOM demo weights[/]")


@weights_app.command("download")
def weights_download(name: str, url: Annotated[str, typer.Option(help="override the source URL")] = "") -> None:
    """Download a checkpoint (resumable, checksum-verified)."""
    _services_needed()
    from services.common.config import get_settings
    from services.common.weights import WeightsRegistry
    path = WeightsRegistry(get_settings().weights_dir).download(name, url=url or None)
    out.print(str(path))


@weights_app.command("add")
def weights_add(name: str, path: Path, link: bool = False) -> None:
    """Register a checkpoint file (or folder) you already have."""
    _services_needed()
    from services.common.config import get_settings
    from services.common.weights import WeightsRegistry
    out.print(str(WeightsRegistry(get_settings().weights_dir).add(name, path, link=link)))


@weights_app.command("verify")
def weights_verify(name: Annotated[str, typer.Argument()] = "") -> None:
    """Check the sha256 of one or every present checkpoint."""
    _services_needed()
    from services.common.config import get_settings
    from services.common.weights import WeightsRegistry
    registry = WeightsRegistry(get_settings().weights_dir)
    names = [name] if name else [r["name"] for r in registry.list() if r.get("present")]
    bad = [n for n in names if not registry.verify(n)]
    for n in names:
        out.print(f"{n}: {'FAILED' if n in bad else 'ok'}")
    if bad:
        raise typer.Exit(1)


@weights_app.command("make-random")
def weights_make_random(folder: Path) -> None:
    """DEMO/TESTS ONLY: write small random models in the official layouts into FOLDER (marked RANDOM_WEIGHTS)."""
    _services_needed()
    from services.random_weights import write_random_weights
    write_random_weights(folder)
    console.print(f"[bold yellow]wrote RANDOM weights to {folder} (not for real datasets)[/]")


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":
    main()
