"""The taste model: a small classifier on CLIP features that approximates a person's good/bad judgement.

It follows SFHQ's visual_taste_approximator (VTA, docs/sfhq-format.md, "Curation"):
- features are L2-normalised CLIP vectors;
- an ensemble of logistic regression, a "compressed kNN" (PCA → k-means centres, each carrying the
  mean label of its members → the mean of the k nearest centres) and LightGBM, its weights searched on a
  0.1 grid by the AUC of out-of-fold predictions (family "vta", the default); "lr+knn" keeps VTA's fixed
  weights without LightGBM (0.4 / 0.3, renormalised), "lr" logistic regression alone;
- one or several feature sets (CLIP ViT-L/14@336 always; others side by side, each L2-normalised);
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
FORMAT_VERSION = 2  # 1: lr (+ knn) only
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


@dataclass
class LightGbmMember:
    """VTA's third member: gradient-boosted trees (LightGBM), kept as LightGBM's own text model."""

    model_text: str

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, *, small: bool, seed: int) -> LightGbmMember:
        import lightgbm

        # 63 bins and 30 % of the features per tree: on 768-d CLIP features this trains ~8x faster than
        # LightGBM's defaults at the same held-out AUC (bench/curation.py).
        params = {
            "objective": "binary",
            "learning_rate": 0.05,
            "num_leaves": 7 if small else 15,
            "min_data_in_leaf": 5 if small else 20,
            "max_bin": 63,
            "feature_fraction": 0.3,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "is_unbalance": True,
            "seed": seed,
            "deterministic": True,
            "num_threads": 1,  # the service shares its cores with FAISS and CLIP
            "verbosity": -1,
        }
        booster = lightgbm.train(
            params, lightgbm.Dataset(x, label=y.astype(np.float64)), num_boost_round=150 if small else 200
        )
        return cls(model_text=booster.model_to_string())

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._booster().predict(x, num_threads=1), np.float64)

    def _booster(self):  # -> lightgbm.Booster, parsed once (text, never a pickle)
        booster = getattr(self, "_parsed", None)
        if booster is None:
            import lightgbm

            booster = lightgbm.Booster(model_str=self.model_text)
            object.__setattr__(self, "_parsed", booster)
        return booster


Member = LogisticMember | CompressedKnnMember | LightGbmMember
MEMBER_TYPES: dict[str, type] = {"lr": LogisticMember, "knn": CompressedKnnMember, "lgb": LightGbmMember}
# Model families: which members, and whether their weights are searched by cross-validation.
FAMILIES: dict[str, tuple[tuple[str, ...], bool]] = {
    "vta": (("lr", "knn", "lgb"), True),  # VTA's ensemble, weights searched
    "lr+knn": (("lr", "knn"), False),  # VTA's weights without LightGBM (0.4 / 0.3, renormalised)
    "lr": (("lr",), False),
}
DEFAULT_FAMILY = "vta"
VTA_WEIGHTS = {"knn": 0.3, "lr": 0.4, "lgb": 0.3}
WEIGHT_STEP = 0.1
SCORE_CHUNK = 16_384  # rows scored at a time: bounds the memory of scoring a whole SFHQ part


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


def search_weights(member_oof: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """The ensemble weights (a grid of `WEIGHT_STEP` on the simplex) whose combined out-of-fold
    predictions have the best AUC; ties go to the weights closest to VTA's defaults."""
    from itertools import product

    from sklearn.metrics import roc_auc_score

    names = sorted(member_oof)
    steps = round(1 / WEIGHT_STEP)
    default = np.array([VTA_WEIGHTS.get(n, 0.0) for n in names])
    default = default / default.sum()
    best: tuple[float, float, tuple[float, ...]] | None = None
    stacked = np.stack([member_oof[n] for n in names])
    for combo in product(range(steps + 1), repeat=len(names)):
        if sum(combo) != steps:
            continue
        w = np.array(combo, np.float64) / steps
        auc = float(roc_auc_score(labels, w @ stacked))
        key = (round(auc, 6), -float(np.abs(w - default).sum()), tuple(w))
        if best is None or key[:2] > best[:2]:
            best = key
    assert best is not None
    return {name: float(weight) for name, weight in zip(names, best[2], strict=True)}


@dataclass
class TasteModel:
    name: str
    dim: int
    members: dict[str, Member]
    weights: dict[str, float]
    low_threshold: float
    high_threshold: float
    cv_accuracy: float
    cv_auc: float
    positives: int
    negatives: int
    feature_keys: list[str] = field(default_factory=lambda: [FEATURE_KEY])
    family: str = DEFAULT_FAMILY
    version: int | None = None
    created_at: str = ""
    fold_accuracy: list[float] = field(default_factory=list)
    fold_auc: list[float] = field(default_factory=list)
    member_auc: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    cv_predictions: np.ndarray = field(default_factory=lambda: np.zeros(0))  # out-of-fold, for histograms
    cv_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @property
    def feature_key(self) -> str:
        return self.feature_keys[0]

    # ---- training -----------------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        features: np.ndarray | dict[str, np.ndarray],
        labels: np.ndarray,
        *,
        name: str = "default/default",
        family: str = DEFAULT_FAMILY,
        seed: int = CV_SEED,
    ) -> TasteModel:
        """Cross-validate each member, choose the ensemble weights and thresholds, then fit on every label.

        `features`: [N, D] CLIP features, or {feature key: [N, D_k]} to train on several feature sets
        (each L2-normalised, then side by side)."""
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import StratifiedKFold

        started = time.perf_counter()
        check_model_name(name)
        if family not in FAMILIES:
            raise TasteInputError(f"family {family!r}: must be one of {', '.join(FAMILIES)}")
        keys, x = _feature_blocks(features)
        y = np.asarray(labels).astype(bool).reshape(-1)
        if len(y) != len(x):
            raise TasteInputError(f"{len(x)} feature vectors but {len(y)} labels")
        positives, negatives = int(y.sum()), int((~y).sum())
        if min(positives, negatives) < MIN_PER_CLASS:
            raise TooFewLabels(
                f"training needs at least {MIN_PER_CLASS} positive and {MIN_PER_CLASS} negative "
                f"labels; have {positives} positive, {negatives} negative"
            )
        member_names, searched = FAMILIES[family]
        small = len(y) < SMALL_DATA
        member_oof = {member: np.zeros(len(y)) for member in member_names}
        folds = list(StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed).split(x, y))
        for train_rows, test_rows in folds:
            for member in member_names:
                fitted = MEMBER_TYPES[member].fit(x[train_rows], y[train_rows], small=small, seed=seed)
                member_oof[member][test_rows] = fitted.predict(x[test_rows])
        if searched:
            weights = search_weights(member_oof, y)
        else:
            raw = {m: VTA_WEIGHTS[m] for m in member_names}
            weights = {m: w / sum(raw.values()) for m, w in raw.items()}
        oof = sum(weights[m] * member_oof[m] for m in member_names)
        assert isinstance(oof, np.ndarray)
        fold_accuracy = [float(((oof[t] >= 0.5) == y[t]).mean()) for _, t in folds]
        fold_auc = [float(roc_auc_score(y[t], oof[t])) for _, t in folds]
        low, high = choose_thresholds(oof, y)
        members = {
            m: MEMBER_TYPES[m].fit(x, y, small=small, seed=seed) for m in member_names if weights[m] > 0
        }
        model = cls(
            name=name,
            dim=x.shape[1],
            members=members,
            weights={m: w for m, w in weights.items() if w > 0},
            low_threshold=low,
            high_threshold=high,
            cv_accuracy=float(((oof >= 0.5) == y).mean()),
            cv_auc=float(roc_auc_score(y, oof)),
            positives=positives,
            negatives=negatives,
            feature_keys=keys,
            family=family,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            fold_accuracy=fold_accuracy,
            fold_auc=fold_auc,
            member_auc={m: float(roc_auc_score(y, member_oof[m])) for m in member_names},
            train_seconds=time.perf_counter() - started,
            cv_predictions=oof,
            cv_labels=y,
        )
        log.info(
            "taste model %r (%s): %d+/%d-, CV accuracy %.3f, AUC %.3f, thresholds %.2f/%.2f, weights %s, %.1f s",
            name,
            family,
            positives,
            negatives,
            model.cv_accuracy,
            model.cv_auc,
            low,
            high,
            model.weights,
            model.train_seconds,
        )
        return model

    # ---- scoring ------------------------------------------------------------------------------------

    def member_predictions(self, vectors: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self._inputs(vectors)
        # In chunks: the kNN member's distance matrix is rows x centres (425k x 4000 would be 13 GB).
        out: dict[str, list[np.ndarray]] = {name: [] for name in self.members}
        for start in range(0, max(len(x), 1), SCORE_CHUNK):
            chunk = x[start : start + SCORE_CHUNK]
            for name, member in self.members.items():
                out[name].append(np.clip(member.predict(chunk), 0.0, 1.0))
        return {name: np.concatenate(parts) for name, parts in out.items()}

    def predict_proba(self, vectors: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        """Probability of "good" for each feature vector ([D] or [N, D]) → float64 [N]."""
        return self._combined(self.member_predictions(vectors))

    def _combined(self, predictions: dict[str, np.ndarray]) -> np.ndarray:
        score = sum(self.weights[name] * p for name, p in predictions.items())
        return np.clip(np.asarray(score, np.float64), 0.0, 1.0)

    def predict_with_uncertainty(
        self, vectors: np.ndarray | dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, uncertainty in [0, 1]): how close to 0.5 the ensemble is, and how much its members
        disagree (weighted spread), whichever is larger: what a person's label teaches most."""
        predictions = self.member_predictions(vectors)
        score = self._combined(predictions)
        closeness = 1.0 - 2.0 * np.abs(score - 0.5)
        if len(predictions) > 1:
            spread = np.sqrt(sum(self.weights[n] * (p - score) ** 2 for n, p in predictions.items()))
            disagreement = np.clip(2.0 * np.asarray(spread, np.float64), 0.0, 1.0)
        else:
            disagreement = np.zeros_like(score)
        return score, np.maximum(closeness, disagreement)

    def _inputs(self, vectors: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        if isinstance(vectors, dict):
            missing = [k for k in self.feature_keys if k not in vectors]
            if missing:
                raise TasteInputError(f"taste model {self.name!r} needs features {missing}")
            return _feature_blocks({k: vectors[k] for k in self.feature_keys})[1]
        if len(self.feature_keys) > 1:
            raise TasteInputError(
                f"taste model {self.name!r} uses {self.feature_keys}: pass a dict of feature sets"
            )
        return _unit_rows(vectors, self.dim)

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
            "family": self.family,
            "member_weights": dict(self.weights),
            "member_auc": dict(self.member_auc),
            "train_seconds": self.train_seconds,
            "feature_keys": list(self.feature_keys),
        }

    # ---- persistence (no pickle) ----------------------------------------------------------------------

    def to_files(self) -> tuple[bytes, bytes]:
        """(model.npz bytes, model.json bytes); LightGBM's member is its own text format, in the json."""
        arrays: dict[str, np.ndarray] = {
            "cv_predictions": self.cv_predictions,
            "cv_labels": self.cv_labels.astype(np.bool_),
        }
        meta_members: dict[str, dict] = {}
        for name, member in self.members.items():
            if isinstance(member, LogisticMember):
                arrays["lr_coef"] = member.coef
                meta_members[name] = {"intercept": member.intercept}
            elif isinstance(member, CompressedKnnMember):
                arrays.update(
                    knn_pca_mean=member.pca_mean,
                    knn_pca_components=member.pca_components,
                    knn_centres=member.centres,
                    knn_centre_labels=member.centre_labels,
                )
                meta_members[name] = {"k": member.k}
            else:
                meta_members[name] = {"model_text": member.model_text}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        import sklearn

        meta = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "dim": self.dim,
            "feature_keys": self.feature_keys,
            "family": self.family,
            "weights": self.weights,
            "members": meta_members,
            "low_threshold": self.low_threshold,
            "high_threshold": self.high_threshold,
            "cv_accuracy": self.cv_accuracy,
            "cv_auc": self.cv_auc,
            "fold_accuracy": self.fold_accuracy,
            "fold_auc": self.fold_auc,
            "member_auc": self.member_auc,
            "train_seconds": self.train_seconds,
            "positives": self.positives,
            "negatives": self.negatives,
            "created_at": self.created_at,
            "trained_with": f"scikit-learn {sklearn.__version__}",
        }
        return buffer.getvalue(), json.dumps(meta, indent=1).encode()

    @classmethod
    def from_files(cls, npz_bytes: bytes, json_bytes: bytes) -> TasteModel:
        meta = json.loads(json_bytes)
        if meta.get("format") not in (1, FORMAT_VERSION):
            raise TasteInputError(f"taste model format {meta.get('format')} is not {FORMAT_VERSION}")
        with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        if meta["format"] == 1:  # lr (+ knn), before LightGBM and searched weights
            meta["members"] = {"lr": {"intercept": meta["lr_intercept"]}}
            if meta.get("knn_k") is not None:
                meta["members"]["knn"] = {"k": meta["knn_k"]}
            meta["feature_keys"] = [meta.get("feature_key", FEATURE_KEY)]
            meta["family"] = "lr+knn" if "knn" in meta["members"] else "lr"
        members: dict[str, Member] = {}
        for name, spec in meta["members"].items():
            if name == "lr":
                members[name] = LogisticMember(coef=arrays["lr_coef"], intercept=float(spec["intercept"]))
            elif name == "knn":
                members[name] = CompressedKnnMember(
                    pca_mean=arrays["knn_pca_mean"],
                    pca_components=arrays["knn_pca_components"],
                    centres=arrays["knn_centres"],
                    centre_labels=arrays["knn_centre_labels"],
                    k=int(spec["k"]),
                )
            elif name == "lgb":
                members[name] = LightGbmMember(model_text=str(spec["model_text"]))
            else:
                raise TasteInputError(f"taste model member {name!r} is unknown")
        return cls(
            name=meta["name"],
            dim=int(meta["dim"]),
            members=members,
            weights=meta["weights"],
            low_threshold=meta["low_threshold"],
            high_threshold=meta["high_threshold"],
            cv_accuracy=meta["cv_accuracy"],
            cv_auc=meta["cv_auc"],
            positives=meta["positives"],
            negatives=meta["negatives"],
            feature_keys=list(meta["feature_keys"]),
            family=meta["family"],
            version=meta["version"],
            created_at=meta["created_at"],
            fold_accuracy=meta["fold_accuracy"],
            fold_auc=meta["fold_auc"],
            member_auc=meta.get("member_auc", {}),
            train_seconds=float(meta.get("train_seconds", 0.0)),
            cv_predictions=arrays["cv_predictions"],
            cv_labels=arrays["cv_labels"],
        )


def _feature_blocks(features: np.ndarray | dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """(feature keys, [N, sum D_k] rows): each feature set L2-normalised on its own, side by side."""
    if not isinstance(features, dict):
        return [FEATURE_KEY], _unit_rows(features)
    if not features:
        raise TasteInputError("no feature sets given")
    blocks = [_unit_rows(features[key]) for key in features]
    if len({len(b) for b in blocks}) != 1:
        raise TasteInputError("every feature set needs one row per label")
    return list(features), np.concatenate(blocks, axis=1)


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

    def names(self, owner: str | None = None) -> list[str]:
        """Every model name with at least one version (`owner`'s only, when given)."""
        prefix = f"taste/{owner}/" if owner else "taste/"
        found = set()
        for key in self.store.list(prefix):
            match = re.fullmatch(r"taste/([^/]+/[^/]+)/v\d+/model\.json", key)
            if match:
                found.add(match.group(1))
        return sorted(found)

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
