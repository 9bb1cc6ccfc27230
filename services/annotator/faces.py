"""What the annotator does with decoded images, free of gRPC and Redis: detect, align, annotate.

* `detect`: every face, largest first, with its 68 points (dlib, optionally fused with FAN).
* `align`: the largest face, FFHQ-aligned (docs/alignment.md), with its points in both frames,
  the source -> aligned affine map and the number of faces seen.
* `annotate_batch`: per image, the 19-class BiSeNet parsing map at the image's size and the 110
  landmarks (docs/landmarks.md), both computed on a `working_size` copy as SFHQ did (256 px). The
  parser runs once over the whole batch; an image that fails gets its exception in its place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import PIL.Image

from services.annotator.align import AlignBackend, align_face, ffhq_transform, map_landmarks
from services.annotator.detect import FaceLandmarker, FaceLandmarks
from services.annotator.landmarks110 import DEFAULT_LANDMARK_CONVENTION, compute_landmarks110, rescale_points
from services.annotator.overlay import render_overlay
from services.annotator.parsing import FaceParser, upsample_labels
from services.annotator.pose import HeadPose, estimate_head_pose
from services.common.errors import InvalidInput, PermanentError
from services.common.model_holder import LazyModel

DEFAULT_OUTPUT_SIZE = 1024  # FFHQ
MAX_TRANSFORM_SIZE = 8192  # an 8192^2 RGB intermediate is already 200 MB
DEFAULT_WORKING_SIZE = 256  # SFHQ parsed and placed landmarks on a 256-px copy
OUTPUT_SIZE_RANGE = (16, 4096)
WORKING_SIZE_RANGE = (64, 1024)


def check_range(value: int, bounds: tuple[int, int], what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not bounds[0] <= value <= bounds[1]:
        raise InvalidInput(f"{what} must be an integer in {bounds[0]}..{bounds[1]}, got {value!r}")
    return value


def default_transform_size(output_size: int) -> int:
    """FFHQ supersamples 4x (1024 from 4096); larger outputs stop at 4096 (or their own size)."""
    return max(output_size, min(4 * output_size, 4096))


def resize_transform(transform: np.ndarray, from_size: int, to_size: int) -> np.ndarray:
    """Follow a square image's resize with a 2x3 map (pixel centres aligned)."""
    k = to_size / from_size
    out = np.asarray(transform, dtype=np.float64) * k
    out[:, 2] += 0.5 * k - 0.5
    return out


@dataclass(frozen=True)
class AlignedFace:
    image: PIL.Image.Image
    landmarks68: np.ndarray  # (68, 2) in the aligned image
    source_landmarks68: np.ndarray  # (68, 2) in the source image
    transform: np.ndarray  # (2, 3) source pixel -> aligned pixel
    face_count: int

    def resized(self, size: int) -> AlignedFace:
        """The same face at another output size, its points and map following."""
        transform = resize_transform(self.transform, self.image.width, size)
        image = self.image.resize((size, size), PIL.Image.Resampling.LANCZOS)
        points = map_landmarks(self.source_landmarks68, transform).astype(np.float32)
        return AlignedFace(image, points, self.source_landmarks68, transform, self.face_count)


@dataclass(frozen=True)
class Annotation:
    label_map: np.ndarray  # uint8 (H, W) at the image's size
    landmarks: np.ndarray  # (110, 2) float32 in image pixel coordinates
    face_count: int
    fallback_points: int  # extra points that used their geometric fallback
    overlay: PIL.Image.Image | None = None
    pose: HeadPose | None = None  # from the 68 points (services.annotator.pose); None: PnP found none

    def pose_record(self) -> dict[str, float] | None:
        return self.pose.as_dict() if self.pose is not None else None


@dataclass
class _Pending:
    image: PIL.Image.Image
    small: PIL.Image.Image
    face: FaceLandmarks | None = None
    error: PermanentError | None = None
    labels: np.ndarray | None = field(default=None, repr=False)


class FaceAnnotator:
    """Detection, alignment and annotation over the process's landmarker and parser."""

    def __init__(
        self,
        landmarker: LazyModel[FaceLandmarker],
        parser: LazyModel[FaceParser],
        align_backend: AlignBackend = "opencv",
    ) -> None:
        self.landmarker = landmarker
        self.parser = parser
        self.align_backend: AlignBackend = align_backend  # services.annotator.align: "opencv" or "exact"

    def detect(self, image: PIL.Image.Image) -> list[FaceLandmarks]:
        return self.landmarker.get().detect_all(image)

    def align(
        self,
        image: PIL.Image.Image,
        output_size: int = DEFAULT_OUTPUT_SIZE,
        transform_size: int | None = None,
        enable_padding: bool = True,
    ) -> AlignedFace:
        output_size = check_range(output_size, OUTPUT_SIZE_RANGE, "output_size")
        transform_size = default_transform_size(output_size) if transform_size is None else transform_size
        check_range(transform_size, (output_size, MAX_TRANSFORM_SIZE), "transform_size")
        face = self.landmarker.get().locate(image)  # NoFaceFound: "no face found"
        aligned = align_face(
            image, face.landmarks68, output_size, transform_size, enable_padding, backend=self.align_backend
        )
        transform = ffhq_transform(face.landmarks68, output_size, transform_size, image_size=image.size)
        points = map_landmarks(face.landmarks68, transform).astype(np.float32)
        return AlignedFace(aligned, points, face.landmarks68, transform, face.face_count)

    def annotate_batch(
        self,
        images: Sequence[PIL.Image.Image],
        *,
        detect_faces: bool = False,
        working_size: int = DEFAULT_WORKING_SIZE,
        canonical_fallback: bool = False,
        with_overlay: bool = False,
        landmark_convention: str = DEFAULT_LANDMARK_CONVENTION,
    ) -> list[Annotation | PermanentError]:
        """One result per image, or the error that image met (the others are unaffected)."""
        working_size = check_range(working_size, WORKING_SIZE_RANGE, "working_size")
        landmarker = self.landmarker.get()
        pending = []
        for image in images:
            small = image
            if image.size != (working_size, working_size):
                small = image.resize((working_size, working_size), PIL.Image.Resampling.BILINEAR)
            item = _Pending(image, small)
            try:
                item.face = landmarker.locate(small, detect=detect_faces, allow_canonical=canonical_fallback)
            except PermanentError as error:
                item.error = error
            pending.append(item)

        ready = [item for item in pending if item.error is None]
        if ready:
            smalls = [item.small for item in ready]
            label_maps = self.parser.run(lambda parser: parser.parse_batch(smalls, working_size))
            for item, labels in zip(ready, label_maps, strict=True):
                item.labels = labels

        results: list[Annotation | PermanentError] = []
        for item in pending:
            if item.error is not None:
                results.append(item.error)
                continue
            try:
                results.append(self._finish(item, working_size, with_overlay, landmark_convention))
            except PermanentError as error:
                results.append(error)
        return results

    @staticmethod
    def _finish(item: _Pending, working_size: int, with_overlay: bool, convention: str) -> Annotation:
        assert item.face is not None and item.labels is not None
        extended = compute_landmarks110(item.face.landmarks68, item.labels)
        points = rescale_points(extended.points, (working_size, working_size), item.image.size, convention)
        label_map = upsample_labels(item.labels, item.image.size)
        overlay = render_overlay(item.image, label_map, points) if with_overlay else None
        try:
            pose: HeadPose | None = estimate_head_pose(item.face.landmarks68, item.small.size)
        except InvalidInput:
            pose = None
        return Annotation(
            label_map, points, item.face.face_count, int(extended.fallback.sum()), overlay, pose
        )
