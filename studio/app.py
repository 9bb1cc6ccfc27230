"""The studio's ASGI app: security headers, size limits, sessions, errors; routes in pages.py,
api.py and media.py. `create_app(settings)` builds it; `serve(settings)` runs it with uvicorn."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sfhq.sdk import SfhqError
from studio.context import NotLoggedIn, Studio, http_error
from studio.settings import StudioSettings

log = logging.getLogger("sfhq.studio")
HERE = Path(__file__).resolve().parent
SMALL_BODY = 1 << 20  # every request but uploads: 1 MiB
UPLOAD_PATHS = ("/api/jobs", "/api/search")

# No inline script or style anywhere: every script and stylesheet is a file under /static.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class Guard:
    """Pure ASGI middleware: security headers on every response, and a body limit per request
    (declared or streamed), answered 413 before a handler parses anything."""

    def __init__(self, app: ASGIApp, upload_limit: int) -> None:
        self.app = app
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if scope["path"] in UPLOAD_PATHS else SMALL_BODY
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(limit, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLarge:
            await _too_large(limit, send)


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit


async def _too_large(limit: int, send: Send) -> None:
    body = f'{{"error": "the request is larger than {limit / 2**20:.0f} MiB (SFHQ_STUDIO_MAX_UPLOAD_MB)"}}'
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), *SECURITY_HEADERS],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


def wants_html(request: Request) -> bool:
    return not request.url.path.startswith(("/api/", "/media/", "/thumb/"))


def create_app(settings: StudioSettings | None = None) -> FastAPI:
    from studio import api, media, pages  # the routers import this module's helpers

    settings = settings or StudioSettings()
    studio = Studio.create(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        studio.close()

    app = FastAPI(title="sfhq studio", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.studio = studio
    app.state.templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(pages.router)
    app.include_router(api.router)
    app.include_router(media.router)

    @app.exception_handler(NotLoggedIn)
    async def not_logged_in(request: Request, _exc: NotLoggedIn) -> Response:
        if wants_html(request):
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        return JSONResponse({"error": "not logged in: sign in at /login"}, status_code=401)

    @app.exception_handler(SfhqError)
    async def gateway_error(request: Request, exc: SfhqError) -> Response:
        return _error_response(request, http_error(exc))

    @app.exception_handler(HTTPException)
    async def http_exception(request: Request, exc: HTTPException) -> Response:
        return _error_response(request, exc)

    return app


def _error_response(request: Request, exc: HTTPException) -> Response:
    message = str(exc.detail)
    if wants_html(request) and request.method == "GET":
        templates: Jinja2Templates = request.app.state.templates
        context: dict[str, Any] = {"status": exc.status_code, "message": message, "csrf": ""}
        return templates.TemplateResponse(request, "error.html", context, status_code=exc.status_code)
    if exc.status_code == 401:
        message = f"{message} (sign in again at /login)"
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


def asgi_app(settings: StudioSettings | None = None) -> ASGIApp:
    settings = settings or StudioSettings()
    return Guard(create_app(settings), int(settings.max_upload_mb * 2**20))


def serve(settings: StudioSettings | None = None) -> None:
    import uvicorn

    settings = settings or StudioSettings()
    log.info("studio on http://%s:%d (gateway %s)", settings.host, settings.port, settings.gateway_addr)
    uvicorn.run(
        asgi_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        proxy_headers=False,
    )
