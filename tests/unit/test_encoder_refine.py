"""Refinement losses for low-prior candidates: target preprocessing, loss terms, convergence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from services.encoder.model import (
    Encoder,
    EncoderConfig,
    EncoderInputError,
    encoder_from_state_dict,
    preprocess,
)
from services.encoder.random_weights import random_encoder_state_dict
from services.encoder.refine import (
    IdentityFeatures,
    ReconstructionLoss,
    normalized_feature_distance,
    prepare_target,
    resize_image,
)
from tests.helpers.data import face_path

FACE = face_path(2)
# The perceptual extractor only runs the backbone: a shallow one at 32 px keeps the test fast.
BACKBONE = EncoderConfig(n_styles=1, units_per_stage=(1, 1, 1, 1), input_size=32)


@pytest.fixture(scope="module")
def identity_features() -> IdentityFeatures:
    return IdentityFeatures(encoder_from_state_dict(random_encoder_state_dict(BACKBONE, seed=4)))


def images(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------------
# Target preprocessing and resizing
# ------------------------------------------------------------------------------------------------


def test_prepare_target_from_an_image_is_e4e_preprocessing():
    face = Image.open(FACE)
    target = prepare_target(face, 128)
    assert target.shape == (1, 3, 128, 128) and target.dtype == torch.float32
    assert torch.equal(target, preprocess(face, size=128))


def test_prepare_target_from_a_tensor_only_resizes():
    x = images(1, 64, seed=0)
    assert torch.equal(prepare_target(x[0], 64), x)
    small = prepare_target(x, 32)
    assert torch.allclose(small, F.avg_pool2d(x, 2))
    with pytest.raises(EncoderInputError, match=r"\[3,H,W\]"):
        prepare_target(torch.zeros(2, 3, 8, 8), 8)


def test_resize_uses_box_average_for_integer_factors_and_antialiasing_otherwise():
    x = images(2, 96, seed=1)
    assert torch.allclose(resize_image(x, 24), F.avg_pool2d(x, 4))
    odd = resize_image(x, 40)
    assert odd.shape == (2, 3, 40, 40)
    # Antialiased: a fine checkerboard shrinks to its mean instead of aliasing into stripes.
    checker = (torch.arange(96)[:, None] + torch.arange(96)[None, :]) % 2 * 2.0 - 1.0
    shrunk = resize_image(checker.expand(1, 3, 96, 96), 40)
    assert shrunk.abs().max() < 0.35


# ------------------------------------------------------------------------------------------------
# Loss terms
# ------------------------------------------------------------------------------------------------


def test_loss_is_zero_on_the_target_and_grows_with_the_error():
    loss = ReconstructionLoss()
    target = images(1, 32, seed=2)
    assert loss(target, target).item() == 0.0
    near = loss(target + 0.05, target).item()
    far = loss(target + 0.5, target).item()
    assert 0 < near < far
    terms = loss.terms(target + 0.5, target)
    assert set(terms) == {"pixel", "multiscale"}
    # A constant offset survives box downsampling unchanged: both terms are 0.25 for L2.
    assert terms["pixel"].item() == pytest.approx(0.25, rel=1e-5)
    assert terms["multiscale"].item() == pytest.approx(0.25, rel=1e-5)


def test_multiscale_term_ignores_fine_texture_and_sees_layout():
    loss = ReconstructionLoss(levels=2)
    target = torch.zeros(1, 3, 32, 32)
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2.0 - 1.0).expand(1, 3, 32, 32)
    texture = loss.terms(checker * 0.5, target)
    assert texture["pixel"].item() == pytest.approx(0.25)
    assert texture["multiscale"].item() == pytest.approx(0.0, abs=1e-7)
    layout = torch.zeros(1, 3, 32, 32)
    layout[..., :16] = 0.5  # half the face brighter: survives downsampling
    assert loss.terms(layout, target)["multiscale"].item() > 0.1


def test_l1_and_weights_are_applied():
    target = images(1, 32, seed=3)
    image = target + 0.2
    l1 = ReconstructionLoss(pixel="l1", multiscale_weight=0.0)
    assert l1(image, target).item() == pytest.approx(0.2, rel=1e-5)
    doubled = ReconstructionLoss(pixel_weight=2.0, multiscale_weight=0.0)
    assert doubled(image, target).item() == pytest.approx(2 * 0.04, rel=1e-4)
    with pytest.raises(ValueError, match="'l2' or 'l1'"):
        ReconstructionLoss(pixel="huber")  # type: ignore[arg-type]


def test_sizes_and_batches_are_reconciled_and_gradients_flow():
    loss = ReconstructionLoss()
    target = images(1, 32, seed=4)
    image = images(3, 64, seed=5).requires_grad_(True)
    value = loss(image, target)  # 64-px batch of 3 vs one 32-px target
    value.backward()
    assert value.ndim == 0 and image.grad is not None and image.grad.abs().sum() > 0
    with pytest.raises(EncoderInputError, match="does not match"):
        loss(images(3, 32, seed=6), images(2, 32, seed=7))
    with pytest.raises(EncoderInputError, match=r"\[B,3,H,W\]"):
        loss(torch.zeros(3, 32, 32), target)


def test_perceptual_term_on_the_e4e_backbone(identity_features):
    loss = ReconstructionLoss(perceptual=identity_features, perceptual_weight=1.0)
    target = images(1, 64, seed=8)
    same = loss.terms(target.clone(), target)
    assert same["perceptual"].item() == pytest.approx(0.0, abs=1e-6)
    other = images(1, 64, seed=9).requires_grad_(True)
    terms = loss.terms(other, target)
    assert terms["perceptual"].item() > 1e-3
    terms["perceptual"].backward()
    assert other.grad is not None and other.grad.abs().sum() > 0
    # The backbone stays frozen and in eval mode (BatchNorm running statistics), even in train().
    loss.train()
    assert not identity_features.net.training
    assert all(not p.requires_grad for p in identity_features.parameters())


def test_loss_for_an_encoder_uses_its_backbone(identity_features):
    encoder = Encoder(identity_features.net, latent_avg=None)
    with_identity = ReconstructionLoss.for_encoder(encoder, perceptual_weight=0.3, pixel="l1")
    assert with_identity.perceptual is not None and with_identity.perceptual.net is encoder.net
    assert with_identity.perceptual_weight == 0.3 and with_identity.pixel == "l1"
    target = images(1, 64, seed=11)
    assert "perceptual" in with_identity.terms(images(1, 64, seed=12), target)
    assert "perceptual" not in ReconstructionLoss.for_encoder(None).terms(images(1, 64, seed=12), target)


def test_target_features_are_computed_once_per_target(identity_features):
    calls = []
    handle = identity_features.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        loss = ReconstructionLoss(perceptual=identity_features)
        target = images(1, 64, seed=10)
        for seed in range(3):
            loss(images(2, 64, seed=20 + seed), target)
        assert calls == [2, 1, 2, 2]  # image, target (once), image, image
        target.add_(0.1)  # modified in place: its features are recomputed
        loss(images(2, 64, seed=30), target)
        assert calls[-2:] == [2, 1]
        # A fresh expanded view per step (what low_prior passes): computed once (on one copy), then reused.
        calls.clear()
        for seed in range(3):
            batch = images(2, 64, seed=40 + seed)
            loss(batch, target.expand_as(batch))
        assert calls == [2, 1, 2, 2]
        other = target.clone()  # same pixels, other memory: computed anew
        loss(images(2, 64, seed=50), other)
        assert calls[-2:] == [2, 1]
    finally:
        handle.remove()


def test_normalized_feature_distance_is_scale_invariant():
    a = [torch.randn(1, 8, 4, 4, generator=torch.Generator().manual_seed(1))]
    assert normalized_feature_distance(a, [f * 7.0 for f in a]).item() == pytest.approx(0.0, abs=1e-6)
    assert normalized_feature_distance(a, [-f for f in a]).item() == pytest.approx(4.0, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# Convergence on a tiny generator: the target comes from a known latent, the start is perturbed
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_generator():
    from services.generator.checkpoint import generator_from_state_dict
    from services.generator.random_weights import random_rosinality_state_dict

    return generator_from_state_dict(random_rosinality_state_dict(size=16, max_channels=32, seed=11))


def optimize(generator, loss_fn, w_start, target, steps: int, lr: float) -> list[float]:
    w = w_start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([w], lr=lr)
    history = []
    for _ in range(steps):
        optimizer.zero_grad()
        value = loss_fn(generator.synthesize(w, noise_mode="const"), target)
        value.backward()
        optimizer.step()
        history.append(value.item())
    return history


def known_latent_and_start(generator, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w_true = (
            generator.mapping(torch.randn(1, 512, generator=gen))
            .unsqueeze(1)
            .repeat(1, generator.n_latent, 1)
        )
        spread = (w_true - generator.latent_avg).std()
        w_start = w_true + 0.5 * spread * torch.randn(w_true.shape, generator=gen)
    return w_true, w_start


def test_pixel_and_multiscale_loss_converges_on_a_tiny_generator(tiny_generator):
    w_true, w_start = known_latent_and_start(tiny_generator, seed=12)
    with torch.no_grad():
        target = tiny_generator.synthesize(w_true, noise_mode="const")
    history = optimize(tiny_generator, ReconstructionLoss(), w_start, target, steps=30, lr=0.01)
    assert history[0] > 0
    assert history[-1] < 0.2 * history[0]  # falls by more than 5x


def test_loss_with_perceptual_term_converges(tiny_generator, identity_features):
    w_true, w_start = known_latent_and_start(tiny_generator, seed=13)
    with torch.no_grad():
        target = tiny_generator.synthesize(w_true, noise_mode="const")
    loss = ReconstructionLoss(perceptual=identity_features, perceptual_weight=0.5)
    history = optimize(tiny_generator, loss, w_start, target, steps=25, lr=0.01)
    assert history[-1] < 0.5 * history[0]


def test_low_prior_strategy_accepts_our_loss(tiny_generator):
    from services.generator import manipulate

    w_true, w_start = known_latent_and_start(tiny_generator, seed=14)
    with torch.no_grad():
        target = tiny_generator.synthesize(w_true, noise_mode="const")
    loss = ReconstructionLoss()
    refined = manipulate.low_prior(
        tiny_generator, w_start, target, steps=30, lr=0.01, prior_weight=0.0, loss_fn=loss, seed=0
    )
    refined = refined[0] if isinstance(refined, tuple) else refined
    with torch.no_grad():
        before = loss(tiny_generator.synthesize(w_start, noise_mode="const"), target).item()
        after = loss(
            tiny_generator.synthesize(refined.reshape(w_start.shape), noise_mode="const"), target
        ).item()
    assert after < 0.5 * before
