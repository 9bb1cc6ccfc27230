"""Annotator per-image costs on CPU: ours vs the naive way, side by side in one run.

* detection + 68 landmarks: naive = encoder4editing's script (dlib HOG at upsample 1 on the full
  image, keep the last face); ours = `FaceLandmarker.locate` (largest face; HOG at upsample 0 on a
  <= 400-px copy first, then upsample 1 on <= 800 px if that finds nothing; landmarks at full size);
* FFHQ alignment: the baseline is FFHQ's own recipe (`align_face(backend="exact")`: shrink, crop,
  blurred reflect-padding, supersampled quad transform, Lanczos); ours = `backend="opencv"` (the same
  steps, OpenCV's float32 blur with the same kernel, one bilinear warp), with the distribution of
  the per-pixel differences;
* BiSeNet parsing: PyTorch vs ONNX Runtime (argmax in the graph) at 512 and 256 px; bf16 agreement;
* the annotate stage (the real handler, one 1024-px candidate per task): before = PNG intermediate,
  PyTorch parser, segmentation PNG at level 6 (the previous defaults); after = QOI intermediate,
  ONNX Runtime parser, segmentation PNG at level 1.

Interleaved rounds, min / median. Parser weights are random (speed does not depend on the values).
Results go to bench/results/annotator.md.

    python bench/annotator.py            # full sizes
    python bench/annotator.py --quick    # fewer repeats, fewer cases (< 60 s)
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402

import services.annotator.service as annotator_service  # noqa: E402
from bench.timing import interleaved, median, ms  # noqa: E402
from services.annotator.align import align_face  # noqa: E402
from services.annotator.detect import FaceBox, FaceLandmarker, as_rgb_array  # noqa: E402
from services.annotator.faces import FaceAnnotator  # noqa: E402
from services.annotator.formats import segmentation_to_png  # noqa: E402
from services.annotator.parsing import _TorchRunner, load_bisenet, load_parser  # noqa: E402
from services.annotator.random_weights import write_random_bisenet_checkpoint  # noqa: E402
from services.common.blobs import BlobStore  # noqa: E402
from services.common.config import get_settings  # noqa: E402
from services.common.images import encode_image, encode_intermediate  # noqa: E402
from services.common.model_holder import LazyModel  # noqa: E402
from services.common.queue import Task  # noqa: E402
from tests.helpers.data import DATA as TESTDATA  # noqa: E402


def table(title: str, rows: list[tuple[str, list[float], list[float]]], per: float = 1.0) -> str:
    """rows: (method, seconds per round, the baseline's); ratios of medians."""
    lines = [f"| {title} | ms (min / median) | vs baseline (median) |", "| --- | ---: | ---: |"]
    for name, values, reference in rows:
        lines.append(f"| {name} | {ms(values, per)} | {median(reference) / median(values):.2f}x |")
    return "\n".join(lines)


def naive_e4e_landmarks(landmarker: FaceLandmarker, image: PIL.Image.Image) -> np.ndarray:
    """What encoder4editing's alignment script does: det(img, 1) on the full image, last face."""
    pixels = as_rgb_array(image)
    rects = landmarker.detector._detector(pixels, 1)
    rect = rects[-1]
    box = FaceBox(rect.left(), rect.top(), rect.right(), rect.bottom())
    return landmarker.predictor.predict(pixels, box)


def alignment_section(landmarker: FaceLandmarker, quick: bool, rounds: int) -> str:
    names = ["sd_02", "render3d_03"] if quick else ["sd_02", "sd_05", "render3d_01", "render3d_03"]
    settings = [(1024, 4096)] if quick else [(1024, 4096), (256, 256)]
    rows, histogram, lines = [], np.zeros(4), []
    for name in names:
        image = PIL.Image.open(TESTDATA / "inspiration" / f"{name}.jpg").convert("RGB")
        lm = landmarker.locate(image).landmarks68
        for output_size, transform_size in settings:
            a = (image, lm, output_size, transform_size)
            times = interleaved(
                {
                    "exact": lambda a=a: align_face(*a, backend="exact"),
                    "opencv": lambda a=a: align_face(*a, backend="opencv"),
                },
                rounds,
            )
            what = f"{name} ({image.width} px) -> {output_size} (transform {transform_size})"
            rows += [
                (f"{what}: baseline, FFHQ's recipe (exact)", times["exact"], times["exact"]),
                (f"{what}: ours, OpenCV", times["opencv"], times["exact"]),
            ]
            exact = np.asarray(align_face(*a, backend="exact"), dtype=int)
            difference = np.abs(exact - np.asarray(align_face(*a, backend="opencv"), dtype=int))
            counts = np.bincount(np.minimum(difference.ravel(), 3), minlength=4)
            histogram += counts
            lines.append(
                f"| {what} | {difference.mean():.3f} | {np.percentile(difference, 99):.0f} | {difference.max()} | "
                + " | ".join(f"{100 * c / difference.size:.2f}%" for c in counts)
                + " |"
            )
    share = " | ".join(f"{100 * c / histogram.sum():.2f}%" for c in histogram)
    return (
        table("FFHQ alignment", rows)
        + "\n\nPer-pixel |ours − exact| in grey levels (RGB channels), against FFHQ's recipe:\n\n"
        + "| case | mean | p99 | max | = 0 | = 1 | = 2 | >= 3 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        + "\n".join(lines)
        + f"\n| **all cases** | | | | {share} |"
        + "\n\n`SFHQ_ALIGN_BACKEND=exact` keeps the reference recipe; `opencv` is the default."
    )


def annotate_stage_section(checkpoint: Path, generated: PIL.Image.Image, rounds: int, threads: int) -> str:
    """The real annotate handler on one 1024-px candidate: previous defaults vs the current ones."""
    settings = get_settings(blob_url=tempfile.mkdtemp(prefix="sfhq-bench-"), device="cpu")
    blobs = BlobStore(settings.blob_url)
    blobs.put("c/candidate.png", encode_image(generated, "png"))
    blobs.put("c/candidate.qoi", encode_intermediate(generated))
    blobs.put_npy("c/features.npy", np.ones(768, np.float32))
    landmarker = LazyModel.ready("landmarks68", FaceLandmarker.shared())
    handlers = {}
    for name, backend in (("before", "torch"), ("after", "onnx")):
        parser = LazyModel.ready("parser", load_parser(checkpoint, backend=backend, num_threads=threads))
        handlers[name] = annotator_service.annotate_stage(FaceAnnotator(landmarker, parser), blobs, settings)
    dataset = Path(settings.blob_url) / "dataset"

    def run(name: str, image_key: str) -> None:
        payload = {
            "image": image_key, "features": "c/features.npy", "feature_key": "CLIP_ViTL_14@336",
            "stem": f"SFHQ_pt1_{name}", "dataset_uri": str(dataset), "image_size": 1024,
            "jpeg_quality": 95, "working_size": 256, "detect_faces": False,
        }  # fmt: skip
        original = annotator_service.segmentation_to_png
        if name == "before":  # the previous default level
            annotator_service.segmentation_to_png = functools.partial(segmentation_to_png, compress_level=6)
        try:
            (result,) = handlers[name]([Task.make("j", "i", "annotate", payload)])
        finally:
            annotator_service.segmentation_to_png = original
        assert result.ok, result.error_message

    times = interleaved(
        {
            "before": lambda: run("before", "c/candidate.png"),
            "after": lambda: run("after", "c/candidate.qoi"),
        },
        rounds,
    )
    return table(
        "annotate stage, one 1024-px candidate per task (the real handler)",
        [
            (
                "before: PNG intermediate, PyTorch parser, segmentation PNG level 6",
                times["before"],
                times["before"],
            ),
            (
                "after: QOI intermediate, ONNX Runtime parser (argmax in the graph), level 1",
                times["after"],
                times["before"],
            ),
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=str(BENCH / "results" / "annotator.md"))
    args = parser.parse_args()
    rounds = 2 if args.quick else 7
    threads = torch.get_num_threads()

    inspiration = PIL.Image.open(TESTDATA / "inspiration" / "sd_02.jpg").convert("RGB")
    photo = inspiration.resize((2048, 2048), PIL.Image.Resampling.BICUBIC)  # a large camera photo
    generated = (
        PIL.Image.open(TESTDATA / "faces" / "sfhq_sample_03.jpg")
        .convert("RGB")
        .resize((1024, 1024), PIL.Image.Resampling.BICUBIC)
    )  # a StyleGAN output at its native 1024 px

    sections = [
        f"Annotator, CPU ({threads} torch threads; ONNX Runtime and OpenCV limited to the same), "
        f"{'quick run' if args.quick else 'full run'}, {rounds} interleaved rounds after a warm-up; "
        "BiSeNet with random weights (timing only).",
    ]
    landmarker = FaceLandmarker.shared()

    # ---- detection + 68 landmarks ------------------------------------------------------------------------
    rows = []
    cases = [("590-px inspiration", inspiration)] + ([] if args.quick else [("2048-px photo", photo)])
    for label, image in cases:
        times = interleaved(
            {
                "naive": lambda image=image: naive_e4e_landmarks(landmarker, image),
                "ours": lambda image=image: landmarker.locate(image),
            },
            rounds,
        )
        rows += [
            (f"{label}: naive, e4e script (upsample 1 on the full image)", times["naive"], times["naive"]),
            (
                f"{label}: ours, upsample 0 on <= 400 px first, then upsample 1 on <= 800 px",
                times["ours"],
                times["naive"],
            ),
        ]
    sections.append(table("detection + 68 landmarks", rows))
    sections.append(alignment_section(landmarker, args.quick, rounds))

    # ---- parsing: torch vs ONNX Runtime --------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_random_bisenet_checkpoint(Path(folder) / "79999_iter.pth")
        torch_parser = load_parser(checkpoint, backend="torch")
        started = time.perf_counter()
        onnx_parser = load_parser(checkpoint, backend="onnx", num_threads=threads)
        export_seconds = time.perf_counter() - started
        rows = []
        for size in [256] if args.quick else [512, 256]:
            times = interleaved(
                {
                    "torch": lambda size=size: torch_parser.parse(generated, size),
                    "onnx": lambda size=size: onnx_parser.parse(generated, size),
                },
                rounds,
            )
            rows += [
                (f"{size} px, batch 1: PyTorch", times["torch"], times["torch"]),
                (f"{size} px, batch 1: ONNX Runtime, argmax in the graph", times["onnx"], times["torch"]),
            ]
        if not args.quick:
            batch = [generated] * 8
            times = interleaved(
                {
                    "torch": lambda: torch_parser.parse_batch(batch, 256),
                    "onnx": lambda: onnx_parser.parse_batch(batch, 256),
                },
                max(2, rounds // 2),
            )
            per_image = {name: [t / 8 for t in values] for name, values in times.items()}
            rows += [
                ("256 px, batch 8 (per image): PyTorch", per_image["torch"], per_image["torch"]),
                ("256 px, batch 8 (per image): ONNX Runtime", per_image["onnx"], per_image["torch"]),
            ]
        bf16 = _TorchRunner(load_bisenet(checkpoint), torch.device("cpu"), bf16=True)
        x = np.stack(
            [np.random.default_rng(k).standard_normal((3, 256, 256)).astype(np.float32) for k in range(4)]
        )
        agreement = (bf16.labels(x) == torch_parser._runner.labels(x)).mean()
        sections.append(
            table("BiSeNet parsing (incl. pre-processing)", rows, per=1.0)
            + f"\n\nONNX export + session start, once per checkpoint (then cached): {export_seconds:.1f} s. "
            f"bf16 autocast vs fp32 labels (random weights, 4 noise inputs at 256 px): {100 * agreement:.2f}% "
            "of pixels agree, so bf16 stays off (opt-in; it would pay only on CPUs with AMX, and this one has "
            f"{'AMX' if 'AMX' in torch.backends.cpu.get_cpu_capability().upper() else 'none'})."
        )
        sections.append(annotate_stage_section(checkpoint, generated, rounds, threads))

    text = "\n\n".join(sections) + "\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
