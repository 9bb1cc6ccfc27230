"""Writes a finished dataset in SFHQ's on-disk layout (docs/sfhq-format.md, "On-disk layout").

    <root>/images/<stem>.jpg                1024x1024 RGB
    <root>/segmentations/<stem>.png         single-channel class indices 0..18
    <root>/landmarks/<stem>.npz             key 'landmarks', (110, 2) float32, image pixel coordinates
    <root>/pretrained_features/<stem>.pickle  {feature_key: ndarray (1, D)}
    <root>/latents/<stem>.npy               the W+ code that made the image (ours; SFHQ never shipped latents)
    <root>/manifest.jsonl, manifest.parquet one row per item
    <root>/dataset_info.json                job spec, counts, provenance

Every file goes through BlobStore.put, which is atomic, so a reader never sees half an image; an
item whose files cannot all be written leaves none of them behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
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


def stem_for(part: int, index: int) -> str:
    """SFHQ's stem naming: SFHQ_pt{part}_{8-digit index}."""
    return f"SFHQ_pt{part}_{index:08d}"


def features_pickle(features: dict[str, np.ndarray]) -> bytes:
    """SFHQ's per-image feature pickle: a plain dict of (1, D) arrays (readable by SFHQ's own scripts)."""
    rows = {key: np.asarray(value).reshape(1, -1) for key, value in features.items()}
    return pickle.dumps(rows, protocol=4)


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

    def write_manifest(self, rows: Iterable[dict[str, Any]], info: dict[str, Any]) -> dict[str, str]:
        """manifest.jsonl (always), manifest.parquet (when pyarrow is installed) and dataset_info.json."""
        rows = sorted(rows, key=lambda r: r.get("stem") or "")
        jsonl = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        self.store.put("manifest.jsonl", jsonl.encode())
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
        self.store.put("dataset_info.json", json.dumps(info, indent=2, sort_keys=True).encode())
        written["info"] = "dataset_info.json"
        return written
