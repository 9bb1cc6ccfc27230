"""Writes a finished dataset in SFHQ's on-disk layout (docs/sfhq-format.md, "On-disk layout").

    <root>/images/<stem>.jpg                1024x1024 RGB
    <root>/segmentations/<stem>.png         single-channel class indices 0..18
    <root>/landmarks/<stem>.npz             key 'landmarks', (110, 2) float32, image pixel coordinates
    <root>/pretrained_features/<stem>.pickle  {feature_key: ndarray (1, D)}
    <root>/latents/<stem>.npy               the W+ code that made the image (ours; SFHQ never shipped latents)
    <root>/manifest.jsonl, manifest.parquet one row per item, every job's items merged
    <root>/dataset_info.json                the dataset's identity, settings and every job that wrote to it
    <root>/jobs/<job_id>/manifest.jsonl     one job's rows (its part of the manifest)
    <root>/jobs/<job_id>/info.json          that job's spec, counts, failures and provenance
    <root>/RANDOM_WEIGHTS.txt               only when some job ran with random demo weights
    <root>/rejected/<folder>/<stem>.<ext>   items taken out later (a re-curation, a dedup pass): moved, never deleted
    <root>/rejected/manifest.jsonl          one row per item taken out: why, when, its score

Every file goes through BlobStore.put, which is atomic, so a reader never sees half an image; an
item whose files cannot all be written leaves none of them behind. Many jobs write into one
dataset: each writes only its own items and its own part, and `merge` rebuilds the dataset-wide
files from every part (the caller holds the dataset's lock), so no job's view replaces another's.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import time
from collections.abc import Container, Iterable
from typing import Any

import numpy as np

from services.common.blobs import TMP_PREFIX, BlobStore
from services.common.errors import InvalidInput

FOLDERS = {
    "image": ("images", ".jpg"),
    "segmentation": ("segmentations", ".png"),
    "landmarks": ("landmarks", ".npz"),
    "features": ("pretrained_features", ".pickle"),
    "latent": ("latents", ".npy"),
}


DATASET_FILES = ("manifest.jsonl", "manifest.parquet", "dataset_info.json")
INFO_FILE = "dataset_info.json"
RANDOM_MARKER = "RANDOM_WEIGHTS.txt"
JOBS_FOLDER = "jobs"
REJECTED_FOLDER = "rejected"
REJECTED_MANIFEST = f"{REJECTED_FOLDER}/manifest.jsonl"
FORMAT = "sfhq-factory dataset 1"
RANDOM_WARNING = (
    "MADE WITH RANDOM WEIGHTS: these files come from randomly initialised demo models, not the "
    "official checkpoints. The images are noise, not faces; do not train on them."
)
_STEM = re.compile(r"^SFHQ_pt(\d+)_(\d{8,})$")


def stem_for(part: int, index: int) -> str:
    """SFHQ's stem naming: SFHQ_pt{part}_{8-digit index}."""
    return f"SFHQ_pt{part}_{index:08d}"


def stem_index(stem: str, part: int) -> int | None:
    """The index of an SFHQ stem of `part` (None for other names)."""
    match = _STEM.match(stem)
    return int(match.group(2)) if match and int(match.group(1)) == part else None


def job_rows_key(job_id: str) -> str:
    return f"{JOBS_FOLDER}/{job_id}/manifest.jsonl"


def job_info_key(job_id: str) -> str:
    return f"{JOBS_FOLDER}/{job_id}/info.json"


def _jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()


def parse_jsonl(data: bytes, what: str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(data.decode().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{what}: line {number} is not JSON ({exc})") from None
    return rows


_PurePickler: Any = pickle._Pickler  # the pure-Python pickler: its save_global can be overridden


class _Numpy1Pickler(_PurePickler):
    """Writes numpy's globals under their numpy 1.x names.

    numpy 2 moved `numpy.core` to `numpy._core`, and pickles arrays with
    `numpy._core.multiarray._reconstruct`: numpy 1.x (SFHQ's users' environments, VTA's scripts)
    cannot import that and fails to load the file. numpy 2 still answers to the old names
    (`numpy.core` is a shim that forwards to `numpy._core`), so writing the old ones gives files both
    read. Only the module path of the global changes; the array bytes and the state are numpy's own.
    """

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None) or ""
        if module == "numpy._core" or module.startswith("numpy._core."):
            self.save("numpy.core" + module[len("numpy._core") :])
            self.save(name or obj.__qualname__)
            self.write(pickle.STACK_GLOBAL)
            self.memoize(obj)
            return
        super().save_global(obj, name)


def numpy1_pickle(value: Any, protocol: int = 4) -> bytes:
    """`pickle.dumps` whose numpy references load on numpy 1.x as well as 2.x (protocol 4: Python
    3.4+; what SFHQ's own files use is unknown, any of 2-4 loads alike)."""
    if protocol < 4:
        raise ValueError("numpy1_pickle writes protocol 4 or 5")
    buffer = io.BytesIO()
    _Numpy1Pickler(buffer, protocol=protocol).dump(value)
    return buffer.getvalue()


def features_pickle(features: dict[str, np.ndarray]) -> bytes:
    """SFHQ's per-image feature pickle: a plain dict of (1, D) arrays (readable by SFHQ's own scripts,
    under numpy 1.x or 2.x)."""
    rows = {key: np.ascontiguousarray(np.asarray(value).reshape(1, -1)) for key, value in features.items()}
    return numpy1_pickle(rows)


def landmarks_npz(landmarks: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, landmarks=np.asarray(landmarks, dtype=np.float32))
    return buf.getvalue()


class DatasetWriter:
    """Writes items and the manifest of one dataset (a local folder or any fsspec URL)."""

    def __init__(self, dataset_uri: str) -> None:
        self.uri = dataset_uri
        self.store = BlobStore(dataset_uri)

    def path_of(self, kind: str, stem: str) -> str:
        folder, ext = FOLDERS[kind]
        return f"{folder}/{stem}{ext}"

    def write_item(
        self,
        stem: str,
        *,
        image_jpeg: bytes,
        segmentation_png: bytes,
        landmarks: np.ndarray,
        features: dict[str, np.ndarray],
        latent: np.ndarray | None = None,
    ) -> dict[str, str]:
        """Writes one item's files; returns {kind: path relative to the dataset root}."""
        landmarks = np.asarray(landmarks, dtype=np.float32)
        if landmarks.shape != (110, 2) or not np.isfinite(landmarks).all():
            raise InvalidInput(f"landmarks for {stem} must be 110x2 finite values, got {landmarks.shape}")
        blobs = {
            "image": image_jpeg,
            "segmentation": segmentation_png,
            "landmarks": landmarks_npz(landmarks),
            "features": features_pickle(features),
        }
        if latent is not None:
            buf = io.BytesIO()
            np.save(buf, np.asarray(latent, dtype=np.float32), allow_pickle=False)
            blobs["latent"] = buf.getvalue()
        written: dict[str, str] = {}
        try:
            for kind, data in blobs.items():
                path = self.path_of(kind, stem)
                self.store.put(path, data)
                written[kind] = path
        except BaseException:
            # All of an item's files or none: a failed write (disk full...) must not leave an image
            # without its segmentation. Each file is atomic on its own; this undoes the ones that made it.
            for path in written.values():
                with contextlib.suppress(Exception):
                    self.store.delete(path)
            raise
        return written

    def discard_partial_writes(self, stems: Container[str]) -> list[str]:
        """Delete the temporary files of writes of `stems` that never finished (a writer killed mid-file).

        BlobStore writes a temporary file and renames it over the key, so a SIGKILLed writer leaves a
        hidden `.sfhq-tmp-<token>-<name>` file beside the real ones. Called when a job is finalized,
        after its last item was written, with the job's own stems (and the manifest's names): another
        job writing into the same folder keeps its in-flight files. Object stores write in one PUT
        and have nothing to discard. Returns the removed paths (relative to the root).
        """
        if not self.store.is_local:
            return []
        removed = []
        for folder, _, files in os.walk(self.store.root):
            for name in files:
                if not name.startswith(TMP_PREFIX):
                    continue
                target = name[len(TMP_PREFIX) :].split("-", 1)[-1]  # strip the writer's random token
                if target not in stems and target.rsplit(".", 1)[0] not in stems:
                    continue
                path = os.path.join(folder, name)
                with contextlib.suppress(FileNotFoundError):  # its writer may just have renamed it
                    os.unlink(path)
                    removed.append(os.path.relpath(path, self.store.root))
        return removed

    # ---- manifests ----------------------------------------------------------------------------

    def read_info(self) -> dict[str, Any] | None:
        """dataset_info.json, or None when the folder has none (or an unreadable one)."""
        try:
            info = json.loads(self.store.get(INFO_FILE))
        except (FileNotFoundError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def is_empty(self) -> bool:
        """True when the folder holds nothing but hidden files (at its top level)."""
        if self.store.is_local:
            with os.scandir(self.store.root) as listing:
                return not any(not entry.name.startswith(".") for entry in listing)
        try:
            names = self.store.fs.ls(self.store.root, detail=False)
        except FileNotFoundError:
            return True
        return not [name for name in names if not str(name).rstrip("/").rsplit("/", 1)[-1].startswith(".")]

    def entries(self) -> list[str]:
        """What the folder holds (keys, hidden files left out): empty means a new dataset may go here."""
        return [key for key in self.store.list("") if not key.rsplit("/", 1)[-1].startswith(".")]

    def layout_entries(self) -> list[str]:
        """The entries a dataset of ours writes (what `--overwrite` removes; other files stay)."""
        top = {folder for folder, _ in FOLDERS.values()} | {JOBS_FOLDER, REJECTED_FOLDER}
        files = {*DATASET_FILES, RANDOM_MARKER, "README.md"}
        return [key for key in self.entries() if key.split("/", 1)[0] in top or key in files]

    def clear_layout(self) -> int:
        """Remove every file of our layout (for `--overwrite`); returns how many went."""
        removed = 0
        for key in self.layout_entries():
            removed += self.store.delete(key)
        return removed

    def used_indices(self, part: int) -> list[int]:
        """The stem indices of `part` the folder's images and manifest parts use (to resume numbering
        when Redis lost the dataset's counter)."""
        found = set()
        for key in self.store.list(f"{FOLDERS['image'][0]}/"):
            index = stem_index(key.rsplit("/", 1)[-1].rsplit(".", 1)[0], part)
            if index is not None:
                found.add(index)
        for row in [*self.all_rows(), *self.rejected_rows()]:
            index = stem_index(str(row.get("stem", "")), part)
            if index is not None:
                found.add(index)
        return sorted(found)

    def rejected_rows(self) -> list[dict[str, Any]]:
        if not self.store.exists(REJECTED_MANIFEST):
            return []
        return parse_jsonl(self.store.get(REJECTED_MANIFEST), REJECTED_MANIFEST)

    def move_to_rejected(self, rows: list[dict[str, Any]]) -> list[str]:
        """Take items out of the dataset: their files go to `rejected/<folder>/`, and a row each (stem,
        reason, ...) is appended to rejected/manifest.jsonl; `merge` then leaves them out of the
        manifest. Call it holding the dataset's lock. Returns the stems moved."""
        if not rows:
            return []
        moved = []
        for row in rows:
            stem = str(row["stem"])
            for kind in FOLDERS:
                path = self.path_of(kind, stem)
                self.store.move(path, f"{REJECTED_FOLDER}/{path}")
            moved.append(stem)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        earlier = self.rejected_rows()
        self.store.put(REJECTED_MANIFEST, _jsonl([*earlier, *({"time": stamp, **r} for r in rows)]))
        return moved

    def write_job_part(self, job_id: str, rows: Iterable[dict[str, Any]], info: dict[str, Any]) -> None:
        """One job's rows and info (rewritten whole by that job only: idempotent per job)."""
        ordered = sorted(rows, key=lambda r: r.get("stem") or "")
        self.store.put(job_rows_key(job_id), _jsonl(ordered))
        self.store.put(job_info_key(job_id), json.dumps(info, indent=2, sort_keys=True).encode())

    def job_ids(self) -> list[str]:
        return sorted(
            {key.split("/")[1] for key in self.store.list(f"{JOBS_FOLDER}/") if key.count("/") == 2}
        )

    def all_rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for job_id in self.job_ids():
            key = job_rows_key(job_id)
            if self.store.exists(key):
                rows.extend(parse_jsonl(self.store.get(key), key))
        return rows

    def merge(self, identity: dict[str, Any]) -> dict[str, Any]:
        """Rebuild manifest.jsonl/.parquet and dataset_info.json from every job's part.

        Call it holding the dataset's lock. `identity` is what the dataset record says about itself
        (id, uri, part, settings, owner, created_at). Returns the new dataset_info.
        """
        rows: list[dict[str, Any]] = []
        jobs_info: list[dict[str, Any]] = []
        for job_id in self.job_ids():
            try:
                info = json.loads(self.store.get(job_info_key(job_id)))
            except (FileNotFoundError, ValueError):
                continue  # a part still being written by its job's first finalize: next merge lists it
            if self.store.exists(job_rows_key(job_id)):
                rows.extend(parse_jsonl(self.store.get(job_rows_key(job_id)), job_rows_key(job_id)))
            jobs_info.append(info)
        taken_out = {str(r.get("stem")) for r in self.rejected_rows()}
        rows = [r for r in rows if r.get("stem") not in taken_out]
        rows.sort(key=lambda r: r.get("stem") or "")
        jobs_info.sort(key=lambda j: (j.get("created_at") or "", j.get("job_id") or ""))
        random_weights = any(job.get("random_weights") for job in jobs_info)
        totals: dict[str, int] = {}
        provenance: dict[str, Any] = {}
        for job in jobs_info:
            for name, value in (job.get("counts") or {}).items():
                totals[name] = totals.get(name, 0) + int(value)
            provenance.update(job.get("provenance") or {})
        info = {
            "format": FORMAT,
            **identity,
            "items": len(rows),
            "rejected_later": len(taken_out),
            "counts": totals,
            "random_weights": random_weights,
            "provenance": provenance,
            "jobs": [{k: v for k, v in job.items() if k not in ("failures", "spec")} for job in jobs_info],
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if random_weights:
            info["warning"] = RANDOM_WARNING
            self.store.put(RANDOM_MARKER, (RANDOM_WARNING + "\n").encode())
        self.write_manifest(rows, info)
        return info

    def write_manifest(self, rows: Iterable[dict[str, Any]], info: dict[str, Any]) -> dict[str, str]:
        """manifest.jsonl (always), manifest.parquet (when pyarrow is installed) and dataset_info.json."""
        rows = sorted(rows, key=lambda r: r.get("stem") or "")
        self.store.put("manifest.jsonl", _jsonl(rows))
        written = {"manifest_jsonl": "manifest.jsonl"}
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:  # the light client install has no pyarrow; JSONL is the source of truth
            pass
        else:
            flat = [
                {k: (json.dumps(v, sort_keys=True) if isinstance(v, dict) else v) for k, v in row.items()}
                for row in rows
            ]
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(flat), buf)
            self.store.put("manifest.parquet", buf.getvalue())
            written["manifest_parquet"] = "manifest.parquet"
        self.store.put(INFO_FILE, json.dumps(info, indent=2, sort_keys=True).encode())
        written["info"] = INFO_FILE
        return written
