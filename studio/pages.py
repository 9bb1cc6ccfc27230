"""The HTML screens. Each page is rendered here with what it needs to show at once; the rest
(galleries, live progress, overlays) is fetched by the page's script from api.py."""

from __future__ import annotations

import json
import secrets
from typing import Annotated, Any
from urllib.parse import urlparse

import numpy as np
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import RedirectResponse, Response

from sfhq.annotations import LANDMARK_GROUP_COLORS, LANDMARK_GROUP_TABLE, PARSING_CLASSES, PARSING_COLORS
from sfhq.sdk import SfhqError
from sfhq.tensors import tensor_to_numpy
from sfhq.v1 import gateway_pb2
from studio.context import Studio, current_session, http_error, studio_of
from studio.listing import dataset_jobs, item_summary
from studio.session import COOKIE, CSRF_FIELD, LOGIN_CSRF_COOKIE, Session

router = APIRouter()
SessionDep = Annotated[Session, Depends(current_session)]
STATE_NAMES = {v: k.removeprefix("JOB_STATE_").lower() for k, v in gateway_pb2.JobState.items()}
MODE_NAMES = {v: k.removeprefix("JOB_MODE_").lower() for k, v in gateway_pb2.JobMode.items()}
FILTER_STATES = (
    "",
    "written",
    "accepted",
    "review",
    "rejected_taste",
    "rejected_duplicate",
    "failed",
    "inputs",
)


def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    studio: Studio = studio_of(request)
    session: Session | None = getattr(request.state, "session", None)
    context.setdefault("csrf", studio.sessions.csrf_token(session) if session else "")
    return request.app.state.templates.TemplateResponse(request, template, context, status_code=status)


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _safe_next(target: str) -> str:
    """Only a path of this site: never an open redirect."""
    parsed = urlparse(target)
    if parsed.scheme or parsed.netloc or not target.startswith("/") or target.startswith("//"):
        return "/jobs"
    return target


COUNT_NAMES = (
    "inputs",
    "candidates",
    "accepted",
    "written",
    "review",
    "rejected_taste",
    "rejected_duplicate",
    "failed",
    "in_flight",
    "cancelled",
)


def counts_view(counts: gateway_pb2.JobCounts) -> dict[str, Any]:
    """A job's counters and tasks done per stage, as the pages show them (and the events carry them)."""
    return {name: getattr(counts, name) for name in COUNT_NAMES}


def job_view(job: gateway_pb2.Job) -> dict[str, Any]:
    counts = job.counts
    return {
        "id": job.job_id,
        "name": job.name or job.spec.name,
        "state": STATE_NAMES.get(job.state, "unknown"),
        "mode": MODE_NAMES.get(job.mode, ""),
        "created": job.created_at,
        "dataset_uri": job.dataset_uri,
        "dataset_id": job.dataset_id,
        "error": job.error,
        "counts": counts_view(counts),
        "stages": dict(sorted(counts.done_by_stage.items())),
    }


# ------------------------------------------------------------------------------------------ login


@router.get("/login")
def login_page(request: Request, next: str = "/jobs", error: str = "") -> Response:
    studio = studio_of(request)
    # Before a session exists the form's CSRF token is tied to a cookie of its own (double submit).
    nonce = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(16)
    login_csrf = studio.sessions.csrf_token(Session(token="", sid=nonce))
    response = render(request, "login.html", next=_safe_next(next), error=error, login_csrf=login_csrf)
    response.set_cookie(LOGIN_CSRF_COOKIE, nonce, httponly=True, samesite="strict", path="/login")
    return response


@router.post("/login")
def login(
    request: Request,
    token: Annotated[str, Form(max_length=4096)] = "",
    next: Annotated[str, Form(max_length=2048)] = "/jobs",
    csrf_token: Annotated[str, Form(alias=CSRF_FIELD, max_length=128)] = "",
) -> Response:
    studio = studio_of(request)
    nonce = request.cookies.get(LOGIN_CSRF_COOKIE) or ""
    if not nonce or not studio.sessions.csrf_ok(Session(token="", sid=nonce), csrf_token):
        raise HTTPException(403, "csrf_token: the login form expired; reload the page")
    session, cookie = studio.sessions.new(token.strip())
    try:
        studio.client(session).list_jobs(limit=1)  # the gateway says whether the token is good
    except SfhqError as error:
        status = http_error(error).status_code
        message = "that token is not valid here" if status in (401, 403) else http_error(error).detail
        return render(
            request, "login.html", status=status, next=_safe_next(next), error=message, login_csrf=csrf_token
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=int(studio.settings.session_hours * 3600),
        httponly=True,
        samesite="strict",
        secure=studio.settings.cookie_secure,
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(
    request: Request,
    session: SessionDep,
    csrf_token: Annotated[str, Form(alias=CSRF_FIELD, max_length=128)] = "",
) -> Response:
    if not studio_of(request).sessions.csrf_ok(session, csrf_token):
        raise HTTPException(403, "csrf_token: missing or wrong")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


# ------------------------------------------------------------------------------------------ screens


@router.get("/legend.css")
def legend_css() -> Response:
    """The parsing classes' swatch colours, from the same table the annotator draws with."""
    rules = [f".sw-{i} {{ background: rgb{PARSING_COLORS[i]}; }}" for i in range(len(PARSING_CLASSES))]
    return Response("\n".join(rules) + "\n", media_type="text/css", headers={"cache-control": "max-age=3600"})


@router.get("/healthz")
def healthz() -> Response:
    """For probes and the local cluster: the process answers (it needs no session)."""
    return Response("ok\n", media_type="text/plain")


@router.get("/")
def home(_session: SessionDep) -> Response:
    return RedirectResponse("/jobs", status_code=303)


@router.get("/jobs")
def jobs_page(request: Request, session: SessionDep) -> Response:
    jobs = studio_of(request).client(session).list_jobs(limit=100)
    return render(request, "jobs.html", jobs=[job_view(j) for j in jobs], page="jobs")


@router.get("/jobs/{job_id}")
def job_page(request: Request, session: SessionDep, job_id: str) -> Response:
    client = studio_of(request).client(session)
    job = client.get_job(job_id)
    failures = [item_summary(i) for i in client.list_items(job_id, state="failed", limit=200)]
    return render(request, "job.html", job=job_view(job), failures=failures, page="jobs")


@router.get("/jobs/{job_id}/gallery")
def gallery_page(request: Request, session: SessionDep, job_id: str) -> Response:
    job = studio_of(request).client(session).get_job(job_id)
    return render(
        request,
        "gallery.html",
        job=job_view(job),
        scope="job",
        scope_id=job_id,
        states=FILTER_STATES,
        page="jobs",
    )


@router.get("/datasets/{dataset_id}/gallery")
def dataset_gallery_page(request: Request, session: SessionDep, dataset_id: str) -> Response:
    jobs = dataset_jobs(studio_of(request).client(session), dataset_id)
    if not jobs:
        raise HTTPException(404, f"dataset_id: no dataset {dataset_id!r} among your jobs")
    return render(
        request,
        "gallery.html",
        job=job_view(jobs[0]),
        scope="dataset",
        scope_id=dataset_id,
        states=FILTER_STATES,
        page="jobs",
    )


@router.get("/items/{job_id}/{item_id}")
def item_page(request: Request, session: SessionDep, job_id: str, item_id: str) -> Response:
    client = studio_of(request).client(session)
    item = client.get_item(job_id, item_id, image=False, annotations=True)
    summary = item_summary(item)
    rows = studio_of(request).listings.job_items(client, session.user_key, job_id)
    inspiration = item.parent_id or item.item_id
    siblings = [r for r in rows if r["parent"] == inspiration]
    manifest = json.loads(item.manifest_json or "{}")
    provenance = json.loads(item.provenance_json or "{}")
    checkpoints = manifest.get("provenance") or {}
    random_weights = any(isinstance(v, dict) and v.get("random_weights") for v in checkpoints.values())
    return render(
        request,
        "item.html",
        item=summary,
        inspiration=inspiration,
        siblings=siblings,
        manifest=manifest,
        provenance=provenance,
        random_weights=random_weights,
        has_parsing=item.HasField("segmentation") and bool(item.segmentation.data),
        has_landmarks=item.HasField("landmarks") and bool(item.landmarks.shape),
        # in the page, so its script needs no second GetItem for them
        landmarks_json=json.dumps(
            np.round(tensor_to_numpy(item.landmarks), 2).tolist() if item.landmarks.shape else []
        ),
        has_latent=item.HasField("latent") and bool(item.latent.shape),
        classes=[(i, n, _hex(PARSING_COLORS[i])) for i, n in enumerate(PARSING_CLASSES)][1:],
        groups=[(n, a, b, _hex(LANDMARK_GROUP_COLORS[n])) for n, a, b in LANDMARK_GROUP_TABLE],
        page="jobs",
    )


@router.get("/search")
def search_page(
    request: Request,
    _session: SessionDep,
    q: Annotated[str, Query(max_length=1000)] = "",
    like: Annotated[str, Query(max_length=300)] = "",
) -> Response:
    return render(request, "search.html", q=q, like=like, page="search")


@router.get("/review/{job_id}")
def review_page(request: Request, session: SessionDep, job_id: str) -> Response:
    job = studio_of(request).client(session).get_job(job_id)
    return render(request, "review.html", job=job_view(job), page="review")


@router.get("/duplicates/{job_id}")
def duplicates_page(request: Request, session: SessionDep, job_id: str) -> Response:
    job = studio_of(request).client(session).get_job(job_id)
    return render(request, "duplicates.html", job=job_view(job), page="jobs")
