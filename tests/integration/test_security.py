"""Who gets in, what may pass, and what is never written down.

On the session's hardened cluster (reliability/harness.py): every service requires a bearer token
and mutual TLS; the services log in to Redis as a least-privilege ACL user; messages and images
have size limits. Checked here with real processes:

* no token, a wrong token, another scheme: UNAUTHENTICATED on every service; health checks stay open;
* plaintext, TLS without a client certificate, a certificate from another CA: no connection;
* the services reach each other (gateway -> search) over mTLS with their token, and jobs run;
* the Redis ACL user cannot flush, reconfigure or read keys outside `sfhq:*`; no password, no entry;
* oversized messages, images and decompression bombs get explicit refusals;
* no token, password or private key appears in any log or process command line.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.backoff import NoBackoff
from redis.retry import Retry

from reliability import fuzzing, harness
from services.common.auth import Principal, Refusal, TokenBook, authenticate
from services.common.config import Settings
from services.common.server import client_channel
from services.local_run import SERVICE_ORDER
from sfhq.sdk import SfhqError, build_spec
from sfhq.v1 import annotator_pb2, common_pb2, encoder_pb2, gateway_pb2
from tests.helpers import ONE_CORRECTION

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# one cheap, harmless method per service (an empty request is refused or answered quickly)
PROBES = {
    "gateway": "/sfhq.v1.Gateway/ListJobs",
    "encoder": "/sfhq.v1.Encoder/Encode",
    "generator": "/sfhq.v1.Generator/Sample",
    "annotator": "/sfhq.v1.Annotator/Detect",
    "search": "/sfhq.v1.Search/Search",
}


@pytest.fixture(scope="module")
def cluster() -> harness.ReliabilityCluster:
    cluster = harness.shared_cluster()
    cluster.ensure_healthy()
    yield cluster
    cluster.ensure_healthy()


def _tls(
    cluster: harness.ReliabilityCluster,
    *,
    tokens: list[str],
    cert: str = "client",
    tls_dir: Path | None = None,
) -> Settings:
    """Client settings whose channels send `tokens[0]` (if any) as the bearer token."""
    folder = tls_dir or cluster.tls_dir
    return Settings(
        service_tokens=tokens,
        tls_cert=str(folder / f"{cert}.pem"),
        tls_key=str(folder / f"{cert}.key"),
        tls_ca=str(cluster.tls_dir / "ca.pem"),
    )


def _code(channel: grpc.Channel, method: str, payload: bytes = b"", metadata=()) -> str:
    try:
        channel.unary_unary(method)(payload, timeout=30, metadata=metadata)
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


def test_the_token_check_compares_every_token_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr("services.common.auth.hmac.compare_digest", spy)
    book = TokenBook(["alice=alice-token-0123456789", "bob=bob-token-0123456789"], ["service-token-0123456"])
    assert book.resolve("alice-token-0123456789") == Principal("alice")
    # no early exit on a match: every token is compared, so timing says nothing
    assert calls == [b"alice-token-0123456789", b"bob-token-0123456789", b"service-token-0123456"]
    assert book.resolve("service-token-0123456") == Principal("service", "service")
    assert book.resolve("nope") is None
    refusal = authenticate(book, (("authorization", "Basic Zmlyc3QtdG9rZW4="),), internal=False)
    assert isinstance(refusal, Refusal) and refusal.reason.startswith("malformed")
    assert authenticate(book, (), internal=False).reason.startswith("missing bearer token")
    internal = authenticate(book, (("authorization", "Bearer alice-token-0123456789"),), internal=True)
    assert (internal.code, "internal service" in internal.reason) == ("PERMISSION_DENIED", True)


def test_calls_without_a_valid_token_are_refused_on_every_service(cluster):
    for name in SERVICE_ORDER:
        method = PROBES[name]
        with client_channel(cluster.addr(name), _tls(cluster, tokens=[])) as channel:
            assert _code(channel, method) == "UNAUTHENTICATED", name
            for header in ("Bearer not-the-token", f"Basic {cluster.tokens[1]}", "Bearer", cluster.tokens[1]):
                assert _code(channel, method, metadata=(("authorization", header),)) == "UNAUTHENTICATED", (
                    header
                )
            # probes of load balancers and orchestrators need no token
            status = (
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status
            )
            assert status == health_pb2.HealthCheckResponse.SERVING
        with cluster.channel(name) as channel:  # the services' token
            assert _code(channel, method) not in ("UNAUTHENTICATED", "PERMISSION_DENIED"), name
        user = _tls(cluster, tokens=[cluster.tokens[1]])
        with client_channel(cluster.addr(name), user) as channel:  # a user's token
            expected = "OK" if name == "gateway" else "PERMISSION_DENIED"  # internal RPCs: services only
            assert _code(channel, method) in (
                {expected} if expected != "OK" else {"OK", "INVALID_ARGUMENT"}
            ), name
        admin = _tls(cluster, tokens=[cluster.tokens[2]])
        with client_channel(cluster.addr(name), admin) as channel:  # the admin user may call anything
            assert _code(channel, method) not in ("UNAUTHENTICATED", "PERMISSION_DENIED"), name
    with cluster.client() as client:
        assert client.list_jobs(limit=1) is not None


def test_connections_need_tls_and_a_client_certificate_from_our_ca(cluster, tmp_path):
    stranger = harness.make_certificates(tmp_path / "other-ca")  # a valid certificate, from another CA
    attempts = {
        "plaintext": grpc.insecure_channel(cluster.addr("gateway")),
        "no client certificate": client_channel(
            cluster.addr("gateway"),
            Settings(service_tokens=cluster.tokens[1:2], tls_ca=str(cluster.tls_dir / "ca.pem")),
        ),
        "certificate of another CA": client_channel(
            cluster.addr("gateway"), _tls(cluster, tokens=cluster.tokens[1:2], tls_dir=stranger)
        ),
    }
    for what, channel in attempts.items():
        with channel:
            assert _code(channel, PROBES["gateway"]) == "UNAVAILABLE", what  # the handshake fails


def test_services_reach_each_other_over_mtls_with_their_token(cluster):
    # Search through the gateway is a gateway -> search call: mTLS + the services' token
    with cluster.client() as client:
        response = client.search("a smiling face", top_k=3)
        assert response is not None
        with pytest.raises(SfhqError) as refused:
            client.search("x" * 10_000)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT  # the search service's own answer
        assert "search service" in refused.value.details


def test_the_redis_user_of_the_services_has_least_privilege(cluster):
    assert cluster.env["SFHQ_REDIS_URL"] == cluster.redis_server.service_url
    assert f"{harness.SERVICE_USER}:" in cluster.env["SFHQ_REDIS_URL"]
    service = redis.Redis.from_url(cluster.redis_server.service_url, decode_responses=True)
    try:
        assert service.set("sfhq:security-probe", "1") and service.delete("sfhq:security-probe") == 1
        for command in (
            ("FLUSHALL",),
            ("FLUSHDB",),
            ("CONFIG", "GET", "requirepass"),
            ("KEYS", "*"),
            ("DEBUG", "SLEEP", "0"),
            ("ACL", "LIST"),
            ("SHUTDOWN", "NOSAVE"),
            ("GET", "other-app:key"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                service.execute_command(*command)
    finally:
        service.close()
    anonymous = redis.Redis(port=cluster.redis_server.port, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    wrong = redis.Redis.from_url(
        cluster.redis_server.service_url.replace(cluster.redis_server.service_password, "x"),
        retry=Retry(NoBackoff(), 0),
    )
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()


def test_size_limits_and_decompression_bombs_are_refused(cluster):
    images = fuzzing.image_corpus()
    with cluster.client() as client:
        spec = build_spec(
            mode="annotate",
            images=[b"\xff\xd8" + b"\x00" * (5 * 1024 * 1024)],
            output_uri=str(cluster.workdir / "too-big"),
        )
        with pytest.raises(SfhqError) as refused:
            client.submit(spec)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "over the 4194304-byte limit" in refused.value.details
    bomb = common_pb2.Image(data=images["bomb"])
    claims = common_pb2.Image(data=images["claims_huge"])
    calls = [
        ("annotator", "/sfhq.v1.Annotator/Detect", annotator_pb2.DetectRequest(images=[bomb])),
        ("annotator", "/sfhq.v1.Annotator/Align", annotator_pb2.AlignRequest(images=[claims])),
        ("encoder", "/sfhq.v1.Encoder/Encode", encoder_pb2.EncodeRequest(images=[bomb])),
    ]
    for name, method, request in calls:
        with cluster.channel(name) as channel:
            with pytest.raises(grpc.RpcError) as error:
                channel.unary_unary(method)(request.SerializeToString(), timeout=60)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, error.value.details())
            assert "pixels" in error.value.details(), error.value.details()
    assert all(cluster.alive(name) for name in SERVICE_ORDER)


def test_jobs_may_only_write_inside_the_data_roots(cluster):
    with cluster.client() as client:
        for where in ("/etc/sfhq-should-not-exist", "/tmp", f"{cluster.workdir}/../escape", "relative/out"):
            spec = build_spec(
                mode="sampling", samples=1, output_uri=where, disable_dedup=True, corrections=ONE_CORRECTION
            )
            with pytest.raises(SfhqError) as refused:
                client.submit(spec)
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT, where
        spec = build_spec(mode="annotate", input_folder="/", output_uri=str(cluster.workdir / "ok"))
        with pytest.raises(SfhqError) as refused:
            client.submit(spec)
        assert "outside the data roots" in refused.value.details
    assert not Path("/etc/sfhq-should-not-exist").exists()


def test_no_secret_appears_in_logs_or_command_lines(cluster):
    # provoke the paths that could leak: refused tokens, a Redis login failure, a job that runs
    leaked_attempt = "Bearer almost-" + cluster.tokens[1][:8]
    with client_channel(cluster.addr("gateway"), _tls(cluster, tokens=[])) as channel:
        _code(channel, PROBES["gateway"], metadata=(("authorization", leaked_attempt),))
    with cluster.client() as client:
        job = client.wait(
            client.submit(harness.sampling_spec(1, cluster.workdir / "secrets-job")).job_id, timeout=180
        )
        assert job.state == gateway_pb2.JOB_STATE_SUCCEEDED, job.error
    secrets = {
        "user token": cluster.tokens[1],
        "admin token": cluster.tokens[2],
        "service token": cluster.tokens[0],
        "refused token": leaked_attempt.split()[1],
        "redis admin password": cluster.redis_server.password,
        "redis service password": cluster.redis_server.service_password,
        "TLS private key": (cluster.tls_dir / "server.key").read_text().splitlines()[1],
    }
    texts = dict(cluster.logs())
    texts["redis.log"] = cluster.redis_server.log_path.read_text(errors="replace")
    pids = {name: proc.pid for name, proc in cluster.processes.items() if proc.poll() is None}
    pids["redis-server"] = cluster.redis_server.process.pid
    for name, pid in pids.items():  # what `ps` shows every user of the machine
        texts[f"cmdline of {name}"] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert len(texts) >= 7
    for what, secret in secrets.items():
        for where, text in texts.items():
            assert secret not in text, f"the {what} appears in {where}"
