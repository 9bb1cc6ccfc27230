"""Index a downloaded SFHQ part with its released CLIP features (no GPU: the image tower never runs).

Accepted inputs (docs/sfhq-format.md, "On-disk layout"):
- a folder `SFHQ_partN/` with `images/`, `pretrained_features/`, `landmarks/`, `segmentations/`;
- the Kaggle layout, where each of those folders is nested twice (`images/images/*.jpg`);
- either of them under one extra top-level folder, or as the downloaded `.zip` itself.
Files are classified by the name of the folder holding them, so sample folders ("tiny sample (30 images)")
are ignored. Item ids are the stems (`SFHQ_pt2_00070336`), unique across parts by SFHQ's naming.

The feature pickles come from strangers: they are read ONLY through
`services.common.safe_pickle.load_feature_pickle`, which admits dicts of numpy arrays and nothing else.
Symbolic links (files or folders) are never followed, and zip members whose names could escape the
archive's folder (absolute, `..`, backslashes, control characters) are skipped; both are reported.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from services.common.errors import InvalidInput
from services.common.safe_pickle import UnsafePickleError, load_feature_pickle
from services.search.clip_model import FEATURE_KEY
from services.search.index import IndexInputError, ItemMeta, VectorIndex

log = logging.getLogger(__name__)

KINDS = ("images", "pretrained_features", "landmarks", "segmentations")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
MAX_PICKLE_BYTES = 1 << 20  # SFHQ's pickles hold a few (1, D) arrays: ~10 KB. Anything huge is refused.
BATCH = 10_000
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f\\]")
_PART_FROM_FOLDER = re.compile(r"(?:sfhq[_-]?part|part[_-]?)(\d+)", re.IGNORECASE)
_PART_FROM_STEM = re.compile(r"^SFHQ_pt(\d+)_")
REPORT_LIMIT = 50  # names listed per problem kind; the counts are always complete


class SfhqImportError(InvalidInput):
    """The path is not an SFHQ part (no images/ + pretrained_features/ found), or unreadable."""


@dataclass
class ImportReport:
    root: str
    source: str = ""
    part: int | None = None
    layout: str = ""  # "plain", "kaggle-nested" or "zip"
    images: int = 0
    indexed: int = 0
    with_landmarks: int = 0
    with_segmentation: int = 0
    missing_features: int = 0
    bad_pickles: int = 0  # refused by the restricted unpickler or malformed
    missing_key: int = 0  # pickle lacks the feature key
    wrong_dim: int = 0
    skipped_symlinks: int = 0
    skipped_unsafe_names: int = 0
    duplicates: int = 0  # the same stem twice (e.g. images/ and images/images/)
    seconds: float = 0.0
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few names per problem, for the log

    def note(self, problem: str, name: str) -> None:
        setattr(self, problem, getattr(self, problem) + 1)
        listed = self.examples.setdefault(problem, [])
        if len(listed) < REPORT_LIMIT:
            listed.append(name)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Entry:
    """One file of the part, wherever it lives (folder or zip)."""

    kind: str
    stem: str
    name: str  # relative path inside the part, for reports
    nested: bool
    read: Callable[[], bytes]  # at most MAX_PICKLE_BYTES + 1 bytes, so oversize files are detected
    uri: str


def import_sfhq(
    path: str | os.PathLike[str],
    index: VectorIndex,
    *,
    feature_key: str = FEATURE_KEY,
    source: str | None = None,
    part: int | None = None,
) -> ImportReport:
    """Add every image of the SFHQ part at `path` that has a readable `feature_key` feature to `index`."""
    started = time.perf_counter()
    report = ImportReport(root=str(Path(path)))
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    metas: list[ItemMeta] = []
    with index.bulk():
        for stem, vector, meta in sfhq_items(
            path, report, feature_key=feature_key, source=source, part=part, dim=index.dim
        ):
            ids.append(stem)
            vectors.append(vector)
            metas.append(meta)
            if len(ids) >= BATCH:
                report.indexed += _flush(index, ids, vectors, metas, report)
        report.indexed += _flush(index, ids, vectors, metas, report)
    report.seconds = time.perf_counter() - started
    return report


def sfhq_items(
    path: str | os.PathLike[str],
    report: ImportReport,
    *,
    feature_key: str = FEATURE_KEY,
    source: str | None = None,
    part: int | None = None,
    dim: int | None = None,
) -> Iterator[tuple[str, np.ndarray, ItemMeta]]:
    """(stem, feature vector, metadata) of every image of the SFHQ part at `path` with a readable
    feature, in stem order; `report` counts what was found and what was skipped, and why. `dim`:
    vectors of another size are skipped (None: every size is passed on, for the index to judge)."""
    root = Path(path)
    if root.is_file() and zipfile.is_zipfile(root):
        report.layout = "zip"
        with zipfile.ZipFile(root) as archive:
            yield from _items(_zip_entries(root, archive, report), report, feature_key, source, part, dim)
        return
    if not root.is_dir():
        raise SfhqImportError(f"{root} is neither a folder nor a zip archive")
    yield from _items(_folder_entries(root, report), report, feature_key, source, part, dim)


def probe_feature_dim(
    path: str | os.PathLike[str], feature_key: str = FEATURE_KEY, tries: int = 20
) -> int | None:
    """The dimension of `feature_key` in the first readable pickle of the part (None if none of the first
    `tries` pickles has it)."""
    root = Path(path)
    scratch = ImportReport(root=str(root))

    def first_dim(entries: Iterator[_Entry]) -> int | None:
        pickles = (entry for entry in entries if entry.kind == "pretrained_features")
        for _, entry in zip(range(tries), pickles, strict=False):
            try:
                features = load_feature_pickle(entry.read()[:MAX_PICKLE_BYTES])
            except (UnsafePickleError, ValueError, EOFError, OSError):
                continue
            if feature_key in features:
                return int(np.asarray(features[feature_key]).size)
        return None

    if root.is_file() and zipfile.is_zipfile(root):
        with zipfile.ZipFile(root) as archive:
            return first_dim(_zip_entries(root, archive, scratch))
    return first_dim(_folder_entries(root, scratch)) if root.is_dir() else None


def _items(
    entries: Iterator[_Entry],
    report: ImportReport,
    feature_key: str,
    source: str | None,
    part: int | None,
    dim: int | None,
) -> Iterator[tuple[str, np.ndarray, ItemMeta]]:
    by_kind: dict[str, dict[str, _Entry]] = {kind: {} for kind in KINDS}
    nested = False
    for entry in entries:
        table = by_kind[entry.kind]
        if entry.stem in table:
            report.note("duplicates", entry.name)
            continue
        table[entry.stem] = entry
        nested |= entry.nested
    images, features = by_kind["images"], by_kind["pretrained_features"]
    if not images or not features:
        raise SfhqImportError(
            f"{report.root}: no images/ and pretrained_features/ folders with files found "
            "(expected an SFHQ part, plain or Kaggle-nested)"
        )
    report.layout = report.layout or ("kaggle-nested" if nested else "plain")
    report.part = part or _detect_part(report.root, images)
    report.source = source or (f"sfhq_part{report.part}" if report.part else "sfhq")
    report.images = len(images)
    report.with_landmarks = sum(stem in by_kind["landmarks"] for stem in images)
    report.with_segmentation = sum(stem in by_kind["segmentations"] for stem in images)
    for stem in sorted(images):
        vector = _read_feature(features.get(stem), stem, feature_key, dim, report)
        if vector is not None:
            yield stem, vector, ItemMeta(source=report.source, image_uri=images[stem].uri)
    log.info(
        "SFHQ part %s (%s, %s): %d images, problems: %s",
        report.root,
        report.layout,
        report.source,
        report.images,
        {k: getattr(report, k) for k in report.examples},
    )


def _flush(index: VectorIndex, ids: list, vectors: list, metas: list, report: ImportReport) -> int:
    if not ids:
        return 0
    count = len(ids)
    try:
        index.add(ids, np.stack(vectors), metas)
    except IndexInputError:
        # One bad vector (e.g. all zeros) must not sink a batch of thousands: add them one by one.
        count = 0
        for item_id, vector, meta in zip(ids, vectors, metas, strict=True):
            try:
                index.add([item_id], vector[None, :], [meta])
                count += 1
            except IndexInputError as exc:
                report.note("bad_pickles", f"{item_id}: {exc}")
    ids.clear()
    vectors.clear()
    metas.clear()
    return count


def _read_feature(
    entry: _Entry | None, stem: str, feature_key: str, dim: int | None, report: ImportReport
) -> np.ndarray | None:
    if entry is None:
        report.note("missing_features", stem)
        return None
    try:
        data = entry.read()
        if len(data) > MAX_PICKLE_BYTES:
            raise UnsafePickleError(f"{len(data)} bytes is far larger than a feature pickle")
        features = load_feature_pickle(data)
    except (UnsafePickleError, ValueError, EOFError, OSError, zipfile.BadZipFile) as exc:
        report.note("bad_pickles", f"{entry.name}: {exc}")
        return None
    if feature_key not in features:
        report.note("missing_key", f"{entry.name}: has {sorted(features)}")
        return None
    vector = np.asarray(features[feature_key], dtype=np.float32).reshape(-1)  # SFHQ stores (1, D)
    if dim is not None and vector.size != dim:
        report.note("wrong_dim", f"{entry.name}: {vector.size}-d, the index is {dim}-d")
        return None
    return vector


def _detect_part(root: str, images: dict[str, _Entry]) -> int | None:
    match = _PART_FROM_FOLDER.search(Path(root).name)
    if match:
        return int(match.group(1))
    parts = {int(m.group(1)) for stem in list(images)[:1000] if (m := _PART_FROM_STEM.match(stem))}
    return parts.pop() if len(parts) == 1 else None


def _classify(parts: tuple[str, ...]) -> tuple[str, bool] | None:
    """(kind, nested) for a file at relative `parts`, or None when it is not part of the SFHQ layout."""
    if len(parts) < 2 or parts[-2] not in KINDS:
        return None
    kind = parts[-2]
    return kind, len(parts) >= 3 and parts[-3] == kind


def _wanted(kind: str, filename: str) -> bool:
    suffix = PurePosixPath(filename).suffix.lower()
    return {
        "images": suffix in IMAGE_SUFFIXES,
        "pretrained_features": suffix == ".pickle",
        "landmarks": suffix == ".npz",
        "segmentations": suffix == ".png",
    }[kind]


def _folder_entries(root: Path, report: ImportReport) -> Iterator[_Entry]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in list(dirnames):
            if (here / name).is_symlink():  # os.walk lists linked folders but does not enter them
                report.note("skipped_symlinks", str((here / name).relative_to(root)))
                dirnames.remove(name)
        relative = here.relative_to(root).parts
        for name in filenames:
            parts = (*relative, name)
            classified = _classify(parts)
            if classified is None:
                continue
            kind, nested = classified
            if not _wanted(kind, name):
                continue
            file_path = here / name
            shown = "/".join(parts)
            if file_path.is_symlink():
                report.note("skipped_symlinks", shown)
                continue
            if _UNSAFE_NAME.search(name) or name.startswith("."):
                report.note("skipped_unsafe_names", repr(shown))
                continue
            yield _Entry(
                kind=kind,
                stem=PurePosixPath(name).stem,
                name=shown,
                nested=nested,
                read=lambda p=file_path: _read_regular_file(p),
                uri=file_path.absolute().as_uri(),
            )


def _read_regular_file(path: Path) -> bytes:
    # O_NOFOLLOW: a file swapped for a link after the walk is refused, not followed.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        return handle.read(MAX_PICKLE_BYTES + 1)


def _zip_entries(archive_path: Path, archive: zipfile.ZipFile, report: ImportReport) -> Iterator[_Entry]:
    archive_uri = archive_path.absolute().as_uri()
    for info in archive.infolist():
        if info.is_dir():
            continue
        name = info.filename
        parts = tuple(name.split("/"))
        if (
            name.startswith("/")
            or re.match(r"^[A-Za-z]:", name)
            or ".." in parts
            or "" in parts
            or _UNSAFE_NAME.search(name)
        ):
            report.note("skipped_unsafe_names", repr(name))
            continue
        classified = _classify(parts)
        if classified is None or not _wanted(classified[0], parts[-1]):
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            report.note("skipped_symlinks", name)
            continue
        kind, nested = classified
        yield _Entry(
            kind=kind,
            stem=PurePosixPath(parts[-1]).stem,
            name=name,
            nested=nested,
            read=lambda i=info: _read_zip_member(archive, i),
            uri=f"zip://{name}::{archive_uri}",
        )


def _read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    # A bounded read: the sizes in a zip header can lie (zip bombs), the decompressed stream cannot.
    with archive.open(info) as member:
        return member.read(MAX_PICKLE_BYTES + 1)
