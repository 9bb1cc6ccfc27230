"""Process settings: one `Settings` object per process, from `SFHQ_*` env vars and an optional file.

Precedence, highest first: keyword arguments (`get_settings(batch_size=4)`), environment variables,
the settings file named by `SFHQ_CONFIG_FILE` (TOML with top-level keys named like the fields, or a
`.env` file with `SFHQ_*` lines), then the defaults below. The fields and their meaning are the
"Settings fields" table of docs/architecture.md.

This module must stay light: the client imports it, so no torch, Redis or gRPC at import time.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from services.common.errors import FailedPrecondition
from services.common.stages import SERVICE_STAGES, check_stage

CONFIG_FILE_ENV = "SFHQ_CONFIG_FILE"

# gRPC port of each service when `port` is not set.
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 50050,
    "encoder": 50051,
    "generator": 50052,
    "annotator": 50053,
    "search": 50054,
}

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


class ConfigError(FailedPrecondition, ValueError):
    """A setting is invalid or cannot be honoured (e.g. device 'cuda' without CUDA)."""


def _split_csv(value: Any) -> Any:
    """Env vars carry lists as 'a,b,c'; TOML and keyword arguments may already pass a list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _default_addr(service: str) -> str:
    return f"127.0.0.1:{DEFAULT_PORTS[service]}"


class Settings(BaseSettings):
    """Everything a service process needs to know about its surroundings."""

    model_config = SettingsConfigDict(
        env_prefix="SFHQ_",
        extra="ignore",  # a shared .env or TOML file may hold keys for other tools
        validate_default=True,
        populate_by_name=True,
    )

    # `validation_alias` replaces the prefixed env name, so both spellings are listed; the prefixed
    # one first so that it wins. Keyword arguments and TOML keys use the field name (populate_by_name).
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("SFHQ_REDIS_URL", "REDIS_URL"))
    blob_url: str = "./var/blobs"
    weights_dir: Path = Path("~/.cache/sfhq/weights")
    device: str = "auto"
    fp16: bool = True
    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=0, le=65535)
    gateway_addr: str = _default_addr("gateway")
    encoder_addr: str = _default_addr("encoder")
    generator_addr: str = _default_addr("generator")
    annotator_addr: str = _default_addr("annotator")
    search_addr: str = _default_addr("search")
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # /metrics has no auth: it listens on its own address, loopback unless a deployment opens it.
    metrics_host: str = "127.0.0.1"
    # People and tools: `name=token` entries (a bare token is the user "default"); empty = auth off.
    auth_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # The services' own tokens for calls between them (internal RPCs accept only these and `admin`).
    service_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Extra places where jobs may read input folders and write datasets (local folders or URLs of the
    # blob store's protocol); the blob store (each user's own area in it) is always allowed.
    data_roots: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Limits on an input folder, checked while it is listed (before anything is copied).
    max_input_files: int = Field(default=100_000, ge=1)
    max_input_bytes: int = Field(default=8 * 1024**3, ge=1)
    max_input_depth: int = Field(default=8, ge=0)
    max_spec_bytes: int = Field(default=4 * 1024**2, ge=1024)  # a job spec as stored (no inline images)
    # How long a finished job's state and its intermediate blobs are kept (datasets stay).
    job_retention_s: float = Field(default=30 * 24 * 3600, gt=0)
    max_streams_per_user: int = Field(default=64, ge=1)  # open WatchJob streams per user
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    batch_size: int = Field(default=8, ge=1)
    batch_wait_ms: int = Field(default=50, ge=0)
    visibility_timeout_s: float = Field(default=300.0, gt=0)
    max_deliveries: int = Field(default=3, ge=1)
    # Longest a worker renews the lease of one batch; 0 = 10 visibility timeouts (worker.MAX_LEASE_FACTOR).
    max_lease_s: float = Field(default=0, ge=0)
    stream_maxlen: int = Field(default=10000, ge=1)
    # First tasks (inputs, samples, prompt images) one job may have: its items are planned at submit
    # (200k: about 12 s and 200 MB); a job above the stream cap is fed to its stage as it drains.
    max_job_items: int = Field(default=200_000, ge=1)
    max_message_mb: float = Field(default=64, gt=0)
    max_image_bytes: int = Field(default=33554432, ge=1)
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    # None = every stage of the service; [] = gRPC only (env value "none").
    stages: Annotated[list[str] | None, NoDecode] = None
    parser_backend: Literal["torch", "onnx"] = "onnx"
    clip_backend: Literal["torch", "onnx"] = "torch"
    # Feature extractors beyond CLIP ViT-L/14@336 whose features the pickles carry (and taste models
    # may use): keys of services/search/extractors.py, e.g. "CLIP_ViTL_14,ConvNext_XL_Imagenet21k".
    extra_features: Annotated[list[str], NoDecode] = Field(default_factory=list)
    align_backend: Literal["opencv", "exact"] = "opencv"
    # Threads that encode and write a batch's blobs while the worker runs the next batch (0: the
    # worker thread does it between batches, as before).
    store_threads: int = Field(default=2, ge=0, le=64)
    log_level: str = "INFO"

    # ---- validation -------------------------------------------------------------------------

    @field_validator("auth_tokens", "service_tokens", "data_roots", "extra_features", mode="before")
    @classmethod
    def _parse_tokens(cls, value: Any) -> Any:
        return _split_csv(value) if value is not None else []

    @field_validator("stages", mode="before")
    @classmethod
    def _parse_stages(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str) and value.strip().lower() in ("", "all"):
            return None
        if isinstance(value, str) and value.strip().lower() == "none":
            return []
        return _split_csv(value)

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for stage in value:
                check_stage(stage)
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis_url must start with redis://, rediss:// or unix://, got {value!r}")
        return value

    @field_validator("weights_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return Path(os.path.expanduser(str(value)))

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE_PATTERN.match(value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level_name(cls, value: str) -> str:
        value = value.strip().upper()
        if value not in _LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(_LOG_LEVELS)}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError(
                "tls_cert and tls_key must be set together (PEM certificate chain + private key)"
            )
        return self

    # ---- sources ----------------------------------------------------------------------------

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV, "").strip()
        if config_file:
            path = Path(config_file).expanduser()
            if not path.is_file():
                raise ConfigError(f"{CONFIG_FILE_ENV} names {path}, which is not a readable file")
            if path.suffix.lower() == ".toml":
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            else:
                sources.append(DotEnvSettingsSource(settings_cls, env_file=path))
        return tuple(sources)

    # ---- derived values ---------------------------------------------------------------------

    def port_for(self, service: str) -> int:
        """The gRPC port this process serves `service` on: `port` if set, else the service default."""
        if self.port is not None:
            return self.port
        try:
            return DEFAULT_PORTS[service]
        except KeyError:
            raise ConfigError(
                f"unknown service {service!r}; expected one of {', '.join(DEFAULT_PORTS)}"
            ) from None

    def addr_for(self, service: str) -> str:
        """Where clients reach `service` (`<service>_addr`)."""
        if service not in DEFAULT_PORTS:
            raise ConfigError(f"unknown service {service!r}; expected one of {', '.join(DEFAULT_PORTS)}")
        return getattr(self, f"{service}_addr")

    def stages_for(self, service: str) -> list[str]:
        """The stages this process's workers consume for `service` (the `stages` setting, filtered)."""
        own = SERVICE_STAGES.get(service)
        if own is None:
            raise ConfigError(f"unknown service {service!r}; expected one of {', '.join(SERVICE_STAGES)}")
        if self.stages is None:
            return list(own)
        return [stage for stage in self.stages if stage in own]

    def resolved_device(self) -> str:
        """`auto` becomes `cuda` when torch sees a GPU, else `cpu`. torch is imported only here."""
        if self.device == "cpu":
            return "cpu"
        try:
            import torch
        except ImportError:
            if self.device == "auto":
                return "cpu"
            raise ConfigError(f"device {self.device!r} needs torch, which is not installed") from None
        cuda = torch.cuda.is_available()
        if self.device == "auto":
            return "cuda" if cuda else "cpu"
        if not cuda:
            raise ConfigError(f"device {self.device!r} was requested but CUDA is not available")
        index = int(self.device.split(":")[1]) if ":" in self.device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {self.device!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
        return self.device

    def use_fp16(self) -> bool:
        """Half precision only where it is safe and useful: on CUDA, when `fp16` is on."""
        return self.fp16 and self.resolved_device().startswith("cuda")

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert and self.tls_key)

    @property
    def mtls_enabled(self) -> bool:
        return self.tls_enabled and bool(self.tls_ca)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_tokens or self.service_tokens)

    def configure_logging(self) -> None:
        """Apply `log_level` to the root logger with one plain format for every service."""
        logging.basicConfig(
            level=self.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger().setLevel(self.log_level)


def get_settings(**overrides: Any) -> Settings:
    """Build the settings of this process; keyword arguments win over env and file values."""
    return Settings(**overrides)
