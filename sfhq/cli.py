"""The `sfhq` command line: the client commands (submit, watch, status, cancel, search, get, export,
label), which need only the light install.

`run`, `serve`, `weights`, `overlay` and `import-sfhq` come from the services package as a plugin
(`services.cli`, entry point group `sfhq.commands`): this module never imports the services.
"""

from __future__ import annotations

import json
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
from sfhq.prompts import cli_prompt_spec
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
    first_seed: Annotated[
        int, typer.Option(help="sampling / prompts: the first seed (image or sample n gets first_seed + n)")
    ] = 0,
    psi_min: float = 0.0,
    psi_max: float = 0.0,
    correction: Annotated[
        list[str] | None,
        typer.Option(
            "--correction",
            help="sampling: encoder_truncation:coarse=A,middle=B,fine=C; repeat for several candidates per sample",
        ),
    ] = None,
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", help="prompts mode: a prompt; repeat for several")
    ] = None,
    prompts_file: Annotated[
        Path | None, typer.Option(help="prompts mode: a file of prompts, one per line (# comments)")
    ] = None,
    template: Annotated[
        str, typer.Option(help='prompts mode: "A portrait photo of a {age} {person}", with --slot')
    ] = "",
    recipe: Annotated[
        Path | None,
        typer.Option(help='prompts mode: JSON {"template": ..., "slots": {...}, "negative_prompt": ...}'),
    ] = None,
    slot: Annotated[
        list[str] | None,
        typer.Option("--slot", help="prompts mode: NAME=value|value|... or NAME=@file; repeat per slot"),
    ] = None,
    negative_prompt: Annotated[str, typer.Option(help="prompts mode: what the images should not show")] = "",
    images_per_prompt: Annotated[
        int, typer.Option(help="prompts mode: images (seeds) per prompt (default 1)", show_default=False)
    ] = 0,
    guidance: Annotated[
        float | None, typer.Option(help="prompts mode: guidance scale (default 7.5)", show_default=False)
    ] = None,
    steps: Annotated[
        int, typer.Option(help="prompts mode: denoising steps (default 30)", show_default=False)
    ] = 0,
    width: Annotated[
        int, typer.Option(help="prompts mode: image width (default: the pipeline's)", show_default=False)
    ] = 0,
    height: Annotated[
        int, typer.Option(help="prompts mode: image height (default: the pipeline's)", show_default=False)
    ] = 0,
    pipeline: Annotated[
        str, typer.Option(help="prompts mode: stable-diffusion-2-1 (default) | stable-diffusion-v1-4")
    ] = "",
    taste_model: Annotated[str, typer.Option(help="taste model name (empty: no taste filter)")] = "",
    dedup: Annotated[float, typer.Option(help="near-duplicate cosine threshold; 0 disables")] = 0.92,
    accept_threshold: Annotated[
        float | None, typer.Option(help="taste score from which a candidate is accepted")
    ] = None,
    reject_threshold: Annotated[
        float | None, typer.Option(help="taste score below which it is rejected (between: review)")
    ] = None,
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="dataset folder or URL (default: your area of the blob store)",
            show_default=False,
        ),
    ] = "",
    append: Annotated[bool, typer.Option("--append", help="add to the dataset in --output")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace the dataset (or SFHQ files) in --output")
    ] = False,
    part: Annotated[
        int,
        typer.Option(
            help="SFHQ part number of the stems (default 1, sampling 3, prompts 4 or 2 with v1.4; "
            "appending: the dataset's)"
        ),
    ] = 0,
    seed: Annotated[int, typer.Option(help="the job seed: the candidates' strategy seeds come from it")] = 0,
    name: Annotated[str, typer.Option(help="a name for the job (job lists, the studio)")] = "",
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
        corrections=correction or [],
        taste_model=taste_model,
        dedup_threshold=dedup if dedup > 0 else None,
        disable_dedup=dedup <= 0,
        accept_threshold=accept_threshold,
        reject_threshold=reject_threshold,
        output_uri=output,
        part=part,
        seed=seed,
        name=name,
        write_mode="append" if append else "overwrite" if overwrite else "new",
        prompts=cli_prompt_spec(
            prompt=prompt or [],
            prompts_file=prompts_file,
            template=template,
            recipe=recipe,
            slot=slot or [],
            negative_prompt=negative_prompt,
            images_per_prompt=images_per_prompt,
            first_seed=first_seed,
            guidance_scale=guidance,
            steps=steps,
            width=width,
            height=height,
            pipeline=pipeline,
        )
        if mode == "prompts"
        else None,
    )
    with _client(address, token) as client:
        job = client.submit(spec)
        out.print(job.job_id)
        if watch_job:
            job = follow(client, job.job_id, console)
            console.print(job_line(job) + (f"\n[red]{job.error}[/]" if job.error else ""))
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
    job: Annotated[
        str, typer.Option(help="the ids are this job's item ids (as in its manifest) or stems")
    ] = "",
    taste_model: str = "default",
    labeler: str = "",
    address: AddressOpt = DEFAULT_ADDRESS,
    token: TokenOpt = "",
) -> None:
    """Label items good (default) or bad for a taste model (`sfhq taste train` learns from them)."""
    with _client(address, token) as client:
        try:
            labels = {i: not bad for i in item_ids}
            reply = client.label(labels, taste_model=taste_model, labeler=labeler, job_id=job)
        except SfhqError as exc:
            _fail(_error_text(exc))
    out.print(f"{taste_model}: {reply.positives} positive, {reply.negatives} negative labels")


# ---- curation --------------------------------------------------------------------------------------

taste_app = typer.Typer(help="Taste models: train from your labels, list, show, score.", no_args_is_help=True)
app.add_typer(taste_app, name="taste")


def _model_table(models) -> Table:  # models: search_pb2.TasteModelInfo
    table = Table(
        "model", "version", "family", "labels +/-", "CV accuracy", "CV AUC", "thresholds", "members"
    )
    for m in models:
        members = ", ".join(
            f"{k} {m.member_weights[k]:.1f} (AUC {m.member_auc.get(k, 0):.3f})"
            for k in sorted(m.member_weights)
        )
        table.add_row(
            m.name,
            str(m.version),
            m.family,
            f"{m.positives}/{m.negatives}",
            f"{m.cv_accuracy:.3f}",
            f"{m.cv_auc:.3f}",
            f"{m.low_threshold:.2f} / {m.high_threshold:.2f}",
            members,
        )
    return table


LABEL_BATCH = 1000
MAX_LABEL_FILE_BYTES = 64 << 20


def _read_label_file(path: Path) -> dict[str, bool | None]:
    """`ITEM_ID,good|bad` lines (CSV, a header allowed) or JSON lines with item_id and good."""
    if not path.is_file():
        _fail(f"--from-labels: {path} is not a file")
    if path.stat().st_size > MAX_LABEL_FILE_BYTES:
        _fail(f"--from-labels: {path} is larger than {MAX_LABEL_FILE_BYTES >> 20} MiB")
    labels: dict[str, bool | None] = {}
    words = {"good": True, "1": True, "true": True, "bad": False, "0": False, "false": False}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                record = json.loads(line)
                item_id, value = str(record["item_id"]), record["good"]
            except (ValueError, KeyError, TypeError):
                _fail(f"--from-labels: {path}:{number}: a JSON line needs item_id and good")
            if not isinstance(value, bool):
                _fail(f"--from-labels: {path}:{number}: good must be true or false")
        else:
            item_id, _, word = (part.strip() for part in line.partition(","))
            if number == 1 and word.lower() not in words:
                continue  # a header
            if word.lower() not in words:
                _fail(f"--from-labels: {path}:{number}: {word!r} is not good or bad")
            value = words[word.lower()]
        labels[item_id] = value
    return labels


@taste_app.command("train")
def taste_train(
    name: Annotated[str, typer.Argument()] = "default",
    family: Annotated[
        str, typer.Option(help="vta (lr + kNN + LightGBM, weights searched) | lr+knn | lr")
    ] = "",
    from_labels: Annotated[
        list[Path] | None,
        typer.Option(
            "--from-labels",
            help="first add the labels of a file: CSV lines `ITEM_ID,good|bad` or JSON lines "
            '{"item_id": ..., "good": true} (ids as `sfhq search` prints them, or stems)',
        ),
    ] = None,
    job: Annotated[str, typer.Option(help="the files' ids are this job's item ids or stems")] = "",
    features: Annotated[
        str,
        typer.Option(
            help="feature sets, comma-separated (default CLIP_ViTL_14@336), e.g. "
            "CLIP_ViTL_14@336,ConvNext_XL_Imagenet21k (SFHQ_EXTRA_FEATURES must have made them)"
        ),
    ] = "",
    address: AddressOpt = DEFAULT_ADDRESS,
    token: TokenOpt = "",
) -> None:
    """Train a new version of a taste model from your labels; prints its cross-validated metrics."""
    labels: dict[str, bool | None] = {}
    for path in from_labels or []:
        labels.update(_read_label_file(path))
    with _client(address, token) as client, console.status(f"training {name} ..."):
        if labels:
            items = list(labels.items())
            for start in range(0, len(items), LABEL_BATCH):  # the gateway caps one request
                client.label(dict(items[start : start + LABEL_BATCH]), taste_model=name, job_id=job)
            out.print(f"added {len(labels)} labels from {', '.join(map(str, from_labels or []))}")
        keys = [key.strip() for key in features.split(",") if key.strip()]
        info = client.train_taste(name, family=family, feature_keys=keys)
    out.print(_model_table([info]))
    out.print(
        f"trained in {info.train_seconds:.1f} s; below {info.low_threshold:.2f}: rejected, from "
        f"{info.high_threshold:.2f}: accepted, between: review"
    )


@taste_app.command("list")
def taste_list(address: AddressOpt = DEFAULT_ADDRESS, token: TokenOpt = "") -> None:
    """Your taste models (their latest versions)."""
    with _client(address, token) as client:
        out.print(_model_table(client.list_taste_models()))


@taste_app.command("show")
def taste_show(
    name: Annotated[str, typer.Argument(help="name or name@version")] = "default",
    address: AddressOpt = DEFAULT_ADDRESS,
    token: TokenOpt = "",
) -> None:
    """One taste model's metrics."""
    with _client(address, token) as client:
        out.print(_model_table([client.get_taste_model(name)]))


@taste_app.command("score")
def taste_score(
    name: Annotated[str, typer.Argument()] = "default",
    job: str = "",
    dataset: Annotated[str, typer.Option(help="a dataset folder (ours or an SFHQ part)")] = "",
    top: Annotated[int, typer.Option(help="print this many best and worst items")] = 5,
    address: AddressOpt = DEFAULT_ADDRESS,
    token: TokenOpt = "",
) -> None:
    """Score a job's candidates or a dataset's items; prints a histogram and the extremes."""
    with _client(address, token) as client:
        reply = client.score_items(name, job_id=job, dataset_uri=dataset)
    items = sorted(reply.items, key=lambda i: -i.score)
    most = max(reply.histogram) or 1
    for n, count in enumerate(reply.histogram):
        out.print(
            f"{n / 20:.2f}-{(n + 1) / 20:.2f} {'#' * round(40 * count / most):<40} {count}", highlight=False
        )
    for label, chosen in (("best", items[:top]), ("worst", items[-top:][::-1])):
        out.print(
            f"{label}: " + ", ".join(f"{i.stem or i.item_id} {i.score:.3f}" for i in chosen), highlight=False
        )
    out.print(f"{len(items)} items scored with {reply.model.name}@{reply.model.version}")


@app.command()
def review(
    job_id: str,
    accept: Annotated[
        list[str] | None, typer.Option("--accept", help="an item to write into the dataset")
    ] = None,
    reject: Annotated[list[str] | None, typer.Option("--reject", help="an item to keep out")] = None,
    count: int = 20,
    labeler: str = "",
    address: AddressOpt = DEFAULT_ADDRESS,
    token: TokenOpt = "",
) -> None:
    """The review band: list the items a verdict teaches most, or give verdicts (--accept / --reject)."""
    with _client(address, token) as client:
        verdicts = [(i, True) for i in accept or []] + [(i, False) for i in reject or []]
        for item_id, good in verdicts:
            item = client.review(job_id, item_id, good, labeler=labeler)
            out.print(f"{item.item_id}: {item.state}")
        if verdicts:
            return
        queue = client.review_queue(job_id, count=count)
        table = Table("item", "score", "uncertainty", "strategy")
        for entry in queue.items:
            strategy = json.loads(entry.item.provenance_json or "{}").get("strategy") or {}
            table.add_row(
                entry.item.item_id,
                f"{entry.score:.3f}",
                f"{entry.uncertainty:.2f}",
                str(strategy.get("name", "")),
            )
        out.print(table)
        out.print(f"{queue.waiting} items wait for a verdict: sfhq review {job_id} --accept ID --reject ID")


@app.command()
def curate(
    dataset: Annotated[str, typer.Argument(help="a dataset folder (ours or an SFHQ part)")],
    taste_model: Annotated[str, typer.Option()] = "default",
    threshold: Annotated[
        float | None, typer.Option(help="below it an item leaves (default: the model's low threshold)")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only print what would move")] = False,
    address: AddressOpt = DEFAULT_ADDRESS,
    token: TokenOpt = "",
) -> None:
    """Re-score a dataset with a taste model; items below the threshold move to its rejected/ folder."""
    with _client(address, token) as client, console.status("scoring ..."):
        reply = client.curate_dataset(dataset, taste_model, threshold=threshold, dry_run=dry_run)
    for moved in sorted(reply.moved, key=lambda m: m.score):
        out.print(f"{'would move' if dry_run else 'moved'} {moved.stem} ({moved.score:.3f})", highlight=False)
    verb = "would move" if dry_run else "moved"
    out.print(
        f"{reply.scored} scored with {reply.model.name}@{reply.model.version}, threshold {reply.threshold:.2f}: "
        f"{reply.kept} kept, {len(reply.moved)} {verb} to rejected/"
    )


@app.command()
def dedup(
    dataset: Annotated[str, typer.Argument(help="a dataset folder of this system")],
    threshold: Annotated[float | None, typer.Option(help="cosine similarity (default 0.92, SFHQ's)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only print the groups")] = False,
    include_sfhq: Annotated[
        bool, typer.Option("--include-sfhq", help="also against imported SFHQ parts")
    ] = False,
    address: AddressOpt = DEFAULT_ADDRESS,
    token: TokenOpt = "",
) -> None:
    """Near-duplicate groups of a dataset: the best-scored copy stays, the others move to rejected/."""
    with _client(address, token) as client, console.status("comparing ..."):
        reply = client.dedup_dataset(
            dataset, threshold=threshold, dry_run=dry_run, include_public=include_sfhq
        )
    for group in reply.groups:
        removed = ", ".join(f"{m.item_id} ({m.similarity:.3f})" for m in group.removed)
        score = f" {group.kept.taste_score:.3f}" if group.kept.HasField("taste_score") else ""
        out.print(
            f"keep {group.kept.item_id}{score}; {'would remove' if dry_run else 'removed'}: {removed}",
            highlight=False,
        )
    out.print(
        f"{reply.items} items compared in {reply.seconds:.1f} s: {len(reply.groups)} groups, "
        f"{len(reply.moved)} {'would move' if dry_run else 'moved'} to rejected/"
    )


@app.command("env")
def show_env() -> None:
    """Print the settings of the local cluster `sfhq up` started (for `eval "$(sfhq env)"`)."""
    values = read_env(env_file())
    if not values:
        _fail(f"no local cluster is up ({env_file()} does not exist): start one with `sfhq up`")
    for key, value in values.items():
        out.print(f"export {key}={value}", highlight=False)


@app.command("studio")
def open_studio(
    url: Annotated[str, typer.Option(envvar="SFHQ_STUDIO_URL", help="default: the local cluster's")] = "",
    browser: Annotated[bool, typer.Option("--browser/--no-browser")] = True,
) -> None:
    """Open the web studio (the one `sfhq up` started, or --url) in a browser."""
    url = url or read_env(env_file()).get("SFHQ_STUDIO_URL", "")
    if not url:
        _fail("no studio known: start the local cluster with `sfhq up`, or give --url / SFHQ_STUDIO_URL")
    out.print(url, highlight=False)
    if browser:
        import webbrowser

        webbrowser.open(url)


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
