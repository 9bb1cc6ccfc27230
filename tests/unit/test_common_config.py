"""Settings: defaults, env parsing, settings files, per-service ports, device resolution."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.common.config import DEFAULT_PORTS, ConfigError, Settings, get_settings


def test_defaults_match_the_documented_table():
    settings = get_settings()
    assert settings.redis_url is None
    assert settings.blob_url == "./var/blobs"
    assert settings.weights_dir == Path.home() / ".cache/sfhq/weights"
    assert (settings.device, settings.fp16, settings.host) == ("auto", True, "127.0.0.1")
    assert settings.auth_tokens == [] and not settings.auth_enabled
    assert (settings.batch_size, settings.batch_wait_ms, settings.max_deliveries) == (8, 50, 3)
    assert (settings.visibility_timeout_s, settings.stream_maxlen) == (300, 10000)
    assert settings.max_message_bytes == 64 * 1024 * 1024
    assert (settings.max_image_bytes, settings.max_image_pixels) == (33554432, 50_000_000)
    assert settings.stages is None and settings.parser_backend == "onnx" and settings.log_level == "INFO"
    assert settings.addr_for("search") == "127.0.0.1:50054"


def test_env_vars_with_prefix_and_plain_redis_url(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:secret@cache:6379/2")
    monkeypatch.setenv("SFHQ_AUTH_TOKENS", " tok-a, tok-b ,")
    monkeypatch.setenv("SFHQ_BATCH_SIZE", "16")
    monkeypatch.setenv("SFHQ_STAGES", "align,annotate")
    monkeypatch.setenv("SFHQ_FP16", "false")
    monkeypatch.setenv("SFHQ_LOG_LEVEL", "debug")
    settings = get_settings()
    assert settings.redis_url == "redis://:secret@cache:6379/2"
    assert settings.auth_tokens == ["tok-a", "tok-b"]
    assert settings.batch_size == 16 and settings.fp16 is False and settings.log_level == "DEBUG"
    assert settings.stages == ["align", "annotate"]
    assert settings.stages_for("annotator") == ["align", "annotate"]
    assert settings.stages_for("encoder") == []

    monkeypatch.setenv("SFHQ_REDIS_URL", "redis://prefixed:6379/0")  # the prefixed name wins
    assert get_settings().redis_url == "redis://prefixed:6379/0"
    assert get_settings(redis_url="redis://kwarg:1/0").redis_url == "redis://kwarg:1/0"


def test_stages_none_means_grpc_only(monkeypatch):
    monkeypatch.setenv("SFHQ_STAGES", "none")
    assert get_settings().stages == [] and get_settings().stages_for("generator") == []
    monkeypatch.setenv("SFHQ_STAGES", "all")
    assert get_settings().stages_for("generator") == ["diffuse", "sample", "synthesize"]


def test_toml_settings_file_below_env(monkeypatch, tmp_path):
    config = tmp_path / "sfhq.toml"
    config.write_text(
        'batch_size = 4\nauth_tokens = ["from-file"]\nredis_url = "redis://file:6379/0"\ndevice = "cpu"\n'
    )
    monkeypatch.setenv("SFHQ_CONFIG_FILE", str(config))
    monkeypatch.setenv("SFHQ_BATCH_SIZE", "32")
    settings = get_settings()
    assert settings.batch_size == 32  # env beats file
    assert settings.auth_tokens == ["from-file"] and settings.redis_url == "redis://file:6379/0"
    assert settings.device == "cpu"


def test_dotenv_settings_file(monkeypatch, tmp_path):
    config = tmp_path / "sfhq.env"
    config.write_text("SFHQ_STREAM_MAXLEN=50\nSFHQ_AUTH_TOKENS=x,y\nREDIS_URL=redis://dotenv:6379/0\n")
    monkeypatch.setenv("SFHQ_CONFIG_FILE", str(config))
    settings = get_settings()
    assert (settings.stream_maxlen, settings.auth_tokens, settings.redis_url) == (
        50,
        ["x", "y"],
        "redis://dotenv:6379/0",
    )


def test_a_missing_settings_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SFHQ_CONFIG_FILE", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="nope.toml"):
        get_settings()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("device", "tpu", "device must be"),
        ("redis_url", "http://x", "redis_url must start"),
        ("stages", "align,paint", "unknown stage 'paint'"),
        ("batch_size", 0, "greater than or equal to 1"),
        ("parser_backend", "tensorrt", "torch"),
        ("log_level", "LOUD", "log_level"),
        ("tls_cert", "/c.pem", "set together"),
    ],
)
def test_invalid_values_are_refused_with_the_reason(field, value, message):
    with pytest.raises(ValidationError, match=message):
        get_settings(**{field: value})


def test_ports_and_addresses_per_service():
    settings = get_settings()
    assert {name: settings.port_for(name) for name in DEFAULT_PORTS} == DEFAULT_PORTS
    assert get_settings(port=6000).port_for("encoder") == 6000
    assert get_settings(encoder_addr="enc:7000").addr_for("encoder") == "enc:7000"
    with pytest.raises(ConfigError, match="unknown service"):
        settings.port_for("painter")
    with pytest.raises(ConfigError):
        settings.addr_for("painter")


def test_tls_flags():
    assert not get_settings().tls_enabled
    settings = Settings(tls_cert="c.pem", tls_key="k.pem")
    assert settings.tls_enabled and not settings.mtls_enabled
    assert Settings(tls_cert="c.pem", tls_key="k.pem", tls_ca="ca.pem").mtls_enabled


def _fake_torch(monkeypatch, cuda: bool, count: int = 1) -> None:
    fake = types.SimpleNamespace(
        cuda=types.SimpleNamespace(is_available=lambda: cuda, device_count=lambda: count if cuda else 0)
    )
    monkeypatch.setitem(sys.modules, "torch", fake)


def test_resolved_device(monkeypatch):
    _fake_torch(monkeypatch, cuda=False)
    assert get_settings().resolved_device() == "cpu"
    assert not get_settings().use_fp16()
    with pytest.raises(ConfigError, match="CUDA is not available"):
        get_settings(device="cuda").resolved_device()
    _fake_torch(monkeypatch, cuda=True, count=2)
    assert get_settings().resolved_device() == "cuda"
    assert get_settings().use_fp16() and not get_settings(fp16=False).use_fp16()
    assert get_settings(device="cuda:1").resolved_device() == "cuda:1"
    with pytest.raises(ConfigError, match="only 2 CUDA"):
        get_settings(device="cuda:2").resolved_device()
    assert get_settings(device="cpu").resolved_device() == "cpu"


def test_auto_device_without_torch_is_cpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    assert get_settings().resolved_device() == "cpu"
