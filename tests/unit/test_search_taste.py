"""Taste model: cross-validated training, VTA's threshold rule, versioned pickle-free persistence."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from services.common.blobs import BlobStore
from services.search.taste import (
    TasteInputError,
    TasteModel,
    TasteModelNotFound,
    TasteStore,
    TooFewLabels,
    choose_thresholds,
)
from tests.helpers.synthetic import clustered_features, normalized

DIM = 32


def labelled(n: int = 240, seed: int = 0, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Features whose "goodness" is a hidden direction plus label noise (a person's taste)."""
    vectors = clustered_features(n, DIM, seed=seed).vectors
    taste = np.random.default_rng(seed + 100).standard_normal(DIM)
    score = normalized(vectors) @ taste
    noisy = score + np.random.default_rng(seed + 200).normal(0, noise * score.std(), n)
    return vectors, noisy > np.median(score)


def test_training_cross_validates_and_scores_held_out_images() -> None:
    vectors, labels = labelled(300)
    model = TasteModel.train(vectors[:240], labels[:240], name="ann/faces", family="lr+knn")
    assert model.positives + model.negatives == 240
    assert len(model.fold_auc) == 5 and model.cv_auc > 0.85 and model.cv_accuracy > 0.75
    assert model.cv_predictions.shape == (240,)
    assert model.low_threshold <= 0.35 and model.high_threshold >= 0.65
    held_out = model.predict_proba(vectors[240:])
    assert held_out.shape == (60,) and (held_out >= 0).all() and (held_out <= 1).all()
    assert ((held_out >= 0.5) == labels[240:]).mean() > 0.75
    assert set(model.members) == {"knn", "lr"} and set(model.weights) == {"knn", "lr"}
    assert model.weights["lr"] == pytest.approx(4 / 7)  # VTA's 0.4 / 0.3 without LightGBM, renormalised
    assert model.predict_proba(vectors[0]).shape == (1,)


def test_logistic_regression_alone_is_an_option() -> None:
    vectors, labels = labelled(200, seed=1)
    model = TasteModel.train(vectors, labels, family="lr")
    assert set(model.members) == {"lr"} and model.weights == {"lr": 1.0}
    assert model.cv_auc > 0.85


def test_thresholds_follow_the_ratio_30_rule_within_the_safety_bounds() -> None:
    # 100 positives at p = 0.90 with 3 negatives among them, and 100 negatives at p = 0.10 with 2
    # positives among them; a muddle of both at 0.5.
    p = np.concatenate(
        [
            np.full(100, 0.9),
            np.full(3, 0.9),
            np.full(100, 0.1),
            np.full(2, 0.1),
            np.full(10, 0.5),
            np.full(10, 0.5),
        ]
    )
    y = np.concatenate(
        [np.ones(100), np.zeros(3), np.zeros(100), np.ones(2), np.ones(10), np.zeros(10)]
    ).astype(bool)
    low, high = choose_thresholds(p, y)
    # TP/FP at t ≤ 0.5 is 110/13 < 30; at t in (0.5, 0.9] it is 100/3.001 ≥ 30: the first such t is 0.51.
    assert high == 0.65  # ... raised to the 0.65 floor
    # TN/FN is 100/2.001 ≥ 30 for t in [0.1, 0.5); the last such t is 0.49, capped at 0.35.
    assert low == 0.35
    # Muddles near both ends: the rule's own values now lie within the bounds and are used as they are.
    inner = np.array(
        [0.8] * 100 + [0.7] * 10 + [0.3] * 10 + [0.2] * 2 + [0.8] * 3 + [0.7] * 10 + [0.3] * 10 + [0.2] * 100
    )
    truth = np.array([True] * 122 + [False] * 123)
    # high: TP/FP is 110/13 up to 0.7 and 100/3 above: the first t is 0.71.
    # low: TN/FN is 100/2 on [0.2, 0.3) and 110/12 from 0.3: the last t is 0.29.
    assert choose_thresholds(inner, truth) == (0.29, 0.71)
    # A sharper classifier gets a band wider than the bounds: thresholds clamp, never cross.
    clean = np.concatenate([np.full(50, 0.95), np.full(50, 0.05)])
    labels = np.concatenate([np.ones(50), np.zeros(50)]).astype(bool)
    assert choose_thresholds(clean, labels) == (0.35, 0.65)
    # When no threshold is safe enough, the best available ratio is used (still within the bounds).
    coin = np.random.default_rng(0).random(400)
    low, high = choose_thresholds(coin, np.random.default_rng(1).random(400) > 0.5)
    assert 0.0 <= low <= 0.35 and 0.65 <= high <= 1.0


def test_store_versions_models_without_pickle(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    vectors, labels = labelled(200, seed=2)
    first = TasteModel.train(vectors, labels, name="ann/faces")  # the VTA family: lr + knn + LightGBM
    second = TasteModel.train(vectors[:150], labels[:150], name="ann/faces", family="lr")
    tastes = TasteStore(store)
    assert tastes.save(first) == 1 and tastes.save(second) == 2
    assert tastes.versions("ann/faces") == [1, 2]
    fresh = TasteStore(store)  # nothing cached: everything comes back from the blobs
    assert fresh.latest("ann/faces").version == 2 and set(fresh.latest("ann/faces").members) == {"lr"}
    reloaded = fresh.resolve("ann/faces@1")
    np.testing.assert_array_equal(reloaded.predict_proba(vectors), first.predict_proba(vectors))
    assert reloaded.info() == {**first.info(), "version": 1}
    # The files are plain npz (refusing pickle) and JSON.
    with np.load(io.BytesIO(store.get("taste/ann/faces/v1/model.npz")), allow_pickle=False) as arrays:
        assert "lr" not in first.members or arrays["lr_coef"].shape == (DIM,)
        assert "knn" not in first.members or arrays["knn_centres"].ndim == 2
        assert arrays["cv_predictions"].shape == (200,)
    meta = json.loads(store.get("taste/ann/faces/v1/model.json"))
    assert meta["high_threshold"] == first.high_threshold
    if "lgb" in first.members:  # LightGBM's own text model, inside the JSON
        assert meta["members"]["lgb"]["model_text"].startswith("tree")


def test_bad_training_data_and_unknown_models_are_clear_errors(tmp_path: Path) -> None:
    vectors, labels = labelled(100, seed=3)
    few_negatives = labels.copy()
    few_negatives[:] = True
    few_negatives[:5] = False
    with pytest.raises(TooFewLabels, match="at least 10 positive and 10 negative"):
        TasteModel.train(vectors, few_negatives)
    with pytest.raises(TasteInputError, match="99 labels"):
        TasteModel.train(vectors, labels[:99])
    with pytest.raises(TasteInputError, match="name"):
        TasteModel.train(vectors, labels, name="ann/../escape")
    model = TasteModel.train(vectors, labels)
    with pytest.raises(TasteInputError, match=f"\\[N, {DIM}\\]"):
        model.predict_proba(np.ones((2, DIM + 1)))
    tastes = TasteStore(BlobStore(tmp_path / "blobs"))
    with pytest.raises(TasteModelNotFound, match="no taste model named 'ann/nobody'"):
        tastes.latest("ann/nobody")
    tastes.save(model)
    with pytest.raises(TasteModelNotFound, match="no version 7"):
        tastes.resolve("ann/default@7")
    with pytest.raises(TasteInputError, match="number"):
        tastes.resolve("ann/default@latest")


def test_the_vta_family_searches_its_weights_and_beats_or_ties_the_two_member_model() -> None:
    # A taste that is not linear in the features (two good clusters): trees and kNN help.
    vectors, _ = labelled(400, seed=5)
    unit = normalized(vectors)
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal(DIM), rng.standard_normal(DIM)
    labels = (np.abs(unit @ a) > np.median(np.abs(unit @ a))) ^ (unit @ b > 0.3)
    vta = TasteModel.train(vectors, labels, family="vta")
    pair = TasteModel.train(vectors, labels, family="lr+knn")
    assert set(vta.member_auc) == {"lr", "knn", "lgb"} and abs(sum(vta.weights.values()) - 1) < 1e-9
    assert vta.cv_auc >= pair.cv_auc - 0.02  # the searched weights include the pair's own
    assert vta.train_seconds > 0 and vta.info()["family"] == "vta"
    scores, uncertainty = vta.predict_with_uncertainty(vectors[:50])
    assert scores.shape == uncertainty.shape == (50,) and ((uncertainty >= 0) & (uncertainty <= 1)).all()
    # the least certain items are the ones near 0.5
    order = np.argsort(-uncertainty)
    assert np.abs(scores[order[:5]] - 0.5).mean() <= np.abs(scores[order[-5:]] - 0.5).mean()


def test_a_model_can_train_on_several_feature_sets() -> None:
    vectors, labels = labelled(200, seed=6)
    other = np.random.default_rng(3).standard_normal((200, 8))
    model = TasteModel.train(
        {"CLIP_ViTL_14@336": vectors, "ConvNext_XL_Imagenet21k": other}, labels, family="lr"
    )
    assert model.feature_keys == ["CLIP_ViTL_14@336", "ConvNext_XL_Imagenet21k"] and model.dim == DIM + 8
    both = {"CLIP_ViTL_14@336": vectors[:3], "ConvNext_XL_Imagenet21k": other[:3]}
    assert model.predict_proba(both).shape == (3,)
    with pytest.raises(TasteInputError, match="needs features"):
        model.predict_proba({"CLIP_ViTL_14@336": vectors[:3]})
