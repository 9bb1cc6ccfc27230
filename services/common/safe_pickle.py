"""Restricted unpickling: read pickles from other people without running their code.

A pickle is a small program: every `GLOBAL`/`STACK_GLOBAL`/`INST`/`OBJ`/`EXT*` opcode
asks the unpickler to import a name, and `REDUCE`/`NEWOBJ`/`BUILD` then call it. Python's
only gate for all of those is `pickle.Unpickler.find_class`, so `RestrictedUnpickler`
resolves names *only* from an explicit allow-list and raises `UnsafePickleError` (naming
the forbidden global) for everything else. Persistent ids are refused too.

The allow-lists here map names to *our* small wrappers rather than to the real callables when the
real ones accept dangerous arguments (e.g. numpy's `_reconstruct` would build any subtype, a
tensor's backward hooks are arbitrary callables).

Two ready-made readers:

* `load_feature_pickle` — SFHQ's `pretrained_features/<stem>.pickle`
  (`{model_key: ndarray (1, D)}` written by `pickle.dump`): dicts, str keys, numeric numpy
  arrays and dtypes, nothing else.
* `torch_tensor_globals` — the globals a plain `pickle.dump` of torch tensors and
  `nn.Parameter` objects uses (storages are decoded by `torch.load(weights_only=True)`).
  The generator's NVlabs network-pickle reader builds on it.

torch is imported lazily so that services that only read feature pickles do not pay for it.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from services.common.errors import InvalidInput

__all__ = [
    "UnsafePickleError",
    "RestrictedUnpickler",
    "restricted_loads",
    "load_feature_pickle",
    "numpy_array_globals",
    "numpy_scalar_globals",
    "torch_tensor_globals",
]

GlobalName = tuple[str, str]


class UnsafePickleError(InvalidInput, pickle.UnpicklingError):
    """The pickle asked for something outside the allow-list (a global, a persistent id, a type)."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves globals only from `allowed_globals`.

    `allowed_globals` maps `(module, name)` to the object to hand back; it may differ from the
    real one (a validating wrapper, or a harmless record type standing in for a foreign class).
    """

    def __init__(self, file: io.BufferedIOBase | io.BytesIO, allowed_globals: Mapping[GlobalName, Any]):
        super().__init__(file)
        self._allowed_globals = allowed_globals

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed_globals[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"forbidden global {module}.{name} in pickle: only "
                f"{len(self._allowed_globals)} allow-listed names may be loaded"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"forbidden persistent id {pid!r} in pickle")


def restricted_loads(data: bytes, allowed_globals: Mapping[GlobalName, Any]) -> Any:
    """Unpickle `data` resolving globals only from `allowed_globals`."""
    return RestrictedUnpickler(io.BytesIO(data), allowed_globals).load()


# ----------------------------------------------------------------------------- numpy arrays

# Plain numeric kinds only: bool, signed/unsigned int, float, complex. No objects (they would be
# unpickled element by element), no structured/void records, no strings.
_NUMERIC_DTYPE_KINDS = frozenset("biufc")


def _checked_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.kind not in _NUMERIC_DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafePickleError(f"forbidden numpy dtype {dtype!r} in pickle (only plain numeric dtypes)")
    return dtype


def _safe_dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    # numpy pickles a dtype as dtype('<code>', False, True) followed by a BUILD of its byte order.
    # Always a fresh copy: with copy=False that BUILD would rewrite numpy's shared builtin dtype.
    if not isinstance(spec, str):
        raise UnsafePickleError(f"forbidden numpy dtype spec {type(spec).__name__} in pickle")
    return _checked_dtype(np.dtype(spec, align=bool(align), copy=True))


def _safe_reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    # numpy's _reconstruct(ndarray, (0,), b'b') makes an empty array that a later BUILD fills in
    # (ndarray.__setstate__ with shape, dtype and raw bytes). Only exact ndarrays, never subclasses.
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"forbidden array subtype {subtype!r} in pickle")
    # numpy always writes an empty placeholder; refusing other shapes stops huge allocations here.
    if tuple(shape) != (0,) or dtype_code not in (b"b", "b"):
        raise UnsafePickleError("malformed array placeholder in pickle")
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _safe_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    # Protocol-5 form of an array: numpy._core.numeric._frombuffer(buffer, dtype, shape, order).
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError("forbidden dtype argument in pickled array")
    _checked_dtype(dtype)
    if order not in ("C", "F"):
        raise UnsafePickleError(f"forbidden array order {order!r} in pickle")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _safe_codecs_encode(text: Any, encoding: Any = "latin1") -> bytes:
    # Protocol <= 2 stores bytes as _codecs.encode(str, 'latin1'); nothing else is needed.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("forbidden use of _codecs.encode in pickle")
    return text.encode("latin1")


def numpy_array_globals() -> dict[GlobalName, Callable[..., Any]]:
    """Allow-list entries for numeric numpy arrays pickled by numpy 1.x or 2.x, protocols 2–5."""
    return {
        ("numpy", "ndarray"): np.ndarray,  # only as the subtype argument of _reconstruct
        ("numpy", "dtype"): _safe_dtype,
        ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
        ("_codecs", "encode"): _safe_codecs_encode,
    }


def _safe_scalar(dtype: Any, data: Any = None) -> Any:
    # numpy._core.multiarray.scalar(dtype, raw bytes): one numeric value, e.g. a np.float64 attribute.
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        raise UnsafePickleError("forbidden numpy scalar arguments in pickle")
    _checked_dtype(dtype)
    if len(data) != dtype.itemsize:
        raise UnsafePickleError("malformed numpy scalar in pickle")
    return np.frombuffer(data, dtype=dtype)[0]


def numpy_scalar_globals() -> dict[GlobalName, Callable[..., Any]]:
    """Allow-list entries for numeric numpy scalars (`np.float64(...)` attributes in network pickles)."""
    return {
        ("numpy", "dtype"): _safe_dtype,
        ("numpy.core.multiarray", "scalar"): _safe_scalar,
        ("numpy._core.multiarray", "scalar"): _safe_scalar,
        ("_codecs", "encode"): _safe_codecs_encode,
    }


def load_feature_pickle(data: bytes) -> dict[str, np.ndarray]:
    """Read an SFHQ `pretrained_features/*.pickle`: `{model_key: ndarray}` and nothing else.

    Raises `UnsafePickleError` naming the forbidden global for anything but dicts, str keys
    and numeric numpy arrays/dtypes; a well-formed pickle of the wrong shape (a list, int keys, a
    non-array value) raises it too.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"load_feature_pickle expects bytes, got {type(data).__name__}")
    result = restricted_loads(bytes(data), numpy_array_globals())
    if not isinstance(result, dict):
        raise UnsafePickleError(f"feature pickle must hold a dict, found {type(result).__name__}")
    features: dict[str, np.ndarray] = {}
    for key, value in result.items():
        if not isinstance(key, str):
            raise UnsafePickleError(f"feature pickle keys must be str, found {type(key).__name__} {key!r}")
        if type(value) is not np.ndarray:
            raise UnsafePickleError(f"feature {key!r} must be a numpy array, found {type(value).__name__}")
        _checked_dtype(value.dtype)
        features[key] = value
    return features


# ----------------------------------------------------------------------------- torch tensors


def _safe_load_storage(data: Any) -> Any:
    """`torch.storage._load_from_bytes`: a storage written by legacy `torch.save`.

    The bytes are a whole nested torch file; torch's own restricted `weights_only` unpickler reads it.
    """
    import torch

    if not isinstance(data, bytes):
        raise UnsafePickleError("forbidden argument to torch.storage._load_from_bytes in pickle")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "TypedStorage is deprecated"
        try:
            storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as error:
            raise UnsafePickleError(
                f"pickled storage refused by torch's weights_only reader: {error}"
            ) from None
    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
        raise UnsafePickleError(f"pickled storage decoded to {type(storage).__name__}, not a storage")
    return storage


def _no_hooks(hooks: Any) -> None:
    # Backward hooks are arbitrary callables; a weights file has none.
    if hooks is not None and (not isinstance(hooks, dict) or len(hooks) > 0):
        raise UnsafePickleError("forbidden tensor backward hooks in pickle")


def _safe_rebuild_tensor(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> Any:
    """`torch._utils._rebuild_tensor_v2` without hooks or grad state: a plain CPU tensor view."""
    import torch

    _no_hooks(backward_hooks)
    if isinstance(storage, torch.TypedStorage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "TypedStorage is deprecated"
            dtype, untyped = storage.dtype, storage.untyped()
    elif isinstance(storage, torch.UntypedStorage):
        dtype, untyped = torch.uint8, storage
    else:
        raise UnsafePickleError(f"tensor rebuilt from a {type(storage).__name__}, not a storage")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)):
        raise UnsafePickleError("malformed tensor arguments in pickle")
    # set_ checks that offset/size/stride stay inside the storage.
    return torch.empty((0,), dtype=dtype).set_(untyped, storage_offset, size, stride)


def _safe_rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    """`torch._utils._rebuild_parameter`: we only want the values, so return the plain tensor."""
    import torch

    _no_hooks(backward_hooks)
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("nn.Parameter rebuilt from a non-tensor in pickle")
    return data


def torch_tensor_globals() -> dict[GlobalName, Callable[..., Any]]:
    """Allow-list entries for torch tensors and parameters pickled with plain `pickle.dump`."""
    return {
        ("torch._utils", "_rebuild_tensor_v2"): _safe_rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _safe_rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _safe_load_storage,
        ("collections", "OrderedDict"): OrderedDict,
    }


def read_bytes(path_or_bytes: str | Path | bytes) -> bytes:
    """The pickle's bytes from a path or from bytes already in memory."""
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        return bytes(path_or_bytes)
    return Path(path_or_bytes).read_bytes()
