"""Protobuf <-> Python for every servicer: images in, arrays in, images out, request-size checks.

One place decides what an `Image` message means (inline bytes or a blob key/URI), how a `Tensor`
is checked, and how `OutputOptions` are honoured, so every service answers the same request the
same way. Bad values raise `InvalidInput` naming the field.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sized
from dataclasses import dataclass

import numpy as np
from PIL import Image

from services.common.blobs import BlobStore
from services.common.config import Settings
from services.common.errors import InvalidInput
from services.common.images import decode_image, encode_image
from sfhq.tensors import tensor_to_numpy
from sfhq.v1 import common_pb2

DEFAULT_JPEG_QUALITY = 95
OUTPUT_SIZE_RANGE = (16, 4096)  # output.size: 0 (native) or within this range


def image_bytes(message: common_pb2.Image, blobs: BlobStore, what: str) -> bytes:
    """The encoded bytes an Image message stands for (inline, or read from the blob store)."""
    source = message.WhichOneof("source")
    if source == "data":
        return message.data
    if source == "uri":
        return blobs.get(message.uri)
    raise InvalidInput(f"{what}: neither data nor uri is set")


def read_image(message: common_pb2.Image, blobs: BlobStore, settings: Settings, what: str) -> Image.Image:
    """An Image message -> a decoded RGB image, within the size limits of the settings."""
    data = image_bytes(message, blobs, what)
    try:
        return decode_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    except InvalidInput as error:
        raise InvalidInput(f"{what}: {error.message}") from None


def read_feature_vector(key: str, blobs: BlobStore, what: str) -> np.ndarray:
    """A stage payload's feature blob -> a finite float32 [dim] vector (InvalidInput naming `what`)."""
    vector = np.asarray(blobs.get_npy(key))
    if vector.ndim != 1 or not np.issubdtype(vector.dtype, np.number) or not np.isfinite(vector).all():
        raise InvalidInput(f"{what} must be a finite 1-D vector, got shape {vector.shape}")
    return vector.astype(np.float32)


def read_blob_image(key: str, blobs: BlobStore, settings: Settings) -> Image.Image:
    """A stage payload's image blob -> a decoded RGB image."""
    return decode_image(
        blobs.get(key), max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
    )


def read_array(message: common_pb2.Tensor, what: str) -> np.ndarray:
    """A Tensor message -> a finite float32 array (InvalidInput naming the problem)."""
    try:
        return tensor_to_numpy(message, name=what)
    except ValueError as error:
        raise InvalidInput(str(error)) from None


def read_vector(message: common_pb2.Tensor, what: str) -> np.ndarray:
    """A Tensor holding one vector ([D] or [1, D]) -> float32 [D]."""
    array = read_array(message, what)
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise InvalidInput(f"{what}: expected one vector [D], got shape {list(array.shape)}")
    return array


def check_count(items: Sized, what: str, most: int, *, least: int = 1) -> int:
    """Refuse a repeated field with too few or too many entries before any work is done."""
    count = len(items)
    if count == 0 and least > 0:
        raise InvalidInput(f"{what}: the request has none; give {least}..{most}")
    if not least <= count <= most:
        raise InvalidInput(
            f"{what}: {count} given; at most {most} per call"
            if count > most
            else f"{what}: {count} given; at least {least}"
        )
    return count


@dataclass(frozen=True)
class OutputFormat:
    """How a call returns images, from `common.OutputOptions`: PNG or JPEG, inline or as blob keys,
    at the native size or resized to `size`."""

    fmt: str = "png"
    quality: int = DEFAULT_JPEG_QUALITY
    to_blob_store: bool = False
    size: int = 0  # 0 = native

    @classmethod
    def from_proto(cls, options: common_pb2.OutputOptions) -> OutputFormat:
        fmt = "jpeg" if options.format == common_pb2.IMAGE_FORMAT_JPEG else "png"
        quality = options.jpeg_quality or DEFAULT_JPEG_QUALITY
        if not 1 <= quality <= 100:
            raise InvalidInput(f"output.jpeg_quality must be in 1..100, got {options.jpeg_quality}")
        low, high = OUTPUT_SIZE_RANGE
        if options.size and not low <= options.size <= high:
            raise InvalidInput(f"output.size must be 0 (native) or in {low}..{high}, got {options.size}")
        return cls(fmt, quality, options.to_blob_store, options.size)

    def check_budget(self, count: int, native_size: int, max_pixels: int) -> None:
        """Refuse a call whose `count` square images would together pass `max_pixels`."""
        side = self.size or native_size
        total = count * side * side
        if total > max_pixels:
            raise InvalidInput(
                f"{count} images of {side}x{side} px are {total / 1e6:.0f} MP in one call; "
                f"at most {max_pixels / 1e6:.0f} MP: ask for fewer or smaller images"
            )

    def encode(self, image: Image.Image) -> bytes:
        if self.size and image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.LANCZOS)
        return encode_image(image, self.fmt, self.quality)

    def message(self, image: Image.Image, blobs: BlobStore, service: str) -> common_pb2.Image:
        """The Image message for a result: inline bytes, or a content-addressed blob key (so a
        retried call writes the same key)."""
        data = self.encode(image)
        if not self.to_blob_store:
            return common_pb2.Image(data=data)
        suffix = "jpg" if self.fmt == "jpeg" else "png"
        key = f"rpc/{service}/{hashlib.sha256(data).hexdigest()[:32]}.{suffix}"
        return common_pb2.Image(uri=blobs.put(key, data))
