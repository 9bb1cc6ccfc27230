"""Vector index: exact and approximate search, filters, removal, tuning by measured recall, persistence."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from services.common.blobs import BlobStore
from services.search import index as index_module
from services.search.index import (
    IndexInputError,
    IndexSpec,
    ItemMeta,
    SearchFilter,
    VectorIndex,
    choose_index_type,
    exact_neighbours,
    recall_at_k,
)
from tests.helpers.synthetic import clustered_features, normalized

DIM = 32


def make_index(n: int = 600, seed: int = 0, **kwargs) -> tuple[VectorIndex, np.ndarray, list[str]]:
    data = clustered_features(n, DIM, seed=seed).vectors
    ids = [f"item{i:05d}" for i in range(n)]
    metas = [
        ItemMeta(
            job_id=f"job{i % 3}",
            source="sfhq_part1" if i % 2 else f"job:job{i % 3}",
            image_uri=f"file:///data/{i}.jpg",
            taste_score=None if i % 7 == 0 else (i % 10) / 10,
        )
        for i in range(n)
    ]
    index = VectorIndex(DIM, **kwargs)
    index.add(ids, data, metas)
    return index, data, ids


def brute_force(data: np.ndarray, query: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[int]:
    sims = normalized(data) @ normalized(query[None])[0]
    if mask is not None:
        sims = np.where(mask, sims, -np.inf)
    order = np.argsort(-sims, kind="stable")[:k]
    return [int(i) for i in order if np.isfinite(sims[i])]


def test_exact_search_returns_the_true_neighbours_with_metadata() -> None:
    index, data, ids = make_index()
    queries = clustered_features(600, DIM, n_queries=5, seed=0).queries
    results = index.search(queries, k=7)
    assert len(results) == 5
    for query, hits in zip(queries, results, strict=True):
        expected = brute_force(data, query, 7)
        assert [h.item_id for h in hits] == [ids[i] for i in expected]
        exact_scores = normalized(data[expected]) @ normalized(query[None])[0]
        np.testing.assert_allclose([h.score for h in hits], exact_scores, atol=2e-3)  # float16 storage
    hit = results[0][0]
    row = ids.index(hit.item_id)
    assert hit.image_uri == f"file:///data/{row}.jpg" and hit.job_id == f"job{row % 3}"
    assert index.search(queries[0], k=3)[0][0].item_id == results[0][0].item_id  # a single [D] query


def test_bad_input_is_refused_with_a_named_problem() -> None:
    index, data, _ = make_index(50)
    with pytest.raises(IndexInputError, match="dimension"):
        index.add(["x"], np.ones((1, DIM + 1)))
    with pytest.raises(IndexInputError, match="NaN"):
        index.add(["x"], np.full((1, DIM), np.nan))
    with pytest.raises(IndexInputError, match="all-zero"):
        index.add(["x"], np.zeros((1, DIM)))
    with pytest.raises(IndexInputError, match="2 item ids but 1"):
        index.add(["x", "y"], np.ones((1, DIM)))
    with pytest.raises(IndexInputError, match="unique"):
        index.add(["x", "x"], np.ones((2, DIM)))
    with pytest.raises(IndexInputError, match="top_k"):
        index.search(data[0], k=0)
    with pytest.raises(IndexInputError, match="dimension"):
        index.search(np.ones(DIM + 3))
    assert len(index) == 50  # nothing half-added


def test_readding_replaces_and_removal_hides_items() -> None:
    index, data, ids = make_index(200)
    index.add([ids[0]], data[1:2], [ItemMeta(job_id="moved")])
    assert len(index) == 200 and index.dead_rows == 1
    np.testing.assert_allclose(index.get_vector(ids[0]), normalized(data[1:2])[0], atol=1e-3)
    assert index.get_meta(ids[0]).job_id == "moved"
    assert index.remove([ids[1], ids[2], "unknown"]) == 2
    assert ids[1] not in index and len(index) == 198
    returned = {h.item_id for h in index.search(data[1], k=20)[0]}
    assert ids[1] not in returned and ids[0] in returned  # ids[0] now carries data[1]
    assert index.get_vector(ids[1]) is None


def test_filters_select_job_source_family_and_taste_range() -> None:
    index, data, ids = make_index()
    query = data[10]
    rows = np.arange(len(ids))
    taste = np.array([np.nan if i % 7 == 0 else (i % 10) / 10 for i in rows])
    cases = [
        (SearchFilter(job_id="job1"), rows % 3 == 1),
        (SearchFilter(source="sfhq_part1"), rows % 2 == 1),
        (SearchFilter(source="job"), rows % 2 == 0),  # "job" matches every "job:<id>" source
        (SearchFilter(min_taste=0.5, max_taste=0.7), (taste >= 0.5) & (taste <= 0.7)),
        (
            SearchFilter(job_id="job2", source="job", min_taste=0.3),
            (rows % 3 == 2) & (rows % 2 == 0) & (taste >= 0.3),
        ),
    ]
    for search_filter, mask in cases:
        hits = index.search(query, k=15, filter=search_filter)[0]
        assert [h.item_id for h in hits] == [ids[i] for i in brute_force(data, query, 15, mask)], (
            search_filter
        )
    assert index.search(query, k=5, filter=SearchFilter(job_id="no-such-job"))[0] == []


def test_the_faiss_selector_path_agrees_with_exact_filtering(monkeypatch: pytest.MonkeyPatch) -> None:
    index, data, ids = make_index()
    monkeypatch.setattr(index_module, "BRUTE_FORCE_ROWS", 0)  # force the FAISS ID-selector route
    index.remove(ids[:50])
    mask = (np.arange(len(ids)) % 3 == 0) & (np.arange(len(ids)) >= 50)
    hits = index.search(data[60], k=12, filter=SearchFilter(job_id="job0"))[0]
    assert [h.item_id for h in hits] == [ids[i] for i in brute_force(data, data[60], 12, mask)]
    matches = index.range_search(data[60], 0.8, filter=SearchFilter(job_id="job0"))[0]
    sims = normalized(data) @ normalized(data[60:61])[0]
    expected = {ids[i] for i in np.flatnonzero(mask & (sims > 0.8))}
    assert {m[0] for m in matches} == expected


def test_range_search_finds_everything_above_the_threshold() -> None:
    index, data, ids = make_index()
    sims = normalized(data[:4]) @ normalized(data).T
    for q, matches in enumerate(index.range_search(data[:4], 0.85)):
        expected = {ids[i] for i in np.flatnonzero(sims[q] > 0.85 + 2e-3)}  # margin for float16 storage
        found = [m[0] for m in matches]
        assert expected <= set(found) and ids[q] in found
        assert [m[1] for m in matches] == sorted((m[1] for m in matches), reverse=True)


def test_index_type_follows_size_and_is_tuned_to_the_target_recall() -> None:
    sample = normalized(clustered_features(3000, DIM, seed=4).vectors)
    assert choose_index_type(1000, DIM).kind == "flat"
    medium = choose_index_type(50_000, DIM, 0.95, sample=sample)
    assert medium.kind == "sq_fp16" and medium.measured_recall >= 0.95
    # Beyond EXACT_LIMIT: IVF while its query time (scaled to n) fits the latency budget, else HNSW.
    ivf = choose_index_type(1_000_000, DIM, 0.9, sample=sample, max_sample=3000, latency_budget_ms=1e6)
    assert ivf.kind == "ivf" and ivf.measured_recall >= 0.9
    assert ivf.nlist == 2000 and 1 <= ivf.nprobe <= ivf.nlist  # nlist scaled to the full size
    hnsw = choose_index_type(1_000_000, DIM, 0.9, sample=sample, max_sample=3000, latency_budget_ms=0.0)
    assert hnsw.kind == "hnsw" and hnsw.measured_recall >= 0.9 and hnsw.ef_search >= 10
    with pytest.raises(IndexInputError, match="sample"):
        choose_index_type(1_000_000, DIM)


@pytest.mark.parametrize(
    "spec",
    [
        IndexSpec("ivf", nlist=40, target_recall=0.9),
        IndexSpec("hnsw", hnsw_m=16, ef_construction=40, target_recall=0.9),
    ],
)
def test_rebuild_tunes_the_search_parameter_on_the_data_at_hand(spec: IndexSpec) -> None:
    features = clustered_features(4000, DIM, n_queries=100, seed=5)
    index = VectorIndex(DIM, auto_rebuild=False, target_recall=0.9)
    ids = [f"i{i}" for i in range(4000)]
    index.add(ids, features.vectors)
    tuned = index.rebuild(spec)
    assert tuned.kind == spec.kind and tuned.measured_recall >= 0.9
    # Independent check on held-out queries: recall@10 against exact search is near the target.
    truth = exact_neighbours(normalized(features.vectors), normalized(features.queries), 10)
    found = np.array([[int(h.item_id[1:]) for h in hits] for hits in index.search(features.queries, k=10)])
    assert recall_at_k(found, truth) >= 0.85
    # A lower target gives a cheaper setting (the parameter is measured, not fixed).
    cheaper = index.rebuild(IndexSpec.from_dict({**spec.to_dict(), "target_recall": 0.5}))
    knob = "nprobe" if spec.kind == "ivf" else "ef_search"
    assert getattr(cheaper, knob) <= getattr(tuned, knob)


def test_growth_triggers_a_rebuild_into_the_next_index_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "FLAT_LIMIT", 300)
    monkeypatch.setattr(index_module, "EXACT_LIMIT", 900)
    features = clustered_features(2000, DIM, seed=6).vectors
    index = VectorIndex(DIM, target_recall=0.9)
    index.add([f"a{i}" for i in range(250)], features[:250])
    assert index.spec.kind == "flat"
    index.add([f"b{i}" for i in range(250, 700)], features[250:700])
    assert index.spec.kind == "sq_fp16"
    with index.bulk():  # no rebuild in the middle of a bulk import...
        index.add([f"c{i}" for i in range(700, 2000)], features[700:])
        assert index.spec.kind == "sq_fp16"
    assert index.spec.kind in ("ivf", "hnsw") and index.spec.measured_recall >= 0.9  # ...one at the end
    assert len(index) == 2000
    assert index.search(features[1500], k=1)[0][0].item_id == "c1500"


def test_save_and_load_round_trip_with_an_atomic_pointer(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    index, data, ids = make_index(300)
    index.remove(ids[:5])
    first = index.save(store)
    loaded = VectorIndex.load(store)
    assert loaded.version == first and len(loaded) == 295 and loaded.dead_rows == 5
    assert [h.item_id for h in loaded.search(data[20], k=5)[0]] == [
        h.item_id for h in index.search(data[20], k=5)[0]
    ]
    assert loaded.get_meta(ids[20]) == index.get_meta(ids[20])

    # A writer that died before moving the pointer leaves a half version: readers never see it.
    crashed = f"v{time.time_ns():020d}-deadbeef"
    store.put(f"index/main/{crashed}/arrays.npz", b"partial")
    assert VectorIndex.load(store).version == first

    index.add(["new"], data[0:1])
    versions = [index.save(store) for _ in range(3)]
    assert json.loads(store.get("index/main/CURRENT"))["version"] == versions[-1]
    kept = {key.split("/")[2] for key in store.list("index/main/v")}
    assert kept == {versions[-1], versions[-2]}  # the current one and the one it replaced; the rest is gone
    assert "new" in VectorIndex.load(store)


def test_load_rebuilds_when_the_faiss_blob_does_not_match(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    index, data, ids = make_index(200)
    version = index.save(store)
    store.put(f"index/main/{version}/faiss.index", b"")
    loaded = VectorIndex.load(store)
    assert loaded.search(data[3], k=1)[0][0].item_id == ids[3]


def test_hnsw_removal_is_honoured_through_the_selector() -> None:
    features = clustered_features(1500, DIM, seed=7).vectors
    index = VectorIndex(DIM, auto_rebuild=False)
    ids = [f"h{i}" for i in range(1500)]
    index.add(ids, features)
    index.rebuild(IndexSpec("hnsw", hnsw_m=16, ef_construction=40, target_recall=0.9))
    index.remove(ids[:100])
    for q in range(0, 100, 10):
        hits = index.search(features[q], k=10)[0]
        assert hits and all(h.item_id not in ids[:100] for h in hits)
