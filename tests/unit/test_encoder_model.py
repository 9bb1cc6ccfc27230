"""e4e encoder: official key layout, strict loading, numerics, latent_avg, batching, preprocessing."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from services.encoder.model import (
    CheckpointError,
    CheckpointMissing,
    Encoder4Editing,
    EncoderConfig,
    EncoderInputError,
    encoder_from_checkpoint,
    encoder_from_state_dict,
    load_encoder,
    preprocess,
)
from services.encoder.random_weights import e4e_opts, random_encoder_state_dict
from tests.helpers.data import DATA

FACES = DATA / "faces"

# 8 heads reach all three pyramid levels (heads 0-2, 3-6, 7); a 64-px input keeps it fast.
SMALL = EncoderConfig(n_styles=8, units_per_stage=(1, 2, 2, 1), input_size=64)


@pytest.fixture(scope="module")
def small_state() -> dict[str, torch.Tensor]:
    return random_encoder_state_dict(SMALL, seed=3)


def checkpoint_of(
    state: dict[str, torch.Tensor], stylegan_size: int, latent_avg: torch.Tensor | None
) -> dict:
    checkpoint = {
        "state_dict": {f"encoder.{k}": v for k, v in state.items()},
        "opts": e4e_opts(stylegan_size),
    }
    if latent_avg is not None:
        checkpoint["latent_avg"] = latent_avg
    return checkpoint


@pytest.fixture(scope="module")
def small_encoder(small_state):
    latent_avg = torch.randn(512, generator=torch.Generator().manual_seed(9)).repeat(SMALL.n_styles, 1)
    return encoder_from_checkpoint(checkpoint_of(small_state, 32, latent_avg))


class NotPlainData:
    """A class a weights_only load must refuse to instantiate (it would run arbitrary code)."""


def sample_inputs(size: int, batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------------
# Key layout
# ------------------------------------------------------------------------------------------------


def test_full_ir_se50_layout_has_the_official_keys_and_sizes():
    with torch.device("meta"):
        net = Encoder4Editing(EncoderConfig())
    state = net.state_dict()
    # The counts of the official e4e_ffhq_encode.pt encoder part.
    assert len(state) == 621
    assert sum(t.numel() for t in state.values()) == 267_161_076
    assert list(state)[:7] == [
        "input_layer.0.weight",
        "input_layer.1.weight",
        "input_layer.1.bias",
        "input_layer.1.running_mean",
        "input_layer.1.running_var",
        "input_layer.1.num_batches_tracked",
        "input_layer.2.weight",
    ]
    assert state["body.3.shortcut_layer.0.weight"].shape == (128, 64, 1, 1)
    assert "body.0.shortcut_layer.0.weight" not in state  # 64 -> 64: a max-pool shortcut, no weights
    assert state["body.23.res_layer.5.fc1.weight"].shape == (32, 512, 1, 1)
    assert state["latlayer1.weight"].shape == (512, 256, 1, 1)
    assert state["latlayer2.weight"].shape == (512, 128, 1, 1)
    # Heads read 16x16 / 32x32 / 64x64 maps: 4 / 5 / 6 stride-2 convs (Sequential index 0, 2, 4, ...).
    assert "styles.2.convs.6.weight" in state and "styles.2.convs.8.weight" not in state
    assert "styles.6.convs.8.weight" in state and "styles.6.convs.10.weight" not in state
    assert "styles.17.convs.10.weight" in state and "styles.18.linear.weight" not in state
    assert EncoderConfig().tap_indices == (6, 20, 23)
    assert EncoderConfig.from_state_dict(state) == EncoderConfig()


@pytest.mark.parametrize(
    "config",
    [
        EncoderConfig(n_styles=10, units_per_stage=(1, 1, 1, 1), input_size=64),
        EncoderConfig(n_styles=4, units_per_stage=(2, 1, 3, 1), input_size=128),
        EncoderConfig(n_styles=18, units_per_stage=(3, 4, 14, 3), input_size=256),
    ],
)
def test_config_is_inferred_from_the_keys(config):
    with torch.device("meta"):
        state = Encoder4Editing(config).state_dict()
    assert EncoderConfig.from_state_dict(state) == config


def test_config_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="input_size"):
        EncoderConfig(input_size=200)
    with pytest.raises(ValueError, match="units_per_stage"):
        EncoderConfig(units_per_stage=(3, 4, 14))  # type: ignore[arg-type]
    assert EncoderConfig.for_stylegan_size(1024).n_styles == 18
    assert EncoderConfig.for_stylegan_size(64).n_styles == 10
    assert EncoderConfig(n_styles=10).stylegan_size == 64


# ------------------------------------------------------------------------------------------------
# Strict loading
# ------------------------------------------------------------------------------------------------


def test_strict_load_accepts_the_exact_layout(small_state):
    net = encoder_from_state_dict(small_state)
    assert net.config == SMALL
    assert not any(p.requires_grad for p in net.parameters())
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, small_state[name]), name


def test_strict_load_reports_missing_keys(small_state):
    state = dict(small_state)
    del state["styles.5.linear.bias"]
    with pytest.raises(CheckpointError, match=r"missing \['styles.5.linear.bias'\]"):
        encoder_from_state_dict(state)


def test_strict_load_reports_unexpected_keys(small_state):
    state = dict(small_state)
    state["styles.3.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected.*styles.3.extra"):
        encoder_from_state_dict(state)


def test_strict_load_rejects_wrong_shapes(small_state):
    state = dict(small_state)
    state["latlayer1.bias"] = torch.zeros(256)
    with pytest.raises(RuntimeError, match="latlayer1.bias"):
        encoder_from_state_dict(state)


def test_checkpoint_keys_outside_encoder_and_decoder_are_refused(small_state):
    checkpoint = checkpoint_of(small_state, 32, torch.zeros(SMALL.n_styles, 512))
    checkpoint["state_dict"] = {**checkpoint["state_dict"], "face_pool.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="face_pool.weight"):
        encoder_from_checkpoint(checkpoint)


def test_checkpoint_opts_are_checked(small_state):
    checkpoint = checkpoint_of(small_state, 32, torch.zeros(SMALL.n_styles, 512))
    with pytest.raises(CheckpointError, match="GradualStyleEncoder"):
        encoder_from_checkpoint(
            {**checkpoint, "opts": {**checkpoint["opts"], "encoder_type": "GradualStyleEncoder"}}
        )
    with pytest.raises(CheckpointError, match="stylegan_size=1024 needs 18 style heads"):
        encoder_from_checkpoint({**checkpoint, "opts": {**checkpoint["opts"], "stylegan_size": 1024}})


def test_missing_checkpoint_names_sfhq_weights(tmp_path):
    with pytest.raises(CheckpointMissing, match="sfhq weights download e4e-ffhq-encode"):
        load_encoder(tmp_path / "e4e_ffhq_encode.pt")


def test_corrupt_and_unsafe_files_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_encoder(garbage)

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": {}, "payload": NotPlainData()}, unsafe, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_encoder(unsafe)

    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="expected a dict with a 'state_dict'"):
        load_encoder(plain)


def test_load_from_file_roundtrip(tmp_path, small_state, small_encoder):
    path = tmp_path / "e4e_small.pt"
    torch.save(checkpoint_of(small_state, 32, small_encoder.latent_avg), path)
    loaded = load_encoder(path)
    x = sample_inputs(64, 2)
    assert torch.equal(loaded.encode(x), small_encoder.encode(x))
    assert loaded.is_random and loaded.checkpoint_path == path
    assert not loaded.has_decoder  # this file has no decoder.* part
    with pytest.raises(CheckpointError, match="without its decoder"):
        _ = loaded.decoder


# ------------------------------------------------------------------------------------------------
# Numerics: a functional re-derivation of the documented e4e math, in float64
# ------------------------------------------------------------------------------------------------


def reference_e4e(state: dict[str, torch.Tensor], x: torch.Tensor, config: EncoderConfig) -> torch.Tensor:
    """e4e forward written directly with torch.nn.functional from the architecture description."""
    s = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}

    def bn(t, p):
        return F.batch_norm(
            t, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"], s[p + ".bias"], eps=1e-5
        )

    h = F.prelu(
        bn(F.conv2d(x, s["input_layer.0.weight"], padding=1), "input_layer.1"), s["input_layer.2.weight"]
    )
    feats = []
    unit = 0
    for units in config.units_per_stage:
        for k in range(units):
            stride = 2 if k == 0 else 1
            p = f"body.{unit}"
            r = bn(h, p + ".res_layer.0")
            r = F.prelu(F.conv2d(r, s[p + ".res_layer.1.weight"], padding=1), s[p + ".res_layer.2.weight"])
            r = bn(F.conv2d(r, s[p + ".res_layer.3.weight"], stride=stride, padding=1), p + ".res_layer.4")
            gate = F.conv2d(
                F.relu(F.conv2d(r.mean((2, 3), keepdim=True), s[p + ".res_layer.5.fc1.weight"])),
                s[p + ".res_layer.5.fc2.weight"],
            )
            r = r * torch.sigmoid(gate)
            if p + ".shortcut_layer.0.weight" in s:
                short = bn(
                    F.conv2d(h, s[p + ".shortcut_layer.0.weight"], stride=stride), p + ".shortcut_layer.1"
                )
            else:
                short = h[:, :, ::stride, ::stride]
            h = r + short
            unit += 1
        feats.append(h)
    c1, c2, c3 = feats[1], feats[2], feats[3]

    def head(i, f):
        n = 0
        while f"styles.{i}.convs.{2 * n}.weight" in s:
            f = F.leaky_relu(
                F.conv2d(
                    f,
                    s[f"styles.{i}.convs.{2 * n}.weight"],
                    s[f"styles.{i}.convs.{2 * n}.bias"],
                    stride=2,
                    padding=1,
                ),
                0.01,
            )
            n += 1
        return (
            f.flatten(1) @ (s[f"styles.{i}.linear.weight"] / math.sqrt(512)).T + s[f"styles.{i}.linear.bias"]
        )

    def up_add(a, b):
        return F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=True) + b

    p2 = up_add(c3, F.conv2d(c2, s["latlayer1.weight"], s["latlayer1.bias"]))
    p1 = up_add(p2, F.conv2d(c1, s["latlayer2.weight"], s["latlayer2.bias"]))
    base = head(0, c3)
    rows = [base] + [base + head(i, c3 if i < 3 else p2 if i < 7 else p1) for i in range(1, config.n_styles)]
    return torch.stack(rows, 1)


def test_float32_forward_matches_the_reference_to_1e5_of_scale(small_state, small_encoder):
    x = sample_inputs(64, 2, seed=1)
    ours = small_encoder.encode(x, add_latent_avg=False).double()
    expected = reference_e4e(small_state, x.double(), SMALL)
    scale = expected.abs().max().item()
    assert scale > 0.1  # random weights give a meaningful output, not near-zero values
    assert (ours - expected).abs().max().item() <= 1e-5 * scale
    # Heads differ from each other: deltas were really added per row.
    assert (expected[:, 1] - expected[:, 0]).abs().max() > 1e-3


def test_backbone_taps_are_the_stage_ends(small_state):
    net = encoder_from_state_dict(small_state)
    with torch.no_grad():
        c1, c2, c3 = net.backbone_features(sample_inputs(64, 1))
    assert c1.shape == (1, 128, 16, 16) and c2.shape == (1, 256, 8, 8) and c3.shape == (1, 512, 4, 4)


# ------------------------------------------------------------------------------------------------
# Encoder wrapper: latent_avg, batching, input checks
# ------------------------------------------------------------------------------------------------


def test_latent_avg_is_added_per_row(small_encoder):
    x = sample_inputs(64, 3, seed=2)
    raw = small_encoder.encode(x, add_latent_avg=False)
    codes = small_encoder.encode(x)
    assert codes.shape == (3, SMALL.n_styles, 512) and codes.dtype == torch.float32
    assert small_encoder.latent_avg.shape == (SMALL.n_styles, 512)
    torch.testing.assert_close(codes - raw, small_encoder.latent_avg.expand(3, -1, -1), rtol=0, atol=1e-5)


def test_latent_avg_of_512_is_broadcast_and_missing_one_is_an_error(small_state):
    vector = torch.linspace(-1, 1, 512)
    encoder = encoder_from_checkpoint(checkpoint_of(small_state, 32, vector))
    assert torch.equal(encoder.latent_avg, vector.expand(SMALL.n_styles, 512))
    with pytest.raises(CheckpointError, match="latent_avg has shape"):
        encoder_from_checkpoint(checkpoint_of(small_state, 32, torch.zeros(3, 512)))
    with pytest.raises(CheckpointError, match="no latent_avg"):
        encoder_from_checkpoint(checkpoint_of(small_state, 32, None))
    no_avg = checkpoint_of(small_state, 32, None)
    no_avg["opts"] = {**no_avg["opts"], "start_from_latent_avg": False}
    encoder = encoder_from_checkpoint(no_avg)
    assert encoder.encode(sample_inputs(64, 1), add_latent_avg=False).shape == (1, SMALL.n_styles, 512)
    with pytest.raises(CheckpointError, match="no latent_avg"):
        encoder.encode(sample_inputs(64, 1))


def test_batch_equals_single(small_encoder):
    x = sample_inputs(64, 4, seed=5)
    batched = small_encoder.encode(x)
    singles = torch.cat([small_encoder.encode(x[i : i + 1]) for i in range(4)])
    scale = batched.abs().max()
    assert (batched - singles).abs().max() <= 1e-5 * scale


def test_encode_rejects_bad_tensors(small_encoder):
    with pytest.raises(EncoderInputError, match="64x64"):
        small_encoder.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(EncoderInputError, match=r"\[B,3,H,W\]"):
        small_encoder.encode(torch.zeros(3, 64, 64))
    with pytest.raises(EncoderInputError, match="empty"):
        small_encoder.encode(torch.zeros(0, 3, 64, 64))


def test_encode_images_on_real_faces_matches_encode(small_encoder):
    faces = [Image.open(FACES / f"sfhq_sample_0{i}.jpg") for i in range(3)]
    codes = small_encoder.encode_images(faces, batch_size=2)
    assert (
        isinstance(codes, np.ndarray)
        and codes.shape == (3, SMALL.n_styles, 512)
        and codes.dtype == np.float32
    )
    direct = small_encoder.encode(preprocess(faces, size=64)).numpy()
    np.testing.assert_allclose(codes, direct, rtol=0, atol=1e-5 * np.abs(direct).max())
    # Different faces give different codes.
    assert np.abs(codes[0] - codes[1]).max() > 1e-3


# ------------------------------------------------------------------------------------------------
# Preprocessing
# ------------------------------------------------------------------------------------------------


def test_preprocess_is_pil_bilinear_then_half_normalization():
    face = Image.open(FACES / "sfhq_sample_00.jpg")
    assert face.size == (512, 512)
    x = preprocess(face, size=256)
    resized = np.asarray(face.convert("RGB").resize((256, 256), Image.Resampling.BILINEAR), dtype=np.float32)
    expected = torch.from_numpy(resized).permute(2, 0, 1)[None] / 255
    expected = (expected - 0.5) / 0.5
    assert x.shape == (1, 3, 256, 256) and x.dtype == torch.float32
    assert torch.equal(x, expected)
    assert x.min() >= -1 and x.max() <= 1


def test_preprocess_accepts_numpy_grayscale_and_rgba():
    rgb = np.random.default_rng(0).integers(0, 256, (80, 80, 3), dtype=np.uint8)
    from_numpy = preprocess(rgb, size=64)
    from_pil = preprocess(Image.fromarray(rgb), size=64)
    assert torch.equal(from_numpy, from_pil)
    rgba = np.dstack([rgb, np.full((80, 80), 255, np.uint8)])
    assert torch.equal(preprocess(rgba, size=64), from_numpy)
    gray = preprocess(rgb[:, :, 0], size=64)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((40, 40, 3), np.uint8), "not face-sized"),
        (np.zeros((100, 400, 3), np.uint8), "not face-sized"),
        (np.zeros((100, 100, 3), np.float32), "uint8"),
        (np.zeros((100, 100, 2), np.uint8), "shape"),
        ("face.jpg", "PIL image or a numpy array"),
    ],
)
def test_preprocess_rejects_what_is_not_an_aligned_face(image, message):
    with pytest.raises(EncoderInputError, match=message):
        preprocess(image, size=64)


# ------------------------------------------------------------------------------------------------
# The official full-size configuration, once (random weights, one forward)
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_1024_config_one_forward():
    state = random_encoder_state_dict(EncoderConfig(), seed=0)
    latent_avg = torch.randn(512).repeat(18, 1)
    encoder = encoder_from_checkpoint(checkpoint_of(state, 1024, latent_avg))
    assert encoder.config == EncoderConfig() and encoder.n_latent == 18 and encoder.input_size == 256
    face = Image.open(FACES / "sfhq_sample_01.jpg")
    codes = encoder.encode_images([face], as_numpy=False)
    assert codes.shape == (1, 18, 512)
    assert torch.isfinite(codes).all()
    raw = codes - latent_avg
    assert 0.01 < raw.std().item() < 100  # activations neither vanish nor explode through IR-SE-50


# ------------------------------------------------------------------------------------------------
# A complete random checkpoint (encoder + decoder) in the official file layout
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory) -> Path:
    from services.encoder.random_weights import write_random_e4e_checkpoint

    # The demo's 64-px decoder (10 W+ rows) behind a shallow 32-px encoder, to stay fast.
    path = tmp_path_factory.mktemp("e4e") / "e4e_ffhq_encode.pt"
    return write_random_e4e_checkpoint(
        path, stylegan_size=64, num_layers=(1, 1, 1, 1), input_size=32, seed=1, decoder_max_channels=32
    )


def test_random_checkpoint_has_the_official_file_layout(demo_checkpoint):
    checkpoint = torch.load(demo_checkpoint, map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"state_dict", "opts", "latent_avg"}
    keys = list(checkpoint["state_dict"])
    first_decoder = next(i for i, k in enumerate(keys) if k.startswith("decoder."))
    assert all(k.startswith("encoder.") for k in keys[:first_decoder])
    assert all(k.startswith("decoder.") for k in keys[first_decoder:])
    assert "decoder.noises.noise_0" in keys and "decoder.style.8.weight" in keys
    assert (
        checkpoint["opts"]["encoder_type"] == "Encoder4Editing" and checkpoint["opts"]["stylegan_size"] == 64
    )
    latent_avg = checkpoint["latent_avg"]
    assert latent_avg.shape == (10, 512) and torch.equal(latent_avg[0], latent_avg[9])


def test_decoder_is_built_by_the_generator_loader_lazily_or_on_request(demo_checkpoint):
    from services.generator.model import Generator

    encoder = load_encoder(demo_checkpoint)
    assert encoder.n_latent == 10 and encoder.input_size == 32
    assert encoder._decoder is None and encoder.has_decoder  # not read until asked for
    decoder = encoder.decoder
    assert isinstance(decoder, Generator) and decoder.n_latent == 10 and decoder.size == 64
    assert encoder.decoder is decoder
    # The generator gets e4e's average w as its truncation centre.
    assert torch.equal(decoder.latent_avg, encoder.latent_avg[0])

    eager = load_encoder(demo_checkpoint, with_decoder=True)
    assert eager._decoder is not None
    codes = eager.encode_images([Image.open(FACES / "sfhq_sample_04.jpg")], as_numpy=False)
    with torch.no_grad():
        image = eager.decoder.synthesize(codes, noise_mode="const")
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_decoder_that_does_not_fit_the_encoder_is_refused(demo_checkpoint, small_state):
    checkpoint = torch.load(demo_checkpoint, map_location="cpu", weights_only=True)
    decoder_part = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("decoder.")}
    # An 8-head encoder with a 10-row decoder.
    mixed = checkpoint_of(small_state, 32, torch.zeros(SMALL.n_styles, 512))
    mixed["state_dict"].update(decoder_part)
    with pytest.raises(CheckpointError, match="decoder takes 10 W\\+ rows but the encoder has 8"):
        encoder_from_checkpoint(mixed, with_decoder=True)
    broken = dict(checkpoint)
    broken["state_dict"] = {
        k: v for k, v in checkpoint["state_dict"].items() if k != "decoder.conv1.noise.weight"
    }
    with pytest.raises(CheckpointError, match="decoder.*conv1.noise.weight"):
        encoder_from_checkpoint(broken, with_decoder=True)
