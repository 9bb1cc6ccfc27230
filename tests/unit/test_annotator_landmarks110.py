"""The 110-point set: the documented order, hairlines found on parsing maps whose true boundaries
are known (drawn from real dlib landmarks), bald heads, hats, no hair, and garbage maps."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest

from services.annotator.landmarks110 import (
    HEAD_CLASSES,
    INNER_HAIRLINE_ANGLES,
    LANDMARK_GROUPS,
    OUTER_HAIRLINE_ANGLES,
    compute_landmarks110,
    extend_landmarks,
    rescale_points,
)
from tests.helpers.data import DATA

ROOT = Path(__file__).resolve().parents[2]
TESTDATA = DATA
SIZE = 256
INNER = LANDMARK_GROUPS["inner_hairline"]
OUTER = LANDMARK_GROUPS["outer_hairline"]
SKIN, NOSE, HAIR, HAT = 1, 10, 17, 18


@pytest.fixture(scope="module")
def face68() -> np.ndarray:
    """Real dlib landmarks of a test face at the 256-px working size."""
    from services.annotator.detect import FaceLandmarker

    image = (
        PIL.Image.open(TESTDATA / "faces" / "sfhq_sample_03.jpg")
        .convert("RGB")
        .resize((SIZE, SIZE), PIL.Image.BILINEAR)
    )
    return FaceLandmarker.shared().locate(image).landmarks68.astype(np.float64)


def frame(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    left, right = lm[36:42].mean(0), lm[42:48].mean(0)
    across = (right - left) / np.linalg.norm(right - left)
    return (left + right) / 2, across, np.array([across[1], -across[0]]), float(np.linalg.norm(right - left))


def draw_map(lm: np.ndarray, hair: str = "normal", size: int = SIZE) -> np.ndarray:
    """A parsing map drawn from 68 points: hair (or skin when bald) over a head ellipse, a skin face
    up to a forehead line, ears, brows, eyes, a nose whose wings are as wide as the nostril span,
    lips, a neck. `hair`: normal | bald | hat | none (skin face, nothing above the forehead)."""
    image = PIL.Image.new("L", (size, size), 0)
    draw = PIL.ImageDraw.Draw(image)
    centre, _, _, iod = frame(lm)
    half_width = 0.55 * np.linalg.norm(lm[16] - lm[0])
    draw.rectangle(
        [centre[0] - 0.8 * half_width, lm[8][1] - 0.2 * iod, centre[0] + 0.8 * half_width, size], fill=14
    )
    head = [
        centre[0] - 1.15 * half_width,
        centre[1] - 1.9 * iod,
        centre[0] + 1.15 * half_width,
        centre[1] + 1.4 * iod,
    ]
    if hair in ("normal", "hat"):
        draw.ellipse(head, fill=HAIR)
    if hair == "bald":
        draw.ellipse(head, fill=SKIN)
    if hair == "hat":
        draw.pieslice([head[0], head[1] - 0.3 * iod, head[2], centre[1] + 0.6 * iod], 180, 360, fill=HAT)
    top = centre[1] - 1.15 * iod
    face = [tuple(p) for p in lm[0:17]] + [
        (lm[16][0], lm[16][1] - 0.6 * iod),
        (centre[0] + 0.6 * half_width, top + 0.25 * iod),
        (centre[0], top),
        (centre[0] - 0.6 * half_width, top + 0.25 * iod),
        (lm[0][0], lm[0][1] - 0.6 * iod),
    ]
    draw.polygon(face, fill=SKIN)
    for point, cls in ((lm[1], 7), (lm[15], 8)):
        draw.ellipse(
            [point[0] - 0.18 * iod, point[1] - 0.45 * iod, point[0] + 0.18 * iod, point[1] + 0.1 * iod],
            fill=cls,
        )
    draw.polygon([tuple(p) for p in lm[17:22]], fill=2, outline=2)
    draw.polygon([tuple(p) for p in lm[22:27]], fill=3, outline=3)
    draw.polygon([tuple(p) for p in lm[36:42]], fill=4)
    draw.polygon([tuple(p) for p in lm[42:48]], fill=5)
    wing = np.linalg.norm(lm[35] - lm[31]) / 2
    nose = [
        lm[27] + [-0.15 * iod, 0],
        lm[27] + [0.15 * iod, 0],
        lm[29] + [wing, 0],
        lm[33] + [wing, 0],
        lm[33],
        lm[33] - [wing, 0],
        lm[29] - [wing, 0],
    ]
    draw.polygon([tuple(p) for p in nose], fill=NOSE)
    draw.polygon([tuple(p) for p in np.concatenate([lm[48:55], lm[64:59:-1]])], fill=12)
    draw.polygon([tuple(p) for p in np.concatenate([lm[54:60], lm[48:49], lm[60:61], lm[67:63:-1]])], fill=13)
    draw.polygon([tuple(p) for p in lm[60:68]], fill=11)
    return np.asarray(image)


def class_at(label_map: np.ndarray, point: np.ndarray) -> int:
    x, y = np.clip(np.rint(point).astype(int), 0, np.array(label_map.shape[::-1]) - 1)
    return int(label_map[y, x])


def ray_direction(lm: np.ndarray, angle: float) -> np.ndarray:
    _, right, up, _ = frame(lm)
    a = np.deg2rad(angle)
    return np.cos(a) * up + np.sin(a) * right


# ---- the documented order ----------------------------------------------------------------------------------


def test_groups_cover_110_indices_in_order() -> None:
    ranges = list(LANDMARK_GROUPS.values())
    assert [r.start for r in ranges[1:]] == [r.stop for r in ranges[:-1]]
    assert ranges[0].start == 0 and ranges[-1].stop == 110
    sizes = {name: len(r) for name, r in LANDMARK_GROUPS.items()}
    assert (
        sum(
            sizes[n]
            for n in (
                "jaw",
                "right_brow",
                "left_brow",
                "nose_bridge",
                "nostrils",
                "right_eye",
                "left_eye",
                "outer_lip",
                "inner_lip",
            )
        )
        == 68
    )
    assert (
        sizes["nose_wings"],
        sizes["inner_lip_extra"],
        sizes["inner_hairline"],
        sizes["outer_hairline"],
    ) == (4, 8, 9, 21)
    np.testing.assert_allclose(np.diff(OUTER_HAIRLINE_ANGLES), 13.5)
    assert OUTER_HAIRLINE_ANGLES[0] == -135 and OUTER_HAIRLINE_ANGLES[-1] == 135
    assert set(INNER_HAIRLINE_ANGLES) <= set(OUTER_HAIRLINE_ANGLES) and len(INNER_HAIRLINE_ANGLES) == 9


def test_docs_table_lists_every_index_with_its_code_group() -> None:
    text = (ROOT / "docs" / "landmarks.md").read_text()
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`?(\w+)`?\s*\|", text, flags=re.MULTILINE)
    documented = {int(index): group for index, group in rows}
    assert sorted(documented) == list(range(110))
    for group, indices in LANDMARK_GROUPS.items():
        for index in indices:
            assert documented[index] == group, index


# ---- measurements on maps with known boundaries ------------------------------------------------------------


def test_hairlines_land_on_the_drawn_boundaries(face68) -> None:
    label_map = draw_map(face68, "normal")
    result = compute_landmarks110(face68, label_map)
    points = result.points
    assert points.shape == (110, 2) and points.dtype == np.float32
    np.testing.assert_array_equal(points[:68], face68.astype(np.float32))
    assert not result.fallback.any()
    for k, angle in zip(INNER, INNER_HAIRLINE_ANGLES, strict=True):
        d = ray_direction(face68, angle)
        assert class_at(label_map, points[k] - 1.0 * d) == SKIN
        assert class_at(label_map, points[k] + 1.0 * d) == HAIR
    for k, angle in zip(OUTER, OUTER_HAIRLINE_ANGLES, strict=True):
        d = ray_direction(face68, angle)
        assert class_at(label_map, points[k] - 1.0 * d) in HEAD_CLASSES
        assert class_at(label_map, points[k] + 1.0 * d) not in HEAD_CLASSES
    # Inner hairline below the outer one on every shared ray.
    centre = frame(face68)[0]
    for k, angle in zip(INNER, INNER_HAIRLINE_ANGLES, strict=True):
        j = OUTER.start + OUTER_HAIRLINE_ANGLES.index(angle)
        assert np.linalg.norm(points[k] - centre) < np.linalg.norm(points[j] - centre) - 3


def test_points_sit_on_rays_at_the_documented_angles(face68) -> None:
    points = extend_landmarks(face68, draw_map(face68))
    centre, right, up, _ = frame(face68)
    for indices, angles in ((OUTER, OUTER_HAIRLINE_ANGLES), (INNER, INNER_HAIRLINE_ANGLES)):
        rel = points[list(indices)] - centre
        measured = np.rad2deg(np.arctan2(rel @ right, rel @ up))
        np.testing.assert_allclose(measured, angles, atol=1e-3)


def test_bald_head_inner_equals_outer(face68) -> None:
    result = compute_landmarks110(face68, draw_map(face68, "bald"))
    for k, angle in zip(INNER, INNER_HAIRLINE_ANGLES, strict=True):
        j = OUTER.start + OUTER_HAIRLINE_ANGLES.index(angle)
        np.testing.assert_array_equal(result.points[k], result.points[j])
    assert not result.fallback.any()  # a bald head is a measurement, not a failure


def test_no_hair_above_the_forehead_gives_inner_equal_outer(face68) -> None:
    label_map = draw_map(face68, "none")
    points = extend_landmarks(face68, label_map)
    for k, angle in zip(INNER, INNER_HAIRLINE_ANGLES, strict=True):
        j = OUTER.start + OUTER_HAIRLINE_ANGLES.index(angle)
        np.testing.assert_array_equal(points[k], points[j])
        assert class_at(label_map, points[j] + ray_direction(face68, angle)) == 0


def test_hat_stops_the_inner_hairline_and_counts_as_head(face68) -> None:
    label_map = draw_map(face68, "hat")
    result = compute_landmarks110(face68, label_map)
    assert not result.fallback[68:].any()
    for k, angle in zip(INNER, INNER_HAIRLINE_ANGLES, strict=True):
        d = ray_direction(face68, angle)
        assert class_at(label_map, result.points[k] - d) == SKIN
        assert class_at(label_map, result.points[k] + d) in (HAIR, HAT)
    top = result.points[OUTER.start + 10]  # straight up: the hat reaches the top edge of the picture
    assert top[1] <= 1.0


def test_nose_wings_find_the_drawn_nose_edges(face68) -> None:
    label_map = draw_map(face68)
    result = compute_landmarks110(face68, label_map)
    wings = result.points[list(LANDMARK_GROUPS["nose_wings"])]
    assert not result.fallback[list(LANDMARK_GROUPS["nose_wings"])].any()
    centre_x = face68[27:31, 0].mean()
    assert (
        wings[0, 0] < centre_x < wings[2, 0] and wings[1, 0] < centre_x < wings[3, 0]
    )  # image-left pair first
    assert wings[0, 1] < wings[1, 1] and wings[2, 1] < wings[3, 1]  # upper before lower
    for point in wings:  # each on the nose's edge: nose inwards, something else outwards
        outwards = np.array([np.sign(point[0] - centre_x), 0.0])
        assert class_at(label_map, point - outwards) == NOSE
        assert class_at(label_map, point + outwards) != NOSE


def test_inner_lip_points_interleave_the_standard_ones(face68) -> None:
    label_map = draw_map(face68)
    points = extend_landmarks(face68, label_map)
    inner = face68[60:68]
    extra = points[list(LANDMARK_GROUPS["inner_lip_extra"])]
    for k in range(8):
        a, b = inner[k], inner[(k + 1) % 8]
        # Between its two neighbours along the contour, and close to the chord joining them.
        t = np.dot(extra[k] - a, b - a) / max(np.dot(b - a, b - a), 1e-9)
        assert -0.3 <= t <= 1.3
        assert np.linalg.norm(extra[k] - (a + b) / 2) <= 0.5 * np.linalg.norm(b - a) + 2.0


def test_rotated_face_gives_rotated_points(face68) -> None:
    angle = np.deg2rad(18)
    centre = np.array([SIZE / 2 - 0.5, SIZE / 2 - 0.5])  # pixel-centre coordinates of the middle
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rotated68 = (face68 - centre) @ rotation.T + centre
    upright_map = draw_map(face68)
    # Rotate the map itself (nearest neighbour): output pixel p reads input R^T (p - c) + c.
    inverse = rotation.T
    offset = centre - inverse @ centre
    data = (
        inverse[0, 0],
        inverse[0, 1],
        offset[0] + 0.5 - 0.5 * inverse[0].sum(),
        inverse[1, 0],
        inverse[1, 1],
        offset[1] + 0.5 - 0.5 * inverse[1].sum(),
    )
    rotated_map = np.asarray(
        PIL.Image.fromarray(upright_map).transform(
            (SIZE, SIZE), PIL.Image.Transform.AFFINE, data, PIL.Image.Resampling.NEAREST
        )
    )
    upright = extend_landmarks(face68, upright_map)
    tilted = extend_landmarks(rotated68, rotated_map)
    expected = (upright.astype(np.float64) - centre) @ rotation.T + centre
    error = np.linalg.norm(tilted[68:] - expected[68:], axis=1)
    assert np.median(error) < 1.0 and error.max() < 3.0  # nearest-neighbour rotation moves edges by ~1 px


# ---- maps that support nothing -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["background", "skin", "noise", "stripes"])
def test_garbage_maps_still_give_110_finite_points(face68, kind) -> None:
    rng = np.random.default_rng(0)
    label_map = {
        "background": np.zeros((SIZE, SIZE), np.uint8),
        "skin": np.full((SIZE, SIZE), SKIN, np.uint8),
        "noise": rng.integers(0, 19, (SIZE, SIZE)).astype(np.uint8),
        "stripes": np.tile(np.array([0, 17, 16, 1], np.uint8).repeat(4), SIZE // 16)[None, :].repeat(SIZE, 0),
    }[kind]
    result = compute_landmarks110(face68, label_map)
    assert result.points.shape == (110, 2) and np.isfinite(result.points).all()
    centre, _, _, iod = frame(face68)
    distances = np.linalg.norm(result.points[list(OUTER)] - centre, axis=1)
    assert (distances >= 0.5 * iod - 1e-3).all()
    if kind == "background":  # nothing measurable at all: every extra point is a geometric fallback
        assert result.fallback[68:].all()
        assert (distances < 3 * iod).all()  # the fallback head ellipse hugs the face


def test_degenerate_landmarks_do_not_break_the_frame() -> None:
    lm = np.full((68, 2), 100.0)
    points = extend_landmarks(lm, np.zeros((64, 64), np.uint8))
    assert np.isfinite(points).all()


@pytest.mark.parametrize(
    ("lm", "label_map", "message"),
    [
        (np.zeros((5, 2)), np.zeros((64, 64), np.uint8), "68, 2"),
        (np.full((68, 2), np.inf), np.zeros((64, 64), np.uint8), "NaN or infinity"),
        (np.zeros((68, 2)), np.zeros((64, 64, 3), np.uint8), "2-D"),
        (np.zeros((68, 2)), np.zeros((64, 64), np.float32), "integer"),
    ],
)
def test_bad_inputs_are_refused(lm, label_map, message) -> None:
    with pytest.raises(ValueError, match=message):
        extend_landmarks(lm, label_map)


def test_rescale_aligns_pixel_centres() -> None:
    points = np.array([[0.0, 0.0], [255.0, 127.5]])
    scaled = rescale_points(points, (256, 256), (1024, 1024))
    np.testing.assert_allclose(scaled, [[1.5, 1.5], [1021.5, 511.5]])
    np.testing.assert_allclose(rescale_points(scaled, (1024, 1024), (256, 256)), points, atol=1e-5)
