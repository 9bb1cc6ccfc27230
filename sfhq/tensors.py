"""Tensor and latent helpers shared by the client and the services (numpy only)."""

from __future__ import annotations

import numpy as np

from sfhq.v1 import common_pb2

_DTYPES = {"": np.float32, "float32": np.float32, "float16": np.float16}
# A W+ code is 18x512; leave generous room for batches but refuse absurd shapes before allocating.
MAX_ELEMENTS = 64 * 1024 * 1024


def numpy_to_tensor(array: np.ndarray, dtype: str = "float32") -> common_pb2.Tensor:
    """Pack an array as a little-endian Tensor message."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"unsupported tensor dtype {dtype!r}")
    arr = np.ascontiguousarray(array, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
    return common_pb2.Tensor(data=arr.tobytes(), shape=list(arr.shape), dtype=dtype)


def tensor_to_numpy(
    msg: common_pb2.Tensor,
    *,
    name: str = "tensor",
    expect_shape: tuple | None = None,
    allow_non_finite: bool = False,
) -> np.ndarray:
    """Unpack a Tensor message, validating dtype, shape and size; raises ValueError naming the problem.

    `expect_shape` may hold `None` for a free dimension, e.g. `(None, 512)`.
    """
    if msg.dtype not in _DTYPES:
        raise ValueError(f"{name}: unsupported dtype {msg.dtype!r} (use float32 or float16)")
    shape = tuple(int(d) for d in msg.shape)
    if not shape:
        raise ValueError(f"{name}: shape is empty")
    if any(d <= 0 for d in shape):
        raise ValueError(f"{name}: shape {list(shape)} has a non-positive dimension")
    count = 1
    for d in shape:
        count *= d
        if count > MAX_ELEMENTS:
            raise ValueError(f"{name}: shape {list(shape)} is too large")
    itemsize = np.dtype(_DTYPES[msg.dtype]).itemsize
    if len(msg.data) != count * itemsize:
        raise ValueError(
            f"{name}: {len(msg.data)} bytes do not match shape {list(shape)} of {msg.dtype or 'float32'}"
        )
    if expect_shape is not None and (
        len(shape) != len(expect_shape)
        or any(e is not None and e != d for e, d in zip(expect_shape, shape, strict=True))
    ):
        want = ["*" if e is None else e for e in expect_shape]
        raise ValueError(f"{name}: shape {list(shape)} is not {want}")
    arr = np.frombuffer(msg.data, dtype=np.dtype(_DTYPES[msg.dtype]).newbyteorder("<")).reshape(shape)
    arr = arr.astype(np.float32)
    if not allow_non_finite and not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinity")
    return arr
