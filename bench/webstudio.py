"""The web studio: thumbnails, search through the studio vs the SDK, the gallery in a real browser.

1. Thumbnails (in process): a 256 px WebP of a 1024² JPEG, ours (JPEG draft decoding, cached by
   content hash) vs the way a script would do it (decode fully, resize, encode), interleaved rounds.
2. Search round trip on an index of 425,258 synthetic CLIP-like vectors (imported through the
   gateway's ImportItems next to a real job): a text query through the studio's HTTP API (session
   cookie, CSRF header, JSON) vs the same query through the SDK, interleaved rounds, min / median.
3. Gallery in Debian's chromium (Playwright): the time from navigation to the first tiles, and the
   time to scroll through 10,000 items of a 100,000-item listing (every frame's DOM stays a few
   hundred tiles). The listing repeats a real job's items (so every thumbnail is a real one fetched
   through the gateway); the studio is started in this process so that the listing can be seeded.

    python bench/webstudio.py            # full sizes (~6 min on 2 cores)
    python bench/webstudio.py --quick    # 20,000 vectors, 20,000 gallery items
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
from timing import interleaved, median  # noqa: E402

SFHQ_SIZE = 425_258
CHROMIUM = "/usr/bin/chromium"


def thumbnails_table(rounds: int) -> list[str]:
    from PIL import Image

    from studio.imaging import ThumbnailCache, make_thumbnail

    face = (
        Image.open(ROOT / "tests" / "data" / "faces" / "sfhq_sample_00.jpg")
        .convert("RGB")
        .resize((1024, 1024))
    )
    buffer = io.BytesIO()
    face.save(buffer, "JPEG", quality=95)
    jpeg = buffer.getvalue()

    def naive() -> bytes:
        picture = Image.open(io.BytesIO(jpeg)).convert("RGB")
        picture.thumbnail((256, 256), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        picture.save(out, "WEBP", quality=82)
        return out.getvalue()

    cache = ThumbnailCache(64 << 20)
    cache.thumbnail(jpeg, 256)
    times = interleaved(
        {
            "naive": naive,
            "ours": lambda: make_thumbnail(jpeg, 256),
            "cached": lambda: cache.thumbnail(jpeg, 256),
        },
        rounds,
    )
    base = min(times["naive"])
    lines = [
        f"Thumbnails: a 256 px WebP of a 1024² JPEG (quality 95), one thread, {rounds} interleaved rounds.",
        "",
        "| method | ms (best) | ms (median) | thumbnails/s (best) | ratio (best) | ratio (median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, label in (
        ("naive", "decode fully, resize, encode (a script)"),
        ("ours", "ours, first request (JPEG draft decoding)"),
        ("cached", "ours, again (same content hash)"),
    ):
        t = times[name]
        lines.append(
            f"| {label} | {1000 * min(t):.2f} | {1000 * median(t):.2f} | {1 / min(t):,.0f} | "
            f"{base / min(t):.1f}x | {median(times['naive']) / median(t):.1f}x |"
        )
    return lines


def _login(base: str):
    import httpx

    http = httpx.Client(base_url=base, timeout=120)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', http.get("/login").text).group(1)
    http.post("/login", data={"token": "", "csrf_token": csrf})
    page_csrf = re.search(r'name="csrf-token" content="([^"]+)"', http.get("/jobs").text).group(1)
    return http, page_csrf


def cluster_tables(n_vectors: int, n_gallery: int, rounds: int, workdir: Path) -> list[str]:
    import uvicorn

    from services.common.embedded_redis import EmbeddedRedis, free_port
    from services.local_run import LocalCluster
    from services.random_weights import write_random_weights
    from sfhq.annotations import CLIP_FEATURE_KEY
    from sfhq.sdk import Client, build_spec
    from sfhq.tensors import numpy_to_tensor, tensor_to_numpy
    from sfhq.v1 import search_pb2
    from studio.app import Guard, create_app
    from studio.session import Session
    from studio.settings import StudioSettings
    from tests.helpers.synthetic import clustered_features

    weights = workdir / "weights"
    write_random_weights(weights)
    lines: list[str] = []
    with (
        EmbeddedRedis(dir=workdir / "redis") as redis_server,
        LocalCluster(workdir, redis_server.url, weights, data_roots=(workdir,)) as cluster,
    ):
        cluster.start_all()
        client = Client(cluster.addr("gateway"), timeout=600)
        faces = sorted((ROOT / "tests" / "data" / "faces").glob("*.jpg"))
        job = client.wait(client.submit(build_spec(images=faces, dedup_threshold=0.995)).job_id)
        written = client.list_items(job.job_id, state="written")
        dim = tensor_to_numpy(client.get_item(job.job_id, written[0].item_id).features[CLIP_FEATURE_KEY]).size

        started = time.perf_counter()
        vectors = clustered_features(n_vectors, dim, seed=3).vectors.astype(np.float32)
        imported = client.import_items(
            (
                search_pb2.IndexedItem(
                    item_id=f"SFHQ_pt1_{n:08d}", vector=numpy_to_tensor(vectors[n]), source="sfhq_part1"
                )
                for n in range(n_vectors)
            ),
            batch_size=1000,
        )
        import_s = time.perf_counter() - started

        settings = StudioSettings(
            port=free_port(), gateway_addr=cluster.addr("gateway"), export_dir=workdir / "exports"
        )
        app = create_app(settings)
        server = uvicorn.Server(uvicorn.Config(Guard(app, 1 << 28), port=settings.port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        base = f"http://127.0.0.1:{settings.port}"
        while not server.started:
            time.sleep(0.1)
        http, csrf = _login(base)

        def through_studio() -> None:
            reply = http.post(
                "/api/search",
                json={"text": "an old man with a beard", "top_k": 60},
                headers={"x-csrf-token": csrf},
            )
            assert reply.status_code == 200 and len(reply.json()["hits"]) == 60, reply.text

        def through_sdk() -> None:
            assert len(client.search("an old man with a beard", top_k=60).hits) == 60

        times = interleaved({"sdk": through_sdk, "studio": through_studio}, rounds)
        lines += [
            f"Search round trip on an index of {imported.index_size:,} vectors ({n_vectors:,} synthetic "
            f"imported in {import_s:.0f} s, dim {dim}, random CLIP weights), top 60, text query, "
            f"{rounds} interleaved rounds:",
            "",
            "| path | ms (best) | ms (median) | studio overhead (best) | (median) |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, label in (
            ("sdk", "SDK (`Client.search`)"),
            ("studio", "studio (`POST /api/search`, HTTP + JSON)"),
        ):
            t = times[name]
            lines.append(
                f"| {label} | {1000 * min(t):.1f} | {1000 * median(t):.1f} | "
                f"{min(t) / min(times['sdk']):.2f}x | {median(t) / median(times['sdk']):.2f}x |"
            )

        # the gallery: a listing of n_gallery rows repeating the job's real candidates
        studio = app.state.studio
        rows = studio.listings.job_items(client, Session(token="", sid="x").user_key, job.job_id)
        candidates = [r for r in rows if r["parent"]]
        big = [candidates[n % len(candidates)] for n in range(n_gallery)]
        key = (Session(token="", sid="x").user_key, job.job_id)
        studio.listings._cache[key] = (time.monotonic(), True, big)
        lines += ["", *gallery_table(base, job.job_id, n_gallery)]
        server.should_exit = True
        client.close()
    return lines


def gallery_table(base: str, job_id: str, total: int) -> list[str]:
    from playwright.sync_api import expect, sync_playwright

    results = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{base}/login")
        page.fill("#token", "")
        page.press("#token", "Enter")
        page.wait_for_url(f"{base}/jobs")
        for _attempt in range(3):
            started = time.perf_counter()
            page.goto(f"{base}/jobs/{job_id}/gallery")
            expect(page.locator(".tile").first).to_be_visible(timeout=60_000)
            first_paint = time.perf_counter() - started
            expect(page.locator("#gallery-count")).to_have_text(f"{total:,}")
            # scroll down 10,000 items: 8 columns x 168 px rows; each step one screenful
            columns = page.evaluate("() => Math.floor(document.getElementById('gallery').clientWidth / 168)")
            target_rows = 10_000 // columns
            started = time.perf_counter()
            steps = 0
            max_tiles = 0
            while True:
                top = page.evaluate(
                    "() => { const g = document.getElementById('gallery'); g.scrollTop += g.clientHeight;"
                    " return g.scrollTop; }"
                )
                steps += 1
                page.wait_for_timeout(16)  # one frame
                max_tiles = max(max_tiles, page.locator(".tile").count())
                if top >= target_rows * 168:
                    break
            index = (top // 168) * columns  # the first tile of the row now at the top
            expect(page.locator(f'.tile[data-index="{index}"]')).to_be_attached(timeout=30_000)
            scroll_s = time.perf_counter() - started
            results.append((first_paint, scroll_s, steps, max_tiles))
        browser.close()
    paints = [r[0] for r in results]
    scrolls = [r[1] for r in results]
    steps, tiles = results[-1][2], max(r[3] for r in results)
    return [
        f"Gallery of {total:,} items in chromium (1400x900 window, {len(results)} runs): first tiles on "
        f"screen {1000 * min(paints):.0f} ms best / {1000 * median(paints):.0f} ms median; scrolling down "
        f"10,000 items in {steps} screenfuls (one frame each, tiles fetched as they come into view) "
        f"{min(scrolls):.2f} s best / {median(scrolls):.2f} s median; at most {tiles} tiles in the DOM at once.",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "webstudio.md")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    lines = thumbnails_table(rounds=10 if args.quick else 30)
    with tempfile.TemporaryDirectory(prefix="sfhq-bench-studio-") as tmp:
        lines += [
            "",
            *cluster_tables(
                20_000 if args.quick else SFHQ_SIZE,
                20_000 if args.quick else 100_000,
                rounds=5 if args.quick else 15,
                workdir=Path(tmp),
            ),
        ]
    lines += ["", f"Total bench time {time.perf_counter() - started:.0f} s."]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
