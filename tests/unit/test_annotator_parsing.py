"""BiSeNet face parser: the official checkpoint layout, numerics against an independent functional
re-derivation of the original forward pass, the original pre-processing, and the ONNX backend."""

from __future__ import annotations

import os
import sys

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

from services.annotator.parsing import (
    CLASS_NAMES,
    BiSeNet,
    CheckpointError,
    ParserInputError,
    load_bisenet,
    load_parser,
    onnx_cache_path,
    preprocess,
    upsample_labels,
)
from services.annotator.random_weights import random_bisenet_state_dict, write_random_bisenet_checkpoint

# Facts about the released 79999_iter.pth (docs/checkpoints.md, "BiSeNet face parsing"), independent of our code.
OFFICIAL_ENTRIES = 191
OFFICIAL_FLOAT_TENSORS = 160
OFFICIAL_FLOAT_VALUES = 13_313_088
OFFICIAL_SHAPES = {
    "cp.resnet.conv1.weight": (64, 3, 7, 7),
    "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
    "cp.arm32.conv.conv.weight": (128, 512, 3, 3),
    "cp.arm32.conv_atten.weight": (128, 128, 1, 1),
    "cp.conv_head32.conv.weight": (128, 128, 3, 3),
    "cp.conv_head16.conv.weight": (128, 128, 3, 3),
    "cp.conv_avg.conv.weight": (128, 512, 1, 1),
    "ffm.convblk.conv.weight": (256, 256, 1, 1),
    "ffm.conv1.weight": (64, 256, 1, 1),
    "ffm.conv2.weight": (256, 64, 1, 1),
    "conv_out.conv.conv.weight": (256, 256, 3, 3),
    "conv_out.conv_out.weight": (19, 256, 1, 1),
    "conv_out16.conv.conv.weight": (64, 128, 3, 3),
    "conv_out16.conv_out.weight": (19, 64, 1, 1),
    "conv_out32.conv_out.weight": (19, 64, 1, 1),
}
OFFICIAL_PREFIX_ORDER = [
    "cp.resnet.conv1",
    "cp.resnet.bn1",
    "cp.resnet.layer1",
    "cp.resnet.layer2",
    "cp.resnet.layer3",
    "cp.resnet.layer4",
    "cp.arm16",
    "cp.arm32",
    "cp.conv_head32",
    "cp.conv_head16",
    "cp.conv_avg",
    "ffm.convblk",
    "ffm.conv1",
    "ffm.conv2",
    "conv_out.",
    "conv_out16",
    "conv_out32",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_bisenet_checkpoint(tmp_path_factory.mktemp("weights") / "79999_iter.pth", seed=3)


@pytest.fixture(scope="module")
def parser(checkpoint):
    return load_parser(checkpoint)


# ---- an independent, purely functional forward pass written from docs/checkpoints.md -------------


def _bn(x, s, p):
    return F.batch_norm(
        x, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"], s[p + ".bias"], False, 0.0, 1e-5
    )


def _cbr(x, s, p, stride=1, padding=1):
    return F.relu(_bn(F.conv2d(x, s[p + ".conv.weight"], None, stride, padding), s, p + ".bn"))


def _block(x, s, p, stride):
    out = F.relu(_bn(F.conv2d(x, s[p + ".conv1.weight"], None, stride, 1), s, p + ".bn1"))
    out = _bn(F.conv2d(out, s[p + ".conv2.weight"], None, 1, 1), s, p + ".bn2")
    if p + ".downsample.0.weight" in s:
        x = _bn(F.conv2d(x, s[p + ".downsample.0.weight"], None, stride), s, p + ".downsample.1")
    return F.relu(out + x)


def _arm(x, s, p):
    feat = _cbr(x, s, p + ".conv")
    att = torch.sigmoid(
        _bn(F.conv2d(F.adaptive_avg_pool2d(feat, 1), s[p + ".conv_atten.weight"]), s, p + ".bn_atten")
    )
    return feat * att


def reference_main_logits(s: dict, x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[2:]
    y = F.max_pool2d(
        F.relu(_bn(F.conv2d(x, s["cp.resnet.conv1.weight"], None, 2, 3), s, "cp.resnet.bn1")), 3, 2, 1
    )
    for layer, stride in ((1, 1), (2, 2), (3, 2), (4, 2)):
        y = _block(y, s, f"cp.resnet.layer{layer}.0", stride)
        y = _block(y, s, f"cp.resnet.layer{layer}.1", 1)
        if layer == 2:
            feat8 = y
        elif layer == 3:
            feat16 = y
    feat32 = y
    avg = _cbr(F.adaptive_avg_pool2d(feat32, 1), s, "cp.conv_avg", padding=0)
    f32 = _arm(feat32, s, "cp.arm32") + F.interpolate(avg, feat32.shape[2:], mode="nearest")
    cp16 = _cbr(F.interpolate(f32, feat16.shape[2:], mode="nearest"), s, "cp.conv_head32")
    f16 = _arm(feat16, s, "cp.arm16") + cp16
    cp8 = _cbr(F.interpolate(f16, feat8.shape[2:], mode="nearest"), s, "cp.conv_head16")
    fused = _cbr(torch.cat([feat8, cp8], 1), s, "ffm.convblk", padding=0)
    att = torch.sigmoid(
        F.conv2d(
            F.relu(F.conv2d(F.adaptive_avg_pool2d(fused, 1), s["ffm.conv1.weight"])), s["ffm.conv2.weight"]
        )
    )
    fused = fused * att + fused
    out = F.conv2d(_cbr(fused, s, "conv_out.conv"), s["conv_out.conv_out.weight"])
    return F.interpolate(out, (h, w), mode="bilinear", align_corners=True)


# ---- layout -------------------------------------------------------------------------------------------------


def test_random_checkpoint_has_the_official_layout(checkpoint) -> None:
    state = torch.load(checkpoint, weights_only=True)
    assert len(state) == OFFICIAL_ENTRIES
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    assert len(floats) == OFFICIAL_FLOAT_TENSORS
    assert sum(v.numel() for v in floats.values()) == OFFICIAL_FLOAT_VALUES
    counters = [k for k, v in state.items() if not v.is_floating_point()]
    assert len(counters) == 31 and all(k.endswith("num_batches_tracked") for k in counters)
    for key, shape in OFFICIAL_SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith(("module.", "cp.resnet.fc", "sp.")) for k in state)
    first_seen = [
        next(i for i, k in enumerate(state) if k.startswith(prefix)) for prefix in OFFICIAL_PREFIX_ORDER
    ]
    assert first_seen == sorted(first_seen)


@pytest.mark.parametrize("with_counters", [True, False])
def test_loads_strictly_with_or_without_batchnorm_counters(tmp_path, with_counters) -> None:
    path = write_random_bisenet_checkpoint(tmp_path / "p.pth", seed=1, with_num_batches_tracked=with_counters)
    model = load_bisenet(path)
    expected = random_bisenet_state_dict(seed=1)
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    assert not model.training


def test_loads_a_dataparallel_prefixed_checkpoint(tmp_path) -> None:
    state = {f"module.{k}": v for k, v in random_bisenet_state_dict(seed=2).items()}
    torch.save(state, tmp_path / "dp.pth")
    load_bisenet(tmp_path / "dp.pth")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("ffm.conv1.weight"), "1 missing keys"),
        (lambda s: s.__setitem__("cp.resnet.fc.weight", torch.zeros(1000, 512)), "1 unexpected keys"),
        (lambda s: s.__setitem__("conv_out.conv_out.weight", torch.zeros(7, 256, 1, 1)), "1 wrong shapes"),
    ],
)
def test_rejects_checkpoints_that_are_not_the_official_layout(tmp_path, edit, message) -> None:
    state = dict(random_bisenet_state_dict(seed=0))
    edit(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=message):
        load_bisenet(tmp_path / "bad.pth")


def test_rejects_unreadable_and_missing_files(tmp_path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_bisenet(tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="state dict"):
        load_bisenet(tmp_path / "list.pth")
    with pytest.raises(FileNotFoundError):
        load_parser(tmp_path / "absent.pth")


def test_construction_downloads_nothing_and_needs_no_torchvision(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("tried to download at construction")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    BiSeNet()
    assert "torchvision" not in sys.modules


# ---- numerics -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (96, 80)])
def test_logits_match_the_reference_forward(parser, checkpoint, size) -> None:
    state = torch.load(checkpoint, weights_only=True)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    ours = parser.logits(x)
    assert ours.shape == (2, 19, *size)
    with torch.no_grad():
        expected = reference_main_logits(state, x)
    scale = expected.abs().max().item()
    assert 1.0 < scale < 1000.0  # random weights still give a non-trivial signal
    assert (ours - expected).abs().max().item() <= 1e-5 * scale + 1e-5


def test_forward_returns_the_three_heads_like_the_original(checkpoint) -> None:
    model = load_bisenet(checkpoint)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        main, aux16, aux32 = model(x)
        alone = model.main_logits(x)
    assert main.shape == aux16.shape == aux32.shape == (1, 19, 64, 96)
    torch.testing.assert_close(alone, main, rtol=0, atol=0)
    assert not torch.allclose(aux16, main)  # really a different head
    assert BiSeNet(n_classes=5).conv_out.conv_out.out_channels == 5


def test_preprocessing_is_pillow_bilinear_then_imagenet_normalisation() -> None:
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (100, 140, 3), dtype=np.uint8), "RGB")
    x = preprocess(image, 64)
    resized = np.asarray(image.resize((64, 64), PIL.Image.BILINEAR), dtype=np.float32) / 255
    expected = ((resized - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    np.testing.assert_allclose(x, expected, atol=1e-6)
    grey = preprocess(np.full((50, 50), 100, np.uint8), 32)  # grey input becomes RGB
    assert grey.shape == (3, 32, 32)


def test_parse_gives_uint8_labels_at_working_or_output_size(parser) -> None:
    rng = np.random.default_rng(1)
    image = PIL.Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8), "RGB")
    labels = parser.parse(image, working_size=64)
    assert labels.shape == (64, 64) and labels.dtype == np.uint8 and labels.max() < len(CLASS_NAMES)
    expected = parser.logits(torch.from_numpy(preprocess(image, 64))[None]).argmax(1)[0].numpy()
    np.testing.assert_array_equal(labels, expected)
    big = parser.parse(image, working_size=64, output_size=256)  # SFHQ: parse small, upsample nearest
    np.testing.assert_array_equal(big, np.kron(labels, np.ones((4, 4), np.uint8)))
    batch = parser.parse_batch([image, image.transpose(PIL.Image.FLIP_LEFT_RIGHT)], working_size=64)
    np.testing.assert_array_equal(batch[0], labels)
    assert parser.parse_batch([], working_size=64) == []


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda p: p.logits(torch.zeros(3, 64, 64)), "B, 3, H, W"),
        (lambda p: p.logits(torch.zeros(1, 4, 64, 64)), "B, 3, H, W"),
        (lambda p: p.logits(torch.zeros(1, 3, 16, 16)), "at least 32"),
        (lambda p: p.parse(np.zeros((64, 64, 3), np.uint8), working_size=8), "working_size"),
        (lambda p: p.parse(np.zeros((64, 64, 3), np.float64)), "uint8"),
    ],
)
def test_bad_inputs_raise_parser_input_error(parser, call, error) -> None:
    with pytest.raises(ParserInputError, match=error):
        call(parser)


def test_upsample_labels_is_nearest() -> None:
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    np.testing.assert_array_equal(upsample_labels(labels, 4), np.kron(labels, np.ones((2, 2), np.uint8)))
    assert upsample_labels(labels, (6, 4)).shape == (4, 6)


# ---- ONNX Runtime backend -----------------------------------------------------------------------------------


def test_onnx_backend_matches_torch_and_caches_the_export(checkpoint, parser, tmp_path) -> None:
    onnx_parser = load_parser(checkpoint, backend="onnx", onnx_cache_dir=tmp_path, num_threads=1)
    assert onnx_parser.backend == "onnx"
    assert onnx_parser.onnx_path == onnx_cache_path(checkpoint, parser.sha256, tmp_path)
    assert parser.sha256[:16] in onnx_parser.onnx_path.name
    for size in ((64, 64), (80, 112)):  # one export serves every input size
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(5))
        a, b = parser.logits(x), onnx_parser.logits(x)
        assert (a - b).abs().max().item() <= 1e-4 * a.abs().max().item() + 1e-4
        top2 = a.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-3  # argmax may only differ on near-ties
        assert torch.equal(a.argmax(1)[clear], b.argmax(1)[clear])
    mtime = onnx_parser.onnx_path.stat().st_mtime_ns
    again = load_parser(checkpoint, backend="onnx", onnx_cache_dir=tmp_path)
    assert again.onnx_path.stat().st_mtime_ns == mtime  # reused, not exported again
    image = np.random.default_rng(2).integers(0, 256, (90, 90, 3), dtype=np.uint8)
    same = (parser.parse(image, 64) == again.parse(image, 64)).mean()
    assert same > 0.995


def test_label_maps_are_the_argmax_taken_inside_the_graph_or_on_the_device(
    checkpoint, parser, tmp_path
) -> None:
    onnx_parser = load_parser(checkpoint, backend="onnx", onnx_cache_dir=tmp_path, num_threads=1)
    x = torch.randn(3, 3, 64, 80, generator=torch.Generator().manual_seed(8)).numpy()
    for runner in (parser._runner, onnx_parser._runner):
        labels = runner.labels(x)
        assert labels.dtype == np.uint8 and labels.shape == (3, 64, 80)
        np.testing.assert_array_equal(labels, np.asarray(runner(x)).argmax(1))
    session_outputs = [o.name for o in onnx_parser._runner.session.get_outputs()]
    assert session_outputs == ["logits", "labels"]


def test_an_export_of_the_older_logits_only_graph_is_not_reused(checkpoint, parser, tmp_path) -> None:
    path = onnx_cache_path(checkpoint, parser.sha256, tmp_path)
    assert ".v2." in path.name  # older exports were named <stem>.<sha>.onnx and had no labels
    old = tmp_path / f"{checkpoint.stem}.{parser.sha256[:16]}.onnx"
    old.write_bytes(b"not this one")
    assert load_parser(checkpoint, backend="onnx", onnx_cache_dir=tmp_path).onnx_path == path


def test_bf16_autocast_on_cpu_keeps_almost_every_label(checkpoint) -> None:
    """bf16 autocast on the CPU (opt-in) stays close to fp32's labels; the default is fp32."""
    from services.annotator.parsing import _TorchRunner, load_bisenet

    fp32, bf16 = (
        _TorchRunner(load_bisenet(checkpoint), torch.device("cpu")),
        _TorchRunner(load_bisenet(checkpoint), torch.device("cpu"), bf16=True),
    )
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(9)).numpy()
    assert not fp32.bf16 and bf16.bf16
    assert (fp32.labels(x) == bf16.labels(x)).mean() > 0.9


def test_onnx_export_goes_next_to_the_weights_by_default(tmp_path) -> None:
    path = write_random_bisenet_checkpoint(tmp_path / "w" / "79999_iter.pth", seed=4)
    onnx_parser = load_parser(path, backend="onnx")
    assert onnx_parser.onnx_path.parent == path.parent
    assert onnx_parser.onnx_path.name.startswith("79999_iter.") and onnx_parser.onnx_path.suffix == ".onnx"
    leftovers = [p for p in os.listdir(path.parent) if p.endswith(".tmp")]
    assert leftovers == []


def test_unknown_backend_is_refused(checkpoint) -> None:
    with pytest.raises(ValueError, match="backend"):
        load_parser(checkpoint, backend="tensorrt")
