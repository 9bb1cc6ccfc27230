"""`sfhq run` and `sfhq up` / `down` as a user types them, and the CLI's one-line errors.

`sfhq run` is "up, submit, watch, down": its closing hint is followed word for word (`sfhq up
--data DIR`, `sfhq search ... --job ID`), so the job, its dataset and its search index must
survive the cluster's stop. The CLI runs as a subprocess with its own state folder: nothing of
the developer's own `~/.sfhq` is read.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sfhq.localenv import read_env
from sfhq.sdk import Client
from tests.helpers.data import face_path, inspiration_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def sfhq(*args: str, state: Path, timeout: float = 600, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "sfhq.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "SFHQ_STATE_DIR": str(state), "COLUMNS": "200", **(env or {})},
    )


def test_run_then_its_hint_then_up_again_keeps_job_dataset_and_search(tmp_path):
    state = tmp_path / "state"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(2):
        (inputs / f"sd_{i}.jpg").write_bytes(inspiration_path(f"sd_0{i}").read_bytes())
    out = tmp_path / "out" / "example"
    ran = sfhq(
        "run",
        str(inputs),
        str(out),
        "--random-weights",
        "-s",
        "e4e_strict_prior",
        "--image-size",
        "256",
        state=state,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    job_id = re.search(r"job (\d{8}-\d{6}-[0-9a-f]{8}):", ran.stderr).group(1)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and (out / "RANDOM_WEIGHTS.txt").exists()
    assert not (state / "cluster.env").exists()  # `run` started the cluster, so it stopped it

    # the hint, as printed: up, search, down
    hint = ran.stderr[ran.stderr.index("the cluster is stopped") :].splitlines()[1:4]
    commands = [shlex.split(line.strip()) for line in hint]
    assert [c[:2] for c in commands] == [["sfhq", "up"], ["sfhq", "search"], ["sfhq", "down"]], hint
    up = sfhq(*commands[0][1:], state=state)
    assert up.returncode == 0, up.stderr[-3000:]
    assert (state / "cluster.env").exists()
    try:
        found = sfhq(*commands[1][1:], state=state, timeout=120)
        assert found.returncode == 0, found.stderr
        assert found.stdout.count(job_id[:12]) >= 4, found.stdout  # both items (item and job columns)
        status = sfhq("status", job_id, state=state, timeout=60)
        assert status.returncode == 0 and "SUCCEEDED" in status.stdout and "written 2" in status.stdout
        # --strict: a job with a failed item exits 1; the failure names its source file
        mixed = tmp_path / "mixed"
        mixed.mkdir()
        (mixed / "broken.jpg").write_bytes(b"not an image")
        (mixed / "face.jpg").write_bytes(face_path(0).read_bytes())
        args = ("submit", str(mixed), "--mode", "annotate", "--dedup", "0", "--watch")
        lenient = sfhq(*args, state=state)
        assert lenient.returncode == 0, lenient.stderr[-2000:]
        assert "written 1" in lenient.stderr and "failed 1" in lenient.stderr
        strict = sfhq(*args, "--strict", state=state)
        assert strict.returncode == 1 and "1 items failed (--strict)" in strict.stderr
        # the prompts mode from the bundled prompt file: the tiny random SD makes no faces, so every
        # item fails at align with that reason (and the job, all of whose items failed, with them)
        prompted = sfhq(
            "submit", "--mode", "prompts", "--prompts-file", str(REPO / "examples/prompts/portraits.txt"),
            "--steps", "2", "--watch", state=state,
        )  # fmt: skip
        assert prompted.returncode == 1, prompted.stderr[-2000:]
        assert "FAILED" in prompted.stderr and "failed 4" in prompted.stderr, prompted.stderr[-2000:]
        assert "no face found" in prompted.stderr
        address = read_env(state / "cluster.env")["SFHQ_GATEWAY_ADDR"]
        # `up` started the web studio too; `sfhq studio` knows where it is
        studio_url = read_env(state / "cluster.env")["SFHQ_STUDIO_URL"]
        with urllib.request.urlopen(f"{studio_url}/healthz", timeout=10) as reply:
            assert reply.status == 200
        opened = sfhq("studio", "--no-browser", state=state)
        assert opened.returncode == 0 and opened.stdout.strip() == studio_url, opened.stderr
        with Client(address) as client:
            failed = client.list_items(strict.stdout.split()[0], state="failed")
        assert [item.error.message.split(":")[0] for item in failed] == ["broken.jpg"]
        # a second run into the same folder is refused without --append, and appends with it
        again = sfhq(
            "run", str(inputs), str(out), "-s", "e4e_strict_prior", "--image-size", "256", state=state
        )
        assert again.returncode == 1 and "--append" in again.stderr, again.stderr[-2000:]
        more = sfhq(
            "run",
            str(inputs),
            str(out),
            "-s",
            "e4e_strict_prior",
            "--image-size",
            "256",
            "--append",
            state=state,
        )
        assert more.returncode == 0, more.stderr[-3000:]
        assert "the cluster stays up" in more.stderr  # it was up before: `run` leaves it up
        stems = [json.loads(line)["stem"] for line in (out / "manifest.jsonl").read_text().splitlines()]
        assert len(stems) == 4 and len(set(stems)) == 4
    finally:
        down = sfhq(*commands[2][1:], state=state, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not (state / "cluster.env").exists()
    cluster = json.loads((out.parent / "example.work" / "cluster.json").read_text())
    for pid in cluster["pids"].values() if cluster["pids"] else []:
        assert not Path(f"/proc/{pid}").exists()
    assert cluster["pids"] == {}


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_user_errors_are_one_line_with_a_non_zero_exit(tmp_path):
    state = tmp_path / "state"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no such image or folder: /nonexistent" in _one_line_error(
        sfhq("submit", "/nonexistent", state=state)
    )
    assert f"no images in {empty}" in _one_line_error(sfhq("submit", str(empty), state=state))
    bad = _one_line_error(
        sfhq("submit", str(REPO / "tests/data/faces"), "-s", "low_prior:steps", state=state)
    )
    assert "'steps' is not key=value" in bad
    mode = _one_line_error(sfhq("submit", "--mode", "samplng", state=state))
    assert "inspiration, sampling, annotate" in mode and "annotate_only" not in mode
    slot = _one_line_error(
        sfhq("submit", "--mode", "prompts", "--template", "a {x}", "--slot", "x", state=state)
    )
    assert "slot 'x': write NAME=value|value|... or NAME=@file" in slot
    both = _one_line_error(sfhq("submit", "--append", "--overwrite", state=state))
    assert "exclude each other" in both
    serve = _one_line_error(sfhq("serve", "gateway", state=state, env={"SFHQ_PORT": "0"}))
    assert "Redis" in serve or "REDIS_URL" in serve
    started = time.monotonic()
    offline = sfhq(
        "weights",
        "download",
        "e4e-ffhq-encode",
        "--url",
        "http://sfhq-weights.invalid/e4e.pt",
        state=state,
        env={"SFHQ_WEIGHTS_DIR": str(tmp_path / "weights")},
    )
    line = _one_line_error(offline)
    assert "cannot reach sfhq-weights.invalid" in line and "sfhq weights add e4e-ffhq-encode" in line
    assert time.monotonic() - started < 20  # no retries of a DNS failure
    # inputs are checked before anything is written (random weights are hundreds of MB)
    run = _one_line_error(sfhq("run", "/nonexistent", str(tmp_path / "out"), "--random-weights", state=state))
    assert "no such image or folder: /nonexistent" in run
    assert not (tmp_path / "out.work").exists() and not (tmp_path / "out").exists()
    nothing = _one_line_error(sfhq("status", state=state, env={"SFHQ_GATEWAY_ADDR": "127.0.0.1:1"}))
    assert "UNAVAILABLE" in nothing and "sfhq up" in nothing
