"""What a person's curation needs from the search service, as plain methods (no gRPC here).

Scores with the ensemble's uncertainty, the review queue chosen by active learning, later decisions
(a review, a dedup pass) recorded in the index and the jobs' records, and dataset-wide
near-duplicate groups. `services/search/curation_rpcs.py` puts these behind gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidInput
from services.search.curate import Curator
from services.search.dedup import SFHQ_THRESHOLD, DuplicateGroup, dataset_groups
from services.search.feature_sets import FeatureSets
from services.search.index import SearchFilter, VectorIndex
from services.search.state import IndexState
from services.search.taste import TasteCache, TasteModel

MAX_REVIEW_BATCH = 500
MAX_SCORED_IDS = 100_000


@dataclass(frozen=True)
class ReviewPick:
    item_id: str
    score: float
    uncertainty: float
    image_uri: str
    job_id: str
    decision: str


class CurationDesk:
    def __init__(self, state: IndexState, tastes: TasteCache, curator: Curator | None) -> None:
        self.state = state
        self.tastes = tastes
        self.curator = curator
        self.feature_sets = FeatureSets(state.blobs)

    def _index(self) -> VectorIndex:
        index = self.state.index
        if index is None:
            raise InvalidInput("the index is empty: nothing to score, review or deduplicate yet")
        return index

    def score_ids(self, model: TasteModel, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(scores, uncertainty) of indexed items by their stored features."""
        if len(item_ids) > MAX_SCORED_IDS:
            raise InvalidInput(f"item_ids: {len(item_ids)}; at most {MAX_SCORED_IDS} per call")
        rows = self._index().vectors_of(item_ids)
        return model.predict_with_uncertainty(self.feature_sets.inputs(model, item_ids, rows))

    def next_review(
        self, model_name: str | None, selection: SearchFilter, count: int
    ) -> tuple[list[ReviewPick], int]:
        """The `count` items of `selection` a person's verdict teaches most: the ensemble's most
        uncertain first (closest to 0.5, or its members disagreeing); returns (picks, how many wait)."""
        if not 1 <= count <= MAX_REVIEW_BATCH:
            raise InvalidInput(f"count: must be in [1, {MAX_REVIEW_BATCH}]")
        index = self.state.index
        waiting = index.items_where(selection) if index is not None else []
        if not waiting:
            return [], 0
        ids = [item_id for item_id, _ in waiting]
        if model_name:
            scores, uncertainty = self.score_ids(self.tastes(model_name), ids)
        else:  # the scores the items were curated with: closeness to 0.5
            scores = np.array(
                [meta.taste_score if meta.taste_score is not None else 0.5 for _, meta in waiting]
            )
            uncertainty = 1.0 - 2.0 * np.abs(scores - 0.5)
        order = np.lexsort((np.array(ids), -uncertainty))[:count]  # ties: by id, so the order is stable
        picks = [
            ReviewPick(
                ids[n],
                float(scores[n]),
                float(uncertainty[n]),
                waiting[n][1].image_uri,
                waiting[n][1].job_id,
                waiting[n][1].decision,
            )
            for n in order
        ]
        return picks, len(waiting)

    def set_decisions(self, item_ids: list[str], decision: str) -> int:
        if self.curator is not None:
            return self.curator.record_decisions(item_ids, decision)
        index = self._index()
        changed = index.set_decision(item_ids, decision)
        if changed:
            self.state.mark_dirty()
        return changed

    def set_poses(self, item_ids: list[str], poses: np.ndarray) -> int:
        """Head poses of indexed items (the annotate stage measures them after curate indexed them)."""
        index = self.state.index
        if index is None:
            return 0
        changed = index.set_poses(item_ids, poses)
        if changed:
            self.state.mark_dirty()
        return changed

    def dedup_groups(
        self,
        dataset: SearchFilter,
        threshold: float | None,
        candidate_ids: list[str] | None,
        include_public: bool,
    ) -> tuple[list[DuplicateGroup], int]:
        if not dataset.dataset_id:
            raise InvalidInput("filter.dataset_id: a dataset-wide pass needs the dataset")
        return dataset_groups(
            self._index(),
            dataset,
            threshold or SFHQ_THRESHOLD,
            candidate_ids=candidate_ids,
            include_public=include_public,
        )
