"""Weights registry: look-up errors, add, verify, and downloads from a local HTTP server.

The server (http.server in a thread, on 127.0.0.1) honours Range requests and can be told to
drop the connection halfway through a file, so resuming is tested for real.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from services.common.weights import (
    KNOWN_CHECKPOINTS,
    RANDOM_MARKER,
    CheckpointSpec,
    UnknownCheckpoint,
    WeightsChecksumError,
    WeightsDownloadError,
    WeightsError,
    WeightsMissing,
    WeightsRegistry,
)

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class FileServer:
    files: dict[str, bytes]
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before hanging up (once)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    base_url: str = ""


@pytest.fixture()
def file_server() -> Iterator[FileServer]:
    state = FileServer(files={})

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Range")))
            if self.path.endswith(".html"):
                body = b"<html>Google Drive can't scan this file for viruses</html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match:
                start = int(match.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            cut = state.drop_after.pop(self.path, None)
            if cut is not None:
                self.wfile.write(data[start : start + cut])
                self.wfile.flush()
                self.close_connection = True
                return  # the client sees a short body: IncompleteRead
            self.wfile.write(data[start:])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def registry_with(tmp_path: Path, **specs: CheckpointSpec) -> WeightsRegistry:
    return WeightsRegistry(tmp_path / "weights", specs=specs, retry_delay_s=0.01)


def file_spec(url: str, sha256: str | None = PAYLOAD_SHA, **extra) -> CheckpointSpec:
    return CheckpointSpec(
        "tiny", "tiny.pt", url, "test", "a test file", sha256=sha256, size=len(PAYLOAD), **extra
    )


# ---- the catalogue and look-ups -----------------------------------------------------------------


def test_known_checkpoints_cover_the_pipeline():
    for name in ("stylegan2-ffhq-config-f", "stylegan2-ada-ffhq", "e4e-ffhq-encode", "bisenet-face-parsing",
                 "clip-vit-l-14-336", "fan-2d"):  # fmt: skip
        spec = KNOWN_CHECKPOINTS[name]
        assert spec.url.startswith("https://") and spec.filename and spec.format
    assert KNOWN_CHECKPOINTS["e4e-ffhq-encode"].filename == "e4e_ffhq_encode.pt"
    assert KNOWN_CHECKPOINTS["bisenet-face-parsing"].filename == "79999_iter.pth"
    assert KNOWN_CHECKPOINTS["stylegan2-ada-ffhq"].filename == "ffhq.pkl"
    clip = KNOWN_CHECKPOINTS["clip-vit-l-14-336"]
    assert clip.is_dir and {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= set(clip.files)


def test_a_missing_checkpoint_names_the_commands_that_fix_it(tmp_path):
    registry = WeightsRegistry(tmp_path)
    with pytest.raises(WeightsMissing) as missing:
        registry.path("e4e-ffhq-encode")
    message = str(missing.value)
    assert "sfhq weights download e4e-ffhq-encode" in message
    assert "sfhq weights add e4e-ffhq-encode <path>" in message
    assert str(tmp_path / "e4e_ffhq_encode.pt") in message
    assert isinstance(missing.value, FileNotFoundError)
    with pytest.raises(UnknownCheckpoint, match="known: "):
        registry.path("stylegan3")


def test_a_folder_checkpoint_needs_all_its_files(tmp_path):
    registry = WeightsRegistry(tmp_path)
    folder = registry.expected_path("clip-vit-l-14-336")
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(WeightsMissing, match="missing files: model.safetensors, vocab.json, merges.txt"):
        registry.path("clip-vit-l-14-336")
    for name in ("model.safetensors", "vocab.json", "merges.txt"):
        (folder / name).write_bytes(b"x")
    assert registry.path("clip-vit-l-14-336") == folder
    assert {row["name"]: row["present"] for row in registry.list()}["clip-vit-l-14-336"] is True


# ---- add, verify, hashes --------------------------------------------------------------------------


def test_add_copies_or_links_and_verifies(tmp_path):
    source = tmp_path / "download.pt"
    source.write_bytes(PAYLOAD)
    registry = registry_with(tmp_path, tiny=file_spec("http://unused"))
    path = registry.add("tiny", source)
    assert path == tmp_path / "weights/tiny.pt" and path.read_bytes() == PAYLOAD and not path.is_symlink()
    assert registry.verify("tiny") and registry.sha256("tiny") == PAYLOAD_SHA
    linked = registry.add("tiny", source, link=True)
    assert linked.is_symlink() and linked.resolve() == source
    rows = registry.list()
    assert rows[0]["present"] and rows[0]["recorded_sha256"] == PAYLOAD_SHA

    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(b"not the checkpoint")
    with pytest.raises(WeightsChecksumError, match="expected " + PAYLOAD_SHA):
        registry.add("tiny", wrong)
    assert not (tmp_path / "weights/tiny.pt").exists()  # a bad copy is not kept
    with pytest.raises(WeightsError, match="not a file"):
        registry.add("tiny", tmp_path / "nope.pt")


def test_verify_without_a_published_hash_records_it_and_caches(tmp_path, monkeypatch):
    registry = registry_with(tmp_path, tiny=file_spec("http://unused", sha256=None))
    source = tmp_path / "t.pt"
    source.write_bytes(PAYLOAD)
    registry.add("tiny", source)
    assert registry.verify("tiny") is True
    assert registry.sha256("tiny") == PAYLOAD_SHA

    import services.common.weights as weights_module

    calls = []
    monkeypatch.setattr(weights_module, "_sha256_file", lambda p: calls.append(p) or "recomputed")
    assert registry.sha256("tiny") == PAYLOAD_SHA and calls == []  # cached by size + mtime
    registry.expected_path("tiny").write_bytes(PAYLOAD + b"changed")
    assert registry.sha256("tiny") == "recomputed" and len(calls) == 1


def test_hash_prefix_from_the_file_name(tmp_path):
    source = tmp_path / "fan.pth.tar"
    source.write_bytes(PAYLOAD)
    good = registry_with(
        tmp_path / "a", tiny=file_spec("http://x", sha256=None, sha256_prefix=PAYLOAD_SHA[:10])
    )
    good.add("tiny", source)
    assert good.verify("tiny")
    bad = registry_with(tmp_path / "b", tiny=file_spec("http://x", sha256=None, sha256_prefix="11f355bf06"))
    with pytest.raises(WeightsChecksumError):
        bad.add("tiny", source)


def test_folder_hash_covers_every_file(tmp_path):
    spec = CheckpointSpec("dir", "dir", "http://x", "test", "folder", is_dir=True, files=("a", "b"))
    registry = registry_with(tmp_path, dir=spec)
    source = tmp_path / "src"
    source.mkdir()
    (source / "a").write_bytes(b"1")
    (source / "b").write_bytes(b"2")
    registry.add("dir", source)
    first = registry.sha256("dir")
    (registry.expected_path("dir") / "b").write_bytes(b"3")
    assert registry.sha256("dir") != first


def test_random_marker(tmp_path):
    registry = WeightsRegistry(tmp_path / "w")
    assert not registry.is_random()
    marker = registry.mark_random("tiny demo models, seed 0")
    assert marker.name == RANDOM_MARKER and registry.is_random()
    assert "seed 0" in marker.read_text()


# ---- downloads --------------------------------------------------------------------------------


def test_download_verifies_and_renames_atomically(tmp_path, file_server):
    file_server.files["/tiny.pt"] = PAYLOAD
    registry = registry_with(tmp_path, tiny=file_spec(f"{file_server.base_url}/tiny.pt"))
    path = registry.download("tiny", progress=False)
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.startswith(".")) == ["tiny.pt"]
    assert registry.download("tiny", progress=False) == path  # present and verified: not fetched again
    assert len(file_server.requests) == 1


def test_download_resumes_after_a_dropped_connection(tmp_path, file_server):
    file_server.files["/tiny.pt"] = PAYLOAD
    file_server.drop_after["/tiny.pt"] = 300_000
    registry = registry_with(tmp_path, tiny=file_spec(f"{file_server.base_url}/tiny.pt"))
    path = registry.download("tiny", progress=True)  # with the progress bar, as the CLI does
    assert path.read_bytes() == PAYLOAD
    assert file_server.requests == [("/tiny.pt", None), ("/tiny.pt", "bytes=300000-")]


def test_download_resumes_a_part_file_left_by_an_earlier_run(tmp_path, file_server):
    file_server.files["/tiny.pt"] = PAYLOAD
    registry = registry_with(tmp_path, tiny=file_spec(f"{file_server.base_url}/tiny.pt"))
    registry.weights_dir.mkdir(parents=True)
    (registry.weights_dir / "tiny.pt.part").write_bytes(PAYLOAD[:1000])
    assert registry.download("tiny", progress=False).read_bytes() == PAYLOAD
    assert file_server.requests == [("/tiny.pt", "bytes=1000-")]


def test_a_checksum_mismatch_keeps_nothing(tmp_path, file_server):
    file_server.files["/tiny.pt"] = PAYLOAD[:-1] + b"\x00"  # one byte differs
    registry = registry_with(tmp_path, tiny=file_spec(f"{file_server.base_url}/tiny.pt"))
    with pytest.raises(WeightsChecksumError) as mismatch:
        registry.download("tiny", progress=False)
    assert mismatch.value.expected == PAYLOAD_SHA
    assert not any(p.name.startswith("tiny.pt") for p in registry.weights_dir.iterdir())


def test_download_errors_are_clear(tmp_path, file_server):
    registry = registry_with(
        tmp_path,
        missing=replace(file_spec(f"{file_server.base_url}/missing.pt"), name="missing"),
        page=replace(file_spec(f"{file_server.base_url}/confirm.html"), name="page"),
    )
    with pytest.raises(WeightsDownloadError, match="HTTP 404"):
        registry.download("missing", progress=False)
    with pytest.raises(WeightsDownloadError, match="HTML page.*sfhq weights add"):
        registry.download("page", progress=False)
    with pytest.raises(WeightsDownloadError, match="not an http"):
        registry.download("missing", url="ftp://example.org/x", progress=False)


def test_download_a_folder_checkpoint(tmp_path, file_server):
    file_server.files.update(
        {"/clip/config.json": b"{}", "/clip/model.safetensors": PAYLOAD, "/clip/vocab.json": b"{}"}
    )
    spec = CheckpointSpec(
        "clip", "clip-folder", f"{file_server.base_url}/clip", "hf", "folder", is_dir=True,
        files=("config.json", "model.safetensors", "vocab.json"), optional_files=("tokenizer.json",),
    )  # fmt: skip
    registry = registry_with(tmp_path, clip=spec)
    folder = registry.download("clip", progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "vocab.json"]
    assert registry.path("clip") == folder and registry.verify("clip")
