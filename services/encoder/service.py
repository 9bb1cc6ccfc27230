"""Encoder service: e4e behind gRPC (`sfhq.v1.Encoder`) and the `encode` stage. Wiring only.

* `Encode`: aligned faces (inline bytes or blob keys) -> one [n_latent, 512] W+ code each.
* `EncodeUnaligned`: the annotator FFHQ-aligns each image at 256 px (e4e's own setting), then the
  crops are encoded. FAILED_PRECONDITION when this deployment has no annotator address.
* `encode` stage: `EncodePayload` -> `EncodeOutput` (a float32 [n_latent, 512] .npy blob); the tasks
  of a worker batch are one model batch, across jobs.
"""

from __future__ import annotations

import dataclasses
import threading

import grpc
import numpy as np
from PIL import Image

from services.common.blobs import BlobStore, item_key
from services.common.config import Settings
from services.common.contracts import EncodeOutput, EncodePayload
from services.common.errors import FailedPrecondition, PermanentError, naming
from services.common.model_holder import LazyModel, Provenance
from services.common.queue import Task
from services.common.rpc import check_count, read_blob_image, read_image
from services.common.server import ServiceProcess, client_channel, run_service
from services.common.stage_handler import StageHandler, batched_handler
from services.common.weights import WeightsRegistry
from services.encoder.model import CHECKPOINT_NAME, Encoder, check_face_sized, load_encoder
from sfhq.tensors import numpy_to_tensor
from sfhq.v1 import annotator_pb2, annotator_pb2_grpc, common_pb2, encoder_pb2, encoder_pb2_grpc

STAGE = "encode"
# e4e was trained on 256-px FFHQ-aligned crops; asking the annotator for that size avoids a resize.
ALIGN_OUTPUT_SIZE = 256
MAX_IMAGES_PER_REQUEST = 256
DEFAULT_ALIGN_TIMEOUT_S = 120.0  # alignment of a batch must not hang an EncodeUnaligned call forever

EncoderModel = LazyModel[Encoder]


def encoder_model(settings: Settings, registry: WeightsRegistry | None = None) -> EncoderModel:
    """The process's e4e model, from the weights registry (a missing file names `sfhq weights`)."""
    registry = registry or WeightsRegistry(settings.weights_dir)

    def load() -> tuple[Encoder, Provenance]:
        encoder = load_encoder(
            registry.path(CHECKPOINT_NAME), settings.resolved_device(), fp16=settings.use_fp16()
        )
        provenance = Provenance.from_registry(registry, CHECKPOINT_NAME, device=str(encoder.device))
        if encoder.is_random and not provenance.random_weights:
            provenance = dataclasses.replace(provenance, random_weights=True)
        return encoder, provenance

    return LazyModel("encoder", load)


def encode(
    model: EncoderModel, images: list[Image.Image], batch_size: int, add_latent_avg: bool = True
) -> np.ndarray:
    codes = model.run(
        lambda encoder: encoder.encode_images(images, add_latent_avg=add_latent_avg, batch_size=batch_size)
    )
    return np.asarray(codes, dtype=np.float32)


class EncoderServicer(encoder_pb2_grpc.EncoderServicer):
    """`sfhq.v1.Encoder`: typed errors raised here become the call's status (services.common.server)."""

    def __init__(
        self,
        model: EncoderModel,
        blobs: BlobStore,
        settings: Settings,
        align_timeout_s: float = DEFAULT_ALIGN_TIMEOUT_S,
    ) -> None:
        self.model = model
        self.blobs = blobs
        self.settings = settings
        self.annotator_addr = settings.addr_for("annotator")  # "" = alignment is off in this deployment
        self.align_timeout_s = align_timeout_s
        self._channel: grpc.Channel | None = None
        self._channel_lock = threading.Lock()

    def Encode(
        self, request: encoder_pb2.EncodeRequest, context: grpc.ServicerContext
    ) -> encoder_pb2.EncodeResponse:
        check_count(request.images, "images", MAX_IMAGES_PER_REQUEST)
        images = [self._face(image, f"image {i}") for i, image in enumerate(request.images)]
        return encoder_pb2.EncodeResponse(latents=self._latents(images, request.skip_latent_avg))

    def EncodeUnaligned(
        self, request: encoder_pb2.EncodeRequest, context: grpc.ServicerContext
    ) -> encoder_pb2.EncodeResponse:
        if not self.annotator_addr:
            raise FailedPrecondition(
                "alignment is disabled in this deployment (no annotator address): "
                "send FFHQ-aligned faces to Encode instead"
            )
        check_count(request.images, "images", MAX_IMAGES_PER_REQUEST)
        faces = self._align(request, context)
        images = [self._face(face.image, f"aligned image {i}") for i, face in enumerate(faces)]
        latents = self._latents(images, request.skip_latent_avg)
        return encoder_pb2.EncodeResponse(latents=latents, aligned=[face.image for face in faces])

    def _face(self, message: common_pb2.Image, what: str) -> Image.Image:
        image = read_image(message, self.blobs, self.settings, what)
        with naming(what):
            check_face_sized(*image.size)
        return image

    def _latents(self, images: list[Image.Image], skip_latent_avg: bool) -> list[common_pb2.Tensor]:
        codes = encode(self.model, images, self.settings.batch_size, add_latent_avg=not skip_latent_avg)
        return [numpy_to_tensor(code) for code in codes]

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
        with self._channel_lock:
            if self._channel is None:
                self._channel = client_channel(self.annotator_addr, self.settings)
            stub = annotator_pb2_grpc.AnnotatorStub(self._channel)
        try:
            response = stub.Align(align_request, timeout=timeout)
        except grpc.RpcError as error:
            code, details = error.code(), error.details()  # type: ignore[attr-defined]
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                message = (
                    f"annotator at {self.annotator_addr} did not answer the alignment request: {details}"
                )
                raise PermanentError(message, code=code.name) from error
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


def encode_stage(model: EncoderModel, blobs: BlobStore, settings: Settings) -> StageHandler:
    """The `encode` stage: every readable face of a worker batch in one model batch."""

    def parse(task: Task) -> Image.Image:
        image = read_blob_image(EncodePayload.parse(task.payload, STAGE).image, blobs, settings)
        check_face_sized(*image.size)  # fails this task now, not the whole model batch
        return image

    def store(task: Task, _image: Image.Image, code: np.ndarray) -> EncodeOutput:
        key = item_key(task.job_id, task.item_id, STAGE, "latent.npy")
        blobs.put_npy(key, code, durable=False)
        return EncodeOutput(latent=key, provenance=model.provenance_record())

    return batched_handler(parse, lambda images: list(encode(model, images, settings.batch_size)), store)


def build_process(
    settings: Settings, *, model: EncoderModel | None = None, blobs: BlobStore | None = None
) -> ServiceProcess:
    """The encoder process (gRPC servicer + `encode` worker), not started. `model` overrides e4e."""
    blobs = blobs or BlobStore(settings.blob_url)
    if model is None:
        model = encoder_model(settings)
        model.preload()
    process = ServiceProcess("encoder", settings)
    servicer = EncoderServicer(model, blobs, settings)
    process.add_servicer(servicer, encoder_pb2_grpc.add_EncoderServicer_to_server, encoder_pb2)
    process.add_worker(STAGE, encode_stage(model, blobs, settings))
    process.on_stop(servicer.close)
    return process


def main(settings: Settings | None = None) -> None:
    """Run the encoder service until SIGTERM/SIGINT."""
    run_service(build_process, settings)


if __name__ == "__main__":
    main()
