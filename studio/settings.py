"""The studio's settings: environment variables `SFHQ_STUDIO_<FIELD>` (and `SFHQ_GATEWAY_ADDR`)."""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class StudioSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SFHQ_STUDIO_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    gateway_addr: str = Field(
        default="127.0.0.1:50050",
        validation_alias=AliasChoices("SFHQ_STUDIO_GATEWAY_ADDR", "SFHQ_GATEWAY_ADDR"),
    )
    gateway_tls: bool = False  # TLS to the gateway with the system's roots
    # Signs the session cookies. Unset: a random one per process (sessions end with a restart); set
    # it (the same on every replica) behind a load balancer.
    secret: str = Field(default_factory=lambda: secrets.token_urlsafe(32), min_length=16)

    @field_validator("secret", mode="before")
    @classmethod
    def _random_when_empty(cls, value: object) -> object:
        return value or secrets.token_urlsafe(32)  # SFHQ_STUDIO_SECRET= (empty) means "not set"

    session_hours: float = Field(default=12.0, gt=0)
    cookie_secure: bool = False  # set behind HTTPS: the cookie then never travels in clear
    max_upload_files: int = Field(default=200, ge=1)
    max_upload_mb: float = Field(default=256.0, gt=0)  # one submission's images together
    max_file_mb: float = Field(
        default=32.0, gt=0
    )  # one image (the gateway's own limit is SFHQ_MAX_IMAGE_BYTES)
    thumb_cache_mb: float = Field(default=256.0, ge=0)
    # Exports the studio writes as folders: <export_dir>/<user>/<name>/ (a zip download needs none).
    export_dir: Path = Path("var/studio-exports")
    max_export_items: int = Field(default=10_000, ge=1)
    listing_ttl_s: float = Field(default=2.0, ge=0)  # how long a job's item list is reused while it runs
