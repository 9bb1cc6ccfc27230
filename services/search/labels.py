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
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

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
    cleared: bool = False  # takes the item's label back (an undo in the studio)

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
            **({"cleared": True} if self.cleared else {}),
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
            cleared=bool(record.get("cleared", False)),
        )


@dataclass
class _LabelState:
    """One model's labels as read so far: the files replayed and the training set they make."""

    files: set[str] = field(default_factory=set)
    latest: dict[str, LabelRecord] = field(default_factory=dict)  # item id -> its latest label
    anonymous: list[LabelRecord] = field(default_factory=list)  # labels sent with a vector only
    positives: int = 0  # in the training set (kept up to date by replay)

    def replay(self, records: Sequence[LabelRecord]) -> None:
        for record in records:
            if record.item_id:
                previous = self.latest.pop(record.item_id, None)  # re-insert: the order follows the latest
                self.positives -= bool(previous and previous.positive)
                if record.cleared:
                    continue
                self.latest[record.item_id] = record
            else:
                self.anonymous.append(record)
            self.positives += bool(record.positive)

    def __len__(self) -> int:
        return len(self.anonymous) + len(self.latest)

    def chosen(self) -> list[LabelRecord]:
        return self.anonymous + list(self.latest.values())


class LabelStore:
    """The label logs, with each model's training set kept in memory: appending a batch costs what
    the batch costs (one file written, the cache updated), not a re-read of every label."""

    def __init__(self, blob_store) -> None:
        self.store = blob_store
        self._states: dict[str, _LabelState] = {}
        self._lock = threading.Lock()

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
        with self._lock:
            state = self._states.get(name)
            if state is not None:  # warm: the new file is replayed from memory
                state.files.add(key)
                state.replay(records)
        return key

    def _state(self, name: str, *, refresh: bool) -> _LabelState:
        """The cached state, reading only files not seen yet (all of them the first time; with
        `refresh`, also files other processes wrote meanwhile)."""
        with self._lock:
            state = self._states.get(name)
            if state is not None and not refresh:
                return state
            state = state or _LabelState()
            for key in self.store.list(self._prefix(name)):
                if key.endswith(".jsonl") and key not in state.files:
                    state.files.add(key)
                    state.replay(self._read(key))
            self._states[name] = state
            return state

    def _read(self, key: str) -> list[LabelRecord]:
        out = []
        for line_no, line in enumerate(self.store.get(key).decode().splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(LabelRecord.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("skipping unreadable label %s line %d: %s", key, line_no, exc)
        return out

    def records(self, name: str) -> list[LabelRecord]:
        """Every label of `name`, oldest first (re-read from the store)."""
        out: list[LabelRecord] = []
        for key in self.store.list(self._prefix(name)):
            if key.endswith(".jsonl"):
                out.extend(self._read(key))
        return out

    def training_set(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(features [N, D] float32, labels [N] bool): the latest label per item; item-less labels all count."""
        return self._stacked(name, self._state(name, refresh=True).chosen())

    @staticmethod
    def _stacked(name: str, chosen: list[LabelRecord]) -> tuple[np.ndarray, np.ndarray]:
        if not chosen:
            return np.zeros((0, 0), np.float32), np.zeros(0, bool)
        dims = {r.features.size for r in chosen}
        if len(dims) != 1:
            raise TasteInputError(f"labels of {name!r} mix feature dimensions {sorted(dims)}")
        return np.stack([r.features for r in chosen]), np.array([r.positive for r in chosen], bool)

    def training_rows(self, name: str) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """`training_set` and the item id of each row (None for a label sent as a bare vector), from
        one reading of the labels."""
        chosen = self._state(name, refresh=True).chosen()
        features, labels = self._stacked(name, chosen)
        return features, labels, [r.item_id for r in chosen]

    def counts(self, name: str) -> tuple[int, int]:
        """(positives, negatives) in the training set (from memory once read)."""
        state = self._state(name, refresh=False)
        return state.positives, len(state) - state.positives
