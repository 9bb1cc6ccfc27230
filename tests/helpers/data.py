"""The images in tests/data/: real faces for tests, benchmarks and reliability scripts.

A missing file raises `MissingTestData` (a loud error, never a skip): the data ships with the
repository, so its absence means a broken checkout.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
FACES = DATA / "faces"
INSPIRATION = DATA / "inspiration"
FACE_COUNT = 10  # sfhq_sample_00..09


class MissingTestData(FileNotFoundError):
    """A file of tests/data/ is missing: the checkout is incomplete."""


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise MissingTestData(
            f"test data {path} is missing: tests/data/ ships with the repository (see its README)"
        )
    return path


def face_path(index: int) -> Path:
    """tests/data/faces/sfhq_sample_0N.jpg: a 512x512 photoreal, roughly FFHQ-aligned face."""
    return _existing(FACES / f"sfhq_sample_{index:02d}.jpg")


def face_bytes(index: int) -> bytes:
    return face_path(index).read_bytes()


def inspiration_path(name: str) -> Path:
    """tests/data/inspiration/<name>.jpg (sd_00..05, render3d_00..05): unaligned inspiration images."""
    return _existing(INSPIRATION / (name if name.endswith(".jpg") else f"{name}.jpg"))


def all_faces() -> list[Path]:
    return [face_path(i) for i in range(FACE_COUNT)]


def all_inspiration() -> list[Path]:
    paths = sorted(INSPIRATION.glob("*.jpg"))
    if len(paths) < 12:
        raise MissingTestData(f"{INSPIRATION} holds {len(paths)} images; the repository ships 12")
    return paths
