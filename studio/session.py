"""Sessions and CSRF: a signed HttpOnly cookie holds the user's gateway token; forms and fetches
carry a CSRF token derived from the session, checked on every state-changing request."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "sfhq_session"
LOGIN_CSRF_COOKIE = "sfhq_login_csrf"  # before a session exists: double-submit on the login form
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class Session:
    token: str  # the gateway token ("" when the gateway runs without auth)
    sid: str  # random per login: the CSRF token is bound to it

    @property
    def user_key(self) -> str:
        """A stable, non-secret name for the user's own areas (exports, caches)."""
        return "u" + hashlib.sha256(self.token.encode()).hexdigest()[:12]


class Sessions:
    def __init__(self, secret: str, max_age_s: float) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="sfhq-studio-session")
        self._csrf_key = hashlib.sha256(("csrf:" + secret).encode()).digest()
        self.max_age_s = max_age_s

    def new(self, token: str) -> tuple[Session, str]:
        session = Session(token=token, sid=secrets.token_urlsafe(16))
        return session, self._serializer.dumps({"t": token, "s": session.sid})

    def read(self, cookie: str | None) -> Session | None:
        if not cookie or len(cookie) > 4096:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=int(self.max_age_s))
        except BadSignature:
            return None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("t"), str)
            or not isinstance(data.get("s"), str)
        ):
            return None
        return Session(token=data["t"], sid=data["s"])

    def csrf_token(self, session: Session) -> str:
        return hmac.new(self._csrf_key, session.sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(self.csrf_token(session), sent or "")
