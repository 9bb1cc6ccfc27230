"""Photoreal candidate strategies: each one's formula and invariants, validation, determinism, records."""

from __future__ import annotations

import pytest
import torch

from services.generator.checkpoint import generator_from_state_dict
from services.generator.manipulate import (
    LAYER_GROUPS,
    STRATEGIES,
    CandidateJob,
    StrategySpec,
    candidate_latents,
    candidate_latents_batch,
    e4e_strict_prior,
    encoder_truncation,
    group_strengths,
    layer_groups,
    low_prior,
    low_prior_batch,
    make_candidates,
    per_sample_multiscale_loss,
    pixel_multiscale_loss,
    style_mix,
)
from services.generator.model import Generator, z_from_seed
from services.generator.random_weights import random_latent_avg, random_rosinality_state_dict

KW = dict(size=64, style_dim=32, n_mlp=2, max_channels=16, seed=21)  # n_latent = 10


@pytest.fixture(scope="module")
def generator() -> Generator:
    return generator_from_state_dict(random_rosinality_state_dict(**KW), random_latent_avg(32, 21))


@pytest.fixture(scope="module")
def code(generator) -> torch.Tensor:
    """A stand-in e4e code: a truncated sample plus per-layer offsets, [10, 32]."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        w = generator.truncate(generator.mapping(torch.randn(1, 32, generator=gen)), 0.7)[0]
    return w.expand(generator.n_latent, -1) + 0.2 * torch.randn(generator.n_latent, 32, generator=gen)


@pytest.fixture(scope="module")
def target(generator) -> torch.Tensor:
    with torch.no_grad():
        return generator.synthesize(
            generator.mapping(torch.randn(1, 32, generator=torch.Generator().manual_seed(4)))
        )[0]


# ---- layer groups -------------------------------------------------------------------------------


def test_layer_groups_for_1024_are_the_sfhq_ones():
    assert dict(LAYER_GROUPS) == {"coarse": range(0, 4), "middle": range(4, 8), "fine": range(8, 18)}


def test_layer_groups_keep_their_resolutions_at_other_sizes():
    assert layer_groups(10) == {"coarse": range(0, 4), "middle": range(4, 8), "fine": range(8, 10)}  # 64 px
    assert layer_groups(14)["fine"] == range(8, 14)  # 256 px
    assert layer_groups(6) == {"coarse": range(0, 4), "middle": range(4, 6), "fine": range(6, 6)}  # 16 px
    for n in (4, 6, 10, 14, 18):
        covered = [layer for group in layer_groups(n).values() for layer in group]
        assert covered == list(range(n))


def test_group_strengths_to_layers():
    per_layer = group_strengths({"coarse": 0.1, "fine": 0.9}, 10)
    assert per_layer.tolist() == pytest.approx([0.1] * 4 + [0.0] * 4 + [0.9] * 2)
    assert group_strengths(0.5, 3).tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="unknown layer group"):
        group_strengths({"hair": 1.0}, 10)
    with pytest.raises(ValueError, match="10 values"):
        group_strengths([0.1, 0.2], 10)


# ---- the formulas -------------------------------------------------------------------------------


def test_strict_prior_with_zero_strength_is_the_code_itself(generator, code):
    assert torch.equal(e4e_strict_prior(code, generator.latent_avg, {}), code)


def test_strict_prior_pulls_each_group_toward_w_avg(generator, code):
    pulled = e4e_strict_prior(code, generator.latent_avg, {"coarse": 1.0, "middle": 0.25})
    w_avg = generator.latent_avg
    torch.testing.assert_close(pulled[:4], w_avg.expand(4, -1))
    torch.testing.assert_close(pulled[4:8], code[4:8] + 0.25 * (w_avg - code[4:8]))
    assert torch.equal(pulled[8:], code[8:])


def test_encoder_truncation_formula_and_ends(generator, code):
    w_s = torch.randn(32, generator=torch.Generator().manual_seed(8))
    out = encoder_truncation(code, w_s, {"coarse": 0.6, "middle": 0.5, "fine": 0.3})
    torch.testing.assert_close(out[0], code[0] + 0.6 * (w_s - code[0]))
    torch.testing.assert_close(out[5], code[5] + 0.5 * (w_s - code[5]))
    torch.testing.assert_close(out[9], code[9] + 0.3 * (w_s - code[9]))
    assert torch.equal(encoder_truncation(code, w_s, 0.0), code)
    torch.testing.assert_close(encoder_truncation(code, w_s, 1.0), w_s.expand_as(code))
    w_s_plus = torch.randn(10, 32)
    torch.testing.assert_close(encoder_truncation(code, w_s_plus, 1.0), w_s_plus)


def test_style_mix_changes_only_the_layers_from_start(generator, code):
    mixed = style_mix(generator, code, seed=5, start=8, strength=1.0, psi=0.7)
    assert torch.equal(mixed[:8], code[:8])
    with torch.no_grad():
        donor = generator.truncate(generator.mapping(z_from_seed(5, 32)[None]), 0.7)[0]
    torch.testing.assert_close(mixed[8:], donor.expand(2, -1))
    assert torch.equal(style_mix(generator, code, seed=5, start=8, strength=0.0), code)
    assert not torch.equal(style_mix(generator, code, seed=6, start=8), mixed)
    with pytest.raises(ValueError, match="'start'"):
        style_mix(generator, code, seed=5, start=10)


def test_pixel_multiscale_loss():
    image = torch.rand(1, 3, 16, 16)
    assert pixel_multiscale_loss(image, image).item() == 0.0
    shifted = image + 0.5
    assert pixel_multiscale_loss(image, shifted).item() == pytest.approx(
        0.25, rel=1e-5
    )  # a colour shift at every scale
    noise = torch.randn(1, 3, 16, 16)
    # fine noise averages out at coarse scales: the multi-scale loss is below the plain MSE
    assert (
        pixel_multiscale_loss(image, image + noise).item()
        < torch.nn.functional.mse_loss(image, image + noise).item()
    )


def test_low_prior_moves_toward_the_target_and_is_deterministic(generator, code, target):
    before = pixel_multiscale_loss(generator.synthesize(code[None]), target[None]).item()
    refined = low_prior(generator, code, target, steps=12, lr=0.05, prior_weight=0.0, loss_size=32)
    again = low_prior(generator, code, target, steps=12, lr=0.05, prior_weight=0.0, loss_size=32)
    assert refined.shape == code.shape and not refined.requires_grad
    assert torch.equal(refined, again)
    with torch.no_grad():
        after = pixel_multiscale_loss(generator.synthesize(refined[None]), target[None]).item()
    assert after < 0.8 * before
    assert not any(p.grad is not None for p in generator.parameters())  # weights untouched


def test_low_prior_below_full_size_leaves_the_finest_layers_alone(generator, code, target):
    refined = low_prior(generator, code, target, steps=4, lr=0.05, prior_weight=0.0, loss_size=32)
    assert torch.equal(refined[8:], code[8:])  # layers 8, 9 only drive the 64-px block
    assert not torch.equal(refined[:8], code[:8])


def test_low_prior_prior_weight_and_steps(generator, code, target):
    assert torch.equal(low_prior(generator, code, target, steps=0), code)
    free = low_prior(generator, code, target, steps=8, lr=0.05, prior_weight=0.0, loss_size=32)
    held = low_prior(generator, code, target, steps=8, lr=0.05, prior_weight=1e4, loss_size=32)
    assert (held - code).norm() < (free - code).norm()


def test_low_prior_works_inside_inference_mode_and_with_a_custom_loss(generator, code, target):
    calls = []

    def l1(image, goal):
        calls.append(image.shape)
        return (image - goal).abs().mean()

    with torch.inference_mode():
        refined = low_prior(generator, code, target, steps=3, lr=0.05, loss_fn=l1, loss_size=16)
    assert len(calls) == 3 and calls[0] == (1, 3, 16, 16)
    assert not torch.equal(refined, code)


# ---- specs, registry, candidates ----------------------------------------------------------------


def test_registry_names_and_documented_formulas():
    assert set(STRATEGIES) == {"e4e_strict_prior", "low_prior", "style_mix", "encoder_truncation"}
    for strategy in STRATEGIES.values():
        assert strategy.formula and all(
            spec.low <= spec.default <= spec.high for spec in strategy.params.values()
        )


@pytest.mark.parametrize(
    ("name", "params", "seed", "message"),
    [
        ("sharpen", {}, 0, "unknown strategy 'sharpen'"),
        ("style_mix", {"strenght": 0.5}, 0, "unknown parameter 'strenght'"),
        ("style_mix", {"strength": 1.5}, 0, "'strength' must be in \\[0, 1\\]"),
        ("low_prior", {"steps": 2.5}, 0, "'steps' must be a whole number"),
        ("low_prior", {"lr": float("nan")}, 0, "'lr' must be finite"),
        ("e4e_strict_prior", {"coarse": "high"}, 0, "'coarse' must be a number"),
        ("style_mix", {}, -1, "seed"),
        ("style_mix", {}, 2**64, "seed"),
    ],
)
def test_spec_validation_names_the_problem(name, params, seed, message):
    with pytest.raises(ValueError, match=message):
        StrategySpec(name, params, seed)


def test_resolved_spec_and_record_fill_in_defaults():
    spec = StrategySpec("style_mix", {"strength": 0.5}, seed=9)
    assert spec.resolved().params == {"start": 8.0, "strength": 0.5, "psi": 0.7}
    assert spec.resolved(n_latent=6).params["start"] == 5.0  # a 16-px generator has no fine layers
    assert StrategySpec("style_mix", {"start": 2}).resolved(n_latent=6).params["start"] == 2.0
    assert spec.record() == {
        "name": "style_mix",
        "params": {"start": 8, "strength": 0.5, "psi": 0.7},
        "seed": 9,
    }


def test_candidates_are_made_in_order_and_recorded(generator, code, target):
    specs = [
        StrategySpec("e4e_strict_prior"),
        StrategySpec("low_prior", {"steps": 3, "lr": 0.05, "loss_size": 16}),
        {"name": "style_mix", "params": {}, "seed": 4},
        StrategySpec("encoder_truncation", {"fine": 0.0}),
    ]
    sampled = torch.randn(32, generator=torch.Generator().manual_seed(2))
    results = make_candidates(generator, code, specs, target=target, sampled_w=sampled, batch_size=3)
    assert [r.strategy.name for r in results] == [
        "e4e_strict_prior",
        "low_prior",
        "style_mix",
        "encoder_truncation",
    ]
    for result in results:
        assert result.image.shape == (3, 64, 64) and result.latent.shape == (10, 32)
        with torch.no_grad():  # batch size changes the float rounding of the grouped conv, nothing more
            torch.testing.assert_close(
                result.image, generator.synthesize(result.latent[None])[0], rtol=1e-5, atol=1e-5
            )
    assert torch.equal(results[0].latent, code)
    assert results[3].strategy.params == {"coarse": 0.6, "middle": 0.5, "fine": 0.0}
    torch.testing.assert_close(results[3].latent[8:], code[8:])
    # deterministic given (seed, strategy, params)
    again = candidate_latents(generator, code, specs, target=target, sampled_w=sampled)
    assert all(torch.equal(a.latent, b) for a, (_, b) in zip(results, again, strict=True))


def test_missing_inputs_are_value_errors(generator, code):
    with pytest.raises(ValueError, match="needs a target"):
        make_candidates(generator, code, [StrategySpec("low_prior")])
    with pytest.raises(ValueError, match="needs sampled_w"):
        make_candidates(generator, code, [StrategySpec("encoder_truncation")])
    with pytest.raises(ValueError, match="W\\+ code \\[10, 32\\]"):
        make_candidates(generator, code[:5], [StrategySpec("e4e_strict_prior")])
    with pytest.raises(ValueError, match="NaN"):
        make_candidates(generator, torch.full_like(code, float("nan")), [StrategySpec("e4e_strict_prior")])
    with pytest.raises(ValueError, match="target must have shape"):
        make_candidates(generator, code, [StrategySpec("low_prior")], target=torch.zeros(1, 64, 64))


# ---- batched low_prior ----------------------------------------------------------------------------


def _targets(generator, n: int) -> list[torch.Tensor]:
    with torch.no_grad():
        z = torch.randn(n, 32, generator=torch.Generator().manual_seed(40))
        return list(generator.synthesize(generator.mapping(z)))


def test_per_sample_loss_is_the_loss_of_each_sample(generator):
    images, goals = torch.stack(_targets(generator, 3)), torch.stack(_targets(generator, 3)).flip(0)
    per_sample = per_sample_multiscale_loss(images, goals)
    expected = torch.stack([pixel_multiscale_loss(images[i : i + 1], goals[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(per_sample, expected, rtol=1e-6, atol=1e-7)


def test_batched_low_prior_gives_each_code_what_it_gets_alone(generator, code):
    codes = torch.stack([code, code.flip(0), code * 0.5])
    targets = _targets(generator, 3)
    weights = [0.1, 0.0, 2.0]  # one prior weight per code
    batched = low_prior_batch(generator, codes, targets, steps=6, lr=0.05, prior_weight=weights, loss_size=32)
    alone = torch.stack(
        [
            low_prior(
                generator, codes[i], targets[i], steps=6, lr=0.05, prior_weight=weights[i], loss_size=32
            )
            for i in range(3)
        ]
    )
    assert (alone - codes).abs().max() > 1e-2  # the refinement did move the codes
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def test_batched_low_prior_with_a_custom_loss(generator, code):
    targets = _targets(generator, 2)
    l1 = lambda image, goal: (image - goal).abs().mean()  # noqa: E731
    batched = low_prior_batch(
        generator, torch.stack([code, code]), targets, steps=3, loss_fn=l1, loss_size=16
    )
    alone = [low_prior(generator, code, t, steps=3, loss_fn=l1, loss_size=16) for t in targets]
    torch.testing.assert_close(batched, torch.stack(alone), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="targets"):
        low_prior_batch(generator, torch.stack([code, code]), targets[:1])


def test_candidate_sets_of_a_batch_equal_the_sets_made_alone(generator, code, target):
    strategies = [
        StrategySpec("e4e_strict_prior", {"coarse": 0.3}),
        StrategySpec("low_prior", {"steps": 3, "loss_size": 32}, seed=5),
        StrategySpec("low_prior", {"steps": 3, "loss_size": 32, "prior_weight": 1.0}, seed=6),
        StrategySpec("low_prior", {"steps": 2, "loss_size": 16}),  # another group
    ]
    jobs = [
        CandidateJob(code, strategies, target),
        CandidateJob(code * 0.8, strategies[1:], _targets(generator, 1)[0]),
        CandidateJob(code, strategies),  # low_prior without a target: this set fails alone
    ]
    outcomes = candidate_latents_batch(generator, jobs, max_batch=2)
    assert isinstance(outcomes[2], ValueError) and "target" in str(outcomes[2])
    for job, outcome in zip(jobs[:2], outcomes[:2], strict=True):
        alone = candidate_latents(generator, job.w_plus, job.strategies, job.target)
        assert isinstance(outcome, list) and [s for s, _ in outcome] == [s for s, _ in alone]
        for (_, got), (_, expected) in zip(outcome, alone, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
