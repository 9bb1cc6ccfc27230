"""`make bench`: runs every bench script and assembles BENCHMARKS.md from their tables.

Each script measures ours vs the naive way side by side in one run and writes a markdown table
to bench/results/<name>.md. This script adds the machine, date and command to each section.

    python bench/run_all.py            # full sizes
    python bench/run_all.py --quick    # tiny sizes (a smoke test of the scripts)
    python bench/run_all.py --only queue search
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SCRIPTS = (
    "codecs",
    "queue",
    "generator",
    "diffusion",
    "encoder",
    "identity",
    "annotator",
    "search",
    "curation",
    "webstudio",
    "pipeline",
    "pose",
    "gpu",
    "load",
)
# bench/<name>.py, except the load test, which lives with the reliability scripts
SCRIPT_PATHS = {name: BENCH / f"{name}.py" for name in SCRIPTS} | {"load": ROOT / "reliability" / "load.py"}


def machine() -> str:
    try:
        import torch

        torch_info = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except ImportError:
        torch_info, gpu = "no torch", "no GPU"
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem}, {gpu}, Python {platform.python_version()}, {torch_info}"


def gpu_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=list(SCRIPTS))
    parser.add_argument(
        "--assemble-only", action="store_true", help="rebuild the page from bench/results only"
    )
    parser.add_argument(
        "--output", default="", help="default: BENCHMARKS.md (full) or bench/results/QUICK.md"
    )
    args = parser.parse_args()
    args.output = args.output or str(BENCH / "results" / "QUICK.md" if args.quick else ROOT / "BENCHMARKS.md")
    (BENCH / "results").mkdir(exist_ok=True)
    failures = []
    for name in [] if args.assemble_only else args.only:
        if name == "gpu" and not gpu_available():
            print("== gpu: no CUDA device here; bench/results/gpu.md is left as it is", flush=True)
            continue
        flag = "--dry-run" if name == "gpu" else "--quick"
        cmd = [sys.executable, str(SCRIPT_PATHS[name])] + ([flag] if args.quick else [])
        print(f"== {' '.join(cmd)}", flush=True)
        started = time.time()
        proc = subprocess.run(cmd, cwd=ROOT)
        if proc.returncode != 0:
            failures.append(name)
        print(f"== {name}: exit {proc.returncode} after {time.time() - started:.0f} s", flush=True)

    today = time.strftime("%Y-%m-%d")
    sections = [
        "# Benchmarks\n",
        "Every figure is measured by a script in `bench/`, ours next to the naive way in the same run "
        "on the same machine. Regenerate with `make bench` (or `python bench/run_all.py --only NAME`).\n",
        f"Last assembled {today} on: {machine()}.\n",
    ]
    for name in SCRIPTS:
        table = BENCH / "results" / f"{name}.md"
        if table.exists():
            command = SCRIPT_PATHS[name].relative_to(ROOT)
            sections.append(f"## {name}\n\nCommand: `python {command}`\n\n{table.read_text().strip()}\n")
    Path(args.output).write_text("\n".join(sections))
    print(f"wrote {args.output}")
    if failures:
        print(f"failed: {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
