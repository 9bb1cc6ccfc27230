"""Identity-aware `low_prior`: backbone-feature similarity to the inspiration vs optimisation steps.

For each test face (tests/data/faces) the W+ code starts at the generator's average face and is
refined by `low_prior` toward the face, pixel-only (`identity_weight` 0: pixel + multi-scale) and
identity-aware (`identity_weight` 1: + the e4e IR-SE backbone's feature distance), the two modes
interleaved (face by face, step count by step count). Reported: the cosine similarity of the e4e
backbone's features of candidate and inspiration (`services.encoder.refine.identity_similarity`,
mean over the faces) after 0, 5, 10, 20 and 30 steps, and the seconds per step of each mode.

Random weights (no official checkpoints here): the absolute similarities say nothing about real
identity; the bench shows what the term optimises and what it costs per step.

    python bench/identity.py            # 64-px generator, IR-SE (1, 2, 3, 1) backbone at 64 px
    python bench/identity.py --quick    # 32-px generator, IR-SE (1, 1, 1, 1) at 32 px (< 1 min)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from services.encoder.model import Encoder, EncoderConfig, encoder_from_state_dict  # noqa: E402
from services.encoder.random_weights import random_encoder_state_dict  # noqa: E402
from services.encoder.refine import IdentityFeatures, identity_similarity, prepare_target  # noqa: E402
from services.generator.checkpoint import generator_from_state_dict  # noqa: E402
from services.generator.manipulate import low_prior  # noqa: E402
from services.generator.model import Generator  # noqa: E402
from services.generator.random_weights import random_latent_avg, random_rosinality_state_dict  # noqa: E402
from tests.helpers.data import all_faces  # noqa: E402

STEPS = (0, 5, 10, 20, 30)
MODES = {"pixel-only (identity_weight 0)": 0.0, "identity-aware (identity_weight 1)": 1.0}


def models(quick: bool) -> tuple[Generator, Encoder, int]:
    size, channels, units = (32, 32, (1, 1, 1, 1)) if quick else (64, 64, (1, 2, 3, 1))
    state = random_rosinality_state_dict(size=size, style_dim=128, n_mlp=2, max_channels=channels, seed=21)
    generator = generator_from_state_dict(state, random_latent_avg(128, 21))
    config = EncoderConfig(n_styles=1, units_per_stage=units, input_size=size)
    encoder = Encoder(encoder_from_state_dict(random_encoder_state_dict(config, seed=4)), latent_avg=None)
    return generator, encoder, size


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny models, < 1 min")
    parser.add_argument("--faces", type=int, default=3, help="how many test faces")
    parser.add_argument("--output", default=str(BENCH / "results" / "identity.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator, encoder, size = models(args.quick)
    features = IdentityFeatures.from_encoder(encoder)
    faces = [prepare_target(Image.open(p).convert("RGB"), size)[0] for p in all_faces()[: args.faces]]
    start = generator.latent_avg.reshape(1, -1).expand(generator.n_latent, -1).clone()
    similarity = {mode: {steps: 0.0 for steps in STEPS} for mode in MODES}
    seconds = {mode: 0.0 for mode in MODES}
    counted = {mode: 0 for mode in MODES}
    for target in faces:
        with torch.no_grad():
            target_features = features(target[None])
        for steps in STEPS:
            for mode, weight in MODES.items():  # interleaved: both modes at each step count
                began = time.perf_counter()
                code = low_prior(
                    generator,
                    start,
                    target,
                    steps=steps,
                    lr=0.05,
                    loss_size=size,
                    identity=encoder,
                    identity_weight=weight,
                )
                seconds[mode] += time.perf_counter() - began
                counted[mode] += steps
                with torch.no_grad():
                    image = generator.synthesize(code[None], noise_mode="const")
                    similarity[mode][steps] += float(
                        identity_similarity(features(image), target_features)[0]
                    ) / len(faces)
    config = (
        "quick: 32-px generator, IR-SE (1, 1, 1, 1) at 32 px"
        if args.quick
        else "64-px generator, IR-SE (1, 2, 3, 1) at 64 px"
    )
    lines = [
        f"low_prior on {len(faces)} test faces from the average face, lr 0.05, loss at {size} px; {config}; random weights; CPU, 1 torch thread.",
        "",
        "| mode | " + " | ".join(f"cos @ {s} steps" for s in STEPS) + " | s/step |",
        "| --- | " + " | ".join("---:" for _ in STEPS) + " | ---: |",
    ]
    for mode in MODES:
        cells = " | ".join(f"{similarity[mode][s]:.3f}" for s in STEPS)
        lines.append(f"| {mode} | {cells} | {seconds[mode] / max(1, counted[mode]):.4f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    Path(args.output).write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
