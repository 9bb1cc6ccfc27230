"""decode_image against a corpus of good-but-odd and bad inputs, all generated here."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from services.common.images import ImageError, decode_image, encode_image, load_image_file

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header that claims width x height, with almost no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def png_rgb16(pixels: np.ndarray) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG, written by hand: PIL cannot write one."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def halves(left: tuple[int, int, int], right: tuple[int, int, int], size=(40, 20)) -> Image.Image:
    image = Image.new("RGB", size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def close_to(actual, expected, tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


# ---- inputs that must be refused ----------------------------------------------------------------

JPEG = encode(halves(RED, BLUE, (64, 48)), "JPEG", quality=90)
PNG = encode(halves(RED, BLUE, (64, 48)), "PNG")
# Noise compresses badly, so cutting the file in half cuts the pixel data, not the header.
NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
NOISE_JPEG, NOISE_PNG = encode(NOISE, "JPEG", quality=90), encode(NOISE, "PNG")


def corrupt_png_crc() -> bytes:
    data = bytearray(PNG)
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # change a compressed byte: the chunk's CRC no longer matches
    return bytes(data)


BAD_INPUTS = {
    "empty": (b"", "empty"),
    "random bytes": (os.urandom(4096), "not an image"),
    "text": (b"<html>not an image</html>", "not an image"),
    "truncated JPEG": (NOISE_JPEG[: len(NOISE_JPEG) // 2], r"truncated or corrupt \(JPEG\)"),
    "truncated PNG": (NOISE_PNG[: len(NOISE_PNG) // 2], r"truncated or corrupt \(PNG\)"),
    "JPEG cut inside its header": (JPEG[:200], "truncated or corrupt"),
    "PNG with a bad CRC": (corrupt_png_crc(), "truncated or corrupt"),
    "header claims 100000x100000": (png_header_only(100_000, 100_000), "decompression bomb"),
    "header claims 10000x10000": (png_header_only(10_000, 10_000), "decompression bomb"),
    "header claims 8000x8000": (png_header_only(8000, 8000), "64000000 pixels; the limit is 50000000"),
    "zero width": (png_header_only(0, 10), "not an image"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_inputs_raise_a_clear_image_error(name, recwarn):
    data, message = BAD_INPUTS[name]
    with pytest.raises(ImageError, match=message):
        decode_image(data)
    # PIL's DecompressionBombWarning never slips out as a mere warning.
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_size_limits_are_parameters():
    with pytest.raises(ImageError, match="the limit is 100 bytes"):
        decode_image(PNG, max_bytes=100)
    with pytest.raises(ImageError, match="64x48 = 3072 pixels; the limit is 1000"):
        decode_image(PNG, max_pixels=1000)
    # A raised pixel limit does not silence PIL's own bomb warning for a 100-megapixel header.
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_image(png_header_only(10_000, 10_000), max_pixels=150_000_000)


def test_non_bytes_input_is_an_image_error():
    with pytest.raises(ImageError, match="must be bytes"):
        decode_image("a path, not bytes")  # type: ignore[arg-type]


# ---- odd but valid inputs become plain RGB ------------------------------------------------------


def test_plain_jpeg_and_png():
    for data in (JPEG, PNG):
        image = decode_image(data)
        assert (image.mode, image.size) == ("RGB", (64, 48))
        assert close_to(image.getpixel((5, 5)), RED) and close_to(image.getpixel((60, 40)), BLUE)


def test_exif_orientation_is_applied():
    stored = halves(RED, BLUE)  # 40x20 as stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image = decode_image(encode(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert image.size == (20, 40)
    assert close_to(image.getpixel((10, 5)), RED) and close_to(image.getpixel((10, 35)), BLUE)


def test_16_bit_grey_png_is_scaled_to_8_bits():
    values = np.array([[0, 32768, 65535, 4096]], dtype=np.uint16)
    source = Image.fromarray(values)
    assert source.mode.startswith("I;16")
    image = decode_image(encode(source, "PNG"))
    assert image.mode == "RGB"
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 16]


def test_16_bit_rgb_png():
    pixels = np.zeros((2, 2, 3), dtype=np.uint16)
    pixels[0, 0] = (65535, 0, 32768)
    image = decode_image(png_rgb16(pixels))
    assert image.mode == "RGB" and close_to(image.getpixel((0, 0)), (255, 0, 128), 1)


def test_cmyk_jpeg():
    image = decode_image(encode(Image.new("CMYK", (16, 16), (0, 255, 0, 0)), "JPEG", quality=95))
    assert image.mode == "RGB" and close_to(image.getpixel((8, 8)), (255, 0, 255))


def test_palette_png_with_and_without_transparency():
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, *GREEN] + [0] * 762)
    image = decode_image(encode(palette, "PNG"))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == GREEN
    transparent = decode_image(encode(palette, "PNG", transparency=1))
    assert transparent.getpixel((0, 0)) == WHITE


def test_alpha_is_composited_on_white():
    grey_alpha = Image.new("LA", (4, 1), (0, 255))
    grey_alpha.putpixel((1, 0), (0, 0))  # fully transparent black
    grey_alpha.putpixel((2, 0), (0, 128))  # half transparent black
    image = decode_image(encode(grey_alpha, "PNG"))
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((1, 0)) == WHITE
    assert close_to(image.getpixel((2, 0)), (127, 127, 127), 2)
    rgba = Image.new("RGBA", (2, 2), (*BLUE, 0))
    assert decode_image(encode(rgba, "PNG")).getpixel((0, 0)) == WHITE


def test_one_bit_and_grey_images():
    assert decode_image(encode(Image.new("1", (8, 8), 1), "PNG")).getpixel((0, 0)) == WHITE
    assert decode_image(encode(Image.new("L", (8, 8), 77), "PNG")).getpixel((0, 0)) == (77, 77, 77)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (10, 10), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    image = decode_image(data)
    assert image.mode == "RGB" and close_to(image.getpixel((5, 5)), RED, 4)


def test_webp_when_supported():
    from PIL import features

    if not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    image = decode_image(encode(halves(RED, BLUE, (32, 32)), "WEBP", lossless=True))
    assert image.getpixel((2, 2)) == RED


# ---- encoding and files -------------------------------------------------------------------------


def test_encode_round_trips():
    image = halves(RED, BLUE, (32, 32))
    assert decode_image(encode_image(image, "png")).tobytes() == image.tobytes()  # lossless
    jpeg = encode_image(image, "jpeg", quality=90)
    assert jpeg[:2] == b"\xff\xd8" and close_to(decode_image(jpeg).getpixel((2, 2)), RED)
    assert len(encode_image(image, "jpg", quality=20)) < len(encode_image(image, "jpeg", quality=100))
    labels = Image.fromarray(np.arange(19, dtype=np.uint8).reshape(1, 19))
    assert Image.open(io.BytesIO(encode_image(labels, "png"))).mode == "L"  # label maps stay single-channel
    assert (
        decode_image(encode_image(Image.new("RGBA", (2, 2), (0, 0, 0, 0)), "jpeg")).getpixel((0, 0)) == WHITE
    )
    with pytest.raises(ValueError, match="unsupported image format"):
        encode_image(image, "bmp")
    with pytest.raises(ValueError, match="quality"):
        encode_image(image, "jpeg", quality=0)


def test_load_image_file(tmp_path):
    path = tmp_path / "face.png"
    path.write_bytes(PNG)
    assert load_image_file(path).size == (64, 48)
    with pytest.raises(ImageError, match="cannot read image file"):
        load_image_file(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(ImageError, match=r"bad\.jpg: data is not an image"):
        load_image_file(bad)
    with pytest.raises(ImageError, match="limit"):
        load_image_file(path, max_bytes=10)


def test_real_face_images_decode():
    from tests.helpers.data import face_path

    image = load_image_file(face_path(0))
    assert image.mode == "RGB" and image.size == (512, 512)


# ---- the intermediate format (QOI) ---------------------------------------------------------------


def face_pixels() -> np.ndarray:
    from tests.helpers.data import face_path

    return np.asarray(Image.open(face_path(1)).convert("RGB"))


def test_intermediate_round_trips_bit_exactly() -> None:
    from services.common.images import encode_intermediate, is_intermediate

    pixels = face_pixels()
    data = encode_intermediate(pixels)
    assert is_intermediate(data) and data[:4] == b"qoif"
    assert np.array_equal(np.asarray(decode_image(data)), pixels)
    noise = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)  # odd sizes, no runs
    assert np.array_equal(np.asarray(decode_image(encode_intermediate(Image.fromarray(noise)))), noise)


def test_blobs_written_as_png_before_still_decode_like_the_intermediate() -> None:
    from services.common.images import encode_intermediate, is_intermediate

    pixels = face_pixels()
    old = encode_image(Image.fromarray(pixels), "png")
    assert not is_intermediate(old)
    assert np.array_equal(
        np.asarray(decode_image(old)), np.asarray(decode_image(encode_intermediate(pixels)))
    )


def test_portable_bytes_turn_an_intermediate_into_png_and_leave_others_alone() -> None:
    from services.common.images import encode_intermediate, portable_image_bytes

    pixels = face_pixels()
    png = portable_image_bytes(encode_intermediate(pixels))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), pixels)
    jpeg = encode(Image.fromarray(pixels), "JPEG")
    assert portable_image_bytes(jpeg) is jpeg


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d[:10], "truncated"),
        (lambda d: d[: len(d) // 2], "truncated"),
        (lambda d: d[:4] + struct.pack(">II", 0, 5) + d[12:], "no pixels"),
        (lambda d: d[:4] + struct.pack(">II", 100_000, 100_000) + d[12:], "limit"),
        (lambda d: d[:12] + b"\x07" + d[13:], "corrupt"),
    ],
)
def test_broken_intermediates_are_refused_with_a_reason(mutate, message) -> None:
    from services.common.images import encode_intermediate

    data = mutate(encode_intermediate(face_pixels()))
    with pytest.raises(ImageError, match=message):
        decode_image(data)


def test_intermediates_must_be_rgb_uint8() -> None:
    from services.common.images import encode_intermediate

    with pytest.raises(ValueError, match="uint8"):
        encode_intermediate(np.zeros((4, 4, 3), np.float32))
