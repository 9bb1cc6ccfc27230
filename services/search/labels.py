"""Durable storage of human good/bad labels for a taste model.

An append-only log in the blob store: every `append` writes one new JSONL file
`taste/<name>/labels/<time_ns>-<random>.jsonl` (one record per label) with a single atomic put, so
concurrent labellers never overwrite each other and a crash never leaves half a file. Each record carries
the features themselves (base64 float32), so the training set survives items leaving the index.

Reading replays the files in name (= time) order; for an item labelled more than once the latest label
wins, so a person can change their mind.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.search.clip_model import FEATURE_KEY
from services.search.taste import TasteInputError, check_model_name

log = logging.getLogger(__name__)


@dataclass
class LabelRecord:
    features: np.ndarray  # float32 [D]
    positive: bool
    item_id: str | None = None  # the labelled item, when it has one
    labeler: str = ""
    time: str = ""  # ISO 8601 UTC
    feature_key: str = FEATURE_KEY

    def to_json(self) -> dict:
        features = np.ascontiguousarray(self.features, dtype="<f4").reshape(-1)
        return {
            "item_id": self.item_id,
            "positive": bool(self.positive),
            "labeler": self.labeler,
            "time": self.time,
            "feature_key": self.feature_key,
            "dim": int(features.size),
            "features_b64": base64.b64encode(features.tobytes()).decode("ascii"),
        }

    @classmethod
    def from_json(cls, record: dict) -> LabelRecord:
        features = np.frombuffer(base64.b64decode(record["features_b64"]), dtype="<f4").astype(np.float32)
        if features.size != int(record["dim"]):
            raise ValueError(f"label record has {features.size} features, says {record['dim']}")
        return cls(
            features=features,
            positive=bool(record["positive"]),
            item_id=record.get("item_id"),
            labeler=record.get("labeler", ""),
            time=record.get("time", ""),
            feature_key=record.get("feature_key", FEATURE_KEY),
        )


class LabelStore:
    def __init__(self, blob_store) -> None:
        self.store = blob_store

    @staticmethod
    def _prefix(name: str) -> str:
        return f"taste/{check_model_name(name)}/labels/"

    def append(self, name: str, records: Sequence[LabelRecord]) -> str | None:
        """Durably add labels to `name`'s log; returns the new file's key (None when there was nothing)."""
        if not records:
            return None
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        lines = []
        for record in records:
            features = np.asarray(record.features, np.float32).reshape(-1)
            if features.size == 0 or not np.isfinite(features).all():
                raise TasteInputError("label features must be a non-empty finite vector")
            record.time = record.time or stamp
            lines.append(json.dumps(record.to_json()))
        key = f"{self._prefix(name)}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        self.store.put(key, ("\n".join(lines) + "\n").encode())
        return key

    def records(self, name: str) -> list[LabelRecord]:
        """Every label of `name`, oldest first."""
        out: list[LabelRecord] = []
        for key in self.store.list(self._prefix(name)):
            if not key.endswith(".jsonl"):
                continue
            for line_no, line in enumerate(self.store.get(key).decode().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    out.append(LabelRecord.from_json(json.loads(line)))
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("skipping unreadable label %s line %d: %s", key, line_no, exc)
        return out

    def training_set(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(features [N, D] float32, labels [N] bool): the latest label per item; item-less labels all count."""
        latest: dict[str, LabelRecord] = {}
        anonymous: list[LabelRecord] = []
        for record in self.records(name):
            if record.item_id:
                latest.pop(record.item_id, None)  # re-insert so the order follows the latest label
                latest[record.item_id] = record
            else:
                anonymous.append(record)
        chosen = anonymous + list(latest.values())
        if not chosen:
            return np.zeros((0, 0), np.float32), np.zeros(0, bool)
        dims = {r.features.size for r in chosen}
        if len(dims) != 1:
            raise TasteInputError(f"labels of {name!r} mix feature dimensions {sorted(dims)}")
        return np.stack([r.features for r in chosen]), np.array([r.positive for r in chosen], bool)

    def counts(self, name: str) -> tuple[int, int]:
        """(positives, negatives) in the training set."""
        _, labels = self.training_set(name)
        return int(labels.sum()), int((~labels).sum())
