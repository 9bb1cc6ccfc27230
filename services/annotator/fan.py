"""FAN (face-alignment, 1adrianb) 68-point landmarks: the optional second landmark source.

Our own implementation of the stacked-hourglass network with the official module names, so the
released `2DFAN4-11f355bf06.pth.tar` (a plain state dict; some copies wrap it in
`{"state_dict": ...}` with a `module.` prefix) loads strictly. The number of stacked hourglasses
is read from the checkpoint (4 for 2DFAN-4; tests use 1 to stay small).

Inference follows face-alignment's recipe: a square crop around the face box, centred 12 % of the
box height above its centre, with side `200 * (w + h) / 195` pixels, resized to 256x256, RGB in
[0, 1]; the last hourglass gives 68 heatmaps of 64x64 whose maxima, nudged a quarter pixel towards
the larger neighbour, are mapped back to the image.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import nn

from services.annotator.detect import FaceBox, as_rgb_array
from services.common.errors import FailedPrecondition

INPUT_SIZE = 256
HEATMAP_SIZE = 64
REFERENCE_SCALE = 195.0  # face-alignment's box size normaliser for its detectors
NUM_POINTS = 68


class FanCheckpointError(FailedPrecondition, ValueError):
    """A checkpoint that is not in face-alignment's FAN layout."""


class ConvBlock(nn.Module):
    """Pre-activation block whose three 3x3 convs (C/2, C/4, C/4 channels) are concatenated."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        half, quarter = out_planes // 2, out_planes // 4
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, half, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, quarter, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(quarter)
        self.conv3 = nn.Conv2d(quarter, quarter, 3, 1, 1, bias=False)
        self.downsample: nn.Sequential | None = None
        if in_planes != out_planes:
            self.downsample = nn.Sequential(
                nn.BatchNorm2d(in_planes), nn.ReLU(True), nn.Conv2d(in_planes, out_planes, 1, 1, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.cat((out1, out2, out3), 1) + shortcut


class HourGlass(nn.Module):
    """Recursive hourglass; module names `b1_<level>`, `b2_<level>`, `b2_plus_1`, `b3_<level>`."""

    def __init__(self, depth: int = 4, features: int = 256) -> None:
        super().__init__()
        self.depth = depth
        for level in range(depth, 0, -1):
            self.add_module(f"b1_{level}", ConvBlock(features, features))
            self.add_module(f"b2_{level}", ConvBlock(features, features))
            self.add_module(f"b3_{level}", ConvBlock(features, features))
        self.add_module("b2_plus_1", ConvBlock(features, features))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        upper = self._modules[f"b1_{level}"](x)
        lower = self._modules[f"b2_{level}"](F.max_pool2d(x, 2, stride=2))
        lower = self._level(level - 1, lower) if level > 1 else self._modules["b2_plus_1"](lower)
        lower = self._modules[f"b3_{level}"](lower)
        return upper + F.interpolate(lower, scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._level(self.depth, x)


class FAN(nn.Module):
    """Stacked hourglass network; `forward` returns the last stack's 68 heatmaps [B, 68, 64, 64]."""

    def __init__(self, num_modules: int = 4) -> None:
        super().__init__()
        self.num_modules = num_modules
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = ConvBlock(64, 128)
        self.conv3 = ConvBlock(128, 128)
        self.conv4 = ConvBlock(128, 256)
        for i in range(num_modules):
            self.add_module(f"m{i}", HourGlass(4, 256))
            self.add_module(f"top_m_{i}", ConvBlock(256, 256))
            self.add_module(f"conv_last{i}", nn.Conv2d(256, 256, 1))
            self.add_module(f"bn_end{i}", nn.BatchNorm2d(256))
            self.add_module(f"l{i}", nn.Conv2d(256, NUM_POINTS, 1))
            if i < num_modules - 1:
                self.add_module(f"bl{i}", nn.Conv2d(256, 256, 1))
                self.add_module(f"al{i}", nn.Conv2d(NUM_POINTS, 256, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(self.conv2(x), 2)
        previous = self.conv4(self.conv3(x))
        heatmaps = previous
        for i in range(self.num_modules):
            features = self._modules[f"top_m_{i}"](self._modules[f"m{i}"](previous))
            features = F.relu(self._modules[f"bn_end{i}"](self._modules[f"conv_last{i}"](features)))
            heatmaps = self._modules[f"l{i}"](features)
            if i < self.num_modules - 1:  # feed this stack's features and heatmaps to the next one
                previous = previous + self._modules[f"bl{i}"](features) + self._modules[f"al{i}"](heatmaps)
        return heatmaps


def _fan_state_dict(raw: object) -> OrderedDict[str, torch.Tensor]:
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw:
        raise FanCheckpointError("a FAN checkpoint must be a state dict (2DFAN4-11f355bf06.pth.tar layout)")
    state = OrderedDict()
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise FanCheckpointError(f"FAN checkpoint entry {key!r} is not a named tensor")
        state[key.removeprefix("module.")] = value
    return state


def load_fan(path: str | Path) -> FAN:
    """Build FAN with as many hourglasses as the checkpoint has and load it strictly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FAN checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is one problem for the caller
        raise FanCheckpointError(f"cannot read FAN checkpoint {path}: {exc}") from exc
    state = _fan_state_dict(raw)
    stacks = {int(m.group(1)) for key in state if (m := re.match(r"m(\d+)\.", key))}
    if not stacks or stacks != set(range(len(stacks))):
        raise FanCheckpointError(f"{path.name} has no hourglass modules m0..mN; not a FAN checkpoint")
    with torch.device("meta"):  # no random initialisation: every value comes from the checkpoint
        model = FAN(len(stacks))
    expected = model.state_dict()
    for key, value in expected.items():  # BatchNorm step counters are bookkeeping only
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros(value.shape, dtype=value.dtype)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise FanCheckpointError(
            f"{path.name} is not a FAN checkpoint: {len(missing)} missing {missing[:4]}, "
            f"{len(unexpected)} unexpected {unexpected[:4]}, {len(wrong)} wrong shapes {wrong[:4]}"
        )
    state = OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in state.items())
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def crop_geometry(box: FaceBox) -> tuple[np.ndarray, float]:
    """Centre (x, y) and side length in source pixels of FAN's square input crop for `box`."""
    width, height = box.right - box.left, box.bottom - box.top
    centre = np.array([(box.left + box.right) / 2, (box.top + box.bottom) / 2 - 0.12 * height])
    return centre, 200.0 * (width + height) / REFERENCE_SCALE


def heatmap_peaks(heatmaps: np.ndarray) -> np.ndarray:
    """(N, 2) sub-pixel (x, y) peak positions of [N, H, W] heatmaps, in heatmap pixel indices."""
    count, height, width = heatmaps.shape
    flat = heatmaps.reshape(count, -1).argmax(axis=1)
    ys, xs = np.divmod(flat, width)
    peaks = np.stack([xs, ys], axis=1).astype(np.float64)
    for n, (x, y) in enumerate(zip(xs, ys, strict=True)):
        # A quarter pixel towards the larger neighbour: half of the argmax's quantisation error.
        if 0 < x < width - 1:
            peaks[n, 0] += 0.25 * np.sign(heatmaps[n, y, x + 1] - heatmaps[n, y, x - 1])
        if 0 < y < height - 1:
            peaks[n, 1] += 0.25 * np.sign(heatmaps[n, y + 1, x] - heatmaps[n, y - 1, x])
    return peaks


class FanLandmarker:
    """68 points from a FAN network for a face box (see `detect.fuse_landmarks`)."""

    def __init__(self, model: FAN, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> FanLandmarker:
        return cls(load_fan(path), device)

    def predict(self, image, box: FaceBox) -> np.ndarray:
        pixels = as_rgb_array(image)
        centre, side = crop_geometry(box)
        # Crop pixel (j, i) samples the source at centre + ((j + 0.5) / 256 - 0.5) * side (pixel centres);
        # Pillow's AFFINE maps output continuous coords to input continuous coords (+0.5 offsets).
        step = side / INPUT_SIZE
        origin = centre - side / 2 + 0.5  # continuous source coordinate of the crop's corner
        crop = PIL.Image.fromarray(pixels).transform(
            (INPUT_SIZE, INPUT_SIZE),
            PIL.Image.Transform.AFFINE,
            (step, 0.0, origin[0], 0.0, step, origin[1]),
            PIL.Image.Resampling.BILINEAR,
        )
        x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        with self._lock, torch.inference_mode():
            heatmaps = self.model(x.to(self.device)).float().cpu().numpy()[0]
        return self.to_source(heatmap_peaks(heatmaps), centre, side)

    @staticmethod
    def to_source(peaks: np.ndarray, centre: np.ndarray, side: float) -> np.ndarray:
        """Heatmap cell (x, y) -> source pixel coordinates: cell k covers crop pixels 4k..4k+3,
        whose middle (continuous crop coordinate 4k + 2) maps through the crop's affine map."""
        crop_continuous = (peaks + 0.5) * (INPUT_SIZE / HEATMAP_SIZE)
        origin = centre - side / 2 + 0.5  # the crop's corner in continuous source coordinates
        return (origin + crop_continuous * (side / INPUT_SIZE) - 0.5).astype(np.float32)
