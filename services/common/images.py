"""Decoding untrusted image bytes into clean RGB images, and encoding results.

Every image that enters the system (a gRPC request, an inspiration file) goes through
`decode_image`. It either returns a fully decoded 8-bit RGB `PIL.Image` with its EXIF
orientation applied, or raises `ImageError` saying what is wrong: empty, too many bytes, not an
image, truncated or corrupt, or more pixels than `max_pixels` (a decompression bomb). PIL's own
`DecompressionBombWarning` is turned into that error instead of being printed and ignored.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from services.common.errors import InvalidInput

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "ImageError",
    "decode_image",
    "encode_image",
    "load_image_file",
    "to_rgb",
]

log = logging.getLogger(__name__)

# Same defaults as the max_image_bytes / max_image_pixels settings.
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000

# What PIL raises on broken files: truncated data, bad chunks, bad headers, impossible sizes.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, zlib.error)

_WHITE = (255, 255, 255)


class ImageError(InvalidInput):
    """The bytes are not an acceptable image; the message names the problem."""


def decode_image(
    data: bytes | bytearray | memoryview,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode encoded image bytes (JPEG, PNG, WebP, GIF, ...) into an 8-bit RGB image.

    EXIF orientation is applied; grey, palette, CMYK, 16-bit and 1-bit images become RGB; alpha
    is composited on white; an animation yields its first frame.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageError(f"image data must be bytes, got {type(data).__name__}")
    size = len(data)
    if size == 0:
        raise ImageError("image data is empty")
    if size > max_bytes:
        raise ImageError(f"image is {size} bytes; the limit is {max_bytes} bytes")
    raw = bytes(data)
    with warnings.catch_warnings():
        # PIL only warns above its global MAX_IMAGE_PIXELS; a warning is not a refusal, so make it one.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        _verify(raw, max_pixels)
        image = _open_checked(raw, max_pixels)
        try:
            image.load()
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ImageError(f"image refused as a decompression bomb: {exc}") from None
        except _DECODE_ERRORS as exc:
            raise ImageError(f"image data is truncated or corrupt ({image.format}): {exc}") from None
    image = _apply_orientation(image)
    return to_rgb(image)


def _open_checked(raw: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and check the pixel count before anything is decoded."""
    try:
        image = Image.open(io.BytesIO(raw))
    except UnidentifiedImageError:
        raise ImageError(
            "data is not an image in a format we can read (JPEG, PNG, WebP, GIF, BMP, TIFF...)"
        ) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"image refused as a decompression bomb: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(f"image header is truncated or corrupt: {exc}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
        )
    return image


def _verify(raw: bytes, max_pixels: int) -> None:
    """PIL's structural check (PNG chunk CRCs and the like), on a throw-away image object."""
    image = _open_checked(raw, max_pixels)
    try:
        image.verify()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"image refused as a decompression bomb: {exc}") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(f"image data is truncated or corrupt ({image.format}): {exc}") from None


def _apply_orientation(image: Image.Image) -> Image.Image:
    try:
        rotated = ImageOps.exif_transpose(image)
    except Exception as exc:  # a broken EXIF block should not cost the picture itself
        log.debug("ignoring unreadable EXIF orientation: %s", exc)
        return image
    return rotated if rotated is not None else image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited on white; 16-bit data is scaled down."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image), mode), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBX


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit and 32-bit grey values -> 0..255."""
    values = values.astype(np.float64)
    if mode == "F":
        top = 1.0 if values.size and values.max() <= 1.0 else 255.0  # float images are 0..1 or 0..255
    elif mode == "I" and values.size and values.max() <= 255:
        top = 255.0  # an 8-bit image that PIL widened
    else:
        top = 65535.0
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)


def encode_image(image: Image.Image, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode to PNG (lossless; any of L, RGB, RGBA, P) or JPEG (RGB or L, `quality` 1..100)."""
    fmt = fmt.lower()
    if fmt in ("jpg", "jpeg"):
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        if image.mode not in ("RGB", "L"):
            image = to_rgb(image)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(quality))
        return buffer.getvalue()
    if fmt == "png":
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
            image = to_rgb(image)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise ValueError(f"unsupported image format {fmt!r}; use 'png' or 'jpeg'")


def load_image_file(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Read and decode an image file with the same checks as `decode_image`."""
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > max_bytes:
            raise ImageError(f"{file}: image is {size} bytes; the limit is {max_bytes} bytes")
        data = file.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read image file {file}: {exc.strerror or exc}") from None
    try:
        return decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    except ImageError as exc:
        raise ImageError(f"{file}: {exc}") from None
