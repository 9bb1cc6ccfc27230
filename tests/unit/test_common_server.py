"""gRPC set-up: auth, health, reflection, limits, error mapping, metrics, TLS, ServiceProcess.

The servers here host a tiny bytes-in/bytes-out service registered with generic handlers, so the
tests need no generated stubs.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from services.common.config import Settings
from services.common.errors import PermanentError
from services.common.images import ImageError
from services.common.metrics import Metrics
from services.common.queue import QueueFull
from services.common.server import (
    ServiceProcess,
    abort_with,
    add_health_and_reflection,
    bind_server,
    build_server,
    client_channel,
    run_services,
    serve_together,
)
from services.common.weights import WeightsMissing
from tests.helpers.processes import free_port

SERVICE = "sfhq.test.Echo"


def _echo(request: bytes, context) -> bytes:
    return request


def _stream(request: bytes, context) -> Iterator[bytes]:
    for index in range(3):
        yield request + str(index).encode()


def _raise(exc: Exception):
    def behavior(request: bytes, context) -> bytes:
        raise exc

    return behavior


def _abort(request: bytes, context) -> bytes:
    abort_with(context, "NOT_FOUND", "job 'x' not found")


ECHO_HANDLERS = grpc.method_handlers_generic_handler(
    SERVICE,
    {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "BadImage": grpc.unary_unary_rpc_method_handler(_raise(ImageError("image data is empty"))),
        "NoFace": grpc.unary_unary_rpc_method_handler(
            _raise(PermanentError("no face found", code="NOT_FOUND"))
        ),
        "Full": grpc.unary_unary_rpc_method_handler(_raise(QueueFull("align", 10, 10, 5.0))),
        "NoWeights": grpc.unary_unary_rpc_method_handler(
            _raise(WeightsMissing("e4e-ffhq-encode", Path("/w/e4e_ffhq_encode.pt")))
        ),
        "Bug": grpc.unary_unary_rpc_method_handler(_raise(RuntimeError("a bug"))),
        "Abort": grpc.unary_unary_rpc_method_handler(_abort),
        "BadStream": grpc.unary_stream_rpc_method_handler(
            lambda request, context: iter(_raise(ImageError("bad"))(request, context))
        ),
    },
)


def serve(settings: Settings, metrics: Metrics | None = None) -> tuple[grpc.Server, str]:
    server = build_server(settings, max_workers=4, metrics=metrics or Metrics(CollectorRegistry()))
    server.add_generic_rpc_handlers((ECHO_HANDLERS,))
    add_health_and_reflection(server, [SERVICE])
    port = bind_server(server, settings, "127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def call(channel: grpc.Channel, method: str, payload: bytes = b"hi", **kwargs) -> bytes:
    return channel.unary_unary(f"/{SERVICE}/{method}")(payload, timeout=5, **kwargs)


def health_status(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


@pytest.fixture()
def plain() -> Iterator[tuple[grpc.Server, str, Metrics]]:
    metrics = Metrics(CollectorRegistry())
    server, addr = serve(Settings(), metrics)
    yield server, addr, metrics
    server.stop(None)


def test_health_and_reflection(plain):
    _, addr, _ = plain
    with grpc.insecure_channel(addr) as channel:
        assert call(channel, "Echo", b"ping") == b"ping"
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        assert health_status(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {service.name for reply in replies for service in reply.list_services_response.service}
    assert names == {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def test_typed_errors_become_status_codes_and_metrics(plain):
    _, addr, metrics = plain
    expected = {
        "BadImage": (grpc.StatusCode.INVALID_ARGUMENT, "image data is empty"),
        "NoFace": (grpc.StatusCode.NOT_FOUND, "no face found"),
        "Full": (grpc.StatusCode.RESOURCE_EXHAUSTED, "the 'align' queue is full"),
        "NoWeights": (grpc.StatusCode.FAILED_PRECONDITION, "sfhq weights download e4e-ffhq-encode"),
        "Abort": (grpc.StatusCode.NOT_FOUND, "job 'x' not found"),
        "Bug": (grpc.StatusCode.UNKNOWN, ""),
    }
    with grpc.insecure_channel(addr) as channel:
        for method, (code, text) in expected.items():
            with pytest.raises(grpc.RpcError) as failure:
                call(channel, method)
            assert failure.value.code() == code, method
            assert text in failure.value.details(), method
        assert list(channel.unary_stream(f"/{SERVICE}/Stream")(b"s", timeout=5)) == [b"s0", b"s1", b"s2"]
        with pytest.raises(grpc.RpcError) as failure:
            list(channel.unary_stream(f"/{SERVICE}/BadStream")(b"s", timeout=5))
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    sample = metrics.registry.get_sample_value
    assert (
        sample("sfhq_grpc_requests_total", {"method": f"/{SERVICE}/BadImage", "code": "INVALID_ARGUMENT"})
        == 1
    )
    assert sample("sfhq_grpc_requests_total", {"method": f"/{SERVICE}/Bug", "code": "UNKNOWN"}) == 1
    assert sample("sfhq_grpc_requests_total", {"method": f"/{SERVICE}/Stream", "code": "OK"}) == 1
    assert (
        sample("sfhq_grpc_requests_total", {"method": f"/{SERVICE}/BadStream", "code": "INVALID_ARGUMENT"})
        == 1
    )
    assert (
        sample("sfhq_grpc_request_seconds_count", {"method": f"/{SERVICE}/Abort", "code": "NOT_FOUND"}) == 1
    )


def test_abort_with_refuses_unknown_codes():
    with pytest.raises(ValueError, match="not a gRPC error status"):
        abort_with(None, "SORT_OF_BAD", "x")  # type: ignore[arg-type]


def test_auth_tokens(tmp_path):
    settings = Settings(auth_tokens=["admin=token-one-0123456789"], service_tokens=["token-two-0123456789"])
    metrics = Metrics(CollectorRegistry())
    server, addr = serve(settings, metrics)
    try:
        with grpc.insecure_channel(addr) as anonymous:
            with pytest.raises(grpc.RpcError) as failure:
                call(anonymous, "Echo")
            assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "missing bearer token" in failure.value.details()
            with pytest.raises(grpc.RpcError) as failure:
                call(anonymous, "Echo", metadata=[("authorization", "Bearer token-three-0123456789")])
            assert (failure.value.code(), failure.value.details()) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "invalid bearer token",
            )
            with pytest.raises(grpc.RpcError) as failure:
                list(anonymous.unary_stream(f"/{SERVICE}/Stream")(b"s", timeout=5))
            assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert (
                call(anonymous, "Echo", metadata=[("authorization", "Bearer token-two-0123456789")]) == b"hi"
            )
            assert (
                call(anonymous, "Echo", metadata=[("authorization", "Bearer token-one-0123456789")]) == b"hi"
            )
            # probes need no token
            assert health_status(anonymous) == health_pb2.HealthCheckResponse.SERVING
        # client_channel sends the first service token by itself
        with client_channel(addr, settings) as channel:
            assert call(channel, "Echo", b"ok") == b"ok"
            assert list(channel.unary_stream(f"/{SERVICE}/Stream")(b"s", timeout=5))[0] == b"s0"
    finally:
        server.stop(None)
    sample = metrics.registry.get_sample_value
    assert sample("sfhq_grpc_requests_total", {"method": f"/{SERVICE}/Echo", "code": "UNAUTHENTICATED"}) == 2


def test_message_size_limit(tmp_path):
    settings = Settings(max_message_mb=0.5)
    server, addr = serve(settings)
    try:
        with grpc.insecure_channel(addr) as channel:
            assert len(call(channel, "Echo", b"x" * 400_000)) == 400_000
            with pytest.raises(grpc.RpcError) as failure:
                call(channel, "Echo", b"x" * 600_000)
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop(None)


def test_binding_a_taken_port_fails_loudly():
    server, addr = serve(Settings())
    try:
        other = build_server(Settings())
        with pytest.raises(OSError, match="cannot bind"):
            bind_server(other, Settings(), addr)
    finally:
        server.stop(None)


# ---- TLS ----------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (EC keys: fast)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=sfhq test CA", cwd=folder)  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext", cwd=folder)  # fmt: skip
    return folder


def test_tls_and_mutual_tls(certificates):
    c = certificates
    server_settings = Settings(
        tls_cert=str(c / "server.pem"), tls_key=str(c / "server.key"), tls_ca=str(c / "ca.pem")
    )
    server, addr = serve(server_settings)
    try:
        client = Settings(
            tls_cert=str(c / "client.pem"), tls_key=str(c / "client.key"), tls_ca=str(c / "ca.pem")
        )
        with client_channel(addr, client) as channel:
            assert call(channel, "Echo", b"secure") == b"secure"
        # mTLS: a client without a certificate is turned away
        with (
            client_channel(addr, Settings(tls_ca=str(c / "ca.pem"))) as channel,
            pytest.raises(grpc.RpcError) as failure,
        ):
            call(channel, "Echo")
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(addr) as channel, pytest.raises(grpc.RpcError):
            call(channel, "Echo")
    finally:
        server.stop(None)


def test_tls_with_bearer_tokens(certificates):
    c = certificates
    token = "service-token-0123456789"
    settings = Settings(tls_cert=str(c / "server.pem"), tls_key=str(c / "server.key"), service_tokens=[token])
    server, addr = serve(settings)
    try:
        with client_channel(addr, Settings(tls_ca=str(c / "ca.pem"), service_tokens=[token])) as channel:
            assert call(channel, "Echo", b"both") == b"both"
        with (
            client_channel(addr, Settings(tls_ca=str(c / "ca.pem"))) as channel,
            pytest.raises(grpc.RpcError) as failure,
        ):
            call(channel, "Echo")
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(None)


# ---- ServiceProcess -----------------------------------------------------------------------------


def test_service_process_life_cycle():
    metrics_port = free_port()
    settings = Settings(port=0, metrics_port=metrics_port, stages=["encode"])
    process = ServiceProcess("echo", settings, metrics=Metrics(CollectorRegistry()), grace_s=2)
    process.server.add_generic_rpc_handlers((ECHO_HANDLERS,))
    # The stages setting keeps this process off the 'embed' stage: no worker, no Redis needed.
    assert process.add_worker("embed", lambda tasks: []) is None
    seen_at_stop: list[int] = []
    process.on_stop(
        lambda: seen_at_stop.append(
            process.health.Check(health_pb2.HealthCheckRequest(service=""), None).status
        )
    )
    runner = threading.Thread(target=process.serve_forever, args=([SERVICE],))
    runner.start()
    deadline = time.monotonic() + 10
    while process.port is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with grpc.insecure_channel(f"127.0.0.1:{process.port}") as channel:
        assert call(channel, "Echo", b"up") == b"up"
        assert health_status(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING
    page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    assert f'sfhq_grpc_requests_total{{code="OK",method="/{SERVICE}/Echo"}} 1.0' in page
    process.request_stop()
    runner.join(10)
    assert not runner.is_alive() and process.wait(0)
    assert seen_at_stop == [health_pb2.HealthCheckResponse.NOT_SERVING]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1)


def test_several_services_share_one_process_and_stop_together():
    settings = Settings(port=0, stages=[])
    processes = [
        ServiceProcess(name, settings, metrics=Metrics(CollectorRegistry()), grace_s=1) for name in ("a", "b")
    ]
    for process in processes:
        process.server.add_generic_rpc_handlers((ECHO_HANDLERS,))
    runner = threading.Thread(target=serve_together, args=(processes,))
    runner.start()
    deadline = time.monotonic() + 10
    while any(p.port is None for p in processes):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert processes[0].port != processes[1].port
    for process in processes:
        with grpc.insecure_channel(f"127.0.0.1:{process.port}") as channel:
            assert call(channel, "Echo", b"up") == b"up"
    processes[1].request_stop()  # one stopping (a SIGTERM, a failure) stops them all
    runner.join(10)
    assert not runner.is_alive() and all(p.wait(0) for p in processes)


def test_services_sharing_a_process_need_their_own_ports():
    from services.common.config import ConfigError

    with pytest.raises(ConfigError, match="SFHQ_PORT"):
        run_services(
            [lambda s: ServiceProcess("a", s), lambda s: ServiceProcess("b", s)], Settings(port=5000)
        )


def test_which_services_may_share_a_process():
    from services.launch import service_names

    assert service_names("encoder,search, annotator") == ["encoder", "search", "annotator"]
    assert service_names("gateway") == ["gateway"]
    for spec, message in (
        ("encoder,gateway", "model services"),
        ("encoder,nope", "nope"),
        ("search,search", "twice"),
    ):
        with pytest.raises(ValueError, match=message):
            service_names(spec)
