"""A gateway a team can share, on a real cluster with three users (alice, bob, admin), the default
file access (the blob store only), and the attacks that used to work against it.

Each test below reproduces one finding of the "shared gateway" review: thousands of open streams,
files read and written outside the caller's area, SSRF through fsspec protocols, roots bypassed
with links or another user's dataset, no tenancy, unbounded specs, job state kept forever.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from reliability import fuzzing
from services.common.blobs import BlobStore
from services.common.embedded_redis import free_port
from services.local_run import LocalCluster
from sfhq.sdk import AsyncClient, Client, SfhqError, build_spec
from sfhq.tensors import numpy_to_tensor
from sfhq.v1 import gateway_pb2, search_pb2, search_pb2_grpc
from tests.helpers import ONE_CORRECTION
from tests.helpers.cluster import random_cluster
from tests.helpers.processes import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKENS = {name: f"{name}-token-{os.urandom(8).hex()}" for name in ("alice", "bob", "admin")}
SERVICE_TOKEN = f"service-token-{os.urandom(8).hex()}"
STREAM_CAP = 4


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace collector on loopback that keeps every span it receives."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []  # (service name, span name, trace id hex)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append((service, span.name, span.trace_id.hex()))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(scope="module")
def collector():
    running = Collector()
    yield running
    running.server.stop(0)


@pytest.fixture(scope="module")
def cluster(redis_server, tmp_path_factory, collector):
    env = {
        "SFHQ_AUTH_TOKENS": ",".join(f"{name}={token}" for name, token in TOKENS.items()),
        "SFHQ_SERVICE_TOKENS": SERVICE_TOKEN,
        "SFHQ_MAX_STREAMS_PER_USER": str(STREAM_CAP),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    # no data roots: these users may write only to their own areas of the blob store
    with random_cluster(
        redis_server, tmp_path_factory, env=env, data_roots=(), name="shared-gateway"
    ) as running:
        yield running


def client(cluster: LocalCluster, user: str) -> Client:
    return Client(cluster.addr("gateway"), token=TOKENS[user], timeout=60, retries=2)


def refusal(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(SfhqError) as caught:
        call()
    return caught.value.code, caught.value.details


def blobs(cluster: LocalCluster) -> BlobStore:
    return BlobStore(cluster.env["SFHQ_BLOB_URL"])


def small_job(client_: Client, samples: int = 1) -> gateway_pb2.Job:
    spec = build_spec(
        mode="sampling",
        samples=samples,
        corrections=ONE_CORRECTION,
        annotation_size=64,
        disable_dedup=True,
        image_size=64,
    )
    return client_.submit(spec)


@pytest.fixture(scope="module")
def alice_job(cluster) -> gateway_pb2.Job:
    with client(cluster, "alice") as alice:
        job = alice.wait(small_job(alice, samples=2).job_id, timeout=300)
    assert job.state == gateway_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.owner == "alice" and "/users/alice/datasets/" in job.dataset_uri  # the caller's own area
    return job


# ---- 1. streams do not hold threads ------------------------------------------------------------------


def test_a_thousand_watch_streams_leave_get_job_and_health_answering(cluster):
    """1,000 open WatchJob streams (as admin, who has no per-user cap) on a job kept running by a
    frozen generator: GetJob and health still answer; every stream gets the job's events."""
    with client(cluster, "admin") as admin:
        job = small_job(admin, samples=2)
        generator = cluster.processes["generator"]
        os.kill(generator.pid, signal.SIGSTOP)  # the job cannot progress: its streams stay open
        try:
            streams, latencies = asyncio.run(_watch_many(cluster, job.job_id, 1000, admin))
        finally:
            os.kill(generator.pid, signal.SIGCONT)
        final = admin.wait(job.job_id, timeout=300)
    assert final.state == gateway_pb2.JOB_STATE_SUCCEEDED
    assert streams == 1000
    assert len(latencies) >= 50 and max(latencies) < 5.0  # answered while the streams were open


async def _watch_many(cluster, job_id: str, count: int, sync_client: Client) -> tuple[int, list[float]]:
    clients = [AsyncClient(cluster.addr("gateway"), token=TOKENS["admin"], retries=0) for _ in range(4)]
    first_events: list[asyncio.Future] = []

    async def watch(c: AsyncClient) -> None:
        got = asyncio.get_running_loop().create_future()
        first_events.append(got)
        async for _event in c.watch(job_id):
            if not got.done():
                got.set_result(True)

    tasks = [asyncio.create_task(watch(clients[n % 4])) for n in range(count)]
    await asyncio.wait_for(asyncio.gather(*first_events_when_ready(first_events, count)), timeout=120)
    latencies: list[float] = []

    def probe() -> None:  # a separate thread and connection, like another user
        channel = grpc.insecure_channel(cluster.addr("gateway"))
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(60):
            started = time.perf_counter()
            sync_client.get_job(job_id)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
            latencies.append(time.perf_counter() - started)
        channel.close()

    await asyncio.to_thread(probe)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in clients:
        await c.close()
    return sum(f.done() for f in first_events), latencies


def first_events_when_ready(futures: list[asyncio.Future], count: int):
    async def wait_all() -> None:
        while len(futures) < count:
            await asyncio.sleep(0.05)
        await asyncio.gather(*futures)

    return [wait_all()]


def test_a_user_may_hold_only_a_few_streams_at_once(cluster):
    with client(cluster, "bob") as bob:
        job = small_job(bob)
        generator = cluster.processes["generator"]
        os.kill(generator.pid, signal.SIGSTOP)
        try:
            request = gateway_pb2.WatchJobRequest(job_id=job.job_id)
            streams = [bob._stub.WatchJob(request, metadata=bob._metadata) for _ in range(STREAM_CAP)]
            for stream in streams:
                next(stream)  # open, with its first event
            code, details = refusal(lambda: next(iter(bob.watch(job.job_id))))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "SFHQ_MAX_STREAMS_PER_USER" in details
            streams[0].cancel()
            time.sleep(0.5)
            assert next(iter(bob.watch(job.job_id))).job_id == job.job_id  # a freed slot is usable again
        finally:
            os.kill(generator.pid, signal.SIGCONT)
            for stream in streams:
                stream.cancel()
        assert bob.wait(job.job_id, timeout=300).state == gateway_pb2.JOB_STATE_SUCCEEDED


# ---- 2-4. files: only the caller's own, no protocol but ours, no link out -----------------------------


def test_by_default_jobs_touch_only_the_callers_blob_area(cluster, tmp_path):
    private = tmp_path / "private"
    private.mkdir()
    (private / "secret.jpg").write_bytes(fuzzing.image_corpus()["valid"])
    with client(cluster, "bob") as bob:
        for field, spec in {
            "output.dataset_uri": build_spec(mode="sampling", samples=1, output_uri="/etc/sfhq_probe"),
            "input_folder": build_spec(mode="annotate", input_folder=str(private)),
        }.items():
            code, details = refusal(lambda spec=spec: bob.submit(spec))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details
            assert "outside your blob-store area" in details
        started = time.monotonic()
        code, details = refusal(lambda: bob.submit(build_spec(mode="annotate", input_folder="/")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and time.monotonic() - started < 5  # no disk walk
    assert not Path("/etc/sfhq_probe").exists()
    assert not list((Path(cluster.env["SFHQ_BLOB_URL"]) / "jobs").glob("*/inputs/*secret*"))  # nothing copied


class Listener:
    """A TCP port that records whether anyone connected."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen()
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.socket.accept()
                self.connections += 1
                connection.close()
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()


def test_no_url_is_opened_before_its_protocol_is_checked(cluster):
    listener = Listener()
    closed = free_port()
    try:
        with client(cluster, "bob") as bob:
            port = listener.port
            probes = (
                f"webhdfs://127.0.0.1:{port}/x",
                f"http://127.0.0.1:{port}/x",
                f"ftp://127.0.0.1:{port}/",
                f"ftp://127.0.0.1:{closed}/",
                "memory://ds",
            )
            for uri in probes:
                started = time.monotonic()
                code, details = refusal(
                    lambda uri=uri: bob.submit(build_spec(mode="annotate", input_folder=uri))
                )
                assert code == grpc.StatusCode.INVALID_ARGUMENT and "protocol is not allowed" in details, uri
                assert time.monotonic() - started < 2.0  # open and closed ports answer alike, at once
                code, details = refusal(
                    lambda uri=uri: bob.submit(build_spec(mode="sampling", samples=1, output_uri=uri))
                )
                assert "protocol is not allowed" in details, uri
        time.sleep(0.3)
        assert listener.connections == 0  # the gateway never dialled out
    finally:
        listener.close()


def test_another_users_dataset_and_links_out_of_an_area_are_refused(cluster, alice_job):
    root = Path(cluster.env["SFHQ_BLOB_URL"])
    bob_area = root / "users" / "bob"
    (bob_area / "uploads" / "faces").mkdir(parents=True, exist_ok=True)
    # a link in bob's area to alice's dataset, and a linked image that leads out of bob's area
    alice_dataset = Path(alice_job.dataset_uri.removeprefix("file://"))
    (bob_area / "datasets").mkdir(exist_ok=True)
    link_folder = bob_area / "datasets" / "looks-like-mine"
    if not link_folder.exists():
        link_folder.symlink_to(alice_dataset)
    leak = bob_area / "uploads" / "faces" / "leak.jpg"
    if not leak.exists():
        leak.symlink_to(alice_dataset / "images" / os.listdir(alice_dataset / "images")[0])
    with client(cluster, "bob") as bob:
        for target in (alice_job.dataset_uri, str(link_folder / "out"), str(link_folder)):
            spec = build_spec(mode="sampling", samples=1, output_uri=target)
            code, details = refusal(lambda spec=spec: bob.submit(spec))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside your area" in details, target
        code, details = refusal(
            lambda: bob.submit(build_spec(mode="annotate", input_folder=str(bob_area / "uploads" / "faces")))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "no images" in details  # the link is skipped
        code, details = refusal(
            lambda: bob.submit(build_spec(mode="annotate", images=[alice_job.dataset_uri + "/images/x.jpg"]))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside your area" in details
    manifest = (alice_dataset / "manifest.jsonl").read_text()
    assert len(manifest.splitlines()) == 2  # alice's dataset is untouched


# ---- 5. tenancy ---------------------------------------------------------------------------------------


def test_users_see_only_their_own_jobs_items_and_search_hits(cluster, alice_job):
    with client(cluster, "bob") as bob, client(cluster, "alice") as alice, client(cluster, "admin") as admin:
        for call in (
            lambda: bob.get_job(alice_job.job_id),
            lambda: bob.cancel(alice_job.job_id),
            lambda: bob.list_items(alice_job.job_id),
            lambda: bob.get_item(alice_job.job_id, "s0000000-c0"),
            lambda: list(bob.watch(alice_job.job_id)),
            lambda: bob.search(vector=np.ones(32), job_id=alice_job.job_id),
            lambda: bob.label({f"{alice_job.job_id}/s0000000-c0": True}),
        ):
            code, details = refusal(call)
            assert code == grpc.StatusCode.NOT_FOUND and alice_job.job_id in details
        assert alice_job.job_id not in {j.job_id for j in bob.list_jobs(limit=100)}
        assert alice_job.job_id in {j.job_id for j in alice.list_jobs(limit=100)}
        assert alice_job.job_id in {j.job_id for j in admin.list_jobs(limit=1000)}  # admin sees everyone's
        hits_alice = {h.job_id for h in alice.search(vector=np.ones(32), top_k=50).hits}
        hits_bob = {h.job_id for h in bob.search(vector=np.ones(32), top_k=50).hits}
        assert alice_job.job_id in hits_alice and alice_job.job_id not in hits_bob
        assert alice_job.job_id in {h.job_id for h in admin.search(vector=np.ones(32), top_k=50).hits}


def test_user_tokens_cannot_call_internal_services(cluster, alice_job):
    index_id = f"{alice_job.job_id}/s0000000-c0"
    planted = search_pb2.IndexedItem(item_id="planted", vector=numpy_to_tensor(np.ones(32)))
    calls = {
        "Remove": search_pb2.RemoveRequest(item_ids=[index_id]),
        "Add": search_pb2.AddRequest(items=[planted]),
        "TrainTaste": search_pb2.TrainTasteRequest(),
    }
    for user in ("alice", "bob"):
        metadata = (("authorization", f"Bearer {TOKENS[user]}"),)
        with grpc.insecure_channel(cluster.addr("search")) as channel:
            stub = search_pb2_grpc.SearchStub(channel)
            for method, request in calls.items():
                with pytest.raises(grpc.RpcError) as caught:
                    getattr(stub, method)(request, metadata=metadata, timeout=10)
                assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, (user, method)
    with client(cluster, "alice") as alice:  # nothing was removed
        hits = alice.search(vector=np.ones(32), top_k=50, job_id=alice_job.job_id).hits
        assert index_id in {hit.item_id for hit in hits}


# ---- 6. bounded ---------------------------------------------------------------------------------------


def test_huge_specs_are_refused_and_list_jobs_returns_summaries(cluster, alice_job):
    with client(cluster, "alice") as alice:
        spec = gateway_pb2.JobSpec(mode=gateway_pb2.JOB_MODE_ANNOTATE_ONLY)
        for n in range(9000):  # 9,000 URIs of 4 KB: a 36 MB spec
            spec.inputs.add(uri=f"users/alice/uploads/{'x' * 4000}-{n}.jpg")
        code, details = refusal(lambda: alice.submit(spec))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "SFHQ_MAX_SPEC_BYTES" in details
        jobs = alice.list_jobs(limit=5)
        assert jobs and all(not job.HasField("spec") for job in jobs)  # summaries
        assert alice_job.job_id in {job.job_id for job in alice.list_jobs(limit=1000)}
        full = alice.get_job(alice_job.job_id)
        assert full.HasField("spec") and full.mode == gateway_pb2.JOB_MODE_SAMPLING


def test_expired_jobs_leave_redis_and_the_blob_store_but_their_datasets_stay(cluster, redis_server):
    import redis as redis_module

    from gateway.coordinator import Coordinator, JobStore
    from services.common.queue import RedisQueue

    with client(cluster, "alice") as alice:
        job = alice.wait(small_job(alice).job_id, timeout=300)
    store = BlobStore(cluster.env["SFHQ_BLOB_URL"])
    assert store.list(f"jobs/{job.job_id}/")
    connection = redis_module.Redis.from_url(redis_server, decode_responses=True)
    coordinator = Coordinator(
        RedisQueue(connection), JobStore(connection), store, consumer="sweeper", retention_s=3600
    )
    assert job.job_id not in coordinator.expire_finished_jobs()  # finished just now: kept
    assert job.job_id in coordinator.expire_finished_jobs(now=time.time() + 2 * 3600)
    assert not connection.exists(f"sfhq:job:{job.job_id}") and not connection.exists(
        f"sfhq:job:{job.job_id}:items"
    )
    assert not store.list(f"jobs/{job.job_id}/")
    dataset = Path(job.dataset_uri.removeprefix("file://"))
    assert len((dataset / "manifest.jsonl").read_text().splitlines()) == 1  # the dataset stays
    with client(cluster, "alice") as alice:
        code, _ = refusal(lambda: alice.get_job(job.job_id))
        assert code == grpc.StatusCode.NOT_FOUND
    connection.close()


# ---- tracing ------------------------------------------------------------------------------------------


def test_one_job_is_one_trace_across_the_sdk_the_gateway_the_queue_and_every_stage(cluster, collector):
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()  # the application's own tracing, as an SDK user would have it
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("my pipeline run") as root, client(cluster, "alice") as alice:
        trace_id = format(root.get_span_context().trace_id, "032x")
        job = small_job(alice, samples=1)
    with client(cluster, "alice") as alice:
        assert alice.wait(job.job_id, timeout=300).state == gateway_pb2.JOB_STATE_SUCCEEDED

    def spans_of_job() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for service, name, tid in list(collector.spans):
            if tid == trace_id:
                found.setdefault(service, set()).add(name)
        return found

    wait_until(lambda: len(spans_of_job()) >= 5, timeout=30, what="spans of every service")
    found = spans_of_job()
    assert "sfhq.v1.Gateway/SubmitJob" in found["sfhq-gateway"]
    for service, stage in (
        ("sfhq-generator", "stage sample"),
        ("sfhq-encoder", "stage encode"),
        ("sfhq-search", "stage curate"),
        ("sfhq-annotator", "stage annotate"),
    ):
        assert stage in found[service], (service, found)
    gateway_log = cluster.log_path("gateway").read_text()
    assert f"trace={trace_id}" in gateway_log  # log lines carry the trace id
