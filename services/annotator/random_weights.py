"""Random checkpoints in the official layouts of the annotator's models (tests, `--random-weights` demos).

They exercise the loaders, shapes and numerics without the real weights; a parser with random
weights predicts meaningless maps, which the 110-point code must survive (see landmarks110.py).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from services.annotator.parsing import NUM_CLASSES, BiSeNet


def _uninitialised(factory) -> nn.Module:
    """Build a module without its default initialisation (randomize_ overwrites every value)."""
    with torch.device("meta"):
        model = factory()
    return model.to_empty(device="cpu")


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter and BatchNorm statistic with seeded random values of a sensible scale
    (fan-in scaled conv weights, BN scales near 1) so activations neither vanish nor explode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(
                    torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5
                )
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.01)
            elif isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.75 + 0.5 * torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.num_batches_tracked.fill_(80000)
    return model


def random_bisenet_state_dict(
    seed: int = 0, with_num_batches_tracked: bool = True, n_classes: int = NUM_CLASSES
) -> OrderedDict[str, torch.Tensor]:
    model = randomize_(_uninitialised(lambda: BiSeNet(n_classes)), seed)
    with torch.no_grad():  # keep logits in the range of a trained model's (tens, not hundreds)
        for head in (model.conv_out, model.conv_out16, model.conv_out32):
            head.conv_out.weight.mul_(0.1)
    state = model.state_dict()
    if not with_num_batches_tracked:
        state = OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    return OrderedDict((k, v.clone()) for k, v in state.items())


def write_random_bisenet_checkpoint(
    path: str | Path, seed: int = 0, with_num_batches_tracked: bool = True
) -> Path:
    """Write a random BiSeNet checkpoint in the `79999_iter.pth` layout (a plain state dict)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A plain dict, as a file saved by torch.save(net.module.state_dict()) loads back.
    torch.save(dict(random_bisenet_state_dict(seed, with_num_batches_tracked)), path)
    return path


def write_random_fan_checkpoint(path: str | Path, seed: int = 0, num_modules: int = 1) -> Path:
    """Write a random FAN checkpoint in face-alignment's layout (`2DFAN4-11f355bf06.pth.tar` has
    `num_modules=4`; 1 keeps tests small)."""
    from services.annotator.fan import FAN

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = randomize_(_uninitialised(lambda: FAN(num_modules)), seed)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, path)
    return path
