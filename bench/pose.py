"""Head pose error on synthetic landmarks of known rotation (docs/landmarks.md, "Head pose").

The generic 3D face is rotated by a random (yaw, pitch, roll), projected with the estimator's own
camera (focal = image side) at 300 mm (the face then spans about 450 px of 1024, as in an FFHQ crop),
Gaussian noise is added to the 68 points, and `estimate_head_pose` recovers the angles. Rows add
landmark noise and a face that differs from the model (each 3D point moved by Gaussian mm), the
two error sources real faces have. Accuracy, not speed: the last column is the time per estimate.

    python bench/pose.py            # 1,000 poses per row
    python bench/pose.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.annotator.pose import GENERIC_FACE_68, HeadPose, estimate_head_pose, project_model  # noqa: E402

SIZE = (1024, 1024)
ROWS = ((0.0, 0.0), (1.0, 0.0), (2.0, 0.0), (4.0, 0.0), (1.0, 2.0), (1.0, 4.0), (2.0, 4.0))


def measure(count: int, noise_px: float, shape_mm: float, seed: int) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(seed)
    errors, seconds = [], []
    for _ in range(count):
        true = HeadPose(*rng.uniform([-45, -25, -20], [45, 25, 20]))
        model = GENERIC_FACE_68 + rng.normal(0, shape_mm, GENERIC_FACE_68.shape) if shape_mm else None
        points = project_model(true, SIZE, distance_mm=300.0, model=model)
        points = points + rng.normal(0, noise_px, points.shape)
        started = time.perf_counter()
        found = estimate_head_pose(points, SIZE)
        seconds.append(time.perf_counter() - started)
        errors.append([found.yaw - true.yaw, found.pitch - true.pitch, found.roll - true.roll])
    return np.abs(np.array(errors)), statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "pose.md"))
    args = parser.parse_args()
    count = 50 if args.quick else 1000
    lines = [
        f"{count} random poses per row (yaw ±45°, pitch ±25°, roll ±20°), 1024-px image, face ≈ 450 px wide; "
        "absolute error in degrees, mean / 95th percentile.",
        "",
        "| landmark noise (px, sd) | face shape vs model (mm, sd) | yaw | pitch | roll | ms per estimate (median) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, (noise, shape) in enumerate(ROWS):
        errors, seconds = measure(count, noise, shape, seed=n)
        cells = [f"{errors[:, k].mean():.2f} / {np.percentile(errors[:, k], 95):.2f}" for k in range(3)]
        lines.append(f"| {noise:g} | {shape:g} | {' | '.join(cells)} | {seconds * 1000:.2f} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
