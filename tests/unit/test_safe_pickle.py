"""The restricted unpickler: feature pickles load, code-running pickles are refused and never run."""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import subprocess
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch

from services.common.safe_pickle import (
    UnsafePickleError,
    load_feature_pickle,
    restricted_loads,
    torch_tensor_globals,
)


class _Payload:
    """Pickles as `callable(*args)`: what an attacker puts in a pickle."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.fixture
def canary(tmp_path):
    """A path that a successful attack would create."""
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a refused pickle still ran code"


def sfhq_features() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "CLIP_ViTL_14@336": rng.standard_normal((1, 768)).astype(np.float16),
        "ConvNext_XL_Imagenet21k": rng.standard_normal((1, 2048)).astype(np.float32),
        "fortran_order": np.asfortranarray(rng.standard_normal((3, 4))),
        "big_endian": np.arange(5, dtype=">f4").reshape(1, 5),
    }


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_feature_pickle_round_trips_at_every_protocol(protocol):
    features = sfhq_features()
    data = pickle.dumps(features, protocol=protocol)
    loaded = load_feature_pickle(data)
    trusted = pickle.loads(data)  # what an unrestricted load gives (numpy may normalise byte order)
    assert list(loaded) == list(features)
    for key, value in features.items():
        assert loaded[key].dtype == trusted[key].dtype and loaded[key].shape == value.shape
        np.testing.assert_array_equal(loaded[key], value)


@pytest.mark.parametrize(
    ("payload", "forbidden"),
    [
        (lambda path: _Payload(os.system, f"touch {path}"), "system"),
        (lambda path: _Payload(eval, f"open({str(path)!r}, 'w')"), "builtins.eval"),
        (lambda path: _Payload(subprocess.Popen, ["touch", str(path)]), "subprocess.Popen"),
        (lambda path: _Payload(exec, f"open({str(path)!r}, 'w')"), "builtins.exec"),
    ],
)
def test_code_running_globals_are_refused_and_named(payload, forbidden, canary):
    data = pickle.dumps({"CLIP_ViTL_14@336": payload(canary)})
    with pytest.raises(UnsafePickleError, match=forbidden):
        load_feature_pickle(data)


def test_nested_reduce_trick_is_refused(canary):
    # getattr(__import__('os'), 'system')('touch ...') spelt with REDUCE opcodes, protocol 0.
    data = (
        b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V"
        + f"touch {canary}".encode()
        + b"\ntR."
    )
    with pytest.raises(UnsafePickleError, match="builtins.getattr"):
        load_feature_pickle(data)


def test_inst_opcode_goes_through_the_allow_list(canary):
    data = b"(S'" + f"touch {canary}".encode() + b"'\nios\nsystem\n."
    with pytest.raises(UnsafePickleError, match="os.system"):
        load_feature_pickle(data)


def test_extension_registry_opcode_is_refused(canary):
    copyreg.add_extension("os", "system", 0xF1)
    try:
        data = b"\x80\x02\x82\xf1(V" + f"touch {canary}".encode() + b"\ntR."
        with pytest.raises(UnsafePickleError, match="os.system"):
            load_feature_pickle(data)
    finally:
        copyreg.remove_extension("os", "system", 0xF1)


def test_persistent_ids_are_refused():
    with pytest.raises(UnsafePickleError, match="persistent id"):
        load_feature_pickle(b"Pstorage\n.")


def test_a_harmless_but_unlisted_global_is_still_refused():
    with pytest.raises(UnsafePickleError, match="_reconstructor"):
        load_feature_pickle(pickle.dumps({"k": _Plain()}, protocol=1))


class _Plain:
    pass


def test_object_arrays_are_refused():
    data = pickle.dumps({"k": np.array([1, "os"], dtype=object)})
    with pytest.raises(UnsafePickleError, match="dtype"):
        load_feature_pickle(data)


def test_numpy_reconstruct_cannot_build_other_types():
    # numpy's _reconstruct(subtype, shape, code) would instantiate any subtype; here an empty list made
    # by opcodes stands in for one: the wrapper accepts numpy.ndarray and nothing else.
    data = b"\x80\x02cnumpy._core.multiarray\n_reconstruct\n]K\x00\x85C\x01b\x87R."
    with pytest.raises(UnsafePickleError, match="subtype"):
        load_feature_pickle(data)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([np.zeros(3)], "must hold a dict"),
        ({1: np.zeros(3)}, "keys must be str"),
        ({"k": [1.0, 2.0]}, "must be a numpy array"),
        ({"k": np.float32(1.0)}, "scalar"),
    ],
)
def test_wrong_shapes_of_data_are_refused(value, message):
    with pytest.raises(UnsafePickleError, match=message):
        load_feature_pickle(pickle.dumps(value))


def test_feature_pickle_wants_bytes():
    with pytest.raises(TypeError):
        load_feature_pickle("not bytes")  # type: ignore[arg-type]


# ---- torch tensors (what NVlabs network pickles hold) --------------------------------------------


def test_plain_pickled_tensors_and_parameters_rebuild_as_plain_tensors():
    weight = torch.nn.Parameter(torch.arange(12.0).reshape(3, 4))
    view = torch.arange(10.0)[2:8:2]
    data = pickle.dumps({"weight": weight, "view": view, "half": torch.ones(2, dtype=torch.float16)})
    loaded = restricted_loads(data, torch_tensor_globals())
    assert type(loaded["weight"]) is torch.Tensor and not loaded["weight"].requires_grad
    torch.testing.assert_close(loaded["weight"], weight.detach())
    torch.testing.assert_close(loaded["view"], view)
    assert loaded["half"].dtype == torch.float16


def test_tensor_with_backward_hooks_is_refused():
    # torch will not pickle hooks itself, so spell out the rebuild call with a non-empty hook table.
    storage = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage is deprecated, and is what pickles hold
        torch.save(torch.zeros(2).storage(), storage, _use_new_zipfile_serialization=False)
    load_storage = _Payload(torch.storage._load_from_bytes, storage.getvalue())
    hooks = OrderedDict({0: 1})
    data = pickle.dumps(_Payload(torch._utils._rebuild_tensor_v2, load_storage, 0, (2,), (1,), False, hooks))
    with pytest.raises(UnsafePickleError, match="hooks"):
        restricted_loads(data, torch_tensor_globals())


def test_storage_bytes_with_code_inside_are_refused(canary):
    # A "storage" whose nested legacy torch file is a pickle calling os.system: torch's own
    # weights_only unpickler reads it, and refuses.
    evil = pickle.dumps(_Payload(os.system, f"touch {canary}"), protocol=2)
    data = pickle.dumps(_Payload(torch.storage._load_from_bytes, evil))
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(data, torch_tensor_globals())
