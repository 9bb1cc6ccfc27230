"""The deployment files and the code agree: every SFHQ_* variable set anywhere in deploy/ is a real
`Settings` field and parses, ports and addresses are the ones `Settings` derives, and every
command the containers run is a real `sfhq` CLI command with valid arguments.

Each container's environment is rebuilt the way its runtime would (image ENV, then compose's
`environment` / Kubernetes' envFrom + env with $(VAR) expansion) and handed to `Settings`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import typer.main
from pydantic import AliasChoices
from typer.testing import CliRunner

from deploy import check
from services.common.config import CONFIG_FILE_ENV, DEFAULT_PORTS, Settings
from services.common.weights import KNOWN_CHECKPOINTS
from services.launch import SERVICES, service_names
from sfhq.cli import app

DOCKERFILE = check.DEPLOY_DIR / "docker" / "Dockerfile"
SFHQ_SERVICES = tuple(DEFAULT_PORTS)  # gateway, encoder, generator, annotator, search
METRICS_PORT = 9090


def settings_env_names() -> set[str]:
    """Every environment variable `Settings` (the services) and `StudioSettings` (the studio) read."""
    from studio.settings import StudioSettings

    names = {CONFIG_FILE_ENV}
    for prefix, model in (("SFHQ_", Settings), ("SFHQ_STUDIO_", StudioSettings)):
        for field_name, field in model.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, AliasChoices):
                names |= {c for c in alias.choices if isinstance(c, str) and c.isupper()}
            else:
                names.add(f"{prefix}{field_name.upper()}")
    return names


def dockerfile_env() -> dict[str, str]:
    """The ENV defaults of the runtime stage (shared by the cpu and cuda targets)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for token in shlex.split(line[4:]):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def make_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        return Settings()


@pytest.fixture(scope="module")
def compose_models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], dict[str, Any]]:
    env_file = check.write_test_env_file(tmp_path_factory.mktemp("compose"))
    return {files: check.compose_model(files, env_file) for files in check.COMPOSE_COMBINATIONS}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: check.render_overlay(overlay) for overlay in check.OVERLAYS}


def k8s_container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet builds it (secrets from the template)."""
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    secrets = {
        d["metadata"]["name"]: d["stringData"] for d in check.load_yaml_documents(check.SECRET_TEMPLATE)
    }
    env = dockerfile_env()
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
        if "secretRef" in source:
            env.update(secrets[source["secretRef"]["name"]])
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"]
            )
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def sfhq_commands(argv: list[str]) -> Iterator[list[str]]:
    """The `sfhq ...` invocations in a container command, including inside `sh -c` scripts
    (a `for name in a b c; do ... "$name"` loop is unrolled)."""
    if argv and argv[0] == "sfhq":
        yield argv
        return
    if len(argv) >= 3 and argv[0] == "sh" and argv[1].startswith("-") and "c" in argv[1]:
        script = argv[2]
        loop = re.search(r"for (\w+) in ([^;]+); do(.*?)done", script, re.S)
        loops = {loop.group(1): loop.group(2).split()} if loop else {}
        for line in script.splitlines():
            tokens = shlex.split(line.strip().rstrip(";"))
            if "sfhq" not in tokens:
                continue
            tokens = tokens[tokens.index("sfhq") :]
            variables = [t for t in tokens if t.startswith("$") and t.lstrip("$") in loops]
            if variables:
                for value in loops[variables[0].lstrip("$")]:
                    yield [value if t == variables[0] else t for t in tokens]
            else:
                yield tokens


def all_commands(
    compose_models: dict[tuple[str, ...], dict[str, Any]], rendered: dict[str, list[dict[str, Any]]]
) -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for files, model in compose_models.items():
        for name, service in model["services"].items():
            found += [
                (f"compose {'+'.join(files)} {name}", cmd)
                for cmd in sfhq_commands(service.get("command") or [])
            ]
    for overlay, docs in rendered.items():
        for doc in docs:
            if doc["kind"] in check.WORKLOAD_KINDS:
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    argv = [*(c.get("command") or []), *(c.get("args") or [])]
                    found += [
                        (f"k8s {overlay} {doc['metadata']['name']}", cmd) for cmd in sfhq_commands(argv)
                    ]
    return found


# ---- environment variables --------------------------------------------------------------------


def test_every_sfhq_variable_in_deploy_is_a_settings_field(
    compose_models: dict[tuple[str, ...], dict[str, Any]], rendered: dict[str, list[dict[str, Any]]]
) -> None:
    used: dict[str, set[str]] = {}

    def note(names: Any, where: str) -> None:
        for name in names:
            if name.startswith("SFHQ_"):
                used.setdefault(name, set()).add(where)

    note(dockerfile_env(), "Dockerfile")
    note(
        (
            line.split("=", 1)[0]
            for line in check.ENV_EXAMPLE.read_text().splitlines()
            if "=" in line and not line.startswith("#")
        ),
        ".env.example",
    )
    for model in compose_models.values():
        for name, service in model["services"].items():
            note(service.get("environment") or {}, f"compose {name}")
    for overlay, docs in rendered.items():
        for doc in docs:
            if doc["kind"] == "ConfigMap":
                note(doc.get("data") or {}, f"k8s {overlay} ConfigMap")
            if doc["kind"] in check.WORKLOAD_KINDS:
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    note((e["name"] for e in c.get("env") or []), f"k8s {overlay} {doc['metadata']['name']}")
    note(check.secret_template_keys()["sfhq-secrets"], "secret template")
    assert len(used) >= 15, sorted(used)  # the scan found the settings we know are there
    unknown = {name: sorted(where) for name, where in used.items() if name not in settings_env_names()}
    assert unknown == {}, f"not Settings fields: {unknown}"


def test_compose_environments_parse_and_match_the_settings_defaults(
    compose_models: dict[tuple[str, ...], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for files, model in compose_models.items():
        for name in SFHQ_SERVICES:
            env = {**dockerfile_env(), **model["services"][name]["environment"]}
            settings = make_settings(env, monkeypatch)
            assert settings.port_for(name) == DEFAULT_PORTS[name], (files, name)
            assert settings.metrics_port == METRICS_PORT and settings.host == "0.0.0.0"
            assert settings.redis_url and settings.redis_url.endswith("@redis:6379/0")
            for other in SFHQ_SERVICES:
                # compose service names are the hostnames on the compose network
                assert settings.addr_for(other) == f"{other}:{DEFAULT_PORTS[other]}", (files, name, other)
            expected_device = "cuda" if "docker-compose.gpu.yml" in files and name != "gateway" else "cpu"
            assert settings.device == expected_device, (files, name)
        assert "SFHQ_PORT" not in model["services"]["weights"].get("environment", {})
    # without SFHQ_PORT a service falls back to the same default: the explicit values are not drift
    assert make_settings({}, monkeypatch).port_for("search") == DEFAULT_PORTS["search"]


def test_k8s_environments_parse_and_match_ports_probes_and_services(
    rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for overlay, docs in rendered.items():
        for name in SFHQ_SERVICES:
            deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
            c = deployment["spec"]["template"]["spec"]["containers"][0]
            settings = make_settings(k8s_container_env(docs, c), monkeypatch)
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert settings.port_for(name) == DEFAULT_PORTS[name] == ports["grpc"], (overlay, name)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert c[probe]["grpc"]["port"] == ports["grpc"], (overlay, name, probe)
            assert settings.metrics_port == ports["metrics"] == METRICS_PORT
            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == str(METRICS_PORT)
            assert (
                settings.redis_url
                == "redis://:REPLACE_ME_openssl_rand_hex_32@redis.sfhq.svc.cluster.local:6379/0"
            )
            assert settings.weights_dir == Path("/weights")
            on_gpus = {"gpu": ("encoder", "generator", "search"), "gpu-shared": ("encoder", "generator")}
            gpu = name in on_gpus.get(overlay, ())
            assert settings.device == ("cuda" if gpu else "cpu"), (overlay, name)
        # every address a client reads names a Service that serves that port
        services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
        for name in SFHQ_SERVICES:
            host = settings.addr_for(name).removeprefix("dns:///").rsplit(":", 1)[0]
            service_ports = {p["name"]: p["port"] for p in services[host]["spec"]["ports"]}
            assert service_ports["grpc"] == DEFAULT_PORTS[name]


def test_dockerfile_exposes_the_service_and_metrics_ports() -> None:
    text = DOCKERFILE.read_text()
    low, high = map(int, re.search(r"EXPOSE (\d+)-(\d+)", text).groups())
    assert all(low <= port <= high for port in DEFAULT_PORTS.values())
    assert f" {METRICS_PORT}" in re.search(r"EXPOSE .*", text).group(0)
    assert dockerfile_env()["SFHQ_METRICS_PORT"] == str(METRICS_PORT)


# ---- commands -----------------------------------------------------------------------------------


def test_every_container_command_is_a_real_sfhq_command(
    compose_models: dict[tuple[str, ...], dict[str, Any]], rendered: dict[str, list[dict[str, Any]]]
) -> None:
    root = typer.main.get_command(app)
    commands = all_commands(compose_models, rendered)
    # `serve encoder,search,annotator`: several services in one process (overlays/gpu-shared)
    served = {
        name
        for _, cmd in commands
        if cmd[1] == "serve" and cmd[2] != "studio"
        for name in service_names(cmd[2])
    }
    assert any(cmd[1:3] == ["serve", "studio"] for _, cmd in commands)  # compose and k8s run the studio
    downloaded = {cmd[3] for _, cmd in commands if cmd[1:3] == ["weights", "download"]}
    assert served == set(SFHQ_SERVICES) == set(SERVICES)
    # the deployment fetches exactly the checkpoints the default pipeline needs
    assert downloaded == {name for name, spec in KNOWN_CHECKPOINTS.items() if not spec.optional}
    assert any(cmd[1:3] == ["weights", "verify"] for _, cmd in commands)
    for where, argv in commands:
        command: click.Command = root
        args = argv[1:]
        while isinstance(command, click.Group):
            assert args and args[0] in command.commands, f"{where}: {argv} is not an sfhq command"
            command, args = command.commands[args[0]], args[1:]
        try:
            command.make_context(argv[1], list(args))  # parses and type-checks the arguments
        except click.ClickException as exc:
            pytest.fail(f"{where}: {shlex.join(argv)}: {exc.format_message()}")


def test_serve_help_runs() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    for name in SFHQ_SERVICES:
        assert name in result.output
