"""The `sfhq` commands that run the system: `serve`, `run`, `weights ...`, `overlay`, `import-sfhq`.

They reach the `sfhq` command line as a plugin (entry point group `sfhq.commands`, see
`sfhq.cli.load_plugins`), so the light client never imports the services. This module itself stays
light -- only typer at import -- because a light install loads it too: every command first checks
that the services extra is installed and says so in one line when it is not.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True, soft_wrap=True)  # one error, one line
out = Console()

# What `pip install 'sfhq-factory[services]'` brings that the light client lacks.
SERVICES_EXTRA_MODULES = ("torch", "redis", "faiss", "dlib", "transformers", "diffusers", "onnxruntime")


def missing_services_extra() -> list[str]:
    """The modules of the services extra that cannot be imported here (empty: it is installed)."""
    return [name for name in SERVICES_EXTRA_MODULES if importlib.util.find_spec(name) is None]


def require_services_extra() -> None:
    missing = missing_services_extra()
    if missing:
        console.print(
            f"[bold red]error:[/] this command needs the services extra (missing: {', '.join(missing)}): "
            "pip install 'sfhq-factory\\[services]'"
        )
        raise typer.Exit(2)


def serve(
    service: Annotated[
        str,
        typer.Argument(
            help="gateway | encoder | generator | annotator | search | studio, or several model "
            "services sharing one process (and GPU): encoder,search,annotator"
        ),
    ],
) -> None:
    """Run a service (gRPC server + its queue workers) until SIGTERM; `studio`: the web studio."""
    if service == "studio":  # an HTTP client of the gateway: needs only the studio extra
        from studio.__main__ import main as studio_main

        studio_main()
        return
    require_services_extra()
    from services.common.config import get_settings
    from services.launch import serve_service, service_names

    try:
        service_names(service)
    except ValueError as error:
        console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(2) from None
    serve_service(service, get_settings())


DEFAULT_RUN_INPUTS, DEFAULT_RUN_OUTPUT = Path("examples/inspiration"), Path("out/example")


def run(
    inputs: Annotated[
        Path,
        typer.Argument(
            help="folder of inspiration images (sampling and prompts take none: one argument is OUTPUT)"
        ),
    ] = DEFAULT_RUN_INPUTS,
    output: Annotated[Path, typer.Argument(help="dataset folder to write")] = DEFAULT_RUN_OUTPUT,
    random_weights: Annotated[
        bool,
        typer.Option(
            "--random-weights", help="DEMO ONLY: random models at a small size instead of checkpoints"
        ),
    ] = False,
    mode: str = "inspiration",
    strategy: Annotated[list[str] | None, typer.Option("--strategy", "-s")] = None,
    samples: int = 8,
    dedup: Annotated[
        float | None,
        typer.Option(
            help="near-duplicate cosine threshold (0 = off); default 0.92, off with --random-weights"
        ),
    ] = None,
    taste_model: str = "",
    seed: int = 0,
    image_size: int = 1024,
    append: Annotated[bool, typer.Option("--append", help="add to the dataset in OUTPUT")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace the dataset in OUTPUT")] = False,
    data: Annotated[
        Path | None, typer.Option(help="the local cluster's data folder (default: OUTPUT.work)")
    ] = None,
    prompts_file: Annotated[
        Path | None, typer.Option(help="--mode prompts: a file of prompts, one per line")
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(help='--mode prompts: JSON {"template": ..., "slots": {...}} (examples/prompts)'),
    ] = None,
    images_per_prompt: int = 0,
    steps: Annotated[int, typer.Option(help="--mode prompts: denoising steps (default 30)")] = 0,
) -> None:
    """The main job on one machine: up (Redis + every service), submit, watch, down; writes the dataset."""
    require_services_extra()
    if append and overwrite:
        console.print("[bold red]error:[/] --append and --overwrite exclude each other")
        raise typer.Exit(2)
    if mode in ("sampling", "prompts") and output == DEFAULT_RUN_OUTPUT and inputs != DEFAULT_RUN_INPUTS:
        inputs, output = DEFAULT_RUN_INPUTS, inputs  # `sfhq run --mode prompts out/pt4`: no inputs to read
    from services.local_job import LocalRunOptions, run_local
    from sfhq.prompts import cli_prompt_spec

    options = LocalRunOptions(
        inputs=inputs,
        output=output,
        random_weights=random_weights,
        mode=mode,
        strategies=strategy or [],
        samples=samples,
        dedup=dedup,
        taste_model=taste_model,
        seed=seed,
        image_size=image_size,
        write_mode="append" if append else "overwrite" if overwrite else "new",
        data_dir=data,
        prompts=cli_prompt_spec(
            prompts_file=prompts_file, recipe=recipe, images_per_prompt=images_per_prompt, steps=steps
        )
        if mode == "prompts"
        else None,
    )
    sys.exit(run_local(options, console=console))


DEFAULT_DATA = Path("sfhq-data")


def up(
    data: Annotated[Path, typer.Option(help="where the cluster keeps Redis, blobs and logs")] = DEFAULT_DATA,
    random_weights: Annotated[
        bool, typer.Option("--random-weights", help="DEMO ONLY: random models instead of checkpoints")
    ] = False,
    allow: Annotated[
        list[Path] | None,
        typer.Option("--allow", help="a folder jobs may read and write besides the blob store (repeat)"),
    ] = None,
) -> None:
    """Start a local cluster in the background (Redis with persistence + every service); keeps its data."""
    require_services_extra()
    from services import cluster
    from sfhq.localenv import env_file

    with console.status("starting the cluster ..."):
        state = cluster.up(
            data, random_weights=random_weights, data_roots=tuple(allow or ()), say=console.print
        )
    out.print(f"gateway   {state.gateway_addr}")
    out.print(f"studio    {state.studio_url}  (`sfhq studio` opens it)")
    out.print(f"redis     {state.redis_url}  (append-only file in {Path(state.data_dir) / 'redis'})")
    out.print(f"data      {state.data_dir}")
    out.print(f"env file  {env_file()}  (the sfhq commands read it; `sfhq env` prints it)")
    if state.random_weights:
        console.print(
            f"[bold yellow]RANDOM WEIGHTS ({state.weights_dir}): demo models, the faces are noise[/]"
        )
    out.print("stop it with `sfhq down`")


def down(
    data: Annotated[
        Path | None, typer.Option(help="the cluster's data folder (default: the one that is up)")
    ] = None,
) -> None:
    """Stop the local cluster `sfhq up` started; its jobs, datasets, index and labels stay in its data folder."""
    require_services_extra()
    from services import cluster

    state = cluster.down(data, say=console.print)
    if state is None:
        console.print("no local cluster is up")
        raise typer.Exit(1)
    out.print(f"stopped the cluster of {state.data_dir}")


def overlay(dataset: Path, stem: str, output: Annotated[Path | None, typer.Argument()] = None) -> None:
    """Draw an item's parsing map and 110 landmarks over its image (PNG)."""
    require_services_extra()
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


def import_sfhq(
    path: Path,
    part: Annotated[int, typer.Option(help="SFHQ part number (source name); default: from the folder")] = 0,
    address: Annotated[str, typer.Option("--address", "-a", envvar="SFHQ_GATEWAY_ADDR")] = "127.0.0.1:50050",
    token: Annotated[str, typer.Option("--token", envvar="SFHQ_TOKEN", show_default=False)] = "",
) -> None:
    """Index a downloaded SFHQ part (its released CLIP features) in the running search service.

    The features are read here (restricted unpickler) and streamed to the gateway in batches: the
    running index has them at once and saves them with itself. The admin's imports are public.
    """
    require_services_extra()
    from services.search.sfhq_import import ImportReport, sfhq_items
    from sfhq.sdk import Client
    from sfhq.tensors import numpy_to_tensor
    from sfhq.v1 import search_pb2

    report = ImportReport(root=str(path))
    items = (
        search_pb2.IndexedItem(
            item_id=stem, vector=numpy_to_tensor(vector), image_uri=meta.image_uri, source=meta.source
        )
        for stem, vector, meta in sfhq_items(path, report, part=part or None)
    )
    with Client(address, token=token or None, timeout=60) as client:
        reply = client.import_items(items)
    report.indexed = int(reply.added)
    out.print(json.dumps({**report.to_dict(), "index_size": reply.index_size}, indent=2, default=str))
    if not reply.added:
        console.print(f"[bold red]error:[/] nothing was imported from {path} (see the counts above)")
        raise typer.Exit(1)


weights_app = typer.Typer(help="Official checkpoints: list, download, add, verify.", no_args_is_help=True)


def _registry():  # -> WeightsRegistry
    require_services_extra()
    from services.common.config import get_settings
    from services.common.weights import WeightsRegistry

    return WeightsRegistry(get_settings().weights_dir)


@weights_app.command("list")
def weights_list() -> None:
    """Known checkpoints and whether each is present."""
    registry = _registry()
    table = Table("name", "present", "file", "format", "description")
    for row in registry.list():
        table.add_row(
            row["name"],
            "yes" if row.get("present") else "no",
            str(row.get("filename", "")),
            str(row.get("format", "")),
            str(row.get("description", "")),
        )
    out.print(table)
    if registry.is_random():
        console.print("[bold yellow]this weights folder holds RANDOM demo weights[/]")


@weights_app.command("download")
def weights_download(
    name: str, url: Annotated[str, typer.Option(help="override the source URL")] = ""
) -> None:
    """Download a checkpoint (resumable, checksum-verified)."""
    out.print(str(_registry().download(name, url=url or None)))


@weights_app.command("add")
def weights_add(name: str, path: Path, link: bool = False) -> None:
    """Register a checkpoint file (or folder) you already have."""
    out.print(str(_registry().add(name, path, link=link)))


@weights_app.command("verify")
def weights_verify(name: Annotated[str, typer.Argument()] = "") -> None:
    """Check the sha256 of one or every present checkpoint."""
    registry = _registry()
    names = [name] if name else [r["name"] for r in registry.list() if r.get("present")]
    bad = [n for n in names if not registry.verify(n)]
    for n in names:
        out.print(f"{n}: {'FAILED' if n in bad else 'ok'}")
    if bad:
        raise typer.Exit(1)


@weights_app.command("make-random")
def weights_make_random(folder: Path) -> None:
    """DEMO/TESTS ONLY: write small random models in the official layouts into FOLDER (marked RANDOM_WEIGHTS)."""
    require_services_extra()
    from services.random_weights import write_random_weights

    write_random_weights(folder)
    console.print(f"[bold yellow]wrote RANDOM weights to {folder} (not for real datasets)[/]")


def register(app: typer.Typer) -> None:
    """The `sfhq.commands` entry point: add this module's commands to the `sfhq` app."""
    app.command()(serve)
    app.command()(run)
    app.command()(up)
    app.command()(down)
    app.command()(overlay)
    app.command("import-sfhq")(import_sfhq)
    app.add_typer(weights_app, name="weights")
