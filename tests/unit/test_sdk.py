"""The SDK: `AsyncClient` has every method of `Client` with the same signature, and both send the same
requests (checked against a recording gateway on loopback gRPC)."""

from __future__ import annotations

import asyncio
import inspect
import os
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from sfhq.sdk import AsyncClient, Client, SfhqError, build_spec
from sfhq.tensors import numpy_to_tensor
from sfhq.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, search_pb2


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in inspect.getmembers(cls) if not name.startswith("_")}


def test_async_client_has_every_method_of_client_with_the_same_signature():
    sync, asynchronous = public_methods(Client), public_methods(AsyncClient)
    assert set(sync) == set(asynchronous)
    assert {"submit", "submit_images", "watch", "wait", "download", "label", "search"} <= set(sync)
    for name, signature in sync.items():  # the same parameters; results differ only by being awaitable
        assert str(signature.replace(return_annotation=None)) == str(
            asynchronous[name].replace(return_annotation=None)
        ), name


class RecordingGateway(gateway_pb2_grpc.GatewayServicer):
    """Answers a few RPCs with canned data and keeps every request it saw."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, object]] = []

    def SubmitJob(self, request, context):
        self.requests.append(("SubmitJob", request))
        return gateway_pb2.Job(job_id="job1", state=gateway_pb2.JOB_STATE_QUEUED)

    def ListItems(self, request, context):
        self.requests.append(("ListItems", request))
        return gateway_pb2.ListItemsResponse(
            items=[gateway_pb2.Item(item_id=f"i{n}", stem=f"S_{n}") for n in range(2)]
        )

    def GetItem(self, request, context):
        self.requests.append(("GetItem", request))
        if request.item_id == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "item 'missing' not found")
        return gateway_pb2.Item(
            item_id=request.item_id, job_id=request.job_id, stem=f"S_{request.item_id[1:]}",
            image=common_pb2.Image(data=b"jpeg-bytes"), segmentation=common_pb2.Image(data=b"png-bytes"),
            landmarks=numpy_to_tensor(np.zeros((110, 2), np.float32)),
        )  # fmt: skip

    def Label(self, request, context):
        self.requests.append(("Label", request))
        return search_pb2.LabelResponse(positives=sum(label.positive for label in request.labels))


@pytest.fixture()
def gateway():
    servicer = RecordingGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_both_clients_send_the_same_requests_and_write_the_same_files(gateway, tmp_path: Path):
    servicer, address = gateway
    spec = build_spec(images=[b"\x89PNG"], strategies=["low_prior:steps=3"])
    with Client(address, retries=0) as client:
        client.submit(spec, request_id="r1")
        client.label({"i0": True, "i1": False}, taste_model="mine", labeler="ann")
        sync_paths = client.download("job1", tmp_path / "sync")
    sync_requests, servicer.requests = servicer.requests, []

    async def run() -> list[Path]:
        async with AsyncClient(address, retries=0) as client:
            await client.submit(spec, request_id="r1")
            await client.label({"i0": True, "i1": False}, taste_model="mine", labeler="ann")
            return await client.download("job1", tmp_path / "async")

    async_paths = asyncio.run(run())
    assert [name for name, _ in sync_requests] == ["SubmitJob", "Label", "ListItems", "GetItem", "GetItem"]
    assert sorted(str(r) for _, r in servicer.requests) == sorted(str(r) for _, r in sync_requests)
    assert [p.relative_to(tmp_path / "sync") for p in sync_paths] == [
        p.relative_to(tmp_path / "async") for p in async_paths
    ]
    assert (tmp_path / "async" / "images" / "S_0.jpg").read_bytes() == b"jpeg-bytes"
    assert (tmp_path / "async" / "segmentations" / "S_1.png").read_bytes() == b"png-bytes"


def test_errors_carry_the_status_and_message(gateway):
    _, address = gateway
    with Client(address, retries=0) as client, pytest.raises(SfhqError) as caught:
        client.get_item("job1", "missing")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and "missing" in caught.value.details

    async def run() -> None:
        async with AsyncClient(address, retries=0) as client:
            await client.get_item("job1", "missing")

    with pytest.raises(SfhqError, match="NOT_FOUND"):
        asyncio.run(run())


def test_the_cluster_env_file_is_read_and_the_environment_wins(tmp_path, monkeypatch):
    from sfhq import localenv

    monkeypatch.setenv("SFHQ_STATE_DIR", str(tmp_path))
    localenv.write_env(
        localenv.env_file(), {"SFHQ_GATEWAY_ADDR": "127.0.0.1:4242", "SFHQ_CLUSTER_DATA": "/a b"}
    )
    assert localenv.read_env(tmp_path / "cluster.env") == {
        "SFHQ_GATEWAY_ADDR": "127.0.0.1:4242",
        "SFHQ_CLUSTER_DATA": "/a b",
    }
    monkeypatch.setenv("SFHQ_GATEWAY_ADDR", "10.0.0.1:1")
    monkeypatch.delenv("SFHQ_CLUSTER_DATA", raising=False)  # restored (absent) after the test
    localenv.apply_cluster_env()
    assert os.environ["SFHQ_GATEWAY_ADDR"] == "10.0.0.1:1"  # set by the user: kept
    assert os.environ["SFHQ_CLUSTER_DATA"] == "/a b"
