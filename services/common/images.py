"""Decoding untrusted image bytes into clean RGB images, and encoding results.

Every image that enters the system (a gRPC request, an inspiration file, a stage's blob) goes
through `decode_image`. It either returns a fully decoded 8-bit RGB `PIL.Image` with its EXIF
orientation applied, or raises `ImageError` saying what is wrong: empty, too many bytes, not an
image, truncated or corrupt, or more pixels than `max_pixels` (a decompression bomb). PIL's own
`DecompressionBombWarning` is turned into that error instead of being printed and ignored.

Images passed between stages (aligned faces, samples, candidates) are *intermediates*:
`encode_intermediate` writes them as QOI ("Quite OK Image", https://qoiformat.org/qoi-specification.pdf),
a lossless format ~40x faster to write than PNG at its default level (bench/codecs.py).
`decode_image` reads QOI as well as every format it read before, so blobs written as PNG by an
older version keep working. Dataset files stay JPEG / PNG, as SFHQ has them.
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
    "INTERMEDIATE_SUFFIX",
    "ImageError",
    "decode_image",
    "encode_image",
    "encode_intermediate",
    "is_intermediate",
    "load_image_file",
    "portable_image_bytes",
    "to_rgb",
]

log = logging.getLogger(__name__)

# Same defaults as the max_image_bytes / max_image_pixels settings.
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000

# What PIL raises on broken files: truncated data, bad chunks, bad headers, impossible sizes.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, zlib.error)

_WHITE = (255, 255, 255)

# QOI: 14-byte header (magic, u32 width, u32 height big-endian, channels 3/4, colour space), then
# the chunks, then an 8-byte end marker.
_QOI_MAGIC = b"qoif"
_QOI_HEADER = struct.Struct(">4sIIBB")
_QOI_END = b"\x00" * 7 + b"\x01"
INTERMEDIATE_SUFFIX = ".qoi"  # the file name suffix of intermediate image blobs


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
    if raw[:4] == _QOI_MAGIC:
        return _decode_qoi(raw, max_pixels)
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


def _decode_qoi(raw: bytes, max_pixels: int) -> Image.Image:
    """A QOI image, header checked before anything is decoded (the decoder itself is C code)."""
    import qoi

    if len(raw) < _QOI_HEADER.size + len(_QOI_END):
        raise ImageError("QOI image data is truncated (shorter than its header and end marker)")
    _, width, height, channels, colorspace = _QOI_HEADER.unpack_from(raw)
    if channels not in (3, 4) or colorspace not in (0, 1):
        raise ImageError(f"QOI header is corrupt (channels {channels}, colour space {colorspace})")
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
        )
    # A QOI pixel costs at least one byte unless it repeats the previous one (runs of up to 62
    # pixels per byte), so far fewer bytes than that cannot be a complete image.
    if len(raw) < _QOI_HEADER.size + len(_QOI_END) + (width * height) // 62 or not raw.endswith(_QOI_END):
        raise ImageError(f"QOI image data is truncated ({len(raw)} bytes for {width}x{height})")
    try:
        pixels = qoi.decode(raw)
    except (ValueError, RuntimeError, MemoryError) as exc:
        raise ImageError(f"image data is truncated or corrupt (QOI): {exc}") from None
    if pixels is None or pixels.shape[:2] != (height, width):
        raise ImageError("image data is truncated or corrupt (QOI)")
    if pixels.shape[2] == 4:
        return to_rgb(Image.fromarray(pixels, "RGBA"))
    return Image.fromarray(pixels, "RGB")


def is_intermediate(data: bytes | bytearray | memoryview) -> bool:
    """Whether `data` is in the intermediate format (QOI) rather than a portable one."""
    return bytes(data[:4]) == _QOI_MAGIC


def encode_intermediate(image: Image.Image | np.ndarray) -> bytes:
    """An RGB image (PIL, or an `[H, W, 3]` uint8 array) as lossless QOI bytes, for blobs between stages."""
    import qoi

    if isinstance(image, Image.Image):
        image = np.asarray(image if image.mode == "RGB" else to_rgb(image))
    pixels = np.ascontiguousarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"intermediate images are [H, W, 3] uint8, got {pixels.dtype} {pixels.shape}")
    return bytes(qoi.encode(pixels))


def portable_image_bytes(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """Bytes any image reader opens: an intermediate (QOI) blob becomes PNG, anything else is unchanged.

    For answers to clients (the gateway's GetItem), which should not need a QOI decoder.
    """
    if not is_intermediate(data):
        return data
    image = decode_image(data, max_bytes=max(len(data), 1), max_pixels=max_pixels)
    return encode_image(image, "png", compress_level=1)


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


def encode_image(
    image: Image.Image, fmt: str = "png", quality: int = 95, *, compress_level: int = 6
) -> bytes:
    """Encode to PNG (lossless; any of L, RGB, RGBA, P; zlib `compress_level` 0..9, 6 being
    PIL's default) or JPEG (RGB or L, `quality` 1..100)."""
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
        image.save(buffer, format="PNG", compress_level=int(compress_level))
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
