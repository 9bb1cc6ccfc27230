"""FAN (face-alignment) 68 points: checkpoint layout, crop geometry, heatmap decoding, fusion."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from services.annotator.detect import FaceBox, FaceLandmarker
from services.annotator.fan import (
    FAN,
    FanCheckpointError,
    FanLandmarker,
    crop_geometry,
    heatmap_peaks,
    load_fan,
)
from services.annotator.random_weights import write_random_fan_checkpoint
from tests.helpers.data import DATA

TESTDATA = DATA


class PeakModel(torch.nn.Module):
    """Stands in for FAN: records its input and returns heatmaps peaking at chosen cells."""

    def __init__(self, peaks: list[tuple[int, int]], neighbour_bias: float = 0.0) -> None:
        super().__init__()
        self.peaks = peaks
        self.neighbour_bias = neighbour_bias
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.clone()
        maps = torch.zeros(1, 68, 64, 64)
        for n in range(68):
            px, py = self.peaks[n % len(self.peaks)]
            maps[0, n, py, px] = 1.0
            maps[0, n, py, px + 1] = 0.5 + self.neighbour_bias  # right neighbour larger -> +0.25 in x
            maps[0, n, py, px - 1] = 0.5
        return maps


def test_official_layout_names() -> None:
    state = FAN(4).state_dict()
    for key in (
        "conv1.weight",
        "conv1.bias",
        "bn1.running_var",
        "conv2.downsample.2.weight",
        "m0.b1_4.conv1.weight",
        "m3.b2_plus_1.bn3.weight",
        "top_m_3.conv3.weight",
        "conv_last3.bias",
        "bn_end3.weight",
        "l3.weight",
        "bl2.weight",
        "al2.weight",
    ):
        assert key in state, key
    assert "bl3.weight" not in state and "al3.weight" not in state  # the last stack feeds nothing
    assert state["l0.weight"].shape == (68, 256, 1, 1)
    assert state["al0.weight"].shape == (256, 68, 1, 1)
    assert not any(k.startswith("m0.b2_plus_2") for k in state)  # only the innermost level has b2_plus


def test_loads_plain_and_wrapped_checkpoints_strictly(tmp_path) -> None:
    path = write_random_fan_checkpoint(tmp_path / "fan.pth.tar", seed=1, num_modules=1)
    model = load_fan(path)
    assert model.num_modules == 1 and not model.training
    state = torch.load(path, weights_only=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "wrapped.pth.tar")
    wrapped = load_fan(tmp_path / "wrapped.pth.tar")
    torch.testing.assert_close(wrapped.state_dict()["l0.weight"], state["l0.weight"])
    del state["m0.b3_2.conv1.weight"]
    torch.save(state, tmp_path / "broken.pth.tar")
    with pytest.raises(FanCheckpointError, match="1 missing"):
        load_fan(tmp_path / "broken.pth.tar")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth.tar")
    with pytest.raises(FanCheckpointError, match="hourglass"):
        load_fan(tmp_path / "other.pth.tar")


def test_heatmap_peaks_with_quarter_pixel_refinement() -> None:
    maps = np.zeros((3, 64, 64), np.float32)
    maps[0, 10, 20] = 1  # isolated peak: no refinement
    maps[1, 30, 40], maps[1, 30, 41], maps[1, 31, 40] = 1, 0.6, 0.4  # larger right and lower neighbours
    maps[2, 0, 63] = 1  # on the border: never refined towards outside
    np.testing.assert_allclose(heatmap_peaks(maps), [[20, 10], [40.25, 30.25], [63, 0]])


def test_crop_geometry_follows_face_alignment() -> None:
    centre, side = crop_geometry(FaceBox(100, 200, 300, 400))
    np.testing.assert_allclose(centre, [200, 300 - 0.12 * 200])
    assert side == pytest.approx(200 * 400 / 195)


def test_points_map_back_through_the_crop() -> None:
    box = FaceBox(120, 80, 320, 280)
    centre, side = crop_geometry(box)
    # A bright dot exactly where the crop's middle reads the source.
    image = np.zeros((480, 480, 3), np.uint8)
    cx, cy = np.rint(centre).astype(int)
    image[cy - 1 : cy + 2, cx - 1 : cx + 2] = 255
    model = PeakModel([(10, 50), (31, 31)])
    points = FanLandmarker(model).predict(image, box)
    crop = model.seen[0, 0].numpy()
    assert crop.shape == (256, 256)
    ys, xs = np.nonzero(crop > 0.5)
    assert abs(xs.mean() - 127.5) < 1.5 and abs(ys.mean() - 127.5) < 1.5  # the dot is in the middle
    cell = side / 64
    for n, (hx, hy) in enumerate([(10, 50), (31, 31)]):
        expected = centre - side / 2 + (np.array([hx, hy]) + 0.5) * cell
        np.testing.assert_allclose(points[n], expected, atol=1e-3)

    nudged = FanLandmarker(PeakModel([(31, 31)], neighbour_bias=0.1)).predict(image, box)
    np.testing.assert_allclose(nudged[0] - points[1], [0.25 * cell, 0.0], atol=1e-3)


def test_random_fan_forward_is_fully_convolutional(tmp_path) -> None:
    model = load_fan(write_random_fan_checkpoint(tmp_path / "fan.pth.tar", num_modules=2))
    with torch.no_grad():
        heatmaps = model(torch.rand(1, 3, 64, 64))  # a quarter of FAN's 256 input keeps the test fast
    assert heatmaps.shape == (1, 68, 16, 16) and torch.isfinite(heatmaps).all()


def test_fused_landmarker_uses_fan_only_when_it_agrees_with_dlib() -> None:
    image = PIL.Image.open(TESTDATA / "faces" / "sfhq_sample_01.jpg").convert("RGB")
    plain = FaceLandmarker.shared()
    dlib_points = plain.locate(image).landmarks68

    class FixedFan:
        def __init__(self, points: np.ndarray) -> None:
            self.points = points

        def predict(self, image, box):
            return self.points

    near = dlib_points + 2.0
    fused = FaceLandmarker(plain.detector, plain.predictor, fan=FixedFan(near)).locate(image)
    np.testing.assert_allclose(fused.landmarks68, dlib_points + 1.0, atol=1e-4)  # the average
    lost = dlib_points + 200.0
    kept = FaceLandmarker(plain.detector, plain.predictor, fan=FixedFan(lost)).locate(image)
    np.testing.assert_allclose(kept.landmarks68, dlib_points)
