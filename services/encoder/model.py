"""encoder4editing (e4e): an FFHQ-aligned face -> a W+ code for the StyleGAN2 FFHQ generator.

Our own implementation of the e4e architecture (Tov et al. 2021): an IR-SE-50 backbone whose
three feature maps feed a small feature pyramid, and one "map2style" head per W+ row. Head 0
predicts a base w; every other head predicts a *delta* added to that base (that is what keeps
e4e codes close to W and therefore editable and realistic).

The module names below are chosen so that `state_dict()` keys equal the official
`e4e_ffhq_encode.pt` keys (after stripping `encoder.`): the official file loads with
`strict=True`. Smaller variants (fewer IR-SE units per stage, fewer style heads, smaller input)
keep the same naming and structural rules; their config is inferred from the keys.

This module is pure PyTorch: it knows nothing of gRPC, Redis or the weights registry.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import zipfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from services.common.accel import configure_device, to_device
from services.common.errors import FailedPrecondition, InvalidInput, ServiceError

log = logging.getLogger(__name__)

# Channel width of the four IR-SE stages. Fixed by the architecture: the lateral 1x1 convs map
# stage 2/3 features to 512 and the style heads read 512 channels.
STAGE_CHANNELS: tuple[int, int, int, int] = (64, 128, 256, 512)
# IR-SE-50, the only depth e4e was released with (get_blocks(50) in the original code).
IRSE50_UNITS: tuple[int, int, int, int] = (3, 4, 14, 3)
STYLE_DIM = 512
# Heads [0, 3) read the coarsest map, [3, 7) the middle pyramid level, [7, n) the finest one.
COARSE_END = 3
MIDDLE_END = 7
SE_REDUCTION = 16
OFFICIAL_INPUT_SIZE = 256

# Aligned input images: reject what cannot be a face crop before spending a forward pass on it.
MIN_FACE_SIDE = 64
MAX_ASPECT_RATIO = 1.5

CHECKPOINT_NAME = "e4e-ffhq-encode"


class EncoderError(ServiceError):
    """Base class of the encoder's own errors."""


class EncoderInputError(EncoderError, InvalidInput):
    """The input image/tensor cannot be encoded (wrong shape, not face-sized, unreadable)."""


class CheckpointError(EncoderError, FailedPrecondition, ValueError):
    """A checkpoint file is not in the official e4e layout."""


class CheckpointMissing(EncoderError, FailedPrecondition, FileNotFoundError):
    """No checkpoint at the given path. The message says how to get one."""

    def __init__(self, path: str | Path, name: str = CHECKPOINT_NAME) -> None:
        super().__init__(
            f"e4e checkpoint not found at {path}. Run `sfhq weights download {name}` "
            f"or register a local copy with `sfhq weights add {name} <path>`."
        )
        self.path = Path(path)
        self.name = name


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of an Encoder4Editing network.

    n_styles: W+ rows = 2*log2(generator size) - 2 (18 for the 1024 FFHQ generator).
    units_per_stage: IR-SE units in each of the 4 stages ((3, 4, 14, 3) = IR-SE-50).
    input_size: square input resolution; the map2style heads' depth follows the feature-map sizes
        (input/16, input/8, input/4), so it is part of the weight layout. Official: 256.
    """

    n_styles: int = 18
    units_per_stage: tuple[int, int, int, int] = IRSE50_UNITS
    input_size: int = OFFICIAL_INPUT_SIZE

    def __post_init__(self) -> None:
        if self.n_styles < 1:
            raise ValueError(f"n_styles must be >= 1, got {self.n_styles}")
        if len(self.units_per_stage) != 4 or min(self.units_per_stage) < 1:
            raise ValueError(f"units_per_stage needs 4 positive counts, got {self.units_per_stage}")
        spatial = self.input_size // 16
        # Each head halves its map down to 1x1 with stride-2 convs, so the map sizes must be powers of two.
        if self.input_size % 16 or spatial < 2 or spatial & (spatial - 1):
            raise ValueError(
                f"input_size must be 16 * 2^k with k >= 1 (32, 64, 128, 256, ...), got {self.input_size}"
            )

    @classmethod
    def for_stylegan_size(cls, stylegan_size: int, **kwargs: Any) -> EncoderConfig:
        return cls(n_styles=n_latent_for_size(stylegan_size), **kwargs)

    @property
    def stylegan_size(self) -> int:
        return 2 ** ((self.n_styles + 2) // 2)

    @property
    def num_layers(self) -> int:
        # Each IR unit has two 3x3 convs; + the input conv and the (absent) output layer = "50".
        return 2 * sum(self.units_per_stage) + 2

    @property
    def tap_indices(self) -> tuple[int, int, int]:
        """Body indices after which c1, c2, c3 are taken: the ends of stages 2, 3 and 4.

        For IR-SE-50 this gives (6, 20, 23), the indices hard-coded in the original code.
        """
        ends = np.cumsum(self.units_per_stage) - 1
        return int(ends[1]), int(ends[2]), int(ends[3])

    def head_spatial(self, index: int) -> int:
        """Side of the feature map that style head `index` reads."""
        if index < COARSE_END:
            return self.input_size // 16
        if index < MIDDLE_END:
            return self.input_size // 8
        return self.input_size // 4

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor]) -> EncoderConfig:
        """Infer the config from Encoder4Editing keys/shapes (no `encoder.` prefix)."""
        body_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.", k))})
        style_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"styles\.(\d+)\.", k))})
        if not body_ids or body_ids != list(range(len(body_ids))):
            raise CheckpointError(f"encoder body units must be numbered 0..N-1, found {body_ids[:5]}...")
        if not style_ids or style_ids != list(range(len(style_ids))):
            raise CheckpointError("encoder style heads must be numbered 0..N-1")

        # A stage starts where a unit changes the channel count (plus unit 0: 64 -> 64).
        stage_starts = [0]
        expected_in = STAGE_CHANNELS[0]
        for i in body_ids:
            key = f"body.{i}.res_layer.1.weight"
            if key not in state:
                raise CheckpointError(f"missing {key}: not an IR-SE body")
            depth, in_channels = (int(s) for s in state[key].shape[:2])
            if in_channels != expected_in:
                raise CheckpointError(
                    f"{key} reads {in_channels} channels, previous unit gives {expected_in}"
                )
            if depth != in_channels:
                stage_starts.append(i)
            expected_in = depth
        units = np.diff([*stage_starts, len(body_ids)]).tolist()
        if len(units) != 4:
            raise CheckpointError(f"expected 4 IR-SE stages (64/128/256/512 channels), found {len(units)}")

        convs = {int(m.group(1)) for k in state if (m := re.match(r"styles\.0\.convs\.(\d+)\.weight", k))}
        # Head 0 halves an (input/16)-sized map down to 1x1: its conv count gives the input size.
        input_size = 16 * 2 ** len(convs)
        return cls(n_styles=len(style_ids), units_per_stage=tuple(units), input_size=input_size)  # type: ignore[arg-type]


def n_latent_for_size(stylegan_size: int) -> int:
    log_size = int(math.log2(stylegan_size))
    if stylegan_size < 4 or 2**log_size != stylegan_size:
        raise ValueError(f"stylegan_size must be a power of two >= 4, got {stylegan_size}")
    return 2 * log_size - 2


# --------------------------------------------------------------------------------------------
# Network (module names = official state-dict keys)
# --------------------------------------------------------------------------------------------


class SqueezeExcite(nn.Module):
    """Channel attention: global average -> bottleneck -> sigmoid gate (keys fc1, fc2; no biases)."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate = F.adaptive_avg_pool2d(x, 1)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))
        return x * gate


class IRSEUnit(nn.Module):
    """Improved-residual unit with squeeze-excite. The stride sits on the second 3x3 conv.

    There is no activation after the sum: that is the IR ("improved residual") design.
    """

    def __init__(self, in_channels: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_channels == depth:
            # A 1x1 max-pool is plain subsampling; it has no weights, so no keys.
            self.shortcut_layer: nn.Module = nn.MaxPool2d(kernel_size=1, stride=stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, kernel_size=3, stride=1, padding=1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(depth),
            SqueezeExcite(depth),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class EqualLinear(nn.Module):
    """Linear layer with the StyleGAN "equalized learning rate" scale applied at run time."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class MapToStyle(nn.Module):
    """A map2style head: stride-2 convs shrink a spatial x spatial map to 1x1, then a linear layer.

    Keys: `convs.{0,2,4,...}` (LeakyReLU modules sit at the odd indices) and `linear`.
    """

    def __init__(self, spatial: int, channels: int = STYLE_DIM) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(channels, channels, lr_mul=1.0)
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.convs(x).reshape(-1, self.channels))


def upsample_add(coarse: Tensor, lateral: Tensor) -> Tensor:
    """Feature-pyramid merge: bilinear-upsample `coarse` (align_corners=True) to `lateral`'s size and add."""
    return F.interpolate(coarse, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


class Encoder4Editing(nn.Module):
    """e4e encoder: [B,3,S,S] in [-1,1] -> [B, n_styles, 512] (without latent_avg)."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EncoderConfig()
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, STAGE_CHANNELS[0], kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(STAGE_CHANNELS[0]),
            nn.PReLU(STAGE_CHANNELS[0]),
        )
        units: list[nn.Module] = []
        in_channels = STAGE_CHANNELS[0]
        for depth, count in zip(STAGE_CHANNELS, config.units_per_stage, strict=True):
            # Every stage (the first one too) halves the resolution in its first unit.
            units.append(IRSEUnit(in_channels, depth, stride=2))
            units += [IRSEUnit(depth, depth, stride=1) for _ in range(count - 1)]
            in_channels = depth
        self.body = nn.Sequential(*units)
        self.styles = nn.ModuleList(MapToStyle(config.head_spatial(i)) for i in range(config.n_styles))
        self.latlayer1 = nn.Conv2d(STAGE_CHANNELS[2], STYLE_DIM, kernel_size=1)
        self.latlayer2 = nn.Conv2d(STAGE_CHANNELS[1], STYLE_DIM, kernel_size=1)

    @property
    def n_styles(self) -> int:
        return self.config.n_styles

    def backbone_features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """IR-SE features (c1, c2, c3) at input/4, input/8, input/16 with 128/256/512 channels."""
        tap1, tap2, tap3 = self.config.tap_indices
        x = self.input_layer(x)
        taps: dict[int, Tensor] = {}
        for index, unit in enumerate(self.body):
            x = unit(x)
            if index in (tap1, tap2, tap3):
                taps[index] = x
        return taps[tap1], taps[tap2], taps[tap3]

    def forward(self, x: Tensor) -> Tensor:
        c1, c2, c3 = self.backbone_features(x)
        base = self.styles[0](c3)
        rows = [base]
        features = c3
        for index in range(1, self.n_styles):
            # The pyramid levels are built only when a head first needs them (as in the original).
            if index == COARSE_END:
                features = p2 = upsample_add(c3, self.latlayer1(c2))
            elif index == MIDDLE_END:
                features = upsample_add(p2, self.latlayer2(c1))
            rows.append(base + self.styles[index](features))
        return torch.stack(rows, dim=1)


# --------------------------------------------------------------------------------------------
# Preprocessing (torchvision-free equivalent of Resize((S,S)) + ToTensor + Normalize(0.5, 0.5))
# --------------------------------------------------------------------------------------------

ImageLike = Image.Image | np.ndarray


def check_face_sized(width: int, height: int) -> None:
    """Raise EncoderInputError unless (width, height) can be an aligned face crop."""
    if min(width, height) < MIN_FACE_SIDE:
        raise EncoderInputError(
            f"image is {width}x{height}: not face-sized (an aligned face needs at least {MIN_FACE_SIDE} px per side)"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise EncoderInputError(
            f"image is {width}x{height}: not face-sized (an FFHQ-aligned face crop is square, "
            f"aspect ratio above {MAX_ASPECT_RATIO} refused)"
        )


def to_rgb_pil(image: ImageLike) -> Image.Image:
    """PIL image or HxW / HxWx{1,3,4} uint8 array -> RGB PIL image."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise EncoderInputError(f"numpy images must be uint8 (0..255), got {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim == 2:
            return Image.fromarray(image, mode="L").convert("RGB")
        if image.ndim == 3 and image.shape[2] in (3, 4):
            return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
        raise EncoderInputError(f"numpy images must be HxW or HxWx{{1,3,4}}, got shape {image.shape}")
    raise EncoderInputError(f"expected a PIL image or a numpy array, got {type(image).__name__}")


def preprocess(images: ImageLike | Sequence[ImageLike], size: int = OFFICIAL_INPUT_SIZE) -> Tensor:
    """Aligned face images -> float32 [B,3,size,size] in [-1,1], exactly as e4e's inference transform.

    Resize is Pillow's bilinear filter (antialiased when shrinking), which is what torchvision's
    Resize does on PIL images; then /255 and (x - 0.5) / 0.5.
    """
    if isinstance(images, Image.Image | np.ndarray):
        images = [images]
    if len(images) == 0:
        raise EncoderInputError("no images to encode")
    batch = []
    for image in images:
        rgb = to_rgb_pil(image)
        check_face_sized(*rgb.size)
        resized = rgb.resize((size, size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)
        batch.append(pixels.to(torch.float32).div(255))
    return torch.stack(batch).sub(0.5).div(0.5)


# --------------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path, *, mmap: bool = True) -> dict[str, Any]:
    """torch.load(weights_only=True) of an e4e file. mmap keeps the 1.2 GB file out of RAM
    until tensors are touched (the decoder part is then never read when it is not needed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointMissing(path)
    # mmap needs the zip format; files saved by torch < 1.6 are the legacy format.
    use_mmap = mmap and zipfile.is_zipfile(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except Exception as error:  # a corrupt file or a pickle that weights_only refuses
        raise CheckpointError(f"cannot read e4e checkpoint {path}: {error}") from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{path} is not an e4e checkpoint: expected a dict with a 'state_dict'")
    return checkpoint


def split_state_dict(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """pSp state dict -> (encoder part, decoder part), prefixes stripped. Any other key is an error."""
    encoder, decoder, stray = {}, {}, []
    for key, value in state.items():
        if key.startswith("encoder."):
            encoder[key[len("encoder.") :]] = value
        elif key.startswith("decoder."):
            decoder[key[len("decoder.") :]] = value
        else:
            stray.append(key)
    if stray:
        raise CheckpointError(f"unexpected keys outside encoder.*/decoder.*: {stray[:5]}")
    if not encoder:
        raise CheckpointError("checkpoint has no encoder.* keys")
    return encoder, decoder


def encoder_from_state_dict(
    state: Mapping[str, Tensor], config: EncoderConfig | None = None
) -> Encoder4Editing:
    """Build Encoder4Editing with the config inferred from the keys and load it strictly."""
    config = config or EncoderConfig.from_state_dict(state)
    with torch.device("meta"):
        net = Encoder4Editing(config)
    # assign=True adopts the checkpoint's tensors instead of copying into freshly allocated ones.
    result = net.load_state_dict(dict(state), strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"encoder weights do not match the e4e layout for {config}: "
            f"missing {result.missing_keys[:8]} ({len(result.missing_keys)}), "
            f"unexpected {result.unexpected_keys[:8]} ({len(result.unexpected_keys)})"
        )
    for name, tensor in net.state_dict().items():
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            raise CheckpointError(f"encoder.{name} is {tensor.dtype}; the e4e layout stores float32")
    return net.eval().requires_grad_(False)


def latent_avg_from_checkpoint(checkpoint: Mapping[str, Any], n_styles: int) -> Tensor | None:
    """The generator's average w as [n_styles, 512] (stored [n_styles,512], or [512] by some tools)."""
    latent_avg = checkpoint.get("latent_avg")
    if latent_avg is None:
        return None
    if not isinstance(latent_avg, Tensor):
        raise CheckpointError(f"latent_avg must be a tensor, got {type(latent_avg).__name__}")
    latent_avg = latent_avg.to(torch.float32)
    if latent_avg.shape == (STYLE_DIM,):
        latent_avg = latent_avg.expand(n_styles, STYLE_DIM)
    if latent_avg.shape != (n_styles, STYLE_DIM):
        raise CheckpointError(
            f"latent_avg has shape {tuple(latent_avg.shape)}, expected ({n_styles}, {STYLE_DIM})"
        )
    return latent_avg.clone()


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Encoder:
    """A loaded e4e model: preprocessing, batching, latent_avg handling and the bundled decoder."""

    def __init__(
        self,
        net: Encoder4Editing,
        latent_avg: Tensor | None,
        *,
        opts: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        fp16: bool = True,
        decoder: nn.Module | None = None,
        decoder_loader: Callable[[], nn.Module] | None = None,
        checkpoint_path: Path | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.latent_avg = None if latent_avg is None else latent_avg.to(self.device)
        self.opts = dict(opts or {})
        # Half precision only pays (and is only safe enough) on CUDA tensor cores.
        self.fp16 = fp16 and self.device.type == "cuda"
        self.checkpoint_path = checkpoint_path
        self._decoder_loader = decoder_loader
        self._decoder = None if decoder is None else decoder.to(self.device).eval()
        self._decoder_lock = threading.Lock()
        # NHWC is the faster layout for oneDNN convolutions on CPU and for tensor-core (fp16)
        # convolutions on CUDA; it does not change the math.
        self.net.to(memory_format=torch.channels_last)
        configure_device(self.device)

    @property
    def config(self) -> EncoderConfig:
        return self.net.config

    @property
    def n_latent(self) -> int:
        return self.net.n_styles

    @property
    def input_size(self) -> int:
        return self.net.config.input_size

    @property
    def is_random(self) -> bool:
        """True for checkpoints written by services.encoder.random_weights (demo/tests only)."""
        return bool(self.opts.get("sfhq_random_weights", False))

    def encode(self, x: Tensor, add_latent_avg: bool = True) -> Tensor:
        """[B,3,S,S] in [-1,1] (S = input_size, 256 for the official model) -> float32 [B, n_latent, 512]."""
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3:
            raise EncoderInputError(
                f"expected a [B,3,H,W] tensor, got {getattr(x, 'shape', type(x).__name__)}"
            )
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise EncoderInputError(
                f"expected {self.input_size}x{self.input_size} inputs, got {tuple(x.shape[-2:])}; use preprocess()"
            )
        if x.shape[0] == 0:
            raise EncoderInputError("empty batch")
        x = to_device(x, self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.fp16 else nullcontext()
        # no_grad rather than inference_mode: the codes are often the start of a latent optimisation,
        # and inference tensors cannot join autograd later.
        with torch.no_grad(), autocast:
            codes = self.net(x).float()
        if add_latent_avg:
            if self.latent_avg is None:
                raise CheckpointError("this checkpoint has no latent_avg; encode with add_latent_avg=False")
            codes = codes + self.latent_avg
        return codes

    def encode_images(
        self,
        images: ImageLike | Sequence[ImageLike],
        add_latent_avg: bool = True,
        batch_size: int = 8,
        as_numpy: bool = True,
    ) -> np.ndarray | Tensor:
        """Aligned PIL/numpy faces -> [B, n_latent, 512] float32 (numpy by default), in input order."""
        if isinstance(images, Image.Image | np.ndarray):
            images = [images]
        if len(images) == 0:
            raise EncoderInputError("no images to encode")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = preprocess(images[start : start + batch_size], size=self.input_size)
            chunks.append(self.encode(batch, add_latent_avg=add_latent_avg).cpu())
        codes = torch.cat(chunks)
        return codes.numpy() if as_numpy else codes

    @property
    def has_decoder(self) -> bool:
        return self._decoder is not None or self._decoder_loader is not None

    @property
    def decoder(self) -> nn.Module:
        """The checkpoint's StyleGAN2 generator, built on first use (it is ~130 MB we rarely need)."""
        with self._decoder_lock:
            if self._decoder is None:
                if self._decoder_loader is None:
                    raise CheckpointError("this encoder was loaded without its decoder")
                self._decoder = self._decoder_loader().to(self.device).eval()
            return self._decoder


def build_decoder(decoder_state: Mapping[str, Tensor], latent_avg: Tensor | None, n_latent: int) -> nn.Module:
    """decoder.* keys -> the project's StyleGAN2 Generator (one implementation, in services.generator)."""
    from services.generator.checkpoint import generator_from_state_dict
    from services.generator.errors import GeneratorError

    if not decoder_state:
        raise CheckpointError("checkpoint has no decoder.* keys")
    try:
        generator = generator_from_state_dict(dict(decoder_state), latent_avg=latent_avg)
    except GeneratorError as error:
        raise CheckpointError(f"decoder.* part of the e4e checkpoint: {error}") from error
    if generator.n_latent != n_latent:
        raise CheckpointError(
            f"decoder takes {generator.n_latent} W+ rows but the encoder has {n_latent} style heads"
        )
    return generator


def _make_decoder_loader(
    decoder_state: Mapping[str, Tensor],
    latent_avg: Tensor | None,
    n_latent: int,
    checkpoint_path: Path | None,
) -> Callable[[], nn.Module] | None:
    if not decoder_state:
        return None
    if checkpoint_path is None:
        return lambda: build_decoder(decoder_state, latent_avg, n_latent)

    # Re-read the file on demand rather than holding the decoder tensors for the process lifetime.
    def load_from_file() -> nn.Module:
        _, state = split_state_dict(read_checkpoint(checkpoint_path)["state_dict"])
        return build_decoder(state, latent_avg, n_latent)

    return load_from_file


def encoder_from_checkpoint(
    checkpoint: Mapping[str, Any],
    device: str | torch.device = "cpu",
    *,
    with_decoder: bool = False,
    fp16: bool = True,
    checkpoint_path: Path | None = None,
) -> Encoder:
    """Build an Encoder from an in-memory e4e checkpoint dict (the layout of e4e_ffhq_encode.pt)."""
    if "state_dict" not in checkpoint:
        raise CheckpointError("not an e4e checkpoint: no 'state_dict'")
    opts = checkpoint.get("opts") or {}
    if not isinstance(opts, Mapping):
        raise CheckpointError("checkpoint 'opts' must be a dict")
    encoder_type = opts.get("encoder_type", "Encoder4Editing")
    if encoder_type != "Encoder4Editing":
        raise CheckpointError(
            f"encoder_type {encoder_type!r} is not supported; this is an e4e (Encoder4Editing) loader"
        )

    encoder_state, decoder_state = split_state_dict(checkpoint["state_dict"])
    net = encoder_from_state_dict(encoder_state)
    stylegan_size = opts.get("stylegan_size")
    if stylegan_size is not None and n_latent_for_size(int(stylegan_size)) != net.n_styles:
        raise CheckpointError(
            f"opts.stylegan_size={stylegan_size} needs {n_latent_for_size(int(stylegan_size))} style heads, "
            f"the weights have {net.n_styles}"
        )
    latent_avg = latent_avg_from_checkpoint(checkpoint, net.n_styles)
    if latent_avg is None and opts.get("start_from_latent_avg", True):
        raise CheckpointError("opts.start_from_latent_avg is set but the checkpoint has no latent_avg")

    decoder_loader = _make_decoder_loader(decoder_state, latent_avg, net.n_styles, checkpoint_path)
    decoder = build_decoder(decoder_state, latent_avg, net.n_styles) if with_decoder else None

    encoder = Encoder(
        net,
        latent_avg,
        opts=opts,
        device=device,
        fp16=fp16,
        decoder=decoder,
        decoder_loader=decoder_loader,
        checkpoint_path=checkpoint_path,
    )
    if encoder.is_random:
        log.warning(
            "e4e checkpoint %s holds RANDOM weights (demo/tests): its codes are meaningless", checkpoint_path
        )
    return encoder


def load_encoder(
    path: str | Path,
    device: str | torch.device = "cpu",
    with_decoder: bool = False,
    *,
    fp16: bool = True,
) -> Encoder:
    """Load `e4e_ffhq_encode.pt` (or a file in the same layout) strictly.

    The encoder keys must match exactly; the decoder is built through the generator's loader
    now (with_decoder=True) or on first access of `Encoder.decoder`.
    """
    path = Path(path)
    checkpoint = read_checkpoint(path)
    return encoder_from_checkpoint(
        checkpoint, device, with_decoder=with_decoder, fp16=fp16, checkpoint_path=path
    )
