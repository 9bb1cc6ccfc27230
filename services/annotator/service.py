"""Annotator service: detection, FFHQ alignment, BiSeNet parsing and the 110 landmarks behind gRPC
(`sfhq.v1.Annotator`) and the `align` / `annotate` stages. Wiring only: the work is
`services.annotator.faces`.

* `Detect`, `Align`, `Annotate`: see `FaceAnnotator`; `Align` can return another output size
  (the points and the affine map follow) and `Annotate` an overlay picture of both annotations.
* `align` stage: `AlignPayload` -> `AlignOutput` (the aligned face, lossless: a QOI intermediate).
* `annotate` stage: `AnnotatePayload` -> the item's SFHQ files through `DatasetWriter`;
  `AnnotateOutput`. Tasks that share `AnnotatePayload.batch_key()` are parsed as one batch.
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import Executor
from dataclasses import dataclass

import grpc
import numpy as np
import PIL.Image

from services.annotator import messages
from services.annotator.detect import FaceLandmarker
from services.annotator.faces import (
    DEFAULT_OUTPUT_SIZE,
    DEFAULT_WORKING_SIZE,
    OUTPUT_SIZE_RANGE,
    WORKING_SIZE_RANGE,
    AlignedFace,
    Annotation,
    FaceAnnotator,
    check_range,
    default_transform_size,
)
from services.annotator.fan import FanCheckpointError, FanLandmarker
from services.annotator.formats import segmentation_to_png
from services.annotator.parsing import FaceParser, load_parser
from services.common.blobs import BlobStore, item_key
from services.common.config import Settings
from services.common.contracts import AlignOutput, AlignPayload, AnnotateOutput, AnnotatePayload
from services.common.dataset import DatasetWriter
from services.common.errors import naming
from services.common.images import INTERMEDIATE_SUFFIX, encode_image, encode_intermediate
from services.common.model_holder import LazyModel, Provenance
from services.common.queue import Task
from services.common.rpc import OutputFormat, check_count, read_blob_image, read_feature_vector, read_image
from services.common.server import ServiceProcess, run_service
from services.common.stage_handler import StageHandler, batched_handler, one_by_one
from services.common.weights import WeightsRegistry
from sfhq.v1 import annotator_pb2, annotator_pb2_grpc, common_pb2

log = logging.getLogger(__name__)

PARSER_CHECKPOINT = "bisenet-face-parsing"
FAN_CHECKPOINT = "fan-2d"
MAX_IMAGES_PER_REQUEST = 64


def landmarker_model(
    settings: Settings, registry: WeightsRegistry | None = None
) -> LazyModel[FaceLandmarker]:
    """dlib's detector and 68 points (their weights ship on PyPI), fused with FAN when registered."""
    registry = registry or WeightsRegistry(settings.weights_dir)

    def load() -> tuple[FaceLandmarker, Provenance]:
        base = FaceLandmarker.shared()
        dlib_only = base, Provenance("dlib-68", details={"landmarks68": "dlib"})
        if not registry.has(FAN_CHECKPOINT):
            return dlib_only
        try:
            fan = FanLandmarker.from_checkpoint(registry.path(FAN_CHECKPOINT), settings.resolved_device())
        except (FanCheckpointError, OSError) as error:  # FAN is optional: never block dlib's points
            log.error("annotator: FAN checkpoint is unusable, using dlib alone: %s", error)
            return dlib_only
        landmarker = FaceLandmarker(base.detector, base.predictor, fan=fan)
        return landmarker, Provenance.from_registry(registry, FAN_CHECKPOINT, landmarks68="dlib+fan")

    return LazyModel("landmarks68", load)


def parser_model(settings: Settings, registry: WeightsRegistry | None = None) -> LazyModel[FaceParser]:
    """BiSeNet from the weights registry (a missing file names `sfhq weights`)."""
    registry = registry or WeightsRegistry(settings.weights_dir)

    def load() -> tuple[FaceParser, Provenance]:
        path = registry.path(PARSER_CHECKPOINT)
        parser = load_parser(
            path, device=settings.resolved_device(), backend=settings.parser_backend, fp16=settings.use_fp16()
        )
        return parser, Provenance.from_registry(registry, PARSER_CHECKPOINT, backend=parser.backend)

    return LazyModel("parser", load)


class AnnotatorServicer(annotator_pb2_grpc.AnnotatorServicer):
    """`sfhq.v1.Annotator`: typed errors raised here become the call's status."""

    def __init__(self, annotator: FaceAnnotator, blobs: BlobStore, settings: Settings) -> None:
        self.annotator = annotator
        self.blobs = blobs
        self.settings = settings

    def _images(self, images: list[common_pb2.Image]) -> list[PIL.Image.Image]:
        check_count(images, "images", MAX_IMAGES_PER_REQUEST)
        return [
            read_image(message, self.blobs, self.settings, f"image {i}") for i, message in enumerate(images)
        ]

    def Detect(
        self, request: annotator_pb2.DetectRequest, context: grpc.ServicerContext
    ) -> annotator_pb2.DetectResponse:
        detections = []
        for index, image in enumerate(self._images(list(request.images))):
            with naming(f"image {index}"):
                detections.append(messages.detection(self.annotator.detect(image)))
        return annotator_pb2.DetectResponse(detections=detections)

    def Align(
        self, request: annotator_pb2.AlignRequest, context: grpc.ServicerContext
    ) -> annotator_pb2.AlignResponse:
        output = OutputFormat.from_proto(request.output)
        size = check_range(request.output_size or DEFAULT_OUTPUT_SIZE, OUTPUT_SIZE_RANGE, "output_size")
        transform_size = request.transform_size or default_transform_size(size)
        faces = []
        for index, image in enumerate(self._images(list(request.images))):
            with naming(f"image {index}"):
                aligned = self.annotator.align(image, size, transform_size, not request.disable_padding)
            if output.size and output.size != size:  # the caller wants another size: follow it
                aligned = aligned.resized(output.size)
            faces.append(messages.aligned_face(aligned, output, self.blobs))
        return annotator_pb2.AlignResponse(faces=faces)

    def Annotate(
        self, request: annotator_pb2.AnnotateRequest, context: grpc.ServicerContext
    ) -> annotator_pb2.AnnotateResponse:
        working = check_range(
            request.working_size or DEFAULT_WORKING_SIZE, WORKING_SIZE_RANGE, "working_size"
        )
        results = self.annotator.annotate_batch(
            self._images(list(request.images)),
            detect_faces=request.detect_faces,
            working_size=working,
            with_overlay=request.include_overlay,
        )
        annotations = []
        for index, result in enumerate(results):
            if not isinstance(result, Annotation):
                with naming(f"image {index}"):
                    raise result
            annotations.append(messages.annotation(result))
        return annotator_pb2.AnnotateResponse(annotations=annotations)


def align_stage(annotator: FaceAnnotator, blobs: BlobStore, settings: Settings) -> StageHandler:
    """`align`: detect the largest face, FFHQ-align it, store it losslessly (QOI, not fsynced)."""

    def parse(task: Task) -> tuple[PIL.Image.Image, AlignPayload]:
        payload = AlignPayload.parse(task.payload, "align")
        return read_blob_image(payload.input, blobs, settings), payload

    def align(parsed: tuple[PIL.Image.Image, AlignPayload]) -> AlignedFace:
        image, payload = parsed
        return annotator.align(image, payload.output_size, payload.transform_size)

    def store(task: Task, _parsed: object, aligned: AlignedFace) -> AlignOutput:
        key = item_key(task.job_id, task.item_id, "align", f"aligned{INTERMEDIATE_SUFFIX}")
        blobs.put(key, encode_intermediate(aligned.image), durable=False)
        return AlignOutput(
            aligned=key,
            landmarks68=np.round(aligned.landmarks68, 3).tolist(),
            face_count=aligned.face_count,
            source_landmarks68=aligned.source_landmarks68.tolist(),
            transform=aligned.transform.tolist(),
            provenance=annotator.landmarker.provenance_record(),
        )

    return batched_handler(parse, one_by_one(align), store)


@dataclass
class _ToAnnotate:
    payload: AnnotatePayload
    image: PIL.Image.Image
    features: dict[str, np.ndarray]  # pickle key -> vector


def annotate_stage(
    annotator: FaceAnnotator, blobs: BlobStore, settings: Settings, store_pool: Executor | None = None
) -> StageHandler:
    """`annotate`: parsing + 110 landmarks, then the item's SFHQ files (JPEG and PNG encoding in
    the store threads, while the next batch is parsed)."""
    writer_for = functools.lru_cache(maxsize=64)(DatasetWriter)  # one per dataset, any thread

    def parse(task: Task) -> _ToAnnotate:
        payload = AnnotatePayload.parse(task.payload, "annotate")
        image = read_blob_image(payload.image, blobs, settings)
        if image.size != (payload.image_size, payload.image_size):
            image = image.resize((payload.image_size, payload.image_size), PIL.Image.Resampling.LANCZOS)
        features = {payload.feature_key: read_feature_vector(payload.features, blobs, "features")}
        for key, blob in payload.extra_features.items():  # SFHQ_EXTRA_FEATURES: more pickle keys
            features[key] = read_feature_vector(blob, blobs, f"extra_features[{key!r}]")
        return _ToAnnotate(payload, image, features)

    def run(items: list[_ToAnnotate]) -> list[Annotation | Exception]:
        first = items[0].payload  # a group shares these (group_by below)
        return list(
            annotator.annotate_batch(
                [item.image for item in items],
                detect_faces=first.detect_faces,
                working_size=first.working_size,
                canonical_fallback=first.canonical_fallback,
                landmark_convention=first.landmark_convention,
            )
        )

    def store(task: Task, item: _ToAnnotate, annotation: Annotation) -> AnnotateOutput:
        payload = item.payload
        writer = writer_for(payload.dataset_uri)
        files = writer.write_item(
            payload.stem,
            image_jpeg=encode_image(item.image, "jpeg", payload.jpeg_quality),
            segmentation_png=segmentation_to_png(annotation.label_map),
            landmarks=annotation.landmarks,
            features=item.features,
            latent=blobs.get_npy(payload.latent) if payload.latent else None,
        )
        provenance = {**annotator.parser.provenance_record(), **annotator.landmarker.provenance_record()}
        return AnnotateOutput(
            files=files,
            face_count=annotation.face_count,
            fallback_points=annotation.fallback_points,
            pose=annotation.pose_record(),
            provenance=provenance,
        )

    def group(_task: Task, item: _ToAnnotate) -> tuple[int, bool, bool, str]:
        return item.payload.batch_key()

    return batched_handler(parse, run, store, group_by=group, store_pool=store_pool)


def build_process(
    settings: Settings,
    *,
    landmarker: LazyModel[FaceLandmarker] | None = None,
    parser: LazyModel[FaceParser] | None = None,
    blobs: BlobStore | None = None,
) -> ServiceProcess:
    """The annotator process (gRPC servicer + `align`/`annotate` workers), not started."""
    blobs = blobs or BlobStore(settings.blob_url)
    landmarker = landmarker or landmarker_model(settings)
    parser = parser or parser_model(settings)
    landmarker.preload()
    parser.preload()
    annotator = FaceAnnotator(landmarker, parser, settings.align_backend)
    process = ServiceProcess("annotator", settings)
    servicer = AnnotatorServicer(annotator, blobs, settings)
    process.add_servicer(servicer, annotator_pb2_grpc.add_AnnotatorServicer_to_server, annotator_pb2)
    process.add_worker("align", align_stage(annotator, blobs, settings))
    process.add_worker("annotate", annotate_stage(annotator, blobs, settings, process.store_pool))
    return process


def main(settings: Settings | None = None) -> None:
    """Run the annotator service until SIGTERM/SIGINT."""
    run_service(build_process, settings)


if __name__ == "__main__":
    main()
