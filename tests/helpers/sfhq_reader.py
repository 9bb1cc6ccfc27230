"""A reader that knows only SFHQ's published conventions (docs/sfhq-format.md, "On-disk layout" and
the file-format sections), nothing of this project: what an SFHQ user's own script does with a part.

Stems are the file names of `images/`; each stem has `segmentations/<stem>.png` (one channel of class
indices 0..18 via `convert("L")`), `landmarks/<stem>.npz` (key `landmarks`, (110, 2), x then y in
image pixels) and `pretrained_features/<stem>.pickle` (a plain dict {model key: (1, D) array}). The
pickles are read as numpy 1.x would read them: only the names numpy 1.x has are resolvable.
"""

from __future__ import annotations

import importlib
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

STEM = re.compile(r"^SFHQ_pt(\d+)_(\d{8})$")


class Numpy1Unpickler(pickle.Unpickler):
    """Resolves only the globals a numpy 1.x installation has for arrays (numpy 1.25 and older have
    no `numpy._core`); anything else fails, as it would there."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): importlib.import_module(
            "numpy._core.multiarray"
        )._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"numpy 1.x has no {module}.{name}") from None


@dataclass
class SfhqItem:
    stem: str
    part: int
    image: Image.Image
    segmentation: np.ndarray
    landmarks: np.ndarray
    features: dict[str, np.ndarray]


def read_sfhq_part(root: Path) -> list[SfhqItem]:
    items = []
    for image_path in sorted((root / "images").glob("*.jpg")):
        stem = image_path.stem
        match = STEM.match(stem)
        assert match, f"{stem} is not an SFHQ stem"
        with Image.open(image_path) as opened:
            assert opened.format == "JPEG"
            image = opened.convert("RGB")
        with Image.open(root / "segmentations" / f"{stem}.png") as seg:
            segmentation = np.asarray(seg.convert("L"))
        landmarks = np.load(root / "landmarks" / f"{stem}.npz")["landmarks"]
        with open(root / "pretrained_features" / f"{stem}.pickle", "rb") as handle:
            features = Numpy1Unpickler(io.BytesIO(handle.read())).load()
        items.append(SfhqItem(stem, int(match.group(1)), image, segmentation, landmarks, features))
    return items
