"""SFHQ-compatible files: feature pickles numpy 1.x can load, and the landmark coordinate conventions."""

from __future__ import annotations

import io
import pickle
import pickletools

import numpy as np
import pytest

from services.annotator.landmarks110 import rescale_points
from services.common.dataset import features_pickle, numpy1_pickle
from services.common.errors import InvalidInput
from services.common.safe_pickle import load_feature_pickle
from tests.helpers.sfhq_reader import Numpy1Unpickler


def globals_in(data: bytes) -> list[str]:
    """Every module a pickle imports (STACK_GLOBAL takes the two strings pushed before it)."""
    strings: list[str] = []
    modules = []
    for opcode, argument, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(str(argument))
        elif opcode.name == "STACK_GLOBAL":
            modules.append(strings[-2])
        elif opcode.name == "GLOBAL":
            modules.append(str(argument).split(" ")[0])
    return modules


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int64])
def test_feature_pickles_name_only_numpy_1_globals_and_load_back(dtype) -> None:
    features = {"CLIP_ViTL_14@336": np.arange(768).astype(dtype), "CLIP_ViTL_14": np.ones(7, dtype)}
    data = features_pickle(features)
    assert "numpy._core.multiarray" in globals_in(pickle.dumps(np.zeros(2), protocol=4))  # numpy 2 itself
    assert not any(module.startswith("numpy._core") for module in globals_in(data))
    for loaded in (
        Numpy1Unpickler(io.BytesIO(data)).load(),  # numpy 1.x's names only
        load_feature_pickle(data),  # our restricted reader
        pickle.loads(data),  # numpy 2's own unpickler
    ):
        assert list(loaded) == list(features)
        for key, value in features.items():
            assert loaded[key].shape == (1, value.size) and loaded[key].dtype == dtype
            np.testing.assert_array_equal(loaded[key][0], value)


def test_a_plain_numpy_2_pickle_is_refused_by_the_numpy_1_reader() -> None:
    # the check above is not vacuous: what numpy 2 writes on its own names numpy._core
    with pytest.raises(pickle.UnpicklingError, match="numpy._core"):
        Numpy1Unpickler(io.BytesIO(pickle.dumps({"k": np.zeros((1, 3))}, protocol=4))).load()


def test_numpy1_pickle_keeps_non_numpy_values_and_shares_repeated_arrays() -> None:
    shared = np.arange(3.0)
    value = {"a": shared, "b": shared, "n": 3, "s": "text"}
    loaded = Numpy1Unpickler(io.BytesIO(numpy1_pickle(value))).load()
    assert loaded["a"] is loaded["b"] and loaded["n"] == 3 and loaded["s"] == "text"
    with pytest.raises(ValueError, match="protocol"):
        numpy1_pickle(value, protocol=2)


def test_the_two_landmark_conventions_differ_by_a_pixel_and_a_half_at_4x() -> None:
    points = np.array([[0.0, 0.0], [127.5, 64.25], [255.0, 255.0]])
    sfhq = rescale_points(points, (256, 256), (1024, 1024), "sfhq")
    centres = rescale_points(points, (256, 256), (1024, 1024), "pixel_centres")
    np.testing.assert_allclose(sfhq, points * 4)
    np.testing.assert_allclose(centres, (points + 0.5) * 4 - 0.5)
    np.testing.assert_allclose(centres - sfhq, 1.5)
    # pixel centres: the centre of the first pixel maps to the centre of the first 4x4 block (1.5)
    assert centres[0, 0] == pytest.approx(1.5) and sfhq[0, 0] == 0.0
    with pytest.raises(InvalidInput, match="landmark_convention"):
        rescale_points(points, (256, 256), (1024, 1024), "times_four")
