"""Annotator per-image costs on CPU: ours vs the naive way, side by side in one run.

* detection + 68 landmarks: naive = encoder4editing's script (dlib HOG at upsample 1 on the full
  image, keep the last face); ours = `FaceLandmarker.locate` (largest face; images larger than
  800 px are searched on a downscaled copy, landmarks still at full resolution);
* FFHQ alignment: ours = `align_face` (the FFHQ recipe: integer pre-shrink, crop, pad, one quad
  transform); naive = one quad transform of the whole, unshrunk image (same geometry, no crop);
* BiSeNet parsing: PyTorch vs ONNX Runtime at 512 px (the original setting) and 256 px (SFHQ's);
* annotate one generated 1024-px image: naive = everything at full resolution (68 points on the
  1024 image, parse at 512); ours = SFHQ's working size of 256 (68 points, parse, 110 points).

Parser weights are random (speed does not depend on the values). Results go to
bench/results/annotator.md.

    python bench/annotator.py            # full sizes
    python bench/annotator.py --quick    # fewer repeats, fewer cases (< 60 s)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402

from services.annotator.align import align_face, face_quad  # noqa: E402
from services.annotator.detect import FaceBox, FaceLandmarker, as_rgb_array  # noqa: E402
from services.annotator.landmarks110 import extend_landmarks, rescale_points  # noqa: E402
from services.annotator.parsing import load_parser  # noqa: E402
from services.annotator.random_weights import write_random_bisenet_checkpoint  # noqa: E402
from tests.helpers.data import DATA as TESTDATA  # noqa: E402


def timed(run: Callable[[], object], *, min_seconds: float, max_runs: int = 20) -> float:
    """Seconds per call: one warm-up call, then repeat until min_seconds have passed."""
    run()
    runs, started = 0, time.perf_counter()
    while runs < max_runs:
        run()
        runs += 1
        if time.perf_counter() - started >= min_seconds:
            break
    return (time.perf_counter() - started) / runs


def table(title: str, rows: list[tuple[str, float, float]]) -> str:
    """rows: (method, seconds, naive seconds to compare with)."""
    lines = [f"| {title} | ms / image | vs naive |", "| --- | ---: | ---: |"]
    for name, seconds, reference in rows:
        lines.append(f"| {name} | {seconds * 1000:.1f} | {reference / seconds:.2f}x |")
    return "\n".join(lines)


def naive_e4e_landmarks(landmarker: FaceLandmarker, image: PIL.Image.Image) -> np.ndarray:
    """What encoder4editing's alignment script does: det(img, 1) on the full image, last face."""
    pixels = as_rgb_array(image)
    rects = landmarker.detector._detector(pixels, 1)
    rect = rects[-1]
    box = FaceBox(rect.left(), rect.top(), rect.right(), rect.bottom())
    return landmarker.predictor.predict(pixels, box)


def naive_align(
    image: PIL.Image.Image, landmarks68: np.ndarray, output_size: int, transform_size: int
) -> PIL.Image.Image:
    """The same square, warped straight from the full image (no shrink, no crop, no padding)."""
    quad = face_quad(landmarks68).quad
    out = image.transform(
        (transform_size, transform_size),
        PIL.Image.Transform.QUAD,
        (quad + 0.5).flatten(),
        PIL.Image.Resampling.BILINEAR,
    )
    return (
        out.resize((output_size, output_size), PIL.Image.Resampling.LANCZOS)
        if output_size < transform_size
        else out
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", default=str(BENCH / "results" / "annotator.md"))
    args = parser.parse_args()
    min_seconds = 0.3 if args.quick else 2.0
    threads = torch.get_num_threads()

    inspiration = PIL.Image.open(TESTDATA / "inspiration" / "sd_02.jpg").convert("RGB")
    photo = inspiration.resize((2048, 2048), PIL.Image.Resampling.BICUBIC)  # a large camera photo
    generated = (
        PIL.Image.open(TESTDATA / "faces" / "sfhq_sample_03.jpg")
        .convert("RGB")
        .resize((1024, 1024), PIL.Image.Resampling.BICUBIC)
    )  # a StyleGAN output at its native 1024 px

    sections = [
        f"Annotator, CPU ({threads} torch threads; ONNX Runtime limited to the same), "
        f"{'quick run' if args.quick else 'full run'}; BiSeNet with random weights (timing only).",
    ]
    landmarker = FaceLandmarker.shared()

    # ---- detection + 68 landmarks ------------------------------------------------------------------------
    rows = []
    cases = [("590-px inspiration", inspiration)] + ([] if args.quick else [("2048-px photo", photo)])
    for label, image in cases:
        naive = timed(
            lambda image=image: naive_e4e_landmarks(landmarker, image), min_seconds=min_seconds, max_runs=5
        )
        ours = timed(lambda image=image: landmarker.locate(image), min_seconds=min_seconds, max_runs=5)
        rows += [
            (f"{label}: naive, e4e script (upsample 1 on the full image)", naive, naive),
            (f"{label}: ours, largest face, detection on <= 800 px", ours, naive),
        ]
    sections.append(table("detection + 68 landmarks", rows))

    # ---- alignment ---------------------------------------------------------------------------------------
    rows = []
    align_cases = [("590-px inspiration", inspiration)] + ([] if args.quick else [("2048-px photo", photo)])
    for label, image in align_cases:
        lm = landmarker.locate(image).landmarks68
        settings = [(256, 256)] if args.quick else [(256, 256), (1024, 4096)]
        for output_size, transform_size in settings:
            args_now = (image, lm, output_size, transform_size)
            naive = timed(lambda a=args_now: naive_align(*a), min_seconds=min_seconds, max_runs=5)
            ours = timed(lambda a=args_now: align_face(*a), min_seconds=min_seconds, max_runs=5)
            what = f"{label} -> {output_size} (transform {transform_size})"
            rows += [
                (f"{what}: naive, one warp of the full image", naive, naive),
                (f"{what}: ours, FFHQ recipe (shrink, crop, pad)", ours, naive),
            ]
    sections.append(
        table("FFHQ alignment", rows) + "\n\nThe naive warp leaves black corners where the square "
        "leaves the image; the recipe's blurred reflect-padding is most of its cost."
    )

    # ---- parsing: torch vs ONNX Runtime --------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_random_bisenet_checkpoint(Path(folder) / "79999_iter.pth")
        torch_parser = load_parser(checkpoint, backend="torch")
        started = time.perf_counter()
        onnx_parser = load_parser(checkpoint, backend="onnx", num_threads=threads)
        export_seconds = time.perf_counter() - started
        rows = []
        for size in [256] if args.quick else [512, 256]:
            naive = timed(lambda size=size: torch_parser.parse(generated, size), min_seconds=min_seconds)
            ours = timed(lambda size=size: onnx_parser.parse(generated, size), min_seconds=min_seconds)
            rows += [
                (f"{size} px, batch 1: PyTorch", naive, naive),
                (f"{size} px, batch 1: ONNX Runtime", ours, naive),
            ]
        if not args.quick:
            batch = [generated] * 8
            naive = (
                timed(lambda: torch_parser.parse_batch(batch, 256), min_seconds=min_seconds, max_runs=5) / 8
            )
            ours = timed(lambda: onnx_parser.parse_batch(batch, 256), min_seconds=min_seconds, max_runs=5) / 8
            rows += [
                ("256 px, batch 8: PyTorch", naive, naive),
                ("256 px, batch 8: ONNX Runtime", ours, naive),
            ]
        sections.append(
            table("BiSeNet parsing (incl. pre-processing)", rows)
            + f"\n\nONNX export + session start, once per checkpoint (then cached): {export_seconds:.1f} s."
        )

        # ---- a whole annotation of one generated image ------------------------------------------------------
        def annotate(working_size: int, parse_size: int) -> np.ndarray:
            small = generated.resize((working_size, working_size), PIL.Image.Resampling.BILINEAR)
            face = landmarker.locate(small, detect=False)
            labels = onnx_parser.parse(small, parse_size, output_size=working_size)
            points = extend_landmarks(face.landmarks68, labels)
            return rescale_points(points, small.size, generated.size)

        naive = timed(lambda: annotate(1024, 512), min_seconds=min_seconds, max_runs=5)
        ours = timed(lambda: annotate(256, 256), min_seconds=min_seconds, max_runs=5)
        sections.append(
            table(
                "annotate a 1024-px generated image (ONNX parser)",
                [
                    ("naive: 68 points on 1024 px, parse at 512, 110 points on 1024", naive, naive),
                    ("ours: SFHQ's working size 256 (68 points, parse, 110 points)", ours, naive),
                ],
            )
        )

    text = "\n\n".join(sections) + "\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
