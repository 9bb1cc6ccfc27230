"""dlib detection and 68 landmarks on the real faces in tests/data, and on non-faces."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from services.annotator.align import CANONICAL_LEFT_EYE, CANONICAL_RIGHT_EYE, ffhq_transform, map_landmarks
from services.annotator.detect import (
    SHAPE_PREDICTOR_68,
    FaceBox,
    FaceDetector,
    FaceLandmarker,
    ImageInputError,
    LandmarkPredictor,
    NoFaceFound,
    fuse_landmarks,
    locate_dlib_model,
)
from tests.helpers.data import DATA

TESTDATA = DATA
ALL_FACES = sorted(p.relative_to(TESTDATA).as_posix() for p in TESTDATA.glob("*/*.jpg"))


@pytest.fixture(scope="module")
def landmarker() -> FaceLandmarker:
    return FaceLandmarker.shared()


def load(name: str) -> PIL.Image.Image:
    return PIL.Image.open(TESTDATA / name).convert("RGB")


def test_locates_the_predictor_without_importing_its_package() -> None:
    import sys

    path = locate_dlib_model()
    assert path.name == SHAPE_PREDICTOR_68 and path.stat().st_size > 50_000_000
    assert "face_recognition_models" not in sys.modules  # its __init__ needs pkg_resources
    with pytest.raises(FileNotFoundError, match="not in the face_recognition_models"):
        locate_dlib_model("no_such_model.dat")


def test_testdata_is_present() -> None:
    assert len(ALL_FACES) == 22


@pytest.mark.parametrize("name", ALL_FACES)
def test_every_real_face_is_detected_with_sane_landmarks(landmarker, name) -> None:
    image = load(name)
    face = landmarker.locate(image)
    assert face.detected and face.face_count == 1
    lm = face.landmarks68
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    left_eye, right_eye, mouth = lm[36:42].mean(0), lm[42:48].mean(0), lm[48:68].mean(0)
    interocular = np.linalg.norm(right_eye - left_eye)
    assert 0.15 * image.width < interocular < 0.4 * image.width  # portraits: a face of a sensible size
    assert left_eye[0] < lm[30, 0] < right_eye[0]  # nose tip between the eyes
    assert mouth[1] > lm[30, 1] > max(left_eye[1], right_eye[1])  # eyes above nose above mouth
    assert lm[8, 1] > mouth[1]  # chin below the mouth
    box = face.box
    assert box.left <= lm[30, 0] <= box.right and box.top <= lm[30, 1] <= box.bottom
    # FFHQ alignment of these points puts the eyes at the canonical positions (e4e's 256 px).
    aligned = map_landmarks(lm, ffhq_transform(lm, 256, 256, image_size=image.size))
    assert np.abs(aligned[36:42].mean(0) - np.array(CANONICAL_LEFT_EYE) * 256).max() < 8
    assert np.abs(aligned[42:48].mean(0) - np.array(CANONICAL_RIGHT_EYE) * 256).max() < 8


@pytest.mark.parametrize("kind", ["grey", "noise", "gradient"])
def test_non_faces_raise_no_face_found(landmarker, kind) -> None:
    rng = np.random.default_rng(0)
    pixels = {
        "grey": np.full((300, 300, 3), 128, np.uint8),
        "noise": rng.integers(0, 256, (300, 300, 3), dtype=np.uint8),
        "gradient": np.repeat(np.linspace(0, 255, 300, dtype=np.uint8)[None, :, None], 300, 0).repeat(3, 2),
    }[kind]
    with pytest.raises(NoFaceFound, match="^no face found$"):
        landmarker.locate(pixels)
    assert landmarker.detector.detect(pixels) == []


def test_several_faces_keep_the_largest_and_count_them(landmarker) -> None:
    big, small = load("faces/sfhq_sample_02.jpg"), load("faces/sfhq_sample_05.jpg").resize((300, 300))
    canvas = PIL.Image.new("RGB", (900, 560), (90, 90, 90))
    canvas.paste(small, (20, 130))
    canvas.paste(big, (370, 24))
    faces = landmarker.detect_all(canvas)
    assert len(faces) == 2 and all(f.face_count == 2 for f in faces)
    assert faces[0].box.area > faces[1].box.area  # largest first
    chosen = landmarker.locate(canvas)
    assert chosen.face_count == 2
    assert chosen.box.left > 370 - 1  # the big face on the right
    assert 370 < chosen.landmarks68[:, 0].mean() < 370 + 512


def test_canonical_box_gives_the_detection_landmarks_on_ffhq_aligned_faces(landmarker) -> None:
    for name in ("faces/sfhq_sample_01.jpg", "faces/sfhq_sample_06.jpg"):
        image = load(name)
        detected = landmarker.locate(image)
        canonical = landmarker.locate(image, detect=False)
        assert not canonical.detected and canonical.face_count == 0
        assert np.linalg.norm(detected.landmarks68 - canonical.landmarks68, axis=1).mean() < 3.0


def test_canonical_fallback_only_when_allowed(landmarker) -> None:
    grey = np.full((256, 256, 3), 128, np.uint8)
    with pytest.raises(NoFaceFound):
        landmarker.locate(grey, detect=True, allow_canonical=False)
    fallback = landmarker.locate(grey, detect=True, allow_canonical=True)
    assert not fallback.detected and fallback.face_count == 0
    assert np.isfinite(fallback.landmarks68).all()


def test_detector_accepts_grey_and_rgba_arrays(landmarker) -> None:
    detector = landmarker.detector
    image = np.asarray(load("faces/sfhq_sample_04.jpg"))
    grey = image.mean(axis=2).astype(np.uint8)
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert len(detector.detect(grey)) == 1 and len(detector.detect(rgba)) == 1


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((64, 64, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 3), np.uint8), "too small"),
        (np.zeros((64, 64, 2), np.uint8), "shape"),
    ],
)
def test_bad_images_raise_a_clear_error(landmarker, pixels, message) -> None:
    with pytest.raises(ImageInputError, match=message):
        landmarker.detector.detect(pixels)
    with pytest.raises(ImageInputError, match=message):
        landmarker.locate(pixels, detect=False)


def test_predictor_rejects_a_missing_model_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="shape predictor not found"):
        LandmarkPredictor(tmp_path / "missing.dat")
    with pytest.raises(ValueError, match="upsample"):
        FaceDetector(upsample=9)
    with pytest.raises(ValueError, match="max_side"):
        FaceDetector(max_side=10)


def test_fusion_averages_agreeing_sets_and_keeps_dlib_when_fan_is_lost() -> None:
    rng = np.random.default_rng(0)
    dlib_points = np.zeros((68, 2))
    dlib_points[36:42], dlib_points[42:48] = [100, 100], [200, 100]  # inter-ocular distance 100
    dlib_points += rng.normal(0, 1, (68, 2))
    close = dlib_points + rng.normal(0, 3, (68, 2))
    np.testing.assert_allclose(fuse_landmarks(dlib_points, close), (dlib_points + close) / 2, atol=1e-4)
    far = dlib_points + 60.0  # a failed FAN crop
    np.testing.assert_allclose(fuse_landmarks(dlib_points, far), dlib_points, atol=1e-4)
    np.testing.assert_allclose(fuse_landmarks(dlib_points, np.full((68, 2), np.nan)), dlib_points, atol=1e-4)
    with pytest.raises(ValueError, match="68"):
        fuse_landmarks(dlib_points, close[:10])


def test_facebox_area_and_tuple() -> None:
    box = FaceBox(10, 20, 50, 80, 1.5)
    assert box.area == 40 * 60 and box.as_tuple() == (10, 20, 50, 80)


def test_large_images_are_searched_on_a_downscaled_copy(landmarker) -> None:
    image = load("inspiration/sd_02.jpg")
    large = image.resize((1770, 1770), PIL.Image.BICUBIC)  # 3x: beyond max_side
    assert landmarker.detector.max_side is not None and max(large.size) > landmarker.detector.max_side
    small_face, large_face = landmarker.locate(image), landmarker.locate(large)
    assert large_face.box.area == pytest.approx(9 * small_face.box.area, rel=0.35)
    # Landmarks are predicted at full resolution and agree with the small image's, scaled.
    scaled = (small_face.landmarks68 + 0.5) * 3 - 0.5
    interocular = np.linalg.norm(scaled[36:42].mean(0) - scaled[42:48].mean(0))
    assert np.linalg.norm(large_face.landmarks68 - scaled, axis=1).mean() < 0.05 * interocular


@pytest.mark.parametrize("name", ALL_FACES)
def test_the_cheap_pass_finds_every_test_face_near_where_the_full_search_does(landmarker, name) -> None:
    image = load(name)
    cheap = landmarker.detector._detect(np.asarray(image), 400, 0)  # upsample 0 on a <= 400-px copy
    full = FaceLandmarker(FaceDetector(fast_side=None), landmarker.predictor).locate(image)
    assert len(cheap) >= 1
    located = landmarker.locate(image)
    interocular = np.linalg.norm(full.landmarks68[36:42].mean(0) - full.landmarks68[42:48].mean(0))
    assert np.linalg.norm(located.landmarks68 - full.landmarks68, axis=1).mean() < 0.04 * interocular


def test_a_face_too_small_for_the_cheap_pass_is_found_by_the_full_search(landmarker) -> None:
    canvas = PIL.Image.new("RGB", (1600, 1600), (128, 128, 128))
    canvas.paste(load("faces/sfhq_sample_03.jpg").resize((160, 160), PIL.Image.LANCZOS), (700, 300))
    assert landmarker.detector._detect(np.asarray(canvas), 400, 0) == []  # a 40-px face in the copy
    faces = landmarker.detector.detect(canvas)
    assert len(faces) == 1 and 650 < faces[0].left < 800 and 250 < faces[0].top < 400
