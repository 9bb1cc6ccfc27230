"""bench/gpu.py is ready to run on a GPU: its dry run (tiny sizes, this CPU) goes through every part."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_gpu_benchmark_dry_run_measures_every_part(tmp_path) -> None:
    output = tmp_path / "gpu.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run", "--device", "cpu", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = output.read_text()
    assert "Device: **CPU** (dry run" in report
    for model in ("StyleGAN2-32 synthesis", "e4e (64 px)", "CLIP (tiny) image tower", "BiSeNet 64 px"):
        rows = [line for line in report.splitlines() if line.startswith(f"| {model} |")]
        assert len(rows) == 2, model  # batches 1 and 2, fp32 (fp16 only on CUDA)
        assert all(float(row.split("|")[5].replace(",", "")) > 0 for row in rows)
    sd_rows = [line for line in report.splitlines() if line.startswith("| SD v1.x architecture, tiny widths")]
    assert len(sd_rows) == 2 and all(float(row.split("|")[5].replace(",", "")) > 0 for row in sd_rows)
    assert re.search(r"\| batched \| [\d,.]+ \|", report) and re.search(
        r"\| one by one \| [\d,.]+ \|", report
    )
    jobs = re.findall(r"^\| (inspiration|sampling), .* \| (\d+) \| [\d.]+ \| [\d.]+ \|$", report, re.M)
    assert [kind for kind, _ in jobs] == ["inspiration", "sampling"]
    assert [int(written) for _, written in jobs] == [2, 3]  # 1 image x 2 strategies, 1 sample x 3 corrections


def test_the_gpu_benchmark_refuses_to_pretend_without_a_gpu() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "CUDA" in result.stderr
