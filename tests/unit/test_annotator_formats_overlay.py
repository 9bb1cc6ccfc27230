"""SFHQ file formats (read back the way SFHQ's own scripts read them) and the overlay pictures."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest

from services.annotator.formats import (
    FormatError,
    landmarks_to_npz,
    read_landmarks_npz,
    read_segmentation_png,
    segmentation_to_png,
)
from services.annotator.landmarks110 import LANDMARK_GROUPS
from services.annotator.overlay import GROUP_COLORS, PARSING_PALETTE, colorize_labels, render_overlay


def test_segmentation_png_is_single_channel_class_indices() -> None:
    labels = (np.arange(64 * 64).reshape(64, 64) % 19).astype(np.uint8)
    data = segmentation_to_png(labels)
    with PIL.Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.mode == "L" and image.size == (64, 64)
        np.testing.assert_array_equal(np.asarray(image.convert("L")), labels)  # SFHQ's reader
    np.testing.assert_array_equal(read_segmentation_png(data), labels)
    np.testing.assert_array_equal(read_segmentation_png(segmentation_to_png(labels.astype(np.int64))), labels)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.full((4, 4), 19), "class indices"),
        (np.full((4, 4), -1), "class indices"),
        (np.zeros((4, 4, 3), np.uint8), "2-D"),
        (np.zeros((4, 4), np.float32), "integer"),
    ],
)
def test_bad_segmentations_are_refused(labels, message) -> None:
    with pytest.raises(FormatError, match=message):
        segmentation_to_png(labels)


def test_landmarks_npz_round_trip_and_sfhq_reader(tmp_path) -> None:
    points = np.random.default_rng(0).uniform(0, 1024, (110, 2))
    data = landmarks_to_npz(points)
    (tmp_path / "x.npz").write_bytes(data)
    loaded = np.load(tmp_path / "x.npz")["landmarks"]  # exactly what SFHQ's explore script does
    assert loaded.shape == (110, 2) and loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, points, rtol=1e-6)
    np.testing.assert_array_equal(read_landmarks_npz(data), loaded)


def test_landmark_format_errors() -> None:
    with pytest.raises(FormatError, match="110, 2"):
        landmarks_to_npz(np.zeros((68, 2)))
    with pytest.raises(FormatError, match="NaN"):
        landmarks_to_npz(np.full((110, 2), np.nan))
    with pytest.raises(FormatError, match="not a readable"):
        read_landmarks_npz(b"garbage")
    buf = io.BytesIO()
    np.savez(buf, points=np.zeros((110, 2)))
    with pytest.raises(FormatError, match="no 'landmarks'"):
        read_landmarks_npz(buf.getvalue())
    buf = io.BytesIO()
    np.savez(buf, landmarks=np.array([{"x": 1}], dtype=object))  # pickled payload: never loaded
    with pytest.raises(FormatError):
        read_landmarks_npz(buf.getvalue())


def test_palette_is_the_on_screen_face_parsing_colours() -> None:
    assert PARSING_PALETTE.shape == (19, 3)
    assert tuple(PARSING_PALETTE[0]) == (255, 255, 255)  # background never painted
    assert tuple(PARSING_PALETTE[1]) == (0, 85, 255)  # skin shows blue
    assert tuple(PARSING_PALETTE[10]) == (255, 0, 0)  # nose shows red
    assert tuple(PARSING_PALETTE[14]) == (255, 170, 0)  # neck
    assert tuple(PARSING_PALETTE[17]) == (170, 255, 255)  # hair
    assert tuple(PARSING_PALETTE[18]) == (255, 0, 255)  # hat
    assert len({tuple(c) for c in PARSING_PALETTE}) == 19


def test_overlay_blends_the_map_like_the_original_and_draws_groups() -> None:
    image = PIL.Image.new("RGB", (128, 128), (100, 50, 0))
    labels = np.zeros((32, 32), np.uint8)
    labels[:, 16:] = 1  # right half skin, at a quarter of the image's resolution
    out = np.asarray(render_overlay(image, label_map=labels))
    assert out.shape == (128, 128, 3)
    np.testing.assert_array_equal(out[10, 10], np.rint(0.4 * np.array([100, 50, 0]) + 0.6 * 255))
    np.testing.assert_array_equal(
        out[10, 100], np.rint(0.4 * np.array([100, 50, 0]) + 0.6 * np.array([0, 85, 255]))
    )

    points = np.zeros((110, 2))
    for group, indices in LANDMARK_GROUPS.items():
        points[list(indices)] = [10 + 8 * list(LANDMARK_GROUPS).index(group), 64]
    drawn = np.asarray(render_overlay(image, landmarks=points, point_radius=2))
    for group, indices in LANDMARK_GROUPS.items():
        x = int(points[indices.start, 0])
        assert tuple(drawn[64, x]) == GROUP_COLORS[group], group
    assert tuple(drawn[5, 5]) == (100, 50, 0)  # untouched elsewhere
    assert render_overlay(image).size == (128, 128)
    assert np.asarray(render_overlay(image, landmarks=points[:68])).shape == (128, 128, 3)


def test_overlay_refuses_bad_inputs() -> None:
    image = PIL.Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match="110"):
        render_overlay(image, landmarks=np.zeros((5, 2)))
    with pytest.raises(ValueError, match="classes"):
        colorize_labels(np.full((4, 4), 40, np.uint8))
