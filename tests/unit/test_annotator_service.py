"""The annotator service: gRPC calls against a real server (random BiSeNet weights in the official
layout, real dlib), the align / annotate stage handlers writing the SFHQ layout, and the errors."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import numpy as np
import PIL.Image
import pytest

from services.annotator.faces import FaceAnnotator, default_transform_size
from services.annotator.random_weights import write_random_bisenet_checkpoint
from services.annotator.service import (
    PARSER_CHECKPOINT,
    align_stage,
    annotate_stage,
    build_process,
    landmarker_model,
    parser_model,
)
from services.common.blobs import BlobStore
from services.common.config import Settings
from services.common.images import decode_image, is_intermediate
from services.common.queue import Task
from services.common.safe_pickle import load_feature_pickle
from services.common.weights import WeightsRegistry
from sfhq.tensors import tensor_to_numpy
from sfhq.v1 import annotator_pb2, annotator_pb2_grpc, common_pb2
from tests.helpers.data import DATA
from tests.helpers.services import ServedProcess

TESTDATA = DATA


def jpeg_bytes(name: str, size: int | None = None) -> bytes:
    image = PIL.Image.open(TESTDATA / name).convert("RGB")
    if size:
        image = image.resize((size, size), PIL.Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def grey_png(size: int = 128) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (size, size), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    source = write_random_bisenet_checkpoint(tmp_path_factory.mktemp("src") / "79999_iter.pth", seed=7)
    WeightsRegistry(folder).add(PARSER_CHECKPOINT, source)
    return folder


@pytest.fixture(scope="module")
def settings(weights_dir, tmp_path_factory) -> Settings:
    return Settings(
        weights_dir=weights_dir,
        blob_url=str(tmp_path_factory.mktemp("blobs")),
        device="cpu",
        port=0,
        stages="none",
        parser_backend="torch",
    )


def models_for(settings: Settings) -> FaceAnnotator:
    return FaceAnnotator(landmarker_model(settings), parser_model(settings))


@pytest.fixture(scope="module")
def server(settings):
    with ServedProcess(build_process(settings), annotator_pb2_grpc.AnnotatorStub, grace_s=1) as running:
        yield running.stub, running.process


@pytest.fixture(scope="module")
def annotator(settings) -> FaceAnnotator:
    return models_for(settings)


# ---- gRPC ---------------------------------------------------------------------------------------------


def test_detect_returns_faces_with_landmarks_and_empty_lists_for_non_faces(server) -> None:
    stub, _ = server
    reply = stub.Detect(
        annotator_pb2.DetectRequest(
            images=[
                common_pb2.Image(data=jpeg_bytes("inspiration/sd_00.jpg")),
                common_pb2.Image(data=grey_png()),
            ]
        )
    )
    assert len(reply.detections) == 2
    face = reply.detections[0].faces[0]
    landmarks = tensor_to_numpy(face.landmarks68, expect_shape=(68, 2))
    assert face.left < landmarks[30, 0] < face.right and face.score > 0
    assert len(reply.detections[1].faces) == 0


def test_align_returns_the_face_its_landmarks_and_the_transform(server) -> None:
    stub, _ = server
    reply = stub.Align(
        annotator_pb2.AlignRequest(
            images=[common_pb2.Image(data=jpeg_bytes("inspiration/render3d_01.jpg"))],
            output_size=256,
            transform_size=256,
        )
    )
    aligned = reply.faces[0]
    image = PIL.Image.open(io.BytesIO(aligned.image.data))
    assert image.format == "PNG" and image.size == (256, 256) and aligned.face_count == 1
    landmarks = tensor_to_numpy(aligned.landmarks68, expect_shape=(68, 2))
    transform = tensor_to_numpy(aligned.transform, expect_shape=(2, 3))
    left_eye, right_eye = landmarks[36:42].mean(0), landmarks[42:48].mean(0)
    assert abs(left_eye[0] - 96) < 8 and abs(right_eye[0] - 160) < 8 and abs(left_eye[1] - 121) < 8
    assert transform[0, 0] > 0  # no mirror


def test_align_output_options_resize_and_blob_store(server, settings) -> None:
    stub, _ = server
    reply = stub.Align(
        annotator_pb2.AlignRequest(
            images=[common_pb2.Image(data=jpeg_bytes("inspiration/sd_03.jpg"))],
            output_size=128,
            transform_size=128,
            output=common_pb2.OutputOptions(
                format=common_pb2.IMAGE_FORMAT_JPEG, jpeg_quality=80, size=64, to_blob_store=True
            ),
        )
    )
    aligned = reply.faces[0]
    assert aligned.image.uri and not aligned.image.data
    data = BlobStore(settings.blob_url).get(aligned.image.uri)
    image = PIL.Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (64, 64)
    left_eye = tensor_to_numpy(aligned.landmarks68)[36:42].mean(0)  # follows the resize to 64
    assert abs(left_eye[0] - 24) < 3 and abs(left_eye[1] - 30.2) < 3


def test_annotate_returns_segmentation_landmarks_and_overlay(server) -> None:
    stub, _ = server
    request = annotator_pb2.AnnotateRequest(
        images=[common_pb2.Image(data=jpeg_bytes("faces/sfhq_sample_05.jpg", 256))],
        working_size=64,
        include_overlay=True,
    )
    annotation = stub.Annotate(request).annotations[0]
    segmentation = PIL.Image.open(io.BytesIO(annotation.segmentation.data))
    assert segmentation.mode == "L" and segmentation.size == (256, 256)
    assert np.asarray(segmentation).max() < 19
    landmarks = tensor_to_numpy(annotation.landmarks, expect_shape=(110, 2))
    assert np.isfinite(landmarks).all()
    eyes = landmarks[36:48].mean(0)
    assert abs(eyes[0] - 128) < 20 and abs(eyes[1] - 121) < 20  # FFHQ-aligned input, canonical box
    overlay = PIL.Image.open(io.BytesIO(annotation.overlay.data))
    assert overlay.format == "PNG" and overlay.size == (256, 256)
    assert annotation.face_count == 0  # canonical box: no detection ran
    pose = annotation.pose  # an FFHQ-aligned face looks roughly into the camera
    assert annotation.HasField("pose") and abs(pose.yaw) < 30 and abs(pose.pitch) < 30 and abs(pose.roll) < 15

    without = stub.Annotate(annotator_pb2.AnnotateRequest(images=request.images, working_size=64))
    assert not without.annotations[0].HasField("overlay")
    detected = stub.Annotate(
        annotator_pb2.AnnotateRequest(images=request.images, working_size=128, detect_faces=True)
    )
    assert detected.annotations[0].face_count == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda s: s.Align(
                annotator_pb2.AlignRequest(images=[common_pb2.Image(data=grey_png())], output_size=64)
            ),
            "image 0: no face found",
        ),
        (
            lambda s: s.Detect(annotator_pb2.DetectRequest(images=[common_pb2.Image(data=b"not an image")])),
            "image 0",
        ),
        (lambda s: s.Detect(annotator_pb2.DetectRequest()), "images: the request has none; give 1..64"),
        (
            lambda s: s.Align(
                annotator_pb2.AlignRequest(images=[common_pb2.Image(data=grey_png())], output_size=99999)
            ),
            "output_size",
        ),
        (
            lambda s: s.Align(
                annotator_pb2.AlignRequest(
                    images=[common_pb2.Image(data=grey_png())],
                    output_size=64,
                    output=common_pb2.OutputOptions(jpeg_quality=500),
                )
            ),
            "jpeg_quality",
        ),
        (
            lambda s: s.Annotate(
                annotator_pb2.AnnotateRequest(images=[common_pb2.Image(data=grey_png())], working_size=8)
            ),
            "working_size",
        ),
        (
            lambda s: s.Annotate(
                annotator_pb2.AnnotateRequest(
                    images=[common_pb2.Image(data=grey_png())], detect_faces=True, working_size=64
                )
            ),
            "no face found",
        ),
        (
            lambda s: s.Detect(annotator_pb2.DetectRequest(images=[common_pb2.Image()])),
            "neither data nor uri",
        ),
    ],
)
def test_bad_requests_are_invalid_argument(server, call, message) -> None:
    stub, _ = server
    with pytest.raises(grpc.RpcError) as info:
        call(stub)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_missing_parser_checkpoint_is_failed_precondition_naming_sfhq_weights(tmp_path) -> None:
    settings = Settings(
        weights_dir=tmp_path / "empty", blob_url=str(tmp_path / "blobs"), device="cpu", port=0, stages="none"
    )
    with ServedProcess(build_process(settings), annotator_pb2_grpc.AnnotatorStub, grace_s=1) as running:
        with pytest.raises(grpc.RpcError) as info:
            running.stub.Annotate(
                annotator_pb2.AnnotateRequest(
                    images=[common_pb2.Image(data=jpeg_bytes("faces/sfhq_sample_00.jpg", 128))],
                    working_size=64,
                )
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "sfhq weights" in info.value.details() and PARSER_CHECKPOINT in info.value.details()
        # Detection and alignment do not need the parser.
        detected = running.stub.Detect(
            annotator_pb2.DetectRequest(
                images=[common_pb2.Image(data=jpeg_bytes("faces/sfhq_sample_00.jpg"))]
            )
        )
        assert len(detected.detections[0].faces) == 1


def test_onnx_backend_is_selected_by_settings(weights_dir, tmp_path) -> None:
    settings = Settings(
        weights_dir=weights_dir, blob_url=str(tmp_path / "b"), device="cpu", parser_backend="onnx"
    )
    parser = parser_model(settings)
    assert parser.get().backend == "onnx"
    assert parser.provenance_record()["parser"]["backend"] == "onnx"


def test_default_transform_size_supersamples_like_ffhq() -> None:
    assert default_transform_size(1024) == 4096 and default_transform_size(256) == 1024
    assert default_transform_size(4096) == 4096


# ---- queue stages -------------------------------------------------------------------------------------


def test_align_stage_writes_the_aligned_face_losslessly_and_fails_per_item(annotator, settings) -> None:
    blobs = BlobStore(settings.blob_url)
    face_uri = blobs.put("inputs/job1/face.jpg", jpeg_bytes("inspiration/sd_04.jpg"))
    blank = blobs.put("inputs/job1/blank.png", grey_png())
    tasks = [
        Task.make("job1", "i0", "align", {"input": face_uri, "output_size": 128, "transform_size": 128}),
        Task.make("job1", "i1", "align", {"input": blank, "output_size": 128}),
        Task.make("job1", "i2", "align", {"output_size": 128}),
        Task.make("job1", "i3", "align", {"input": face_uri, "output_size": "big"}),
    ]
    results = align_stage(annotator, blobs, settings)(tasks)
    assert [r.task_id for r in results] == [t.task_id for t in tasks]
    ok = results[0]
    assert ok.ok and ok.output["aligned"] == "jobs/job1/items/i0/align/aligned.qoi"
    assert is_intermediate(blobs.get(ok.output["aligned"]))
    assert decode_image(blobs.get(ok.output["aligned"])).size == (128, 128)
    assert np.asarray(ok.output["landmarks68"]).shape == (68, 2) and ok.output["face_count"] == 1
    assert np.asarray(ok.output["transform"]).shape == (2, 3)
    assert (results[1].ok, results[1].error_code, results[1].error_message) == (
        False,
        "INVALID_ARGUMENT",
        "no face found",
    )
    assert not results[2].ok and "input" in results[2].error_message
    assert not results[3].ok and "output_size" in results[3].error_message


def test_annotate_stage_writes_the_sfhq_files(annotator, settings, tmp_path) -> None:
    blobs = BlobStore(settings.blob_url)
    image_key = blobs.put("jobs/j2/items/c0/synthesize/image.png", jpeg_bytes("faces/sfhq_sample_08.jpg"))
    features_key = blobs.put_npy("jobs/j2/items/c0/embed/features.npy", np.arange(16, dtype=np.float32))
    latent_key = blobs.put_npy("jobs/j2/items/c0/synthesize/latent.npy", np.zeros((10, 512), np.float32))
    dataset = tmp_path / "dataset"
    payload = {
        "image": image_key,
        "features": features_key,
        "feature_key": "CLIP_ViTL_14@336",
        "stem": "SFHQ_pt9_00000001",
        "dataset_uri": str(dataset),
        "image_size": 256,
        "jpeg_quality": 90,
        "working_size": 64,
        "detect_faces": False,
        "latent": latent_key,
    }
    tasks = [
        Task.make("j2", "c0", "annotate", payload),
        Task.make("j2", "c1", "annotate", {**payload, "features": "jobs/j2/missing.npy"}),
        Task.make("j2", "c2", "annotate", {**payload, "stem": ""}),
        Task.make(
            "j2",
            "c3",
            "annotate",
            {**payload, "stem": "SFHQ_pt9_00000003", "landmark_convention": "pixel_centres"},
        ),
        Task.make(
            "j2", "c4", "annotate", {**payload, "stem": "SFHQ_pt9_00000004", "landmark_convention": "x4"}
        ),
    ]
    results = annotate_stage(annotator, blobs, settings)(tasks)
    assert [r.task_id for r in results] == [t.task_id for t in tasks]
    assert results[0].ok, results[0].error_message
    files = results[0].output["files"]
    assert set(files) == {"image", "segmentation", "landmarks", "features", "latent"}
    pose = results[0].output["pose"]
    assert set(pose) == {"yaw", "pitch", "roll"} and all(abs(v) < 45 for v in pose.values())
    stem = "SFHQ_pt9_00000001"
    image = PIL.Image.open(dataset / "images" / f"{stem}.jpg")
    assert image.format == "JPEG" and image.size == (256, 256)
    segmentation = PIL.Image.open(dataset / "segmentations" / f"{stem}.png")
    assert segmentation.mode == "L" and segmentation.size == (256, 256)
    landmarks = np.load(dataset / "landmarks" / f"{stem}.npz")["landmarks"]
    assert landmarks.shape == (110, 2) and landmarks.dtype == np.float32 and np.isfinite(landmarks).all()
    assert (landmarks[:68] > 0).all() and (landmarks[:68] < 256).all()
    features = load_feature_pickle((dataset / "pretrained_features" / f"{stem}.pickle").read_bytes())
    assert list(features) == ["CLIP_ViTL_14@336"] and features["CLIP_ViTL_14@336"].shape == (1, 16)
    provenance = results[0].output["provenance"]
    assert provenance["parser"]["backend"] == "torch" and len(provenance["parser"]["sha256"]) == 64
    assert (
        provenance["parser"]["checkpoint"] == PARSER_CHECKPOINT
        and provenance["landmarks68"]["landmarks68"] == "dlib"
    )
    # the default convention is SFHQ's (x * 4 from the 64-px working copy); pixel centres sit 1.5 px
    # further down-right at 4x, point for point
    centres = np.load(dataset / "landmarks" / "SFHQ_pt9_00000003.npz")["landmarks"]
    np.testing.assert_allclose(centres - landmarks, 1.5, atol=1e-4)
    assert (results[4].ok, results[4].error_code) == (False, "INVALID_ARGUMENT")
    assert "landmark_convention" in results[4].error_message
    assert (results[1].ok, results[1].error_code) == (False, "NOT_FOUND")
    assert (
        not results[2].ok
        and results[2].error_code == "INVALID_ARGUMENT"
        and "stem" in results[2].error_message
    )


def test_annotate_stage_fails_every_item_when_the_parser_is_missing(tmp_path) -> None:
    settings = Settings(weights_dir=tmp_path / "none", blob_url=str(tmp_path / "blobs"), device="cpu")
    blobs = BlobStore(settings.blob_url)
    image_key = blobs.put("x/image.jpg", jpeg_bytes("faces/sfhq_sample_02.jpg", 128))
    features_key = blobs.put_npy("x/f.npy", np.ones(4, np.float32))
    payload = {
        "image": image_key,
        "features": features_key,
        "stem": "s1",
        "dataset_uri": str(tmp_path / "d"),
        "image_size": 128,
        "working_size": 64,
    }
    handler = annotate_stage(models_for(settings), blobs, settings)
    results = handler(
        [Task.make("j", "a", "annotate", payload), Task.make("j", "b", "annotate", {**payload, "stem": "s2"})]
    )
    assert all(
        not r.ok and r.error_code == "FAILED_PRECONDITION" and "sfhq weights" in r.error_message
        for r in results
    )


def test_fan_is_used_when_registered_and_skipped_when_broken(tmp_path) -> None:
    from services.annotator.random_weights import write_random_fan_checkpoint
    from services.annotator.service import FAN_CHECKPOINT

    folder = tmp_path / "w"
    registry = WeightsRegistry(folder)
    # Placed directly: `sfhq weights add` would (rightly) refuse random bytes for the published hash.
    write_random_fan_checkpoint(registry.expected_path(FAN_CHECKPOINT), num_modules=1)
    with_fan = landmarker_model(Settings(weights_dir=folder, device="cpu"))
    assert with_fan.get().fan is not None
    assert with_fan.provenance_record()["landmarks68"]["landmarks68"] == "dlib+fan"

    registry.expected_path(FAN_CHECKPOINT).write_bytes(b"broken")
    fallback = landmarker_model(Settings(weights_dir=folder, device="cpu"))
    assert fallback.get().fan is None and fallback.provenance_record()["landmarks68"]["landmarks68"] == "dlib"
