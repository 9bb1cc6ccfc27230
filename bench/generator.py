"""Generator (StyleGAN2) throughput and load time: ours vs the straightforward way, in one run.

Throughput (images/s, W → image, constant noise):
* naive: the straightforward port: one image per call, float32, the literal modulated conv (one
  grouped conv with per-sample weights, as rosinality/NVlabs inference do), `torch.no_grad()`.
* ours, grouped: the same math for the whole batch in one call, `torch.inference_mode()`
  (bit-identical to the reference implementations; the library's default).
* ours, batched: activations scaled by the styles, one shared-weight conv per layer for the whole
  batch, demodulation applied to the outputs, channels_last (what the service runs; equal to the
  reference up to float rounding). On CUDA also fp16 for the top 4 resolutions with clamping.

The naive way's rate does not depend on the batch (it makes one image per call), so it has one
row per size, and a second, identical copy of it runs in the same rounds: the gap between the two
copies is the noise of this machine, which any claimed gain has to exceed. All methods of a size
run interleaved; best and median rounds are shown.

`low_prior`: one Adam step of one code each, 4 codes: one by one (`low_prior`) vs batched
(`low_prior_batch`, what the synthesize stage runs for the tasks of a worker batch).

Load time of a 1024-px rosinality checkpoint, each followed by the first image (loading is lazy:
the first forward pass pays for the page faults of memory-mapped tensors):
* naive: build the module (random init of every weight), `torch.load`, `load_state_dict` (copy).
* ours: `load_generator`: strict layout check, allocation only, the checkpoint tensors adopted.

    python bench/generator.py            # 256 and 1024 px config-f (random weights), batch 1 and 8
    python bench/generator.py --quick    # a tiny 64-px config (< 60 s)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from services.generator.checkpoint import load_generator  # noqa: E402
from services.generator.model import Generator, GeneratorConfig, default_channels  # noqa: E402
from services.generator.random_weights import write_rosinality_checkpoint  # noqa: E402


def rounds_of(methods: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each method in each of `rounds` interleaved rounds (a, b, c, a, b, c, ...), after
    one warm-up call each."""
    for run in methods.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, run in methods.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def synced(device: torch.device, run: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        out = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return call


def throughput_rows(
    config: GeneratorConfig, batches: list[int], device: torch.device, rounds: int
) -> list[str]:
    generator = Generator(config).to(device).eval().requires_grad_(False)
    w = torch.randn(max(batches), config.style_dim, generator=torch.Generator().manual_seed(0)).to(device)

    def naive(batch: int) -> Callable[[], object]:
        def run() -> object:
            generator.set_runtime(modconv="grouped", channels_last=False, fp16_resolutions=0)
            with torch.no_grad():
                return [generator.synthesize(w[i : i + 1]) for i in range(batch)]

        return run

    def ours(batch: int, modconv: str, fp16: bool) -> Callable[[], object]:
        def run() -> object:
            generator.set_runtime(
                modconv=modconv, channels_last=modconv == "batched", fp16_resolutions=4 if fp16 else 0
            )
            with torch.inference_mode():
                return generator.synthesize(w[:batch])

        return run

    methods: dict[str, tuple[int, Callable[[], object]]] = {
        "naive (1 image per call, fp32)": (1, naive(1)),
        "naive again (the same work: the noise)": (1, naive(1)),
    }
    for batch in batches:
        methods[f"ours, grouped (exact), batch {batch}"] = (batch, ours(batch, "grouped", False))
        methods[f"ours, batched + channels_last, batch {batch}"] = (batch, ours(batch, "batched", False))
        if device.type == "cuda":
            methods[f"ours, batched + channels_last + fp16 top-4, batch {batch}"] = (
                batch,
                ours(batch, "batched", True),
            )
    times = rounds_of({name: synced(device, run) for name, (_, run) in methods.items()}, rounds)
    naive_times = times["naive (1 image per call, fp32)"]
    base_best, base = 1 / min(naive_times), 1 / statistics.median(naive_times)
    rows = []
    for name, (batch, _) in methods.items():
        best, middle = batch / min(times[name]), batch / statistics.median(times[name])
        rows.append(
            f"| {device.type} | {config.size} | {name} | {best:.3g} | {middle:.3g} | {best / base_best:.2f}× | "
            f"{middle / base:.2f}× |"
        )
    print("\n".join(rows), flush=True)
    return rows


def low_prior_rows(config: GeneratorConfig, codes: int, steps: int, rounds: int) -> list[str]:
    from services.generator.manipulate import low_prior, low_prior_batch

    generator = Generator(config).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(codes, generator.n_latent, config.style_dim, generator=g) * 0.3
    targets = [torch.rand(3, config.size, config.size, generator=g) * 2 - 1 for _ in range(codes)]
    size = min(256, config.size)
    times = rounds_of(
        {
            "one by one (`low_prior`)": lambda: [
                low_prior(generator, w[i], targets[i], steps=steps, loss_size=size) for i in range(codes)
            ],
            "batched (`low_prior_batch`)": lambda: low_prior_batch(
                generator, w, targets, steps=steps, loss_size=size
            ),
        },
        rounds,
    )
    base = statistics.median(times["one by one (`low_prior`)"])
    return [
        f"| {config.size} | {size} | {codes} | {name} | {codes * steps / min(values):.3g} | "
        f"{codes * steps / statistics.median(values):.3g} | {base / statistics.median(values):.2f}× |"
        for name, values in times.items()
    ]


def load_rows(size: int, channels: dict[int, int], rounds: int) -> list[str]:
    with tempfile.TemporaryDirectory() as folder:
        path = write_rosinality_checkpoint(
            Path(folder) / "g.pt", size=size, max_channels=max(channels.values())
        )

        w = torch.zeros(1, 512)

        def first_image(generator: Generator) -> object:
            with torch.inference_mode():
                return generator.synthesize(w[:, : generator.style_dim])

        def naive() -> object:
            config = GeneratorConfig(size, channels=channels)
            generator = Generator(config)  # random init of every weight, then overwritten
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            generator.load_state_dict(checkpoint["g_ema"], strict=True)
            generator.latent_avg.copy_(checkpoint["latent_avg"])
            return first_image(generator)

        times = rounds_of({"naive": naive, "ours": lambda: first_image(load_generator(path))}, rounds)
    naive_s, ours_s = (statistics.median(times[k]) for k in ("naive", "ours"))
    return [
        f"| {size} | build (random init) + torch.load + load_state_dict + first image | "
        f"{min(times['naive']):.2f} / {naive_s:.2f} | 1.00× |",
        f"| {size} | `load_generator` (strict check, no init, tensors adopted) + first image | "
        f"{min(times['ours']):.2f} / {ours_s:.2f} | {naive_s / ours_s:.2f}× |",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny 64-px config, < 60 s")
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds per method (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    rounds = args.rounds or 3
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if args.quick:
        configs = [GeneratorConfig(64, channels=default_channels(64, max_channels=64))]
        batches, load_size = [1, 4], 64
    else:
        configs = [GeneratorConfig(256), GeneratorConfig(1024)]
        batches, load_size = [1, 8], 1024

    rows = [
        "| device | size | method | images/s (best) | images/s (median) | vs naive (bests) | vs naive (medians) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for device in devices:
        for config in configs:
            rows += throughput_rows(config, batches, device, rounds)
    channels = configs[-1].channels if args.quick else default_channels(load_size)
    load = [
        "| size | method | seconds (best / median) | speed-up (medians) |",
        "| --- | --- | ---: | ---: |",
        *load_rows(load_size, channels, rounds),
    ]
    refine_config = configs[0] if args.quick else GeneratorConfig(256)
    refine = [
        "| generator px | loss px | codes | method | steps/s (best) | steps/s (median) | vs one by one |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
        *low_prior_rows(refine_config, 4, 2, rounds),
    ]

    note = (
        f"{'Quick run (tiny 64-px config, max 64 channels)' if args.quick else 'Config-f channel tables (random weights)'}; "
        f"{torch.get_num_threads()} CPU threads; {rounds} interleaved rounds after a warm-up (best and median). "
        "`grouped` is bit-identical to rosinality's float32 output; `batched` differs by float rounding (~1e-6 relative). "
        "On a shared CPU the rates move by tens of percent between runs: the two naive rows, which do the same work, "
        "show how much; a difference smaller than theirs is noise."
    )
    table = "\n".join(
        [
            "### Throughput (W → image)", "", *rows, "",
            "### `low_prior` batched across tasks", "", *refine, "",
            "### Checkpoint load", "", *load, "", note, "",
        ]
    )  # fmt: skip
    out = BENCH / "results" / "generator.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table)
    print(table)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
