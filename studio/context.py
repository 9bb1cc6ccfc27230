"""What every request handler shares: settings, sessions, the gateway clients, caches."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import grpc
from fastapi import HTTPException, Request

from sfhq.sdk import AsyncClient, Client, SfhqError
from studio.imaging import Digests, ThumbnailCache
from studio.listing import Listings
from studio.session import COOKIE, Session, Sessions
from studio.settings import StudioSettings

# gRPC status → HTTP status: the gateway's message goes to the browser as it is.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_error(error: SfhqError) -> HTTPException:
    return HTTPException(HTTP_STATUS.get(error.code, 502), error.details or error.code.name)


class NotLoggedIn(Exception):
    """No valid session: pages redirect to the login page, the API answers 401."""


@dataclass
class Studio:
    settings: StudioSettings
    sessions: Sessions
    thumbs: ThumbnailCache
    listings: Listings
    digests: Digests = field(default_factory=Digests)
    _clients: dict[str, Client] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, settings: StudioSettings) -> Studio:
        return cls(
            settings=settings,
            sessions=Sessions(settings.secret, settings.session_hours * 3600),
            thumbs=ThumbnailCache(int(settings.thumb_cache_mb * 2**20)),
            listings=Listings(settings.listing_ttl_s),
        )

    def client(self, session: Session) -> Client:
        """One channel per user token, reused across requests (gRPC channels are thread-safe)."""
        with self._lock:
            found = self._clients.get(session.token)
            if found is None:
                if len(self._clients) >= 1000:  # many logins: drop the oldest channel
                    oldest = next(iter(self._clients))
                    self._clients.pop(oldest).close()
                found = Client(
                    self.settings.gateway_addr,
                    token=session.token or None,
                    tls=self.settings.gateway_tls,
                    retries=2,
                    token_from_env=False,
                )
                self._clients[session.token] = found
            return found

    def async_client(self, session: Session) -> AsyncClient:
        """For streams (Server-Sent Events): made in the running loop, closed by the caller."""
        return AsyncClient(
            self.settings.gateway_addr,
            token=session.token or None,
            tls=self.settings.gateway_tls,
            token_from_env=False,
        )

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def studio_of(request: Request) -> Studio:
    return request.app.state.studio


def current_session(request: Request) -> Session:
    """The dependency of every page and API route but login: a valid session or NotLoggedIn."""
    session = studio_of(request).sessions.read(request.cookies.get(COOKIE))
    if session is None:
        raise NotLoggedIn()
    request.state.session = session
    return session
