"""Curation at SFHQ scale: the taste model families, scoring throughput, dataset-wide near-duplicates.

1. Taste models on 2,000 and 20,000 labelled vectors with a planted taste that is not linear in
   the features (two "good" regions): train time and cross-validated AUC of each family (`vta`:
   logistic regression + compressed kNN + LightGBM with searched weights; `lr+knn`: the two-member
   model with VTA's fixed weights; `lr`), and the AUC on held-out vectors.
2. Scoring 425,258 vectors (SFHQ's size) with the trained `vta` model in batches, next to the way a
   per-image loop does it (one vector per call), interleaved rounds on a sample, min / median.
3. Dataset-wide near-duplicates (cosine > 0.92) of 425,258 items in the index, as the gateway's
   `sfhq dedup` runs it (`dataset_groups`: every kept item of the dataset, best-scored copy kept),
   with the pair recall the partitioned join measures against exact search; and the per-job pass
   (2,000 new candidates against the same dataset, `candidate_ids`), which is what every job runs.

    python bench/curation.py            # full sizes (~15 min on 2 free cores, ~6 GB RAM)
    python bench/curation.py --quick    # small sizes (< 2 min)
    python bench/curation.py --dedup-only   # only the near-duplicate passes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
from timing import interleaved, median  # noqa: E402

from services.search.dedup import dataset_groups  # noqa: E402
from services.search.index import KEPT_DECISIONS, ItemMeta, SearchFilter, VectorIndex  # noqa: E402
from services.search.taste import TasteModel  # noqa: E402
from tests.helpers.synthetic import clustered_features, normalized  # noqa: E402

SFHQ_SIZE = 425_258
DIM = 768


def planted_taste(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """CLIP-like vectors whose "good" label is an XOR of two directions plus 5 % label noise."""
    vectors = clustered_features(n, DIM, seed=seed).vectors
    unit = normalized(vectors)
    rng = np.random.default_rng(seed + 1)
    a, b = rng.standard_normal(DIM), rng.standard_normal(DIM)
    pa, pb = unit @ a, unit @ b
    good = (pa > np.median(pa)) ^ (pb > np.median(pb))
    flip = rng.random(n) < 0.05
    return vectors, good ^ flip


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def families_table(sizes: list[int]) -> tuple[list[str], TasteModel]:
    lines = [
        "| labels | family | members (weight, own CV AUC) | train s | CV AUC | held-out AUC | CV AUC vs lr+knn |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    last = None
    for n in sizes:
        vectors, labels = planted_taste(n + 2000, seed=n)
        train, test = slice(0, n), slice(n, n + 2000)
        models = {}
        for family in ("lr", "lr+knn", "vta"):
            models[family] = TasteModel.train(
                vectors[train], labels[train], name="bench/taste", family=family
            )
        for family, model in models.items():
            held_out = auc(labels[test], model.predict_proba(vectors[test]))
            members = ", ".join(
                f"{m} {model.weights.get(m, 0):.1f} ({model.member_auc[m]:.3f})"
                for m in sorted(model.member_auc)
            )
            lines.append(
                f"| {n:,} | {family} | {members} | {model.train_seconds:.1f} | {model.cv_auc:.3f} | "
                f"{held_out:.3f} | {model.cv_auc / models['lr+knn'].cv_auc:.2f}x |"
            )
            print(lines[-1], flush=True)
        last = models["vta"]
    assert last is not None
    return lines, last


def scoring_table(model: TasteModel, n: int, rounds: int) -> list[str]:
    vectors = clustered_features(n, DIM, seed=7).vectors.astype(np.float32)
    started = time.perf_counter()
    model.predict_proba(vectors)
    full = time.perf_counter() - started
    sample = vectors[: min(2000, n)]
    times = interleaved(
        {
            "batched (ours)": lambda: model.predict_proba(sample),
            "one vector per call": lambda: [model.predict_proba(v) for v in sample],
        },
        rounds,
    )
    ours, naive = times["batched (ours)"], times["one vector per call"]
    rate = lambda values: len(sample) / np.asarray(values)  # noqa: E731
    return [
        f"Scoring with the `vta` model ({', '.join(sorted(model.weights))}): all {n:,} vectors in one call took "
        f"{full:.1f} s ({n / full:,.0f} vectors/s). On {len(sample):,} vectors, {rounds} interleaved rounds:",
        "",
        "| method | vectors/s (best) | vectors/s (median) | ratio (best) | ratio (median) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| one vector per call (a per-image loop) | {rate(naive).max():,.0f} | {np.median(rate(naive)):,.0f} | 1.0x | 1.0x |",
        f"| batched (ours) | {rate(ours).max():,.0f} | {np.median(rate(ours)):,.0f} | "
        f"{min(naive) / min(ours):.0f}x | {median(naive) / median(ours):.0f}x |",
    ]


def dedup_table(n: int, job: int) -> list[str]:
    data = clustered_features(n, DIM, seed=11)
    vectors = data.vectors.astype(np.float32)
    scores = np.random.default_rng(3).random(n)
    index = VectorIndex(DIM, auto_rebuild=False)
    started = time.perf_counter()
    ids = [f"job{i % 50}/c{i:07d}" for i in range(n)]
    step = 50_000
    for start in range(0, n, step):
        chunk = slice(start, start + step)
        metas = [
            ItemMeta(
                job_id=f"job{i % 50}",
                taste_score=float(scores[i]),
                dataset_id="d1",
                decision="accepted",
                owner="ann",
            )
            for i in range(start, min(n, start + step))
        ]
        index.add(ids[chunk], vectors[chunk], metas)
    load = time.perf_counter() - started
    dataset = SearchFilter(dataset_id="d1", decisions=KEPT_DECISIONS)
    started = time.perf_counter()
    groups, compared = dataset_groups(index, dataset)
    full = time.perf_counter() - started
    removed = sum(len(g.removed) for g in groups)
    # the same pass on the raw vectors, without the index (what bench/search.py measures), for the recall
    from services.search.dedup import near_duplicates

    started = time.perf_counter()
    raw = near_duplicates(vectors, 0.92, scores, worst_first=True)
    raw_seconds = time.perf_counter() - started
    candidates = ids[-job:]
    started = time.perf_counter()
    job_groups, job_compared = dataset_groups(index, dataset, candidate_ids=candidates)
    per_job = time.perf_counter() - started
    return [
        f"Near-duplicates at cosine > 0.92 over one dataset of {n:,} indexed items (loading the index: {load:.0f} s).",
        "",
        "| pass | items compared | seconds | groups | removed | pair recall |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| `sfhq dedup DATASET` (dataset_groups, whole dataset) | {compared:,} | {full:.1f} | {len(groups):,} | {removed:,} | "
        f"{raw.pair_recall:.3f} (measured vs exact, {raw.method}) |",
        f"| the same rows without the index (near_duplicates) | {n:,} | {raw_seconds:.1f} | - | {len(raw.duplicates):,} | {raw.pair_recall:.3f} |",
        f"| a job's pass: {job:,} candidates against the dataset (candidate_ids) | {job_compared:,} | {per_job:.2f} | "
        f"{len(job_groups):,} | {sum(len(g.removed) for g in job_groups):,} | exact range search |",
        "",
        f"A job's pass costs {full / max(per_job, 1e-9):.0f}x less than a whole-dataset pass: it compares its "
        "candidates and their neighbours only (the rest of the dataset is clean already).",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "curation.md")
    parser.add_argument("--dedup-only", action="store_true", help="only part 3 (near-duplicates)")
    args = parser.parse_args()
    sizes = [500, 2000] if args.quick else [2000, 20_000]
    n_index = 20_000 if args.quick else SFHQ_SIZE
    started = time.perf_counter()
    if args.dedup_only:
        lines = [
            *dedup_table(n_index, job=500 if args.quick else 2000),
            "",
            f"Total {time.perf_counter() - started:.0f} s.",
        ]
        print("\n".join(lines))
        return 0
    family_lines, model = families_table(sizes)
    lines = [
        "Taste models on CLIP-like vectors with a planted taste that is not linear (two good regions, 5 % "
        "label noise); held-out AUC on 2,000 other vectors. `vta` searches its ensemble weights on a 0.1 grid "
        "by out-of-fold AUC.",
        "",
        *family_lines,
        "",
        *scoring_table(model, n_index, rounds=3 if args.quick else 5),
        "",
        *dedup_table(n_index, job=500 if args.quick else 2000),
        "",
        f"Total bench time {time.perf_counter() - started:.0f} s.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
