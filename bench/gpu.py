"""GPU benchmark: images/s per model, batched `low_prior`, end-to-end candidates/s, against the device's peak.

Runs in a few minutes on one CUDA device and prints one markdown report (also written to
bench/results/gpu.md, which `bench/run_all.py --assemble-only` puts into BENCHMARKS.md):

* the device, its peak FLOP/s (the datasheet's dense fp16 tensor-core and fp32 figures when the
  name is known, and a large matmul measured here);
* images/s of each model (StyleGAN2-1024 synthesis, e4e, CLIP ViT-L/14@336's image tower, BiSeNet
  at 256 and 512) at useful batch sizes, fp16 and fp32, and the fraction of peak that is, from the
  model's FLOPs per image counted on the meta device;
* `low_prior` steps/s (one Adam step of one code each) batched across 8 codes vs one code at a time;
* Stable Diffusion (the prompts mode's `diffuse` stage): images/s of an SD v1.x-sized random
  pipeline (bench/diffusion.py's `sd1_pipeline`) at 512x512, fp16, 20 DDIM steps, batch 1 and 8;
* end-to-end candidates/s of one inspiration job (default strategies) and one sampling job through
  the real services (gateway, Redis, the four model services on this GPU), full-size random weights.

Every timing is the min and median of interleaved rounds after a warm-up (cuDNN autotuning and
lazy loading happen in the warm-up), with the device synchronised around each.

    python bench/gpu.py                  # on a CUDA device (weights: full-size random, in a temp folder)
    python bench/gpu.py --dry-run        # tiny sizes, any device (CPU in CI): proves the script runs
    python bench/gpu.py --skip-e2e       # models and low_prior only
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

# Dense (no sparsity) datasheet peaks in TFLOP/s: fp16/bf16 tensor cores, fp32 (non-tensor-core).
DATASHEET_TFLOPS: dict[str, tuple[float, float]] = {
    "H200": (989.0, 67.0),
    "H100 SXM": (989.0, 67.0),
    "H100 PCIe": (756.0, 51.0),
    "H100": (989.0, 67.0),
    "A100": (312.0, 19.5),
    "L40S": (362.0, 91.6),
    "L4": (121.0, 30.3),
    "A10": (125.0, 31.2),
    "RTX 4090": (165.2, 82.6),
    "T4": (65.0, 8.1),
}


@dataclass
class Sizes:
    """What one run measures (full, or tiny for `--dry-run`)."""

    generator: int
    generator_channels: int | None  # None = config-f's table
    encoder_units: tuple[int, int, int, int]
    encoder_input: int
    clip_full: bool
    parser_sizes: tuple[int, ...]
    batches: tuple[int, ...]
    rounds: int
    low_prior_batch: int
    low_prior_loss_size: int
    e2e_images: int
    e2e_samples: int
    e2e_low_prior_steps: int
    matmul: int
    sd_size: int  # Stable Diffusion image side
    sd_tiny: bool  # SD v1.x architecture at tiny widths
    sd_steps: int
    sd_batches: tuple[int, ...]


FULL = Sizes(
    1024, None, (3, 4, 14, 3), 256, True, (256, 512), (1, 8, 32), 3, 8, 256, 24, 48, 30, 8192,
    sd_size=512, sd_tiny=False, sd_steps=20, sd_batches=(1, 8),
)  # fmt: skip
DRY = Sizes(
    32, 16, (1, 1, 1, 1), 64, False, (64,), (1, 2), 2, 2, 16, 1, 1, 2, 256,
    sd_size=64, sd_tiny=True, sd_steps=2, sd_batches=(1, 2),
)  # fmt: skip


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rounds(calls: dict[str, Callable[[], object]], n: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each, interleaved: one warm-up each, then `n` rounds of each in turn."""
    for call in calls.values():
        call()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(n):
        for name, call in calls.items():
            synchronize(device)
            started = time.perf_counter()
            call()
            synchronize(device)
            times[name].append(time.perf_counter() - started)
    return times


def device_peaks(device: torch.device, sizes: Sizes) -> tuple[str, dict[str, float], dict[str, float]]:
    """The device name, datasheet peaks (FLOP/s; empty when unknown) and measured matmul peaks."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    sheet: dict[str, float] = {}
    for key, (fp16, fp32) in DATASHEET_TFLOPS.items():
        if key in name:
            sheet = {"fp16": fp16 * 1e12, "fp32": fp32 * 1e12}
            break
    measured = {}
    n = sizes.matmul
    for label, dtype in dtypes(device):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        times = rounds({"mm": lambda a=a, b=b: a @ b}, sizes.rounds + 2, device)["mm"]
        measured[label] = 2 * n**3 / min(times)
    return name, sheet, measured


def dtypes(device: torch.device) -> list[tuple[str, torch.dtype]]:
    return (
        [("fp16", torch.float16), ("fp32", torch.float32)]
        if device.type == "cuda"
        else [("fp32", torch.float32)]
    )


def flops_per_image(
    build: Callable[[], torch.nn.Module], forward: Callable[[torch.nn.Module, int], object]
) -> float:
    """FLOPs of one image's forward pass, counted on the meta device (no memory, no time)."""
    with torch.device("meta"):
        model = build().requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        forward(model, 2)
    return counter.get_total_flops() / 2


# ---- the models --------------------------------------------------------------------------------


def model_cases(
    sizes: Sizes, device: torch.device
) -> list[tuple[str, Callable[[], torch.nn.Module], Callable]]:
    """(name, build, forward(model, batch)) of each model, with random weights at the run's sizes."""
    from services.annotator.parsing import BiSeNet
    from services.encoder.model import Encoder4Editing, EncoderConfig
    from services.generator.model import Generator, GeneratorConfig, default_channels

    channels = default_channels(sizes.generator, max_channels=sizes.generator_channels or 512)

    def generator() -> torch.nn.Module:
        return Generator(GeneratorConfig(sizes.generator, channels=channels), random_init=False)

    def synthesize(g: torch.nn.Module, batch: int) -> object:
        w = torch.randn(batch, g.n_latent, 512, device=next(g.parameters()).device)
        return g._synthesis(
            w, "const", None, g.size
        )  # synthesize() minus its input checks (meta has no values)

    def encoder() -> torch.nn.Module:
        return Encoder4Editing(
            EncoderConfig(units_per_stage=sizes.encoder_units, input_size=sizes.encoder_input)
        )

    def encode(net: torch.nn.Module, batch: int) -> object:
        p = next(net.parameters())
        x = torch.randn(batch, 3, sizes.encoder_input, sizes.encoder_input, device=p.device, dtype=p.dtype)
        return net(x.contiguous(memory_format=torch.channels_last))

    def clip() -> torch.nn.Module:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        from services.search.random_weights import FULL_SIZE_CONFIG

        config = FULL_SIZE_CONFIG["vision_config"] if sizes.clip_full else {
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8, "projection_dim": 32,
        }  # fmt: skip
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**config)).eval()

    def embed(model: torch.nn.Module, batch: int) -> object:
        p = next(model.parameters())
        size = model.config.image_size
        return model(
            pixel_values=torch.randn(batch, 3, size, size, device=p.device, dtype=p.dtype)
        ).image_embeds

    cases: list[tuple[str, Callable[[], torch.nn.Module], Callable]] = [
        (f"StyleGAN2-{sizes.generator} synthesis", generator, synthesize),
        (f"e4e ({sizes.encoder_input} px)", encoder, encode),
        ("CLIP ViT-L/14@336 image tower" if sizes.clip_full else "CLIP (tiny) image tower", clip, embed),
    ]
    for size in sizes.parser_sizes:

        def parse(net: torch.nn.Module, batch: int, size: int = size) -> object:
            p = next(net.parameters())
            x = torch.randn(batch, 3, size, size, device=p.device, dtype=p.dtype)
            return net.main_logits(x.contiguous(memory_format=torch.channels_last)).argmax(1)

        cases.append((f"BiSeNet {size} px", lambda: BiSeNet().eval(), parse))
    return cases


def prepared(
    build: Callable[[], torch.nn.Module], name: str, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    model = build()
    if hasattr(model, "reset_parameters") and name.startswith("StyleGAN2"):
        model.reset_parameters()  # built without init: give it values
    model = model.to(device)
    if name.startswith("StyleGAN2"):
        # The generator's own fp16 mode (top 4 resolutions, clamped), as the service runs it.
        half = dtype == torch.float16
        cuda = device.type == "cuda"
        model.set_runtime(
            fp16_resolutions=4 if half else 0, modconv="batched" if cuda else "grouped", channels_last=cuda
        )
        return model.eval()
    model = model.to(dtype)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def bench_models(sizes: Sizes, device: torch.device, peaks: dict[str, float]) -> list[str]:
    lines = [
        "| model | GFLOP / image | dtype | batch | images/s (best) | images/s (median) | of peak |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, build, forward in model_cases(sizes, device):
        flops = flops_per_image(build, forward)
        for label, dtype in dtypes(device):
            model = prepared(build, name, device, dtype)
            calls = {}
            for batch in sizes.batches:
                calls[str(batch)] = lambda batch=batch, model=model, forward=forward: _inference(
                    model, forward, batch
                )
            times = rounds(calls, sizes.rounds, device)
            for batch in sizes.batches:
                lines.append(_throughput_row(name, flops, label, batch, times[str(batch)], peaks.get(label)))
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return lines


def _throughput_row(
    name: str, flops: float, dtype: str, batch: int, seconds: list[float], peak: float | None, digits: int = 1
) -> str:
    """One table row: images/s of the best and the median round, and the best's share of the peak."""
    best, median = batch / min(seconds), batch / statistics.median(seconds)
    share = f"{100 * best * flops / peak:.1f}%" if peak else "-"
    return f"| {name} | {flops / 1e9:,.2f} | {dtype} | {batch} | {best:,.{digits}f} | {median:,.{digits}f} | {share} |"


def _inference(model: torch.nn.Module, forward: Callable, batch: int) -> object:
    with torch.inference_mode():
        return forward(model, batch)


# ---- low_prior batched vs not ------------------------------------------------------------------


def bench_low_prior(sizes: Sizes, device: torch.device, fp16: bool) -> list[str]:
    from services.generator.engine import configure_runtime
    from services.generator.manipulate import low_prior, low_prior_batch
    from services.generator.model import Generator, GeneratorConfig, default_channels

    channels = default_channels(sizes.generator, max_channels=sizes.generator_channels or 512)
    generator = Generator(GeneratorConfig(sizes.generator, channels=channels)).to(device)
    generator = configure_runtime(generator, str(device), fp16)
    n = sizes.low_prior_batch
    codes = torch.randn(n, generator.n_latent, 512, device=device) * 0.3
    targets = [torch.rand(3, sizes.generator, sizes.generator, device=device) * 2 - 1 for _ in range(n)]
    steps, size = 2, sizes.low_prior_loss_size
    times = rounds(
        {
            "batched": lambda: low_prior_batch(generator, codes, targets, steps=steps, loss_size=size),
            "one by one": lambda: [
                low_prior(generator, codes[i], targets[i], steps=steps, loss_size=size) for i in range(n)
            ],
        },
        sizes.rounds,
        device,
    )
    lines = [
        f"`low_prior` steps/s (one Adam step of one code; {n} codes, loss at {size} px, generator {sizes.generator} px):",
        "",
        "| method | steps/s (best) | steps/s (median) | vs one by one |",
        "| --- | ---: | ---: | ---: |",
    ]
    reference = min(times["one by one"])
    for name, values in times.items():
        best, median = n * steps / min(values), n * steps / statistics.median(values)
        lines.append(f"| {name} | {best:,.1f} | {median:,.1f} | {reference / min(values):.2f}x |")
    return lines


# ---- Stable Diffusion ----------------------------------------------------------------------------


def _diffusion_bench():  # -> the bench/diffusion.py module (its SD v1.x-shaped pipeline builder)
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_diffusion", BENCH / "diffusion.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)  # registered first: its dataclasses look themselves up there
    return module


def sd_flops_per_image(build: Callable[[], object], size: int, steps: int) -> float:
    """FLOPs of one image, counted on the meta device: `steps` UNet calls on 2 rows (classifier-free
    guidance: prompt and negative prompt), the text encoder on those 2 prompts, one VAE decode."""
    with torch.device("meta"):
        pipeline = build()
    latent, hidden = size // 8, pipeline.text_encoder.config.hidden_size

    def count(forward: Callable[[], object]) -> float:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad(), torch.device("meta"):
            forward()
        return counter.get_total_flops()

    unet = count(
        lambda: pipeline.unet(
            torch.randn(2, 4, latent, latent),
            torch.tensor(1),
            encoder_hidden_states=torch.randn(2, 77, hidden),
        )
    )
    text = count(lambda: pipeline.text_encoder(torch.zeros(2, 77, dtype=torch.long)))
    vae = count(lambda: pipeline.vae.decode(torch.randn(1, 4, latent, latent)))
    return steps * unet + text + vae


def bench_diffusion(sizes: Sizes, device: torch.device, peaks: dict[str, float]) -> list[str]:
    """Images/s of diffusers' pipeline called directly (prompt + negative prompt, guidance 7.5, one
    CPU generator per image, output as numpy): the model's throughput; the `diffuse` stage's overhead
    over it is bench/diffusion.py's."""
    sd = _diffusion_bench()
    size, steps = sizes.sd_size, sizes.sd_steps
    label, dtype = dtypes(device)[0]  # fp16 on CUDA (the service's setting), fp32 on the CPU
    flops = sd_flops_per_image(lambda: sd.sd1_pipeline(size, tiny=sizes.sd_tiny), size, steps)
    with torch.device(device):  # random init on the device
        pipeline = sd.sd1_pipeline(size, tiny=sizes.sd_tiny)
    if dtype != torch.float32:
        pipeline = pipeline.to(device, dtype)
    name = "SD v1.x architecture, tiny widths" if sizes.sd_tiny else "Stable Diffusion v1.x (random)"
    calls = {str(batch): sd.naive_call(pipeline, batch, steps, size) for batch in sizes.sd_batches}
    times = rounds(calls, sizes.rounds, device)
    lines = [
        f"Stable Diffusion ({sd.parameters(pipeline)}), {size}x{size}, {steps} DDIM steps, guidance 7.5 "
        "(the UNet runs 2 rows per image), diffusers' pipeline called directly; GFLOP / image = the "
        "UNet's 2 rows x steps + the text encoder + one VAE decode:",
        "",
        "| pipeline | GFLOP / image | dtype | batch | images/s (best) | images/s (median) | of peak |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for batch in sizes.sd_batches:
        row = _throughput_row(
            f"{name}, {size} px", flops, label, batch, times[str(batch)], peaks.get(label), 2
        )
        lines.append(row)
    del pipeline
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return lines


# ---- end to end ----------------------------------------------------------------------------------


def write_weights(folder: Path, sizes: Sizes) -> None:
    """Random weights in the official layouts: full size for the real run, the demo set for a dry run."""
    if not sizes.clip_full:
        from services.random_weights import write_random_weights

        write_random_weights(folder)
        return
    from services.annotator.random_weights import write_random_bisenet_checkpoint
    from services.common.weights import WeightsRegistry
    from services.encoder.random_weights import write_random_e4e_checkpoint
    from services.search.random_weights import write_random_clip_folder

    registry = WeightsRegistry(folder)
    folder.mkdir(parents=True, exist_ok=True)
    e4e_path = write_random_e4e_checkpoint(
        registry.expected_path("e4e-ffhq-encode"), stylegan_size=sizes.generator
    )
    e4e = torch.load(e4e_path, map_location="cpu", weights_only=True)
    g_ema = {k.removeprefix("decoder."): v for k, v in e4e["state_dict"].items() if k.startswith("decoder.")}
    torch.save(
        {"g_ema": g_ema, "latent_avg": e4e["latent_avg"][0].clone()},
        registry.expected_path("stylegan2-ffhq-config-f"),
    )
    write_random_bisenet_checkpoint(registry.expected_path("bisenet-face-parsing"))
    write_random_clip_folder(registry.expected_path("clip-vit-l-14-336"), tiny=False)
    registry.mark_random("bench/gpu.py: full-size random weights")


@contextlib.contextmanager
def cluster(workdir: Path, weights: Path, device: torch.device) -> Iterator[str]:
    """Gateway + the four model services on this device, an embedded Redis; yields the gateway address."""
    from services.common.embedded_redis import EmbeddedRedis
    from services.local_run import LocalCluster

    env = {
        "SFHQ_DEVICE": device.type if device.type == "cpu" else str(device),
        "SFHQ_BATCH_SIZE": "16" if device.type == "cuda" else "4",
    }
    with (
        EmbeddedRedis(dir=workdir / "redis") as redis,
        LocalCluster(workdir, redis.url, weights, extra_env=env, data_roots=(workdir,)) as services,
    ):
        services.start_all(600)
        yield services.addr("gateway")


def run_job(gateway: str, **spec_options: object) -> tuple[int, float]:
    """Submit one job, wait for it; returns (candidates written, seconds from submit to done)."""
    from sfhq.sdk import Client, build_spec

    with Client(gateway, timeout=120) as client:
        started = time.perf_counter()
        job = client.submit(build_spec(disable_dedup=True, **spec_options))  # type: ignore[arg-type]
        final = client.wait(job.job_id, timeout=3600)
        elapsed = time.perf_counter() - started
        if final.state != 5:  # JOB_STATE_SUCCEEDED
            raise RuntimeError(f"job {job.job_id} ended in state {final.state}: {final}")
        return int(final.counts.written), elapsed


def bench_e2e(sizes: Sizes, device: torch.device) -> list[str]:
    from tests.helpers.data import all_inspiration

    lines = ["| job | candidates written | seconds | candidates/s |", "| --- | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory(prefix="sfhq-gpu-bench-") as tmp:
        workdir = Path(tmp)
        write_weights(workdir / "weights", sizes)
        images = [str(p) for p in all_inspiration()]
        images = [images[i % len(images)] for i in range(sizes.e2e_images)]
        with cluster(workdir, workdir / "weights", device) as gateway:
            run_job(
                gateway, images=images[:1], strategies=["e4e_strict_prior"], output_uri=str(workdir / "warm")
            )
            jobs = {
                f"inspiration, {len(images)} images x (e4e_strict_prior, low_prior:steps={sizes.e2e_low_prior_steps})": dict(
                    images=images,
                    strategies=["e4e_strict_prior", f"low_prior:steps={sizes.e2e_low_prior_steps}"],
                ),
                f"sampling, {sizes.e2e_samples} samples": dict(mode="sampling", samples=sizes.e2e_samples),
            }
            for k, (name, options) in enumerate(jobs.items()):
                written, seconds = run_job(gateway, output_uri=str(workdir / f"out{k}"), **options)
                lines.append(f"| {name} | {written} | {seconds:.1f} | {written / seconds:.2f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on any device (CI)")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--output", default="", help="default: bench/results/gpu.md (not written by --dry-run)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type != "cuda" and not args.dry_run:
        print(
            "bench/gpu.py measures a CUDA device; none is here (use --dry-run to check the script)",
            file=sys.stderr,
        )
        return 2
    sizes = DRY if args.dry_run else FULL
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name, sheet, measured = device_peaks(device, sizes)
    report = [
        f"Device: **{name}**{' (dry run: tiny sizes, timings meaningless)' if args.dry_run else ''}; torch {torch.__version__}.",
        "",
        "| peak | fp16 TFLOP/s | fp32 TFLOP/s |",
        "| --- | ---: | ---: |",
        f"| datasheet (dense) | {sheet.get('fp16', 0) / 1e12:,.0f} | {sheet.get('fp32', 0) / 1e12:,.1f} |"
        if sheet
        else "| datasheet | unknown | unknown |",
        f"| measured ({sizes.matmul}x{sizes.matmul} matmul) | {measured.get('fp16', 0) / 1e12:,.1f} | {measured.get('fp32', 0) / 1e12:,.2f} |",
        "",
        "Model throughput with random weights (speed does not depend on the values); `of peak` = images/s x FLOPs per image / the datasheet peak (measured matmul peak when unknown):",
        "",
    ]
    peaks = sheet or measured
    report += bench_models(sizes, device, peaks)
    report += ["", *bench_low_prior(sizes, device, fp16=device.type == "cuda")]
    report += ["", *bench_diffusion(sizes, device, peaks)]
    if not args.skip_e2e:
        report += [
            "",
            "End to end through the real services (gateway, Redis, 4 model services on this device; dedup off):",
            "",
        ]
        report += bench_e2e(sizes, device)
    text = "\n".join(report) + "\n"
    print(text)
    output = args.output or ("" if args.dry_run else str(BENCH / "results" / "gpu.md"))
    if output:
        Path(output).write_text(text)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
