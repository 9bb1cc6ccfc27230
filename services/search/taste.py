"""The taste model: a small classifier on CLIP features that approximates a person's good/bad judgement.

It follows SFHQ's visual_taste_approximator (VTA, docs/sfhq-format.md, "Curation"):
- features are L2-normalised CLIP vectors;
- an ensemble of logistic regression and a "compressed kNN" (PCA → k-means centres, each carrying the
  mean label of its members → the mean of the k nearest centres), weighted like VTA's defaults without
  the LightGBM member (0.4 / 0.3, renormalised); `ensemble=False` keeps logistic regression alone;
- 5-fold stratified cross-validation (shuffled, seed 123) gives accuracy and AUC from out-of-fold
  predictions, and the two "almost surely" thresholds: high = the first threshold (0.01 steps) where
  TP / (FP + 0.001) reaches 30, at least 0.65; low = the last threshold where TN / (FN + 0.001) reaches 30,
  at most 0.35;
- the small-data settings of VTA below 800 labels (C = 0.1, fewer PCA components/centres, k = 9).

Models persist WITHOUT pickle: `taste/<name>/v<N>/model.npz` (arrays, loaded with allow_pickle=False) and
`model.json` (everything else), versioned; prediction is plain numpy, so a loaded model scores exactly like
the freshly trained one.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from services.common.errors import FailedPrecondition, InvalidInput, NotFound
from services.search.clip_model import FEATURE_KEY

log = logging.getLogger(__name__)

MIN_PER_CLASS = 10  # 5-fold stratified CV needs a few of each class per fold
CV_FOLDS = 5
CV_SEED = 123  # VTA's
SMALL_DATA = 800  # VTA switches to small-data settings below this many labels
SAFE_RATIO = 30.0  # "almost surely": 30 right for every wrong
HIGH_FLOOR, LOW_CEILING = 0.65, 0.35
DEFAULT_WEIGHTS = {"knn": 0.3, "lr": 0.4}  # VTA's [kNN, LR, LGB] = [0.3, 0.4, 0.3] without LGB
FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_OWNER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")  # a user name (services.common.auth.USER_NAME)


class TasteInputError(InvalidInput):
    """Unusable training data or request (too few labels of a class, wrong dimensions, bad name)."""


class TooFewLabels(FailedPrecondition):
    """Training needs more labels of a class; the message says how many."""


class TasteModelNotFound(NotFound):
    """No such taste model (or version) in the store."""


def check_model_name(name: str) -> str:
    """A taste model's full name, `<owner>/<name>`: every user has their own models."""
    owner, sep, plain = name.partition("/") if isinstance(name, str) else ("", "", "")
    if not sep or not _OWNER.match(owner):
        raise TasteInputError(f"taste model {name!r} must be named <owner>/<name>")
    if not _NAME.match(plain):
        raise TasteInputError(f"taste model name {plain!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return name


def qualified_name(owner: str, spec: str) -> str:
    """`owner`'s model `spec` ("name" or "name@version") as the store knows it ("" = the user default)."""
    return f"{owner or 'default'}/{spec}"


def _unit_rows(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or (dim is not None and array.shape[1] != dim):
        raise TasteInputError(f"features must be [N, {dim or 'D'}], got shape {list(array.shape)}")
    if not np.isfinite(array).all():
        raise TasteInputError("features contain NaN or infinity")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if len(array) and norms.min() < 1e-12:
        raise TasteInputError("features contain an all-zero vector")
    return array / norms


# ------------------------------------------------------------------------------------------ members


@dataclass
class LogisticMember:
    coef: np.ndarray  # [D]
    intercept: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, *, small: bool, seed: int) -> LogisticMember:
        from sklearn.linear_model import LogisticRegression

        # Balanced class weights: labelled sets are often lopsided and the thresholds come later anyway.
        model = LogisticRegression(
            C=0.1 if small else 1.0, class_weight="balanced", max_iter=2000, random_state=seed
        )
        model.fit(x, y)
        return cls(coef=model.coef_[0].astype(np.float64), intercept=float(model.intercept_[0]))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(x @ self.coef + self.intercept)))


@dataclass
class CompressedKnnMember:
    """VTA's compressed kNN: PCA, then k-means centres labelled with their members' mean label."""

    pca_mean: np.ndarray  # [D]
    pca_components: np.ndarray  # [C, D]
    centres: np.ndarray  # [M, C] in PCA space
    centre_labels: np.ndarray  # [M] mean label of each centre's members
    k: int

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, *, small: bool, seed: int) -> CompressedKnnMember:
        from sklearn.cluster import KMeans, MiniBatchKMeans
        from sklearn.decomposition import PCA

        n, dim = x.shape
        if small:
            n_cols, n_rows, k = min(int(0.7 * n), 80), min(int(0.6 * n), 500), 9
        else:
            n_cols, n_rows, k = min(120, int(0.9 * dim), int(0.9 * n)), min(4000, int(0.8 * n)), 13
        n_cols, n_rows = max(1, min(n_cols, dim, n)), max(2, n_rows)
        pca = PCA(n_components=n_cols, random_state=seed).fit(x)
        reduced = pca.transform(x)
        kmeans_class = MiniBatchKMeans if n >= 20_000 else KMeans
        kmeans = kmeans_class(n_clusters=n_rows, n_init=1, random_state=seed).fit(reduced)
        assignment = kmeans.labels_
        counts = np.bincount(assignment, minlength=n_rows)
        used = counts > 0  # MiniBatchKMeans may leave a centre empty
        sums = np.bincount(assignment, weights=y.astype(np.float64), minlength=n_rows)
        centres = np.stack(
            [np.bincount(assignment, weights=reduced[:, c], minlength=n_rows) for c in range(n_cols)], axis=1
        )
        return cls(
            pca_mean=pca.mean_.astype(np.float64),
            pca_components=pca.components_.astype(np.float64),
            centres=centres[used] / counts[used, None],
            centre_labels=sums[used] / counts[used],
            k=int(min(k, used.sum())),
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        reduced = (x - self.pca_mean) @ self.pca_components.T
        # Squared Euclidean distances to every centre; centres are few (≤ 4000).
        dist = (reduced**2).sum(1)[:, None] - 2 * reduced @ self.centres.T + (self.centres**2).sum(1)[None, :]
        nearest = np.argpartition(dist, self.k - 1, axis=1)[:, : self.k]
        return self.centre_labels[nearest].mean(axis=1)


# ------------------------------------------------------------------------------------------ the model


def choose_thresholds(predictions: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(low, high) "almost surely bad / good" thresholds from out-of-fold predictions (VTA's rule).

    high: the first threshold t (0.01 steps) where TP/(FP+0.001) ≥ 30 for "p ≥ t is good", never below
    0.65; low: the last t where TN/(FN+0.001) ≥ 30 for "p ≤ t is bad", never above 0.35. If a ratio never
    reaches 30, the threshold with the best ratio is used (within the same bounds).
    """
    p = np.asarray(predictions, np.float64)
    y = np.asarray(labels, bool)
    grid = np.round(np.arange(0.0, 1.0001, 0.01), 2)
    pos_ratio = np.array([((p >= t) & y).sum() / (((p >= t) & ~y).sum() + 0.001) for t in grid])
    neg_ratio = np.array([((p <= t) & ~y).sum() / (((p <= t) & y).sum() + 0.001) for t in grid])
    reached_high = np.flatnonzero(pos_ratio >= SAFE_RATIO)
    high = grid[reached_high[0]] if len(reached_high) else grid[int(np.argmax(pos_ratio))]
    reached_low = np.flatnonzero(neg_ratio >= SAFE_RATIO)
    low = grid[reached_low[-1]] if len(reached_low) else grid[len(grid) - 1 - int(np.argmax(neg_ratio[::-1]))]
    return float(min(LOW_CEILING, low)), float(max(HIGH_FLOOR, high))


@dataclass
class TasteModel:
    name: str
    dim: int
    lr: LogisticMember
    knn: CompressedKnnMember | None
    weights: dict[str, float]
    low_threshold: float
    high_threshold: float
    cv_accuracy: float
    cv_auc: float
    positives: int
    negatives: int
    feature_key: str = FEATURE_KEY
    version: int | None = None
    created_at: str = ""
    fold_accuracy: list[float] = field(default_factory=list)
    fold_auc: list[float] = field(default_factory=list)
    cv_predictions: np.ndarray = field(default_factory=lambda: np.zeros(0))  # out-of-fold, for histograms
    cv_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    # ---- training -----------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        name: str = "default/default",
        ensemble: bool = True,
        feature_key: str = FEATURE_KEY,
        seed: int = CV_SEED,
    ) -> TasteModel:
        """Cross-validate, choose thresholds, then fit on every label."""
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import StratifiedKFold

        check_model_name(name)
        x = _unit_rows(features)
        y = np.asarray(labels).astype(bool).reshape(-1)
        if len(y) != len(x):
            raise TasteInputError(f"{len(x)} feature vectors but {len(y)} labels")
        positives, negatives = int(y.sum()), int((~y).sum())
        if min(positives, negatives) < MIN_PER_CLASS:
            raise TooFewLabels(
                f"training needs at least {MIN_PER_CLASS} positive and {MIN_PER_CLASS} negative "
                f"labels; have {positives} positive, {negatives} negative"
            )
        weights = dict(DEFAULT_WEIGHTS) if ensemble else {"lr": 1.0}
        total = sum(weights.values())
        weights = {k: v / total for k, v in weights.items()}

        oof = np.zeros(len(y))
        fold_accuracy, fold_auc = [], []
        for train_rows, test_rows in StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed).split(x, y):
            lr, knn = cls._fit_members(x[train_rows], y[train_rows], ensemble, seed)
            oof[test_rows] = cls._combine(x[test_rows], lr, knn, weights)
            fold_accuracy.append(float(((oof[test_rows] >= 0.5) == y[test_rows]).mean()))
            fold_auc.append(float(roc_auc_score(y[test_rows], oof[test_rows])))
        low, high = choose_thresholds(oof, y)
        lr, knn = cls._fit_members(x, y, ensemble, seed)
        model = cls(
            name=name,
            dim=x.shape[1],
            lr=lr,
            knn=knn,
            weights=weights,
            low_threshold=low,
            high_threshold=high,
            cv_accuracy=float(((oof >= 0.5) == y).mean()),
            cv_auc=float(roc_auc_score(y, oof)),
            positives=positives,
            negatives=negatives,
            feature_key=feature_key,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            fold_accuracy=fold_accuracy,
            fold_auc=fold_auc,
            cv_predictions=oof,
            cv_labels=y,
        )
        log.info(
            "taste model %r: %d+/%d-, CV accuracy %.3f, AUC %.3f, thresholds %.2f/%.2f",
            name,
            positives,
            negatives,
            model.cv_accuracy,
            model.cv_auc,
            low,
            high,
        )
        return model

    @staticmethod
    def _fit_members(
        x: np.ndarray, y: np.ndarray, ensemble: bool, seed: int
    ) -> tuple[LogisticMember, CompressedKnnMember | None]:
        small = len(y) < SMALL_DATA
        lr = LogisticMember.fit(x, y, small=small, seed=seed)
        knn = CompressedKnnMember.fit(x, y, small=small, seed=seed) if ensemble else None
        return lr, knn

    @staticmethod
    def _combine(
        x: np.ndarray, lr: LogisticMember, knn: CompressedKnnMember | None, weights: dict[str, float]
    ) -> np.ndarray:
        score = weights["lr"] * lr.predict(x)
        if knn is not None:
            score += weights["knn"] * knn.predict(x)
        return score

    # ---- scoring ------------------------------------------------------------------------------------

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """Probability of "good" for each feature vector ([D] or [N, D]) → float64 [N]."""
        x = _unit_rows(vectors, self.dim)
        return np.clip(self._combine(x, self.lr, self.knn, self.weights), 0.0, 1.0)

    def info(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "positives": self.positives,
            "negatives": self.negatives,
            "cv_accuracy": self.cv_accuracy,
            "cv_auc": self.cv_auc,
            "low_threshold": self.low_threshold,
            "high_threshold": self.high_threshold,
            "created_at": self.created_at,
        }

    # ---- persistence (no pickle) ----------------------------------------------------------------------

    def to_files(self) -> tuple[bytes, bytes]:
        """(model.npz bytes, model.json bytes)."""
        arrays = {
            "lr_coef": self.lr.coef,
            "cv_predictions": self.cv_predictions,
            "cv_labels": self.cv_labels.astype(np.bool_),
        }
        if self.knn is not None:
            arrays.update(
                knn_pca_mean=self.knn.pca_mean,
                knn_pca_components=self.knn.pca_components,
                knn_centres=self.knn.centres,
                knn_centre_labels=self.knn.centre_labels,
            )
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        import sklearn

        meta = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "dim": self.dim,
            "feature_key": self.feature_key,
            "weights": self.weights,
            "lr_intercept": self.lr.intercept,
            "knn_k": self.knn.k if self.knn is not None else None,
            "low_threshold": self.low_threshold,
            "high_threshold": self.high_threshold,
            "cv_accuracy": self.cv_accuracy,
            "cv_auc": self.cv_auc,
            "fold_accuracy": self.fold_accuracy,
            "fold_auc": self.fold_auc,
            "positives": self.positives,
            "negatives": self.negatives,
            "created_at": self.created_at,
            "trained_with": f"scikit-learn {sklearn.__version__}",
        }
        return buffer.getvalue(), json.dumps(meta, indent=1).encode()

    @classmethod
    def from_files(cls, npz_bytes: bytes, json_bytes: bytes) -> TasteModel:
        meta = json.loads(json_bytes)
        if meta.get("format") != FORMAT_VERSION:
            raise TasteInputError(f"taste model format {meta.get('format')} is not {FORMAT_VERSION}")
        with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        knn = None
        if meta["knn_k"] is not None:
            knn = CompressedKnnMember(
                pca_mean=arrays["knn_pca_mean"],
                pca_components=arrays["knn_pca_components"],
                centres=arrays["knn_centres"],
                centre_labels=arrays["knn_centre_labels"],
                k=int(meta["knn_k"]),
            )
        return cls(
            name=meta["name"],
            dim=int(meta["dim"]),
            lr=LogisticMember(coef=arrays["lr_coef"], intercept=float(meta["lr_intercept"])),
            knn=knn,
            weights=meta["weights"],
            low_threshold=meta["low_threshold"],
            high_threshold=meta["high_threshold"],
            cv_accuracy=meta["cv_accuracy"],
            cv_auc=meta["cv_auc"],
            positives=meta["positives"],
            negatives=meta["negatives"],
            feature_key=meta["feature_key"],
            version=meta["version"],
            created_at=meta["created_at"],
            fold_accuracy=meta["fold_accuracy"],
            fold_auc=meta["fold_auc"],
            cv_predictions=arrays["cv_predictions"],
            cv_labels=arrays["cv_labels"],
        )


class TasteStore:
    """Versioned taste models in the blob store: `taste/<name>/v<N>/model.{npz,json}`.

    The json is written last, so a version is visible only once complete. Saves of one store object
    are serialised; two processes training the same name at once should be avoided (the service trains
    under its own lock).
    """

    def __init__(self, blob_store) -> None:
        self.store = blob_store
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], TasteModel] = {}  # versions are immutable

    def versions(self, name: str) -> list[int]:
        prefix = f"taste/{check_model_name(name)}/v"
        found = set()
        for key in self.store.list(prefix):
            match = re.fullmatch(rf"{re.escape(prefix)}(\d+)/model\.json", key)
            if match:
                found.add(int(match.group(1)))
        return sorted(found)

    def save(self, model: TasteModel) -> int:
        """Store `model` as the next version of its name; returns (and sets) the version."""
        with self._lock:
            existing = self.versions(model.name)
            model.version = (existing[-1] + 1) if existing else 1
            npz_bytes, json_bytes = model.to_files()
            base = f"taste/{model.name}/v{model.version}"
            self.store.put(f"{base}/model.npz", npz_bytes)
            self.store.put(f"{base}/model.json", json_bytes)
            self._cache[(model.name, model.version)] = model
            return model.version

    def get(self, name: str, version: int) -> TasteModel:
        key = (check_model_name(name), int(version))
        if key not in self._cache:
            base = f"taste/{name}/v{version}"
            if not self.store.exists(f"{base}/model.json"):
                raise TasteModelNotFound(f"taste model {name!r} has no version {version}")
            self._cache[key] = TasteModel.from_files(
                self.store.get(f"{base}/model.npz"), self.store.get(f"{base}/model.json")
            )
        return self._cache[key]

    def latest(self, name: str) -> TasteModel:
        versions = self.versions(name)
        if not versions:
            raise TasteModelNotFound(
                f"no taste model named {name!r} has been trained yet (label images, then TrainTaste)"
            )
        return self.get(name, versions[-1])

    def resolve(self, spec: str) -> TasteModel:
        """ "name" → latest version, "name@N" → version N."""
        name, _, version = spec.partition("@")
        if not version:
            return self.latest(name)
        if not version.isdigit():
            raise TasteInputError(f"taste model {spec!r}: the version after '@' must be a number")
        return self.get(name, int(version))


class TasteCache:
    """Taste models by "name" (the latest version, re-checked every few seconds) or "name@version"."""

    def __init__(self, store: TasteStore, refresh_s: float = 10.0) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._latest: dict[str, tuple[float, TasteModel]] = {}
        self._lock = threading.Lock()

    def __call__(self, spec: str) -> TasteModel:
        if "@" in spec:
            return self.store.resolve(spec)
        with self._lock:
            cached = self._latest.get(spec)
            if cached is None or time.monotonic() - cached[0] > self.refresh_s:
                cached = (time.monotonic(), self.store.latest(spec))
                self._latest[spec] = cached
            return cached[1]

    def forget(self, name: str) -> None:
        with self._lock:
            self._latest.pop(name, None)
