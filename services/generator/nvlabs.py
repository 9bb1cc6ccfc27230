"""NVlabs stylegan2-ada-pytorch network pickles, read without NVlabs code.

A network pickle (`training_loop.py`) is `{'training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe'}`
whose modules are `persistent_class` objects: each is pickled as
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with `meta = {type: 'class', version,
module_src, class_name, state}`, where `module_src` is the Python source of the defining module
and `state` the module's `__dict__` (`_parameters`, `_buffers`, `_modules`, attributes).
NVlabs' own loader *executes* `module_src`. We never do: our restricted unpickler turns each such
object into a `PersistentObject` record (class name + state), rebuilds tensors through
`torch.load(weights_only=True)`, and refuses every other global.

Then `nvlabs_to_rosinality` renames `G_ema`'s state dict to rosinality's names
(docs/checkpoints.md, "StyleGAN2: NVlabs stylegan2-ada-pytorch pickle"), strictly: every NVlabs entry is consumed, every shape checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from services.common.safe_pickle import (
    UnsafePickleError,
    numpy_array_globals,
    numpy_scalar_globals,
    read_bytes,
    restricted_loads,
    torch_tensor_globals,
)
from services.generator.errors import (
    WEIGHTS_HINT,
    CheckpointFormatError,
    CheckpointLayoutError,
    CheckpointNotFoundError,
)
from services.generator.model import blur_kernel

__all__ = [
    "PersistentObject",
    "NvlabsNetwork",
    "load_nvlabs_state",
    "nvlabs_to_rosinality",
    "name_pairs",
]


@dataclass
class PersistentObject:
    """A pickled NVlabs `persistent_class` instance, as data: its class name and `__dict__`.

    `module_src` is kept only as its length, for provenance; it is never executed.
    """

    class_name: str
    state: dict[str, Any]
    version: int | None = None
    module_src_chars: int = 0

    def child(self, name: str) -> PersistentObject | None:
        child = self.state.get("_modules", {}).get(name)
        return child if isinstance(child, PersistentObject) else None


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    """Stands in for `torch_utils.persistence._reconstruct_persistent_obj`: records, runs nothing."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UnsafePickleError("malformed persistent object in NVlabs pickle (meta is not a class record)")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise UnsafePickleError("malformed persistent object in NVlabs pickle (class_name/state)")
    source = meta.get("module_src")
    return PersistentObject(
        class_name=class_name,
        state=state,
        version=meta.get("version") if isinstance(meta.get("version"), int) else None,
        module_src_chars=len(source) if isinstance(source, str) else 0,
    )


class _EasyDict(dict):
    """Stands in for `dnnlib.util.EasyDict` (a dict with attribute access) in constructor kwargs."""


def _nvlabs_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
    }
    allowed.update(torch_tensor_globals())
    allowed.update(numpy_array_globals())
    allowed.update(numpy_scalar_globals())  # layer attributes such as weight_gain are np.float64
    return allowed


@dataclass
class NvlabsNetwork:
    """One network of a pickle (`G_ema` by default) as a flat NVlabs-named state dict + the attributes we use."""

    state_dict: dict[str, Tensor]
    class_name: str
    conv_clamp: float | None = None
    num_fp16_res: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)


def load_nvlabs_state(path_or_bytes: str | Path | bytes, network: str = "G_ema") -> NvlabsNetwork:
    """Read `network` from an NVlabs stylegan2-ada-pytorch pickle with the restricted unpickler."""
    if isinstance(path_or_bytes, str | Path) and not Path(path_or_bytes).is_file():
        raise CheckpointNotFoundError(f"StyleGAN2 network pickle not found: {path_or_bytes}; {WEIGHTS_HINT}")
    data = read_bytes(path_or_bytes)
    try:
        top = restricted_loads(data, _nvlabs_globals())
    except UnsafePickleError as error:
        if "dnnlib.tflib" in str(error):
            raise CheckpointFormatError(
                "this is a TensorFlow StyleGAN2 pickle; use the rosinality conversion "
                "(stylegan2-ffhq-config-f.pt) or an NVlabs stylegan2-ada-pytorch .pkl"
            ) from error
        raise
    except Exception as error:  # truncated or corrupt data
        raise CheckpointFormatError(f"not a readable NVlabs network pickle: {error}") from error
    if not isinstance(top, dict) or not isinstance(top.get(network), PersistentObject):
        found = sorted(top) if isinstance(top, dict) else type(top).__name__
        raise CheckpointFormatError(f"NVlabs network pickle has no {network!r} network (found {found})")
    root: PersistentObject = top[network]
    attributes = {k: v for k, v in root.state.items() if isinstance(v, int | float | str | bool)}
    if attributes.get("c_dim", 0):
        raise CheckpointFormatError(f"conditional generators (c_dim={attributes['c_dim']}) are not supported")
    if attributes.get("img_channels", 3) != 3:
        raise CheckpointFormatError(
            f"only RGB generators are supported (img_channels={attributes['img_channels']})"
        )
    return NvlabsNetwork(
        state_dict=dict(_flatten(root)),
        class_name=root.class_name,
        conv_clamp=_find_conv_clamp(root),
        num_fp16_res=_count_fp16_blocks(root),
        attributes=attributes,
    )


def _flatten(module: PersistentObject, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """`module.state_dict()` from the recorded `__dict__`: own params, persistent buffers, then children."""
    state = module.state
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            yield prefix + name, _tensor(value, prefix + name)
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in non_persistent:
            yield prefix + name, _tensor(value, prefix + name)
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentObject):
            raise CheckpointFormatError(
                f"submodule {prefix + name!r} is a {type(child).__name__}, not a network module"
            )
        yield from _flatten(child, f"{prefix}{name}.")


def _tensor(value: Any, name: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise CheckpointFormatError(f"{name!r} is a {type(value).__name__}, not a tensor")
    return value


def _synthesis_blocks(root: PersistentObject) -> list[PersistentObject]:
    synthesis = root.child("synthesis")
    if synthesis is None:
        return []
    return [
        block
        for block in (synthesis.state.get("_modules") or {}).values()
        if isinstance(block, PersistentObject)
    ]


def _count_fp16_blocks(root: PersistentObject) -> int:
    """NVlabs' `num_fp16_res`, recovered from the blocks' `use_fp16` flags (the kwarg itself is not stored)."""
    return sum(1 for block in _synthesis_blocks(root) if block.state.get("use_fp16") is True)


def _find_conv_clamp(root: PersistentObject) -> float | None:
    """The `conv_clamp` the synthesis layers were built with (256 for ada-pytorch training, None for TF ports)."""
    for block in _synthesis_blocks(root):
        layer = block.child("conv1")
        if layer is not None and "conv_clamp" in layer.state:
            clamp = layer.state["conv_clamp"]
            return float(clamp) if clamp is not None else None
    return None


# ----------------------------------------------------------------------------- name mapping


def _layer_pairs(nv: str, ros: str, noise: str | None) -> list[tuple[str, str, str]]:
    """(NVlabs name, rosinality name, reshape rule) for one styled conv layer."""
    pairs = [
        (f"{nv}.weight", f"{ros}.conv.weight", "add_dim0"),
        (f"{nv}.affine.weight", f"{ros}.conv.modulation.weight", "same"),
        (f"{nv}.affine.bias", f"{ros}.conv.modulation.bias", "same"),
        (f"{nv}.noise_strength", f"{ros}.noise.weight", "scalar_to_1"),
        (f"{nv}.bias", f"{ros}.activate.bias", "same"),
    ]
    if noise is not None:
        pairs.append((f"{nv}.noise_const", f"noises.{noise}", "add_dims01"))
    return pairs


def _torgb_pairs(nv: str, ros: str) -> list[tuple[str, str, str]]:
    return [
        (f"{nv}.weight", f"{ros}.conv.weight", "add_dim0"),
        (f"{nv}.affine.weight", f"{ros}.conv.modulation.weight", "same"),
        (f"{nv}.affine.bias", f"{ros}.conv.modulation.bias", "same"),
        (f"{nv}.bias", f"{ros}.bias", "rgb_bias"),
    ]


def name_pairs(resolutions: list[int], n_mlp: int) -> list[tuple[str, str, str]]:
    """Every (NVlabs name, rosinality name, reshape rule) of a generator with these resolutions."""
    pairs: list[tuple[str, str, str]] = []
    for i in range(n_mlp):
        pairs += [
            (f"mapping.fc{i}.weight", f"style.{i + 1}.weight", "same"),
            (f"mapping.fc{i}.bias", f"style.{i + 1}.bias", "same"),
        ]
    pairs.append(("synthesis.b4.const", "input.input", "add_dim0"))
    pairs += _layer_pairs("synthesis.b4.conv1", "conv1", "noise_0")
    pairs += _torgb_pairs("synthesis.b4.torgb", "to_rgb1")
    for k, res in enumerate(resolutions[1:]):
        pairs += _layer_pairs(f"synthesis.b{res}.conv0", f"convs.{2 * k}", f"noise_{2 * k + 1}")
        pairs += _layer_pairs(f"synthesis.b{res}.conv1", f"convs.{2 * k + 1}", f"noise_{2 * k + 2}")
        pairs += _torgb_pairs(f"synthesis.b{res}.torgb", f"to_rgbs.{k}")
    return pairs


_RESHAPE = {
    "same": lambda t: t,
    "add_dim0": lambda t: t.unsqueeze(0),  # [O,I,k,k] -> [1,O,I,k,k]; [C,4,4] -> [1,C,4,4]
    "add_dims01": lambda t: t.reshape(1, 1, *t.shape),  # noise_const [r,r] -> [1,1,r,r]
    "scalar_to_1": lambda t: t.reshape(1),  # noise_strength [] -> [1]
    "rgb_bias": lambda t: t.reshape(1, -1, 1, 1),  # [3] -> [1,3,1,1]
}
# The shape each rule accepts (ndim), so a wrong tensor fails with its own name, not later.
_EXPECTED_NDIM = {"add_dim0": None, "add_dims01": 2, "scalar_to_1": 0, "rgb_bias": 1, "same": None}


def nvlabs_to_rosinality(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """Rename an NVlabs `G_ema` state dict to rosinality's layout; returns (state dict, w_avg).

    Strict: an NVlabs key that maps to nothing, or a missing one, raises `CheckpointLayoutError`
    naming it. The `resample_filter` buffers are checked to be the [1,3,3,1] filter and replaced by
    rosinality's `blur.kernel`/`upsample.kernel` (the same filter ×4).
    """
    resolutions = sorted(
        int(m.group(1))
        for key in state_dict
        if (m := re.fullmatch(r"synthesis\.b(\d+)\.resample_filter", key))
    )
    if not resolutions or resolutions[0] != 4:
        raise CheckpointLayoutError("no 'synthesis.b4.*' block: not a StyleGAN2 synthesis network")
    expected_resolutions = [2**i for i in range(2, resolutions[-1].bit_length())]
    if resolutions != expected_resolutions:
        raise CheckpointLayoutError(
            f"synthesis blocks {resolutions} are not the consecutive powers of two {expected_resolutions}"
        )
    n_mlp = sum(1 for key in state_dict if re.fullmatch(r"mapping\.fc\d+\.weight", key))
    if "mapping.w_avg" not in state_dict:
        raise CheckpointLayoutError("missing key 'mapping.w_avg' (the truncation centre)")
    consumed = {"mapping.w_avg"}

    reference_filter = blur_kernel()
    for key, value in state_dict.items():
        if key.endswith(".resample_filter"):
            if tuple(value.shape) != (4, 4) or not torch.allclose(value.float(), reference_filter, atol=1e-6):
                raise CheckpointLayoutError(f"{key!r} is not the StyleGAN2 [1,3,3,1] filter")
            consumed.add(key)

    converted: dict[str, Tensor] = {}
    for nv_name, ros_name, rule in name_pairs(resolutions, n_mlp):
        if nv_name not in state_dict:
            raise CheckpointLayoutError(f"missing key {nv_name!r} (needed for rosinality {ros_name!r})")
        value = state_dict[nv_name]
        ndim = _EXPECTED_NDIM[rule]
        if ndim is not None and value.ndim != ndim:
            raise CheckpointLayoutError(
                f"shape mismatch at {nv_name!r}: expected {ndim} dims, got {list(value.shape)}"
            )
        converted[ros_name] = _RESHAPE[rule](value)
        consumed.add(nv_name)
    unexpected = [key for key in state_dict if key not in consumed]
    if unexpected:
        hint = (
            " (only the 'skip' generator architecture is supported)"
            if any(".skip." in k for k in unexpected)
            else ""
        )
        raise CheckpointLayoutError(f"unexpected key {unexpected[0]!r} ({len(unexpected)} in all){hint}")

    kernel = blur_kernel(scale=4.0)
    for k in range(len(resolutions) - 1):
        converted[f"convs.{2 * k}.conv.blur.kernel"] = kernel.clone()
        converted[f"to_rgbs.{k}.upsample.kernel"] = kernel.clone()
    return _in_rosinality_order(converted, len(resolutions) - 1, n_mlp), state_dict["mapping.w_avg"]


def _in_rosinality_order(converted: dict[str, Tensor], n_blocks: int, n_mlp: int) -> dict[str, Tensor]:
    """Order the keys as rosinality's state dict does (style, input, conv1, to_rgb1, convs, to_rgbs, noises)."""
    order = [f"style.{i}.{p}" for i in range(1, n_mlp + 1) for p in ("weight", "bias")] + ["input.input"]

    def conv(prefix: str, blur: bool) -> list[str]:
        names = [f"{prefix}.conv.weight"] + ([f"{prefix}.conv.blur.kernel"] if blur else [])
        return names + [
            f"{prefix}.conv.modulation.weight",
            f"{prefix}.conv.modulation.bias",
            f"{prefix}.noise.weight",
            f"{prefix}.activate.bias",
        ]

    def rgb(prefix: str, upsample: bool) -> list[str]:
        names = [f"{prefix}.bias"] + ([f"{prefix}.upsample.kernel"] if upsample else [])
        return names + [
            f"{prefix}.conv.weight",
            f"{prefix}.conv.modulation.weight",
            f"{prefix}.conv.modulation.bias",
        ]

    order += conv("conv1", False) + rgb("to_rgb1", False)
    for k in range(n_blocks):
        order += conv(f"convs.{2 * k}", True) + conv(f"convs.{2 * k + 1}", False)
    for k in range(n_blocks):
        order += rgb(f"to_rgbs.{k}", True)
    order += [f"noises.noise_{i}" for i in range(2 * n_blocks + 1)]
    return {name: converted[name] for name in order}
