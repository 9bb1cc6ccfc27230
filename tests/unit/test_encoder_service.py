"""Encoder service: gRPC Encode / EncodeUnaligned over a real server, and the `encode` stage handler."""

from __future__ import annotations

import io
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from services.common.blobs import BlobStore, item_key
from services.common.model_holder import LazyModel
from services.common.queue import RedisQueue, Task, connect_redis
from services.encoder.model import EncoderConfig, encoder_from_checkpoint
from services.encoder.random_weights import e4e_opts, random_encoder_state_dict
from services.encoder.service import build_process, encode_stage, encoder_model
from sfhq.tensors import tensor_to_numpy
from sfhq.v1 import annotator_pb2, annotator_pb2_grpc, common_pb2, encoder_pb2, encoder_pb2_grpc
from tests.helpers.data import DATA
from tests.helpers.services import ServedProcess, settings_for

FACES, INSPIRATION = DATA / "faces", DATA / "inspiration"
CONFIG = EncoderConfig(n_styles=4, units_per_stage=(1, 1, 1, 1), input_size=64)


@pytest.fixture(scope="module")
def encoder():
    state = random_encoder_state_dict(CONFIG, seed=5)
    checkpoint = {
        "state_dict": {f"encoder.{k}": v for k, v in state.items()},
        "opts": e4e_opts(CONFIG.stylegan_size),
        "latent_avg": torch.linspace(-1, 1, 512).repeat(CONFIG.n_styles, 1),
    }
    return encoder_from_checkpoint(checkpoint)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def face(index: int, size: int = 128) -> Image.Image:
    return Image.open(FACES / f"sfhq_sample_0{index}.jpg").convert("RGB").resize((size, size))


def Server(settings, model=None) -> ServedProcess:  # noqa: N802 - reads like the class it returns
    """A started encoder process (gRPC only) and a stub to it."""
    return ServedProcess(build_process(settings, model=model), encoder_pb2_grpc.EncoderStub)


def ready(encoder) -> LazyModel:
    return LazyModel.ready("encoder", encoder)


@pytest.fixture()
def server(tmp_path, encoder):
    running = Server(settings_for(tmp_path), ready(encoder))
    yield running
    running.close()


def codes_of(response: encoder_pb2.EncodeResponse) -> np.ndarray:
    return np.stack([tensor_to_numpy(t, expect_shape=(CONFIG.n_styles, 512)) for t in response.latents])


# ------------------------------------------------------------------------------------------------
# Encode
# ------------------------------------------------------------------------------------------------


def test_encode_returns_one_code_per_image_in_order(server, encoder):
    blobs = server.servicer.blobs
    key = "uploads/face1.png"
    blobs.put(key, png_bytes(face(1)))
    request = encoder_pb2.EncodeRequest(
        images=[
            common_pb2.Image(data=png_bytes(face(0))),
            common_pb2.Image(uri=key),
            common_pb2.Image(uri=blobs.uri(key)),
        ]
    )
    codes = codes_of(server.stub.Encode(request))
    expected = encoder.encode_images([face(0), face(1), face(1)])
    assert codes.shape == (3, CONFIG.n_styles, 512)
    np.testing.assert_allclose(codes, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert np.abs(codes[0] - codes[1]).max() > 1e-3

    raw = codes_of(
        server.stub.Encode(encoder_pb2.EncodeRequest(images=request.images[:1], skip_latent_avg=True))
    )
    np.testing.assert_allclose(codes[0] - raw[0], encoder.latent_avg.numpy(), atol=1e-4)


@pytest.mark.parametrize(
    ("image", "code", "message"),
    [
        (common_pb2.Image(data=b"\x89PNG\r\n\x1a\n broken"), grpc.StatusCode.INVALID_ARGUMENT, "image 0"),
        (
            common_pb2.Image(data=png_bytes(Image.new("RGB", (40, 40)))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not face-sized",
        ),
        (
            common_pb2.Image(data=png_bytes(Image.new("RGB", (300, 100)))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not face-sized",
        ),
        (common_pb2.Image(), grpc.StatusCode.INVALID_ARGUMENT, "neither data nor uri"),
        (common_pb2.Image(uri="../../etc/passwd"), grpc.StatusCode.INVALID_ARGUMENT, "etc/passwd"),
        (common_pb2.Image(uri="uploads/nothing.png"), grpc.StatusCode.NOT_FOUND, "uploads/nothing.png"),
    ],
)
def test_encode_bad_images_get_a_status_naming_the_problem(server, image, code, message):
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Encode(encoder_pb2.EncodeRequest(images=[image]))
    assert caught.value.code() == code
    assert message in caught.value.details()


def test_encode_without_images_is_invalid(server):
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.Encode(encoder_pb2.EncodeRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images: the request has none" in caught.value.details()


def test_missing_checkpoint_is_failed_precondition_naming_sfhq_weights(tmp_path):
    running = Server(settings_for(tmp_path))  # the real loader, on an empty weights folder
    try:
        with pytest.raises(grpc.RpcError) as caught:
            running.stub.Encode(encoder_pb2.EncodeRequest(images=[common_pb2.Image(data=png_bytes(face(0)))]))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "sfhq weights download e4e-ffhq-encode" in caught.value.details()
    finally:
        running.close()


# ------------------------------------------------------------------------------------------------
# EncodeUnaligned, with a stand-in annotator speaking the real Align RPC
# ------------------------------------------------------------------------------------------------


class FakeAnnotator(annotator_pb2_grpc.AnnotatorServicer):
    """Aligns by centre-cropping and resizing; or fails like the real one when told to."""

    def __init__(self, fail: tuple[grpc.StatusCode, str] | None = None):
        self.requests: list[annotator_pb2.AlignRequest] = []
        self.fail = fail

    def Align(self, request, context):
        self.requests.append(request)
        if self.fail:
            context.abort(*self.fail)
        faces = []
        for image in request.images:
            source = Image.open(io.BytesIO(image.data)).convert("RGB")
            side = min(source.size)
            left, top = (source.width - side) // 2, (source.height - side) // 2
            crop = source.crop((left, top, left + side, top + side)).resize((request.output_size,) * 2)
            faces.append(
                annotator_pb2.AlignedFace(image=common_pb2.Image(data=png_bytes(crop)), face_count=1)
            )
        return annotator_pb2.AlignResponse(faces=faces)


@pytest.fixture()
def annotator():
    servicers = []

    def start(fail=None):
        servicer = FakeAnnotator(fail)
        grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        annotator_pb2_grpc.add_AnnotatorServicer_to_server(servicer, grpc_server)
        port = grpc_server.add_insecure_port("127.0.0.1:0")
        grpc_server.start()
        servicers.append(grpc_server)
        return servicer, f"127.0.0.1:{port}"

    yield start
    for grpc_server in servicers:
        grpc_server.stop(0)


def test_encode_unaligned_aligns_through_the_annotator_then_encodes(tmp_path, encoder, annotator):
    fake, address = annotator()
    running = Server(settings_for(tmp_path, annotator_addr=address), model=ready(encoder))
    try:
        sources = [Image.open(INSPIRATION / "sd_01.jpg"), Image.open(INSPIRATION / "render3d_00.jpg")]
        request = encoder_pb2.EncodeRequest(images=[common_pb2.Image(data=png_bytes(s)) for s in sources])
        response = running.stub.EncodeUnaligned(request)
    finally:
        running.close()
    assert [r.output_size for r in fake.requests] == [256]
    assert len(response.aligned) == 2 and len(response.latents) == 2
    aligned = [Image.open(io.BytesIO(image.data)) for image in response.aligned]
    assert [a.size for a in aligned] == [(256, 256), (256, 256)]
    expected = encoder.encode_images(aligned)
    np.testing.assert_allclose(codes_of(response), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_encode_unaligned_relays_the_annotators_verdict(tmp_path, encoder, annotator):
    _, address = annotator(fail=(grpc.StatusCode.NOT_FOUND, "no face found in image 0"))
    running = Server(settings_for(tmp_path, annotator_addr=address), model=ready(encoder))
    try:
        with pytest.raises(grpc.RpcError) as caught:
            running.stub.EncodeUnaligned(
                encoder_pb2.EncodeRequest(images=[common_pb2.Image(data=png_bytes(face(0)))])
            )
    finally:
        running.close()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no face found in image 0" in caught.value.details()


def test_encode_unaligned_with_alignment_off_is_failed_precondition(tmp_path, encoder):
    running = Server(settings_for(tmp_path, annotator_addr=""), model=ready(encoder))
    try:
        with pytest.raises(grpc.RpcError) as caught:
            running.stub.EncodeUnaligned(
                encoder_pb2.EncodeRequest(images=[common_pb2.Image(data=png_bytes(face(0)))])
            )
    finally:
        running.close()
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "alignment is disabled" in caught.value.details()


def test_encode_unaligned_with_the_annotator_down_is_unavailable(tmp_path, encoder):
    from services.common.embedded_redis import free_port

    running = Server(settings_for(tmp_path, annotator_addr=f"127.0.0.1:{free_port()}"), model=ready(encoder))
    running.servicer.align_timeout_s = 3.0
    try:
        with pytest.raises(grpc.RpcError) as caught:
            running.stub.EncodeUnaligned(
                encoder_pb2.EncodeRequest(images=[common_pb2.Image(data=png_bytes(face(0)))])
            )
    finally:
        running.close()
    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert "annotator at 127.0.0.1" in caught.value.details()


# ------------------------------------------------------------------------------------------------
# The `encode` stage
# ------------------------------------------------------------------------------------------------


class CountingEncoder:
    """Forwards to the real encoder and records the batch sizes it was asked for."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.batches: list[int] = []

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode_images(self, images, **kwargs):
        self.batches.append(len(images))
        return self.encoder.encode_images(images, **kwargs)


def test_encode_handler_writes_latents_and_fails_bad_tasks_alone(tmp_path, encoder):
    settings = settings_for(tmp_path)
    blobs = BlobStore(settings.blob_url)
    for name, data in {
        "in/a.png": png_bytes(face(2)),
        "in/b.jpg": (FACES / "sfhq_sample_03.jpg").read_bytes(),
        "in/corrupt.png": b"not an image",
        "in/tiny.png": png_bytes(Image.new("RGB", (20, 20))),
    }.items():
        blobs.put(name, data)
    tasks = [
        Task.make("job1", "item1", "encode", {"image": "in/a.png"}),
        Task.make("job1", "item2", "encode", {"image": "in/corrupt.png"}),
        Task.make("job2", "item1", "encode", {"image": "in/b.jpg"}),
        Task.make("job2", "item2", "encode", {}),
        Task.make("job2", "item3", "encode", {"image": "in/tiny.png"}),
        Task.make("job2", "item4", "encode", {"image": "in/missing.png"}),
    ]
    counting = CountingEncoder(encoder)
    results = encode_stage(LazyModel.ready("encoder", counting), blobs, settings)(tasks)

    assert [r.task_id for r in results] == [t.task_id for t in tasks]
    assert [r.ok for r in results] == [True, False, True, False, False, False]
    assert [r.error_code for r in results] == [
        "",
        "INVALID_ARGUMENT",
        "",
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
    ]
    assert "'image'" in results[3].error_message and "not face-sized" in results[4].error_message
    assert counting.batches == [2]  # the two good images went through the model as one batch

    expected = encoder.encode_images([face(2), Image.open(FACES / "sfhq_sample_03.jpg")])
    for result, job, code in ((results[0], "job1", expected[0]), (results[2], "job2", expected[1])):
        key = result.output["latent"]
        assert key == item_key(job, "item1", "encode", "latent.npy")
        latent = blobs.get_npy(key)
        assert latent.dtype == np.float32 and latent.shape == (CONFIG.n_styles, 512)
        np.testing.assert_allclose(latent, code, rtol=0, atol=1e-5 * np.abs(code).max())


def test_encode_handler_with_missing_checkpoint_fails_every_task_permanently(tmp_path, encoder):
    settings = settings_for(tmp_path)
    blobs = BlobStore(settings.blob_url)
    blobs.put("in/a.png", png_bytes(face(0)))
    model = encoder_model(settings)  # the real loader, on an empty weights folder
    tasks = [Task.make("j", f"i{n}", "encode", {"image": "in/a.png"}) for n in range(2)]
    results = encode_stage(model, blobs, settings)(tasks)
    assert [(r.ok, r.error_code) for r in results] == [(False, "FAILED_PRECONDITION")] * 2
    assert "sfhq weights download e4e-ffhq-encode" in results[0].error_message
    # Once a model is there (here: a loaded Encoder passed as is), the same tasks succeed.
    results = encode_stage(ready(encoder), blobs, settings)(tasks)
    assert [r.ok for r in results] == [True, True]


def test_encode_stage_worker_batches_tasks_across_jobs(sfhq_settings, encoder):
    settings = sfhq_settings.model_copy(update={"stages": ["encode"]})
    blobs = BlobStore(settings.blob_url)
    blobs.put("in/face.png", png_bytes(face(4)))
    queue = RedisQueue.from_settings(settings, connect_redis(settings.redis_url))
    queue.ensure_groups()
    queue.enqueue_many(
        [Task.make(f"job{n % 2}", f"item{n}", "encode", {"image": "in/face.png"}) for n in range(3)]
    )

    counting = CountingEncoder(encoder)
    process = build_process(settings, model=LazyModel.ready("encoder", counting), blobs=blobs)
    process.start()
    try:
        results = []
        deadline = time.monotonic() + 30
        while len(results) < 3 and time.monotonic() < deadline:
            results += [result for _, result in queue.read_results("test", count=10, block_ms=200)]
    finally:
        process.stop(grace=1)
    assert sorted(r.item_id for r in results) == ["item0", "item1", "item2"]
    assert all(r.ok for r in results)
    assert counting.batches == [3]  # dynamic batching: three tasks of two jobs, one model batch
    assert blobs.get_npy(results[0].output["latent"]).shape == (CONFIG.n_styles, 512)


def test_typed_errors_carry_their_statuses():
    from services.common.config import ConfigError
    from services.common.errors import error_status
    from services.common.weights import WeightsMissing
    from services.encoder.model import CheckpointError, CheckpointMissing, EncoderInputError

    assert error_status(EncoderInputError("not face-sized")) == ("INVALID_ARGUMENT", "not face-sized")
    assert error_status(CheckpointError("bad layout"))[0] == "FAILED_PRECONDITION"
    assert "sfhq weights download" in error_status(CheckpointMissing("/w/e4e.pt"))[1]
    assert error_status(WeightsMissing("e4e-ffhq-encode", Path("/w/e4e.pt")))[0] == "FAILED_PRECONDITION"
    assert (
        error_status(ConfigError("device 'cuda' was requested but CUDA is not available"))[0]
        == "FAILED_PRECONDITION"
    )
    assert error_status(RuntimeError("out of memory")) is None  # unexpected: retried by the worker
