"""Exports: fetched items written as a complete SFHQ-layout folder, plus a Hugging Face parquet.

    <dest>/images/<stem>.jpg, segmentations/<stem>.png, landmarks/<stem>.npz,
    <dest>/pretrained_features/<stem>.pickle, latents/<stem>.npy
    <dest>/manifest.jsonl, manifest.parquet   one row per exported item
    <dest>/dataset_info.json                  counts, the jobs and datasets the items came from, provenance
    <dest>/data/train-00000-of-00001.parquet  images embedded: `datasets.load_dataset("parquet", ...)`
    <dest>/README.md                          a dataset card (counts, provenance, license note)

Stems never collide: an item keeps its dataset stem unless the folder already holds another item
under it (an export of another job or dataset), then it gets the next free number of its part;
the manifest says where each item came from (`source_stem`, `job_id`, `item_id`, `dataset_id`).
Exporting into the same folder again adds to it: items already there keep their stems.
One export writes a folder at a time.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from sfhq.tensors import tensor_to_numpy
from sfhq.v1 import gateway_pb2

FORMAT = "sfhq-factory export 1"
HF_FILE = "data/train-00000-of-00001.parquet"
FENCE = "`" * 3  # a Markdown code fence in the dataset card
_STEM = re.compile(r"^SFHQ_pt(\d+)_(\d{8,})$")
RANDOM_WARNING = (
    "MADE WITH RANDOM WEIGHTS: these items come from randomly initialised demo models, not the "
    "official checkpoints. The images are noise, not faces; do not train on them."
)


def _write(path: Path, data: bytes) -> None:
    """Atomic: a reader (or a second export) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _is_random(provenance: dict[str, Any]) -> bool:
    return any(isinstance(v, dict) and v.get("random_weights") for v in provenance.values())


class Exporter:
    """Adds fetched items (`Client.get_item(..., image=True, annotations=True)`) to an export folder."""

    def __init__(self, dest: str | os.PathLike[str]) -> None:
        self.dest = Path(dest)
        self.rows: dict[str, dict[str, Any]] = {}  # stem -> row
        manifest = self.dest / "manifest.jsonl"
        if manifest.exists():
            for line in manifest.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["stem"]] = row
        self._by_origin = {(r.get("job_id", ""), r.get("item_id", "")): s for s, r in self.rows.items()}
        self.added = 0

    def _stem_for(self, item: gateway_pb2.Item) -> str:
        known = self._by_origin.get((item.job_id, item.item_id))
        if known:
            return known  # exported before: the same item, the same stem
        wanted = item.stem or "SFHQ_pt0_00000000"
        if wanted not in self.rows:
            return wanted
        match = _STEM.match(wanted)
        part = int(match.group(1)) if match else 0
        used = [int(m.group(2)) for s in self.rows if (m := _STEM.match(s)) and int(m.group(1)) == part]
        return f"SFHQ_pt{part}_{(max(used) + 1 if used else 0):08d}"

    def add(self, item: gateway_pb2.Item) -> Path:
        """Writes one item's files; returns its image path."""
        if not item.image.data:
            raise ValueError(f"item {item.job_id}/{item.item_id} has no image (fetch it with image=True)")
        stem = self._stem_for(item)
        files: dict[str, str] = {"image_path": f"images/{stem}.jpg"}
        _write(self.dest / files["image_path"], item.image.data)
        if item.segmentation.data:
            files["segmentation_path"] = f"segmentations/{stem}.png"
            _write(self.dest / files["segmentation_path"], item.segmentation.data)
        if item.landmarks.data:
            buf = io.BytesIO()
            np.savez(buf, landmarks=tensor_to_numpy(item.landmarks, name="landmarks"))
            files["landmarks_path"] = f"landmarks/{stem}.npz"
            _write(self.dest / files["landmarks_path"], buf.getvalue())
        if item.features:
            # SFHQ's own pickle: {model key: (1, D) array}, float16 as released
            features = {
                key: tensor_to_numpy(t, name=f"features[{key}]")
                .astype(np.float16 if t.dtype == "float16" else np.float32)
                .reshape(1, -1)
                for key, t in item.features.items()
            }
            files["features_path"] = f"pretrained_features/{stem}.pickle"
            _write(self.dest / files["features_path"], pickle.dumps(features, protocol=4))
        if item.latent.data:
            buf = io.BytesIO()
            np.save(buf, tensor_to_numpy(item.latent, name="latent"), allow_pickle=False)
            files["latent_path"] = f"latents/{stem}.npy"
            _write(self.dest / files["latent_path"], buf.getvalue())
        source_row = json.loads(item.manifest_json) if item.manifest_json else {}
        row = {
            **source_row,
            **files,
            "stem": stem,
            "source_stem": item.stem,
            "job_id": item.job_id,
            "item_id": item.item_id,
            "dataset_id": item.dataset_id or source_row.get("dataset_id", ""),
            "taste_score": item.taste_score if item.HasField("taste_score") else None,
            "provenance": source_row.get("provenance") or json.loads(item.provenance_json or "{}"),
        }
        row.pop("latent_blob", None)  # a blob-store key of the cluster: meaningless in an export
        self.rows[stem] = row
        self._by_origin[(item.job_id, item.item_id)] = stem
        self.added += 1
        return self.dest / files["image_path"]

    # ---- the folder-wide files ------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """manifest.jsonl/.parquet, dataset_info.json, the HF parquet and README.md; returns the info."""
        rows = [self.rows[stem] for stem in sorted(self.rows)]
        _write(
            self.dest / "manifest.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
        )
        random_weights = any(_is_random(r.get("provenance") or {}) for r in rows)
        provenance: dict[str, Any] = {}
        for row in rows:
            provenance.update(row.get("provenance") or {})
        jobs = sorted({r.get("job_id", "") for r in rows} - {""})
        datasets = sorted({r.get("dataset_id", "") for r in rows} - {""})
        info = {
            "format": FORMAT,
            "items": len(rows),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "jobs": jobs,
            "datasets": datasets,
            "random_weights": random_weights,
            "provenance": provenance,
            "files": {"manifest": "manifest.jsonl", "parquet": "manifest.parquet", "huggingface": HF_FILE},
        }
        if random_weights:
            info["warning"] = RANDOM_WARNING
            _write(self.dest / "RANDOM_WEIGHTS.txt", (RANDOM_WARNING + "\n").encode())
        _write(self.dest / "dataset_info.json", json.dumps(info, indent=2, sort_keys=True).encode())
        self._parquets(rows)
        _write(self.dest / "README.md", dataset_card(info).encode())
        return info

    def _parquets(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        flat = [
            {k: (json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v) for k, v in r.items()}
            for r in rows
        ]
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(flat), buf)
        _write(self.dest / "manifest.parquet", buf.getvalue())

        def image(row: dict[str, Any], key: str) -> dict[str, Any] | None:
            path = row.get(key)
            if not path:
                return None
            return {"bytes": (self.dest / path).read_bytes(), "path": Path(path).name}

        def landmarks(row: dict[str, Any]) -> list[list[float]] | None:
            path = row.get("landmarks_path")
            if not path:
                return None
            with np.load(self.dest / path, allow_pickle=False) as npz:
                return npz["landmarks"].astype(np.float32).tolist()

        image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        table = pa.table(
            {
                "image": pa.array([image(r, "image_path") for r in rows], image_type),
                "segmentation": pa.array([image(r, "segmentation_path") for r in rows], image_type),
                "landmarks": pa.array([landmarks(r) for r in rows], pa.list_(pa.list_(pa.float32()))),
                "stem": pa.array([r["stem"] for r in rows], pa.string()),
                "job_id": pa.array([r.get("job_id", "") for r in rows], pa.string()),
                "item_id": pa.array([r.get("item_id", "") for r in rows], pa.string()),
                "taste_score": pa.array([r.get("taste_score") for r in rows], pa.float64()),
                "strategy": pa.array([json.dumps(r.get("strategy") or {}) for r in rows], pa.string()),
                "source": pa.array([json.dumps(r.get("source") or {}) for r in rows], pa.string()),
            }
        )
        # The `huggingface` schema metadata tells `datasets` which columns are images.
        features = {
            "image": {"_type": "Image"},
            "segmentation": {"_type": "Image"},
            "landmarks": {
                "_type": "Sequence",
                "feature": {"_type": "Sequence", "feature": {"dtype": "float32", "_type": "Value"}},
            },
            **{
                name: {"dtype": "string", "_type": "Value"}
                for name in ("stem", "job_id", "item_id", "strategy", "source")
            },
            "taste_score": {"dtype": "float64", "_type": "Value"},
        }
        meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
        table = table.replace_schema_metadata(meta)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        _write(self.dest / HF_FILE, buf.getvalue())


def dataset_card(info: dict[str, Any]) -> str:
    """README.md with a Hugging Face front matter, counts, provenance and the license note."""
    checkpoints = [
        f"- `{name}`: {value.get('file', '')} sha256 `{value.get('sha256', '')}`"
        + (" (RANDOM demo weights)" if value.get("random_weights") else "")
        for name, value in sorted(info["provenance"].items())
        if isinstance(value, dict)
    ]
    warning = f"\n> **{info['warning']}**\n" if info.get("warning") else ""
    return f"""---
license: other
pretty_name: SFHQ-style synthetic faces (sfhq-factory export)
task_categories:
- image-to-image
- image-segmentation
configs:
- config_name: default
  data_files:
  - split: train
    path: {HF_FILE}
---

# SFHQ-style synthetic faces
{warning}
{info["items"]} items exported by sfhq-factory on {info["exported_at"]} from {len(info["jobs"])} jobs
({len(info["datasets"])} datasets). Each item has a 1024x1024 image (`images/`), a face-parsing map
(`segmentations/`, 19 classes), 110 landmarks (`landmarks/`), CLIP features (`pretrained_features/`)
and the W+ code that made it (`latents/`). `manifest.jsonl` has one row per item; `{HF_FILE}`
holds the same items with the images embedded:

{FENCE}python
import datasets
ds = datasets.load_dataset("parquet", data_files="{HF_FILE}")["train"]
{FENCE}

## Provenance

Made with these checkpoints (sha256 of each file), per item in `manifest.jsonl`:

{chr(10).join(checkpoints) or "- (none recorded)"}

## License

The images are synthesized by StyleGAN2 (FFHQ) through encoder4editing; the checkpoints' licenses
(NVIDIA Source Code License-NC for StyleGAN2-FFHQ, among others) apply to what they make. Check
them before any commercial use. The annotations carry the licenses of BiSeNet, dlib and CLIP.
"""
