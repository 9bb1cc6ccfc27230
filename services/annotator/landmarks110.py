"""The 110-point landmark set shipped with SFHQ: 68 standard points + 4 nose-wing + 8 inner-lip +
9 inner-hairline + 21 outer-hairline points.

SFHQ never documented its point order or how the extra points were computed; docs/sfhq-format.md ("Landmarks")
infers the group counts and that the hairlines come from rays cast at fixed angles from a centre
near the nose bridge through the face-parsing map. This module is our definition, and
docs/landmarks.md lists every index with its group and computation (the order here is the order
there).

Everything is computed in the label map's pixel frame (the 68 points must be given in that frame;
pixel (i, j) has its centre at x=j, y=i) and returned as float32 (110, 2) (x, y).

The face frame: `centre` is the midpoint of the two eye centres (on the nose bridge), `right`
is the unit vector from the image-left eye to the image-right eye, and `up` is `right` turned
90 degrees towards the forehead. A ray at angle a (degrees) points along cos(a)*up + sin(a)*right:
0 is straight up, +90 towards the image-right side, +/-180 down to the chin.

Every point has a geometric fallback used when the parsing map does not support a measurement
(no nose pixels where the nose should be, a ray that leaves the head at once, a map of garbage from
random weights), so the result is always 110 finite points; `Landmarks110.fallback` says which.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidInput
from sfhq.annotations import LANDMARK_GROUP_TABLE

_GROUP_TABLE = LANDMARK_GROUP_TABLE  # sfhq/annotations.py: shared with the clients
LANDMARK_GROUPS: dict[str, range] = {name: range(start, stop) for name, start, stop in _GROUP_TABLE}
NUM_LANDMARKS = len(range(_GROUP_TABLE[-1][2]))

# Outer hairline: 21 rays 13.5 degrees apart covering 270 degrees, from the image-left side below
# the eyes, over the top of the head, to the image-right side (the 90 degrees around the chin are
# left out). Inner hairline: the 9 middle rays of the same fan (-54..+54 degrees), so on a bald
# head the inner points fall exactly on outer points.
OUTER_HAIRLINE_ANGLES = tuple(float(a) for a in np.linspace(-135.0, 135.0, 21))
INNER_HAIRLINE_ANGLES = OUTER_HAIRLINE_ANGLES[6:15]

# CelebAMask-HQ classes (parsing.CLASS_NAMES) the rays look for.
BACKGROUND, SKIN, NOSE, MOUTH, UPPER_LIP, LOWER_LIP, HAIR, HAT = 0, 1, 10, 11, 12, 13, 17, 18
HEAD_CLASSES = frozenset(
    {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17, 18}
)  # not: background, neck, necklace, cloth
HAIR_CLASSES = frozenset({HAIR, HAT})  # a hat hides the hairline the same way hair does

_RAY_STEP = 0.5  # pixels between samples along a ray


@dataclass(frozen=True)
class Landmarks110:
    points: np.ndarray  # (110, 2) float32
    fallback: np.ndarray  # (110,) bool: True where the geometric fallback was used


@dataclass(frozen=True)
class _FaceFrame:
    centre: np.ndarray
    right: np.ndarray
    up: np.ndarray
    interocular: float

    def direction(self, angle_deg: float) -> np.ndarray:
        a = np.deg2rad(angle_deg)
        return np.cos(a) * self.up + np.sin(a) * self.right


def _face_frame(lm: np.ndarray) -> _FaceFrame:
    eye_right_of_image = lm[42:48].mean(0)
    eye_left_of_image = lm[36:42].mean(0)
    across = eye_right_of_image - eye_left_of_image
    interocular = float(np.hypot(*across))
    if interocular < 1e-3:  # degenerate points: fall back to an upright frame sized by the jaw
        across = np.array([1.0, 0.0])
        interocular = max(float(np.ptp(lm[:, 0])) / 2.5, 1.0)
    right = across / np.hypot(*across)
    up = np.array([right[1], -right[0]])  # image y grows downwards
    return _FaceFrame((eye_left_of_image + eye_right_of_image) / 2, right, up, interocular)


def _sample(label_map: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes at (N, 2) points (nearest pixel) and whether each point is inside the map."""
    height, width = label_map.shape
    cols = np.rint(points[:, 0]).astype(np.int64)
    rows = np.rint(points[:, 1]).astype(np.int64)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    classes = np.full(len(points), -1, dtype=np.int64)
    classes[inside] = label_map[rows[inside], cols[inside]]
    return classes, inside


def _ray_samples(
    label_map: np.ndarray, origin: np.ndarray, direction: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distances and classes along a ray from `origin` until it leaves the map."""
    height, width = label_map.shape
    max_len = float(np.hypot(height, width) + np.hypot(origin[0] - width / 2, origin[1] - height / 2))
    distances = np.arange(0.0, max_len, _RAY_STEP)
    classes, inside = _sample(label_map, origin + distances[:, None] * direction)
    if not inside.any():
        return distances[:0], classes[:0]
    last_inside = int(np.nonzero(inside)[0][-1])
    first_inside = int(np.nonzero(inside)[0][0])
    return distances[first_inside : last_inside + 1], classes[first_inside : last_inside + 1]


def _region_exit(distances: np.ndarray, inside: np.ndarray, min_gap: float) -> float | None:
    """Distance at which a ray leaves a region for good: the first inside -> outside step followed
    by at least `min_gap` of outside (or the end of the samples). If the ray is still inside at
    the end, the last inside sample. None if the ray never was inside."""
    if len(distances) == 0 or not inside.any():
        return None
    gap_samples = max(int(np.ceil(min_gap / _RAY_STEP)), 1)
    for k in np.nonzero(inside[:-1] & ~inside[1:])[0]:
        if not inside[k + 1 : k + 1 + gap_samples].any():  # a shorter gap is a hole (e.g. in curly hair)
            return float((distances[k] + distances[k + 1]) / 2)
    # Still inside at the map's edge (hair cut off by the frame): the edge is the outline.
    return float(distances[np.nonzero(inside)[0][-1]])


def _hair_entry(
    distances: np.ndarray,
    is_head: np.ndarray,
    is_hair: np.ndarray,
    exit_distance: float,
    min_run: float,
    min_distance: float,
) -> float | None:
    """Distance of the first face -> hair step before the head's outline whose hair lasts at least
    `min_run` (or up to the outline), at least `min_distance` from the centre. None: no hair."""
    run_samples = max(int(np.ceil(min_run / _RAY_STEP)), 1)
    face = is_head & ~is_hair
    for k in np.nonzero(face[:-1] & is_hair[1:])[0]:
        boundary = float((distances[k] + distances[k + 1]) / 2)
        if boundary > exit_distance:
            break
        if boundary < min_distance:
            continue
        end = min(k + run_samples, len(distances) - 1)
        if is_hair[k + 1 : end + 1].all() or distances[end] >= exit_distance:
            return boundary
    return None


def _head_ellipse_radius(frame: _FaceFrame, lm: np.ndarray, angle_deg: float) -> float:
    """Geometric head outline used when the map gives no answer: an ellipse in the face frame,
    half as wide as the jaw line plus a margin, reaching 1.7 eye distances above the eyes and, below
    them, a little beyond the jaw."""
    rel = lm - frame.centre
    jaw_half_width = float(np.abs(rel[[0, 16]] @ frame.right).max())
    chin_depth = float(-(rel[8] @ frame.up))
    half_width = max(1.1 * jaw_half_width, 0.9 * frame.interocular)
    above = 1.7 * frame.interocular
    below = max(0.8 * chin_depth, 0.8 * frame.interocular)
    a = np.deg2rad(angle_deg)
    vertical = above if np.cos(a) >= 0 else below
    return float(1.0 / np.hypot(np.sin(a) / half_width, np.cos(a) / vertical))


def _hairlines(
    label_map: np.ndarray, lm: np.ndarray, frame: _FaceFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Outer (21) and inner (9) hairline points and their fallback flags."""
    iod = frame.interocular
    min_radius = 0.5 * iod  # no head outline is closer than this to the nose bridge
    min_gap = 0.15 * iod  # background shorter than this inside hair is a hole, not the outline
    min_hair_run = max(0.05 * iod, 1.0)  # a single stray hair pixel is noise

    outer = np.zeros((len(OUTER_HAIRLINE_ANGLES), 2))
    outer_fallback = np.zeros(len(OUTER_HAIRLINE_ANGLES), dtype=bool)
    inner_by_angle: dict[float, tuple[np.ndarray, bool]] = {}
    head_lut = np.zeros(256, dtype=bool)
    head_lut[list(HEAD_CLASSES)] = True
    hair_lut = np.zeros(256, dtype=bool)
    hair_lut[list(HAIR_CLASSES)] = True

    for index, angle in enumerate(OUTER_HAIRLINE_ANGLES):
        direction = frame.direction(angle)
        distances, classes = _ray_samples(label_map, frame.centre, direction)
        valid = classes >= 0
        is_head = np.zeros(len(classes), dtype=bool)
        is_head[valid] = head_lut[classes[valid]]
        exit_distance = _region_exit(distances, is_head, min_gap)
        trustworthy = (
            exit_distance is not None
            and exit_distance >= min_radius
            # The ray must actually run through the head up to the outline, not through a mess.
            and is_head[distances <= exit_distance].mean() >= 0.7
        )
        if trustworthy:
            outer[index] = frame.centre + exit_distance * direction
        else:
            exit_distance = _head_ellipse_radius(frame, lm, angle)
            outer[index] = frame.centre + exit_distance * direction
            outer_fallback[index] = True

        if angle in INNER_HAIRLINE_ANGLES:
            inner_point, inner_fb = outer[index], outer_fallback[index]  # bald / no hair: inner = outer
            if trustworthy:
                is_hair = np.zeros(len(classes), dtype=bool)
                is_hair[valid] = hair_lut[classes[valid]]
                hair_distance = _hair_entry(
                    distances, is_head, is_hair, exit_distance, min_hair_run, 0.3 * iod
                )
                if hair_distance is not None:
                    inner_point = frame.centre + hair_distance * direction
            inner_by_angle[angle] = (inner_point, inner_fb)

    inner = np.array([inner_by_angle[a][0] for a in INNER_HAIRLINE_ANGLES])
    inner_fallback = np.array([inner_by_angle[a][1] for a in INNER_HAIRLINE_ANGLES])
    return outer, outer_fallback, inner, inner_fallback


def _nose_wings(label_map: np.ndarray, lm: np.ndarray, frame: _FaceFrame) -> tuple[np.ndarray, np.ndarray]:
    """Four points on the outer edge of the nose wings (alae): image-left upper, lower, then
    image-right upper, lower. Measured across the nose at two heights, as the last nose pixel
    going outwards from the nose axis."""
    axis = lm[30] - lm[27]
    axis_len = float(np.hypot(*axis))
    down = axis / axis_len if axis_len > 1e-3 else -frame.up
    across = np.array([-down[1], down[0]])  # towards the image's right for an upright face
    if across @ frame.right < 0:
        across = -across
    nostril_half_width = max(float(np.hypot(*(lm[35] - lm[31]))) / 2, 0.1 * frame.interocular)
    # Heights: halfway between 29 and 30 (upper alar edge), halfway between 30 and 33 (alar base).
    levels = (
        ((lm[29] + lm[30]) / 2, 0.85),
        ((lm[30] + lm[33]) / 2, 1.0),
    )  # (axis point, expected width factor)
    points, fallback = [], []
    for side in (-1.0, 1.0):
        direction = side * across
        for axis_point, width_factor in levels:
            expected = width_factor * nostril_half_width
            distances = np.arange(0.0, 2.5 * expected, _RAY_STEP)
            classes, _ = _sample(label_map, axis_point + distances[:, None] * direction)
            is_nose = classes == NOSE
            found = None
            if is_nose[: max(int(0.3 * expected / _RAY_STEP), 1)].any():  # the ray starts on the nose
                distance = _region_exit(distances, is_nose, min_gap=0.15 * expected)
                if distance is not None and 0.5 * expected <= distance <= 2.0 * expected:
                    found = distance
            points.append(axis_point + (found if found is not None else expected) * direction)
            fallback.append(found is None)
    return np.array(points), np.array(fallback)


def _catmull_rom_midpoints(loop: np.ndarray) -> np.ndarray:
    """Midpoints of each segment of a closed centripetal Catmull-Rom curve through `loop`."""
    n = len(loop)
    mids = []
    for i in range(n):
        p0, p1, p2, p3 = loop[i - 1], loop[i], loop[(i + 1) % n], loop[(i + 2) % n]
        # Centripetal parametrisation (alpha = 0.5) avoids loops and cusps on uneven spacing.
        t0 = 0.0
        t1 = t0 + max(np.hypot(*(p1 - p0)), 1e-6) ** 0.5
        t2 = t1 + max(np.hypot(*(p2 - p1)), 1e-6) ** 0.5
        t3 = t2 + max(np.hypot(*(p3 - p2)), 1e-6) ** 0.5
        t = (t1 + t2) / 2
        a1 = (t1 - t) / (t1 - t0) * p0 + (t - t0) / (t1 - t0) * p1
        a2 = (t2 - t) / (t2 - t1) * p1 + (t - t1) / (t2 - t1) * p2
        a3 = (t3 - t) / (t3 - t2) * p2 + (t - t2) / (t3 - t2) * p3
        b1 = (t2 - t) / (t2 - t0) * a1 + (t - t0) / (t2 - t0) * a2
        b2 = (t3 - t) / (t3 - t1) * a2 + (t - t1) / (t3 - t1) * a3
        mids.append((t2 - t) / (t2 - t1) * b1 + (t - t1) / (t2 - t1) * b2)
    return np.array(mids)


def _inner_lip_extra(
    label_map: np.ndarray, lm: np.ndarray, frame: _FaceFrame
) -> tuple[np.ndarray, np.ndarray]:
    """Eight points halfway between consecutive inner-lip points 60..67 (clockwise from the
    image-left corner), snapped to the lip's inner edge in the map when it is close by."""
    inner = lm[60:68]
    guesses = _catmull_rom_midpoints(inner)
    mouth_width = max(float(np.hypot(*(lm[54] - lm[48]))), 1.0)
    reach = 0.08 * mouth_width
    offsets = np.arange(-reach, reach + 1e-9, _RAY_STEP)
    points, fallback = [], []
    for k, guess in enumerate(guesses):
        upper = k < 4  # 72..75 lie on the upper lip (60->64), 76..79 on the lower (64->60)
        down = -frame.up
        classes, _ = _sample(label_map, guess + offsets[:, None] * down)
        if upper:  # moving down: upper lip -> mouth opening or lower lip
            edges = np.nonzero((classes[:-1] == UPPER_LIP) & np.isin(classes[1:], (MOUTH, LOWER_LIP)))[0]
        else:  # moving down: mouth opening or upper lip -> lower lip
            edges = np.nonzero(np.isin(classes[:-1], (MOUTH, UPPER_LIP)) & (classes[1:] == LOWER_LIP))[0]
        if len(edges):
            shifts = (offsets[edges] + offsets[edges + 1]) / 2
            shift = shifts[np.argmin(np.abs(shifts))]
            points.append(guess + shift * down)
            fallback.append(False)
        else:
            points.append(guess)
            fallback.append(True)
    return np.array(points), np.array(fallback)


def compute_landmarks110(landmarks68, label_map: np.ndarray) -> Landmarks110:
    """The 110 points and which of them fell back to geometry (see the module docstring)."""
    lm = np.asarray(landmarks68, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks68 must have shape (68, 2), got {lm.shape}")
    if not np.isfinite(lm).all():
        raise ValueError("landmarks68 contain NaN or infinity")
    labels = np.asarray(label_map)
    if labels.ndim != 2 or labels.shape[0] < 8 or labels.shape[1] < 8:
        raise ValueError(f"label_map must be a 2-D map of at least 8x8, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label_map must hold integer class indices, got {labels.dtype}")
    labels = labels.astype(np.uint8, copy=False) if labels.dtype != np.uint8 else labels

    frame = _face_frame(lm)
    wings, wings_fb = _nose_wings(labels, lm, frame)
    lips, lips_fb = _inner_lip_extra(labels, lm, frame)
    outer, outer_fb, inner, inner_fb = _hairlines(labels, lm, frame)
    points = np.concatenate([lm, wings, lips, inner, outer]).astype(np.float32)
    fallback = np.concatenate([np.zeros(68, dtype=bool), wings_fb, lips_fb, inner_fb, outer_fb])
    if not np.isfinite(points).all():  # cannot happen with finite inputs; never ship NaN regardless
        raise ArithmeticError("110-point computation produced non-finite values")
    return Landmarks110(points=points, fallback=fallback)


def extend_landmarks(landmarks68, label_map: np.ndarray) -> np.ndarray:
    """68 points + parsing map (same pixel frame) -> (110, 2) float32 in that frame."""
    return compute_landmarks110(landmarks68, label_map).points


LANDMARK_CONVENTIONS = ("sfhq", "pixel_centres")
DEFAULT_LANDMARK_CONVENTION = "sfhq"  # docs/landmarks.md, "Coordinate convention"


def rescale_points(
    points: np.ndarray,
    from_size: tuple[int, int],
    to_size: tuple[int, int],
    convention: str = "pixel_centres",
) -> np.ndarray:
    """Map pixel coordinates between two resolutions of the same image ((width, height) sizes).

    `pixel_centres`: centres aligned, `(x + 0.5) * s - 0.5` (geometrically exact). `sfhq`: `x * s`,
    what SFHQ most likely did when it "upscaled" 256-px landmarks to 1024 (1.5 px up-left of the
    exact mapping at 4x)."""
    if convention not in LANDMARK_CONVENTIONS:
        raise InvalidInput(
            f"landmark_convention: {convention!r} is not one of {', '.join(LANDMARK_CONVENTIONS)}"
        )
    pts = np.asarray(points, dtype=np.float64)
    sx = to_size[0] / from_size[0]
    sy = to_size[1] / from_size[1]
    out = np.empty_like(pts)
    if convention == "sfhq":
        out[:, 0] = pts[:, 0] * sx
        out[:, 1] = pts[:, 1] * sy
    else:
        out[:, 0] = (pts[:, 0] + 0.5) * sx - 0.5
        out[:, 1] = (pts[:, 1] + 0.5) * sy - 0.5
    return out.astype(np.float32)
