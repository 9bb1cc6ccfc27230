"""Synthetic CLIP-like feature sets with realistic structure, for benchmarks and tests.

Real CLIP features of face images are far from isotropic noise, and index recall/latency depend on that
structure, so the generator reproduces the properties that matter:
- a strong common direction (all faces look alike to CLIP: random pairs have cosine ≈ 0.3-0.5);
- a decaying spectrum (a few directions carry most of the variance), in a random rotation;
- clusters of very different sizes (styles, identities, inspiration sources; Zipf-like sizes);
- families of near-duplicates (several candidates of one inspiration image), cosine ≈ 0.93-0.99.
Vectors are returned raw (norm ≈ 20, as CLIP's unnormalised projections), not normalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ClusteredFeatures:
    vectors: np.ndarray  # float32 [n, dim] raw (not normalised)
    queries: np.ndarray  # float32 [q, dim] drawn from the same distribution, not in `vectors`
    cluster: np.ndarray  # int32 [n] cluster of each vector
    duplicate_of: np.ndarray  # int64 [n] the row a planted near-duplicate copies, or -1


def clustered_features(
    n: int,
    dim: int = 768,
    *,
    n_queries: int = 0,
    n_clusters: int | None = None,
    duplicate_fraction: float = 0.03,
    seed: int = 0,
    chunk: int = 50_000,
) -> ClusteredFeatures:
    """Draw `n` CLIP-like vectors (+ `n_queries` held-out ones) from one clustered distribution."""
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(8, int(2 * np.sqrt(n)))
    spectrum = np.arange(1, dim + 1, dtype=np.float64) ** -0.9
    spectrum = np.sqrt(spectrum / spectrum.sum()).astype(np.float32)  # per-direction std, total variance 1
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    rotation = rotation.astype(np.float32)
    common = rng.standard_normal(dim).astype(np.float32)
    common *= 0.75 / np.linalg.norm(common)
    centres = (rng.standard_normal((n_clusters, dim)).astype(np.float32) * spectrum) * 0.75
    sizes = 1.0 / np.arange(1, n_clusters + 1) ** 0.8  # Zipf-like cluster popularity
    cluster_p = rng.permutation(sizes / sizes.sum())

    total = n + n_queries
    out = np.empty((total, dim), np.float32)
    cluster = rng.choice(n_clusters, size=total, p=cluster_p).astype(np.int32)
    for start in range(0, total, chunk):
        stop = min(total, start + chunk)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * spectrum * 0.6
        latent = common + centres[cluster[start:stop]] + noise
        out[start:stop] = latent @ rotation.T

    vectors, queries = out[:n], out[n:]
    duplicate_of = np.full(n, -1, np.int64)
    n_dup = int(duplicate_fraction * n)
    if n_dup and n > 1:
        # Each planted duplicate copies an earlier-drawn original plus a little noise (cosine ≈ 0.93-0.99).
        copies = rng.choice(n, size=n_dup, replace=False)
        originals = rng.choice(np.setdiff1d(np.arange(n), copies), size=n_dup)
        norms = np.linalg.norm(vectors[originals], axis=1, keepdims=True)
        jitter = rng.uniform(0.15, 0.40, size=(n_dup, 1)).astype(np.float32) / np.sqrt(dim)
        vectors[copies] = (
            vectors[originals] + rng.standard_normal((n_dup, dim), dtype=np.float32) * norms * jitter
        )
        duplicate_of[copies] = originals
        cluster[copies] = cluster[originals]
    scale = 20.0 / np.linalg.norm(out, axis=1, keepdims=True).mean()
    out *= scale
    return ClusteredFeatures(vectors=vectors, queries=queries, cluster=cluster[:n], duplicate_of=duplicate_of)


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (zero rows stay zero)."""
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
