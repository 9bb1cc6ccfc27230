"""Stable Diffusion images/s: the `diffuse` stage vs diffusers' pipeline called directly, in one run.

The prompts job mode runs Stable Diffusion as the generator's `diffuse` stage
(services/generator/prompts_stage.py). This bench shows what the stage costs over the pipeline:

* naive: what a user would write: `StableDiffusionPipeline.from_pretrained(folder)` and one call
  `pipeline(prompt=[...], negative_prompt=[...], num_inference_steps=S, guidance_scale=7.5,
  generator=[torch.Generator("cpu").manual_seed(s), ...], output_type="np")` for the whole batch
  (progress bar off). It stops at float arrays: no uint8, nothing encoded, nothing written.
* stage: the whole `diffuse` stage handler on the same prompts and seeds, one `Task` per image:
  parse and check each `DiffusePayload`, group the batch, `DiffusionModel.generate` (the same
  pipeline call, the same per-image CPU generators, then uint8), QOI-encode each image and write it
  to the blob store (a local folder; `store_pool` None, so the encoding and writing are timed too).

A second, identical copy of the naive call runs in the same rounds: the gap between the two copies
is the noise of this machine, which any difference between naive and stage has to exceed. All run
interleaved (timing.interleaved); best (min) and median rounds are shown. Both sides run in one
process with the same torch thread count (`--threads`). After the rounds the stage's images are
decoded from the blobs and compared with the naive call's, rounded to uint8.

Sizes:

* default: the project's tiny random pipeline (services/generator/random_diffusion.py: 64-px
  images), saved as a diffusers folder, on the CPU; batch 8, 10 steps. On a machine with CUDA the
  run adds the SD v1.x-sized case below on the GPU.
* `--device cuda --size 512 --fp16`: Stable Diffusion v1.x's networks with random weights (UNet
  (320, 640, 1280, 1280) with cross-attention dim 768, CLIP text model 768 wide x 12 layers, SD's
  VAE (128, 256, 512, 512)), built in memory and handed to both sides; batch 8, 20 steps. Only this
  case runs; the report is printed (written only with `--output`).
* `--dry-run`: the same SD v1.x architecture at tiny widths, 64 px, batch 2, 2 steps, one round, on
  any device (CPU here): proves the full-size code path runs; nothing written.
* `--quick`: the tiny pipeline, batch 2, 2 steps, 2 rounds (`bench/run_all.py --quick`).

    python bench/diffusion.py                              # CPU, tiny random pipeline (~1 min, 2 cores)
    python bench/diffusion.py --device cuda --size 512 --fp16
    python bench/diffusion.py --dry-run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from timing import interleaved  # noqa: E402

PIPELINE = "stable-diffusion-2-1"  # the registry name the tiny folder is saved under
GUIDANCE = 7.5
PROMPTS = (
    "a portrait photo of an old man, studio light",
    "a close-up photo of a young woman smiling",
    "a painting of a bearded man in a hat",
    "a photo of a child with curly hair, outdoors",
)
NEGATIVE = ("blurry", "", "low quality, cartoon", "")


@dataclass(frozen=True)
class Case:
    """One measured configuration."""

    label: str
    device: torch.device
    fp16: bool
    size: int  # image side; 0: the tiny random pipeline (64 px)
    tiny_widths: bool  # SD v1.x architecture at tiny widths (--dry-run)
    batch: int
    steps: int
    rounds: int

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.fp16 and self.device.type == "cuda" else torch.float32


# ---- an SD v1.x-shaped random pipeline (also used by bench/gpu.py) ------------------------------


def sd1_pipeline(size: int = 512, *, tiny: bool = False, seed: int = 0):  # -> StableDiffusionPipeline
    """Stable Diffusion v1.x's networks with random weights, in memory (speed does not depend on the
    values). `tiny`: the same architecture (4 UNet levels, 3 with cross-attention, 2 layers per block;
    4 VAE levels; a 2-layer text model) at small widths, for dry runs.

    Not v1.x: the tokenizer (byte-level, ~500 tokens instead of CLIP's 49,408 BPE merges; the
    embedding table keeps v1.x's 49,408 rows; one lookup per token either way) and the scheduler (DDIM, as the project's tiny pipeline, instead of
    PNDM: exactly `steps` UNet calls; the scheduler's own arithmetic is negligible)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from services.generator.random_diffusion import assemble_pipeline, byte_vocab

    torch.manual_seed(seed)
    unet_widths, vae_widths, groups = ((32, 32, 64, 64), (8, 8, 16, 16), 8) if tiny else (None, None, 32)
    text = (32, 64, 2, 4) if tiny else (768, 3072, 12, 12)  # hidden, intermediate, layers, heads
    unet = UNet2DConditionModel(
        sample_size=size // 8,
        block_out_channels=unet_widths or (320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=text[0],  # SD v1.x: 768 (diffusers' default is 1280)
        attention_head_dim=4 if tiny else 8,  # v1.x's 8 heads
        norm_num_groups=groups,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=vae_widths or (128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        norm_num_groups=groups,
        sample_size=size,
    )
    vocab = byte_vocab()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab) if tiny else 49408,  # v1.x's table (ids above the byte vocab unused)
            hidden_size=text[0],
            intermediate_size=text[1],
            num_hidden_layers=text[2],
            num_attention_heads=text[3],
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=text[0],
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    pipeline = assemble_pipeline(unet, vae, text_encoder, vocab)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def parameters(pipeline: Any) -> str:
    counts = {
        name: sum(p.numel() for p in getattr(pipeline, name).parameters())
        for name in ("unet", "vae", "text_encoder")
    }
    return ", ".join(f"{name} {n / 1e6:.3g} M" for name, n in counts.items())


# ---- the two sides -------------------------------------------------------------------------------


def synced(device: torch.device, call: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        out = call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return run


def naive_call(pipeline: Any, batch: int, steps: int, width: int) -> Callable[[], Any]:
    """diffusers' pipeline called directly on the batch, as a user would."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    negatives = [NEGATIVE[i % len(NEGATIVE)] for i in range(batch)]

    def run() -> Any:
        return pipeline(
            prompt=prompts,
            negative_prompt=negatives,
            num_inference_steps=steps,
            guidance_scale=GUIDANCE,
            width=width,
            height=width,
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in range(batch)],
            output_type="np",
        ).images

    return run


def stage_tasks(batch: int, steps: int, width: int) -> list:
    from services.common.queue import Task

    return [
        Task.make(
            "bench-job",
            f"p{i}",
            "diffuse",
            {
                "prompt": PROMPTS[i % len(PROMPTS)],
                "negative_prompt": NEGATIVE[i % len(NEGATIVE)],
                "seed": i,
                "guidance_scale": GUIDANCE,
                "steps": steps,
                "width": width,
                "height": width,
                "pipeline": PIPELINE,
            },
        )
        for i in range(batch)
    ]


def measure(case: Case, workdir: Path) -> tuple[list[str], str]:
    """Table rows (naive, naive again, stage) and a one-line note of what ran."""
    from services.common.blobs import BlobStore
    from services.common.images import decode_image
    from services.common.model_holder import LazyModel
    from services.generator.diffusion import DiffusionModel
    from services.generator.prompts_stage import diffuse_stage, diffusion_models
    from tests.helpers.services import settings_for

    weights = workdir / "weights"
    if case.size == 0:
        # The project's tiny random pipeline, saved as a diffusers folder: the stage loads it the way
        # the service does (registry, strict loader), the naive side with diffusers' from_pretrained.
        from diffusers import StableDiffusionPipeline

        from services.generator.random_diffusion import write_random_diffusion_folder

        folder = write_random_diffusion_folder(weights / PIPELINE, seed=3)
        settings = settings_for(
            workdir, weights_dir=str(weights), batch_size=case.batch, device=str(case.device), fp16=case.fp16
        )
        models = diffusion_models(settings)
        pipeline = StableDiffusionPipeline.from_pretrained(
            folder, local_files_only=True, dtype=case.dtype
        ).to(case.device)
        pipeline.set_progress_bar_config(disable=True)
        width = 64
        what = "the project's tiny random pipeline (UNet (32, 64), 2-layer text model, 2-level VAE), 64 px"
    else:
        # SD v1.x-sized: built once in memory, the same pipeline object handed to both sides.
        with torch.device(case.device):  # random init where it runs (seconds, not minutes, at full size)
            pipeline = sd1_pipeline(case.size, tiny=case.tiny_widths)
        if case.dtype != torch.float32:
            pipeline = pipeline.to(case.device, case.dtype)
        settings = settings_for(workdir, weights_dir=str(weights), batch_size=case.batch)
        models = {PIPELINE: LazyModel.ready("diffusion", DiffusionModel(pipeline, case.device))}
        width = case.size
        shape = "SD v1.x architecture at tiny widths" if case.tiny_widths else "SD v1.x-sized random pipeline"
        what = f"{shape} ({parameters(pipeline)}), {width} px"
    blobs = BlobStore(settings.blob_url)
    handler = diffuse_stage(models, blobs, settings)
    tasks = stage_tasks(case.batch, case.steps, width)

    def stage() -> list:
        results = handler(tasks)
        failed = [r for r in results if not r.ok]
        if failed:
            raise RuntimeError(f"diffuse stage failed: {failed[0].error_code} {failed[0].error_message}")
        return results

    naive = naive_call(pipeline, case.batch, case.steps, width)
    methods = {
        "naive: diffusers pipeline called directly": naive,
        "naive again (the same work: the noise)": naive,
        "`diffuse` stage (parse, generate, QOI, write blobs)": stage,
    }
    times = interleaved({name: synced(case.device, call) for name, call in methods.items()}, case.rounds)

    reference = naive()
    reference = np.clip(np.rint(np.asarray(reference) * 255.0), 0, 255).astype(int)  # as the stage rounds
    made = [np.asarray(decode_image(blobs.get(r.output["image"])), dtype=int) for r in stage()]
    difference = max(int(np.abs(image - ref).max()) for image, ref in zip(made, reference, strict=True))

    base = times["naive: diffusers pipeline called directly"]
    rows = []
    for name, values in times.items():
        best, middle = case.batch / min(values), case.batch / statistics.median(values)
        rows.append(
            f"| {case.label} | {name} | {best:.3g} | {middle:.3g} | "
            f"{min(base) / min(values):.2f}× | {statistics.median(base) / statistics.median(values):.2f}× |"
        )
    threads = f", {torch.get_num_threads()} torch threads" if case.device.type == "cpu" else ""
    note = (
        f"**{case.label}**: {what}; batch {case.batch}, {case.steps} DDIM steps, guidance {GUIDANCE} "
        f"(the UNet runs 2 rows per image); {case.device.type}{threads}, {str(case.dtype).removeprefix('torch.')}; "
        f"{case.rounds} interleaved rounds after a warm-up. The stage's images (decoded from the blobs) "
        f"differ from the naive call's, rounded to uint8, by at most {difference}."
    )
    print("\n".join(rows), flush=True)
    return rows, note


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny pipeline, batch 2, 2 steps")
    parser.add_argument(
        "--dry-run", action="store_true", help="SD v1.x architecture at tiny widths, any device"
    )
    parser.add_argument("--device", default="", help="cpu or cuda; with --size: only that case")
    parser.add_argument("--size", type=int, default=0, help="SD v1.x-sized pipeline at this image side")
    parser.add_argument("--fp16", action="store_true", help="half precision (CUDA only)")
    parser.add_argument("--batch", type=int, default=0, help="images per call (default 8; 2 quick/dry)")
    parser.add_argument("--steps", type=int, default=0, help="default 10 (tiny), 20 (SD v1.x-sized)")
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds (default 6; 3 on CUDA)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads, both sides (default: torch's)"
    )
    parser.add_argument(
        "--output", default="", help="default: bench/results/diffusion.md for the default run"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench/diffusion.py: --device cuda, but torch sees no CUDA device here", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cudnn.benchmark = True

    def case(
        label: str, device: str, fp16: bool, size: int, tiny: bool, batch: int, steps: int, rounds: int
    ) -> Case:
        return Case(
            label,
            torch.device(device),
            fp16,
            size,
            tiny,
            args.batch or batch,
            args.steps or steps,
            args.rounds or rounds,
        )

    explicit = bool(args.size or args.device or args.fp16)
    if args.dry_run:
        device = args.device or "cpu"
        cases = [case(f"dry run, {device}", device, args.fp16, args.size or 64, True, 2, 2, 1)]
    elif args.quick:
        cases = [case("cpu, tiny", args.device or "cpu", False, 0, False, 2, 2, 2)]
    elif explicit:
        device = args.device or ("cuda" if cuda else "cpu")
        size = args.size
        name = f"{device}, {size or 64} px" + (", fp16" if args.fp16 and device.startswith("cuda") else "")
        cases = [case(name, device, args.fp16, size, False, 8, 20 if size else 10, 3 if cuda else 6)]
    else:
        cases = [case("cpu, tiny", "cpu", False, 0, False, 8, 10, 6)]
        if cuda:
            cases.append(case("cuda, SD v1.x 512 px, fp16", "cuda", True, 512, False, 8, 20, 3))

    rows = [
        "| case | method | images/s (best) | images/s (median) | vs naive (bests) | vs naive (medians) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    notes = []
    for one in cases:
        with tempfile.TemporaryDirectory(prefix="sfhq-diffusion-bench-") as tmp:
            case_rows, note = measure(one, Path(tmp))
        rows += case_rows
        notes.append(note)
        if one.device.type == "cuda":
            torch.cuda.empty_cache()
    if not (args.dry_run or args.quick or explicit or cuda):
        notes.append(
            "**cuda, SD v1.x 512 px, fp16**: not measured (torch sees no CUDA device here); "
            "`python bench/diffusion.py --device cuda --size 512 --fp16` measures it."
        )
    text = "\n".join([*rows, "", *[f"{note}\n" for note in notes]])
    print(text)
    output = args.output or ("" if args.dry_run or explicit else str(BENCH / "results" / "diffusion.md"))
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
