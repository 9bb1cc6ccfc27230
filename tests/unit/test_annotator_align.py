"""FFHQ alignment: exact geometry on synthetic images, and real faces from tests/data."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from services.annotator.align import (
    CANONICAL_LEFT_EYE,
    CANONICAL_MOUTH,
    CANONICAL_RIGHT_EYE,
    AlignmentError,
    align_face,
    canonical_face_box,
    face_quad,
    ffhq_transform,
    invert_transform,
    map_landmarks,
)
from tests.helpers.data import DATA

TESTDATA = DATA


def face_landmarks(eye_left, eye_right, mouth_left, mouth_right) -> np.ndarray:
    """68 points whose eye centres and mouth corners are the given ones (the rest do not matter
    to the alignment; they are spread around so that nothing is degenerate)."""
    lm = np.zeros((68, 2))
    ring = np.array([[np.cos(a), np.sin(a)] for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)])
    lm[36:42] = np.asarray(eye_left, float) + ring  # a ring averages to its centre
    lm[42:48] = np.asarray(eye_right, float) + ring
    lm[48] = mouth_left
    lm[54] = mouth_right
    lm[0:17] = np.linspace(eye_left, eye_right, 17)
    return lm


def blob_image(size: tuple[int, int], centre: tuple[float, float], sigma: float = 4.0) -> PIL.Image.Image:
    """Black RGB image with one Gaussian spot (peak 255) at sub-pixel `centre` (pixel-centre coords)."""
    width, height = size
    pixels = np.zeros((height, width, 3), np.uint8)
    reach = int(np.ceil(5 * sigma))  # beyond 5 sigma the spot rounds to 0 anyway
    x0, y0 = max(int(centre[0]) - reach, 0), max(int(centre[1]) - reach, 0)
    ys, xs = np.mgrid[y0 : min(int(centre[1]) + reach, height), x0 : min(int(centre[0]) + reach, width)]
    spot = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))
    pixels[ys, xs] = np.rint(255 * spot)[:, :, None].astype(np.uint8)
    return PIL.Image.fromarray(pixels, "RGB")


def spot_centroid(image: PIL.Image.Image) -> np.ndarray:
    values = np.asarray(image, dtype=np.float64)[:, :, 0]
    values = np.where(values > 0.2 * values.max(), values, 0.0)  # ignore the far tails and the padding
    ys, xs = np.mgrid[0 : values.shape[0], 0 : values.shape[1]]
    return np.array([(xs * values).sum(), (ys * values).sum()]) / values.sum()


def test_quad_of_an_upright_face_matches_the_ffhq_formula_by_hand() -> None:
    # Eyes 100 px apart at y=200, mouth 120 px below: 1.8*120=216 > 2*100, so the mouth sets the size.
    lm = face_landmarks((250, 200), (350, 200), (270, 320), (330, 320))
    face = face_quad(lm)
    centre = np.array([300.0, 200.0 + 0.1 * 120])
    half = 216.0
    expected = np.array(
        [centre + [-half, -half], centre + [-half, half], centre + [half, half], centre + [half, -half]]
    )
    np.testing.assert_allclose(face.quad, expected, atol=1e-9)
    assert face.qsize == pytest.approx(2 * half)


def test_rotate_level_false_keeps_the_crop_axis_aligned() -> None:
    lm = face_landmarks((250, 210), (350, 190), (270, 330), (330, 310))  # tilted face
    quad = face_quad(lm, rotate_level=False).quad
    assert quad[0, 1] == pytest.approx(quad[3, 1]) and quad[0, 0] == pytest.approx(quad[1, 0])
    tilted = face_quad(lm).quad
    assert abs(tilted[0, 1] - tilted[3, 1]) > 10  # the default follows the eye line


@pytest.mark.parametrize(
    ("image_size", "eyes", "mouth", "output_size", "transform_size", "spot"),
    [
        # small face, no shrink, no padding, tilted 15 degrees; e4e setting
        ((400, 400), ((160, 190), (235, 170)), ((180, 270), (240, 255)), 256, 256, (210, 230)),
        # FFHQ setting with 4x supersampling
        ((400, 400), ((160, 190), (235, 170)), ((180, 270), (240, 255)), 256, 1024, (170, 160)),
        # face touching the top-left corner: reflect padding is used
        ((300, 300), ((40, 50), (110, 45)), ((55, 130), (100, 128)), 128, 256, (80, 90)),
        # large face in a large image: the integer pre-shrink (x4) is used
        ((2600, 2200), ((900, 1000), (1500, 980)), ((1000, 1650), (1400, 1640)), 128, 128, (1230, 1220)),
    ],
)
def test_transform_predicts_where_a_pixel_lands(
    image_size, eyes, mouth, output_size, transform_size, spot
) -> None:
    lm = face_landmarks(eyes[0], eyes[1], mouth[0], mouth[1])
    sigma = max(4.0, 2.5 * face_quad(lm).qsize / output_size)  # at least ~2.5 output px wide
    image = blob_image(image_size, spot, sigma)
    aligned = align_face(image, lm, output_size=output_size, transform_size=transform_size)
    assert aligned.size == (output_size, output_size) and aligned.mode == "RGB"
    transform = ffhq_transform(lm, output_size, transform_size, image_size=image_size)
    predicted = map_landmarks(np.array([spot]), transform)[0]
    assert np.abs(spot_centroid(aligned) - predicted).max() < 0.2


def test_transform_maps_the_quad_to_the_output_corners_and_inverts() -> None:
    lm = face_landmarks((160, 190), (235, 170), (180, 270), (240, 255))
    transform = ffhq_transform(lm, 1024, 4096)
    corners = map_landmarks(face_quad(lm).quad, transform)
    # Quad corners are the outer corners of the output square (pixel-centre coordinates: -0.5 and S-0.5).
    np.testing.assert_allclose(
        corners, [[-0.5, -0.5], [-0.5, 1023.5], [1023.5, 1023.5], [1023.5, -0.5]], atol=1e-6
    )
    back = map_landmarks(map_landmarks(lm, transform), invert_transform(transform))
    np.testing.assert_allclose(back, lm, atol=1e-6)


def test_padding_fills_outside_the_image_with_blurred_content_not_black() -> None:
    rng = np.random.default_rng(0)
    texture = PIL.Image.fromarray(rng.integers(60, 200, (300, 300, 3), dtype=np.uint8), "RGB")
    lm = face_landmarks((40, 50), (110, 45), (55, 130), (100, 128))  # quad extends past the top-left corner
    padded = np.asarray(align_face(texture, lm, output_size=128, transform_size=128))
    unpadded = np.asarray(align_face(texture, lm, output_size=128, transform_size=128, enable_padding=False))
    corner = (slice(0, 12), slice(0, 12))
    assert unpadded[corner].max() == 0  # Pillow fills outside the source with black
    assert padded[corner].min() > 40  # reflected, blurred, faded to the median colour
    assert padded[corner].std() < texture.getchannel(0).getextrema()[1] / 4  # blurred: little texture left
    # Inside the original image both agree (the padding only touches what was outside).
    np.testing.assert_array_equal(padded[90:, 90:], unpadded[90:, 90:])


def test_accepts_arrays_grey_and_rgba_and_gives_rgb() -> None:
    lm = face_landmarks((160, 190), (235, 170), (180, 270), (240, 255))
    grey = np.full((400, 400), 128, np.uint8)
    rgba = PIL.Image.new("RGBA", (400, 400), (10, 20, 30, 255))
    assert align_face(grey, lm, 64, 64).mode == "RGB"
    out = np.asarray(align_face(rgba, lm, 64, 64))
    assert tuple(out[32, 32]) == (10, 20, 30)


@pytest.mark.parametrize(
    ("landmarks", "message"),
    [
        (np.zeros((5, 2)), "shape"),
        (np.full((68, 2), np.nan), "NaN"),
        (np.zeros((68, 2)), "degenerate"),
        (np.array([["a", "b"]] * 68), "real numbers"),
    ],
)
def test_bad_landmarks_raise_a_clear_error(landmarks, message) -> None:
    with pytest.raises(AlignmentError, match=message):
        align_face(PIL.Image.new("RGB", (64, 64)), landmarks, 64, 64)


def test_bad_sizes_raise_a_clear_error() -> None:
    lm = face_landmarks((160, 190), (235, 170), (180, 270), (240, 255))
    with pytest.raises(AlignmentError, match="output_size"):
        align_face(PIL.Image.new("RGB", (64, 64)), lm, output_size=0)
    with pytest.raises(AlignmentError, match="transform_size"):
        align_face(PIL.Image.new("RGB", (64, 64)), lm, output_size=256, transform_size=128)
    with pytest.raises(AlignmentError, match="uint8"):
        align_face(np.zeros((64, 64, 3), np.float32), lm, 64, 64)


def test_canonical_box_frames_an_ffhq_aligned_face() -> None:
    left, top, right, bottom = canonical_face_box(1024)
    assert right - left == bottom - top == 614  # 0.6 of the side
    assert (left + right) / 2 == pytest.approx(512, abs=1)
    # The eyes and the mouth of the canonical geometry sit inside the box, eyes in its upper half.
    eye_y = CANONICAL_LEFT_EYE[1] * 1024
    assert top < eye_y < (top + bottom) / 2 and CANONICAL_MOUTH[1] * 1024 < bottom
    assert canonical_face_box((512, 256))[2] - canonical_face_box((512, 256))[0] == 307
    with pytest.raises(ValueError, match="too small"):
        canonical_face_box(4)


# ---- real faces ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def landmarker():
    from services.annotator.detect import FaceLandmarker

    return FaceLandmarker.shared()


@pytest.mark.parametrize(
    "name", ["inspiration/sd_00.jpg", "inspiration/render3d_03.jpg", "inspiration/sd_01.jpg"]
)
def test_real_faces_align_with_eyes_at_the_ffhq_positions(landmarker, name) -> None:
    image = PIL.Image.open(TESTDATA / name).convert("RGB")
    face = landmarker.locate(image)
    aligned = align_face(image, face.landmarks68, output_size=256, transform_size=256)  # e4e setting
    mapped = map_landmarks(
        face.landmarks68, ffhq_transform(face.landmarks68, 256, 256, image_size=image.size)
    )

    redetected = landmarker.locate(aligned)  # the aligned picture really shows the face there
    assert redetected.face_count == 1
    for points in (mapped, redetected.landmarks68):
        left_eye, right_eye = points[36:42].mean(0), points[42:48].mean(0)
        assert np.abs(left_eye - np.array(CANONICAL_LEFT_EYE) * 256).max() < 6
        assert np.abs(right_eye - np.array(CANONICAL_RIGHT_EYE) * 256).max() < 6
        assert abs(left_eye[1] - right_eye[1]) < 2.5  # the eye line is level
    assert np.linalg.norm(mapped - redetected.landmarks68, axis=1).mean() < 3.5


def test_ffhq_1024_setting_on_a_real_face(landmarker) -> None:
    image = PIL.Image.open(TESTDATA / "inspiration" / "sd_02.jpg").convert("RGB")
    face = landmarker.locate(image)
    aligned = align_face(image, face.landmarks68)  # 1024 output from a 4096 supersampled transform
    assert aligned.size == (1024, 1024)
    mapped = map_landmarks(face.landmarks68, ffhq_transform(face.landmarks68, image_size=image.size))
    left_eye, right_eye = mapped[36:42].mean(0), mapped[42:48].mean(0)
    assert np.abs(left_eye - np.array(CANONICAL_LEFT_EYE) * 1024).max() < 20
    assert np.abs(right_eye - np.array(CANONICAL_RIGHT_EYE) * 1024).max() < 20
    # The FFHQ path equals the 1024-transform path up to resampling (same geometry).
    direct = np.asarray(align_face(image, face.landmarks68, 1024, 1024), dtype=np.float64)
    assert np.abs(direct - np.asarray(aligned, dtype=np.float64)).mean() < 4


# ---- the OpenCV backend -------------------------------------------------------------------------


def test_opencv_padding_equals_the_reference_within_rounding() -> None:
    from services.annotator.align import _pad_blurred_exact, _pad_blurred_opencv

    image = np.asarray(PIL.Image.open(TESTDATA / "inspiration" / "sd_03.jpg").convert("RGB"))[::2, ::2]
    pad = np.array([60, 40, 30, 80])
    exact = _pad_blurred_exact(image, pad, qsize=150.0).astype(int)
    fast = _pad_blurred_opencv(image, pad, qsize=150.0).astype(int)
    assert exact.shape == fast.shape == (image.shape[0] + 120, image.shape[1] + 90, 3)
    assert np.abs(exact - fast).max() <= 1 and (exact != fast).mean() < 0.01  # the same blur, float32


@pytest.mark.parametrize("name", ["inspiration/sd_05.jpg", "inspiration/render3d_01.jpg"])
@pytest.mark.parametrize("sizes", [(1024, 4096), (256, 256), (128, 512)])
def test_opencv_alignment_is_within_a_grey_level_of_the_reference(landmarker, name, sizes) -> None:
    image = PIL.Image.open(TESTDATA / name).convert("RGB")
    landmarks = landmarker.locate(image).landmarks68
    exact = np.asarray(align_face(image, landmarks, *sizes), dtype=int)
    fast = np.asarray(align_face(image, landmarks, *sizes, backend="opencv"), dtype=int)
    difference = np.abs(exact - fast)
    assert fast.shape == exact.shape == (sizes[0], sizes[0], 3)
    assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 2


def test_opencv_alignment_follows_the_geometry_of_a_synthetic_spot() -> None:
    lm = face_landmarks((90, 100), (130, 100), (95, 140), (125, 140))
    spot = blob_image((220, 240), (130.0, 100.0), sigma=3.0)  # on the image-right eye
    fast = np.asarray(align_face(spot, lm, 128, 512, backend="opencv"), dtype=float)[:, :, 0]
    expected = map_landmarks([[130.0, 100.0]], ffhq_transform(lm, 128, 512))[0]
    found = np.array(np.unravel_index(fast.argmax(), fast.shape))[::-1]
    assert np.abs(found - expected).max() <= 1.0


def test_an_unknown_alignment_backend_is_refused() -> None:
    lm = face_landmarks((20, 20), (40, 20), (22, 40), (38, 40))
    with pytest.raises(ValueError, match="backend"):
        align_face(PIL.Image.new("RGB", (64, 64)), lm, 64, 64, backend="fast")  # type: ignore[arg-type]
