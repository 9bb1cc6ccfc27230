"""low_prior's identity term: the e4e IR-SE50 backbone's features (ReconstructionLoss.for_encoder)
in the generator's latent optimisation, its `identity_weight` parameter and the service wiring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from services.common.blobs import BlobStore
from services.common.model_holder import LazyModel
from services.common.queue import Task
from services.common.strategies import check_params
from services.common.weights import WeightsRegistry
from services.encoder.model import (
    CHECKPOINT_NAME,
    Encoder,
    Encoder4Editing,
    EncoderConfig,
    encoder_from_state_dict,
)
from services.encoder.random_weights import random_encoder_state_dict, write_random_e4e_checkpoint
from services.encoder.refine import (
    IdentityFeatures,
    identity_similarity,
    normalized_feature_distance,
    prepare_target,
)
from services.generator.checkpoint import generator_from_state_dict
from services.generator.engine import to_uint8
from services.generator.identity import identity_model
from services.generator.manipulate import (
    CandidateJob,
    StrategySpec,
    candidate_latents_batch,
    low_prior,
    low_prior_batch,
)
from services.generator.model import Generator
from services.generator.random_weights import random_latent_avg, random_rosinality_state_dict
from services.generator.service import synthesize_stage
from tests.helpers.data import face_path
from tests.helpers.services import settings_for

# A shallow backbone at 32 px keeps the identity term fast; the official layout, random weights.
BACKBONE = EncoderConfig(n_styles=1, units_per_stage=(1, 1, 1, 1), input_size=32)
FACES = [face_path(i) for i in range(3)]


@pytest.fixture(scope="module")
def generator() -> Generator:
    state = random_rosinality_state_dict(size=32, style_dim=64, n_mlp=2, max_channels=32, seed=21)
    return generator_from_state_dict(state, random_latent_avg(64, 21))


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(encoder_from_state_dict(random_encoder_state_dict(BACKBONE, seed=4)), latent_avg=None)


def face(index: int, size: int = 32) -> torch.Tensor:
    return prepare_target(Image.open(FACES[index]).convert("RGB"), size)[0]


def start_code(generator: Generator) -> torch.Tensor:
    return generator.latent_avg.reshape(1, -1).expand(generator.n_latent, -1).clone()


def similarity(generator: Generator, encoder: Encoder, code: torch.Tensor, target: torch.Tensor) -> float:
    features = IdentityFeatures.from_encoder(encoder)
    with torch.no_grad():
        image = generator.synthesize(code[None], noise_mode="const")
        return float(identity_similarity(features(image), features(target[None]))[0])


# ---- (1) the parameter ------------------------------------------------------------------------------


def test_identity_weight_is_in_the_strategy_table_and_validated():
    assert StrategySpec("low_prior").resolved().params["identity_weight"] == 1.0  # identity-aware by default
    assert check_params("low_prior", {"identity_weight": 0})["identity_weight"] == 0.0
    for bad, message in [
        (-0.5, r"in \[0, 100\]"),
        (101, r"in \[0, 100\]"),
        (math.nan, "finite"),
        ("x", "number"),
    ]:
        with pytest.raises(ValueError, match=rf"low_prior.*'identity_weight'.*{message}"):
            check_params("low_prior", {"identity_weight": bad})
    with pytest.raises(ValueError, match="'identity_weight'"):
        StrategySpec("low_prior", {"identity_weight": True})


# ---- (2) identity_weight 0 is today's pixel-only refinement --------------------------------------------


def test_identity_weight_zero_equals_the_pixel_only_result_exactly(generator, encoder):
    code, target = start_code(generator), face(0)
    pixel_only = low_prior(generator, code, target, steps=4, lr=0.05, loss_size=32)
    zero = low_prior(
        generator, code, target, steps=4, lr=0.05, loss_size=32, identity=encoder, identity_weight=0
    )
    assert torch.equal(zero, pixel_only)
    aware = low_prior(generator, code, target, steps=4, lr=0.05, loss_size=32, identity=encoder)
    assert not torch.allclose(aware, pixel_only)  # the term does change the result
    # Through the strategy table, in a batch.
    job = CandidateJob(
        code,
        [StrategySpec("low_prior", {"steps": 4, "lr": 0.05, "loss_size": 32, "identity_weight": 0})],
        target,
    )
    [[(spec, batched)]] = candidate_latents_batch(generator, [job], identity=encoder)
    today = low_prior_batch(generator, code[None], [target], steps=4, lr=0.05, loss_size=32)[0]
    assert spec.params["identity_weight"] == 0.0 and torch.equal(batched, today)


def test_without_a_backbone_the_record_says_identity_weight_zero(generator):
    job = CandidateJob(
        start_code(generator), [StrategySpec("low_prior", {"steps": 1, "loss_size": 32})], face(0)
    )
    [[(spec, _)]] = candidate_latents_batch(generator, [job])
    assert spec.params["identity_weight"] == 0.0


def test_batches_keep_each_codes_identity_weight(generator, encoder):
    code = start_code(generator)
    weights = [0.0, 2.0, 2.0, 0.5]
    jobs = [
        CandidateJob(
            code,
            [StrategySpec("low_prior", {"steps": 3, "lr": 0.05, "loss_size": 32, "identity_weight": w})],
            face(i % 3),
        )
        for i, w in enumerate(weights)
    ]
    outcomes = candidate_latents_batch(generator, jobs, identity=encoder)
    for i, (outcome, weight) in enumerate(zip(outcomes, weights, strict=True)):
        assert not isinstance(outcome, ValueError)
        [(spec, batched)] = outcome
        alone = low_prior(
            generator,
            code,
            face(i % 3),
            steps=3,
            lr=0.05,
            loss_size=32,
            identity=encoder,
            identity_weight=weight,
        )
        assert spec.params["identity_weight"] == weight
        torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def test_target_features_are_computed_once_per_optimisation(generator, encoder, monkeypatch):
    calls: list[int] = []
    real = Encoder4Editing.backbone_features

    def counted(self, x):
        calls.append(x.shape[0])
        return real(self, x)

    monkeypatch.setattr(Encoder4Editing, "backbone_features", counted)
    low_prior_batch(
        generator,
        torch.stack([start_code(generator)] * 2),
        [face(0), face(1)],
        steps=5,
        loss_size=32,
        identity=encoder,
    )
    assert calls == [2] * 6  # 5 steps of the two candidates, and the two targets once


# ---- (3) identity-aware refinement gets closer in the backbone's feature space -------------------------


def test_identity_aware_refinement_ends_closer_in_backbone_features(generator, encoder):
    # Random weights make "identity" meaningless, so this measures what the term optimises: the
    # cosine of the (random) backbone's features, candidate vs inspiration. The direction must hold
    # on every test face at equal steps.
    steps = 15
    for index in range(len(FACES)):
        target = face(index)
        runs = {
            weight: low_prior(
                generator,
                start_code(generator),
                target,
                steps=steps,
                lr=0.05,
                loss_size=32,
                identity=encoder,
                identity_weight=weight,
            )
            for weight in (0.0, 1.0)
        }
        before = similarity(generator, encoder, start_code(generator), target)
        pixel, aware = (similarity(generator, encoder, runs[w], target) for w in (0.0, 1.0))
        assert aware > pixel + 0.01, (index, before, pixel, aware)
        assert aware > before


def test_identity_similarity_is_one_minus_half_the_feature_distance(encoder):
    features = IdentityFeatures.from_encoder(encoder)
    a, b = (features(face(i)[None]) for i in (0, 1))
    assert float(identity_similarity(a, a)[0]) == pytest.approx(1.0, abs=1e-5)
    assert float(identity_similarity(a, b)[0]) == pytest.approx(
        1 - float(normalized_feature_distance(a, b)) / 2, abs=1e-5
    )


# ---- (4) the synthesize stage runs low_prior with the identity term -------------------------------------


def test_synthesize_stage_runs_low_prior_with_the_identity_term(tmp_path, generator):
    settings = settings_for(tmp_path)
    registry = WeightsRegistry(settings.weights_dir)
    source = write_random_e4e_checkpoint(
        tmp_path / "e4e.pt", stylegan_size=16, num_layers=(1, 1, 1, 1), input_size=32, decoder_max_channels=16
    )
    registry.add(CHECKPOINT_NAME, source)
    registry.mark_random("test")
    identity = identity_model(settings, registry)
    assert identity is not None
    blobs = BlobStore(settings.blob_url)
    blobs.put_npy("in/code.npy", start_code(generator).numpy())
    pixels = to_uint8(face(1)[None])[0]
    from io import BytesIO

    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    blobs.put("in/target.png", buffer.getvalue())

    def task(item: str, params: dict) -> Task:
        strategies = [
            {"name": "low_prior", "params": {"steps": 3, "lr": 0.05, "loss_size": 32, **params}, "seed": 0}
        ]
        return Task.make(
            "job",
            item,
            "synthesize",
            {"latent": "in/code.npy", "target": "in/target.png", "strategies": strategies},
        )

    tasks = [task("aware", {}), task("pixel", {"identity_weight": 0}), task("bad", {"identity_weight": -1})]
    results = synthesize_stage(
        LazyModel.ready("generator", generator), blobs, settings, None, identity=identity
    )(tasks)
    assert [r.ok for r in results] == [True, True, False]
    assert results[2].error_code == "INVALID_ARGUMENT" and "identity_weight" in results[2].error_message
    aware, pixel = (r.output["candidates"][0] for r in results[:2])
    assert (
        aware["strategy"]["params"]["identity_weight"] == 1
        and pixel["strategy"]["params"]["identity_weight"] == 0
    )
    assert aware["provenance"]["encoder"]["random_weights"] is True  # the e4e checkpoint it used
    codes = [blobs.get_npy(c["latent"]) for c in (aware, pixel)]
    assert not np.allclose(codes[0], codes[1])
    expected_pixel = low_prior(generator, start_code(generator), face(1), steps=3, lr=0.05, loss_size=32)
    np.testing.assert_allclose(codes[1], expected_pixel.numpy(), rtol=1e-4, atol=1e-4)
