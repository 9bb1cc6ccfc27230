"""The curation half of `sfhq.v1.Search`: labels, taste models, scores, the review queue, later
decisions and dataset-wide near-duplicate groups. Wiring only (the logic is in `curation.py`,
`taste.py`, `labels.py`); `SearchServicer` (service.py) mixes it in."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import numpy as np

from services.common.contracts import FEATURE_KEY
from services.common.errors import InvalidInput
from services.common.rpc import check_count
from services.search import messages
from services.search.curation import CurationDesk
from services.search.labels import LabelStore
from services.search.taste import TasteCache, TasteModel, TooFewLabels, qualified_name
from sfhq.v1 import search_pb2

DEFAULT_TASTE_MODEL = "default"
MAX_LABELS_PER_REQUEST = 10_000
MAX_DECISIONS_PER_REQUEST = 100_000
MAX_FEATURE_SETS = 8


class CurationRpcs:
    """Needs `tastes`, `labels`, `desk`, `state` and `_images` from the servicer it is mixed into."""

    tastes: TasteCache
    labels: LabelStore
    desk: CurationDesk
    _train_lock: threading.Lock
    _images: Callable[..., np.ndarray]  # CLIP features of request images

    def _model(self, owner: str, spec: str) -> TasteModel:
        return self.tastes(qualified_name(owner, spec or DEFAULT_TASTE_MODEL))

    def Label(
        self, request: search_pb2.LabelRequest, context: grpc.ServicerContext
    ) -> search_pb2.LabelResponse:
        name = qualified_name(request.owner, request.taste_model or DEFAULT_TASTE_MODEL)
        check_count(request.labels, "labels", MAX_LABELS_PER_REQUEST)
        self.labels.append(name, messages.label_records(request.labels, self.desk.state.index))
        positives, negatives = self.labels.counts(name)
        return search_pb2.LabelResponse(positives=positives, negatives=negatives)

    def TrainTaste(
        self, request: search_pb2.TrainTasteRequest, context: grpc.ServicerContext
    ) -> search_pb2.TasteModelInfo:
        name = qualified_name(request.owner, request.taste_model or DEFAULT_TASTE_MODEL)
        keys = list(request.feature_keys)
        if len(keys) > MAX_FEATURE_SETS or len(set(keys)) != len(keys) or any(len(k) > 64 for k in keys):
            raise InvalidInput(f"feature_keys: at most {MAX_FEATURE_SETS} distinct keys of 64 characters")
        with self._train_lock:
            features, labels, ids = self.labels.training_rows(name)
            inputs: np.ndarray | dict[str, np.ndarray] = features
            if keys and keys != [FEATURE_KEY]:  # feature sets: the labelled items embedded with them all
                inputs, kept = self.desk.feature_sets.training_sets(keys, ids, features)
                if not len(kept):
                    raise TooFewLabels(
                        f"feature_keys: none of the {len(ids)} labelled items of {name!r} has "
                        f"{', '.join(keys)} (SFHQ_EXTRA_FEATURES makes them for new jobs)"
                    )
                labels = labels[kept]
            model = TasteModel.train(inputs, labels, name=name, family=request.family or "vta")
            self.tastes.store.save(model)
            self.tastes.forget(name)
        return messages.taste_info(model)

    def Score(
        self, request: search_pb2.ScoreRequest, context: grpc.ServicerContext
    ) -> search_pb2.ScoreResponse:
        if not request.vectors and not request.images and not request.item_ids:
            raise InvalidInput("the request has no vectors, images or item_ids")
        model = self._model(request.owner, request.taste_model)
        rows = [messages.vectors(request.vectors)] if request.vectors else []
        if request.images:
            rows.append(self._images(list(request.images)))
        scores, uncertainty = (
            model.predict_with_uncertainty(np.concatenate(rows)) if rows else (np.zeros(0), np.zeros(0))
        )
        if request.item_ids:
            by_id = self.desk.score_ids(model, list(request.item_ids))
            scores, uncertainty = np.concatenate([scores, by_id[0]]), np.concatenate([uncertainty, by_id[1]])
        return search_pb2.ScoreResponse(
            scores=scores.tolist(), uncertainty=uncertainty.tolist(), model=messages.taste_info(model)
        )

    def ListTasteModels(
        self, request: search_pb2.ListTasteModelsRequest, context: grpc.ServicerContext
    ) -> search_pb2.ListTasteModelsResponse:
        names = self.tastes.store.names(request.owner or None)
        return search_pb2.ListTasteModelsResponse(
            models=[messages.taste_info(self.tastes.store.latest(name)) for name in names]
        )

    def GetTasteModel(
        self, request: search_pb2.GetTasteModelRequest, context: grpc.ServicerContext
    ) -> search_pb2.TasteModelInfo:
        return messages.taste_info(self._model(request.owner, request.taste_model))

    def NextReview(
        self, request: search_pb2.NextReviewRequest, context: grpc.ServicerContext
    ) -> search_pb2.NextReviewResponse:
        selection = messages.search_filter(request.filter, default_decisions=("review",))
        model = qualified_name(request.owner, request.taste_model) if request.taste_model else None
        picks, waiting = self.desk.next_review(model, selection, request.count or 20)
        return search_pb2.NextReviewResponse(
            items=[
                search_pb2.ReviewCandidate(
                    item_id=p.item_id,
                    score=p.score,
                    uncertainty=p.uncertainty,
                    image_uri=p.image_uri,
                    job_id=p.job_id,
                    decision=p.decision,
                )
                for p in picks
            ],
            waiting=waiting,
        )

    def SetDecisions(
        self, request: search_pb2.SetDecisionsRequest, context: grpc.ServicerContext
    ) -> search_pb2.SetDecisionsResponse:
        check_count(request.item_ids, "item_ids", MAX_DECISIONS_PER_REQUEST)
        decision = messages.decision(request.decision, "decision")
        return search_pb2.SetDecisionsResponse(
            updated=self.desk.set_decisions(list(request.item_ids), decision)
        )

    def SetPoses(
        self, request: search_pb2.SetPosesRequest, context: grpc.ServicerContext
    ) -> search_pb2.SetPosesResponse:
        check_count(request.item_ids, "item_ids", MAX_DECISIONS_PER_REQUEST)
        if len(request.poses) != len(request.item_ids):
            raise InvalidInput(f"poses: {len(request.poses)} poses for {len(request.item_ids)} item_ids")
        poses = np.array([(p.yaw, p.pitch, p.roll) for p in request.poses], np.float32).reshape(-1, 3)
        if not np.isfinite(poses).all() or (np.abs(poses) > 180).any():
            raise InvalidInput("poses: every angle must be finite and in [-180, 180] degrees")
        for n, item_id in enumerate(request.item_ids):
            if not item_id or len(item_id) > messages.MAX_ITEM_ID_CHARS:
                raise InvalidInput(f"item_ids[{n}]: empty or longer than {messages.MAX_ITEM_ID_CHARS}")
        return search_pb2.SetPosesResponse(updated=self.desk.set_poses(list(request.item_ids), poses))

    def DedupGroups(
        self, request: search_pb2.DedupGroupsRequest, context: grpc.ServicerContext
    ) -> search_pb2.DedupGroupsResponse:
        started = time.perf_counter()
        if request.threshold and not 0.0 < request.threshold < 1.0:
            raise InvalidInput(f"threshold: {request.threshold} is not a cosine in (0, 1)")
        check_count(request.candidate_ids, "candidate_ids", MAX_DECISIONS_PER_REQUEST, least=0)
        groups, items = self.desk.dedup_groups(
            messages.search_filter(request.filter),
            request.threshold or None,
            list(request.candidate_ids) if request.candidate_ids else None,
            request.include_public,
        )
        return messages.groups_response(groups, items, time.perf_counter() - started)
