"""The vector index: FAISS over L2-normalised CLIP features (inner product = cosine similarity).

What it keeps, per row (a row is one added vector; FAISS ids are the row numbers):
- the normalised vector in float16 (the source of truth for rebuilds, exact filtered search, labels;
  SFHQ's own features are float16 too), and the item metadata used by filters and results:
  item id, job id, source, image URI, taste score;
- an "alive" flag: removal is a tombstone, because HNSW cannot delete and FAISS renumbers on removal.
  Tombstoned rows are excluded with an ID selector and dropped at the next rebuild (compaction).

The index type follows the size and a target recall@10, and its search parameter is tuned by measuring
recall against exact search on the data at hand (`choose_index_type`, `build_and_tune`):
    n <= 20k: exact flat (float32) · n <= 200k: flat with an fp16 scalar quantiser (half the memory,
    recall ≈ 1) · beyond: IVF-Flat while its measured query time, scaled to n, fits a latency budget
    (it builds several times faster than HNSW and removes natively), else HNSW.

Persistence writes a new version folder and then flips a small `CURRENT` pointer (BlobStore.put is atomic),
so a reader never loads half an index, on a local folder or on S3.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import faiss
import numpy as np

from services.common.errors import InvalidInput

log = logging.getLogger(__name__)

FLAT_LIMIT = 20_000  # exact float32 search up to here
EXACT_LIMIT = 200_000  # exact fp16 search up to here; approximate (IVF/HNSW) beyond
TUNING_QUERIES = 300  # rows held out of a build and used as queries to measure recall@10
RECALL_K = 10
MAX_TOP_K = 1000
BRUTE_FORCE_ROWS = 20_000  # a filter selecting at most this many rows is answered exactly from float16 copies
RANGE_BLOCK = 32_768  # stored rows per dense product in range searches
FORMAT_VERSION = 1
INDEX_KINDS = ("flat", "sq_fp16", "ivf", "hnsw")


class IndexInputError(InvalidInput):
    """Bad input to the index (wrong dimension, non-finite or zero vectors, mismatched lengths...)."""


# ------------------------------------------------------------------------------------------ data types


@dataclass
class ItemMeta:
    """What the index stores about an item besides its vector."""

    job_id: str = ""
    source: str = ""
    image_uri: str = ""
    taste_score: float | None = None
    owner: str = ""  # the user whose item it is; "" = public (an imported SFHQ part)
    dataset_id: str = ""  # the dataset a job's candidate is for
    decision: str = ""  # the curate decision (DECISIONS); "" = none recorded (imported, or older items)
    pose: tuple[float, float, float] | None = None  # head (yaw, pitch, roll) in degrees; None = unknown


# Curate decisions as the index stores them (one byte per row). "" = no decision: imported items and
# items indexed before decisions were recorded, which were all accepted ones.
DECISIONS = ("", "accepted", "review", "rejected_taste", "rejected_duplicate")
KEPT_DECISIONS = ("", "accepted")  # what a search shows unless asked for more


@dataclass(frozen=True)
class SearchFilter:
    """Restrict results. `source` matches exactly, or as a family: "job" matches "job:<id>" sources."""

    job_id: str | None = None
    source: str | None = None
    min_taste: float | None = None
    max_taste: float | None = None
    owner: str | None = None  # only this user's items and public ones
    dataset_id: str | None = None
    decisions: tuple[str, ...] | None = None  # only items with one of these decisions (None: any)
    # head pose ranges in degrees ({"yaw": (min, max), ...}; None bounds are open): only items whose
    # pose is known and inside every range
    pose_ranges: tuple[tuple[str, float | None, float | None], ...] = ()

    def is_empty(self) -> bool:
        return (
            not self.job_id
            and not self.source
            and self.min_taste is None
            and self.max_taste is None
            and self.owner is None
            and not self.dataset_id
            and self.decisions is None
            and not self.pose_ranges
        )


@dataclass(frozen=True)
class Hit:
    item_id: str
    score: float  # cosine similarity
    image_uri: str
    job_id: str
    source: str
    taste_score: float | None
    decision: str = ""
    dataset_id: str = ""
    pose: tuple[float, float, float] | None = None


POSE_ANGLES = ("yaw", "pitch", "roll")  # the pose column's order


@dataclass
class IndexSpec:
    """Which FAISS index to build and how to search it (the search parameter is measured, not guessed)."""

    kind: str = "flat"
    nlist: int = 0  # ivf: number of inverted lists
    nprobe: int = 0  # ivf: lists visited per query
    hnsw_m: int = 0  # hnsw: graph degree
    ef_construction: int = 0
    ef_search: int = 0  # hnsw: candidate list length per query
    target_recall: float = 0.95
    measured_recall: float | None = None  # recall@10 vs exact search, measured on the data at hand

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise IndexInputError(f"unknown index kind {self.kind!r}; expected one of {INDEX_KINDS}")

    def describe(self) -> str:
        if self.kind == "ivf":
            return f"IVF{self.nlist},Flat nprobe={self.nprobe}"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m},Flat efSearch={self.ef_search}"
        return {"flat": "Flat", "sq_fp16": "SQfp16"}[self.kind]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IndexSpec:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


# ------------------------------------------------------------------------------------------ FAISS helpers


def normalize_rows(vectors: np.ndarray, *, dim: int | None = None, what: str = "vectors") -> np.ndarray:
    """Validate [N, D] (or [D]) features and return float32 unit rows; raises IndexInputError naming the problem."""
    array = np.asarray(vectors)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise IndexInputError(f"{what} must be [N, D], got shape {list(array.shape)}")
    if not np.issubdtype(array.dtype, np.number):
        raise IndexInputError(f"{what} must be numeric, got dtype {array.dtype}")
    if dim is not None and array.shape[1] != dim:
        raise IndexInputError(f"{what} have dimension {array.shape[1]}, the index holds {dim}-d vectors")
    array = np.array(array, dtype=np.float32, copy=True)
    if not np.isfinite(array).all():
        raise IndexInputError(f"{what} contain NaN or infinity")
    norms = np.linalg.norm(array, axis=1)
    if array.shape[0] and norms.min() < 1e-12:
        raise IndexInputError(
            f"{what} contain an all-zero row (row {int(norms.argmin())}); it has no direction"
        )
    array /= norms[:, None]
    return array


def nlist_for(n: int) -> int:
    """Inverted lists for n vectors: ~2·√n (a few hundred vectors per list), within FAISS's training needs."""
    return int(min(max(16, round(2 * math.sqrt(max(n, 1)))), max(16, n // 39)))


def build_faiss_index(
    spec: IndexSpec, dim: int, vectors: np.ndarray, *, seed: int = 0, chunk: int = 65_536
) -> faiss.Index:
    """Build the index of `spec` over unit float32 `vectors` (row i gets FAISS id i)."""
    metric = faiss.METRIC_INNER_PRODUCT
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif spec.kind == "sq_fp16":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, metric)
    elif spec.kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, spec.nlist, metric)  # keeps a reference to its quantizer
        index.cp.seed = seed
        # 64 points per centroid are plenty for k-means on CLIP features, and keep training fast.
        index.cp.max_points_per_centroid = 64
        index.train(_training_sample(vectors, 64 * spec.nlist, seed))
        index.nprobe = max(1, spec.nprobe)
    else:
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, metric)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = max(RECALL_K, spec.ef_search)
    for start in range(0, len(vectors), chunk):
        index.add(np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32))
    return index


def _training_sample(vectors: np.ndarray, size: int, seed: int) -> np.ndarray:
    if len(vectors) <= size:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size=size, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def search_parameters(
    spec: IndexSpec, selector: faiss.IDSelector | None = None, effort: float = 1.0
) -> faiss.SearchParameters:
    """FAISS per-call parameters: the tuned nprobe/efSearch (scaled by `effort`) and an optional ID selector."""
    if spec.kind == "ivf":
        params = faiss.SearchParametersIVF(nprobe=min(spec.nlist, max(1, int(round(spec.nprobe * effort)))))
    elif spec.kind == "hnsw":
        params = faiss.SearchParametersHNSW(efSearch=max(RECALL_K, int(round(spec.ef_search * effort))))
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    return params


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k row ids by inner product, [Q, k] (BLAS, no index copy)."""
    _, ids = faiss.knn(
        np.ascontiguousarray(queries, dtype=np.float32),
        np.ascontiguousarray(vectors, dtype=np.float32),
        k,
        metric=faiss.METRIC_INNER_PRODUCT,
    )
    return ids


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = RECALL_K) -> float:
    """Mean fraction of the true top-k found in the returned top-k."""
    hits = 0
    for f, t in zip(found[:, :k], truth[:, :k], strict=True):
        hits += len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist()))
    return hits / max(1, truth[:, :k].size)


def tune_search_parameter(
    index: faiss.Index, spec: IndexSpec, queries: np.ndarray, truth: np.ndarray
) -> IndexSpec:
    """Smallest nprobe / efSearch reaching `spec.target_recall` recall@10 on these queries (measured).

    Doubling finds a bracket, bisection the smallest passing value. If nothing reaches the target, the
    most thorough setting is kept and the recall it measured is recorded.
    """
    if spec.kind not in ("ivf", "hnsw"):
        spec.measured_recall = recall_at_k(_search_ids(index, spec, queries), truth)
        return spec
    field_name = "nprobe" if spec.kind == "ivf" else "ef_search"
    low_limit, high_limit = (1, spec.nlist) if spec.kind == "ivf" else (RECALL_K, 4096)

    def measure(value: int) -> float:
        setattr(spec, field_name, value)
        return recall_at_k(_search_ids(index, spec, queries), truth)

    value, failed = low_limit, low_limit - 1
    recall = measure(value)
    while recall < spec.target_recall and value < high_limit:
        failed, value = value, min(high_limit, value * 2)
        recall = measure(value)
    if recall >= spec.target_recall:
        best, best_recall = value, recall
        lo, hi = failed, value  # lo fails (or is below the range), hi passes
        while hi - lo > max(1, hi // 16):  # bisect to within ~6 %: finer steps are within noise
            mid = (lo + hi) // 2
            mid_recall = measure(mid)
            if mid_recall >= spec.target_recall:
                hi, best, best_recall = mid, mid, mid_recall
            else:
                lo = mid
        value, recall = best, best_recall
    setattr(spec, field_name, value)
    spec.measured_recall = recall
    return spec


def _search_ids(index: faiss.Index, spec: IndexSpec, queries: np.ndarray) -> np.ndarray:
    _, ids = index.search(queries, RECALL_K, params=search_parameters(spec))
    return ids


def build_and_tune(
    spec: IndexSpec, vectors: np.ndarray, *, tuning_rows: int = TUNING_QUERIES, seed: int = 0
) -> tuple[faiss.Index, IndexSpec]:
    """Build `spec` over unit `vectors` and tune its search parameter on held-out rows.

    The last `tuning_rows` rows are left out of the build, used as queries (their exact top-10 among the
    other rows is the truth), then added: tuning queries the index has never seen behave like new images,
    whereas rows already in an HNSW graph or an IVF list find their neighbours too easily. Row i still
    gets FAISS id i. Callers put a random sample of rows last (`VectorIndex.rebuild` does).
    """
    spec = IndexSpec.from_dict(spec.to_dict())
    dim = vectors.shape[1]
    held_out = min(tuning_rows, len(vectors) // 10)
    if spec.kind not in ("ivf", "hnsw") or held_out < RECALL_K:
        index = build_faiss_index(spec, dim, vectors, seed=seed)
        if spec.kind == "flat":
            spec.measured_recall = 1.0  # exact by construction
        return index, spec
    kept = len(vectors) - held_out
    index = build_faiss_index(spec, dim, vectors[:kept], seed=seed)
    queries = np.ascontiguousarray(vectors[kept:], dtype=np.float32)
    spec = tune_search_parameter(index, spec, queries, exact_neighbours(vectors[:kept], queries, RECALL_K))
    index.add(queries)
    return index, spec


def _time_per_query(index: faiss.Index, spec: IndexSpec, queries: np.ndarray) -> float:
    """Median seconds of one query on one thread.

    A lone query is single-threaded work (a server runs concurrent queries side by side), and with several
    OpenMP threads it mostly waits at barriers, wildly so on a shared machine: that would measure the
    machine's load, not the index. The median ignores the odd preempted query.
    """
    params = search_parameters(spec)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        times = []
        for q in queries:
            start = time.perf_counter()
            index.search(q[None, :], RECALL_K, params=params)
            times.append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(threads)
    return float(np.median(times)) if times else 0.0


def choose_index_type(
    n: int,
    dim: int,
    target_recall: float = 0.95,
    *,
    sample: np.ndarray | None = None,
    max_sample: int = 30_000,
    latency_budget_ms: float = 5.0,
    seed: int = 0,
) -> IndexSpec:
    """Pick the index kind for `n` vectors and tune it to `target_recall` recall@10 on `sample`.

    `sample` (unit rows of the data at hand) is required beyond FLAT_LIMIT. Up to EXACT_LIMIT: the fp16
    flat index if its measured recall reaches the target (it always does in practice), else float32 flat.
    Beyond: IVF and HNSW are both built on (up to `max_sample` rows of) the sample and tuned to the target.
    IVF wins if its query time, scaled to `n` (an IVF query scans ~√n vectors when nlist grows with √n),
    fits `latency_budget_ms`: it builds several times faster than HNSW and supports removal. Otherwise
    HNSW, whose query time grows only with log n. The search parameter found on the sample is a starting
    point: `VectorIndex.rebuild` tunes it again on the real index.
    """
    if not 0.0 < target_recall <= 1.0:
        raise IndexInputError(f"target recall must be in (0, 1], got {target_recall}")
    if n <= FLAT_LIMIT:
        return IndexSpec("flat", target_recall=target_recall, measured_recall=1.0)
    if sample is None:
        raise IndexInputError(
            f"choose_index_type needs a sample of the data to measure recall beyond {FLAT_LIMIT} vectors"
        )
    rng = np.random.default_rng(seed)
    # A random subset in random order, so the held-out tuning rows at its end are a random sample too.
    sample = np.ascontiguousarray(sample[rng.permutation(len(sample))[:max_sample]], dtype=np.float32)

    if n <= EXACT_LIMIT:
        spec = IndexSpec("sq_fp16", target_recall=target_recall)
        held_out = min(TUNING_QUERIES, len(sample) // 10)
        index = build_faiss_index(spec, dim, sample[:-held_out])
        queries = sample[-held_out:]
        spec = tune_search_parameter(
            index, spec, queries, exact_neighbours(sample[:-held_out], queries, RECALL_K)
        )
        if spec.measured_recall >= target_recall:
            return spec
        return IndexSpec("flat", target_recall=target_recall, measured_recall=1.0)

    measured: dict[str, tuple[IndexSpec, float]] = {}
    for spec in (
        IndexSpec("ivf", nlist=nlist_for(len(sample)), nprobe=1, target_recall=target_recall),
        IndexSpec("hnsw", hnsw_m=32, ef_construction=40, ef_search=RECALL_K, target_recall=target_recall),
    ):
        index, spec = build_and_tune(spec, sample, seed=seed)
        latency_ms = _time_per_query(index, spec, sample[-100:]) * 1e3
        log.info(
            "index candidate %s: recall@10 %.3f, %.2f ms/query on %d rows",
            spec.describe(),
            spec.measured_recall,
            latency_ms,
            len(sample),
        )
        measured[spec.kind] = (spec, latency_ms)
    (ivf, ivf_ms), (hnsw, _) = measured["ivf"], measured["hnsw"]
    ivf_ms_at_n = ivf_ms * math.sqrt(n / len(sample))
    ivf_ok = ivf.measured_recall >= target_recall and ivf_ms_at_n <= latency_budget_ms
    if ivf_ok or (hnsw.measured_recall < target_recall and ivf.measured_recall >= hnsw.measured_recall):
        # nlist for the full size; the sample's nprobe is only a starting point (the rebuild re-tunes it).
        ivf.nlist = nlist_for(n)
        ivf.nprobe = min(ivf.nprobe, ivf.nlist)
        return ivf
    return hnsw


# ------------------------------------------------------------------------------------------ the index


class _Column:
    """A growable numpy column (amortised O(1) append)."""

    def __init__(self, dtype, width: int | None = None, fill=0) -> None:
        shape = (16,) if width is None else (16, width)
        self.data = np.full(shape, fill, dtype=dtype)
        self.size = 0
        self.fill = fill

    def extend(self, values: np.ndarray) -> None:
        need = self.size + len(values)
        if need > len(self.data):
            grown = np.full(
                (max(need, 2 * len(self.data)),) + self.data.shape[1:], self.fill, self.data.dtype
            )
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = values
        self.size = need

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.size]

    @classmethod
    def of(cls, values: np.ndarray, fill=0) -> _Column:
        column = cls(values.dtype, values.shape[1] if values.ndim == 2 else None, fill)
        column.extend(values)
        return column


class _Vocabulary:
    """Strings ⇄ small integer codes (job ids and sources repeat across many rows)."""

    def __init__(self, words: Sequence[str] = ()) -> None:
        self.words: list[str] = list(words)
        self.codes: dict[str, int] = {w: i for i, w in enumerate(self.words)}

    def code(self, word: str) -> int:
        if word not in self.codes:
            self.codes[word] = len(self.words)
            self.words.append(word)
        return self.codes[word]


@dataclass
class _Rows:
    """Everything stored per row, column by column."""

    dim: int
    vectors: _Column = field(init=False)
    alive: _Column = field(init=False)
    job: _Column = field(init=False)
    source: _Column = field(init=False)
    owner: _Column = field(init=False)
    taste: _Column = field(init=False)
    dataset: _Column = field(init=False)
    decision: _Column = field(init=False)
    pose: _Column = field(init=False)
    item_ids: list[str] = field(default_factory=list)
    image_uris: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vectors = _Column(np.float16, self.dim)
        self.alive = _Column(np.bool_)
        self.job = _Column(np.int32)
        self.source = _Column(np.int32)
        self.owner = _Column(np.int32)
        self.taste = _Column(np.float32, fill=np.nan)
        self.dataset = _Column(np.int32)
        self.decision = _Column(np.int8)
        self.pose = _Column(np.float32, 3, fill=np.nan)

    def __len__(self) -> int:
        return self.alive.size

    def columns(self) -> tuple[_Column, ...]:
        """Every per-row column (kept in step by compaction and reordering)."""
        return (
            self.vectors,
            self.alive,
            self.job,
            self.source,
            self.owner,
            self.taste,
            self.dataset,
            self.decision,
            self.pose,
        )


class VectorIndex:
    """Item-addressed vector index with metadata filters, range search, tuning and blob-store persistence.

    Thread-safe: one lock serialises mutations and searches (FAISS searches are short and use every core).
    """

    def __init__(
        self,
        dim: int,
        *,
        target_recall: float = 0.95,
        spec: IndexSpec | None = None,
        auto_rebuild: bool = True,
    ) -> None:
        if dim <= 0:
            raise IndexInputError(f"dimension must be positive, got {dim}")
        self.dim = dim
        self.target_recall = target_recall
        self.auto_rebuild = auto_rebuild
        self.spec = spec or IndexSpec("flat", target_recall=target_recall, measured_recall=1.0)
        self._rows = _Rows(dim)
        self._row_of: dict[str, int] = {}
        self._jobs = _Vocabulary([""])
        self._sources = _Vocabulary([""])
        self._owners = _Vocabulary([""])  # code 0 = public
        self._datasets = _Vocabulary([""])
        self._faiss = (
            build_faiss_index(self.spec, dim, np.zeros((0, dim), np.float32))
            if self.spec.kind in ("flat", "sq_fp16", "hnsw")
            else None
        )
        self._built_at = 0  # alive rows at the last (re)build: growth triggers the next one
        self._bulk_depth = 0
        self._lock = threading.RLock()
        self.version: str | None = None  # the persisted version this was loaded from / saved as

    # ---- size and look-up ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row_of

    @property
    def dead_rows(self) -> int:
        return len(self._rows) - len(self._row_of)

    def item_ids(self) -> list[str]:
        with self._lock:
            return list(self._row_of)

    def get_vector(self, item_id: str) -> np.ndarray | None:
        """The stored unit vector of `item_id` (float32), or None."""
        with self._lock:
            row = self._row_of.get(item_id)
            return None if row is None else self._rows.vectors.view[row].astype(np.float32)

    def get_meta(self, item_id: str) -> ItemMeta | None:
        with self._lock:
            row = self._row_of.get(item_id)
            return None if row is None else self._meta(row)

    def _meta(self, row: int) -> ItemMeta:
        taste = float(self._rows.taste.view[row])
        yaw, pitch, roll = (float(v) for v in self._rows.pose.view[row])
        return ItemMeta(
            job_id=self._jobs.words[self._rows.job.view[row]],
            source=self._sources.words[self._rows.source.view[row]],
            image_uri=self._rows.image_uris[row],
            taste_score=None if math.isnan(taste) else taste,
            owner=self._owners.words[self._rows.owner.view[row]],
            dataset_id=self._datasets.words[self._rows.dataset.view[row]],
            decision=DECISIONS[self._rows.decision.view[row]],
            pose=None if math.isnan(yaw) else (yaw, pitch, roll),
        )

    # ---- mutation -----------------------------------------------------------------------------------

    def add(
        self, item_ids: Sequence[str], vectors: np.ndarray, metas: Sequence[ItemMeta] | None = None
    ) -> int:
        """Add (or replace) items; vectors are raw features, normalised here. Returns the index size."""
        item_ids = list(item_ids)
        unit = normalize_rows(vectors, dim=self.dim)
        if len(item_ids) != len(unit):
            raise IndexInputError(f"{len(item_ids)} item ids but {len(unit)} vectors")
        if metas is not None and len(metas) != len(item_ids):
            raise IndexInputError(f"{len(item_ids)} item ids but {len(metas)} metadata records")
        for item_id in item_ids:
            if not isinstance(item_id, str) or not item_id:
                raise IndexInputError(f"item ids must be non-empty strings, got {item_id!r}")
        for meta in metas or ():
            if meta.decision not in DECISIONS:
                raise IndexInputError(f"decision {meta.decision!r} is not one of {DECISIONS}")
        if len(set(item_ids)) != len(item_ids):
            raise IndexInputError("item ids in one add() must be unique")
        metas = list(metas) if metas is not None else [ItemMeta() for _ in item_ids]
        if not item_ids:
            return len(self)
        with self._lock:
            self._tombstone([i for i in item_ids if i in self._row_of])  # re-adding replaces
            first = len(self._rows)
            rows = self._rows
            rows.vectors.extend(unit.astype(np.float16))
            rows.alive.extend(np.ones(len(unit), np.bool_))
            rows.job.extend(np.array([self._jobs.code(m.job_id or "") for m in metas], np.int32))
            rows.source.extend(np.array([self._sources.code(m.source or "") for m in metas], np.int32))
            rows.owner.extend(np.array([self._owners.code(m.owner or "") for m in metas], np.int32))
            rows.taste.extend(
                np.array([np.nan if m.taste_score is None else m.taste_score for m in metas], np.float32)
            )
            rows.dataset.extend(np.array([self._datasets.code(m.dataset_id or "") for m in metas], np.int32))
            rows.decision.extend(np.array([DECISIONS.index(m.decision) for m in metas], np.int8))
            rows.pose.extend(
                np.array([(np.nan,) * 3 if m.pose is None else m.pose for m in metas], np.float32).reshape(
                    -1, 3
                )
            )
            rows.item_ids.extend(item_ids)
            rows.image_uris.extend(m.image_uri or "" for m in metas)
            for offset, item_id in enumerate(item_ids):
                self._row_of[item_id] = first + offset
            if self._faiss is not None:
                # The float16-rounded vectors, so FAISS and the stored copy agree exactly.
                self._faiss.add(rows.vectors.view[first:].astype(np.float32))
            else:
                self._rebuild_locked(self.spec)  # an untrained IVF (e.g. loaded without FAISS data)
            self._maybe_rebuild_locked()
            return len(self)

    def set_decision(self, item_ids: Iterable[str], decision: str) -> int:
        """Record a new decision for indexed items (a review, a dedup pass); returns how many changed."""
        if decision not in DECISIONS:
            raise IndexInputError(f"decision {decision!r} is not one of {DECISIONS}")
        code = DECISIONS.index(decision)
        with self._lock:
            rows = [self._row_of[i] for i in item_ids if i in self._row_of]
            self._rows.decision.view[rows] = code
            return len(rows)

    def set_poses(self, item_ids: Sequence[str], poses: np.ndarray) -> int:
        """Record head poses ([N, 3] yaw, pitch, roll in degrees; NaN = unknown) of indexed items
        (unknown ids are ignored); returns how many changed."""
        poses = np.asarray(poses, np.float32).reshape(-1, 3)
        if len(poses) != len(item_ids):
            raise IndexInputError(f"{len(item_ids)} item ids but {len(poses)} poses")
        if np.isinf(poses).any() or (np.abs(np.nan_to_num(poses)) > 180).any():
            raise IndexInputError("poses must be angles in [-180, 180] degrees (NaN = unknown)")
        with self._lock:
            found = [(self._row_of[i], n) for n, i in enumerate(item_ids) if i in self._row_of]
            if found:
                rows, which = zip(*found, strict=True)
                self._rows.pose.view[list(rows)] = poses[list(which)]
            return len(found)

    def items_where(self, filter: SearchFilter) -> list[tuple[str, ItemMeta]]:
        """Every item the filter selects, with its metadata (for review queues and dataset passes)."""
        with self._lock:
            selection = self._selection(filter)
            rows = np.flatnonzero(selection) if selection is not None else np.arange(len(self._rows))
            return [(self._rows.item_ids[r], self._meta(int(r))) for r in rows]

    def vectors_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """The stored unit vectors of `item_ids` ([N, D] float32); IndexInputError names a missing one."""
        with self._lock:
            missing = [i for i in item_ids if i not in self._row_of]
            if missing:
                raise IndexInputError(f"{missing[0]!r} is not in the index ({len(missing)} ids missing)")
            return self._rows.vectors.view[[self._row_of[i] for i in item_ids]].astype(np.float32)

    def remove(self, item_ids: Iterable[str]) -> int:
        """Remove items (unknown ids are ignored); returns how many were removed."""
        with self._lock:
            removed = self._tombstone([i for i in item_ids if i in self._row_of])
            self._maybe_rebuild_locked()
            return removed

    def _tombstone(self, item_ids: list[str]) -> int:
        for item_id in item_ids:
            row = self._row_of.pop(item_id)
            self._rows.alive.view[row] = False
        return len(item_ids)

    @contextlib.contextmanager
    def bulk(self) -> Iterator[VectorIndex]:
        """Suspend automatic rebuilds during a large import; rebuild once at the end if warranted."""
        with self._lock:
            self._bulk_depth += 1
        try:
            yield self
        finally:
            with self._lock:
                self._bulk_depth -= 1
                self._maybe_rebuild_locked()

    def _maybe_rebuild_locked(self) -> None:
        if not self.auto_rebuild or self._bulk_depth:
            return
        alive, total = len(self._row_of), len(self._rows)
        grew = alive > max(FLAT_LIMIT, 2 * self._built_at)
        too_many_dead = total > 1000 and (total - alive) > 0.25 * total
        if grew or too_many_dead:
            self.rebuild()

    def rebuild(self, spec: IndexSpec | None = None) -> IndexSpec:
        """Compact tombstones and rebuild; with no `spec`, choose and tune the index type for the current size."""
        with self._lock:
            return self._rebuild_locked(spec)

    def _rebuild_locked(self, spec: IndexSpec | None) -> IndexSpec:
        started = time.perf_counter()
        self._compact()
        vectors = self._rows.vectors.view.astype(np.float32)
        n = len(vectors)
        if spec is None:
            spec = choose_index_type(
                n, self.dim, self.target_recall, sample=vectors if n > FLAT_LIMIT else None
            )
        spec = IndexSpec.from_dict(spec.to_dict())
        if spec.kind == "ivf":
            # Training needs ~39 points per list; a tiny index falls back to exact search.
            if n < 39 * 16:
                spec = IndexSpec("flat", target_recall=spec.target_recall, measured_recall=1.0)
            else:
                spec.nlist = min(spec.nlist or nlist_for(n), nlist_for(n))
        if spec.kind in ("ivf", "hnsw"):
            self._move_rows_to_end(
                np.random.default_rng(len(self._rows)).choice(
                    n, size=min(TUNING_QUERIES, n // 10), replace=False
                )
            )
            vectors = self._rows.vectors.view.astype(np.float32)
        index, spec = build_and_tune(spec, vectors)
        self._faiss, self.spec, self._built_at = index, spec, n
        log.info(
            "index rebuilt: %d vectors, %s, recall@10 %s, %.1f s",
            n,
            spec.describe(),
            "n/a" if spec.measured_recall is None else f"{spec.measured_recall:.3f}",
            time.perf_counter() - started,
        )
        return spec

    def _compact(self) -> None:
        """Drop tombstoned rows and renumber (FAISS ids are row numbers, so this precedes a rebuild)."""
        rows = self._rows
        keep = np.flatnonzero(rows.alive.view)
        if len(keep) == len(rows):
            return
        fresh = _Rows(self.dim)
        fresh.vectors = _Column.of(rows.vectors.view[keep])
        fresh.alive = _Column.of(np.ones(len(keep), np.bool_))
        fresh.job = _Column.of(rows.job.view[keep])
        fresh.source = _Column.of(rows.source.view[keep])
        fresh.owner = _Column.of(rows.owner.view[keep])
        fresh.taste = _Column.of(rows.taste.view[keep], fill=np.nan)
        fresh.dataset = _Column.of(rows.dataset.view[keep])
        fresh.decision = _Column.of(rows.decision.view[keep])
        fresh.pose = _Column.of(rows.pose.view[keep], fill=np.nan)
        fresh.item_ids = [rows.item_ids[r] for r in keep]
        fresh.image_uris = [rows.image_uris[r] for r in keep]
        self._rows = fresh
        self._row_of = {item_id: row for row, item_id in enumerate(fresh.item_ids)}

    def _move_rows_to_end(self, chosen: np.ndarray) -> None:
        """Reorder rows so `chosen` come last (they become the held-out tuning queries of a rebuild)."""
        rows = self._rows
        last = np.zeros(len(rows), bool)
        last[chosen] = True
        order = np.concatenate([np.flatnonzero(~last), np.flatnonzero(last)])
        for column in rows.columns():
            column.data[: column.size] = column.view[order]
        rows.item_ids = [rows.item_ids[r] for r in order]
        rows.image_uris = [rows.image_uris[r] for r in order]
        self._row_of = {item_id: row for row, item_id in enumerate(rows.item_ids) if rows.alive.view[row]}

    # ---- search -------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int = 10, filter: SearchFilter | None = None) -> list[list[Hit]]:
        """Top-k items by cosine similarity for each query ([D] or [Q, D] raw features) → one hit list per query."""
        if not 1 <= int(k) <= MAX_TOP_K:
            raise IndexInputError(f"top_k must be between 1 and {MAX_TOP_K}, got {k}")
        unit = normalize_rows(queries, dim=self.dim, what="query vectors")
        with self._lock:
            if not self._row_of or not len(unit):
                return [[] for _ in unit]
            selection = self._selection(filter)
            if selection is None:
                scores, rows = self._faiss.search(unit, k, params=search_parameters(self.spec))
            elif not selection.any():
                return [[] for _ in unit]
            elif self._answer_exactly(selection):
                scores, rows = self._exact_subset_search(unit, k, selection)
            else:
                with self._bitmap_selector(selection) as selector:
                    scores, rows = self._faiss.search(
                        unit, k, params=search_parameters(self.spec, selector, self._effort(selection))
                    )
            return [
                [self._hit(int(r), float(s)) for s, r in zip(srow, rrow, strict=True) if r >= 0]
                for srow, rrow in zip(scores, rows, strict=True)
            ]

    def range_search(
        self, queries: np.ndarray, threshold: float, filter: SearchFilter | None = None
    ) -> list[list[tuple[str, float]]]:
        """For each query, every item with cosine similarity > `threshold`, as (item_id, similarity), best first."""
        unit = normalize_rows(queries, dim=self.dim, what="query vectors")
        with self._lock:
            if not self._row_of or not len(unit):
                return [[] for _ in unit]
            lims, sims, rows = self._range_rows(unit, float(threshold), filter)
            out = []
            for q in range(len(unit)):
                found = sorted(
                    zip(
                        sims[lims[q] : lims[q + 1]].tolist(),
                        rows[lims[q] : lims[q + 1]].tolist(),
                        strict=True,
                    ),
                    reverse=True,
                )
                out.append([(self._rows.item_ids[r], s) for s, r in found])
            return out

    def _range_rows(
        self, unit: np.ndarray, threshold: float, filter: SearchFilter | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        selection = self._selection(filter)
        if selection is None and self.spec.kind != "flat":
            return self._faiss.range_search(unit, threshold, params=search_parameters(self.spec))
        if selection is not None and not selection.any():
            return np.zeros(len(unit) + 1, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
        # A flat index (or few selected rows): blocked matrix products over the stored copies. FAISS's
        # flat range search runs query by query without BLAS: 20 s where this takes about 2.
        if self.spec.kind == "flat" or (selection is not None and self._answer_exactly(selection)):
            chosen = (
                np.flatnonzero(selection)
                if selection is not None
                else np.arange(len(self._rows.vectors.view))
            )
            return self._blocked_range(unit, threshold, chosen)
        assert selection is not None
        with self._bitmap_selector(selection) as selector:
            return self._faiss.range_search(unit, threshold, params=search_parameters(self.spec, selector))

    def _blocked_range(
        self, unit: np.ndarray, threshold: float, chosen: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FAISS's range-search layout (lims, similarities, rows) from dense products, RANGE_BLOCK
        stored rows at a time (memory stays queries x RANGE_BLOCK)."""
        queries, hit_rows, hit_sims = [], [], []
        for start in range(0, len(chosen), RANGE_BLOCK):
            block = chosen[start : start + RANGE_BLOCK]
            sims = unit @ self._rows.vectors.view[block].astype(np.float32).T
            q, column = np.nonzero(sims > threshold)
            queries.append(q)
            hit_rows.append(block[column])
            hit_sims.append(sims[q, column])
        q_all = np.concatenate(queries) if queries else np.zeros(0, np.int64)
        order = np.argsort(q_all, kind="stable")
        lims = np.zeros(len(unit) + 1, np.int64)
        np.cumsum(np.bincount(q_all, minlength=len(unit)), out=lims[1:])
        rows = np.concatenate(hit_rows)[order] if hit_rows else np.zeros(0, np.int64)
        sims_out = np.concatenate(hit_sims)[order] if hit_sims else np.zeros(0, np.float32)
        return lims, sims_out.astype(np.float32), rows.astype(np.int64)

    def _selection(self, filter: SearchFilter | None) -> np.ndarray | None:
        """Boolean mask over rows (alive and matching), or None when every row qualifies."""
        rows = self._rows
        if (filter is None or filter.is_empty()) and self.dead_rows == 0:
            return None
        mask = rows.alive.view.copy()
        if filter is not None:
            if filter.job_id:
                code = self._jobs.codes.get(filter.job_id)
                mask &= rows.job.view == (-1 if code is None else code)
            if filter.source:
                family = filter.source + ":"
                codes = [
                    c for w, c in self._sources.codes.items() if w == filter.source or w.startswith(family)
                ]
                mask &= np.isin(rows.source.view, codes)
            if filter.owner is not None:
                code = self._owners.codes.get(filter.owner)
                mine = rows.owner.view == (-1 if code is None else code)
                mask &= mine | (rows.owner.view == 0)  # the user's own items and public ones
            if filter.min_taste is not None:
                mask &= rows.taste.view >= filter.min_taste  # NaN (unscored) compares False: excluded
            if filter.max_taste is not None:
                mask &= rows.taste.view <= filter.max_taste
            if filter.dataset_id:
                code = self._datasets.codes.get(filter.dataset_id)
                mask &= rows.dataset.view == (-1 if code is None else code)
            if filter.decisions is not None:
                wanted = [DECISIONS.index(d) for d in filter.decisions if d in DECISIONS]
                mask &= np.isin(rows.decision.view, wanted)
            for angle, low, high in filter.pose_ranges:
                values = rows.pose.view[:, POSE_ANGLES.index(angle)]
                known = ~np.isnan(values)  # an unknown pose is in no range
                mask &= known
                if low is not None:
                    mask &= np.where(known, values, np.inf) >= low
                if high is not None:
                    mask &= np.where(known, values, -np.inf) <= high
        return mask

    def _answer_exactly(self, selection: np.ndarray) -> bool:
        # Few selected rows: a dense product over their stored copies is exact and faster than a
        # graph or list walk that keeps discarding non-selected neighbours.
        count = int(selection.sum())
        return count <= BRUTE_FORCE_ROWS or (self.spec.kind == "hnsw" and count < 0.1 * len(selection))

    def _effort(self, selection: np.ndarray) -> float:
        # HNSW finds only what its candidate list reaches; widen it when most rows are filtered out.
        if self.spec.kind != "hnsw":
            return 1.0
        return min(10.0, len(selection) / max(1, int(selection.sum())))

    def _exact_subset_search(
        self, unit: np.ndarray, k: int, selection: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        chosen = np.flatnonzero(selection)
        sims = unit @ self._rows.vectors.view[chosen].astype(np.float32).T
        k = min(k, len(chosen))
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        return np.take_along_axis(top_sims, order, axis=1), chosen[np.take_along_axis(top, order, axis=1)]

    @contextlib.contextmanager
    def _bitmap_selector(self, selection: np.ndarray) -> Iterator[faiss.IDSelector]:
        bitmap = np.packbits(selection, bitorder="little")
        # FAISS keeps a raw pointer into `bitmap`: it must stay referenced until the search returns.
        yield faiss.IDSelectorBitmap(len(selection), faiss.swig_ptr(bitmap))
        del bitmap

    def _hit(self, row: int, score: float) -> Hit:
        meta = self._meta(row)
        return Hit(
            item_id=self._rows.item_ids[row],
            score=score,
            image_uri=meta.image_uri,
            job_id=meta.job_id,
            source=meta.source,
            taste_score=meta.taste_score,
            decision=meta.decision,
            dataset_id=meta.dataset_id,
            pose=meta.pose,
        )

    # ---- persistence --------------------------------------------------------------------------------

    @staticmethod
    def _current_version(store, key: str) -> str | None:
        try:
            return json.loads(store.get(f"{key}/CURRENT"))["version"]
        except FileNotFoundError:
            return None

    def save(self, store, key: str = "index/main") -> str:
        """Write a new version under `key/<version>/` and atomically point `key/CURRENT` at it."""
        with self._lock:
            # Nanosecond time first, so versions sort in write order; the suffix separates concurrent writers.
            version = f"v{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
            rows = self._rows
            arrays = io.BytesIO()
            np.savez(
                arrays,
                vectors=rows.vectors.view,
                alive=rows.alive.view,
                job=rows.job.view,
                source=rows.source.view,
                owner=rows.owner.view,
                taste=rows.taste.view,
                dataset=rows.dataset.view,
                decision=rows.decision.view,
                pose=rows.pose.view,
            )
            manifest = {
                "format": FORMAT_VERSION,
                "dim": self.dim,
                "target_recall": self.target_recall,
                "spec": self.spec.to_dict(),
                "built_at": self._built_at,
                "rows": len(rows),
                "items": len(self),
                "item_ids": rows.item_ids,
                "image_uris": rows.image_uris,
                "jobs": self._jobs.words,
                "sources": self._sources.words,
                "owners": self._owners.words,
                "datasets": self._datasets.words,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            faiss_bytes = faiss.serialize_index(self._faiss).tobytes() if self._faiss is not None else b""
        # The version folder is complete before the pointer moves; readers follow only the pointer.
        store.put(f"{key}/{version}/arrays.npz", arrays.getvalue())
        store.put(f"{key}/{version}/faiss.index", faiss_bytes)
        store.put(f"{key}/{version}/manifest.json", json.dumps(manifest).encode())
        previous = self._current_version(store, key)
        store.put(f"{key}/CURRENT", json.dumps({"version": version, "previous": previous}).encode())
        self.version = version
        self._drop_old_versions(store, key, version, previous)
        return version

    @staticmethod
    def _drop_old_versions(store, key: str, current: str, previous: str | None) -> None:
        """Delete versions older than `current`, except `previous` (a reader may still be loading it).

        Newer-named folders are left alone: they belong to a writer that has not moved the pointer yet.
        """
        prefix = f"{key}/"
        versions = {
            k[len(prefix) :].split("/", 1)[0]
            for k in store.list(prefix)
            if k[len(prefix) :].startswith("v") and "/" in k[len(prefix) :]
        }
        for old in sorted(v for v in versions if v < current and v != previous):
            for blob in store.list(f"{prefix}{old}/"):
                with contextlib.suppress(OSError):
                    store.delete(blob)

    @classmethod
    def load(cls, store, key: str = "index/main", *, auto_rebuild: bool = True) -> VectorIndex:
        """Load the version `key/CURRENT` points at (raises the store's not-found error when there is none)."""
        pointer = json.loads(store.get(f"{key}/CURRENT"))
        version = pointer["version"]
        manifest = json.loads(store.get(f"{key}/{version}/manifest.json"))
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"index {key}/{version} has format {manifest.get('format')}, expected {FORMAT_VERSION}"
            )
        with np.load(io.BytesIO(store.get(f"{key}/{version}/arrays.npz")), allow_pickle=False) as arrays:
            columns = {name: arrays[name] for name in arrays.files}
        index = cls(
            manifest["dim"],
            target_recall=manifest["target_recall"],
            spec=IndexSpec.from_dict(manifest["spec"]),
            auto_rebuild=auto_rebuild,
        )
        rows = _Rows(index.dim)
        rows.vectors = _Column.of(columns["vectors"])
        rows.alive = _Column.of(columns["alive"])
        rows.job = _Column.of(columns["job"])
        rows.source = _Column.of(columns["source"])
        # indexes saved before owners existed: every item public
        rows.owner = _Column.of(
            columns["owner"] if "owner" in columns else np.zeros(len(columns["alive"]), np.int32)
        )
        rows.taste = _Column.of(columns["taste"], fill=np.nan)
        # indexes saved before datasets and decisions existed: no dataset, no recorded decision
        count = len(columns["alive"])
        rows.dataset = _Column.of(columns["dataset"] if "dataset" in columns else np.zeros(count, np.int32))
        rows.decision = _Column.of(columns["decision"] if "decision" in columns else np.zeros(count, np.int8))
        # indexes saved before poses existed: every pose unknown
        rows.pose = _Column.of(
            columns["pose"] if "pose" in columns else np.full((count, 3), np.nan, np.float32), fill=np.nan
        )
        rows.item_ids, rows.image_uris = manifest["item_ids"], manifest["image_uris"]
        index._rows = rows
        index._row_of = {rows.item_ids[r]: int(r) for r in np.flatnonzero(rows.alive.view)}
        index._jobs = _Vocabulary(manifest["jobs"])
        index._sources = _Vocabulary(manifest["sources"])
        index._owners = _Vocabulary(manifest.get("owners", [""]))
        index._datasets = _Vocabulary(manifest.get("datasets", [""]))
        index._built_at = manifest["built_at"]
        index.version = version
        faiss_bytes = store.get(f"{key}/{version}/faiss.index")
        loaded = faiss.deserialize_index(np.frombuffer(faiss_bytes, np.uint8)) if faiss_bytes else None
        if loaded is None or loaded.ntotal != len(rows) or loaded.d != index.dim:
            log.warning(
                "index %s/%s: FAISS data missing or inconsistent; rebuilding from stored vectors",
                key,
                version,
            )
            index._rebuild_locked(index.spec)
        else:
            index._faiss = loaded
        return index

    def stats(self) -> dict:
        with self._lock:
            return {
                "items": len(self),
                "rows": len(self._rows),
                "dead_rows": self.dead_rows,
                "dim": self.dim,
                "index": self.spec.describe(),
                "measured_recall": self.spec.measured_recall,
                "target_recall": self.target_recall,
                "version": self.version,
            }
