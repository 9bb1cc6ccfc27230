"""Test-only: an NVlabs stylegan2-ada-pytorch network pickle with the real structure.

Every network object is pickled as `torch_utils.persistence._reconstruct_persistent_obj(meta)` with
`meta = {type, version, module_src, class_name, state}`, constructor kwargs holding
`dnnlib.util.EasyDict`, layer attributes as numpy floats, tensors and `nn.Parameter` objects pickled
by torch. No NVlabs code is used: a tiny stand-in `torch_utils`/`dnnlib` is put in `sys.modules`
only while pickling, so `pickle` can name those globals. With the same keyword arguments it holds
the same weights as `services.generator.random_weights.write_rosinality_checkpoint`, so the two
files must load to identical generators.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from services.generator.random_weights import random_latent_avg, random_rosinality_state_dict, resample_kernel

_LR_MLP = 0.01
# NVlabs torch_utils.persistence._version when ada-pytorch was released.
_PERSISTENCE_VERSION = 6
_MODULE_SRC = "# stand-in for training/networks.py: written by sfhq tests, never executed\n"


@contextlib.contextmanager
def _stand_in_nvlabs_modules() -> Iterator[types.SimpleNamespace]:
    """Put minimal `torch_utils.persistence` and `dnnlib.util` modules in `sys.modules` while pickling.

    `pickle` writes a function or class by module + name and checks that importing that name gives
    the same object back, so the stand-ins must be importable for the duration of `pickle.dump`.
    """
    names = ["torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"]
    clashes = [name for name in names if name in sys.modules]
    if clashes:
        raise RuntimeError(f"cannot write a stand-in NVlabs pickle while {clashes} are imported")

    torch_utils, persistence = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    dnnlib, util = types.ModuleType("dnnlib"), types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta: dict[str, Any]) -> Any:
        raise RuntimeError("stand-in module: reading NVlabs pickles goes through services.generator.nvlabs")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj  # type: ignore[attr-defined]
    easy_dict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    util.EasyDict = easy_dict  # type: ignore[attr-defined]
    torch_utils.persistence = persistence  # type: ignore[attr-defined]
    dnnlib.util = util  # type: ignore[attr-defined]
    sys.modules.update(dict(zip(names, [torch_utils, persistence, dnnlib, util], strict=True)))
    try:
        yield types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=easy_dict)
    finally:
        for name in names:
            sys.modules.pop(name, None)


class _PersistentRecord:
    """Pickles the way an NVlabs `persistent_class` instance does."""

    def __init__(self, reconstruct: Any, class_name: str, state: dict[str, Any]):
        self.reconstruct, self.class_name, self.state = reconstruct, class_name, state

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        meta = dict(
            type="class",
            version=_PERSISTENCE_VERSION,
            module_src=_MODULE_SRC,
            class_name=self.class_name,
            state=self.state,
        )
        return self.reconstruct, (meta,)


class _NetworkBuilder:
    """Builds the module tree of an NVlabs Generator as persistent records (their `__dict__` state)."""

    def __init__(self, fake: types.SimpleNamespace):
        self.fake = fake

    def module(
        self,
        class_name: str,
        params: dict[str, Tensor],
        buffers: dict[str, Tensor],
        children: dict[str, Any],
        attrs: dict[str, Any],
        init_kwargs: dict[str, Any],
    ) -> _PersistentRecord:
        state = {
            "training": False,
            "_parameters": OrderedDict(
                (k, torch.nn.Parameter(v.clone(), requires_grad=False)) for k, v in params.items()
            ),
            "_buffers": OrderedDict((k, v.clone()) for k, v in buffers.items()),
            "_non_persistent_buffers_set": set(),
            "_backward_hooks": OrderedDict(),
            "_forward_hooks": OrderedDict(),
            "_forward_pre_hooks": OrderedDict(),
            "_state_dict_hooks": OrderedDict(),
            "_load_state_dict_pre_hooks": OrderedDict(),
            "_modules": OrderedDict(children),
            **attrs,
            "_init_args": (),
            "_init_kwargs": init_kwargs,
        }
        return _PersistentRecord(self.fake.reconstruct, class_name, state)

    def fully_connected(
        self, weight: Tensor, bias: Tensor, activation: str, lr_multiplier: float, bias_init: float = 0.0
    ) -> _PersistentRecord:
        out_features, in_features = weight.shape
        return self.module(
            "FullyConnectedLayer",
            {"weight": weight, "bias": bias},
            {},
            {},
            {
                "activation": activation,
                "weight_gain": lr_multiplier / np.sqrt(in_features),
                "bias_gain": lr_multiplier,
            },
            {
                "in_features": in_features,
                "out_features": out_features,
                "activation": activation,
                "lr_multiplier": lr_multiplier,
                "bias_init": bias_init,
            },
        )

    def synthesis_layer(
        self,
        ros: dict[str, Tensor],
        prefix: str,
        noise: Tensor,
        resolution: int,
        up: int,
        conv_clamp: float | None,
    ) -> _PersistentRecord:
        weight = ros[f"{prefix}.conv.weight"][0]
        affine = self.fully_connected(
            ros[f"{prefix}.conv.modulation.weight"], ros[f"{prefix}.conv.modulation.bias"], "linear", 1, 1
        )
        return self.module(
            "SynthesisLayer",
            {
                "weight": weight,
                "noise_strength": ros[f"{prefix}.noise.weight"].reshape(()),
                "bias": ros[f"{prefix}.activate.bias"],
            },
            {"resample_filter": resample_kernel(1.0), "noise_const": noise.reshape(resolution, resolution)},
            {"affine": affine},
            {
                "resolution": resolution,
                "up": up,
                "use_noise": True,
                "activation": "lrelu",
                "conv_clamp": conv_clamp,
                "padding": 1,
                "act_gain": np.sqrt(2),
            },
            {
                "in_channels": weight.shape[1],
                "out_channels": weight.shape[0],
                "w_dim": affine.state["_parameters"]["weight"].shape[1],
                "resolution": resolution,
                "up": up,
                "conv_clamp": conv_clamp,
            },
        )

    def to_rgb(self, ros: dict[str, Tensor], prefix: str, conv_clamp: float | None) -> _PersistentRecord:
        weight = ros[f"{prefix}.conv.weight"][0]
        affine = self.fully_connected(
            ros[f"{prefix}.conv.modulation.weight"], ros[f"{prefix}.conv.modulation.bias"], "linear", 1, 1
        )
        return self.module(
            "ToRGBLayer",
            {"weight": weight, "bias": ros[f"{prefix}.bias"].reshape(3)},
            {},
            {"affine": affine},
            {"conv_clamp": conv_clamp, "weight_gain": 1 / np.sqrt(weight.shape[1])},
            {
                "in_channels": weight.shape[1],
                "out_channels": 3,
                "w_dim": affine.state["_parameters"]["weight"].shape[1],
                "conv_clamp": conv_clamp,
            },
        )


def write_nvlabs_pickle(
    path: str | Path,
    *,
    conv_clamp: float | None = None,
    num_fp16_res: int = 0,
    include_discriminator: bool = True,
    **kw: Any,
) -> Path:
    """Write a stylegan2-ada-pytorch network pickle (`{'training_set_kwargs', 'G', 'D', 'G_ema', 'augment_pipe'}`)
    holding the same random weights as `write_rosinality_checkpoint` with the same `kw`.

    `conv_clamp`/`num_fp16_res` are recorded as ada-pytorch's `train.py` does (256 / 4); the values
    are what the loader reads back. `G` is a perturbed copy, so loading it instead of `G_ema` shows.
    """
    size = kw.get("size", 64)
    style_dim, n_mlp, seed = kw.get("style_dim", 512), kw.get("n_mlp", 8), kw.get("seed", 0)
    channel_base = 16384 * kw.get("channel_multiplier", 2)
    channel_max = kw.get("max_channels", 512)
    ros = random_rosinality_state_dict(**kw)
    w_avg = random_latent_avg(style_dim, seed)
    log_size = int(math.log2(size))
    fp16_resolution = max(2 ** (log_size + 1 - num_fp16_res), 8)

    with _stand_in_nvlabs_modules() as fake:
        build = _NetworkBuilder(fake)

        def generator(weights: dict[str, Tensor]) -> _PersistentRecord:
            blocks: dict[str, _PersistentRecord] = {}
            for index, res in enumerate(2**i for i in range(2, log_size + 1)):
                block_params: dict[str, Tensor] = {}
                children: dict[str, _PersistentRecord] = {}
                if res == 4:
                    block_params["const"] = weights["input.input"][0]
                    children["conv1"] = build.synthesis_layer(
                        weights, "conv1", weights["noises.noise_0"], 4, 1, conv_clamp
                    )
                    children["torgb"] = build.to_rgb(weights, "to_rgb1", conv_clamp)
                else:
                    k = index - 1
                    children["conv0"] = build.synthesis_layer(
                        weights, f"convs.{2 * k}", weights[f"noises.noise_{2 * k + 1}"], res, 2, conv_clamp
                    )
                    children["conv1"] = build.synthesis_layer(
                        weights,
                        f"convs.{2 * k + 1}",
                        weights[f"noises.noise_{2 * k + 2}"],
                        res,
                        1,
                        conv_clamp,
                    )
                    children["torgb"] = build.to_rgb(weights, f"to_rgbs.{k}", conv_clamp)
                out_channels = children["conv1"].state["_parameters"]["weight"].shape[0]
                in_channels = 0 if res == 4 else children["conv0"].state["_parameters"]["weight"].shape[1]
                use_fp16 = res >= fp16_resolution
                blocks[f"b{res}"] = build.module(
                    "SynthesisBlock",
                    block_params,
                    {"resample_filter": resample_kernel(1.0)},
                    children,
                    {
                        "in_channels": in_channels,
                        "w_dim": style_dim,
                        "resolution": res,
                        "img_channels": 3,
                        "is_last": res == size,
                        "architecture": "skip",
                        "use_fp16": use_fp16,
                        "channels_last": False,
                        "num_conv": 1 if res == 4 else 2,
                        "num_torgb": 1,
                    },
                    {
                        "in_channels": in_channels,
                        "out_channels": out_channels,
                        "w_dim": style_dim,
                        "resolution": res,
                        "img_channels": 3,
                        "is_last": res == size,
                        "use_fp16": use_fp16,
                        "conv_clamp": conv_clamp,
                    },
                )
            n_latent = 2 * log_size - 2
            synthesis_kwargs = fake.EasyDict(
                channel_base=channel_base,
                channel_max=channel_max,
                num_fp16_res=num_fp16_res,
                conv_clamp=conv_clamp,
            )
            synthesis = build.module(
                "SynthesisNetwork",
                {},
                {},
                blocks,
                {
                    "w_dim": style_dim,
                    "img_resolution": size,
                    "img_resolution_log2": log_size,
                    "img_channels": 3,
                    "block_resolutions": [2**i for i in range(2, log_size + 1)],
                    "num_ws": n_latent,
                },
                {"w_dim": style_dim, "img_resolution": size, "img_channels": 3, **synthesis_kwargs},
            )
            fcs = {
                f"fc{i}": build.fully_connected(
                    weights[f"style.{i + 1}.weight"], weights[f"style.{i + 1}.bias"], "lrelu", _LR_MLP
                )
                for i in range(n_mlp)
            }
            mapping = build.module(
                "MappingNetwork",
                {},
                {"w_avg": w_avg},
                fcs,
                {
                    "z_dim": style_dim,
                    "c_dim": 0,
                    "w_dim": style_dim,
                    "num_ws": n_latent,
                    "num_layers": n_mlp,
                    "w_avg_beta": 0.995,
                },
                {"z_dim": style_dim, "c_dim": 0, "w_dim": style_dim, "num_ws": n_latent, "num_layers": n_mlp},
            )
            init_kwargs = {
                "z_dim": style_dim,
                "c_dim": 0,
                "w_dim": style_dim,
                "img_resolution": size,
                "img_channels": 3,
                "mapping_kwargs": fake.EasyDict(num_layers=n_mlp),
                "synthesis_kwargs": synthesis_kwargs,
            }
            return build.module(
                "Generator",
                {},
                {},
                {"synthesis": synthesis, "mapping": mapping},
                {
                    "z_dim": style_dim,
                    "c_dim": 0,
                    "w_dim": style_dim,
                    "img_resolution": size,
                    "img_channels": 3,
                    "num_ws": n_latent,
                },
                init_kwargs,
            )

        perturbed = {k: v + 0.5 if not k.endswith("kernel") else v for k, v in ros.items()}
        snapshot: dict[str, Any] = {
            "training_set_kwargs": {
                "class_name": "training.dataset.ImageFolderDataset",
                "path": "ffhq.zip",
                "resolution": size,
                "use_labels": False,
            },
            "G": generator(perturbed),
            "D": _discriminator_stub(build, seed) if include_discriminator else None,
            "G_ema": generator(ros),
            "augment_pipe": None,
        }
        path = Path(path)
        with path.open("wb") as handle:
            pickle.dump(snapshot, handle, protocol=3)  # Python 3.7's default, which ada-pytorch ran on
    return path


def _discriminator_stub(build: _NetworkBuilder, seed: int) -> _PersistentRecord:
    """A small stand-in discriminator (one conv layer): the loader must skip whatever D holds."""
    gen = torch.Generator().manual_seed(seed + 7)
    conv = build.module(
        "Conv2dLayer",
        {"weight": torch.randn(8, 3, 1, 1, generator=gen), "bias": torch.zeros(8)},
        {"resample_filter": resample_kernel(1.0)},
        {},
        {
            "activation": "lrelu",
            "up": 1,
            "down": 1,
            "conv_clamp": None,
            "padding": 0,
            "weight_gain": 1 / np.sqrt(3),
            "act_gain": np.sqrt(2),
        },
        {"in_channels": 3, "out_channels": 8, "kernel_size": 1, "activation": "lrelu"},
    )
    return build.module(
        "Discriminator",
        {},
        {},
        {"b4": conv},
        {"c_dim": 0, "img_resolution": 4, "img_channels": 3},
        {"c_dim": 0},
    )
