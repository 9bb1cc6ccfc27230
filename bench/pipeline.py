"""Pipeline throughput: a job through gateway + Redis + gRPC services vs the same models in one process.

Both paths use the same random tiny models (official layouts), the same inspiration images and
the same strategies, and write the same SFHQ files. The ratio is the cost (or gain) of the
services: serialisation, Redis round trips, blob store I/O — against the overlap of stages that
five processes get for free.

    python bench/pipeline.py            # 8 inspiration images x 2 candidates
    python bench/pipeline.py --quick    # 2 images
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STRATEGIES = ["e4e_strict_prior", "low_prior:steps=5"]


def inputs(n: int) -> list[Path]:
    from tests.helpers.data import all_inspiration

    images = all_inspiration()
    return [images[i % len(images)] for i in range(n)]


def in_process(images: list[Path], weights: Path, out: Path) -> float:
    """The naive way: every model in this process, one image after another, no queue, no RPC."""
    import torch
    from PIL import Image

    from services.annotator.faces import FaceAnnotator
    from services.annotator.formats import segmentation_to_png
    from services.annotator.service import landmarker_model, parser_model
    from services.common.config import get_settings
    from services.common.dataset import DatasetWriter
    from services.common.images import encode_image
    from services.common.weights import WeightsRegistry
    from services.encoder.model import load_encoder
    from services.generator.checkpoint import load_generator
    from services.generator.engine import image_from_tensor, tensor_from_image
    from services.generator.manipulate import StrategySpec, make_candidates
    from services.search.clip_model import load_clip
    from sfhq.sdk import parse_strategy

    registry = WeightsRegistry(weights)
    settings = get_settings(weights_dir=weights)
    annotator = FaceAnnotator(landmarker_model(settings, registry), parser_model(settings, registry))
    encoder = load_encoder(registry.path("e4e-ffhq-encode"))
    generator = load_generator(registry.path("stylegan2-ffhq-config-f"))
    clip = load_clip(registry.path("clip-vit-l-14-336"))
    writer = DatasetWriter(str(out))
    specs = []
    for k, text in enumerate(STRATEGIES):
        s = parse_strategy(text)
        specs.append(StrategySpec(s.name, dict(s.params), k + 1))
    started = time.perf_counter()
    index = 0
    for path in images:
        aligned = annotator.align(Image.open(path).convert("RGB"), 256, 256).image
        w_plus = torch.as_tensor(encoder.encode_images([aligned]))[0]
        target = tensor_from_image(aligned)
        for cand in make_candidates(generator, w_plus, specs, target=target):
            image = image_from_tensor(cand.image).resize((1024, 1024), Image.Resampling.LANCZOS)
            features = clip.embed_images([image])[0]
            annotation = annotator.annotate_batch([image], working_size=256, canonical_fallback=True)[0]
            stem = f"SFHQ_pt1_{index:08d}"
            index += 1
            writer.write_item(
                stem,
                image_jpeg=encode_image(image, "jpeg", 95),
                segmentation_png=segmentation_to_png(annotation.label_map),
                landmarks=annotation.landmarks,
                features={"CLIP_ViTL_14@336": features},
                latent=cand.latent.numpy(),
            )
    return time.perf_counter() - started


def through_services(images: list[Path], weights: Path, workdir: Path) -> float:
    """Ours: gateway + Redis Streams + the four services, as `sfhq run` starts them."""
    from services.common.embedded_redis import EmbeddedRedis
    from services.local_run import LocalCluster
    from sfhq.sdk import Client, build_spec

    with (
        EmbeddedRedis(dir=workdir / "redis") as redis_server,
        LocalCluster(workdir, redis_server.url, weights, data_roots=(workdir,)) as cluster,
    ):
        cluster.start_all()
        with Client(cluster.addr("gateway"), timeout=120) as client:
            spec = build_spec(
                images=images, strategies=STRATEGIES, disable_dedup=True, output_uri=str(workdir / "dataset")
            )
            started = time.perf_counter()
            job = client.submit(spec)
            job = client.wait(job.job_id)
            elapsed = time.perf_counter() - started
            if job.counts.written != len(images) * len(STRATEGIES):
                raise RuntimeError(f"services wrote {job.counts.written} items: {job.error}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=0)
    args = parser.parse_args()
    n = args.images or (2 if args.quick else 8)
    images = inputs(n)
    from services.random_weights import write_random_weights

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        weights = tmp_path / "weights"
        write_random_weights(weights)
        naive = in_process(images, weights, tmp_path / "naive")
        ours = through_services(images, weights, tmp_path / "services")
    items = n * len(STRATEGIES)
    table = "\n".join(
        [
            f"{n} inspiration images x {len(STRATEGIES)} candidates ({', '.join(STRATEGIES)}) = {items} items; "
            "random tiny models (64-px generator), 1024-px outputs, CPU.\n",
            "| path | seconds | items/s | ratio |",
            "| --- | ---: | ---: | ---: |",
            f"| naive: same models in one process, sequential | {naive:.1f} | {items / naive:.2f} | 1.00 |",
            f"| ours: gateway + Redis + 4 gRPC services | {ours:.1f} | {items / ours:.2f} | {naive / ours:.2f} |",
            "",
            "ratio > 1: the services are faster (stages overlap across processes); < 1: their overhead shows.",
        ]
    )
    out = ROOT / "bench" / "results" / "pipeline.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
