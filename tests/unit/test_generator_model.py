"""StyleGAN2 generator: official layouts, strict loading, the math against literal formulas, truncation, noise."""

from __future__ import annotations

import argparse
import math
import pickle

import numpy as np
import pytest
import torch

from services.generator.checkpoint import generator_from_state_dict, load_generator
from services.generator.errors import (
    CheckpointFormatError,
    CheckpointLayoutError,
    CheckpointNotFoundError,
    InvalidLatentError,
)
from services.generator.model import (
    FP32_GROUPED,
    Generator,
    GeneratorConfig,
    LayerRun,
    StyledConv,
    ToRGB,
    blur_kernel,
    upfirdn2d,
    z_from_seed,
)
from services.generator.random_weights import (
    random_latent_avg,
    random_rosinality_state_dict,
    rosinality_layout,
    write_rosinality_checkpoint,
)

TINY = dict(size=32, style_dim=32, n_mlp=2, max_channels=16, seed=7)


@pytest.fixture(scope="module")
def tiny() -> Generator:
    state = random_rosinality_state_dict(**TINY)
    return generator_from_state_dict(state, random_latent_avg(TINY["style_dim"], TINY["seed"]))


def w_batch(generator: Generator, n: int = 2, seed: int = 0) -> torch.Tensor:
    z = torch.randn(n, generator.style_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return generator.mapping(z)


# ---- layouts ------------------------------------------------------------------------------------


def test_config_f_layout_matches_the_official_table():
    state = Generator(GeneratorConfig(1024), random_init=False).state_dict()
    assert len(state) == 171
    assert sum(t.numel() for t in state.values()) == 33_166_492
    official = rosinality_layout(1024)
    assert [(k, tuple(v.shape)) for k, v in state.items()] == official
    assert Generator.__init__ is not None and GeneratorConfig(1024).n_latent == 18


def test_random_state_dict_has_the_official_order_and_shapes():
    state = random_rosinality_state_dict(size=64, style_dim=64, n_mlp=3, max_channels=32, seed=1)
    assert [(k, tuple(v.shape)) for k, v in state.items()] == rosinality_layout(64, 64, 3, 2, 32)
    keys = list(state)
    # noise buffers 4, 8, 8, 16, 16, ..., 64, 64 and the order style, input, conv1, to_rgb1, convs, to_rgbs, noises
    assert [state[f"noises.noise_{i}"].shape[-1] for i in range(9)] == [4, 8, 8, 16, 16, 32, 32, 64, 64]
    assert (
        keys.index("to_rgbs.0.bias") > keys.index("convs.7.activate.bias") > keys.index("to_rgb1.conv.weight")
    )
    assert (
        keys.index("to_rgbs.0.bias")
        < keys.index("to_rgbs.0.upsample.kernel")
        < keys.index("to_rgbs.0.conv.weight")
    )


def test_config_is_inferred_from_the_shapes(tiny):
    assert tiny.config.size == 32 and tiny.size == 32
    assert tiny.style_dim == 32 and tiny.config.n_mlp == 2
    assert tiny.config.channels == {4: 16, 8: 16, 16: 16, 32: 16}
    assert tiny.n_latent == 8
    wide = generator_from_state_dict(
        random_rosinality_state_dict(size=16, style_dim=16, n_mlp=1, max_channels=24)
    )
    assert wide.config.channels == {4: 24, 8: 24, 16: 24} and wide.config.n_mlp == 1


# ---- strict loading -----------------------------------------------------------------------------


def _state():
    return random_rosinality_state_dict(size=16, style_dim=16, n_mlp=2, max_channels=8, seed=2)


def test_missing_key_is_named():
    state = _state()
    del state["convs.1.noise.weight"]
    with pytest.raises(CheckpointLayoutError, match=r"missing key 'convs\.1\.noise\.weight'"):
        generator_from_state_dict(state, torch.zeros(16))


def test_unexpected_key_is_named():
    state = _state()
    state["convs.1.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointLayoutError, match=r"unexpected key 'convs\.1\.extra'"):
        generator_from_state_dict(state, torch.zeros(16))


def test_wrong_shape_is_named():
    state = _state()
    state["to_rgbs.1.conv.modulation.bias"] = torch.zeros(9)
    with pytest.raises(
        CheckpointLayoutError, match=r"shape mismatch at 'to_rgbs\.1\.conv\.modulation\.bias'.*\[8\].*\[9\]"
    ):
        generator_from_state_dict(state, torch.zeros(16))


def test_a_different_blur_filter_is_refused():
    state = _state()
    state["convs.0.conv.blur.kernel"] = torch.full((4, 4), 1 / 16)
    with pytest.raises(CheckpointLayoutError, match="blur.kernel"):
        generator_from_state_dict(state, torch.zeros(16))


def test_bad_latent_avg_is_refused():
    with pytest.raises(CheckpointLayoutError, match="latent_avg"):
        generator_from_state_dict(_state(), torch.zeros(15))


# ---- the math against literal formulas ------------------------------------------------------------


def literal_upfirdn(image: np.ndarray, kernel: np.ndarray, up: int, pad: tuple[int, int]) -> np.ndarray:
    """upfirdn2d by its definition, one 2-D image: zero-insert, pad, true convolution (loops)."""
    h, w = image.shape
    upsampled = np.zeros((h * up, w * up))
    upsampled[::up, ::up] = image
    padded = np.pad(upsampled, ((pad[0], pad[1]), (pad[0], pad[1])))
    k = kernel.shape[0]
    out = np.zeros((padded.shape[0] - k + 1, padded.shape[1] - k + 1))
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            for a in range(k):
                for b in range(k):
                    out[y, x] += padded[y + a, x + b] * kernel[k - 1 - a, k - 1 - b]
    return out


def test_upfirdn2d_matches_its_definition():
    gen = torch.Generator().manual_seed(3)
    image = torch.randn(1, 2, 5, 5, generator=gen)
    kernel = torch.rand(4, 4, generator=gen)  # not symmetric: catches a missing flip
    ours = upfirdn2d(image, kernel, up=2, pad=(2, 1))
    for channel in range(2):
        expected = literal_upfirdn(image[0, channel].double().numpy(), kernel.double().numpy(), 2, (2, 1))
        np.testing.assert_allclose(ours[0, channel].numpy(), expected, rtol=1e-5, atol=1e-5)
    blurred = upfirdn2d(image, kernel, pad=(1, 1))
    np.testing.assert_allclose(
        blurred[0, 1].numpy(),
        literal_upfirdn(image[0, 1].double().numpy(), kernel.double().numpy(), 1, (1, 1)),
        atol=1e-5,
    )


def test_upsampling_styled_conv_matches_the_literal_formula():
    """One up-conv layer computed with loops from the formulas of docs/checkpoints.md vs our module."""
    gen = torch.Generator().manual_seed(4)
    c_in, c_out, style_dim, side, batch = 3, 2, 4, 4, 2
    layer = StyledConv(c_in, c_out, style_dim, upsample=True)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=gen))
    x = torch.randn(batch, c_in, side, side, generator=gen)
    w = torch.randn(batch, style_dim, generator=gen)
    noise = torch.randn(1, 1, 2 * side, 2 * side, generator=gen)
    with torch.no_grad():
        ours = layer(x, w, noise, FP32_GROUPED).double().numpy()

    W = layer.conv.weight[0].detach().double().numpy()  # [out, in, 3, 3]
    A, b_A = (
        layer.conv.modulation.weight.detach().double().numpy(),
        layer.conv.modulation.bias.detach().double().numpy(),
    )
    strength = layer.noise.weight.item()
    bias = layer.activate.bias.detach().double().numpy()
    kernel = (np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64 * 4).astype(np.float64)
    xs, ws, ns = x.double().numpy(), w.double().numpy(), noise[0, 0].double().numpy()
    for n in range(batch):
        s = ws[n] @ (A / math.sqrt(style_dim)).T + b_A
        modulated = W / math.sqrt(c_in * 9) * s[None, :, None, None]
        modulated /= np.sqrt((modulated**2).sum(axis=(1, 2, 3), keepdims=True) + 1e-8)
        for o in range(c_out):
            transposed = np.zeros((2 * side + 1, 2 * side + 1))
            for i in range(c_in):
                for y in range(side):
                    for xx in range(side):
                        transposed[2 * y : 2 * y + 3, 2 * xx : 2 * xx + 3] += (
                            modulated[o, i] * xs[n, i, y, xx]
                        )
            blurred = literal_upfirdn(transposed, kernel, 1, (1, 1))
            pre = blurred + strength * ns + bias[o]
            expected = np.where(pre >= 0, pre, 0.2 * pre) * math.sqrt(2)
            np.testing.assert_allclose(ours[n, o], expected, rtol=1e-5, atol=1e-5)


def test_to_rgb_matches_the_literal_formula():
    gen = torch.Generator().manual_seed(5)
    c_in, style_dim, side = 3, 4, 4
    layer = ToRGB(c_in, style_dim)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=gen))
    x = torch.randn(1, c_in, side, side, generator=gen)
    w = torch.randn(1, style_dim, generator=gen)
    skip = torch.randn(1, 3, side // 2, side // 2, generator=gen)
    with torch.no_grad():
        ours = layer(x, w, skip, FP32_GROUPED)[0].double().numpy()
    W = layer.conv.weight[0, :, :, 0, 0].detach().double().numpy()
    s = (
        w[0].double().numpy()
        @ (layer.conv.modulation.weight.detach().double().numpy() / math.sqrt(style_dim)).T
    )
    s += layer.conv.modulation.bias.detach().double().numpy()
    kernel = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64 * 4
    for c in range(3):
        conv = np.einsum("i,ihw->hw", W[c] / math.sqrt(c_in) * s, x[0].double().numpy())
        expected = (
            conv
            + layer.bias[0, c, 0, 0].item()
            + literal_upfirdn(skip[0, c].double().numpy(), kernel, 2, (2, 1))
        )
        np.testing.assert_allclose(ours[c], expected, rtol=1e-5, atol=1e-5)


def test_mapping_matches_the_formula(tiny):
    z = torch.randn(3, tiny.style_dim, generator=torch.Generator().manual_seed(9))
    state = tiny.state_dict()
    x = z.double() / torch.sqrt((z.double() ** 2).mean(1, keepdim=True) + 1e-8)
    for i in range(1, tiny.config.n_mlp + 1):
        weight = state[f"style.{i}.weight"].double() * 0.01 / math.sqrt(tiny.style_dim)
        x = torch.nn.functional.leaky_relu(
            x @ weight.T + state[f"style.{i}.bias"].double() * 0.01, 0.2
        ) * math.sqrt(2)
    torch.testing.assert_close(tiny.mapping(z).double(), x, rtol=1e-5, atol=1e-5)


def test_batched_modconv_agrees_with_grouped(tiny):
    w = w_batch(tiny, 3)
    with torch.no_grad():
        grouped = tiny.synthesize(w)
        try:
            tiny.set_runtime(modconv="batched", channels_last=True)
            batched = tiny.synthesize(w)
        finally:
            tiny.set_runtime(modconv="grouped", channels_last=False)
    scale = grouped.abs().max()
    assert (batched - grouped).abs().max() <= 1e-5 * scale


def test_fp16_path_stays_close_to_fp32(tiny):
    w = w_batch(tiny, 2)
    with torch.no_grad():
        reference = tiny.synthesize(w)
        try:
            tiny.set_runtime(fp16_resolutions=2, modconv="batched")
            half = tiny.synthesize(w)
        finally:
            tiny.set_runtime(fp16_resolutions=0, modconv="grouped")
    assert half.dtype == torch.float32  # the image accumulates in float32
    assert (half - reference).abs().max() <= 2e-2 * reference.abs().max()
    assert not torch.equal(half, reference)  # fp16 really ran


# ---- synthesis semantics ------------------------------------------------------------------------


def test_w_and_w_plus_give_the_same_image(tiny):
    w = w_batch(tiny)
    with torch.no_grad():
        from_w = tiny.synthesize(w)
        from_w_plus = tiny.synthesize(w[:, None].repeat(1, tiny.n_latent, 1))
    assert from_w.shape == (2, 3, 32, 32)
    assert torch.equal(from_w, from_w_plus)


def test_psi_zero_gives_the_average_face(tiny):
    w = w_batch(tiny)
    with torch.no_grad():
        truncated = tiny.synthesize(w, truncation=0.0)
        average = tiny.synthesize(tiny.latent_avg[None].repeat(2, 1))
    torch.testing.assert_close(truncated, average)


def test_psi_above_one_extrapolates_instead_of_being_ignored(tiny):
    w = w_batch(tiny)
    expected = tiny.latent_avg + 1.7 * (w - tiny.latent_avg)
    torch.testing.assert_close(tiny.truncate(w, 1.7), expected)
    with torch.no_grad():
        assert not torch.allclose(tiny.synthesize(w, truncation=1.7), tiny.synthesize(w))
        torch.testing.assert_close(tiny.synthesize(w, truncation=1.7), tiny.synthesize(expected))


def test_truncation_cutoff_touches_only_the_first_layers(tiny):
    w = w_batch(tiny)
    out = tiny.truncate(w, 0.5, cutoff=3)
    assert out.shape == (2, tiny.n_latent, tiny.style_dim)
    torch.testing.assert_close(
        out[:, :3], (tiny.latent_avg + 0.5 * (w - tiny.latent_avg))[:, None].expand(-1, 3, -1)
    )
    torch.testing.assert_close(out[:, 3:], w[:, None].expand(-1, tiny.n_latent - 3, -1))


def test_per_layer_psi_and_a_w_plus_centre(tiny):
    w = w_batch(tiny)[:1]
    centre = torch.randn(1, tiny.n_latent, tiny.style_dim)
    psi = torch.linspace(0, 1, tiny.n_latent)
    out = tiny.truncate(w, psi, center=centre)
    torch.testing.assert_close(out[0, 0], centre[0, 0])
    torch.testing.assert_close(out[0, -1], w[0])
    torch.testing.assert_close(out, centre + psi[None, :, None] * (w[:, None] - centre))


def test_noise_modes(tiny):
    w = w_batch(tiny)
    with torch.no_grad():
        const_a, const_b = tiny.synthesize(w), tiny.synthesize(w, noise_mode="const")
        random_1a = tiny.synthesize(w, noise_mode="random", noise_seed=1)
        random_1b = tiny.synthesize(w, noise_mode="random", noise_seed=1)
        random_2 = tiny.synthesize(w, noise_mode="random", noise_seed=2)
        no_noise = tiny.synthesize(w, noise_mode="none")
    assert torch.equal(const_a, const_b)
    assert torch.equal(random_1a, random_1b)
    assert not torch.allclose(random_1a, random_2)
    assert not torch.allclose(no_noise, const_a)
    # noise only perturbs: the face stays the same face
    assert (no_noise - const_a).abs().mean() < const_a.abs().mean()


def test_max_resolution_returns_the_intermediate_image(tiny):
    w = w_batch(tiny)
    with torch.no_grad():
        full = tiny.synthesize(w)
        assert torch.equal(tiny.synthesize(w, max_resolution=32), full)
        low = tiny.synthesize(w, max_resolution=16)
        w_plus = w[:, None].repeat(1, tiny.n_latent, 1)
        w_plus[:, 6:] += 5.0  # layers 6, 7 drive only the 32-px block: the 16-px image ignores them
        assert torch.equal(tiny.synthesize(w_plus, max_resolution=16), low)
    assert low.shape == (2, 3, 16, 16)
    # the 16-px render is the coarse version of the final image
    downsampled = torch.nn.functional.avg_pool2d(full, 2)
    assert (low - downsampled).abs().mean() < (downsampled - downsampled.mean()).abs().mean()
    with pytest.raises(InvalidLatentError, match="max_resolution"):
        tiny.synthesize(w, max_resolution=24)


def test_forward_is_mapping_truncation_synthesis(tiny):
    z = torch.randn(2, tiny.style_dim)
    with torch.no_grad():
        torch.testing.assert_close(tiny(z, truncation=0.6), tiny.synthesize(tiny.mapping(z), truncation=0.6))


@pytest.mark.parametrize(
    ("latents", "message"),
    [
        (torch.zeros(2, 31), "W \\[B, 32\\] or W\\+ \\[B, 8, 32\\]"),
        (torch.zeros(2, 7, 32), "W\\+"),
        (torch.zeros(0, 32), "B >= 1"),
        (torch.full((1, 32), float("nan")), "NaN"),
        (torch.full((1, 32), float("inf")), "NaN or infinite"),
        (torch.zeros(1, 32, dtype=torch.int64), "floating point"),
    ],
)
def test_bad_latents_raise_a_typed_error(tiny, latents, message):
    with pytest.raises(InvalidLatentError, match=message):
        tiny.synthesize(latents)


def test_bad_noise_mode_and_psi_raise_typed_errors(tiny):
    w = w_batch(tiny, 1)
    with pytest.raises(InvalidLatentError, match="noise_mode"):
        tiny.synthesize(w, noise_mode="loud")  # type: ignore[arg-type]
    with pytest.raises(InvalidLatentError, match="psi"):
        tiny.synthesize(w, truncation=float("nan"))
    with pytest.raises(InvalidLatentError, match="cutoff"):
        tiny.truncate(w, 0.5, cutoff=99)
    assert issubclass(InvalidLatentError, ValueError)


def test_z_from_seed_is_nvlabs_seed_to_z():
    np.testing.assert_array_equal(
        z_from_seed(85, 512).numpy(), np.random.RandomState(85).randn(512).astype(np.float32)
    )
    big = z_from_seed(2**40 + 3, 16)
    assert torch.equal(big, z_from_seed(2**40 + 3, 16)) and not torch.equal(big, z_from_seed(3, 16))
    with pytest.raises(InvalidLatentError):
        z_from_seed(-1)
    with pytest.raises(InvalidLatentError):
        z_from_seed(2**64)


# ---- checkpoint files ---------------------------------------------------------------------------


def test_rosinality_checkpoint_loads_strictly(tmp_path, tiny):
    path = write_rosinality_checkpoint(tmp_path / "g.pt", **TINY)
    loaded = load_generator(path)
    assert loaded.source["format"] == "rosinality"
    torch.testing.assert_close(loaded.latent_avg, random_latent_avg(TINY["style_dim"], TINY["seed"]))
    w = w_batch(tiny)
    with torch.no_grad():
        assert torch.equal(loaded.synthesize(w), tiny.synthesize(w))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_training_checkpoint_without_latent_avg_uses_a_seeded_mean(tmp_path):
    path = write_rosinality_checkpoint(
        tmp_path / "train.pt", include_latent_avg=False, training_checkpoint=True, **TINY
    )
    checkpoint = torch.load(path, weights_only=False)
    assert isinstance(checkpoint["args"], argparse.Namespace) and "latent_avg" not in checkpoint
    first, second = load_generator(path), load_generator(path)
    assert torch.equal(first.latent_avg, second.latent_avg)
    z = torch.randn(4096, TINY["style_dim"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(first.latent_avg, first.mapping(z).mean(0))


def test_e4e_checkpoint_decoder_loads(tmp_path, tiny):
    decoder = random_rosinality_state_dict(**TINY)
    latent_avg = random_latent_avg(TINY["style_dim"], TINY["seed"])
    state = {"encoder.input_layer.0.weight": torch.zeros(64, 3, 3, 3)}
    state.update({f"decoder.{k}": v for k, v in decoder.items()})
    checkpoint = {
        "state_dict": state,
        "opts": {"encoder_type": "Encoder4Editing"},
        "latent_avg": latent_avg.repeat(8, 1),
    }
    torch.save(checkpoint, tmp_path / "e4e.pt")
    loaded = load_generator(tmp_path / "e4e.pt")
    assert loaded.source["format"] == "e4e-decoder"
    assert torch.equal(loaded.latent_avg, latent_avg)
    w = w_batch(tiny)
    with torch.no_grad():
        assert torch.equal(loaded.synthesize(w), tiny.synthesize(w))


def test_missing_checkpoint_names_sfhq_weights(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="sfhq weights"):
        load_generator(tmp_path / "nope.pt")


def test_garbage_and_foreign_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointFormatError):
        load_generator(tmp_path / "junk.pt")
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointFormatError, match="g_ema"):
        load_generator(tmp_path / "other.pt")


class _Evil:
    def __reduce__(self):
        import os

        return os.system, ("echo pwned",)


def test_torch_file_with_code_is_refused_by_weights_only(tmp_path):
    torch.save({"g_ema": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointFormatError, match="weights_only"):
        load_generator(tmp_path / "evil.pt")
    with open(tmp_path / "evil.pkl", "wb") as handle:  # and as a plain pickle (the NVlabs route)
        pickle.dump({"G_ema": _Evil()}, handle)
    with pytest.raises(CheckpointFormatError, match="refused to unpickle.*system"):
        load_generator(tmp_path / "evil.pkl")


def test_blur_kernel_constant():
    torch.testing.assert_close(
        blur_kernel(4.0), torch.tensor(np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 16, dtype=torch.float32)
    )


def test_layer_run_is_a_plain_record():
    run = LayerRun(torch.float16, 256.0, "batched", True)
    assert run.clamp == 256.0 and run.dtype == torch.float16
