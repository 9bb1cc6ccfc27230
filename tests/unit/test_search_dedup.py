"""Near-duplicate removal: the greedy rule, worst-first, against the index, and the scalable pair search."""

from __future__ import annotations

import numpy as np
import pytest

from services.search.dedup import SFHQ_THRESHOLD, DedupInputError, find_pairs, near_duplicates
from services.search.index import ItemMeta, SearchFilter, VectorIndex
from tests.helpers.synthetic import clustered_features, normalized

DIM = 32


def oracle(vectors: np.ndarray, threshold: float, order: np.ndarray) -> tuple[set[int], dict[int, int]]:
    """All pairs by a dense matrix, then the greedy rule in plain Python."""
    sims = normalized(vectors) @ normalized(vectors).T
    kept: list[int] = []
    duplicate_of: dict[int, int] = {}
    for i in order:
        twins = [j for j in kept if sims[i, j] > threshold]
        if twins:
            duplicate_of[int(i)] = max(twins, key=lambda j: sims[i, j])
        else:
            kept.append(int(i))
    return set(kept), duplicate_of


def test_greedy_matches_an_all_pairs_oracle_and_keeps_the_earliest() -> None:
    features = clustered_features(800, DIM, duplicate_fraction=0.1, seed=1)
    result = near_duplicates(features.vectors, threshold=0.92)
    kept, duplicate_of = oracle(features.vectors, 0.92, np.arange(800))
    assert set(result.kept) == kept
    assert {pos: other for pos, other, _ in result.duplicates} == duplicate_of
    assert len(result.duplicates) >= 60  # the planted near-duplicates were found
    for pos, other, _ in result.duplicates:
        assert other < pos  # in input order, the earlier member survives
    assert result.kept == sorted(result.kept) and result.pair_recall == 1.0


def test_guarantees_hold_and_a_chain_loses_only_its_middle() -> None:
    features = clustered_features(500, DIM, duplicate_fraction=0.15, seed=2)
    result = near_duplicates(features.vectors, threshold=0.9)
    unit = normalized(features.vectors)
    kept_sims = unit[result.kept] @ unit[result.kept].T
    np.fill_diagonal(kept_sims, 0)
    assert kept_sims.max() <= 0.9 + 1e-6  # no two kept images are near-duplicates
    for pos, other, sim in result.duplicates:
        assert other in result.kept and sim > 0.9  # every dropped image has a kept twin
        assert abs(unit[pos] @ unit[other] - sim) < 1e-4

    # a ~ b and b ~ c but a !~ c: VTA's rule would drop a and b; we drop only b.
    a = np.array([1.0, 0.0])
    b = np.array([np.cos(0.35), np.sin(0.35)])
    c = np.array([np.cos(0.7), np.sin(0.7)])
    chain = near_duplicates(np.stack([a, b, c]), threshold=0.9)
    assert chain.kept == [0, 2] and chain.duplicates[0][:2] == (1, 0)


def test_worst_first_keeps_the_best_scored_member() -> None:
    base = np.random.default_rng(3).standard_normal((3, DIM))
    vectors = np.concatenate([base, base[:1] + 0.01, base[:1] + 0.02])  # rows 0, 3, 4 are one group
    scores = np.array([0.2, 0.5, 0.5, 0.9, 0.4])
    result = near_duplicates(vectors, scores=scores, worst_first=True)
    assert result.kept == [1, 2, 3]
    assert {pos: other for pos, other, _ in result.duplicates} == {0: 3, 4: 3}
    kept, _ = oracle(vectors, SFHQ_THRESHOLD, np.argsort(-scores, kind="stable"))
    assert set(result.kept) == kept
    plain = near_duplicates(vectors)  # without worst-first the first one wins
    assert plain.kept == [0, 1, 2]


def test_candidates_are_compared_with_accepted_items_of_the_same_job() -> None:
    base = normalized(np.random.default_rng(4).standard_normal((4, DIM)))
    index = VectorIndex(DIM)
    index.add(["a1", "b1"], base[:2], [ItemMeta(job_id="A"), ItemMeta(job_id="B")])
    candidates = np.stack([base[0] + 0.01, base[1] + 0.01, base[2], base[2] + 0.01])
    result = near_duplicates(candidates, index=index)
    assert result.kept == [2]
    assert {(p, o) for p, o, _ in result.duplicates} == {(0, "a1"), (1, "b1"), (3, 2)}
    only_job_a = near_duplicates(candidates, index=index, index_filter=SearchFilter(job_id="A"))
    assert only_job_a.kept == [1, 2]
    assert {(p, o) for p, o, _ in only_job_a.duplicates} == {(0, "a1"), (3, 2)}


@pytest.mark.parametrize("method", ["cluster_join", "faiss_ivf"])
def test_the_scalable_pair_search_finds_the_exact_pairs(method: str) -> None:
    unit = normalized(clustered_features(4000, DIM, duplicate_fraction=0.05, seed=5).vectors)
    exact = find_pairs(unit, 0.92, method="exact")
    approx = find_pairs(unit, 0.92, method=method)
    assert method in approx.method and 0.0 < approx.recall <= 1.0
    exact_pairs = set(zip(exact.a.tolist(), exact.b.tolist(), strict=True))
    found = set(zip(approx.a.tolist(), approx.b.tolist(), strict=True))
    assert found <= exact_pairs  # everything reported really is above the threshold
    assert len(found) >= 0.98 * len(exact_pairs) and len(exact_pairs) > 150
    kept_approx = near_duplicates(unit, pair_method=method).kept
    kept_exact = near_duplicates(unit, pair_method="exact").kept
    assert len(set(kept_approx) ^ set(kept_exact)) <= 0.02 * len(exact_pairs) + 1


def test_bad_requests_are_refused() -> None:
    vectors = np.random.default_rng(6).standard_normal((3, DIM))
    with pytest.raises(DedupInputError, match="threshold"):
        near_duplicates(vectors, threshold=1.5)
    with pytest.raises(DedupInputError, match="score"):
        near_duplicates(vectors, worst_first=True)
    with pytest.raises(DedupInputError, match="2 scores for 3"):
        near_duplicates(vectors, scores=[0.1, 0.2], worst_first=True)
    with pytest.raises(DedupInputError, match="NaN"):
        near_duplicates(vectors, scores=[0.1, np.nan, 0.3], worst_first=True)
    with pytest.raises(DedupInputError, match="pair method"):
        near_duplicates(vectors, pair_method="all_pairs")
    assert near_duplicates(np.zeros((0, DIM))).kept == []
