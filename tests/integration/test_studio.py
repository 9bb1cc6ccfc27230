"""The web studio against a real cluster (random weights, auth on), over real HTTP, and in a real
browser: Debian's chromium driven by Playwright (never a browser Playwright downloads).

HTTP layer: login, sessions, CSRF, what a user may see, bad input (unknown ids → 404 with a message,
oversized uploads → 413), thumbnails and their cache headers.
Browser, end to end: log in, submit a job from the page, watch it finish live, open an item and
toggle both overlays (the canvas pixels change), search by text and by image, label items with
the keyboard (with an undo), train a taste model and see its metrics and score histogram, look at
near-duplicates, export a selection as a folder and as a zip, and check what was exported.

Screenshots go to $STUDIO_SCREENSHOTS (docs/screens/ when refreshing the README's pictures).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from services.local_run import free_port
from sfhq.sdk import Client, build_spec
from sfhq.v1 import gateway_pb2
from tests.helpers.cluster import random_cluster
from tests.helpers.data import face_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CHROMIUM = Path("/usr/bin/chromium")
TOKENS = {"alice": "alice-secret-token", "bob": "bob-secret-token"}
SERVICE_TOKEN = "studio-test-service-token"
UPLOAD_LIMIT_MB = 2
COPY_THRESHOLD = (
    "0.995"  # random CLIP weights make distinct faces ~0.97 similar (tests/integration/test_curation.py)
)


@pytest.fixture(scope="module")
def cluster(redis_server, tmp_path_factory):
    env = {
        "SFHQ_AUTH_TOKENS": ",".join(f"{name}={token}" for name, token in TOKENS.items()),
        "SFHQ_SERVICE_TOKENS": SERVICE_TOKEN,
    }
    with random_cluster(redis_server, tmp_path_factory, env=env, data_roots=()) as running:
        yield running


@pytest.fixture(scope="module")
def studio(cluster, tmp_path_factory):
    """The studio as its own process (`python -m studio`), as `sfhq up` and the containers run it."""
    port = free_port()
    exports = tmp_path_factory.mktemp("exports")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SFHQ_")},
        "SFHQ_STUDIO_PORT": str(port),
        "SFHQ_STUDIO_GATEWAY_ADDR": cluster.addr("gateway"),
        "SFHQ_STUDIO_EXPORT_DIR": str(exports),
        "SFHQ_STUDIO_MAX_UPLOAD_MB": str(UPLOAD_LIMIT_MB),
        "SFHQ_STUDIO_MAX_UPLOAD_FILES": "12",
        "SFHQ_TOKEN": TOKENS["alice"],  # must never stand in for a user who signs in without one
    }
    log = (cluster.workdir / "logs" / "studio.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "studio"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (cluster.workdir / "logs" / "studio.log").read_text()
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        raise AssertionError("the studio did not answer /healthz")
    yield {"base": base, "exports": exports}
    proc.terminate()
    proc.wait(timeout=15)
    log.close()


def login(base: str, token: str) -> httpx.Client:
    """A signed-in HTTP session, the way a browser gets one (login form + its CSRF cookie)."""
    http = httpx.Client(base_url=base, follow_redirects=False, timeout=60)
    form = http.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    reply = http.post("/login", data={"token": token, "csrf_token": csrf, "next": "/jobs"})
    assert reply.status_code == 303, reply.text
    return http


def csrf_of(http: httpx.Client) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', http.get("/jobs").text).group(1)


@pytest.fixture(scope="module")
def finished_job(cluster):
    """A job of alice's, written through the SDK (the browser test submits its own)."""
    with Client(cluster.addr("gateway"), token=TOKENS["alice"], timeout=120) as client:
        spec = build_spec(
            images=[face_path(n) for n in range(3)], dedup_threshold=float(COPY_THRESHOLD), name="sdk job"
        )
        job = client.wait(client.submit(spec).job_id, timeout=300)
        assert job.state == gateway_pb2.JOB_STATE_SUCCEEDED, job.error
        written = client.list_items(job.job_id, state="written")
        assert written
        return {"job": job.job_id, "item": written[0].item_id}


# ------------------------------------------------------------------------------------------ HTTP layer


def test_pages_need_a_session_and_a_good_token(studio):
    base = studio["base"]
    page = httpx.get(f"{base}/jobs", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    api = httpx.get(f"{base}/api/jobs")
    assert api.status_code == 401 and "not logged in" in api.json()["error"]
    http = httpx.Client(base_url=base, timeout=30)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', http.get("/login").text).group(1)
    wrong = http.post("/login", data={"token": "not-a-token", "csrf_token": csrf})
    assert wrong.status_code == 401 and "not valid" in wrong.text
    # no token: the studio's own SFHQ_TOKEN must not sign this visitor in
    empty = http.post("/login", data={"token": "", "csrf_token": csrf})
    assert empty.status_code == 401
    # a login form without its CSRF cookie's token is refused
    forged = httpx.post(f"{base}/login", data={"token": TOKENS["alice"], "csrf_token": "x" * 64})
    assert forged.status_code == 403 and "csrf_token" in forged.json()["error"]
    # a forged session cookie is no session
    fake = httpx.get(f"{base}/api/jobs", cookies={"sfhq_session": "eyJ0IjoiYWxpY2UifQ.forged.sig"})
    assert fake.status_code == 401


def test_the_session_cookie_and_the_security_headers(studio):
    http = httpx.Client(base_url=studio["base"], timeout=30)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', http.get("/login").text).group(1)
    reply = http.post("/login", data={"token": TOKENS["alice"], "csrf_token": csrf})
    cookie = reply.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    page = http.get("/jobs")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text and " style=" not in page.text  # nothing inline


def test_state_changing_requests_need_the_csrf_token(studio, finished_job):
    http = login(studio["base"], TOKENS["alice"])
    body = {"job_id": finished_job["job"], "item_ids": [finished_job["item"]], "good": True}
    refused = http.post("/api/label", json=body)
    assert refused.status_code == 403 and "x-csrf-token" in refused.json()["error"]
    wrong = http.post("/api/label", json=body, headers={"x-csrf-token": "0" * 64})
    assert wrong.status_code == 403
    ok = http.post("/api/label", json=body, headers={"x-csrf-token": csrf_of(http)})
    assert ok.status_code == 200 and ok.json()["positives"] >= 1
    # a CSRF token belongs to its session: another login's token does not work here
    other = login(studio["base"], TOKENS["alice"])
    assert http.post("/api/label", json=body, headers={"x-csrf-token": csrf_of(other)}).status_code == 403


def test_unknown_ids_are_404_with_a_message_and_users_see_only_theirs(studio, finished_job):
    alice = login(studio["base"], TOKENS["alice"])
    missing = alice.get("/api/jobs/no-such-job")
    assert missing.status_code == 404 and "no-such-job" in missing.json()["error"]
    page = alice.get("/jobs/no-such-job")
    assert page.status_code == 404 and "no-such-job" in page.text
    item = alice.get(f"/api/items/{finished_job['job']}/i999999-c9")
    assert item.status_code == 404 and "i999999-c9" in item.json()["error"]
    assert alice.get(f"/thumb/{finished_job['job']}/i999999-c9").status_code == 404
    # bob cannot see alice's job, her items or their pictures
    bob = login(studio["base"], TOKENS["bob"])
    assert bob.get(f"/api/jobs/{finished_job['job']}").status_code == 404
    assert bob.get(f"/thumb/{finished_job['job']}/{finished_job['item']}").status_code == 404
    assert bob.get(f"/media/{finished_job['job']}/{finished_job['item']}/image").status_code == 404
    assert finished_job["job"] not in bob.get("/jobs").text
    # bad parameters name themselves
    bad = alice.get(f"/thumb/{finished_job['job']}/{finished_job['item']}?size=99")
    assert bad.status_code == 400 and "size" in bad.json()["error"]
    classes = alice.get(f"/media/{finished_job['job']}/{finished_job['item']}/parsing.png?classes=1,99")
    assert classes.status_code == 400 and "classes" in classes.json()["error"]


def test_uploads_have_size_and_count_limits(studio):
    http = login(studio["base"], TOKENS["alice"])
    headers = {"x-csrf-token": csrf_of(http)}
    big = ("big.jpg", b"\xff\xd8\xff" + b"0" * (UPLOAD_LIMIT_MB * 2**20 + 10), "image/jpeg")
    reply = http.post("/api/jobs", files={"images": big}, headers=headers)
    assert reply.status_code == 413 and "MiB" in reply.json()["error"]
    many = [("images", (f"{n}.jpg", face_path(0).read_bytes()[:1000], "image/jpeg")) for n in range(13)]
    reply = http.post("/api/jobs", files=many, headers=headers)
    assert reply.status_code == 413 and "at most 12 files" in reply.json()["error"]
    text = http.post("/api/jobs", files={"images": ("notes.txt", b"hello", "text/plain")}, headers=headers)
    assert text.status_code == 400 and "notes.txt" in text.json()["error"]
    nothing = http.post("/api/jobs", data={"mode": "inspiration"}, headers=headers)
    assert nothing.status_code == 400 and "images" in nothing.json()["error"]
    named = http.post("/api/jobs", data={"mode": "sampling", "name": "n" * 201}, headers=headers)
    assert named.status_code == 400 and "name: at most 200" in named.json()["error"]
    strategy = http.post(
        "/api/jobs",
        data={"strategies": "no_such_strategy"},
        files={"images": ("face.jpg", face_path(0).read_bytes(), "image/jpeg")},
        headers=headers,
    )
    assert strategy.status_code == 400 and "no_such_strategy" in strategy.json()["error"]
    # a JSON body over the small-request limit (1 MiB) is refused before it is parsed
    huge = http.post("/api/label", content=b"{" + b" " * (2 << 20) + b"}", headers=headers)
    assert huge.status_code == 413


def test_a_prompts_job_from_the_submit_form(studio):
    http = login(studio["base"], TOKENS["alice"])
    headers = {"x-csrf-token": csrf_of(http)}
    form = {
        "mode": "prompts",
        "prompts": "# a comment\nA portrait photo of an old man\n",
        "template": "A portrait photo of a {age} {person}",
        "slots": "age=20 year old|70 year old\nperson=woman",
        "negative_prompt": "blurry",
        "images_per_prompt": "2",
        "steps": "2",
        "guidance_scale": "6",
        "pipeline": "stable-diffusion-v1-4",
    }
    reply = http.post("/api/jobs", data=form, headers=headers)
    assert reply.status_code == 201, reply.text
    job = reply.json()
    assert job["mode"] == "prompts" and job["counts"]["inputs"] == 6  # (1 + 2) prompts x 2 images
    missing = http.post("/api/jobs", data={**form, "slots": "age=old"}, headers=headers)
    assert missing.status_code == 400 and "no values for {person}" in missing.json()["error"]
    malformed = http.post("/api/jobs", data={**form, "slots": "person"}, headers=headers)
    assert malformed.status_code == 400 and "slot 'person'" in malformed.json()["error"]


def test_thumbnails_are_webp_cached_by_content(studio, finished_job):
    http = login(studio["base"], TOKENS["alice"])
    url = f"/thumb/{finished_job['job']}/{finished_job['item']}?size=128"
    first = http.get(url)
    assert first.status_code == 200 and first.headers["content-type"] == "image/webp"
    assert first.content[:4] == b"RIFF" and first.content[8:12] == b"WEBP"
    assert "max-age" in first.headers["cache-control"]
    again = http.get(url, headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304
    from PIL import Image

    assert max(Image.open(io.BytesIO(first.content)).size) == 128


# ------------------------------------------------------------------------------------------ in a browser


def canvas_fingerprint(page) -> str:
    return page.evaluate(
        "() => { const c = document.getElementById('item-canvas');"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " let h = 0; for (let i = 0; i < d.length; i += 7) h = (h * 31 + d[i]) >>> 0; return String(h); }"
    )


def test_the_studio_end_to_end_in_a_browser(studio, cluster, tmp_path):
    assert CHROMIUM.exists(), "Debian's chromium is needed: apt-get install -y chromium (.ci/run does it)"
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path / "screens")
    shots.mkdir(parents=True, exist_ok=True)
    base = studio["base"]
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
        page = context.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        # log in (the keyboard only: type the token, Enter)
        page.goto(f"{base}/jobs")
        assert "/login" in page.url
        page.screenshot(path=shots / "login.png")
        page.fill("#token", TOKENS["alice"])
        page.press("#token", "Enter")
        page.wait_for_url(f"{base}/jobs")

        # the form shows the fields of the chosen mode only
        page.check("input[name=mode][value=prompts]")
        expect(page.locator("#prompts")).to_be_visible()
        expect(page.locator("#images")).to_be_hidden()
        page.screenshot(path=shots / "jobs-prompts.png")
        page.check("input[name=mode][value=inspiration]")
        expect(page.locator("#prompts")).to_be_hidden()

        # submit a job from the page and watch it finish (Server-Sent Events)
        page.set_input_files("#images", [str(face_path(n)) for n in range(10)])
        page.fill("#dedup-threshold", COPY_THRESHOLD)
        page.fill("#job-name", "from the browser")
        page.screenshot(path=shots / "jobs.png")
        page.click("#submit-job")
        page.wait_for_url(re.compile(r"/jobs/[^/]+$"), timeout=30_000)
        job_id = page.url.rsplit("/", 1)[-1]
        expect(page.locator("#job-state")).to_have_text("succeeded", timeout=300_000)
        expect(page.locator("[data-count=candidates]")).to_have_text("20")
        written = int(page.inner_text("[data-count=written]"))
        assert written >= 1
        assert page.locator("#stages tr[data-stage=annotate]").count() == 1
        page.screenshot(path=shots / "job.png")

        # the gallery: every candidate, then the written ones; open one with the keyboard
        page.goto(f"{base}/jobs/{job_id}/gallery")
        expect(page.locator("#gallery-count")).to_have_text("20", timeout=30_000)
        expect(page.locator(".tile").first).to_be_visible()
        for tile in page.locator(".tile img").all():  # every thumbnail arrived, as WebP made by the studio
            expect(tile).to_have_js_property("complete", True, timeout=30_000)
            assert 0 < tile.evaluate("img => img.naturalWidth") <= 256  # never upscaled
        page.screenshot(path=shots / "gallery.png")
        page.select_option("#f-state", "written")
        expect(page.locator("#gallery-count")).to_have_text(str(written))
        page.focus("#gallery")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/items/"))

        # the item: toggle the parsing map and the landmarks; the pixels change each time
        canvas = page.locator("#item-canvas")
        expect(canvas).to_have_attribute("data-ready", "1", timeout=30_000)
        expect(page.locator("#random-banner")).to_be_visible()  # random weights are said loudly
        plain = canvas_fingerprint(page)
        page.keyboard.press("p")
        expect(canvas).to_have_attribute("data-drawn", "2")
        with_parsing = canvas_fingerprint(page)
        page.keyboard.press("l")
        expect(canvas).to_have_attribute("data-drawn", "3")
        with_both = canvas_fingerprint(page)
        assert len({plain, with_parsing, with_both}) == 3
        # per class: with every class unticked only the landmarks are left on the image
        classes = page.locator("#classes .cls").all()
        for box in classes:
            box.uncheck()
        expect(canvas).to_have_attribute("data-drawn", str(3 + len(classes)))
        landmarks_only = canvas_fingerprint(page)
        assert landmarks_only not in (with_both, with_parsing, plain)
        classes[-1].check()  # hat: the class random parsing weights paint most
        expect(canvas).to_have_attribute("data-drawn", str(4 + len(classes)))
        assert page.locator(".strip figure").count() == 3  # the inspiration and its two candidates
        page.screenshot(path=shots / "item.png", full_page=True)
        page.click("#more-like-this")  # this item's own CLIP features as the query: itself comes first
        expect(page.locator("#search-status")).to_contain_text("items like", timeout=30_000)
        item_ref = page.url.split("like=", 1)[1]
        refs = [hit.get_attribute("data-ref") for hit in page.locator("#results .hit").all()]
        assert item_ref in refs[:5]  # itself, among the (random-weight) identical copies of other jobs

        # search by text, then by image, then "more like this"
        page.goto(f"{base}/search")
        page.fill("#search-text", "a smiling woman")
        page.keyboard.press("Enter")
        expect(page.locator("#search-status")).to_contain_text("results for", timeout=30_000)
        assert page.locator("#results .hit").count() >= written
        for hit in page.locator("#results .hit img").all():
            expect(hit).to_have_js_property("complete", True, timeout=30_000)
        page.screenshot(path=shots / "search.png")
        page.set_input_files("#search-image", str(face_path(3)))
        page.click("#search-image-go")
        expect(page.locator("#search-status")).to_contain_text("the image", timeout=30_000)
        assert page.locator("#results .hit").count() >= 1

        # label with the keyboard: 20 verdicts, one undone and given again; then train
        page.goto(f"{base}/review/{job_id}")
        review = page.locator("#review")
        expect(review).to_have_attribute("data-ready", "1", timeout=30_000)
        page.fill("#taste-name", "browser")  # a model of its own: the HTTP tests label alice's default
        page.focus("#review")
        for n in range(20):
            page.keyboard.press("g" if n % 2 == 0 else "b")
            expect(review).to_have_attribute("data-done", str(n + 1), timeout=20_000)
            if n == 10:
                page.screenshot(path=shots / "review.png")
        page.keyboard.press("u")
        expect(review).to_have_attribute("data-done", "19")
        expect(page.locator("#count-labels")).to_have_text("10 / 9")
        page.keyboard.press("b")
        expect(page.locator("#count-labels")).to_have_text("10 / 10")
        page.keyboard.press("t")
        metrics = page.locator("#train-metrics")
        expect(metrics).to_be_visible(timeout=120_000)
        assert "10 good / 10 bad" in metrics.inner_text() and "CV ROC AUC" in metrics.inner_text()
        expect(page.locator("#histogram .bin")).to_have_count(20, timeout=30_000)
        counts = [int(b.get_attribute("data-count")) for b in page.locator("#histogram .bin").all()]
        assert sum(counts) == 20  # every candidate of the job scored
        page.click("#curate-dry")
        expect(page.locator("#curate-result")).to_contain_text("would move", timeout=30_000)
        page.screenshot(path=shots / "train.png", full_page=True)

        # near-duplicates of the dataset (a dry run: nothing moves)
        page.goto(f"{base}/duplicates/{job_id}")
        expect(page.locator("#dedup-status")).to_contain_text("items compared", timeout=30_000)
        page.screenshot(path=shots / "duplicates.png")

        # export a selection as a folder, then as a zip
        page.goto(f"{base}/jobs/{job_id}/gallery")
        page.select_option("#f-state", "written")
        expect(page.locator(".tile").first).to_be_visible(timeout=30_000)
        page.focus("#gallery")
        page.keyboard.press(" ")
        expect(page.locator("#selected-count")).to_have_text("1")
        page.fill("#export-name", "picked")
        page.click("#export")
        expect(page.locator("#export-result")).to_contain_text("1 items in", timeout=60_000)
        page.check("input[name=format][value=zip]")
        with page.expect_download() as download:
            page.click("#export")
        archive = zipfile.ZipFile(download.value.path())

        # a prompts job with the keyboard only: arrow to the mode, type, Tab between fields, Enter
        page.goto(f"{base}/jobs")
        page.focus("input[name=mode][value=inspiration]")
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        expect(page.locator("input[name=mode][value=prompts]")).to_be_checked()
        expect(page.locator("#prompts")).to_be_visible()
        page.keyboard.press("Tab")  # the prompts textarea comes next in the form
        page.keyboard.type("A portrait photo of an old man\nA portrait photo of a young woman")
        page.keyboard.press("Tab")
        page.keyboard.type("a {age} face")
        page.keyboard.press("Tab")
        page.keyboard.type("age=young|old")
        page.focus("#job-name")
        page.keyboard.type("prompts by keyboard")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/jobs/[^/]+$"), timeout=30_000)
        expect(page.locator("body")).to_contain_text("mode prompts")
        expect(page.locator("[data-count=inputs]")).to_have_text(
            "4", timeout=30_000
        )  # 2 listed + 2 from the template
        browser.close()

    folders = list(studio["exports"].glob("*/picked"))
    assert len(folders) == 1
    exported = folders[0]
    rows = [json.loads(line) for line in (exported / "manifest.jsonl").read_text().splitlines() if line]
    assert len(rows) == 1 and rows[0]["job_id"] == job_id
    for key in ("image_path", "segmentation_path", "landmarks_path", "features_path"):
        assert (exported / rows[0][key]).is_file(), key
    assert (exported / "dataset_info.json").is_file() and (exported / "README.md").is_file()
    assert "RANDOM WEIGHTS" in (exported / "README.md").read_text().upper()
    names = archive.namelist()
    assert "manifest.jsonl" in names and sum(n.startswith("images/") for n in names) == 1
    assert not [e for e in errors if "Password forms" not in e], errors
