"""BiSeNet face parsing (the zllrunning/face-parsing.PyTorch model, 19 CelebAMask-HQ classes).

Our own implementation with the official module names, so the released `79999_iter.pth` loads
strictly (docs/checkpoints.md, "BiSeNet face parsing"). Unlike the original it downloads nothing at construction (the original
ResNet-18 trunk fetches ImageNet weights in its constructor) and does not need torchvision.

Two backends run the same network: ONNX Runtime (the service default; several times faster on
CPU) from an ONNX export cached next to the checkpoint, keyed by the checkpoint's sha256, and
PyTorch. Label maps never leave the device as logits: the ONNX graph has the per-pixel argmax
(a uint8 `labels` output beside `logits`), and the PyTorch runner takes the argmax on the device,
running fp16 channels_last on CUDA (`fp16=True`); bf16 autocast on the CPU is available (`bf16=True`)
but off: on random weights 2% of the labels changed (bench/annotator.py), which is too many to
turn on unmeasured on the real checkpoint, and it only pays on CPUs with AMX.

Pre-processing is the original one: RGB, Pillow bilinear resize to the working size (512 in the
original test script; SFHQ parsed a 256 copy and upsampled the labels to 1024), ToTensor, ImageNet
mean/std. Only the main head is used at inference; the two auxiliary heads exist in the checkpoint
for the training loss and are computed only when asked for.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import nn

from services.common.accel import configure_device, to_device, to_host
from services.common.errors import FailedPrecondition, InvalidInput
from sfhq.annotations import PARSING_CLASSES

log = logging.getLogger(__name__)

NUM_CLASSES = 19
CLASS_NAMES = PARSING_CLASSES  # sfhq/annotations.py: shared with the clients
CLASS_INDEX = {name: index for index, name in enumerate(CLASS_NAMES)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ORIGINAL_WORKING_SIZE = 512  # the size the model was trained and evaluated at
BACKENDS = ("torch", "onnx")


class CheckpointError(FailedPrecondition, ValueError):
    """A checkpoint that does not have the official BiSeNet layout."""


class ParserInputError(InvalidInput):
    """An input the parser cannot use (wrong shape, dtype or size)."""


# ---------------------------------------------------------------------------------------------
# Network (module names follow the official checkpoint's keys)


class ConvBNReLU(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN with an identity or 1x1-projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Sequential | None = None
        if in_channels != out_channels or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18Trunk(nn.Module):
    """ResNet-18 without its classifier; returns the stride-8, -16 and -32 feature maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True)


class AttentionRefinementModule(nn.Module):
    """Conv, then a channel gate computed from the global average of the result."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels)
        self.conv_atten = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        gate = torch.sigmoid(self.bn_atten(self.conv_atten(_global_mean(feat))))
        return feat * gate


class ContextPath(nn.Module):
    """ResNet trunk + global context, refined and upsampled back to stride 8 (and 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18Trunk()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, kernel_size=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        context = self.conv_avg(_global_mean(feat32))
        feat32_sum = self.arm32(feat32) + F.interpolate(context, size=feat32.shape[2:], mode="nearest")
        feat_cp16 = self.conv_head32(F.interpolate(feat32_sum, size=feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat_cp16
        feat_cp8 = self.conv_head16(F.interpolate(feat16_sum, size=feat8.shape[2:], mode="nearest"))
        return feat8, feat_cp8, feat_cp16


class FeatureFusionModule(nn.Module):
    """Fuses the stride-8 trunk features (the original's stand-in for a spatial path) with context."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(in_channels, out_channels, kernel_size=1, padding=0)
        self.conv1 = nn.Conv2d(out_channels, out_channels // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_channels // 4, out_channels, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        gate = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_mean(feat)))))
        return feat * gate + feat


class BiSeNetOutput(nn.Module):
    def __init__(self, in_channels: int, mid_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, mid_channels)
        self.conv_out = nn.Conv2d(mid_channels, num_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """BiSeNet as trained for face parsing.

    `forward` returns `(main, aux16, aux32)` logits upsampled to the input size, as the original
    does; inference uses only the main head, which `main_logits` computes alone.
    """

    def __init__(self, n_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, n_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, n_classes)
        self.conv_out32 = BiSeNetOutput(128, 64, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        main, aux16, aux32 = self._heads(x, with_aux=True)
        return main, aux16, aux32

    def main_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._heads(x, with_aux=False)[0]

    def _heads(self, x: torch.Tensor, with_aux: bool) -> list[torch.Tensor]:
        size = x.shape[2:]
        feat8, feat_cp8, feat_cp16 = self.cp(x)
        heads = [self.conv_out(self.ffm(feat8, feat_cp8))]
        if with_aux:  # the auxiliary heads only served the training loss
            heads += [self.conv_out16(feat_cp8), self.conv_out32(feat_cp16)]
        return [F.interpolate(h, size=size, mode="bilinear", align_corners=True) for h in heads]


class _MainHead(nn.Module):
    """What the ONNX export contains: the main head's logits and their per-pixel argmax (uint8)."""

    def __init__(self, model: BiSeNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model.main_logits(x)
        return logits, logits.argmax(dim=1).to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _official_state_dict(raw: object) -> OrderedDict[str, torch.Tensor]:
    if not isinstance(raw, dict) or not raw:
        raise CheckpointError("a BiSeNet checkpoint must be a non-empty state dict (79999_iter.pth layout)")
    keys = list(raw)
    if not all(isinstance(k, str) for k in keys):
        raise CheckpointError("checkpoint keys must be strings")
    if all(k.startswith("module.") for k in keys):  # saved from a DataParallel wrapper
        raw = {k[len("module.") :]: v for k, v in raw.items()}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
    return OrderedDict(raw)


def load_bisenet(path: str | Path, n_classes: int = NUM_CLASSES) -> BiSeNet:
    """Build BiSeNet and load `path` strictly (every key, every shape); eval mode, CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BiSeNet checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem for the caller
        raise CheckpointError(f"cannot read BiSeNet checkpoint {path}: {exc}") from exc
    state = _official_state_dict(raw)
    with torch.device("meta"):  # no random initialisation: every value comes from the checkpoint
        model = BiSeNet(n_classes)
    expected = model.state_dict()
    # BatchNorm step counters are bookkeeping; some saves drop them. Fill only those.
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros(value.shape, dtype=value.dtype)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{path.name} is not a BiSeNet face-parsing checkpoint (79999_iter.pth layout): "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}, "
            f"{len(wrong_shape)} wrong shapes {wrong_shape[:3]}"
        )
    state = OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in state.items())
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Pre-processing


def to_rgb_image(image) -> PIL.Image.Image:
    if isinstance(image, PIL.Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ParserInputError(
            f"image must be a PIL image or an HxW[xC] uint8 array, got {arr.dtype} {arr.shape}"
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return PIL.Image.fromarray(arr, "L").convert("RGB")
    return PIL.Image.fromarray(np.ascontiguousarray(arr[:, :, :3]), "RGB")


def _check_working_size(working_size: int) -> int:
    if not isinstance(working_size, int | np.integer) or not 32 <= working_size <= 2048:
        raise ParserInputError(f"working_size must be an integer in [32, 2048], got {working_size!r}")
    return int(working_size)


def preprocess(image, working_size: int = ORIGINAL_WORKING_SIZE) -> np.ndarray:
    """The original pre-processing: [3, S, S] float32, ImageNet-normalised, Pillow bilinear resize."""
    size = _check_working_size(working_size)
    rgb = to_rgb_image(image).resize((size, size), PIL.Image.Resampling.BILINEAR)
    x = np.asarray(rgb, dtype=np.float32) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def upsample_labels(label_map: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to `size` (int or (width, height)), as SFHQ did."""
    width, height = (size, size) if isinstance(size, int | np.integer) else size
    if label_map.shape == (height, width):
        return label_map
    return np.asarray(
        PIL.Image.fromarray(label_map, "L").resize((width, height), PIL.Image.Resampling.NEAREST)
    )


# ---------------------------------------------------------------------------------------------
# Runtime


class _TorchRunner:
    """PyTorch BiSeNet. CUDA: fp16 weights and activations in channels_last (when `fp16`), inputs
    copied `non_blocking` from pinned memory, argmax on the device (uint8 crosses the bus, not 19
    float channels). CPU: fp32, or bf16 autocast when `bf16` (opt-in: see the module docstring)."""

    def __init__(self, model: BiSeNet, device: torch.device, fp16: bool = True, bf16: bool = False) -> None:
        self.device = device
        self.dtype = torch.float16 if (fp16 and device.type == "cuda") else torch.float32
        self.bf16 = device.type == "cpu" and bf16
        self.model = model.to(device, self.dtype)
        if device.type == "cuda":
            configure_device(device)
            self.model = self.model.to(memory_format=torch.channels_last)

    def _forward(self, batch: np.ndarray) -> torch.Tensor:
        x = to_device(batch, self.device, self.dtype)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.model.main_logits(x)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return to_host(self._forward(batch).float())

    def labels(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return to_host(self._forward(batch).argmax(dim=1).to(torch.uint8))


class _OnnxRunner:
    def __init__(self, onnx_path: Path, device: torch.device, num_threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        # ORT's idle threads spin for a while after each run by default, taking the cores from the
        # process's other work (dlib, the store threads' encoding) and from torch.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.path = onnx_path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        return self.session.run(["logits"], feed)[0]

    def labels(self, batch: np.ndarray) -> np.ndarray:
        """The graph's own argmax: the 19-channel logits are never copied out."""
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        return self.session.run(["labels"], feed)[0]


def export_onnx(model: BiSeNet, onnx_path: str | Path, opset: int = 17) -> Path:
    """Export the main head with dynamic batch and spatial size (written atomically).

    Uses the TorchScript exporter (`dynamo=False`: ~2 s for BiSeNet); if a future torch drops
    it, the torch.export-based exporter (onnxscript, ~20 s) takes over with the same result.
    """
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    model = _MainHead(model.to("cpu").eval()).eval()
    dummy = torch.zeros(1, 3, 64, 64)
    names = {"input_names": ["input"], "output_names": ["logits", "labels"]}
    fd, tmp = tempfile.mkstemp(prefix=onnx_path.name + ".", suffix=".tmp", dir=onnx_path.parent)
    os.close(fd)
    try:
        with torch.no_grad():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter(
                        "ignore", DeprecationWarning
                    )  # "legacy exporter": chosen on purpose
                    torch.onnx.export(
                        model,
                        (dummy,),
                        tmp,
                        dynamo=False,
                        opset_version=opset,
                        **names,
                        dynamic_axes={
                            "input": {0: "batch", 2: "height", 3: "width"},
                            "logits": {0: "batch", 2: "height", 3: "width"},
                            "labels": {0: "batch", 1: "height", 2: "width"},
                        },
                    )
            except (TypeError, NotImplementedError, RuntimeError) as exc:
                log.info("TorchScript ONNX exporter unavailable (%s); using the dynamo exporter", exc)
                dims = {
                    0: torch.export.Dim("batch"),
                    2: torch.export.Dim("height", min=32, max=4096),
                    3: torch.export.Dim("width", min=32, max=4096),
                }
                torch.onnx.export(
                    model,
                    (dummy,),
                    tmp,
                    dynamo=True,
                    opset_version=max(opset, 18),
                    **names,
                    dynamic_shapes={"x": dims},
                )
        os.replace(tmp, onnx_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return onnx_path


# Bumped when the exported graph changes (2: the argmax `labels` output), so that an export made
# by an older version is not picked up.
ONNX_GRAPH_VERSION = 2


def onnx_cache_path(checkpoint: str | Path, sha256: str, cache_dir: str | Path | None = None) -> Path:
    """`<dir>/<checkpoint stem>.<sha256[:16]>.v<graph version>.onnx`; dir = next to the checkpoint
    unless given."""
    checkpoint = Path(checkpoint)
    folder = Path(cache_dir) if cache_dir is not None else checkpoint.parent
    return folder / f"{checkpoint.stem}.{sha256[:16]}.v{ONNX_GRAPH_VERSION}.onnx"


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK)


class FaceParser:
    """A loaded BiSeNet with one backend. Thread-safe; inputs are batched by `parse_batch`."""

    def __init__(
        self, runner: _TorchRunner | _OnnxRunner, backend: str, checkpoint: Path, sha256: str
    ) -> None:
        self._runner = runner
        self._lock = threading.Lock()
        self.backend = backend
        self.checkpoint = checkpoint
        self.sha256 = sha256

    @property
    def onnx_path(self) -> Path | None:
        return getattr(self._runner, "path", None)

    def logits(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Main-head logits [B, 19, H, W] for a normalised [B, 3, H, W] float input (CPU tensor out)."""
        batch = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ParserInputError(f"parser input must be [B, 3, H, W], got {list(batch.shape)}")
        if min(batch.shape[2:]) < 32:
            raise ParserInputError(f"parser input must be at least 32x32, got {list(batch.shape[2:])}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        with self._lock:
            return torch.from_numpy(np.ascontiguousarray(self._runner(batch)))

    def parse(
        self,
        image,
        working_size: int = ORIGINAL_WORKING_SIZE,
        output_size: int | tuple[int, int] | None = None,
    ) -> np.ndarray:
        """uint8 label map (class indices) of one image, at `working_size` or upsampled (nearest)
        to `output_size` (int or (width, height))."""
        return self.parse_batch([image], working_size, output_size)[0]

    def parse_batch(
        self,
        images: Sequence,
        working_size: int = ORIGINAL_WORKING_SIZE,
        output_size: int | tuple[int, int] | None = None,
    ) -> list[np.ndarray]:
        if len(images) == 0:
            return []
        batch = np.stack([preprocess(image, working_size) for image in images])
        with self._lock:
            labels = self._runner.labels(batch)
        if output_size is None:
            return list(labels)
        return [upsample_labels(label, output_size) for label in labels]


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_parser(
    path: str | Path,
    device: str | torch.device = "cpu",
    backend: str = "torch",
    onnx_cache_dir: str | Path | None = None,
    num_threads: int | None = None,
    fp16: bool = True,
) -> FaceParser:
    """Load a `79999_iter.pth`-layout checkpoint and return a ready `FaceParser`.

    `backend="onnx"` exports the network once to `<checkpoint dir>/<stem>.<sha256[:16]>.onnx`
    (or `onnx_cache_dir`, or `~/.cache/sfhq/onnx` when the weights folder is read-only) and runs
    it with ONNX Runtime. `num_threads` caps ONNX Runtime's intra-op threads. `fp16` applies to
    the PyTorch backend on CUDA.
    """
    if backend not in BACKENDS:
        raise ValueError(f"parser backend must be one of {BACKENDS}, got {backend!r}")
    path = Path(path)
    model = load_bisenet(path)
    sha256 = file_sha256(path)
    torch_device = resolve_device(device)
    if backend == "torch":
        return FaceParser(_TorchRunner(model, torch_device, fp16), backend, path, sha256)

    folder = Path(onnx_cache_dir) if onnx_cache_dir is not None else path.parent
    if not _writable(folder) and onnx_cache_dir is None:
        folder = Path.home() / ".cache" / "sfhq" / "onnx"
    onnx_path = onnx_cache_path(path, sha256, folder)
    if not onnx_path.is_file():
        log.info("exporting BiSeNet to ONNX: %s", onnx_path)
        export_onnx(model, onnx_path)
    return FaceParser(_OnnxRunner(onnx_path, torch_device, num_threads), backend, path, sha256)
