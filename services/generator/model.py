"""StyleGAN2 generator (mapping + synthesis) in plain PyTorch: the network alone.

Parameter and buffer names are exactly those of the rosinality/stylegan2-pytorch `g_ema` state
dict (docs/checkpoints.md, "StyleGAN2: rosinality layout"), so a rosinality checkpoint loads with
nothing renamed. Reading checkpoint files (rosinality, e4e's decoder, NVlabs pickles) is
`services.generator.checkpoint`.

The math, per image (`w` one 512-d style vector per layer):

* mapping: `x = z·rsqrt(mean(z²)+1e-8)`, then `n_mlp` × `x = lrelu(x·(W·lr/√in)ᵀ + b·lr, 0.2)·√2`
  (`lr` = 0.01).
* style of a layer: `s = w·(A/√512)ᵀ + b_A` (one scale per input channel).
* modulated conv: `w'[o,i] = W[o,i]/√(in·k²)·s[i]`; with demodulation `w' /= √(Σ_{i,k,k} w'² + 1e-8)`.
  The upsampling conv is `conv_transpose2d(stride 2)` followed by a blur (`upfirdn2d` with
  `[1,3,3,1]ᵀ[1,3,3,1]/64·4`, pad (1, 1)).
* styled conv: `lrelu(conv + noise_strength·noise + bias, 0.2)·√2` (then clamped to ±`conv_clamp`
  when the checkpoint asks for it, as NVlabs-trained pickles do).
* to_rgb: modulated 1×1 conv without demodulation, `+ bias`, plus the previous image upsampled with
  `upfirdn2d(up=2, pad=(2, 1))`. The output is the last image, `[B, 3, S, S]` nominally in [-1, 1].
* layer `l` of a W+ code drives: 0 → the 4×4 conv, 1 → the 4×4 to_rgb; block `k` (resolution
  `2^(k+3)`) uses `2k+1` (up conv), `2k+2` (conv) and `2k+3` (to_rgb), which it shares with the
  next block's up conv. `n_latent = 2·log2(size) − 2` (18 at 1024).

Two ways to run a modulated conv give the same numbers up to float rounding: `grouped` (the
default) builds one weight per sample and runs a grouped conv — the literal formula, and bit-identical
to rosinality's float32 output; `batched` scales the activations by `s`, runs one ordinary conv for
the whole batch and multiplies the output by the demodulation coefficients (NVlabs' "non-fused" path;
~1e-6 relative difference, and the one that can use channels_last). On CUDA the top resolutions can
run in fp16 with activations clamped, as NVlabs does (`Generator.set_runtime`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from services.generator.errors import InvalidLatentError

__all__ = [
    "BLUR_TAPS",
    "FP32_GROUPED",
    "Generator",
    "GeneratorConfig",
    "LayerRun",
    "NoiseMode",
    "default_channels",
    "upfirdn2d",
    "z_from_seed",
]

NoiseMode = Literal["const", "random", "none"]
NOISE_MODES: tuple[str, ...] = ("const", "random", "none")
ModconvMode = Literal["batched", "grouped"]

# The 1-D binomial filter StyleGAN2 blurs with; the 2-D kernel is its outer product, normalised.
BLUR_TAPS: tuple[float, ...] = (1.0, 3.0, 3.0, 1.0)
# Clamp used for fp16 layers when the checkpoint has none (NVlabs trains its fp16 layers with 256).
FP16_CONV_CLAMP = 256.0
# How many random z a rosinality training checkpoint (no stored latent_avg) averages for w_avg.
MEAN_LATENT_SAMPLES = 4096


# ----------------------------------------------------------------------------- config


def default_channels(size: int, channel_multiplier: int = 2, max_channels: int = 512) -> dict[int, int]:
    """rosinality's channel table for resolutions 4..size, capped at `max_channels` (tiny test configs)."""
    table = {
        4: 512,
        8: 512,
        16: 512,
        32: 512,
        64: 256 * channel_multiplier,
        128: 128 * channel_multiplier,
        256: 64 * channel_multiplier,
        512: 32 * channel_multiplier,
        1024: 16 * channel_multiplier,
        2048: 8 * channel_multiplier,
    }
    return {res: min(table[res], max_channels) for res in _resolutions(size)}


def _resolutions(size: int) -> list[int]:
    if size < 4 or size & (size - 1) or size > 2048:
        raise ValueError(f"generator size must be a power of two in [4, 2048], got {size}")
    return [2**i for i in range(2, int(math.log2(size)) + 1)]


@dataclass(frozen=True)
class GeneratorConfig:
    """Shape of a StyleGAN2 generator. `GeneratorConfig(1024)` is FFHQ config-f.

    `channels` maps each resolution 4..size to its feature channels (rosinality's table with
    channel multiplier 2 when omitted). `conv_clamp` clamps activations to ±value as NVlabs-trained
    pickles do (`None` for rosinality and TF-converted weights).
    """

    size: int
    style_dim: int = 512
    n_mlp: int = 8
    channels: Mapping[int, int] = field(default_factory=dict)
    lr_mlp: float = 0.01
    conv_clamp: float | None = None

    def __post_init__(self) -> None:
        resolutions = _resolutions(self.size)
        channels = dict(self.channels) if self.channels else default_channels(self.size)
        missing = [res for res in resolutions if res not in channels]
        if missing:
            raise ValueError(f"GeneratorConfig.channels has no entry for resolution(s) {missing}")
        object.__setattr__(self, "channels", {res: int(channels[res]) for res in resolutions})
        if self.style_dim < 1 or self.n_mlp < 1:
            raise ValueError("style_dim and n_mlp must be positive")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        return 2 * self.log_size - 2

    @property
    def num_noises(self) -> int:
        return 2 * self.log_size - 3

    def noise_resolution(self, index: int) -> int:
        """Side of noise buffer `noise_<index>`: 4, 8, 8, 16, 16, …, size, size."""
        return 2 ** ((index + 5) // 2)


# ----------------------------------------------------------------------------- primitive ops


def blur_kernel(scale: float = 1.0, device: torch.device | None = None) -> Tensor:
    """The normalised 4×4 binomial kernel `outer(1,3,3,1)/64`, times `scale`."""
    taps = torch.tensor(BLUR_TAPS, device=device)
    kernel = torch.outer(taps, taps)
    return kernel / kernel.sum() * scale


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample (zero insertion), pad, FIR-filter (true convolution), downsample — per channel.

    `pad` = (before, after), applied to both axes; negative values crop. Plain PyTorch ops.
    """
    batch, channels, height, width = x.shape
    if up > 1:
        # Each sample followed by up-1 zeros, along both axes.
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    # conv2d correlates, so flip the kernel to convolve.
    weight = kernel.flip([0, 1]).to(dtype=x.dtype, device=x.device)
    weight = weight[None, None].expand(channels, 1, *kernel.shape)
    x = F.conv2d(x, weight, groups=channels)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def _lrelu_gain(x: Tensor, bias: Tensor, clamp: float | None) -> Tensor:
    """`lrelu(x + bias, 0.2)·√2` (rosinality's fused_leaky_relu), optionally clamped (NVlabs bias_act)."""
    x = F.leaky_relu(x + bias.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2))), 0.2) * math.sqrt(2.0)
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


@dataclass(frozen=True)
class LayerRun:
    """How one synthesis layer runs in this call: dtype, activation clamp, modconv form, memory format.

    The generator picks it per resolution (`Generator.set_runtime`); tests build one to run a layer alone.
    """

    dtype: torch.dtype
    clamp: float | None
    modconv: ModconvMode
    channels_last: bool


FP32_GROUPED = LayerRun(dtype=torch.float32, clamp=None, modconv="grouped", channels_last=False)


# ----------------------------------------------------------------------------- modules


class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: weights stored ×1/lr_mul, scaled by lr_mul/√in at run time."""

    def __init__(
        self, in_dim: int, out_dim: int, lr_mul: float = 1.0, bias_init: float = 0.0, activate: bool = False
    ):
        super().__init__()
        # Values come from a checkpoint or Generator.reset_parameters; allocation only here.
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(out_dim))
        self.bias_init = bias_init
        self.weight_gain = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        if self.activate:
            return _lrelu_gain(F.linear(x, self.weight * self.weight_gain), self.bias * self.lr_mul, None)
        return F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)


class Blur(nn.Module):
    """Blur after the transposed conv. `kernel` is a checkpoint buffer: outer(1,3,3,1)/64·4."""

    def __init__(self, pad: tuple[int, int]):
        super().__init__()
        self.register_buffer("kernel", blur_kernel(scale=4.0))
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        # The stored kernel includes the ×4 gain that makes up for the zeros a stride-2 transposed
        # conv inserts; filter with it as stored.
        return upfirdn2d(x, self.kernel, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Conv whose weights are scaled per sample and input channel by the layer's style (optionally demodulated)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        # Registration order = rosinality's state-dict order: weight, blur.kernel, modulation.*.
        if upsample:
            self.blur = Blur(pad=(1, 1))
        self.weight = nn.Parameter(torch.empty(1, out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)

    def forward(self, x: Tensor, w: Tensor, run: LayerRun) -> Tensor:
        styles = self.modulation(w)  # [B, in] in float32
        weight = self.weight[0] * self.weight_gain  # [out, in, k, k]
        if run.modconv == "grouped":
            return self._grouped(x, styles, weight, run)
        return self._batched(x, styles, weight, run)

    def _grouped(self, x: Tensor, styles: Tensor, weight: Tensor, run: LayerRun) -> Tensor:
        """The literal formula: one modulated (and demodulated) weight per sample, one grouped conv."""
        batch, _, height, width = x.shape
        per_sample = weight[None] * styles[:, None, :, None, None]  # [B, out, in, k, k]
        if self.demodulate:
            per_sample = per_sample * torch.rsqrt(per_sample.square().sum([2, 3, 4], keepdim=True) + 1e-8)
        per_sample = per_sample.to(run.dtype)
        x = x.reshape(1, batch * self.in_channels, height, width)
        k = self.kernel_size
        if self.upsample:
            # conv_transpose2d weights are [in, out, k, k] per group.
            transposed = per_sample.transpose(1, 2).reshape(batch * self.in_channels, self.out_channels, k, k)
            out = F.conv_transpose2d(x, transposed, stride=2, groups=batch)
            out = out.reshape(batch, self.out_channels, *out.shape[2:])
            return self.blur(out)
        out = F.conv2d(
            x,
            per_sample.reshape(batch * self.out_channels, self.in_channels, k, k),
            padding=k // 2,
            groups=batch,
        )
        return out.reshape(batch, self.out_channels, height, width)

    def _batched(self, x: Tensor, styles: Tensor, weight: Tensor, run: LayerRun) -> Tensor:
        """Same math, restructured: scale inputs by s, one shared-weight conv, scale outputs by the demod factor."""
        if self.demodulate:
            # d[b, o] = rsqrt(Σ_i s[b,i]² Σ_kk W'[o,i]² + 1e-8), computed in float32.
            demod = torch.rsqrt(styles.square() @ weight.square().sum([2, 3]).t() + 1e-8)
            if run.dtype == torch.float16:
                # Keep x·s inside fp16 range; the common per-sample factor cancels in demodulation.
                scale = styles.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)
                styles, demod = styles / scale, demod * scale
        memory_format = torch.channels_last if run.channels_last else torch.contiguous_format
        x = x * styles.to(run.dtype)[:, :, None, None]
        shared = weight.to(run.dtype).contiguous(memory_format=memory_format)
        if self.upsample:
            out = F.conv_transpose2d(x, shared.transpose(0, 1), stride=2)
            out = self.blur(out)
        else:
            out = F.conv2d(x, shared, padding=self.kernel_size // 2)
        if self.demodulate:
            out = out * demod.to(run.dtype)[:, :, None, None]
        return out


class NoiseInjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1))

    def forward(self, x: Tensor, noise: Tensor | None) -> Tensor:
        if noise is None:
            return x
        return x + self.weight.to(x.dtype) * noise.to(x.dtype)


class BiasActivation(nn.Module):
    """rosinality's FusedLeakyReLU: `lrelu(x + bias, 0.2)·√2`; the bias is the checkpoint's `activate.bias`."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.empty(channels))

    def forward(self, x: Tensor, clamp: float | None) -> Tensor:
        return _lrelu_gain(x, self.bias, clamp)


class StyledConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = BiasActivation(out_channels)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor | None, run: LayerRun) -> Tensor:
        x = self.conv(x, w, run)
        x = self.noise(x, noise)
        return self.activate(x, run.clamp)


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True):
        super().__init__()
        # Registration order = rosinality's state-dict order: bias, upsample.kernel, conv.*.
        self.bias = nn.Parameter(torch.empty(1, 3, 1, 1))
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None, run: LayerRun) -> Tensor:
        out = self.conv(x, w, run) + self.bias.to(run.dtype)
        if run.clamp is not None:
            out = out.clamp(-run.clamp, run.clamp)
        out = out.float().contiguous()  # the image accumulates in float32, as in NVlabs
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class Upsample(nn.Module):
    """×2 upsampling of the skip image: `upfirdn2d(up=2, pad=(2, 1))` with kernel outer(1,3,3,1)/64·4."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernel", blur_kernel(scale=4.0))

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=2, pad=(2, 1))


class ConstantInput(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.input = nn.Parameter(torch.empty(1, channels, 4, 4))


class _NoiseBuffers(nn.Module):
    """Holds `noise_0 … noise_{L-1}`: the fixed noise used by `noise_mode='const'`."""


# ----------------------------------------------------------------------------- generator


class Generator(nn.Module):
    """StyleGAN2 generator. Build it with `load_generator` (or `generator_from_state_dict`).

    Constructing one directly gives random weights (`random_init=True`, rosinality's initialisation),
    meant for tests and tools; `random_init=False` only allocates, for a checkpoint to fill.
    """

    latent_avg: Tensor

    def __init__(self, config: GeneratorConfig, *, random_init: bool = True, seed: int = 0):
        super().__init__()
        self.config = config
        ch = config.channels
        self.style = nn.Sequential(
            PixelNorm(),
            *[
                EqualLinear(config.style_dim, config.style_dim, lr_mul=config.lr_mlp, activate=True)
                for _ in range(config.n_mlp)
            ],
        )
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], config.style_dim)
        self.to_rgb1 = ToRGB(ch[4], config.style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = _NoiseBuffers()
        for res in _resolutions(config.size)[1:]:
            self.convs.append(StyledConv(ch[res // 2], ch[res], config.style_dim, upsample=True))
            self.convs.append(StyledConv(ch[res], ch[res], config.style_dim))
            self.to_rgbs.append(ToRGB(ch[res], config.style_dim))
        for index in range(config.num_noises):
            side = config.noise_resolution(index)
            self.noises.register_buffer(f"noise_{index}", torch.empty(1, 1, side, side))
        # The truncation centre; not part of the rosinality state dict (it travels beside it).
        self.register_buffer("latent_avg", torch.zeros(config.style_dim), persistent=False)
        # Run-time choices (set_runtime); they never change the float32 results beyond rounding.
        # "grouped" reproduces rosinality's float32 numbers bit for bit; "batched" differs by float rounding.
        self.modconv: ModconvMode = "grouped"
        self.fp16_resolutions = 0
        self.channels_last = False
        self.source: dict[str, Any] = {}  # provenance filled in by the loaders: path, format
        if random_init:
            self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """rosinality's initialisation, seeded: N(0, 1) weights (mapping ×1/lr_mul), style biases 1,
        other biases and noise strengths 0, N(0, 1) constant input and noise buffers."""
        gen = torch.Generator().manual_seed(seed)

        def normal(tensor: Tensor, scale: float = 1.0) -> None:
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * scale)

        for module in self.modules():
            if isinstance(module, EqualLinear):
                normal(module.weight, 1.0 / module.lr_mul)
                module.bias.fill_(module.bias_init)
            elif isinstance(module, ModulatedConv2d):
                normal(module.weight)
            elif isinstance(module, NoiseInjection):
                module.weight.zero_()
            elif isinstance(module, BiasActivation | ToRGB):
                module.bias.zero_()
            elif isinstance(module, ConstantInput):
                normal(module.input)
        for buffer in self.noises.buffers():
            normal(buffer)
        self.latent_avg.zero_()

    # -- properties other code relies on

    @property
    def size(self) -> int:
        return self.config.size

    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    @property
    def style_dim(self) -> int:
        return self.config.style_dim

    @property
    def device(self) -> torch.device:
        return self.input.input.device

    def set_runtime(
        self,
        *,
        fp16_resolutions: int | None = None,
        channels_last: bool | None = None,
        modconv: ModconvMode | None = None,
    ) -> Generator:
        """Speed settings. `fp16_resolutions`: how many of the top resolutions run in fp16 (NVlabs uses 4;
        more than the generator has means all but the 4×4 block; meant for CUDA — the service enables it
        only there). `channels_last` applies to the `batched` modconv."""
        if fp16_resolutions is not None:
            if fp16_resolutions < 0:
                raise ValueError(f"fp16_resolutions must be >= 0, got {fp16_resolutions}")
            self.fp16_resolutions = int(fp16_resolutions)
        if channels_last is not None:
            self.channels_last = bool(channels_last)
        if modconv is not None:
            if modconv not in ("batched", "grouped"):
                raise ValueError(f"modconv must be 'batched' or 'grouped', got {modconv!r}")
            self.modconv = modconv
        return self

    # -- mapping and truncation

    def mapping(self, z: Tensor) -> Tensor:
        """z `[B, style_dim]` → w `[B, style_dim]` (no truncation)."""
        z = self._check_tensor(z, "z")
        if z.ndim != 2 or z.shape[1] != self.style_dim:
            raise InvalidLatentError(f"z must have shape [B, {self.style_dim}], got {list(z.shape)}")
        return self.style(z.to(self.device))

    @torch.no_grad()
    def mean_latent(self, n: int = MEAN_LATENT_SAMPLES, seed: int = 0) -> Tensor:
        """Mean of `mapping(z)` over `n` seeded normal z: w_avg for checkpoints that do not store it."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.style_dim, generator=gen).to(self.device)
        return self.style(z).mean(0)

    def truncate(
        self,
        w: Tensor,
        psi: float | Sequence[float] | Tensor,
        cutoff: int | None = None,
        center: Tensor | None = None,
    ) -> Tensor:
        """`center + psi·(w − center)` for any finite psi (psi > 1 extrapolates; psi = 0 gives the centre).

        `w` is W `[B, 512]` or W+ `[B, n_latent, 512]`. `psi` is a number or one value per layer
        (`[n_latent]`). `cutoff` applies it to the first `cutoff` layers only (NVlabs'
        truncation_cutoff). `center` defaults to `latent_avg`; it may be `[512]`, `[B, 512]` or
        a W+ code (the encoder-truncation trick moves toward an e4e code instead of w_avg). A per-layer
        psi, a cutoff or a W+ centre turn a W input into W+.
        """
        w = self._check_latents(w, "w")
        center = self.latent_avg if center is None else self._check_tensor(center, "center").to(w)
        psi_t = self._check_tensor(torch.as_tensor(psi, dtype=torch.float32), "psi").to(w)
        per_layer = psi_t.ndim > 0
        if per_layer and psi_t.shape != (self.n_latent,):
            raise InvalidLatentError(
                f"per-layer psi must have {self.n_latent} values, got {list(psi_t.shape)}"
            )
        if cutoff is not None and not 0 <= cutoff <= self.n_latent:
            raise InvalidLatentError(f"truncation cutoff must be in [0, {self.n_latent}], got {cutoff}")
        if center.shape[-1] != self.style_dim or center.ndim > 3:
            raise InvalidLatentError(
                f"truncation center must end in {self.style_dim} values, got {list(center.shape)}"
            )
        if not (per_layer or cutoff is not None or center.ndim == 3):
            return center + psi_t * (w - center)
        # Per-layer form: everything as [B, n_latent, 512], psi as [1, n_latent, 1].
        w = self._to_w_plus(w)
        if center.ndim == 2:  # one centre per sample
            center = center.unsqueeze(1)
        layer_psi = psi_t.reshape(1, -1, 1) if per_layer else psi_t.expand(1, self.n_latent, 1)
        if cutoff is not None:
            untouched = (torch.arange(self.n_latent, device=w.device) >= cutoff).reshape(1, -1, 1)
            layer_psi = torch.where(untouched, torch.ones_like(layer_psi), layer_psi)
        return center + layer_psi * (w - center)

    # -- synthesis

    def synthesize(
        self,
        latents: Tensor,
        truncation: float | Sequence[float] | Tensor = 1.0,
        truncation_latent: Tensor | None = None,
        noise_mode: NoiseMode = "const",
        *,
        truncation_cutoff: int | None = None,
        noise_seed: int | None = None,
        max_resolution: int | None = None,
    ) -> Tensor:
        """W `[B, 512]` or W+ `[B, n_latent, 512]` → images `[B, 3, size, size]` (float32, ~[-1, 1]).

        `truncation` is psi (any value; see `truncate`), centred on `truncation_latent` or
        `latent_avg`. `noise_mode`: `const` uses the checkpoint's noise buffers (deterministic),
        `random` draws N(0, 1) noise (from `noise_seed` when given), `none` adds none.
        `max_resolution` stops early and returns the intermediate RGB image of that resolution (the
        skip output StyleGAN2 builds at every scale): a cheap low-resolution render for optimisation loops.
        """
        latents = self._check_latents(latents, "latents")
        if noise_mode not in NOISE_MODES:
            raise InvalidLatentError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if max_resolution is not None and max_resolution not in _resolutions(self.size):
            raise InvalidLatentError(
                f"max_resolution must be a power of two in [4, {self.size}], got {max_resolution}"
            )
        latents = latents.to(self.device, torch.float32)
        psi_is_identity = not isinstance(truncation, Tensor | Sequence) and float(truncation) == 1.0
        if not psi_is_identity or truncation_cutoff is not None:
            latents = self.truncate(latents, truncation, cutoff=truncation_cutoff, center=truncation_latent)
        return self._synthesis(self._to_w_plus(latents), noise_mode, noise_seed, max_resolution or self.size)

    def forward(
        self,
        z: Tensor,
        truncation: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: NoiseMode = "const",
    ) -> Tensor:
        """z → images: mapping, truncation toward `latent_avg`, synthesis."""
        return self.synthesize(
            self.mapping(z), truncation, None, noise_mode, truncation_cutoff=truncation_cutoff
        )

    def _synthesis(
        self, w_plus: Tensor, noise_mode: str, noise_seed: int | None, max_resolution: int
    ) -> Tensor:
        batch = w_plus.shape[0]
        noises = self._noises(noise_mode, batch, noise_seed)
        run = self._layer_run(4)
        x = self.input.input.expand(batch, -1, -1, -1).to(run.dtype)
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.conv1(x, w_plus[:, 0], noises[0], run)
        skip = self.to_rgb1(x, w_plus[:, 1], None, run)
        layer = 1
        for block, to_rgb in enumerate(self.to_rgbs):
            resolution = 2 ** (block + 3)
            if resolution > max_resolution:
                break
            run = self._layer_run(resolution)
            x = x.to(run.dtype)
            x = self.convs[2 * block](x, w_plus[:, layer], noises[2 * block + 1], run)
            x = self.convs[2 * block + 1](x, w_plus[:, layer + 1], noises[2 * block + 2], run)
            skip = to_rgb(x, w_plus[:, layer + 2], skip, run)
            layer += 2
        return skip

    def _layer_run(self, resolution: int) -> LayerRun:
        # As NVlabs: the top `fp16_resolutions` blocks, never the 4×4 one.
        fp16_from = max(2 ** (self.config.log_size + 1 - self.fp16_resolutions), 8)
        fp16 = self.fp16_resolutions > 0 and resolution >= fp16_from
        clamp = self.config.conv_clamp
        if fp16 and clamp is None:
            clamp = FP16_CONV_CLAMP
        return LayerRun(
            dtype=torch.float16 if fp16 else torch.float32,
            clamp=clamp,
            modconv=self.modconv,
            channels_last=self.channels_last and self.modconv == "batched",
        )

    def _noises(self, noise_mode: str, batch: int, noise_seed: int | None) -> list[Tensor | None]:
        count = self.config.num_noises
        if noise_mode == "none":
            return [None] * count
        if noise_mode == "const":
            return [getattr(self.noises, f"noise_{i}") for i in range(count)]
        # Drawn on the CPU so that a seed gives the same noise on every device.
        gen = torch.Generator().manual_seed(noise_seed) if noise_seed is not None else None
        out: list[Tensor | None] = []
        for i in range(count):
            side = self.config.noise_resolution(i)
            out.append(torch.randn(batch, 1, side, side, generator=gen).to(self.device))
        return out

    # -- input checks

    def _to_w_plus(self, latents: Tensor) -> Tensor:
        if latents.ndim == 2:
            return latents.unsqueeze(1).expand(-1, self.n_latent, -1)
        return latents

    def _check_tensor(self, value: Any, what: str) -> Tensor:
        if not isinstance(value, Tensor):
            raise InvalidLatentError(f"{what} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise InvalidLatentError(f"{what} must be floating point, got {value.dtype}")
        if not bool(torch.isfinite(value).all()):
            raise InvalidLatentError(f"{what} contains NaN or infinite values")
        return value

    def _check_latents(self, latents: Any, what: str) -> Tensor:
        latents = self._check_tensor(latents, what)
        w_shape = latents.ndim == 2 and latents.shape[1] == self.style_dim
        w_plus_shape = latents.ndim == 3 and tuple(latents.shape[1:]) == (self.n_latent, self.style_dim)
        if not (w_shape or w_plus_shape) or latents.shape[0] == 0:
            raise InvalidLatentError(
                f"{what} must be W [B, {self.style_dim}] or W+ [B, {self.n_latent}, {self.style_dim}] "
                f"with B >= 1, got {list(latents.shape)}"
            )
        return latents


def z_from_seed(seed: int, style_dim: int = 512) -> Tensor:
    """z `[style_dim]` for a seed in [0, 2**64).

    Seeds below 2**32 give exactly the z of NVlabs' `generate.py --seeds`
    (`np.random.RandomState(seed).randn`), so seed 85 here is seed 85 there. Larger seeds (the
    gateway derives 63-bit ones) seed the same generator with their two 32-bit words.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= int(seed) < 2**64:
        raise InvalidLatentError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    seed = int(seed)
    state = np.random.RandomState(seed if seed < 2**32 else [seed & 0xFFFFFFFF, seed >> 32])
    return torch.from_numpy(state.randn(style_dim)).float()
