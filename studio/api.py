"""The JSON API the pages' scripts call. Every state-changing route checks the CSRF header; every
parameter has a size limit; gateway errors arrive as {"error": message} with the mapped status."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from sfhq.annotations import CLIP_FEATURE_KEY
from sfhq.export import Exporter
from sfhq.prompts import parse_slot, prompt_spec
from sfhq.sdk import SfhqError, build_spec
from sfhq.tensors import tensor_to_numpy
from sfhq.v1 import gateway_pb2
from studio.context import Studio, current_session, http_error, studio_of
from studio.listing import Filters, dataset_jobs, select
from studio.pages import counts_view, job_view
from studio.session import CSRF_HEADER, Session

router = APIRouter(prefix="/api")
SessionDep = Annotated[Session, Depends(current_session)]
MAX_PAGE = 2000
MAX_STRATEGIES = 16
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff", "application/octet-stream")


def csrf_checked(request: Request, session: SessionDep) -> Session:
    if not studio_of(request).sessions.csrf_ok(session, request.headers.get(CSRF_HEADER)):
        raise HTTPException(403, f"{CSRF_HEADER}: missing or wrong (reload the page)")
    return session


WriteDep = Annotated[Session, Depends(csrf_checked)]


def _ctx(request: Request, session: Session) -> tuple[Studio, Any]:
    studio = studio_of(request)
    return studio, studio.client(session)


# ------------------------------------------------------------------------------------------ jobs


@router.get("/jobs")
def list_jobs(
    request: Request, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> Any:
    _, client = _ctx(request, session)
    return {"jobs": [job_view(j) for j in client.list_jobs(limit=limit)]}


@router.get("/jobs/{job_id}")
def get_job(request: Request, session: SessionDep, job_id: str) -> Any:
    _, client = _ctx(request, session)
    return job_view(client.get_job(job_id))


def _float(form: Any, name: str, default: float | None = None) -> float | None:
    value = str(form.get(name) or "").strip()
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise HTTPException(400, f"{name}: {value[:40]!r} is not a number") from None


def _prompt_spec(form: Any) -> gateway_pb2.PromptSpec:
    """The prompt fields of the submit form (the gateway checks every limit and names the field)."""
    lines = [line.strip() for line in str(form.get("prompts") or "").splitlines()]
    slot_lines = [line.strip() for line in str(form.get("slots") or "").splitlines() if line.strip()]
    slots: dict[str, list[str]] = {}
    for line in slot_lines:
        name, values = parse_slot(line)  # ValueError: 400 naming the line
        slots[name] = values
    guidance = _float(form, "guidance_scale")
    return prompt_spec(
        prompts=[line for line in lines if line and not line.startswith("#")],
        template=str(form.get("template") or "").strip(),
        slots=slots,
        negative_prompt=str(form.get("negative_prompt") or ""),
        images_per_prompt=int(_float(form, "images_per_prompt", 0) or 0),
        steps=int(_float(form, "steps", 0) or 0),
        guidance_scale=guidance,
        pipeline=str(form.get("pipeline") or ""),
    )


@router.post("/jobs")
async def submit_job(request: Request, session: WriteDep) -> Any:
    """A job from the submit form: uploaded images, a folder in the allowed data roots, sampling, or
    prompts (Stable Diffusion)."""
    studio = studio_of(request)
    limits = studio.settings
    form = await request.form(max_files=limits.max_upload_files + 1, max_fields=100, max_part_size=64 * 1024)
    files = [f for f in form.getlist("images") if isinstance(f, UploadFile) and f.filename]
    if len(files) > limits.max_upload_files:
        raise HTTPException(
            413, f"images: at most {limits.max_upload_files} files per job (SFHQ_STUDIO_MAX_UPLOAD_FILES)"
        )
    images: list[bytes] = []
    for upload in files:
        if upload.content_type not in IMAGE_TYPES:
            raise HTTPException(400, f"images: {upload.filename} is {upload.content_type}, not an image")
        data = await upload.read()
        if len(data) > limits.max_file_mb * 2**20:
            raise HTTPException(413, f"images: {upload.filename} is larger than {limits.max_file_mb:.0f} MiB")
        images.append(data)
    mode = str(form.get("mode") or "inspiration")
    folder = str(form.get("input_folder") or "").strip()
    strategies = [s.strip() for s in str(form.get("strategies") or "").split(",") if s.strip()]
    for field, value, most in (
        ("strategies", strategies, MAX_STRATEGIES),
        ("taste_model", str(form.get("taste_model") or ""), 128),
        ("name", str(form.get("name") or ""), 200),
        ("input_folder", folder, 4096),
    ):
        if len(value) > most:
            raise HTTPException(
                400, f"{field}: at most {most} {'entries' if field == 'strategies' else 'characters'}"
            )
    if mode not in ("sampling", "prompts") and not images and not folder:
        raise HTTPException(400, "images: choose images to upload or a folder (input_folder)")
    try:
        prompts = _prompt_spec(form) if mode == "prompts" else None
        spec = build_spec(
            mode=mode,
            images=images,
            input_folder=folder,
            strategies=strategies,
            samples=int(_float(form, "samples", 0) or 0),
            psi_min=_float(form, "psi_min", 0.0) or 0.0,
            psi_max=_float(form, "psi_max", 0.0) or 0.0,
            taste_model=str(form.get("taste_model") or ""),
            dedup_threshold=_float(form, "dedup_threshold"),
            output_uri="",  # the gateway's default: the user's own area of the blob store
            name=str(form.get("name") or ""),
            prompts=prompts,
        )
        for name, upload in zip([f.filename or "" for f in files], spec.inputs, strict=False):
            upload.name = name[:255]
    except ValueError as error:
        raise HTTPException(400, str(error)) from None
    client = studio.client(session)
    job = await asyncio.to_thread(client.submit, spec)
    return JSONResponse(job_view(job), status_code=201)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(request: Request, session: WriteDep, job_id: str) -> Any:
    studio, client = _ctx(request, session)
    job = client.cancel(job_id)
    studio.listings.forget(session.user_key, job_id)
    return job_view(job)


def _event_json(event: gateway_pb2.JobEvent) -> str:
    counts = event.counts
    return json.dumps(
        {
            "kind": event.kind,
            "item": event.item_id,
            "state": gateway_pb2.JobState.Name(event.state).removeprefix("JOB_STATE_").lower(),
            "message": event.message or (event.error.message if event.HasField("error") else ""),
            "counts": counts_view(counts),
            "stages": dict(sorted(counts.done_by_stage.items())),
        }
    )


@router.get("/jobs/{job_id}/events")
async def job_events(request: Request, session: SessionDep, job_id: str) -> StreamingResponse:
    """Server-Sent Events fed by WatchJob; a reconnecting browser resumes after Last-Event-ID."""
    studio = studio_of(request)
    after = (request.headers.get("last-event-id") or "")[:64]
    client = studio.async_client(session)
    try:
        await client.get_job(job_id)  # NOT_FOUND as a status, before the stream starts
    except SfhqError as error:
        await client.close()
        raise http_error(error) from None

    async def stream():
        try:
            yield "retry: 2000\n\n"
            async for event in client.watch(job_id, after_event_id=after):
                if await request.is_disconnected():
                    break
                yield f"id: {event.event_id}\nevent: job\ndata: {_event_json(event)}\n\n"
            yield "event: end\ndata: {}\n\n"
        except SfhqError as error:
            yield f"event: failure\ndata: {json.dumps({'error': error.details})}\n\n"
        finally:
            await client.close()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


# ------------------------------------------------------------------------------------------ items


def _rows(studio: Studio, client: Any, session: Session, scope: str, scope_id: str) -> list[dict[str, Any]]:
    if scope == "job":
        return studio.listings.job_items(client, session.user_key, scope_id)
    if scope == "dataset":
        jobs = dataset_jobs(client, scope_id)
        if not jobs:
            raise HTTPException(404, f"dataset_id: no dataset {scope_id!r} among your jobs")
        rows: list[dict[str, Any]] = []
        for job in jobs:
            rows.extend(studio.listings.job_items(client, session.user_key, job.job_id))
        return rows
    raise HTTPException(400, f"scope: {scope!r} must be job or dataset")


@router.get("/items")
def list_items(
    request: Request,
    session: SessionDep,
    scope: Annotated[str, Query(max_length=16)] = "job",
    id: Annotated[str, Query(max_length=128)] = "",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 200,
    state: Annotated[str, Query(max_length=32)] = "",
    strategy: Annotated[str, Query(max_length=64)] = "",
    parent: Annotated[str, Query(max_length=128)] = "",
    min_score: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_score: Annotated[float | None, Query(ge=0, le=1)] = None,
    duplicate_of: Annotated[str, Query(max_length=128)] = "",
    sort: Annotated[str, Query(pattern=r"^-?(time|score)$")] = "time",
    max_abs_yaw: Annotated[float | None, Query(ge=0, le=180)] = None,
    max_abs_pitch: Annotated[float | None, Query(ge=0, le=180)] = None,
) -> Any:
    """One page of a job's (or a dataset's) candidates, filtered and sorted; `total` for the scrollbar."""
    studio, client = _ctx(request, session)
    rows = _rows(studio, client, session, scope, id)
    chosen = select(
        rows,
        Filters(
            state=state,
            strategy=strategy,
            parent=parent,
            min_score=min_score,
            max_score=max_score,
            duplicate_of=duplicate_of,
            sort="time" if sort == "-time" else sort,
            max_abs_yaw=max_abs_yaw,
            max_abs_pitch=max_abs_pitch,
        ),
    )
    strategies = sorted({r["strategy"] for r in rows if r["strategy"]})
    return {
        "total": len(chosen),
        "offset": offset,
        "items": chosen[offset : offset + limit],
        "strategies": strategies,
    }


@router.get("/items/{job_id}/{item_id}")
def get_item(request: Request, session: SessionDep, job_id: str, item_id: str) -> Any:
    """An item's annotations for the overlays: landmarks in image pixels, their groups, provenance."""
    _, client = _ctx(request, session)
    item = client.get_item(job_id, item_id, image=False, annotations=True)
    landmarks = tensor_to_numpy(item.landmarks).tolist() if item.landmarks.shape else []
    return {
        "id": item.item_id,
        "job": item.job_id,
        "state": item.state,
        "stem": item.stem,
        "landmarks": landmarks,
        "provenance": json.loads(item.provenance_json or "{}"),
        "manifest": json.loads(item.manifest_json or "{}"),
    }


# ------------------------------------------------------------------------------------------ search


def _hit_json(hit: Any) -> dict[str, Any]:
    job, _, item = hit.item_id.partition("/")
    return {
        "id": hit.item_id,
        "job": hit.job_id or (job if item else ""),
        "item": item if item else hit.item_id,
        "similarity": round(hit.score, 4),
        "score": round(hit.taste_score, 4) if hit.HasField("taste_score") else None,
        "decision": hit.decision,
        "source": hit.source,
    }


@router.post("/search")
async def search(request: Request, session: WriteDep) -> Any:
    """Text (`text`), an uploaded image (`image`) or "more like this" (`like` = job/item)."""
    studio = studio_of(request)
    client = studio.client(session)
    content_type = request.headers.get("content-type", "")
    top_k = 60
    if content_type.startswith("multipart/"):
        form = await request.form(max_files=1, max_fields=10, max_part_size=64 * 1024)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "image: choose an image file")
        data = await upload.read()
        if len(data) > studio.settings.max_file_mb * 2**20:
            raise HTTPException(413, f"image: larger than {studio.settings.max_file_mb:.0f} MiB")
        query: dict[str, Any] = {"image": data}
    else:
        body = SearchBody.model_validate(await _json(request))
        top_k = body.top_k
        if body.like:
            job_id, _, item_id = body.like.partition("/")
            item = await asyncio.to_thread(client.get_item, job_id, item_id, image=False, annotations=True)
            if CLIP_FEATURE_KEY not in item.features:  # (`in`: indexing a protobuf map would add the key)
                raise HTTPException(409, f"like: item {body.like} has no CLIP features (it is not written)")
            query = {"vector": tensor_to_numpy(item.features[CLIP_FEATURE_KEY])}
        elif body.text.strip():
            query = {"text": body.text.strip()}
        else:
            raise HTTPException(400, "text: type what to look for, or upload an image")
    started = time.perf_counter()
    reply = await asyncio.to_thread(lambda: client.search(top_k=top_k, **query))
    return {
        "hits": [_hit_json(h) for h in reply.hits],
        "ms": round(1000 * (time.perf_counter() - started), 1),
    }


class SearchBody(BaseModel):
    text: str = Field("", max_length=1000)
    like: str = Field("", max_length=300)
    top_k: int = Field(60, ge=1, le=500)


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body() or b"{}")
    except ValueError:
        raise HTTPException(400, "body: not JSON") from None


# ------------------------------------------------------------------------------------------ labels, review, taste


class LabelBody(BaseModel):
    job_id: str = Field(min_length=1, max_length=128)
    item_ids: list[str] = Field(min_length=1, max_length=500)
    good: bool | None  # None: take the label back (undo)
    taste_model: str = Field("default", max_length=128)


@router.post("/label")
async def label(request: Request, session: WriteDep) -> Any:
    body = LabelBody.model_validate(await _json(request))
    _, client = _ctx(request, session)
    reply = await asyncio.to_thread(
        lambda: client.label(
            {i[:200]: body.good for i in body.item_ids},
            taste_model=body.taste_model,
            job_id=body.job_id,
            labeler="studio",
        )
    )
    return {"positives": reply.positives, "negatives": reply.negatives}


@router.get("/review/{job_id}")
def review_queue(
    request: Request, session: SessionDep, job_id: str, count: Annotated[int, Query(ge=1, le=200)] = 20
) -> Any:
    _, client = _ctx(request, session)
    queue = client.review_queue(job_id, count=count)
    return {
        "waiting": queue.waiting,
        "items": [
            {
                "id": e.item.item_id,
                "job": job_id,
                "score": round(e.score, 4),
                "uncertainty": round(e.uncertainty, 3),
            }
            for e in queue.items
        ],
    }


class ReviewBody(BaseModel):
    job_id: str = Field(min_length=1, max_length=128)
    item_id: str = Field(min_length=1, max_length=200)
    accept: bool


@router.post("/review")
async def review(request: Request, session: WriteDep) -> Any:
    body = ReviewBody.model_validate(await _json(request))
    studio, client = _ctx(request, session)
    item = await asyncio.to_thread(
        lambda: client.review(body.job_id, body.item_id, body.accept, labeler="studio")
    )
    studio.listings.forget(session.user_key, body.job_id)
    return {"id": item.item_id, "state": item.state}


def _model_json(info: Any) -> dict[str, Any]:
    return {
        "name": info.name,
        "version": info.version,
        "family": info.family,
        "positives": info.positives,
        "negatives": info.negatives,
        "cv_accuracy": round(info.cv_accuracy, 4),
        "cv_auc": round(info.cv_auc, 4),
        "low": round(info.low_threshold, 3),
        "high": round(info.high_threshold, 3),
        "members": dict(info.member_weights),
        "train_seconds": round(info.train_seconds, 2),
    }


class TrainBody(BaseModel):
    name: str = Field("default", max_length=128)
    family: str = Field("", max_length=16)


@router.post("/taste/train")
async def train_taste(request: Request, session: WriteDep) -> Any:
    body = TrainBody.model_validate(await _json(request))
    _, client = _ctx(request, session)
    info = await asyncio.to_thread(lambda: client.train_taste(body.name, family=body.family))
    return _model_json(info)


@router.get("/taste")
def list_taste(request: Request, session: SessionDep) -> Any:
    _, client = _ctx(request, session)
    return {"models": [_model_json(m) for m in client.list_taste_models()]}


@router.get("/taste/{name}/scores")
def taste_scores(
    request: Request, session: SessionDep, name: str, job: Annotated[str, Query(max_length=128)]
) -> Any:
    """The histogram of a job's candidates' scores under a model, with its thresholds."""
    _, client = _ctx(request, session)
    reply = client.score_items(name[:140], job_id=job)
    return {"histogram": list(reply.histogram), "model": _model_json(reply.model), "scored": len(reply.items)}


class CurateBody(BaseModel):
    job_id: str = Field(min_length=1, max_length=128)  # whose dataset
    taste_model: str = Field("default", max_length=140)
    threshold: float | None = Field(None, ge=0, le=1)
    dry_run: bool = True


@router.post("/curate")
async def curate(request: Request, session: WriteDep) -> Any:
    body = CurateBody.model_validate(await _json(request))
    studio, client = _ctx(request, session)
    job = await asyncio.to_thread(client.get_job, body.job_id)
    reply = await asyncio.to_thread(
        lambda: client.curate_dataset(
            job.dataset_uri, body.taste_model, threshold=body.threshold, dry_run=body.dry_run
        )
    )
    if not body.dry_run:
        studio.listings.forget(session.user_key, body.job_id)
    return {
        "scored": reply.scored,
        "kept": reply.kept,
        "threshold": round(reply.threshold, 3),
        "moved": [{"stem": m.stem, "score": round(m.score, 4)} for m in reply.moved],
        "dry_run": reply.dry_run,
    }


class DedupBody(BaseModel):
    job_id: str = Field(min_length=1, max_length=128)
    threshold: float | None = Field(None, gt=0, lt=1)
    dry_run: bool = True


@router.post("/dedup")
async def dedup(request: Request, session: WriteDep) -> Any:
    """Near-duplicate groups of a job's dataset, members named by job/item for their pictures."""
    body = DedupBody.model_validate(await _json(request))
    studio, client = _ctx(request, session)
    job = await asyncio.to_thread(client.get_job, body.job_id)
    reply = await asyncio.to_thread(
        lambda: client.dedup_dataset(job.dataset_uri, threshold=body.threshold, dry_run=body.dry_run)
    )
    by_stem = {r["stem"]: r for r in _rows(studio, client, session, "dataset", job.dataset_id) if r["stem"]}

    def member(stem: str, similarity: float | None = None) -> dict[str, Any]:
        row = by_stem.get(stem, {})
        return {
            "stem": stem,
            "job": row.get("job", ""),
            "id": row.get("id", ""),
            "score": row.get("score"),
            "similarity": None if similarity is None else round(similarity, 4),
        }

    groups = [
        {"kept": member(g.kept.item_id), "removed": [member(m.item_id, m.similarity) for m in g.removed]}
        for g in reply.groups
    ]
    return {"items": reply.items, "groups": groups, "moved": len(reply.moved), "dry_run": reply.dry_run}


# ------------------------------------------------------------------------------------------ export


class ExportBody(BaseModel):
    items: list[str] = Field(min_length=1, max_length=10_000)  # "job/item" of each selected item
    name: str = Field("", max_length=64)
    format: str = Field("folder", pattern=r"^(folder|zip)$")


@router.post("/export")
async def export(request: Request, session: WriteDep) -> Any:
    """The selection in the full SFHQ layout: a folder under the studio's export area, or a zip."""
    body = ExportBody.model_validate(await _json(request))
    studio, client = _ctx(request, session)
    if len(body.items) > studio.settings.max_export_items:
        raise HTTPException(413, f"items: at most {studio.settings.max_export_items} per export")
    pairs = []
    for ref in body.items:
        job_id, _, item_id = ref.partition("/")
        if not job_id or not item_id or len(ref) > 300:
            raise HTTPException(400, f"items: {ref[:60]!r} is not job/item")
        pairs.append((job_id, item_id))
    if body.format == "folder":
        if not NAME.match(body.name):
            raise HTTPException(
                400, "name: letters, digits, '.', '_' or '-' (at most 64), not starting with a dot"
            )
        dest = studio.settings.export_dir.resolve() / session.user_key / body.name
        info = await asyncio.to_thread(_export_into, client, pairs, dest)
        return {"folder": str(dest), "items": info["items"], "skipped": info["skipped"]}
    tmp = Path(tempfile.mkdtemp(prefix="sfhq-studio-export-"))
    info = await asyncio.to_thread(_export_into, client, pairs, tmp / "export")
    archive = await asyncio.to_thread(_zip, tmp / "export", tmp / "export.zip")
    name = (body.name if NAME.match(body.name) else "sfhq-export") + ".zip"
    return FileResponse(
        archive,
        media_type="application/zip",
        filename=name,
        headers={"x-sfhq-items": str(info["items"])},
        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True),
    )


def _export_into(client: Any, pairs: list[tuple[str, str]], dest: Path) -> dict[str, Any]:
    """Written items only: the others have no dataset files (their annotations were never made)."""
    exporter = Exporter(dest)
    skipped = 0
    for job_id, item_id in pairs:
        item = client.get_item(job_id, item_id, image=True, annotations=True)
        if item.state != "written":
            skipped += 1
            continue
        exporter.add(item)
    if not exporter.added:
        raise HTTPException(409, f"items: none of the {len(pairs)} selected items is written in a dataset")
    return {**exporter.finish(), "skipped": skipped}


def _zip(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:  # JPEG/PNG do not compress further
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                out.write(path, path.relative_to(folder).as_posix())
    return archive
