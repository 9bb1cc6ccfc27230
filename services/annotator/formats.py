"""SFHQ's annotation file formats (docs/sfhq-format.md, "Landmarks" and "Segmentation maps"), as bytes for the dataset writer.

* `segmentations/<stem>.png`: single-channel (mode L) 8-bit PNG of class indices 0..18;
  SFHQ's readers open it with `PIL.Image.open(path).convert("L")`.
* `landmarks/<stem>.npz`: key `landmarks`, (110, 2) float32 (x, y) in image pixel coordinates;
  SFHQ's readers do `np.load(path)["landmarks"]`.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import PIL.Image

from services.annotator.landmarks110 import NUM_LANDMARKS
from services.annotator.parsing import NUM_CLASSES
from services.common.errors import InvalidInput


class FormatError(InvalidInput):
    """Data that does not fit SFHQ's file formats."""


def segmentation_to_png(label_map: np.ndarray, compress_level: int = 1) -> bytes:
    """A label map as SFHQ's single-channel PNG; zlib level 1 by default: 4x faster than level 6
    and, for label maps (long runs), barely larger (bench/codecs.py)."""
    labels = np.asarray(label_map)
    if labels.ndim != 2 or labels.size == 0:
        raise FormatError(f"a segmentation must be a 2-D label map, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise FormatError(f"a segmentation must hold integer class indices, got {labels.dtype}")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise FormatError(
            f"class indices must be in [0, {NUM_CLASSES - 1}], got [{labels.min()}, {labels.max()}]"
        )
    buf = io.BytesIO()
    PIL.Image.fromarray(labels.astype(np.uint8), "L").save(
        buf, format="PNG", optimize=False, compress_level=compress_level
    )
    return buf.getvalue()


def read_segmentation_png(data: bytes) -> np.ndarray:
    with PIL.Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"))


def landmarks_to_npz(landmarks: np.ndarray) -> bytes:
    points = np.asarray(landmarks, dtype=np.float32)
    if points.shape != (NUM_LANDMARKS, 2):
        raise FormatError(f"landmarks must have shape ({NUM_LANDMARKS}, 2), got {points.shape}")
    if not np.isfinite(points).all():
        raise FormatError("landmarks contain NaN or infinity")
    buf = io.BytesIO()
    np.savez(buf, landmarks=points)
    return buf.getvalue()


def read_landmarks_npz(data: bytes) -> np.ndarray:
    """The (N, 2) float32 array of an SFHQ landmarks file (never unpickles anything)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            if "landmarks" not in archive.files:
                raise FormatError(f"npz has no 'landmarks' array (keys: {archive.files})")
            points = archive["landmarks"]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        if isinstance(exc, FormatError):
            raise
        raise FormatError(f"not a readable landmarks .npz: {exc}") from exc
    if points.ndim != 2 or points.shape[1] != 2:
        raise FormatError(f"landmarks must be (N, 2), got {points.shape}")
    return points.astype(np.float32, copy=False)
