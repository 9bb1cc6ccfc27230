"""Head pose (yaw, pitch, roll in degrees) from the 68 iBUG landmarks: PnP on a generic 3D face.

The 3D model (`GENERIC_FACE_68`) is ours: an anthropometric sketch of an average adult face in
millimetres, built from a few proportions (eye distance, nose length, mouth width, jaw ellipse) and
a depth profile (the nose tip nearest the camera, the jaw's ends at the ears farthest). It is not a
fitted statistical model; its errors on real faces come mostly from faces that differ from it (a
long nose reads as a little pitch), which the docs measure (docs/landmarks.md, "Head pose").

Frames and signs (all in the image's camera frame: x to the image's right, y down, z away from the
camera; a frontal face looking into the camera is yaw = pitch = roll = 0):

* **yaw**: rotation about the vertical axis; positive when the face turns towards the image's right
  (the subject's left);
* **pitch**: rotation about the horizontal axis; positive when the face tilts up (chin forward);
* **roll**: rotation in the image plane; positive when the face turns clockwise on screen.

`R = Rz(roll) @ Ry(yaw) @ Rx(pitch)` takes model coordinates to camera coordinates. The camera is
a pinhole with focal length = the image's side (about 53° field of view) and its principal point
at the image centre; FFHQ-aligned images crop a portrait that a real lens saw from a similar
distance, and yaw/pitch change by well under a degree for focal lengths between 0.7x and 2x that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from services.common.errors import InvalidInput

__all__ = ["GENERIC_FACE_68", "HeadPose", "estimate_head_pose", "project_model", "rotation_matrix"]


def _generic_face() -> np.ndarray:
    """The 68 points of the generic face (mm; x right, y down, z away from the camera; origin near
    the nose tip's base)."""
    points = np.zeros((68, 3))
    # jaw 0-16: an ellipse from ear level (image-left) round the chin to ear level (image-right)
    for i, a in enumerate(np.linspace(-math.pi / 2, math.pi / 2, 17)):
        points[i] = (72 * math.sin(a), -28 + 104 * math.cos(a), 50 * (1 - math.cos(a)))
    # eyebrows 17-21 (image-left, outer to inner) and 22-26 (mirror, inner to outer)
    brow_x = np.array([-60.0, -49.0, -37.0, -25.0, -13.0])
    brow_y = np.array([-38.0, -45.0, -47.0, -46.0, -42.0])
    brow_z = np.array([30.0, 17.0, 9.0, 5.0, 3.0])
    points[17:22] = np.stack([brow_x, brow_y, brow_z], axis=1)
    points[22:27] = np.stack([-brow_x[::-1], brow_y[::-1], brow_z[::-1]], axis=1)
    # nose bridge 27-30 (top to tip) and lower nose 31-35 (image-left to image-right)
    points[27:31] = [(0, -34, 2), (0, -23, -8), (0, -12, -18), (0, 0, -31)]
    points[31:36] = [(-15, 9, -9), (-8, 11, -15), (0, 12, -19), (8, 11, -15), (15, 9, -9)]
    # eyes: 36-41 image-left (outer corner, upper, upper, inner corner, lower, lower), 42-47 mirrored
    right_eye = np.array(
        [(-45, -25, 20), (-37, -30, 12), (-27, -30, 10), (-19, -24, 9), (-27, -21, 11), (-37, -21, 13)],
        dtype=float,
    )
    points[36:42] = right_eye
    left = right_eye.copy()
    left[:, 0] *= -1
    points[42:48] = left[[3, 2, 1, 0, 5, 4]]  # inner corner first, clockwise on screen
    # outer lip 48-59 (clockwise from the image-left corner), inner lip 60-67
    outer = [(-25, 33), (-16, 29), (-6, 27), (0, 28), (6, 27), (16, 29), (25, 33)]
    outer += [(16, 40), (6, 43), (0, 44), (-6, 43), (-16, 40)]
    inner = [(-21, 33), (-7, 32), (0, 32.5), (7, 32), (21, 33), (7, 35), (0, 35.5), (-7, 35)]
    for index, (x, y) in enumerate(outer):
        points[48 + index] = (x, y, -12 + 17 * (x / 25) ** 2)
    for index, (x, y) in enumerate(inner):
        points[60 + index] = (x, y, -9 + 14 * (x / 21) ** 2)
    return points


GENERIC_FACE_68 = _generic_face()
GENERIC_FACE_68.setflags(write=False)


@dataclass(frozen=True)
class HeadPose:
    yaw: float
    pitch: float
    roll: float

    def as_dict(self) -> dict[str, float]:
        return {"yaw": round(self.yaw, 2), "pitch": round(self.pitch, 2), "roll": round(self.roll, 2)}


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """`Rz(roll) @ Ry(yaw) @ Rx(pitch)` (degrees), with this module's signs."""
    y, p, r = (math.radians(v) for v in (yaw, pitch, roll))
    # pitch up (chin forward) moves the chin towards the camera: a rotation by -p about x
    rx = np.array([[1, 0, 0], [0, math.cos(p), math.sin(p)], [0, -math.sin(p), math.cos(p)]])
    # yaw towards the image's right moves the nose tip to +x: a rotation by -y about the (down) y axis
    ry = np.array([[math.cos(y), 0, -math.sin(y)], [0, 1, 0], [math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _angles(rotation: np.ndarray) -> HeadPose:
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, rotation[2, 0]))))
    pitch = math.degrees(math.atan2(-rotation[2, 1], rotation[2, 2]))
    roll = math.degrees(math.atan2(rotation[1, 0], rotation[0, 0]))
    return HeadPose(yaw=yaw, pitch=pitch, roll=roll)


def camera_matrix(image_size: tuple[int, int]) -> np.ndarray:
    width, height = image_size
    focal = float(max(width, height))
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=np.float64)


def project_model(
    pose: HeadPose,
    image_size: tuple[int, int],
    *,
    distance_mm: float = 600.0,
    model: np.ndarray | None = None,
) -> np.ndarray:
    """The generic face at `pose`, `distance_mm` in front of the camera, projected to pixels [68, 2]
    (synthetic landmarks of known rotation: the tests and docs/landmarks.md measure with them)."""
    points = GENERIC_FACE_68 if model is None else model
    rotation = rotation_matrix(pose.yaw, pose.pitch, pose.roll)
    rvec, _ = cv2.Rodrigues(rotation)
    tvec = np.array([0.0, 0.0, distance_mm])
    pixels, _ = cv2.projectPoints(points.astype(np.float64), rvec, tvec, camera_matrix(image_size), None)
    return pixels.reshape(-1, 2)


def estimate_head_pose(landmarks68: np.ndarray, image_size: tuple[int, int]) -> HeadPose:
    """yaw, pitch, roll (degrees) of the face whose 68 points (pixels of an image `image_size` =
    (width, height)) are given. InvalidInput for anything but 68 finite points."""
    points = np.asarray(landmarks68, dtype=np.float64)
    if points.shape[0] >= 68 and points.ndim == 2 and points.shape[1] == 2:
        points = points[:68]
    if points.shape != (68, 2) or not np.isfinite(points).all():
        raise InvalidInput(f"landmarks68 must be 68 finite (x, y) points, got shape {points.shape}")
    if image_size[0] <= 0 or image_size[1] <= 0:
        raise InvalidInput(f"image_size must be positive, got {image_size}")
    camera = camera_matrix(image_size)
    model = GENERIC_FACE_68.astype(np.float64)
    # EPnP gives a start that never lands on the mirrored solution; Levenberg-Marquardt refines it.
    ok, rvec, tvec = cv2.solvePnP(model, points, camera, None, flags=cv2.SOLVEPNP_EPNP)
    if not ok or tvec[2, 0] <= 0:
        tvec = np.array([[0.0], [0.0], [camera[0, 0] * 150.0 / max(np.ptp(points[:, 0]), 1.0)]])
        rvec = np.zeros((3, 1))
    ok, rvec, tvec = cv2.solvePnP(
        model, points, camera, None, rvec, tvec, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE
    )
    if not ok:
        raise InvalidInput("head pose: the 68 points admit no camera pose")
    rotation, _ = cv2.Rodrigues(rvec)
    return _angles(rotation)
