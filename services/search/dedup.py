"""Near-duplicate removal on CLIP features (SFHQ: no two released images have cosine similarity > ~0.92).

Rule (greedy, in order): a candidate is dropped when its cosine similarity to an already accepted image
(an item of `index`) or to an earlier *kept* candidate exceeds the threshold; otherwise it is kept.
`worst_first=True` orders candidates by score, best first, so each near-duplicate group keeps its
best-scored member; this is what VTA's `delete_worst_near_duplicates` aims at (it sorts by classifier
probability and drops the worse members).

Difference from VTA's `delete_near_duplicates`, on purpose: VTA drops a row when *any* not-yet-dropped
row is similar, which in a chain a~b~c (a !~ c) drops both a and b. Here a dropped candidate always has a
kept twin above the threshold, and no two kept candidates are above it: fewer images lost, same guarantee.

Scale: pairs come from a partitioned (IVF-style) self-join, never an all-pairs loop. Up to
EXACT_PAIRS_LIMIT candidates, exact dense blocks; beyond, a k-means partition where each list is compared
by dense BLAS blocks with the rows that have it among their p nearest centroids, p being the smallest that
finds the true pairs of a measured sample (so the recall of duplicates is known, not assumed). A FAISS IVF
range search gives the same pairs and is kept as `pair_method="faiss_ivf"`; on CPU it is slower, as it
scans lists one vector at a time instead of with matrix products (figures in bench/search.py).
Against already accepted images the index's own range search is used.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import faiss
import numpy as np

from services.common.errors import InvalidInput
from services.search.index import ItemMeta, SearchFilter, VectorIndex, nlist_for, normalize_rows

log = logging.getLogger(__name__)

SFHQ_THRESHOLD = 0.92
EXACT_PAIRS_LIMIT = 10_000  # up to this, exact dense blocks are fast enough (n² d flops)
PAIR_SAMPLE_QUERIES = 500  # sampled rows whose exact pairs measure the recall of the partitioned join
MIN_TRUTH_PAIRS = 200  # fewer true pairs than this in the sample: measure on slightly less similar ones
PROXY_MARGIN = 0.05  # ...at most this far below the threshold
TARGET_PAIR_RECALL = 0.995


class DedupInputError(InvalidInput):
    """Bad dedup request (threshold out of range, scores missing or mismatched...)."""


@dataclass
class DedupResult:
    kept: list[int]  # positions of the kept candidates, ascending
    duplicates: list[tuple[int, int | str, float]]  # (position, duplicate_of, similarity), by position
    # duplicate_of is a kept candidate's position (int) or an indexed item id (str)
    method: str = ""  # how pairs were found ("exact", "cluster_join nlist=… probe=…", "faiss_ivf …")
    pair_recall: float | None = None  # measured recall of above-threshold pairs (1.0 when exact)
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)


def near_duplicates(
    vectors: np.ndarray,
    threshold: float = SFHQ_THRESHOLD,
    scores: np.ndarray | None = None,
    worst_first: bool = False,
    index: VectorIndex | None = None,
    *,
    index_filter: SearchFilter | None = None,
    pair_method: str = "auto",
    seed: int = 0,
) -> DedupResult:
    """Greedy near-duplicate removal of `vectors` (raw or normalised features, [N, D], in order).

    `index`: already accepted images; a candidate above the threshold to any of them (optionally only
    those matching `index_filter`, e.g. one job) is a duplicate of that item id.
    `scores` + `worst_first`: keep the best-scored member of each group.
    """
    started = time.perf_counter()
    if not -1.0 <= threshold < 1.0:
        raise DedupInputError(f"threshold must be a cosine similarity in [-1, 1), got {threshold}")
    unit = (
        normalize_rows(vectors, dim=index.dim if index is not None else None, what="dedup vectors")
        if len(np.asarray(vectors))
        else np.zeros((0, 1), np.float32)
    )
    n = len(unit)
    order = np.arange(n)
    if worst_first:
        if scores is None:
            raise DedupInputError("worst_first needs one quality score per candidate")
        scores = np.asarray(scores, np.float64).reshape(-1)
        if len(scores) != n:
            raise DedupInputError(f"{len(scores)} scores for {n} candidates")
        if not np.isfinite(scores).all():
            raise DedupInputError("scores contain NaN or infinity")
        order = np.argsort(-scores, kind="stable")  # best first; ties keep input order
    if n == 0:
        return DedupResult(kept=[], duplicates=[], method="empty", pair_recall=1.0)

    duplicate_of: dict[int, tuple[int | str, float]] = {}
    if index is not None and len(index):
        for pos, matches in enumerate(index.range_search(unit, threshold, filter=index_filter)):
            if matches:
                duplicate_of[pos] = matches[0]  # the most similar accepted item

    pairs = find_pairs(unit, threshold, method=pair_method, seed=seed)
    lims, neighbours, sims = pairs.csr(n)
    # Candidates with no twin in the batch are decided at once; only the others need the greedy walk.
    has_twins = np.diff(lims) > 0
    kept = ~has_twins
    for pos in duplicate_of:
        kept[pos] = False
    for pos in order[has_twins[order]]:
        if pos in duplicate_of:
            continue
        row_neighbours = neighbours[lims[pos] : lims[pos + 1]]
        twins = kept[row_neighbours]
        if not twins.any():
            kept[pos] = True
            continue
        row_sims = sims[lims[pos] : lims[pos + 1]]
        best = int(np.argmax(np.where(twins, row_sims, -np.inf)))
        duplicate_of[pos] = (int(row_neighbours[best]), float(row_sims[best]))

    duplicates = sorted((pos, other, float(sim)) for pos, (other, sim) in duplicate_of.items())
    result = DedupResult(
        kept=np.flatnonzero(kept).tolist(),
        duplicates=duplicates,
        method=pairs.method,
        pair_recall=pairs.recall,
        seconds=time.perf_counter() - started,
        stats={"candidates": n, "pairs": len(pairs.a), **pairs.timings},
    )
    log.info(
        "dedup of %d candidates at %.3f: kept %d, %d duplicates (%s, %.1f s)",
        n,
        threshold,
        len(result.kept),
        len(duplicates),
        pairs.method,
        result.seconds,
    )
    return result


# ------------------------------------------------------------------------------------------ pair finding


@dataclass
class PairSet:
    """Unordered above-threshold pairs (a < b) among the candidates, and how they were found."""

    a: np.ndarray
    b: np.ndarray
    sims: np.ndarray
    method: str
    recall: float  # measured fraction of true pairs found (1.0 when exact)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase

    def csr(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Both directions as compressed rows: neighbours of i are `rows[lims[i]:lims[i+1]]`."""
        src = np.concatenate([self.a, self.b])
        dst = np.concatenate([self.b, self.a])
        sims = np.concatenate([self.sims, self.sims])
        order = np.argsort(src, kind="stable")
        lims = np.searchsorted(src[order], np.arange(n + 1))
        return lims, dst[order], sims[order]


def find_pairs(
    unit: np.ndarray, threshold: float, *, method: str = "auto", seed: int = 0, probe: int | None = None
) -> PairSet:
    """All pairs of unit rows with cosine similarity > threshold.

    method: "exact" (blocked dense products, n² d work), "cluster_join" (k-means partition; each list is
    compared, by dense blocks, with the rows that have it among their p nearest centroids; p measured),
    "faiss_ivf" (FAISS IVF range search, nprobe measured), or "auto" (exact up to EXACT_PAIRS_LIMIT rows,
    cluster_join beyond). `probe` fixes p / nprobe instead of measuring it (benchmarks compare the
    two approximate methods at equal recall that way).
    """
    n = len(unit)
    if method == "auto":
        method = "exact" if n <= EXACT_PAIRS_LIMIT else "cluster_join"
    if method == "exact" or n < 2:
        a, b, sims = _block_pairs(unit, np.arange(n), np.arange(n), threshold)
        return _unique_pairs(a, b, sims, "exact", 1.0)
    if method == "cluster_join":
        return _cluster_join(unit, threshold, seed, probe=probe)
    if method == "faiss_ivf":
        return _faiss_ivf_pairs(unit, threshold, seed, nprobe=probe)
    raise DedupInputError(f"unknown pair method {method!r} (auto, exact, cluster_join, faiss_ivf)")


def _block_pairs(
    unit: np.ndarray, rows: np.ndarray, cols: np.ndarray, threshold: float, block: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (rows[i], cols[j]) above threshold, by BLAS blocks small enough to stay in cache-sized memory."""
    found_a, found_b, found_s = [], [], []
    for r0 in range(0, len(rows), block):
        row_ids = rows[r0 : r0 + block]
        left = unit[row_ids]
        for c0 in range(0, len(cols), block):
            col_ids = cols[c0 : c0 + block]
            sims = left @ unit[col_ids].T
            i, j = np.nonzero(sims > threshold)
            if len(i):
                found_a.append(row_ids[i])
                found_b.append(col_ids[j])
                found_s.append(sims[i, j])
    if not found_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_s)


def _unique_pairs(a: np.ndarray, b: np.ndarray, sims: np.ndarray, method: str, recall: float) -> PairSet:
    """Drop self pairs, orient as (low, high), and keep one copy of each pair."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    not_self = a != b
    a, b, sims = a[not_self], b[not_self], np.asarray(sims, np.float32)[not_self]
    low, high = np.minimum(a, b), np.maximum(a, b)
    _, first = np.unique(low * (int(high.max(initial=0)) + 1) + high, return_index=True)
    return PairSet(a=low[first], b=high[first], sims=sims[first], method=method, recall=recall)


@dataclass
class _Truth:
    """Exact pairs (sample row, other row) that pair recall is measured on."""

    pairs: np.ndarray  # [P, 2]
    threshold: float  # the similarity above which they were taken (≤ the dedup threshold)
    sample_rows: np.ndarray


def _sample_truth(unit: np.ndarray, threshold: float, rng: np.random.Generator) -> _Truth:
    """Exact pairs of a random sample of rows, near the threshold, to measure pair recall against.

    A sample holds few true duplicates, too few to resolve a 0.5 % miss rate. Pairs a little *below* the
    threshold are more numerous and harder to find (less similar rows are farther apart in the partition),
    so the threshold is lowered in 0.01 steps, at most PROXY_MARGIN, until MIN_TRUTH_PAIRS pairs are in
    hand: the recall measured on them is a conservative estimate for the real pairs. Should even that
    fail, the sample's nearest neighbours stand in.
    """
    n = len(unit)
    sample_rows = np.sort(rng.choice(n, size=min(n, PAIR_SAMPLE_QUERIES), replace=False))
    lowest = threshold - PROXY_MARGIN
    a, b, sims = _block_pairs(unit, sample_rows, np.arange(n), lowest)
    keep = a != b
    a, b, sims = a[keep], b[keep], sims[keep]
    proxy = threshold
    while (sims > proxy).sum() < MIN_TRUTH_PAIRS and proxy - 0.01 >= lowest - 1e-9:
        proxy = round(proxy - 0.01, 6)
    chosen = sims > proxy
    if chosen.sum() >= 20:
        return _Truth(np.stack([a[chosen], b[chosen]], axis=1), proxy, sample_rows)
    _, nearest = faiss.knn(unit[sample_rows], unit, 2, metric=faiss.METRIC_INNER_PRODUCT)
    # The nearest other row (the row itself is normally first, but exact copies may swap places).
    other = np.where(nearest[:, 0] == sample_rows, nearest[:, 1], nearest[:, 0])
    return _Truth(np.stack([sample_rows, other], axis=1), float("nan"), sample_rows)


def _cluster_join(
    unit: np.ndarray, threshold: float, seed: int, max_probe: int = 16, probe: int | None = None
) -> PairSet:
    n, dim = unit.shape
    nlist = nlist_for(n)
    rng = np.random.default_rng(seed)
    clock = time.perf_counter()
    max_probe = max(max_probe, probe or 0)
    # 40 points per centroid: just above FAISS's minimum; the partition only has to be reasonable,
    # because the probe count is measured afterwards.
    kmeans = faiss.Kmeans(dim, nlist, niter=8, seed=seed, spherical=True, max_points_per_centroid=40)
    kmeans.train(unit[np.sort(rng.choice(n, size=min(n, 40 * nlist), replace=False))])
    max_probe = min(max_probe, nlist)
    _, lists = faiss.knn(unit, kmeans.centroids, max_probe, metric=faiss.METRIC_INNER_PRODUCT)
    primary = lists[:, 0]
    partition_s, clock = time.perf_counter() - clock, time.perf_counter()

    # A pair (q, r) is compared when r's list is among q's p nearest, or q's among r's: its "rank" is the
    # smaller of the two positions. The smallest p covering TARGET_PAIR_RECALL of the sample's pairs wins.
    truth = _sample_truth(unit, threshold, rng).pairs
    rank_qr = _position(lists[truth[:, 0]], primary[truth[:, 1]], max_probe)
    rank_rq = _position(lists[truth[:, 1]], primary[truth[:, 0]], max_probe)
    ranks = np.minimum(rank_qr, rank_rq)
    if probe is not None:
        probe = min(probe, max_probe)
        recall = float(np.mean(ranks < probe)) if len(ranks) else 1.0
    else:
        probe, recall = max_probe, float(np.mean(ranks < max_probe)) if len(ranks) else 1.0
        for p in range(1, max_probe + 1):
            covered = float(np.mean(ranks < p)) if len(ranks) else 1.0
            if covered >= TARGET_PAIR_RECALL:
                probe, recall = p, covered
                break

    measure_s, clock = time.perf_counter() - clock, time.perf_counter()
    by_primary = np.argsort(primary, kind="stable")
    member_bounds = np.searchsorted(primary[by_primary], np.arange(nlist + 1))
    probed_lists = lists[:, :probe].ravel()
    probed_rows = np.repeat(np.arange(n), probe)
    by_probe = np.argsort(probed_lists, kind="stable")
    probe_bounds = np.searchsorted(probed_lists[by_probe], np.arange(nlist + 1))
    found_a, found_b, found_s = [], [], []
    for cell in range(nlist):
        members = by_primary[member_bounds[cell] : member_bounds[cell + 1]]
        if len(members) == 0:
            continue
        visitors = probed_rows[by_probe[probe_bounds[cell] : probe_bounds[cell + 1]]]
        a, b, sims = _block_pairs(unit, members, visitors, threshold)
        found_a.append(a)
        found_b.append(b)
        found_s.append(sims)
    pairs = _unique_pairs(
        np.concatenate(found_a),
        np.concatenate(found_b),
        np.concatenate(found_s),
        f"cluster_join nlist={nlist} probe={probe}",
        recall,
    )
    pairs.timings = {
        "partition_s": partition_s,
        "measure_s": measure_s,
        "join_s": time.perf_counter() - clock,
    }
    return pairs


def _position(lists: np.ndarray, wanted: np.ndarray, missing: int) -> np.ndarray:
    """Index of `wanted[i]` in `lists[i]`, or `missing` where absent."""
    hit = lists == wanted[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), missing)


def _faiss_ivf_pairs(unit: np.ndarray, threshold: float, seed: int, nprobe: int | None = None) -> PairSet:
    """FAISS IVF range search of every row, with nprobe doubled until the sample's pairs are found."""
    n, dim = unit.shape
    nlist = nlist_for(n)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = seed
    ivf.cp.max_points_per_centroid = 40
    rng = np.random.default_rng(seed)
    ivf.train(unit[np.sort(rng.choice(n, size=min(n, 40 * nlist), replace=False))])
    ivf.add(unit)
    truth = _sample_truth(unit, threshold, rng)
    wanted = {tuple(p) for p in truth.pairs.tolist()}
    queries = unit[truth.sample_rows]
    fixed, nprobe = nprobe is not None, min(nprobe or 1, nlist)
    while True:
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        if math.isnan(truth.threshold):  # nearest-neighbour stand-ins: found by a top-2 search
            _, top = ivf.search(queries, 2, params=params)
            found = {(int(q), int(r)) for q, row in zip(truth.sample_rows, top, strict=True) for r in row}
        else:
            lims, _, rows = ivf.range_search(queries, truth.threshold, params=params)
            found = {
                (int(q), int(r)) for i, q in enumerate(truth.sample_rows) for r in rows[lims[i] : lims[i + 1]]
            }
        recall = len(wanted & found) / len(wanted) if wanted else 1.0
        if fixed or recall >= TARGET_PAIR_RECALL or nprobe >= nlist:
            break
        nprobe = min(nlist, 2 * nprobe)
    lims, sims, rows = ivf.range_search(unit, threshold, params=faiss.SearchParametersIVF(nprobe=nprobe))
    queries = np.repeat(np.arange(n), np.diff(lims.astype(np.int64)))
    return _unique_pairs(queries, rows, sims, f"faiss_ivf nlist={nlist} nprobe={nprobe}", recall)


__all__ = ["SFHQ_THRESHOLD", "DedupInputError", "DedupResult", "PairSet", "find_pairs", "near_duplicates"]


# ---- dataset-wide passes -------------------------------------------------------------------------


def _selected(meta: ItemMeta, dataset: SearchFilter) -> bool:
    """Whether an item's metadata passes the dataset filter's dataset and decisions."""
    if dataset.dataset_id and meta.dataset_id != dataset.dataset_id:
        return False
    return dataset.decisions is None or meta.decision in dataset.decisions


@dataclass
class DuplicateGroup:
    """A kept item and the near-duplicates removed in its favour: (item id, taste score, similarity)."""

    kept: str
    kept_score: float | None
    removed: list[tuple[str, float | None, float]] = field(default_factory=list)


def dataset_groups(
    index: VectorIndex,
    dataset: SearchFilter,
    threshold: float = SFHQ_THRESHOLD,
    *,
    candidate_ids: list[str] | None = None,
    include_public: bool = False,
) -> tuple[list[DuplicateGroup], int]:
    """Near-duplicate groups among a dataset's kept items; returns (groups, items compared).

    The best-scored member of each group stays (unscored items count as 0); equal scores go to the
    smaller item id, so the outcome does not depend on the order items were decided. Imported public
    items (`include_public`) are never removed: they stay and remove what is too close to them.
    With `candidate_ids`, only the candidates and the items within the threshold of one are compared:
    the rest of the dataset is clean already, so the groups are the same at a fraction of the cost.
    """
    if candidate_ids is None:
        members = dict(index.items_where(dataset))
        if include_public:
            for item_id, meta in index.items_where(SearchFilter(decisions=("",))):
                if not meta.owner and not meta.job_id:
                    members.setdefault(item_id, meta)
        ids = sorted(members)
    else:
        # Only the candidates and what lies within the threshold of one: the rest of the dataset is
        # clean already, and reading every member's metadata would cost more than the search.
        wanted = [i for i in candidate_ids if (m := index.get_meta(i)) is not None and _selected(m, dataset)]
        if not wanted:
            return [], 0
        chosen = set(wanted)
        queries = index.vectors_of(wanted)
        scopes = [dataset, SearchFilter(decisions=("",), owner="")] if include_public else [dataset]
        for scope in scopes:
            for matches in index.range_search(queries, threshold, filter=scope):
                chosen.update(item_id for item_id, _ in matches)
        ids = sorted(chosen)
        members = {i: meta for i in ids if (meta := index.get_meta(i)) is not None}
    if len(ids) < 2:
        return [], len(ids)
    fixed = {i for i in ids if not members[i].job_id and not members[i].owner}  # imported: stays
    scores = np.array([np.inf if i in fixed else (members[i].taste_score or 0.0) for i in ids], np.float64)
    ranked = np.where(np.isinf(scores), 2.0, scores)  # finite, and above every probability
    result = near_duplicates(index.vectors_of(ids), threshold, ranked, worst_first=True)
    groups: dict[int, DuplicateGroup] = {}
    for position, kept_position, similarity in result.duplicates:
        assert isinstance(kept_position, int)
        if ids[position] in fixed:
            continue  # two imported images close to each other: not ours to remove
        kept_id = ids[kept_position]
        group = groups.setdefault(kept_position, DuplicateGroup(kept_id, members[kept_id].taste_score))
        group.removed.append((ids[position], members[ids[position]].taste_score, similarity))
    return sorted(groups.values(), key=lambda g: g.kept), len(ids)
