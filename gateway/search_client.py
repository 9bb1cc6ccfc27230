"""The gateway's blocking calls to the search service: what the coordinator and the curation RPCs
need (taste models, scores, labels, decisions, dataset-wide near-duplicate groups).

Errors come back typed: the search service's status code and message, so a caller's NOT_FOUND stays
NOT_FOUND (and an unreachable search service is UNAVAILABLE, which clients retry).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np

from services.common import tracing
from services.common.config import Settings
from services.common.errors import PermanentError
from services.common.server import client_channel
from sfhq.tensors import numpy_to_tensor
from sfhq.v1 import common_pb2, search_pb2, search_pb2_grpc

T = TypeVar("T")
CALL_TIMEOUT_S = 120.0
LONG_CALL_TIMEOUT_S = 1800.0  # a training run, a dataset-wide pass over hundreds of thousands
POSE_BATCH = 50_000  # item ids per SetPoses call (the search service takes 100,000)
SCORE_BATCH = 20_000  # vectors per Score call (20,000 x 768 float32 = 61 MB, under the message limit)


@dataclass(frozen=True)
class Duplicate:
    removed: str  # index id
    kept: str
    similarity: float


class SearchClient:
    def __init__(self, settings: Settings) -> None:
        self.channel = client_channel(settings.addr_for("search"), settings)
        self.stub = search_pb2_grpc.SearchStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Callable[..., T], request: Any, timeout: float = CALL_TIMEOUT_S) -> T:
        try:
            return method(request, timeout=timeout, metadata=tracing.metadata_with_context(()))
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNAVAILABLE
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            raise PermanentError(
                f"search service: {details}", code=(code or grpc.StatusCode.UNKNOWN).name
            ) from None

    # ---- taste models ---------------------------------------------------------------------------

    def taste_model(self, owner: str, name: str) -> search_pb2.TasteModelInfo:
        return self._call(
            self.stub.GetTasteModel, search_pb2.GetTasteModelRequest(taste_model=name, owner=owner)
        )

    def list_models(self, owner: str) -> search_pb2.ListTasteModelsResponse:
        return self._call(self.stub.ListTasteModels, search_pb2.ListTasteModelsRequest(owner=owner))

    def train(self, request: search_pb2.TrainTasteRequest) -> search_pb2.TasteModelInfo:
        return self._call(self.stub.TrainTaste, request, LONG_CALL_TIMEOUT_S)

    def label(self, request: search_pb2.LabelRequest) -> search_pb2.LabelResponse:
        return self._call(self.stub.Label, request)

    def score_ids(
        self, owner: str, model: str, item_ids: Sequence[str]
    ) -> tuple[list[float], search_pb2.TasteModelInfo]:
        request = search_pb2.ScoreRequest(taste_model=model, owner=owner, item_ids=list(item_ids))
        reply = self._call(self.stub.Score, request, LONG_CALL_TIMEOUT_S)
        return list(reply.scores), reply.model

    def score_vectors(
        self, owner: str, model: str, vectors: np.ndarray
    ) -> tuple[list[float], search_pb2.TasteModelInfo]:
        scores: list[float] = []
        info = search_pb2.TasteModelInfo()
        for start in range(0, len(vectors), SCORE_BATCH):
            batch = [numpy_to_tensor(v) for v in vectors[start : start + SCORE_BATCH]]
            reply = self._call(
                self.stub.Score,
                search_pb2.ScoreRequest(taste_model=model, owner=owner, vectors=batch),
                LONG_CALL_TIMEOUT_S,
            )
            scores.extend(reply.scores)
            info = reply.model
        if not len(vectors):
            info = self.taste_model(owner, model)
        return scores, info

    # ---- review, decisions and near-duplicates --------------------------------------------------

    def next_review(self, request: search_pb2.NextReviewRequest) -> search_pb2.NextReviewResponse:
        return self._call(self.stub.NextReview, request)

    def set_decisions(self, item_ids: Sequence[str], decision: str) -> int:
        if not item_ids:
            return 0
        request = search_pb2.SetDecisionsRequest(item_ids=list(item_ids), decision=decision)
        return int(self._call(self.stub.SetDecisions, request).updated)

    def set_poses(self, item_ids: Sequence[str], poses: Sequence[tuple[float, float, float]]) -> int:
        """Record indexed items' head poses (degrees), in batches under the request limit."""
        updated = 0
        for start in range(0, len(item_ids), POSE_BATCH):
            request = search_pb2.SetPosesRequest(
                item_ids=list(item_ids[start : start + POSE_BATCH]),
                poses=[
                    common_pb2.HeadPose(yaw=y, pitch=p, roll=r)
                    for y, p, r in poses[start : start + POSE_BATCH]
                ],
            )
            updated += int(self._call(self.stub.SetPoses, request).updated)
        return updated

    def dedup_groups(
        self,
        dataset_id: str,
        threshold: float,
        *,
        candidate_ids: Sequence[str] | None = None,
        include_public: bool = False,
    ) -> tuple[list[Duplicate], search_pb2.DedupGroupsResponse]:
        """Near-duplicates among the dataset's kept items (with `candidate_ids`: only groups that hold
        one of them); returns (every removed member with its kept twin, the raw groups)."""
        request = search_pb2.DedupGroupsRequest(
            filter=search_pb2.SearchFilter(dataset_id=dataset_id),
            threshold=threshold,
            candidate_ids=list(candidate_ids or ()),
            include_public=include_public,
        )
        reply = self._call(self.stub.DedupGroups, request, LONG_CALL_TIMEOUT_S)
        removed = [
            Duplicate(member.item_id, group.kept.item_id, member.similarity)
            for group in reply.groups
            for member in group.removed
        ]
        return removed, reply
