"""The `sfhq` command line: the client commands (submit, watch, status, cancel, search, get, export,
label), which need only the light install.

`run`, `serve`, `weights`, `overlay` and `import-sfhq` come from the services package as a plugin
(`services.cli`, entry point group `sfhq.commands`): this module never imports the services.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sfhq import __version__
from sfhq.localenv import apply_cluster_env, env_file, read_env
from sfhq.progress import follow, job_line
from sfhq.sdk import DEFAULT_ADDRESS, SHOWN_MODES, Client, SfhqError, build_spec, image_files

app = typer.Typer(
    help="sfhq-factory: make SFHQ-style synthetic face datasets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
PLUGIN_GROUP = "sfhq.commands"
console = Console(stderr=True, soft_wrap=True)  # one error, one line
out = Console()

AddressOpt = Annotated[
    str, typer.Option("--address", "-a", envvar="SFHQ_GATEWAY_ADDR", help="gateway host:port")
]
TokenOpt = Annotated[
    str, typer.Option("--token", envvar="SFHQ_TOKEN", help="bearer token", show_default=False)
]


def _client(address: str, token: str) -> Client:
    return Client(address, token=token or None)


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _error_text(exc: BaseException) -> str:
    """One line for a user: the error, and where a gateway is missing, how to get one."""
    text = one_line(exc)
    if isinstance(exc, SfhqError) and exc.code.name == "UNAVAILABLE" and "connect" in exc.details:
        text += " (is a gateway up? `sfhq up` starts a local cluster; --address or SFHQ_GATEWAY_ADDR names another)"
    return text


@app.command()
def version() -> None:
    """Print the version."""
    out.print(__version__)


@app.command()
def submit(
    inputs: Annotated[list[Path] | None, typer.Argument(help="image files or folders (uploaded)")] = None,
    mode: Annotated[str, typer.Option(help=" | ".join(SHOWN_MODES))] = "inspiration",
    folder: Annotated[str, typer.Option(help="a folder URL the services can read (not uploaded)")] = "",
    strategy: Annotated[
        list[str] | None,
        typer.Option("--strategy", "-s", help="name[:k=v,...]; repeat for several candidates"),
    ] = None,
    samples: Annotated[int, typer.Option(help="sampling mode: number of samples")] = 0,
    first_seed: int = 0,
    psi_min: float = 0.0,
    psi_max: float = 0.0,
    taste_model: Annotated[str, typer.Option(help="taste model name (empty: no taste filter)")] = "",
    dedup: Annotated[float, typer.Option(help="near-duplicate cosine threshold; 0 disables")] = 0.92,
    output: Annotated[str, typer.Option("--output", "-o", help="dataset folder or URL")] = "",
    append: Annotated[bool, typer.Option("--append", help="add to the dataset in --output")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace the dataset (or SFHQ files) in --output")
    ] = False,
    part: Annotated[
        int, typer.Option(help="SFHQ part number of the stems (default 1; appending: the dataset's)")
    ] = 0,
    seed: int = 0,
    name: str = "",
    watch_job: Annotated[bool, typer.Option("--watch/--no-watch")] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="with --watch: exit 1 when any item failed")
    ] = False,
    address: AddressOpt = DEFAULT_ADDRESS,
    token: TokenOpt = "",
) -> None:
    """Submit a job to the gateway."""
    if append and overwrite:
        _fail("--append and --overwrite exclude each other", 2)
    spec = build_spec(
        mode=mode,
        images=image_files(inputs or []),
        input_folder=folder,
        strategies=strategy or [],
        samples=samples,
        first_seed=first_seed,
        psi_min=psi_min,
        psi_max=psi_max,
        taste_model=taste_model,
        dedup_threshold=dedup if dedup > 0 else None,
        disable_dedup=dedup <= 0,
        output_uri=output,
        part=part,
        seed=seed,
        name=name,
        write_mode="append" if append else "overwrite" if overwrite else "new",
    )
    with _client(address, token) as client:
        job = client.submit(spec)
        out.print(job.job_id)
        if watch_job:
            job = follow(client, job.job_id, console)
            console.print(job_line(job))
            _exit_for(job, strict)


def _exit_for(job, strict: bool) -> None:  # job: gateway_pb2.Job
    """Exit non-zero when the job did not succeed, or (strict) when any of its items failed."""
    from sfhq.v1 import gateway_pb2

    if job.state != gateway_pb2.JOB_STATE_SUCCEEDED:
        raise typer.Exit(1)
    if strict and job.counts.failed:
        console.print(f"[bold red]error:[/] {job.counts.failed} items failed (--strict)")
        raise typer.Exit(1)


@app.command()
def watch(job_id: str, address: AddressOpt = DEFAULT_ADDRESS, token: TokenOpt = "") -> None:
    """Follow a job's progress (a bar per stage) until it ends."""
    with _client(address, token) as client:
        try:
            job = follow(client, job_id, console)
        except SfhqError as exc:
            _fail(_error_text(exc))
        out.print(job_line(job))


@app.command()
def status(
    job_id: Annotated[str, typer.Argument()] = "",
    address: AddressOpt = DEFAULT_ADDRESS,
    token: TokenOpt = "",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one job, or list recent jobs."""
    from google.protobuf import json_format

    with _client(address, token) as client:
        try:
            found = [client.get_job(job_id)] if job_id else client.list_jobs()
        except SfhqError as exc:
            _fail(_error_text(exc))
    for job in found:
        if as_json:
            out.print_json(json_format.MessageToJson(job, preserving_proto_field_name=True))
        else:
            out.print(job_line(job) + (f"  error: {job.error}" if job.error else ""))


@app.command()
def cancel(job_id: str, address: AddressOpt = DEFAULT_ADDRESS, token: TokenOpt = "") -> None:
    """Cancel a job: stop scheduling new work and let in-flight work drain."""
    with _client(address, token) as client:
        try:
            out.print(job_line(client.cancel(job_id)))
        except SfhqError as exc:
            _fail(_error_text(exc))


@app.command()
def search(
    text: str,
    job: Annotated[str, typer.Option(help="only this job's items")] = "",
    source: str = "",
    top_k: int = 10,
    download: Annotated[Path | None, typer.Option()] = None,
    address: AddressOpt = DEFAULT_ADDRESS,
    token: TokenOpt = "",
) -> None:
    """Text search over indexed images (CLIP)."""
    with _client(address, token) as client:
        try:
            hits = client.search(text, job_id=job, source=source, top_k=top_k).hits
            table = Table("score", "item", "job", "image")
            for hit in hits:
                table.add_row(f"{hit.score:.3f}", hit.item_id, hit.job_id, hit.image_uri)
            out.print(table)
            if download:
                by_job: dict[str, list[str]] = {}
                for hit in hits:
                    if hit.job_id:  # imported SFHQ features have no job (and no files here)
                        by_job.setdefault(hit.job_id, []).append(hit.item_id)
                total = sum(len(client.download(j, download, item_ids=ids)) for j, ids in by_job.items())
                console.print(f"downloaded {total} items to {download} (SFHQ layout, manifest, parquet)")
        except SfhqError as exc:
            _fail(_error_text(exc))


@app.command()
def get(
    job_id: str,
    item_id: str,
    dest: Annotated[Path, typer.Argument()] = Path("."),
    address: AddressOpt = DEFAULT_ADDRESS,
    token: TokenOpt = "",
) -> None:
    """Fetch one item (image, segmentation, landmarks, provenance) into DEST in the SFHQ layout."""
    with _client(address, token) as client:
        try:
            paths = client.download(job_id, dest, item_ids=[item_id])
        except SfhqError as exc:
            _fail(_error_text(exc))
    out.print(str(paths[0]))


@app.command()
def export(
    job_id: str,
    dest: Path,
    ids: Annotated[list[str] | None, typer.Option("--id")] = None,
    query: Annotated[str, typer.Option(help="only the best matches of this text")] = "",
    top_k: int = 100,
    address: AddressOpt = DEFAULT_ADDRESS,
    token: TokenOpt = "",
) -> None:
    """Export a job's written items (all, some ids, or a text query's matches) in the SFHQ layout.

    DEST gets images/, segmentations/, landmarks/, pretrained_features/, latents/, manifest.jsonl
    and .parquet, dataset_info.json, a Hugging Face parquet (data/) and a dataset card (README.md).
    Exporting more jobs into the same DEST adds to it; stems never collide."""
    with _client(address, token) as client:
        try:
            paths = client.download(job_id, dest, item_ids=ids or None, query=query or None, top_k=top_k)
        except SfhqError as exc:
            _fail(_error_text(exc))
    out.print(f"{len(paths)} items in {dest}")


@app.command()
def label(
    item_ids: list[str],
    bad: Annotated[bool, typer.Option("--bad/--good")] = False,
    taste_model: str = "default",
    labeler: str = "",
    address: AddressOpt = DEFAULT_ADDRESS,
    token: TokenOpt = "",
) -> None:
    """Label indexed items good (default) or bad for a taste model."""
    with _client(address, token) as client:
        try:
            reply = client.label({i: not bad for i in item_ids}, taste_model=taste_model, labeler=labeler)
        except SfhqError as exc:
            _fail(_error_text(exc))
    out.print(f"{taste_model}: {reply.positives} positive, {reply.negatives} negative labels")


@app.command("env")
def show_env() -> None:
    """Print the settings of the local cluster `sfhq up` started (for `eval "$(sfhq env)"`)."""
    values = read_env(env_file())
    if not values:
        _fail(f"no local cluster is up ({env_file()} does not exist): start one with `sfhq up`")
    for key, value in values.items():
        out.print(f"export {key}={value}", highlight=False)


def load_plugins(target: typer.Typer) -> list[str]:
    """Add the commands of installed plugins (entry points in the `sfhq.commands` group).

    The services package registers `serve`, `run`, `weights`, `overlay` and `import-sfhq` this way, so
    the light client never imports it; a plugin's own module must stay light (no torch at import).
    """
    loaded = []
    for entry in entry_points(group=PLUGIN_GROUP):
        entry.load()(target)
        loaded.append(entry.name)
    return loaded


load_plugins(app)


# What a user's mistake raises (a bad argument, a missing file, a refused request): one line on
# stderr and exit code 1, never a traceback. SFHQ_DEBUG=1 shows the traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (SfhqError, ValueError, OSError)


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    apply_cluster_env()  # the gateway of `sfhq up`, unless SFHQ_GATEWAY_ADDR says otherwise
    try:
        app(standalone_mode=True)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        # the services' typed errors (missing checkpoint, bad config...) carry a status code
        if os.environ.get("SFHQ_DEBUG") or not (
            isinstance(exc, USER_ERRORS) or hasattr(type(exc), "default_code")
        ):
            raise
        console.print(f"[bold red]error:[/] {_error_text(exc)}", highlight=False)
        sys.exit(1)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 2000 else text[:2000] + " ..."


if __name__ == "__main__":
    main()
