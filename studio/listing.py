"""A job's (or a dataset's) items as the gallery needs them: fetched in pages from the gateway,
kept briefly, filtered and sorted here so that scrolling 100,000 items costs one listing."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from sfhq.sdk import Client
from sfhq.v1 import gateway_pb2

PAGE = 10_000  # the gateway's largest ListItems page
MAX_ITEMS = 1_000_000
TERMINAL = {gateway_pb2.JOB_STATE_SUCCEEDED, gateway_pb2.JOB_STATE_FAILED, gateway_pb2.JOB_STATE_CANCELLED}
SORTS = ("time", "score", "-score")


def item_summary(item: gateway_pb2.Item) -> dict[str, Any]:
    provenance = json.loads(item.provenance_json or "{}")
    strategy = provenance.get("strategy") or {}
    return {
        "id": item.item_id,
        "job": item.job_id,
        "parent": item.parent_id,
        "state": item.state,
        "stem": item.stem,
        "score": round(item.taste_score, 4) if item.HasField("taste_score") else None,
        "duplicate_of": item.duplicate_of,
        "strategy": strategy.get("name", "") if isinstance(strategy, dict) else str(strategy),
        "source": _source_name(provenance.get("source")),
        "error": item.error.message if item.HasField("error") else "",
        # head pose in degrees once annotated (docs/landmarks.md, "Head pose")
        "yaw": round(item.pose.yaw, 1) if item.HasField("pose") else None,
        "pitch": round(item.pose.pitch, 1) if item.HasField("pose") else None,
    }


def _source_name(source: Any) -> str:
    """The input file an item came from ({"name", "uri"} for uploads and folders, a seed for samples,
    "seed N: prompt" for Stable Diffusion images)."""
    if isinstance(source, dict):
        if source.get("prompt"):
            return f"seed {source.get('seed')}: {source['prompt']}"
        return str(source.get("name") or source.get("uri") or source.get("seed") or "")
    return str(source or "")


@dataclass
class Filters:
    state: str = (
        ""  # "written", "review", "rejected_taste", ... ("" = every candidate; "inputs" = inspirations)
    )
    strategy: str = ""
    parent: str = ""  # the inspiration item a candidate came from
    min_score: float | None = None
    max_score: float | None = None
    duplicate_of: str = ""  # "*" = any duplicate
    sort: str = "time"
    max_abs_yaw: float | None = None  # |yaw| at most (frontal faces); items without a pose are left out
    max_abs_pitch: float | None = None

    def keep(self, row: dict[str, Any]) -> bool:
        if self.state == "inputs":
            if row["parent"]:
                return False
        elif not row["parent"] and row["state"] != "failed":
            return False  # inspirations are shown next to their candidates, not in the grid
        if self.state and self.state != "inputs" and row["state"] != self.state:
            return False
        if self.strategy and row["strategy"] != self.strategy:
            return False
        if self.parent and row["parent"] != self.parent:
            return False
        score = row["score"]
        if self.min_score is not None and (score is None or score < self.min_score):
            return False
        if self.max_score is not None and (score is None or score > self.max_score):
            return False
        for limit, angle in ((self.max_abs_yaw, row.get("yaw")), (self.max_abs_pitch, row.get("pitch"))):
            if limit is not None and (angle is None or abs(angle) > limit):
                return False
        if self.duplicate_of == "*":
            return bool(row["duplicate_of"])
        return not self.duplicate_of or row["duplicate_of"] == self.duplicate_of


class Listings:
    """Item lists per (user, job), reused for `ttl_s` while the job runs and until it changes after."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._cache: dict[tuple[str, str], tuple[float, bool, list[dict[str, Any]]]] = {}
        self._lock = threading.Lock()

    def job_items(self, client: Client, user: str, job_id: str) -> list[dict[str, Any]]:
        key = (user, job_id)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and (cached[1] or time.monotonic() - cached[0] < self.ttl_s):
            return cached[2]
        finished = client.get_job(job_id).state in TERMINAL
        rows: list[dict[str, Any]] = []
        while len(rows) < MAX_ITEMS:
            page = client.list_items(job_id, limit=PAGE, offset=len(rows))
            rows.extend(item_summary(item) for item in page)
            if len(page) < PAGE:
                break
        with self._lock:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[key] = (time.monotonic(), finished, rows)
        return rows

    def forget(self, user: str, job_id: str) -> None:
        """After a change the studio made (a review verdict, a cancel): the next read refetches."""
        with self._lock:
            self._cache.pop((user, job_id), None)


def dataset_jobs(client: Client, dataset_id: str) -> list[gateway_pb2.Job]:
    """The caller's jobs that wrote into a dataset, oldest first (a dataset's gallery is theirs together)."""
    jobs = [j for j in client.list_jobs(limit=1000) if j.dataset_id == dataset_id]
    return sorted(jobs, key=lambda j: j.created_at)


def select(rows: list[dict[str, Any]], filters: Filters) -> list[dict[str, Any]]:
    chosen = [row for row in rows if filters.keep(row)]
    if filters.sort in ("score", "-score"):
        # best first for "score"; unscored items last either way
        sign = -1.0 if filters.sort == "score" else 1.0
        chosen.sort(key=lambda r: (r["score"] is None, sign * (r["score"] or 0.0)))
    return chosen
