"""Protobuf <-> Python for the Search API (filters, hits, indexed items, duplicates, labels, taste
models). Bad values raise `InvalidInput` naming the field."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from services.common.errors import InvalidInput, NotFound
from services.common.rpc import read_vector
from services.search.dedup import DedupResult, DuplicateGroup
from services.search.index import (
    DECISIONS,
    KEPT_DECISIONS,
    POSE_ANGLES,
    Hit,
    ItemMeta,
    SearchFilter,
    VectorIndex,
)
from services.search.labels import LabelRecord
from services.search.taste import TasteModel
from sfhq.v1 import common_pb2, search_pb2

MAX_TEXT_CHARS = 2000  # CLIP reads 75 tokens anyway
MAX_LABELER_CHARS = 64
MAX_ITEM_ID_CHARS = 200


def text(value: str, what: str) -> str:
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidInput(f"{what} is {len(value)} characters; at most {MAX_TEXT_CHARS}")
    return value


def search_filter(
    message: search_pb2.SearchFilter, default_decisions: tuple[str, ...] | None = KEPT_DECISIONS
) -> SearchFilter:
    """The filter of a request; no decisions named means `default_decisions` ("*" alone: any)."""
    decisions: tuple[str, ...] | None = tuple(message.decisions) or default_decisions
    if decisions == ("*",):
        decisions = None
    for decision in decisions or ():
        if decision not in DECISIONS:
            raise InvalidInput(f"filter.decisions: {decision!r} is not one of {', '.join(DECISIONS[1:])}")
    return SearchFilter(
        job_id=message.job_id or None,
        source=message.source or None,
        min_taste=message.min_taste_score if message.HasField("min_taste_score") else None,
        max_taste=message.max_taste_score if message.HasField("max_taste_score") else None,
        owner=message.owner or None,
        dataset_id=message.dataset_id or None,
        decisions=decisions,
        pose_ranges=pose_ranges(message),
    )


def pose_ranges(message: search_pb2.SearchFilter) -> tuple[tuple[str, float | None, float | None], ...]:
    """The filter's head-pose ranges; InvalidInput names a bound that is no angle or a reversed range."""
    ranges = []
    for angle in POSE_ANGLES:
        if not message.HasField(angle):  # type: ignore[arg-type]
            continue
        bounds = getattr(message, angle)
        low = bounds.min if bounds.HasField("min") else None
        high = bounds.max if bounds.HasField("max") else None
        for name, value in (("min", low), ("max", high)):
            if value is not None and not (math.isfinite(value) and -180.0 <= value <= 180.0):
                raise InvalidInput(f"filter.{angle}.{name}: {value} is not an angle in [-180, 180]")
        if low is not None and high is not None and low > high:
            raise InvalidInput(f"filter.{angle}: min {low} is above max {high}")
        if low is not None or high is not None:
            ranges.append((angle, low, high))
    return tuple(ranges)


def head_pose(pose: tuple[float, float, float] | None) -> common_pb2.HeadPose | None:
    return None if pose is None else common_pb2.HeadPose(yaw=pose[0], pitch=pose[1], roll=pose[2])


def search_response(hits: Iterable[Hit]) -> search_pb2.SearchResponse:
    return search_pb2.SearchResponse(
        hits=[
            search_pb2.SearchHit(
                item_id=hit.item_id,
                score=hit.score,
                image_uri=hit.image_uri,
                job_id=hit.job_id,
                source=hit.source,
                taste_score=hit.taste_score,
                decision=hit.decision,
                dataset_id=hit.dataset_id,
                pose=head_pose(hit.pose),
            )
            for hit in hits
        ]
    )


def item_metas(items: Sequence[search_pb2.IndexedItem]) -> list[ItemMeta]:
    return [
        ItemMeta(
            job_id=item.job_id,
            source=item.source,
            image_uri=item.image_uri,
            taste_score=item.taste_score if item.HasField("taste_score") else None,
            owner=item.owner,
            dataset_id=item.dataset_id,
            decision=decision(item.decision, f"items[{n}].decision"),
            pose=indexed_pose(item, n),
        )
        for n, item in enumerate(items)
    ]


def indexed_pose(item: search_pb2.IndexedItem, n: int) -> tuple[float, float, float] | None:
    if not item.HasField("pose"):
        return None
    pose = (item.pose.yaw, item.pose.pitch, item.pose.roll)
    if not all(math.isfinite(v) and -180.0 <= v <= 180.0 for v in pose):
        raise InvalidInput(f"items[{n}].pose: every angle must be finite and in [-180, 180] degrees")
    return pose


def vectors(messages: Sequence[common_pb2.Tensor], what: str = "vector") -> np.ndarray:
    """Repeated Tensor fields as one [N, D] array (InvalidInput names the bad one)."""
    return np.stack([read_vector(v, f"{what} {i}") for i, v in enumerate(messages)])


def vectors_and_scores(request: search_pb2.DedupRequest) -> tuple[np.ndarray, np.ndarray | None]:
    rows = vectors(request.vectors)
    scores = np.asarray(request.scores, np.float64) if request.scores else None
    if scores is not None and len(scores) != len(rows):
        raise InvalidInput(f"{len(scores)} scores for {len(rows)} vectors")
    return rows, scores


def dedup_response(result: DedupResult) -> search_pb2.DedupResponse:
    return search_pb2.DedupResponse(
        kept=result.kept,
        duplicates=[
            search_pb2.Duplicate(
                index=position, duplicate_of=f"#{other}" if isinstance(other, int) else other, similarity=sim
            )
            for position, other, sim in result.duplicates
        ],
    )


def label_records(labels: Sequence[search_pb2.ItemLabel], index: VectorIndex | None) -> list[LabelRecord]:
    """Each label with its features: sent along, or looked up in the index by item id."""
    records = []
    for i, label in enumerate(labels):
        if label.clear and not label.item_id:
            raise InvalidInput(f"labels[{i}].clear: needs the item_id whose label is taken back")
        if label.HasField("vector"):
            features = read_vector(label.vector, f"label {i} vector")
        elif label.item_id:
            found = index.get_vector(label.item_id) if index is not None else None
            if found is None:
                raise NotFound(
                    f"labels[{i}].item_id: no indexed item {label.item_id!r}; send its vector instead"
                )
            features = found
        else:
            raise InvalidInput(f"labels[{i}]: neither an item id nor a vector")
        if len(label.labeler) > MAX_LABELER_CHARS or len(label.item_id) > MAX_ITEM_ID_CHARS:
            raise InvalidInput(
                f"labels[{i}]: labeler at most {MAX_LABELER_CHARS} characters, item_id at most {MAX_ITEM_ID_CHARS}"
            )
        records.append(
            LabelRecord(
                features=features,
                positive=label.positive,
                item_id=label.item_id or None,
                labeler=label.labeler,
                cleared=label.clear,
            )
        )
    return records


def taste_info(model: TasteModel) -> search_pb2.TasteModelInfo:
    owner, _, name = model.name.partition("/")
    return search_pb2.TasteModelInfo(
        name=name,
        owner=owner,
        version=model.version or 0,
        positives=model.positives,
        negatives=model.negatives,
        cv_accuracy=model.cv_accuracy,
        cv_auc=model.cv_auc,
        low_threshold=model.low_threshold,
        high_threshold=model.high_threshold,
        created_at=model.created_at,
        family=model.family,
        member_weights=model.weights,
        member_auc=model.member_auc,
        train_seconds=model.train_seconds,
        feature_keys=model.feature_keys,
    )


def decision(value: str, field: str) -> str:
    if value not in DECISIONS:
        raise InvalidInput(f"{field}: {value!r} is not one of {', '.join(DECISIONS[1:])} (or empty)")
    return value


def groups_response(
    groups: list[DuplicateGroup], items: int, seconds: float
) -> search_pb2.DedupGroupsResponse:
    def member(item_id: str, score: float | None, similarity: float) -> search_pb2.GroupMember:
        return search_pb2.GroupMember(item_id=item_id, taste_score=score, similarity=similarity)

    return search_pb2.DedupGroupsResponse(
        groups=[
            search_pb2.DuplicateGroup(
                kept=member(group.kept, group.kept_score, 1.0),
                removed=[member(i, score, sim) for i, score, sim in group.removed],
            )
            for group in groups
        ],
        items=items,
        seconds=seconds,
    )
