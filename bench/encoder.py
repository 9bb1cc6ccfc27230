"""Encoder (e4e) throughput and load time: ours vs the naive way, side by side in one run.

Throughput (images/s, preprocessing of aligned PIL faces included):
* naive: what a direct port of e4e's inference does per image: one image at a time, NCHW
  tensors, `torch.no_grad()`.
* ours: `Encoder.encode_images` (no_grad, channels_last on CPU, fp16 autocast on CUDA)
  at batch 1 and batch 8.

Load time of a checkpoint file:
* naive: what pSp does: build the module (random init of every weight), `torch.load` the whole
  file into RAM, copy the weights in.
* ours: `load_encoder`: memory-mapped `weights_only` load, a meta-device module that adopts the
  checkpoint tensors (no init, no copy), decoder left unread.

    python bench/encoder.py            # the official IR-SE-50 / 18-style / 256-px config, random weights
    python bench/encoder.py --quick    # a tiny config (< 60 s)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from services.encoder.model import (  # noqa: E402
    Encoder,
    Encoder4Editing,
    EncoderConfig,
    encoder_from_checkpoint,
    load_encoder,
    preprocess,
    split_state_dict,
)
from services.encoder.random_weights import e4e_opts, random_encoder_state_dict  # noqa: E402
from tests.helpers.data import all_faces  # noqa: E402


@dataclass
class Timing:
    wall: float = float("inf")  # seconds
    cpu: float = float("inf")  # CPU seconds of this process (all its threads)


def best_of(methods: dict[str, Callable[[], object]], rounds: int) -> dict[str, Timing]:
    """Wall and CPU seconds per call of each method: the fastest of `rounds` calls after a warm-up.

    The rounds are interleaved (a, b, c, a, b, c, ...) and the minimum is kept. On a shared machine
    the wall clock also counts time spent waiting for a core; the process's CPU time does not, so
    it is the steadier way to compare methods there (with one torch thread, no spin-waiting counts).
    """
    for run in methods.values():
        run()
    best = {name: Timing() for name in methods}
    for _ in range(rounds):
        for name, run in methods.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            best[name].wall = min(best[name].wall, time.perf_counter() - wall)
            best[name].cpu = min(best[name].cpu, time.process_time() - cpu)
    return best


def faces(count: int) -> list[Image.Image]:
    files = all_faces()
    return [Image.open(files[i % len(files)]).convert("RGB") for i in range(count)]


def naive_encode(
    net: Encoder4Editing, latent_avg: torch.Tensor, images: list[Image.Image], device: torch.device
):
    size = net.config.input_size
    codes = []
    with torch.no_grad():
        for image in images:
            x = preprocess([image], size=size).to(device)
            codes.append(net(x) + latent_avg)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return codes


def ours_encode(encoder: Encoder, images: list[Image.Image], batch_size: int):
    codes = encoder.encode_images(images, batch_size=batch_size, as_numpy=False)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    return codes


def throughput_rows(config: EncoderConfig, device: torch.device, n_images: int, rounds: int) -> list[str]:
    state = random_encoder_state_dict(config, seed=0)
    latent_avg = torch.randn(config.n_styles, 512)
    checkpoint = {
        "state_dict": {f"encoder.{k}": v for k, v in state.items()},
        "opts": e4e_opts(config.stylegan_size),
        "latent_avg": latent_avg,
    }
    images = faces(n_images)

    naive_net = Encoder4Editing(config)
    naive_net.load_state_dict(state)
    naive_net = naive_net.to(device).eval()
    average = latent_avg.to(device)
    naive = "naive: 1 image at a time, NCHW, no_grad, fp32"
    methods: dict[str, Callable[[], object]] = {
        naive: lambda: naive_encode(naive_net, average, images, device)
    }
    variants = [("fp32", False)] + ([("fp16 autocast", True)] if device.type == "cuda" else [])
    layout = "channels_last, " if device.type == "cpu" else ""
    for label, fp16 in variants:
        encoder = encoder_from_checkpoint(checkpoint, device, fp16=fp16)
        for batch_size in (1, 8):
            name = f"ours: encode_images batch {batch_size}, {layout}no_grad, {label}"
            methods[name] = lambda e=encoder, b=batch_size: ours_encode(e, images, b)

    timings = best_of(methods, rounds)
    reference = timings[naive]
    rows = []
    for name, timing in timings.items():
        # On CUDA the work is on the GPU: only the wall clock means something.
        per_cpu = (
            f"{n_images / timing.cpu:.2f} | {reference.cpu / timing.cpu:.2f}x"
            if device.type == "cpu"
            else "- | -"
        )
        rows.append(
            f"| {name} | {n_images / timing.wall:.2f} | {reference.wall / timing.wall:.2f}x | {per_cpu} |"
        )
    return rows


def load_rows(config: EncoderConfig, rounds: int) -> list[str]:
    state = random_encoder_state_dict(config, seed=0)
    checkpoint = {
        "state_dict": {f"encoder.{k}": v for k, v in state.items()},
        "opts": e4e_opts(config.stylegan_size),
        "latent_avg": torch.randn(config.n_styles, 512),
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "e4e.pt"
        torch.save(checkpoint, path)
        size_mb = path.stat().st_size / 2**20
        del checkpoint, state

        # Loading is lazy (memory-mapped tensors fault in on first use), so each load is timed up to
        # the end of its first forward pass: that is when the model is really ready.
        x = torch.zeros(1, 3, config.input_size, config.input_size)

        def naive_load() -> None:
            net = Encoder4Editing(config)  # pSp builds (and randomly initialises) the module first
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            encoder_part, _ = split_state_dict(loaded["state_dict"])
            net.load_state_dict(encoder_part, strict=True)
            with torch.no_grad():
                net.eval()(x)

        def ours_load() -> None:
            load_encoder(path).encode(x, add_latent_avg=False)

        timings = best_of({"naive": naive_load, "ours": ours_load}, rounds)
        naive, ours = timings["naive"].wall, timings["ours"].wall
    return [
        f"| naive: init module + torch.load whole file + copy + first forward ({size_mb:.0f} MB file) | {naive:.2f} | 1.00x |",
        f"| ours: load_encoder (mmap, meta module, assign) + first forward | {ours:.2f} | {naive / ours:.2f}x |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny config, < 60 s")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: per-core figures)"
    )
    parser.add_argument("--output", default=str(BENCH / "results" / "encoder.md"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)  # fmt: skip
    if args.quick:
        config = EncoderConfig(n_styles=10, units_per_stage=(1, 1, 1, 1), input_size=64)
        n_images, rounds = 8, 3
    else:
        config = EncoderConfig()
        n_images, rounds = 8, 2
    cpu_name = "CPU" if device.type == "cpu" else torch.cuda.get_device_name(device)
    title = (
        f"e4e encoder, {'quick (tiny) config' if args.quick else 'official config'}: "
        f"IR-SE units {config.units_per_stage}, {config.n_styles} styles, {config.input_size}-px input, "
        f"random weights; {cpu_name}, {torch.get_num_threads()} torch threads; {n_images} aligned 512-px faces "
        f"per call (preprocessing included); best of {rounds} interleaved rounds."
    )
    print(title, flush=True)
    lines = [
        title,
        "",
        "| method | images/s (wall) | vs naive | images/s per CPU-second | vs naive |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += throughput_rows(config, device, n_images, rounds)
    lines += ["", "| checkpoint load | seconds | vs naive |", "| --- | ---: | ---: |"]
    lines += load_rows(config, rounds)
    table = "\n".join(lines) + "\n"
    print(table)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
