"""Who is calling: bearer tokens -> principals (users, services), and what each may call.

Tokens come from two settings:

* `SFHQ_AUTH_TOKENS`: people and their tools, `name=token` entries (a bare `token` is the user
  `default`). The user named `admin` sees and manages everything.
* `SFHQ_SERVICE_TOKENS`: the services' own tokens, for the calls they make to each other.

A gateway accepts user and service tokens; every other service (encoder, generator, annotator,
search) is internal and accepts only service tokens and the `admin` user, so a user token cannot
call the search service's `Remove` directly. With no tokens configured at all, auth is off (one
trusted machine): every caller is the user `default` with admin rights.

Tokens are compared in constant time (`hmac.compare_digest` against every known token), and the
principal of a call is available to the servicer through `current_principal()`.
"""

from __future__ import annotations

import contextvars
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from services.common.config import ConfigError

DEFAULT_USER = "default"
ADMIN_USER = "admin"
SERVICE = "service"
USER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

Kind = Literal["user", "service"]


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    name: str  # a user name, or "service"
    kind: Kind = "user"

    @property
    def is_admin(self) -> bool:
        """May see and manage every user's jobs, datasets, labels and models."""
        return self.kind == "user" and self.name == ADMIN_USER

    @property
    def may_call_internal_services(self) -> bool:
        return self.kind == "service" or self.is_admin

    def owns(self, owner: str) -> bool:
        """True when this principal may see something owned by `owner`."""
        return self.is_admin or self.kind == "service" or owner == self.name


ANONYMOUS_ADMIN = Principal(ADMIN_USER)  # auth off: one trusted machine
_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("sfhq_principal", default=None)


def current_principal() -> Principal:
    """The principal of the request being served (set by the auth interceptor)."""
    principal = _current.get()
    if principal is None:
        raise RuntimeError("no principal: the call did not pass the auth interceptor")
    return principal


def set_principal(principal: Principal) -> contextvars.Token[Principal | None]:
    return _current.set(principal)


def reset_principal(token: contextvars.Token[Principal | None]) -> None:
    _current.reset(token)


def parse_user_tokens(entries: Iterable[str]) -> dict[str, str]:
    """`name=token` (or a bare `token`, the user `default`) entries -> {token: user name}."""
    book: dict[str, str] = {}
    for entry in entries:
        name, sep, token = entry.partition("=")
        if not sep:
            name, token = DEFAULT_USER, entry
        name, token = name.strip().lower(), token.strip()
        if not USER_NAME.match(name):
            raise ConfigError(f"SFHQ_AUTH_TOKENS: user name {name!r} must be 1-32 of a-z, 0-9, '_' or '-'")
        if len(token) < 16:
            raise ConfigError(f"SFHQ_AUTH_TOKENS: the token of {name!r} is shorter than 16 characters")
        if token in book:
            raise ConfigError(f"SFHQ_AUTH_TOKENS: two users share one token ({book[token]!r} and {name!r})")
        book[token] = name
    return book


class TokenBook:
    """Every token this process accepts, and whose it is."""

    def __init__(self, user_tokens: Sequence[str], service_tokens: Sequence[str]) -> None:
        self._users = parse_user_tokens(user_tokens)
        self._services = [token.strip() for token in service_tokens if token.strip()]
        if any(len(token) < 16 for token in self._services):
            raise ConfigError("SFHQ_SERVICE_TOKENS: every token must have at least 16 characters")
        if set(self._services) & set(self._users):
            raise ConfigError("a token is both a user token and a service token: keep them apart")
        if self._users and not self._services:
            raise ConfigError(
                "SFHQ_AUTH_TOKENS is set but SFHQ_SERVICE_TOKENS is not: the services need their own "
                "tokens to call each other (user tokens cannot call internal services)"
            )

    @property
    def enabled(self) -> bool:
        return bool(self._users or self._services)

    @property
    def users(self) -> list[str]:
        return sorted(set(self._users.values()))

    def resolve(self, given: str) -> Principal | None:
        """The principal of a presented token, or None. Compares with every token (constant time)."""
        given_bytes = given.encode()
        found: Principal | None = None
        for token, name in self._users.items():
            if hmac.compare_digest(given_bytes, token.encode()):
                found = Principal(name)
        for token in self._services:
            if hmac.compare_digest(given_bytes, token.encode()):
                found = Principal(SERVICE, "service")
        return found


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` header; "" when malformed, None when absent."""
    header = next((value for key, value in metadata or () if key == "authorization"), None)
    if header is None:
        return None
    if isinstance(header, bytes):
        header = header.decode(errors="replace")
    scheme, _, given = header.partition(" ")
    return given.strip() if scheme.lower() == "bearer" else ""


@dataclass(frozen=True)
class Refusal:
    """Why a call is refused: its status (UNAUTHENTICATED or PERMISSION_DENIED) and the reason."""

    code: str
    reason: str


def authenticate(
    book: TokenBook, metadata: Iterable[tuple[str, str | bytes]] | None, *, internal: bool
) -> Principal | Refusal:
    """The caller's principal, or why it is refused.

    `internal`: this process is an internal service (only service tokens and `admin` may call it)."""
    if not book.enabled:
        return ANONYMOUS_ADMIN
    token = bearer_token(metadata)
    if token is None:
        return Refusal("UNAUTHENTICATED", "missing bearer token (send 'authorization: Bearer <token>')")
    if not token:
        return Refusal("UNAUTHENTICATED", "malformed authorization header (expected 'Bearer <token>')")
    principal = book.resolve(token)
    if principal is None:
        return Refusal("UNAUTHENTICATED", "invalid bearer token")
    if internal and not principal.may_call_internal_services:
        return Refusal(
            "PERMISSION_DENIED",
            f"user {principal.name!r} may not call an internal service (it takes service tokens only)",
        )
    return principal
