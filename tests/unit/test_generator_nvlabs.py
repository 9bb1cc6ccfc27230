"""NVlabs stylegan2-ada-pytorch pickles: read without NVlabs code, renamed strictly, same images as rosinality."""

from __future__ import annotations

import os
import pickle
import pickletools

import pytest
import torch

from services.common.safe_pickle import UnsafePickleError
from services.generator.checkpoint import load_generator
from services.generator.errors import CheckpointFormatError, CheckpointLayoutError
from services.generator.nvlabs import (
    PersistentObject,
    load_nvlabs_state,
    name_pairs,
    nvlabs_to_rosinality,
)
from services.generator.random_weights import random_rosinality_state_dict, write_rosinality_checkpoint
from tests.helpers import nvlabs_pickle
from tests.helpers.nvlabs_pickle import write_nvlabs_pickle

TINY = dict(size=16, style_dim=32, n_mlp=2, max_channels=16, seed=4)
SIXTY_FOUR = dict(size=64, style_dim=64, n_mlp=2, max_channels=32, seed=5)


@pytest.fixture(scope="module")
def tiny_pickle(tmp_path_factory):
    return write_nvlabs_pickle(tmp_path_factory.mktemp("nv") / "network-snapshot.pkl", **TINY)


def globals_in(path) -> set[str]:
    found = set()
    for opcode, argument, _ in pickletools.genops(path.read_bytes()):
        if opcode.name == "GLOBAL":
            found.add(argument.replace(" ", "."))
    return found


def test_pickle_has_the_real_network_pickle_structure(tiny_pickle):
    found = globals_in(tiny_pickle)
    assert {
        "torch_utils.persistence._reconstruct_persistent_obj",
        "dnnlib.util.EasyDict",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch.storage._load_from_bytes",
        "collections.OrderedDict",
    } <= found
    assert any(name.endswith("multiarray.scalar") for name in found)  # np.float64 layer attributes
    # No NVlabs module is importable here: reading must not need one.
    with pytest.raises(ImportError):
        __import__("torch_utils")


@pytest.mark.parametrize("kw", [TINY, SIXTY_FOUR], ids=["tiny", "64px"])
def test_nvlabs_and_rosinality_layouts_give_identical_images(tmp_path, kw):
    rosinality = load_generator(write_rosinality_checkpoint(tmp_path / "g.pt", **kw))
    nvlabs = load_generator(write_nvlabs_pickle(tmp_path / "g.pkl", **kw))
    assert nvlabs.source["format"] == "nvlabs" and rosinality.source["format"] == "rosinality"
    assert nvlabs.config == rosinality.config
    assert torch.equal(nvlabs.latent_avg, rosinality.latent_avg)
    z = torch.randn(2, kw["style_dim"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for psi in (1.0, 0.7, 1.5):
            assert torch.equal(nvlabs(z, truncation=psi), rosinality(z, truncation=psi))


def test_reader_returns_g_ema_not_g(tiny_pickle):
    ros = random_rosinality_state_dict(**TINY)
    g_ema = load_nvlabs_state(tiny_pickle)
    g = load_nvlabs_state(tiny_pickle, network="G")
    assert g_ema.class_name == "Generator"
    assert torch.equal(g_ema.state_dict["synthesis.b8.conv0.weight"], ros["convs.0.conv.weight"][0])
    assert not torch.equal(g.state_dict["synthesis.b8.conv0.weight"], ros["convs.0.conv.weight"][0])


def test_flat_state_dict_follows_nvlabs_naming_and_order(tiny_pickle):
    keys = list(load_nvlabs_state(tiny_pickle).state_dict)
    assert keys[0] == "synthesis.b4.const"
    assert (
        keys.index("synthesis.b16.torgb.affine.bias")
        < keys.index("mapping.w_avg")
        < keys.index("mapping.fc0.weight")
    )
    layer = [k.split("synthesis.b8.conv0.")[1] for k in keys if k.startswith("synthesis.b8.conv0.")]
    assert layer == [
        "weight",
        "noise_strength",
        "bias",
        "resample_filter",
        "noise_const",
        "affine.weight",
        "affine.bias",
    ]


def test_name_mapping_covers_the_182_entries_of_config_f():
    resolutions = [2**i for i in range(2, 11)]
    pairs = name_pairs(resolutions, 8)
    resample_filters = len(resolutions) + (2 * len(resolutions) - 1)  # one per block, one per conv layer
    assert len(pairs) + resample_filters + 1 == 182  # + mapping.w_avg
    assert len({ros for _, ros, _ in pairs}) == len(pairs) == 171 - 16  # all but the 16 blur/upsample kernels
    mapped = dict((nv, ros) for nv, ros, _ in pairs)
    assert mapped["synthesis.b1024.conv1.noise_const"] == "noises.noise_16"
    assert mapped["synthesis.b8.conv0.noise_const"] == "noises.noise_1"
    assert mapped["synthesis.b4.torgb.bias"] == "to_rgb1.bias"
    assert mapped["synthesis.b64.torgb.weight"] == "to_rgbs.3.conv.weight"
    assert mapped["mapping.fc7.weight"] == "style.8.weight"


def test_conv_clamp_and_fp16_blocks_are_read_back(tmp_path):
    path = write_nvlabs_pickle(tmp_path / "ada.pkl", conv_clamp=256.0, num_fp16_res=2, **SIXTY_FOUR)
    network = load_nvlabs_state(path)
    assert network.conv_clamp == 256.0 and network.num_fp16_res == 2
    generator = load_generator(path)
    assert generator.config.conv_clamp == 256.0 and generator.source["num_fp16_res"] == 2
    tight = load_generator(write_nvlabs_pickle(tmp_path / "tight.pkl", conv_clamp=0.5, **SIXTY_FOUR))
    plain = load_generator(write_nvlabs_pickle(tmp_path / "plain.pkl", **SIXTY_FOUR))
    z = torch.randn(1, 64)
    with torch.no_grad():
        assert not torch.allclose(tight(z), plain(z))  # the clamp is applied, not just recorded


def test_module_source_in_the_pickle_is_never_executed(tmp_path, monkeypatch):
    canary = tmp_path / "pwned"
    monkeypatch.setattr(nvlabs_pickle, "_MODULE_SRC", f"open({str(canary)!r}, 'w').write('x')\n")
    path = write_nvlabs_pickle(tmp_path / "evil-src.pkl", **TINY)
    generator = load_generator(path)
    assert generator.size == 16
    assert not canary.exists()


def test_forbidden_global_anywhere_in_the_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    data = pickle.dumps({"G_ema": None, "D": Evil()})
    with pytest.raises(UnsafePickleError, match="system"):
        load_nvlabs_state(data)
    assert not (tmp_path / "pwned").exists()


def test_tensorflow_pickles_get_a_clear_error():
    data = b"\x80\x02(cdnnlib.tflib.network\nNetwork\n)Rq\x00t."
    with pytest.raises(CheckpointFormatError, match="TensorFlow"):
        load_nvlabs_state(data)


def test_a_pickle_without_g_ema_is_a_clear_error():
    with pytest.raises(CheckpointFormatError, match="G_ema"):
        load_nvlabs_state(pickle.dumps({"G": None}))


def test_conditional_generators_are_refused():
    with nvlabs_pickle._stand_in_nvlabs_modules() as fake:
        record = nvlabs_pickle._PersistentRecord(fake.reconstruct, "Generator", {"c_dim": 10, "_modules": {}})
        data = pickle.dumps({"G_ema": record})
    with pytest.raises(CheckpointFormatError, match="c_dim=10"):
        load_nvlabs_state(data)


def test_generator_attributes_are_read_from_the_recorded_state(tiny_pickle):
    network = load_nvlabs_state(tiny_pickle)
    assert network.attributes["img_resolution"] == 16 and network.attributes["num_ws"] == 6
    assert network.attributes["c_dim"] == 0


def test_persistent_object_children():
    child = PersistentObject("SynthesisLayer", {"conv_clamp": None})
    parent = PersistentObject("SynthesisBlock", {"_modules": {"conv1": child, "torgb": None}})
    assert parent.child("conv1") is child and parent.child("torgb") is None and parent.child("x") is None


def _flat(tiny_pickle):
    return dict(load_nvlabs_state(tiny_pickle).state_dict)


def test_unexpected_nvlabs_key_is_named(tiny_pickle):
    state = _flat(tiny_pickle)
    state["synthesis.b8.skip.weight"] = torch.zeros(16, 16, 1, 1)
    with pytest.raises(CheckpointLayoutError, match=r"synthesis\.b8\.skip\.weight.*skip"):
        nvlabs_to_rosinality(state)


def test_missing_nvlabs_key_is_named(tiny_pickle):
    state = _flat(tiny_pickle)
    del state["synthesis.b16.conv1.noise_strength"]
    with pytest.raises(CheckpointLayoutError, match=r"synthesis\.b16\.conv1\.noise_strength"):
        nvlabs_to_rosinality(state)


def test_wrong_nvlabs_shape_is_named(tiny_pickle):
    state = _flat(tiny_pickle)
    state["synthesis.b8.torgb.bias"] = torch.zeros(1, 3, 1, 1)
    with pytest.raises(CheckpointLayoutError, match=r"synthesis\.b8\.torgb\.bias"):
        nvlabs_to_rosinality(state)
    state = _flat(tiny_pickle)
    state["synthesis.b8.resample_filter"] = torch.ones(4, 4) / 16
    with pytest.raises(CheckpointLayoutError, match="resample_filter"):
        nvlabs_to_rosinality(state)


def test_missing_pickle_file_names_sfhq_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="sfhq weights"):
        load_nvlabs_state(tmp_path / "ffhq.pkl")
