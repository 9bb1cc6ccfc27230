"""Encoder service: the e4e model behind gRPC (`sfhq.v1.Encoder`) and the `encode` queue stage.

* `Encode`: aligned face images (inline bytes or blob URIs) -> one [n_latent, 512] W+ code each.
* `EncodeUnaligned`: asks the annotator to detect and FFHQ-align each image at 256 px (e4e's
  setting), then encodes the crops. FAILED_PRECONDITION when alignment is disabled here
  (`SFHQ_ANNOTATOR_ADDR` set to an empty string).
* `encode` stage: payload `image` (blob key of an aligned image) -> output `latent` (blob key of a
  float32 [n_latent, 512] .npy at `jobs/<job>/items/<item>/encode/latent.npy`). A batch of tasks is
  encoded as one model batch (dynamic batching across jobs); a bad image fails only its own task.

Errors: unreadable or non-face-sized images -> INVALID_ARGUMENT; a missing checkpoint ->
FAILED_PRECONDITION naming `sfhq weights`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from services.common.blobs import BlobStore, item_key
from services.common.config import ConfigError, Settings, get_settings
from services.common.errors import PermanentError, as_permanent, error_status
from services.common.images import decode_image
from services.common.queue import Task, TaskResult
from services.common.server import ServiceProcess, client_channel
from services.common.weights import WeightsRegistry
from services.encoder.model import (
    CHECKPOINT_NAME,
    CheckpointError,
    CheckpointMissing,
    Encoder,
    EncoderInputError,
    check_face_sized,
    load_encoder,
)
from sfhq.tensors import numpy_to_tensor
from sfhq.v1 import annotator_pb2, annotator_pb2_grpc, common_pb2, encoder_pb2, encoder_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = encoder_pb2.DESCRIPTOR.services_by_name["Encoder"].full_name
STAGE = "encode"
LATENT_BLOB_NAME = "latent.npy"
# e4e was trained on 256-px FFHQ-aligned crops; asking the annotator for that size avoids a resize.
ALIGN_OUTPUT_SIZE = 256
# One request is one model batch sequence; refuse absurd requests before decoding anything.
MAX_IMAGES_PER_REQUEST = 256
# Alignment (detection + landmarks) of a batch must not hang an Encode call forever.
DEFAULT_ALIGN_TIMEOUT_S = 120.0


def status_of(error: BaseException) -> tuple[str, str] | None:
    """(gRPC status name, message) for errors that retrying cannot fix; None for unexpected ones."""
    if isinstance(error, CheckpointMissing | CheckpointError | ConfigError):
        return "FAILED_PRECONDITION", str(error)
    if isinstance(error, EncoderInputError):
        return "INVALID_ARGUMENT", str(error)
    return error_status(error)


class EncoderLoader:
    """The process's e4e model, loaded once from the weights registry on first use.

    A missing checkpoint is not fatal for the process: each call then fails with
    FAILED_PRECONDITION naming `sfhq weights`, and the next call tries again (so
    `sfhq weights download` works without a restart).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: WeightsRegistry | None = None,
        path: Path | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or WeightsRegistry(settings.weights_dir)
        self.path = path
        self._encoder: Encoder | None = None
        self._lock = threading.Lock()
        self.provenance: dict = {}

    def get(self) -> Encoder:
        with self._lock:
            if self._encoder is None:
                path = self.path or self.registry.path(CHECKPOINT_NAME)  # WeightsMissing names `sfhq weights`
                encoder = load_encoder(path, self.settings.resolved_device(), fp16=self.settings.use_fp16())
                if self.path is None:  # recorded with every latent (dataset provenance)
                    self.provenance = self.registry.provenance(CHECKPOINT_NAME)
                if encoder.is_random or self.registry.is_random():
                    log.warning(
                        "encoder: RANDOM e4e weights from %s: W+ codes are meaningless (demo only)", path
                    )
                log.info(
                    "encoder: loaded %s (%d styles, %d-px input) on %s",
                    path, encoder.n_latent, encoder.input_size, encoder.device,
                )  # fmt: skip
                self._encoder = encoder
            return self._encoder

    def preload(self) -> bool:
        """Load now if possible (startup); log and return False if the checkpoint is not usable."""
        try:
            self.get()
            return True
        except Exception as error:
            log.error("encoder: model not loaded, calls will fail until it is: %s", error)
            return False


EncoderSource = Callable[[], Encoder]


class EncoderRunner:
    """Serialises model calls: gRPC threads and the queue worker share one model (and its cores/GPU)."""

    def __init__(self, source: EncoderSource | Encoder, batch_size: int) -> None:
        self.source: EncoderSource = (lambda: source) if isinstance(source, Encoder) else source
        self.batch_size = batch_size
        self._lock = threading.Lock()

    @classmethod
    def of(cls, model: EncoderRunner | Encoder | EncoderSource, batch_size: int) -> EncoderRunner:
        return model if isinstance(model, EncoderRunner) else cls(model, batch_size)

    def encode(self, images: Sequence[Image.Image], add_latent_avg: bool = True) -> np.ndarray:
        encoder = self.source()
        with self._lock:
            codes = encoder.encode_images(
                list(images), add_latent_avg=add_latent_avg, batch_size=self.batch_size
            )
        return np.asarray(codes, dtype=np.float32)


def read_image(image: common_pb2.Image, blobs: BlobStore, settings: Settings, what: str) -> Image.Image:
    """An Image message (inline bytes or blob URI/key) -> decoded RGB PIL image."""
    source = image.WhichOneof("source")
    if source == "data":
        data = image.data
    elif source == "uri":
        data = blobs.get(image.uri)
    else:
        raise EncoderInputError(f"{what}: neither data nor uri is set")
    try:
        return decode_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    except ValueError as error:
        raise EncoderInputError(f"{what}: {error}") from None


def typed_errors() -> AbstractContextManager[None]:
    """Our typed errors become PermanentError, which the shared interceptor turns into a status."""
    return as_permanent(status_of)

class EncoderServicer(encoder_pb2_grpc.EncoderServicer):
    """`sfhq.v1.Encoder`. Errors are raised as PermanentError; the shared interceptor sets the status."""

    def __init__(
        self,
        model: EncoderRunner | Encoder | EncoderSource,
        blobs: BlobStore,
        settings: Settings,
        *,
        annotator_addr: str | None = None,
        align_timeout_s: float = DEFAULT_ALIGN_TIMEOUT_S,
    ) -> None:
        self.runner = EncoderRunner.of(model, settings.batch_size)
        self.blobs = blobs
        self.settings = settings
        # Empty: alignment is disabled in this deployment.
        self.annotator_addr = settings.addr_for("annotator") if annotator_addr is None else annotator_addr
        self.align_timeout_s = align_timeout_s
        self._channel: grpc.Channel | None = None
        self._channel_lock = threading.Lock()

    # ---- RPCs ------------------------------------------------------------------------------

    def Encode(
        self, request: encoder_pb2.EncodeRequest, context: grpc.ServicerContext
    ) -> encoder_pb2.EncodeResponse:
        with typed_errors():
            self._check_count(request)
            images = [
                read_image(img, self.blobs, self.settings, f"image {i}")
                for i, img in enumerate(request.images)
            ]
            return encoder_pb2.EncodeResponse(latents=self._encode(images, request.skip_latent_avg))

    def EncodeUnaligned(
        self, request: encoder_pb2.EncodeRequest, context: grpc.ServicerContext
    ) -> encoder_pb2.EncodeResponse:
        if not self.annotator_addr:
            raise PermanentError(
                "alignment is disabled in this deployment (no annotator address): "
                "send FFHQ-aligned faces to Encode instead",
                code="FAILED_PRECONDITION",
            )
        with typed_errors():
            self._check_count(request)
            faces = self._align(request, context)
            images = [
                read_image(face.image, self.blobs, self.settings, f"aligned image {i}")
                for i, face in enumerate(faces)
            ]
            latents = self._encode(images, request.skip_latent_avg)
            return encoder_pb2.EncodeResponse(latents=latents, aligned=[face.image for face in faces])

    # ---- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _check_count(request: encoder_pb2.EncodeRequest) -> None:
        if not request.images:
            raise EncoderInputError("the request has no images")
        if len(request.images) > MAX_IMAGES_PER_REQUEST:
            raise EncoderInputError(
                f"the request has {len(request.images)} images; at most {MAX_IMAGES_PER_REQUEST} per call"
            )

    def _encode(self, images: list[Image.Image], skip_latent_avg: bool) -> list[common_pb2.Tensor]:
        codes = self.runner.encode(images, add_latent_avg=not skip_latent_avg)
        return [numpy_to_tensor(code) for code in codes]

    def _annotator(self) -> annotator_pb2_grpc.AnnotatorStub:
        with self._channel_lock:
            if self._channel is None:
                self._channel = client_channel(self.annotator_addr, self.settings)
            return annotator_pb2_grpc.AnnotatorStub(self._channel)

    def _align(
        self, request: encoder_pb2.EncodeRequest, context: grpc.ServicerContext
    ) -> list[annotator_pb2.AlignedFace]:
        remaining = context.time_remaining() if context is not None else None
        timeout = min(self.align_timeout_s, remaining) if remaining is not None else self.align_timeout_s
        align_request = annotator_pb2.AlignRequest(
            images=request.images,
            output_size=ALIGN_OUTPUT_SIZE,
            output=common_pb2.OutputOptions(format=common_pb2.IMAGE_FORMAT_PNG),
        )
        try:
            response = self._annotator().Align(align_request, timeout=timeout)
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
            details = error.details() if hasattr(error, "details") else str(error)
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise PermanentError(
                    f"annotator at {self.annotator_addr} did not answer the alignment request: {details}",
                    code=code.name,
                ) from error
            # The annotator's verdict on the images (no face found, unreadable image...) stands as is.
            raise PermanentError(f"alignment failed: {details}", code=code.name) from error
        if len(response.faces) != len(request.images):
            raise PermanentError(
                f"annotator returned {len(response.faces)} aligned faces for {len(request.images)} images",
                code="INTERNAL",
            )
        return list(response.faces)

    def close(self) -> None:
        with self._channel_lock:
            if self._channel is not None:
                self._channel.close()
                self._channel = None


# ---- queue stage -------------------------------------------------------------------------------


def encode_handler(
    model: EncoderRunner | Encoder | EncoderSource, blobs: BlobStore, settings: Settings,
    provenance: Callable[[], dict] | None = None,
) -> Callable[[list[Task]], list[TaskResult]]:
    """The `encode` stage handler: one model batch for all readable images of the task batch.

    `model` is an Encoder, a function returning one (loaded on first use), or a shared EncoderRunner.
    """
    runner = EncoderRunner.of(model, settings.batch_size)

    def handle(tasks: list[Task]) -> list[TaskResult]:
        results: list[TaskResult | None] = [None] * len(tasks)
        images: list[Image.Image] = []
        positions: list[int] = []
        for index, task in enumerate(tasks):
            try:
                key = task.payload.get("image")
                if not isinstance(key, str) or not key:
                    raise EncoderInputError("payload needs 'image': the blob key of an aligned face")
                image = decode_image(
                    blobs.get(key), max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
                )
                check_face_sized(*image.size)  # fail this task now, not the whole model batch
            except Exception as error:
                status = status_of(error)
                if status is None:
                    raise  # transient (storage hiccup...): let the worker retry
                results[index] = TaskResult.failure(task, *status)
                continue
            images.append(image)
            positions.append(index)

        if images:
            try:
                codes = runner.encode(images)
            except Exception as error:
                status = status_of(error)
                if status is None:
                    raise  # the worker retries the batch one task at a time
                # e.g. the checkpoint is missing: every task of the batch fails the same way.
                for index in positions:
                    results[index] = TaskResult.failure(tasks[index], *status)
            else:
                for index, code in zip(positions, codes, strict=True):
                    task = tasks[index]
                    key = item_key(task.job_id, task.item_id, STAGE, LATENT_BLOB_NAME)
                    blobs.put_npy(key, code.astype(np.float32))
                    output = {"latent": key}
                    if provenance is not None:
                        output["provenance"] = {"encoder": provenance()}
                    results[index] = TaskResult.success(task, output)
        return [result for result in results if result is not None]

    return handle


# ---- process -----------------------------------------------------------------------------------


def build_process(
    settings: Settings,
    *,
    source: EncoderSource | None = None,
    blobs: BlobStore | None = None,
) -> tuple[ServiceProcess, EncoderServicer]:
    """The encoder process (gRPC servicer + `encode` worker), not started. `source` overrides the model."""
    blobs = blobs or BlobStore(settings.blob_url)
    provenance = None
    if source is None:
        loader = EncoderLoader(settings)
        loader.preload()
        source = loader.get
        provenance = lambda: loader.provenance  # noqa: E731 - filled in once the model is loaded
    runner = EncoderRunner(source, settings.batch_size)
    process = ServiceProcess("encoder", settings)
    servicer = EncoderServicer(runner, blobs, settings)
    encoder_pb2_grpc.add_EncoderServicer_to_server(servicer, process.server)
    process.add_service_name(SERVICE_NAME)
    if STAGE in settings.stages_for("encoder"):
        process.add_worker(STAGE, encode_handler(runner, blobs, settings, provenance))
    process.on_stop(servicer.close)
    return process, servicer


def main(settings: Settings | None = None) -> None:
    """Run the encoder service until SIGTERM/SIGINT."""
    settings = settings or get_settings()
    settings.configure_logging()
    process, _ = build_process(settings)
    process.serve_forever()


if __name__ == "__main__":
    main()
