"""Moving tensors between host and accelerator without stalling it, and per-device torch settings.

On CUDA, host copies go through pinned (page-locked) buffers with `non_blocking=True`: the copy
is queued behind the kernels that produce the tensor instead of making the host wait for each of
them, and pinned memory is what lets the copy engine run at full speed. PyTorch caches pinned
blocks, so asking for one per batch costs no allocation after the first. On the CPU every
function here is a plain no-copy or one-copy operation, so the same code runs on both.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["configure_device", "images_to_uint8", "to_device", "to_host"]


def configure_device(device: torch.device | str) -> None:
    """Process-wide settings for a model on `device`: on CUDA, cuDNN picks the fastest convolution
    algorithm for each input shape (worker batches repeat a few shapes)."""
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True


def to_host(tensor: Tensor) -> np.ndarray:
    """A device tensor as a numpy array: CUDA copies into a pinned buffer, queued (`non_blocking`)
    and waited for once; CPU tensors are returned as they are (no copy)."""
    if tensor.device.type != "cuda":
        return tensor.detach().numpy()
    pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    pinned.copy_(tensor.detach(), non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return pinned.numpy()  # keeps `pinned` alive, so the cached block is not reused under it


def to_device(array: np.ndarray | Tensor, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """A host array on `device` (CUDA: staged through pinned memory and copied `non_blocking`)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    else:
        tensor = tensor.to(device)
    return tensor if dtype is None else tensor.to(dtype)


def images_to_uint8(images: Tensor) -> Tensor:
    """`[B, 3, S, S]` in ~[-1, 1] → `[B, S, S, 3]` uint8 on the same device, as NVlabs' generate.py
    does (x·127.5 + 128, clipped): on a GPU, 4x fewer bytes cross the bus than float32."""
    return (images.float().permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
