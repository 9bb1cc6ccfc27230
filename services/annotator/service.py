"""Annotator service: dlib detection + 68 landmarks, FFHQ alignment, BiSeNet parsing and the 110-point
set behind gRPC (``sfhq.v1.Annotator``) and the ``align`` / ``annotate`` queue stages.

* ``Detect``: every face of each image, largest first, with its 68 points.
* ``Align``: the largest face of each image, FFHQ-aligned (default 1024 px from a 4x supersampled
  transform; e4e uses 256), with its 68 points in the aligned frame, the source -> aligned affine
  map and the number of faces seen.
* ``Annotate``: per image, the 19-class parsing map (single-channel PNG at the image's size) and
  the 110 landmarks in image coordinates, computed on a ``working_size`` copy (SFHQ: 256); the
  68 points come from the canonical FFHQ face box (``detect_faces=False``, for StyleGAN outputs) or
  from a detection; ``include_overlay`` adds a picture of both.
* ``align`` stage: payload ``input``, ``output_size``, ``transform_size`` -> output ``aligned`` (PNG
  key), ``landmarks68`` (aligned frame), ``source_landmarks68``, ``transform``, ``face_count``.
* ``annotate`` stage: payload ``image``, ``features``, ``feature_key``, ``stem``, ``dataset_uri``,
  ``image_size``, ``jpeg_quality``, ``working_size``, ``detect_faces`` (optional ``latent``,
  ``canonical_fallback``) -> writes images/, segmentations/, landmarks/, pretrained_features/ (and
  latents/) for the item through ``DatasetWriter``; output ``files``, ``face_count``, ``provenance``.

Errors: an unreadable image, no face, bad sizes -> INVALID_ARGUMENT naming the problem (per item in
the stages); a missing parser checkpoint -> FAILED_PRECONDITION naming ``sfhq weights``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import PIL.Image

from services.annotator.align import AlignmentError, align_face, ffhq_transform, map_landmarks
from services.annotator.detect import FaceLandmarker, FaceLandmarks, ImageInputError, NoFaceFound
from services.annotator.fan import FanCheckpointError, FanLandmarker
from services.annotator.formats import FormatError, segmentation_to_png
from services.annotator.landmarks110 import compute_landmarks110, rescale_points
from services.annotator.overlay import render_overlay
from services.annotator.parsing import (
    CheckpointError,
    FaceParser,
    ParserInputError,
    load_parser,
    upsample_labels,
)
from services.common.blobs import BlobStore, item_key
from services.common.config import Settings, get_settings
from services.common.dataset import DatasetWriter
from services.common.errors import PermanentError, as_permanent, error_status
from services.common.images import decode_image, encode_image
from services.common.queue import Task, TaskResult
from services.common.server import ServiceProcess
from services.common.weights import WeightsMissing, WeightsRegistry
from sfhq.tensors import numpy_to_tensor
from sfhq.v1 import annotator_pb2, annotator_pb2_grpc, common_pb2

__all__ = [
    "AnnotatorModels",
    "AnnotatorServicer",
    "FaceAnnotator",
    "align_handler",
    "annotate_handler",
    "build_process",
    "main",
]

log = logging.getLogger(__name__)

SERVICE_NAME = annotator_pb2.DESCRIPTOR.services_by_name["Annotator"].full_name
PARSER_CHECKPOINT = "bisenet-face-parsing"
FAN_CHECKPOINT = "fan-2d"
DEFAULT_OUTPUT_SIZE = 1024  # FFHQ
MAX_TRANSFORM_SIZE = 8192  # a 8192^2 RGB intermediate is already 200 MB
DEFAULT_WORKING_SIZE = 256  # SFHQ parsed and placed landmarks on a 256-px copy
OUTPUT_SIZE_RANGE = (16, 4096)
WORKING_SIZE_RANGE = (64, 1024)
MAX_IMAGES_PER_REQUEST = 64
DEFAULT_JPEG_QUALITY = 95
ALIGNED_BLOB_NAME = "aligned.png"


class AnnotatorRequestError(PermanentError):
    """A bad request or payload (INVALID_ARGUMENT), with the reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="INVALID_ARGUMENT")


def status_of(error: BaseException) -> tuple[str, str] | None:
    """(gRPC status name, message) for errors that retrying cannot fix; None for unexpected ones."""
    if isinstance(error, CheckpointError | FanCheckpointError):
        return "FAILED_PRECONDITION", str(error)
    if isinstance(error, NoFaceFound | AlignmentError | ImageInputError | ParserInputError | FormatError):
        return "INVALID_ARGUMENT", str(error)
    return error_status(error)


def typed_errors(what: str = "") -> AbstractContextManager[None]:
    """Our typed errors become PermanentError; ``what`` names the image in the message."""
    return as_permanent(status_of, what)

def default_transform_size(output_size: int) -> int:
    """FFHQ supersamples 4x (1024 from 4096); larger outputs stop at 4096 (or their own size)."""
    return max(output_size, min(4 * output_size, 4096))


def _check_range(value: int, bounds: tuple[int, int], what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not bounds[0] <= value <= bounds[1]:
        raise AnnotatorRequestError(f"{what} must be an integer in {bounds[0]}..{bounds[1]}, got {value!r}")
    return value


# ---- models --------------------------------------------------------------------------------------------


class AnnotatorModels:
    """The process's models, loaded on first use: dlib (always available), FAN when its checkpoint
    is registered, and the BiSeNet parser from the weights registry. A missing parser checkpoint
    fails each call that needs it (FAILED_PRECONDITION naming ``sfhq weights``) and the next call
    looks again, so downloading the weights needs no restart."""

    def __init__(self, settings: Settings, *, registry: WeightsRegistry | None = None,
                 parser_path: Path | None = None, landmarker: FaceLandmarker | None = None) -> None:
        self.settings = settings
        self.registry = registry or WeightsRegistry(settings.weights_dir)
        self.parser_path = parser_path
        self._landmarker = landmarker
        self._parser: FaceParser | None = None
        self._lock = threading.Lock()

    def landmarker(self) -> FaceLandmarker:
        with self._lock:
            if self._landmarker is None:
                base = FaceLandmarker.shared()
                fan = None
                try:
                    fan_path = self.registry.path(FAN_CHECKPOINT)
                except WeightsMissing:
                    log.info("annotator: no FAN checkpoint registered; 68 points from dlib alone")
                else:
                    try:
                        fan = FanLandmarker.from_checkpoint(fan_path, self.settings.resolved_device())
                        log.info("annotator: FAN loaded from %s; dlib and FAN points are fused", fan_path)
                    except (FanCheckpointError, OSError) as error:  # optional: never block dlib's points
                        log.error("annotator: FAN checkpoint %s is unusable, using dlib alone: %s", fan_path, error)
                self._landmarker = FaceLandmarker(base.detector, base.predictor, fan=fan)
            return self._landmarker

    def parser(self) -> FaceParser:
        with self._lock:
            if self._parser is None:
                path = self.parser_path or self.registry.path(PARSER_CHECKPOINT)  # WeightsMissing names `sfhq weights`
                self._parser = load_parser(path, device=self.settings.resolved_device(),
                                           backend=self.settings.parser_backend)
                if self.registry.is_random():
                    log.warning("annotator: RANDOM BiSeNet weights from %s: parsing maps are meaningless (demo only)", path)
                log.info("annotator: parser %s loaded (%s backend, sha256 %s)", path, self._parser.backend,
                         self._parser.sha256[:16])
            return self._parser

    def preload(self) -> bool:
        """Load now where possible (startup); log and return False if the parser is not usable yet."""
        self.landmarker()
        try:
            self.parser()
            return True
        except Exception as error:
            log.error("annotator: parser not loaded, Annotate calls will fail until it is: %s", error)
            return False

    def provenance(self) -> dict[str, Any]:
        parser = self._parser
        landmarker = self._landmarker
        return {
            "parser_checkpoint": PARSER_CHECKPOINT,
            "parser_sha256": parser.sha256 if parser else None,
            "parser_backend": parser.backend if parser else None,
            "landmarks68": "dlib+fan" if landmarker is not None and landmarker.fan is not None else "dlib",
            "random_weights": self.registry.is_random(),
        }


# ---- the work, free of gRPC and Redis --------------------------------------------------------------------


@dataclass(frozen=True)
class AlignedFace:
    image: PIL.Image.Image
    landmarks68: np.ndarray  # (68, 2) in the aligned image
    source_landmarks68: np.ndarray  # (68, 2) in the source image
    transform: np.ndarray  # (2, 3) source pixel -> aligned pixel
    face_count: int


@dataclass(frozen=True)
class Annotation:
    label_map: np.ndarray  # uint8 (H, W) at the image's size
    landmarks: np.ndarray  # (110, 2) float32 in image pixel coordinates
    face_count: int
    fallback_points: int  # extra points that used their geometric fallback
    overlay: PIL.Image.Image | None = None


@dataclass
class _Pending:
    image: PIL.Image.Image
    small: PIL.Image.Image
    face: FaceLandmarks | None = None
    error: BaseException | None = None
    labels: np.ndarray | None = field(default=None, repr=False)


class FaceAnnotator:
    """Detection, alignment and annotation of decoded images (used by the servicer and the stages)."""

    def __init__(self, models: AnnotatorModels) -> None:
        self.models = models

    def detect(self, image: PIL.Image.Image) -> list[FaceLandmarks]:
        return self.models.landmarker().detect_all(image)

    def align(self, image: PIL.Image.Image, output_size: int = DEFAULT_OUTPUT_SIZE, transform_size: int | None = None,
              enable_padding: bool = True) -> AlignedFace:
        output_size = _check_range(output_size, OUTPUT_SIZE_RANGE, "output_size")
        transform_size = default_transform_size(output_size) if transform_size is None else transform_size
        _check_range(transform_size, (output_size, MAX_TRANSFORM_SIZE), "transform_size")
        face = self.models.landmarker().locate(image)  # NoFaceFound: "no face found"
        aligned = align_face(image, face.landmarks68, output_size, transform_size, enable_padding)
        transform = ffhq_transform(face.landmarks68, output_size, transform_size, image_size=image.size)
        return AlignedFace(aligned, map_landmarks(face.landmarks68, transform).astype(np.float32),
                           face.landmarks68, transform, face.face_count)

    def annotate_batch(self, images: Sequence[PIL.Image.Image], *, detect_faces: bool = False,
                       working_size: int = DEFAULT_WORKING_SIZE, canonical_fallback: bool = False,
                       with_overlay: bool = False) -> list[Annotation | BaseException]:
        """One result per image, or the exception that image raised (other images are unaffected).
        The parser runs once over all the images that got their 68 points."""
        working_size = _check_range(working_size, WORKING_SIZE_RANGE, "working_size")
        landmarker = self.models.landmarker()
        pending = []
        for image in images:
            small = image if image.size == (working_size, working_size) else image.resize(
                (working_size, working_size), PIL.Image.Resampling.BILINEAR)
            item = _Pending(image, small)
            try:
                item.face = landmarker.locate(small, detect=detect_faces, allow_canonical=canonical_fallback)
            except Exception as error:  # noqa: BLE001 - kept per image, re-raised by the caller
                item.error = error
            pending.append(item)

        ready = [item for item in pending if item.error is None]
        if ready:
            label_maps = self.models.parser().parse_batch([item.small for item in ready], working_size)
            for item, labels in zip(ready, label_maps, strict=True):
                item.labels = labels

        results: list[Annotation | BaseException] = []
        for item in pending:
            if item.error is not None:
                results.append(item.error)
                continue
            try:
                results.append(self._finish(item, working_size, with_overlay))
            except Exception as error:  # noqa: BLE001
                results.append(error)
        return results

    @staticmethod
    def _finish(item: _Pending, working_size: int, with_overlay: bool) -> Annotation:
        assert item.face is not None and item.labels is not None
        extended = compute_landmarks110(item.face.landmarks68, item.labels)
        points = rescale_points(extended.points, (working_size, working_size), item.image.size)
        label_map = upsample_labels(item.labels, item.image.size)
        overlay = render_overlay(item.image, label_map, points) if with_overlay else None
        return Annotation(label_map, points, item.face.face_count, int(extended.fallback.sum()), overlay)


# ---- gRPC ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputFormat:
    """How a call returns images (from common.OutputOptions)."""

    fmt: str = "png"
    quality: int = DEFAULT_JPEG_QUALITY
    to_blob_store: bool = False
    size: int = 0

    @classmethod
    def from_proto(cls, options: common_pb2.OutputOptions) -> OutputFormat:
        fmt = "jpeg" if options.format == common_pb2.IMAGE_FORMAT_JPEG else "png"
        quality = options.jpeg_quality or DEFAULT_JPEG_QUALITY
        if not 1 <= quality <= 100:
            raise AnnotatorRequestError(f"output.jpeg_quality must be in 1..100, got {options.jpeg_quality}")
        if options.size and not OUTPUT_SIZE_RANGE[0] <= options.size <= OUTPUT_SIZE_RANGE[1]:
            raise AnnotatorRequestError(
                f"output.size must be 0 (native) or in {OUTPUT_SIZE_RANGE[0]}..{OUTPUT_SIZE_RANGE[1]}, got {options.size}")
        return cls(fmt, quality, options.to_blob_store, options.size)

    def message(self, image: PIL.Image.Image, blobs: BlobStore) -> common_pb2.Image:
        data = encode_image(image, self.fmt, self.quality)
        if not self.to_blob_store:
            return common_pb2.Image(data=data)
        # Content-addressed, so a retried call writes the same key.
        key = f"rpc/annotator/{hashlib.sha256(data).hexdigest()[:32]}.{'jpg' if self.fmt == 'jpeg' else 'png'}"
        return common_pb2.Image(uri=blobs.put(key, data))


def resize_transform(transform: np.ndarray, from_size: int, to_size: int) -> np.ndarray:
    """Follow a square image's resize with a 2x3 map (pixel centres aligned)."""
    k = to_size / from_size
    out = np.asarray(transform, dtype=np.float64) * k
    out[:, 2] += 0.5 * k - 0.5
    return out


def read_image(message: common_pb2.Image, blobs: BlobStore, settings: Settings) -> PIL.Image.Image:
    """An Image message (inline bytes or blob URI/key) -> decoded RGB image (ImageError when bad)."""
    source = message.WhichOneof("source")
    if source == "data":
        data = message.data
    elif source == "uri":
        data = blobs.get(message.uri)
    else:
        raise AnnotatorRequestError("neither data nor uri is set")
    return decode_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)


class AnnotatorServicer(annotator_pb2_grpc.AnnotatorServicer):
    def __init__(self, annotator: FaceAnnotator, blobs: BlobStore, settings: Settings) -> None:
        self.annotator = annotator
        self.blobs = blobs
        self.settings = settings

    def _images(self, images: Sequence[common_pb2.Image]) -> list[PIL.Image.Image]:
        if not 1 <= len(images) <= MAX_IMAGES_PER_REQUEST:
            raise AnnotatorRequestError(f"images: expected 1..{MAX_IMAGES_PER_REQUEST} images, got {len(images)}")
        decoded = []
        for index, message in enumerate(images):
            with typed_errors(f"image {index}"):
                decoded.append(read_image(message, self.blobs, self.settings))
        return decoded

    def Detect(self, request: annotator_pb2.DetectRequest, context: grpc.ServicerContext) -> annotator_pb2.DetectResponse:
        detections = []
        for index, image in enumerate(self._images(request.images)):
            with typed_errors(f"image {index}"):
                faces = self.annotator.detect(image)
            detections.append(annotator_pb2.Detection(faces=[
                annotator_pb2.Face(left=f.box.left, top=f.box.top, right=f.box.right, bottom=f.box.bottom,
                                   score=f.box.score, landmarks68=numpy_to_tensor(f.landmarks68)) for f in faces]))
        return annotator_pb2.DetectResponse(detections=detections)

    def Align(self, request: annotator_pb2.AlignRequest, context: grpc.ServicerContext) -> annotator_pb2.AlignResponse:
        with typed_errors():
            output = OutputFormat.from_proto(request.output)
            output_size = _check_range(request.output_size or DEFAULT_OUTPUT_SIZE, OUTPUT_SIZE_RANGE, "output_size")
            transform_size = request.transform_size or default_transform_size(output_size)
        faces = []
        for index, image in enumerate(self._images(request.images)):
            with typed_errors(f"image {index}"):
                aligned = self.annotator.align(image, output_size, transform_size, not request.disable_padding)
            picture, landmarks, transform = aligned.image, aligned.landmarks68, aligned.transform
            if output.size and output.size != output_size:  # the caller wants another size: follow it
                picture = picture.resize((output.size, output.size), PIL.Image.Resampling.LANCZOS)
                transform = resize_transform(transform, output_size, output.size)
                landmarks = map_landmarks(aligned.source_landmarks68, transform)
            faces.append(annotator_pb2.AlignedFace(
                image=output.message(picture, self.blobs), landmarks68=numpy_to_tensor(landmarks),
                transform=numpy_to_tensor(transform), face_count=aligned.face_count))
        return annotator_pb2.AlignResponse(faces=faces)

    def Annotate(self, request: annotator_pb2.AnnotateRequest,
                 context: grpc.ServicerContext) -> annotator_pb2.AnnotateResponse:
        with typed_errors():
            working_size = _check_range(request.working_size or DEFAULT_WORKING_SIZE, WORKING_SIZE_RANGE, "working_size")
        images = self._images(request.images)
        with typed_errors():
            results = self.annotator.annotate_batch(images, detect_faces=request.detect_faces, working_size=working_size,
                                                    with_overlay=request.include_overlay)
        annotations = []
        for index, result in enumerate(results):
            if isinstance(result, BaseException):
                with typed_errors(f"image {index}"):
                    raise result
            annotation = annotator_pb2.Annotation(
                segmentation=common_pb2.Image(data=segmentation_to_png(result.label_map)),
                landmarks=numpy_to_tensor(result.landmarks), face_count=result.face_count)
            if result.overlay is not None:
                annotation.overlay.data = encode_image(result.overlay, "png")
            annotations.append(annotation)
        return annotator_pb2.AnnotateResponse(annotations=annotations)


# ---- queue stages -------------------------------------------------------------------------------------


def _payload_int(payload: dict[str, Any], name: str, default: int | None) -> int | None:
    value = payload.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise AnnotatorRequestError(f"payload {name!r} must be an integer, got {value!r}")
    return value


def _payload_key(payload: dict[str, Any], name: str, what: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise AnnotatorRequestError(f"payload needs {name!r}: {what}")
    return value


def _failure(task: Task, error: BaseException) -> TaskResult:
    status = status_of(error)
    if status is None:
        raise error  # transient (storage hiccup...): the worker retries
    return TaskResult.failure(task, *status)


def align_handler(annotator: FaceAnnotator, blobs: BlobStore, settings: Settings) -> Callable[[list[Task]], list[TaskResult]]:
    """The ``align`` stage: detect the largest face, FFHQ-align it, store the PNG."""

    def handle(tasks: list[Task]) -> list[TaskResult]:
        results = []
        for task in tasks:
            try:
                source = _payload_key(task.payload, "input", "the blob key or URI of the source image")
                output_size = _payload_int(task.payload, "output_size", DEFAULT_OUTPUT_SIZE)
                transform_size = _payload_int(task.payload, "transform_size", None)
                image = decode_image(blobs.get(source), max_bytes=settings.max_image_bytes,
                                     max_pixels=settings.max_image_pixels)
                aligned = annotator.align(image, output_size, transform_size)
                key = item_key(task.job_id, task.item_id, "align", ALIGNED_BLOB_NAME)
                blobs.put(key, encode_image(aligned.image, "png"))
            except Exception as error:  # noqa: BLE001 - sorted into permanent / transient by _failure
                results.append(_failure(task, error))
                continue
            results.append(TaskResult.success(task, {
                "aligned": key,
                "landmarks68": np.round(aligned.landmarks68, 3).tolist(),
                "source_landmarks68": aligned.source_landmarks68.tolist(),
                "transform": aligned.transform.tolist(),
                "face_count": aligned.face_count,
            }))
        return results

    return handle


@dataclass
class _AnnotateJob:
    task: Task
    image: PIL.Image.Image
    features: np.ndarray
    latent: np.ndarray | None


def annotate_handler(annotator: FaceAnnotator, blobs: BlobStore, settings: Settings) -> Callable[[list[Task]], list[TaskResult]]:
    """The ``annotate`` stage: parsing + 110 landmarks, then the item's SFHQ files.

    Tasks of a batch that share ``working_size`` and ``detect_faces`` are parsed as one model batch.
    """
    writers: dict[str, DatasetWriter] = {}

    def writer_for(uri: str) -> DatasetWriter:
        if uri not in writers:
            writers[uri] = DatasetWriter(uri)
        return writers[uri]

    def load(task: Task) -> _AnnotateJob:
        payload = task.payload
        _payload_key(payload, "stem", "the SFHQ stem of the item")
        _payload_key(payload, "dataset_uri", "where the dataset is written")
        image_size = _check_range(_payload_int(payload, "image_size", DEFAULT_OUTPUT_SIZE), OUTPUT_SIZE_RANGE, "image_size")
        image = decode_image(blobs.get(_payload_key(payload, "image", "the blob key of the image")),
                             max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), PIL.Image.Resampling.LANCZOS)
        features = np.asarray(blobs.get_npy(_payload_key(payload, "features", "the blob key of the CLIP features")))
        if features.ndim != 1 or not np.issubdtype(features.dtype, np.number) or not np.isfinite(features).all():
            raise AnnotatorRequestError(f"features must be a finite 1-D vector, got shape {features.shape}")
        latent = payload.get("latent")
        return _AnnotateJob(task, image, features.astype(np.float32), blobs.get_npy(latent) if latent else None)

    def handle(tasks: list[Task]) -> list[TaskResult]:
        results: dict[str, TaskResult] = {}
        groups: dict[tuple[int, bool, bool], list[_AnnotateJob]] = {}
        for task in tasks:
            try:
                job = load(task)
                working = _payload_int(task.payload, "working_size", DEFAULT_WORKING_SIZE)
                key = (_check_range(working, WORKING_SIZE_RANGE, "working_size"),
                       bool(task.payload.get("detect_faces", False)),
                       bool(task.payload.get("canonical_fallback", True)))
                groups.setdefault(key, []).append(job)
            except Exception as error:  # noqa: BLE001
                results[task.task_id] = _failure(task, error)

        for (working_size, detect_faces, canonical_fallback), jobs in groups.items():
            try:
                annotations = annotator.annotate_batch([job.image for job in jobs], detect_faces=detect_faces,
                                                       working_size=working_size, canonical_fallback=canonical_fallback)
            except Exception as error:  # noqa: BLE001 - e.g. the parser checkpoint is missing: all fail alike
                for job in jobs:
                    results[job.task.task_id] = _failure(job.task, error)
                continue
            provenance = annotator.models.provenance()
            for job, annotation in zip(jobs, annotations, strict=True):
                task = job.task
                try:
                    if isinstance(annotation, BaseException):
                        raise annotation
                    payload = task.payload
                    files = writer_for(payload["dataset_uri"]).write_item(
                        payload["stem"],
                        image_jpeg=encode_image(job.image, "jpeg", _payload_int(payload, "jpeg_quality", DEFAULT_JPEG_QUALITY)),
                        segmentation_png=segmentation_to_png(annotation.label_map),
                        landmarks=annotation.landmarks,
                        features={payload.get("feature_key") or "CLIP_ViTL_14@336": job.features},
                        latent=job.latent,
                    )
                except Exception as error:  # noqa: BLE001
                    results[task.task_id] = _failure(task, error)
                    continue
                results[task.task_id] = TaskResult.success(task, {
                    "files": files, "face_count": annotation.face_count,
                    "fallback_points": annotation.fallback_points, "provenance": provenance})
        return [results[task.task_id] for task in tasks]

    return handle


# ---- process ------------------------------------------------------------------------------------------


def build_process(settings: Settings, *, models: AnnotatorModels | None = None,
                  blobs: BlobStore | None = None) -> tuple[ServiceProcess, AnnotatorServicer]:
    """The annotator process (gRPC servicer + ``align``/``annotate`` workers), not started."""
    blobs = blobs or BlobStore(settings.blob_url)
    if models is None:
        models = AnnotatorModels(settings)
        models.preload()
    annotator = FaceAnnotator(models)
    process = ServiceProcess("annotator", settings)
    servicer = AnnotatorServicer(annotator, blobs, settings)
    annotator_pb2_grpc.add_AnnotatorServicer_to_server(servicer, process.server)
    process.add_service_name(SERVICE_NAME)
    stages = settings.stages_for("annotator")
    if "align" in stages:
        process.add_worker("align", align_handler(annotator, blobs, settings))
    if "annotate" in stages:
        process.add_worker("annotate", annotate_handler(annotator, blobs, settings))
    return process, servicer


def main(settings: Settings | None = None) -> None:
    """Run the annotator service until SIGTERM/SIGINT."""
    settings = settings or get_settings()
    settings.configure_logging()
    process, _ = build_process(settings)
    process.serve_forever()


if __name__ == "__main__":
    main()
