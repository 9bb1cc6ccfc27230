"""The weights registry: which official checkpoints exist, where they live, and how to get them.

Every model loads its checkpoint through `WeightsRegistry.path(name)`. A missing file is a
`WeightsMissing` error whose message names the two ways to fix it (`sfhq weights download` and
`sfhq weights add`) -- never a silent random model.

Checksums: where the publisher's sha256 is known it is checked on download/add/verify. For the
checkpoints published without one (most of them: Google Drive and Hugging Face links), `verify`
computes the sha256, records it in `<weights_dir>/.sfhq-sha256.json` and returns True; the
recorded hash is what provenance reports, so a dataset still says exactly which bytes made it.

A `RANDOM_WEIGHTS` marker file in the folder means the folder holds random demo weights
(`sfhq weights make-random` / `sfhq run --random-weights`).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import logging
import os
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import FailedPrecondition

__all__ = [
    "KNOWN_CHECKPOINTS",
    "RANDOM_MARKER",
    "CheckpointSpec",
    "UnknownCheckpoint",
    "WeightsChecksumError",
    "WeightsDownloadError",
    "WeightsError",
    "WeightsMissing",
    "WeightsRegistry",
]

log = logging.getLogger(__name__)

RANDOM_MARKER = "RANDOM_WEIGHTS"
HASH_CACHE = ".sfhq-sha256.json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class CheckpointSpec:
    """One official checkpoint: a file, or a folder of files (`is_dir`)."""

    name: str
    filename: str  # file (or folder) name inside the weights folder
    url: str  # direct download URL; for a folder, the base URL the file names are appended to
    format: str
    description: str
    sha256: str | None = None  # None: not published; verify() records the computed hash instead
    size: int | None = None  # bytes, when known
    is_dir: bool = False
    files: tuple[str, ...] = ()  # a folder's required files
    optional_files: tuple[str, ...] = ()  # downloaded when the source has them, never required
    page_url: str = ""  # where a person finds the checkpoint (README / model card)
    sha256_prefix: str | None = None  # the hash digits some publishers put in the file name
    optional: bool = False  # not needed by the default pipeline


def _gdrive(file_id: str) -> str:
    # confirm=t skips Drive's "cannot scan this file for viruses" page on large files.
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


# A diffusers Stable Diffusion folder: the pipeline's index and each component's config and
# safetensors weights (a `.bin`-only folder is refused: it would be unpickled).
_DIFFUSERS_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/tokenizer_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
_DIFFUSERS_OPTIONAL = (
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer.json",
)

KNOWN_CHECKPOINTS: dict[str, CheckpointSpec] = {
    spec.name: spec
    for spec in (
        CheckpointSpec(
            name="stylegan2-ffhq-config-f",
            filename="stylegan2-ffhq-config-f.pt",
            url=_gdrive("1EM87UquaoQmk17Q8d5kYIAHqu0dkYqdT"),
            format="rosinality-stylegan2",
            description="StyleGAN2 FFHQ config-f, 1024 px, rosinality conversion ({'g_ema', 'latent_avg'})",
            page_url="https://github.com/omertov/encoder4editing#pretrained-models",
        ),
        CheckpointSpec(
            name="stylegan2-ada-ffhq",
            filename="ffhq.pkl",
            url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/ffhq.pkl",
            format="nvlabs-stylegan2-ada-pickle",
            description="StyleGAN2-ADA FFHQ 1024 px network pickle (NVlabs; read with the restricted unpickler)",
            page_url="https://github.com/NVlabs/stylegan2-ada-pytorch#data-repository",
            optional=True,
        ),
        CheckpointSpec(
            name="e4e-ffhq-encode",
            filename="e4e_ffhq_encode.pt",
            url=_gdrive("1cUv_reLE6k3604or78EranS7XzuVMWeO"),
            format="e4e-psp",
            description="encoder4editing FFHQ encoder + its StyleGAN2 decoder ({'state_dict', 'opts', 'latent_avg'})",
            page_url="https://github.com/omertov/encoder4editing#pretrained-models",
        ),
        CheckpointSpec(
            name="bisenet-face-parsing",
            filename="79999_iter.pth",
            url=_gdrive("154JgKpzCPW82qINcVieuPH3fZ2e0P812"),
            format="bisenet-state-dict",
            description="BiSeNet face parsing, 19 CelebAMask-HQ classes (zllrunning/face-parsing.PyTorch)",
            page_url="https://github.com/zllrunning/face-parsing.PyTorch#training",
        ),
        CheckpointSpec(
            name="clip-vit-l-14-336",
            filename="clip-vit-large-patch14-336",
            url="https://huggingface.co/openai/clip-vit-large-patch14-336/resolve/main",
            format="hf-clip-folder",
            description="OpenAI CLIP ViT-L/14@336px, Hugging Face folder (the model of SFHQ's released features)",
            is_dir=True,
            files=("config.json", "model.safetensors", "vocab.json", "merges.txt"),
            optional_files=(
                "tokenizer_config.json",
                "special_tokens_map.json",
                "tokenizer.json",
                "preprocessor_config.json",
            ),
            page_url="https://huggingface.co/openai/clip-vit-large-patch14-336",
        ),
        CheckpointSpec(
            name="clip-vit-l-14",
            filename="clip-vit-large-patch14",
            url="https://huggingface.co/openai/clip-vit-large-patch14/resolve/main",
            format="hf-clip-folder",
            description="OpenAI CLIP ViT-L/14 (224 px), Hugging Face folder: the CLIP_ViTL_14 features of SFHQ's pickles",
            is_dir=True,
            files=("config.json", "model.safetensors", "vocab.json", "merges.txt"),
            optional_files=("tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"),
            page_url="https://huggingface.co/openai/clip-vit-large-patch14",
            optional=True,
        ),
        CheckpointSpec(
            name="convnext-xlarge-224-22k",
            filename="convnext-xlarge-224-22k",
            url="https://huggingface.co/facebook/convnext-xlarge-224-22k/resolve/main",
            format="hf-convnext-folder",
            description="ConvNeXt-XL ImageNet-22k, Hugging Face folder: the ConvNext_XL_Imagenet21k features of SFHQ's pickles",
            is_dir=True,
            files=("config.json",),
            # transformers reads a .bin with torch.load(weights_only=True): tensors only, no code
            optional_files=("model.safetensors", "pytorch_model.bin", "preprocessor_config.json"),
            page_url="https://huggingface.co/facebook/convnext-xlarge-224-22k",
            optional=True,
        ),
        *(
            CheckpointSpec(
                name=name,
                filename=name,
                url=f"https://huggingface.co/{repo}/resolve/main",
                format="diffusers-stable-diffusion",
                description=f"Stable Diffusion {version}, diffusers folder (safetensors; the prompts job mode, SFHQ part {part})",
                is_dir=True,
                files=_DIFFUSERS_FILES,
                optional_files=_DIFFUSERS_OPTIONAL,
                page_url=f"https://huggingface.co/{repo}",
                optional=True,
            )
            for name, repo, version, part in (
                ("stable-diffusion-2-1", "stabilityai/stable-diffusion-2-1", "v2.1", 4),
                ("stable-diffusion-v1-4", "CompVis/stable-diffusion-v1-4", "v1.4", 2),
            )
        ),
        CheckpointSpec(
            name="fan-2d",
            filename="2DFAN4-11f355bf06.pth.tar",
            url="https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
            format="face-alignment-fan",
            description="face-alignment 2D-FAN-4 68-point landmark network (optional second landmark source)",
            page_url="https://github.com/1adrianb/face-alignment",
            sha256_prefix="11f355bf06",
            optional=True,
        ),
    )
}


class WeightsError(FailedPrecondition):
    """Base class of weights registry errors."""


class UnknownCheckpoint(WeightsError, ValueError):
    """A name that is not in the registry."""


class WeightsDownloadError(WeightsError):
    """A download failed (HTTP error, an HTML page instead of a file, too many broken connections)."""


class WeightsChecksumError(WeightsError):
    """A file's sha256 differs from the published one; the file was not kept."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(
            f"checkpoint {name!r}: sha256 is {actual}, expected {expected}; the file was discarded"
        )
        self.name = name
        self.expected = expected
        self.actual = actual


class WeightsMissing(WeightsError, FileNotFoundError):
    """A checkpoint is not in the weights folder. The message says how to get it."""

    def __init__(self, name: str, path: Path, detail: str = "") -> None:
        message = (
            f"checkpoint {name!r} is missing: expected {path}{detail}. "
            f"Download it with `sfhq weights download {name}`, or register a copy you already have "
            f"with `sfhq weights add {name} <path>`."
        )
        super().__init__(message)
        self.name = name
        self.path = path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class WeightsRegistry:
    """The checkpoints of one weights folder."""

    def __init__(
        self,
        weights_dir: str | os.PathLike[str],
        specs: dict[str, CheckpointSpec] | None = None,
        *,
        retry_delay_s: float = 1.0,
    ) -> None:
        self.weights_dir = Path(weights_dir).expanduser()
        self.specs = dict(KNOWN_CHECKPOINTS if specs is None else specs)
        self.retry_delay_s = retry_delay_s  # first pause before resuming a broken download; doubles

    # ---- look-up ----------------------------------------------------------------------------

    def spec(self, name: str) -> CheckpointSpec:
        try:
            return self.specs[name]
        except KeyError:
            raise UnknownCheckpoint(
                f"unknown checkpoint {name!r}; known: {', '.join(sorted(self.specs))}"
            ) from None

    def expected_path(self, name: str) -> Path:
        """Where checkpoint `name` lives in this folder (whether or not it is there)."""
        return self.weights_dir / self.spec(name).filename

    def _missing_files(self, spec: CheckpointSpec, path: Path) -> list[str]:
        if spec.is_dir:
            if not path.is_dir():
                return list(spec.files) or ["(folder)"]
            return [name for name in spec.files if not (path / name).is_file()]
        return [] if path.is_file() else [spec.filename]

    def path(self, name: str) -> Path:
        """The checkpoint's file (or folder); raises WeightsMissing if it is not there."""
        spec = self.spec(name)
        path = self.expected_path(name)
        missing = self._missing_files(spec, path)
        if missing:
            detail = f" (missing files: {', '.join(missing)})" if spec.is_dir and path.is_dir() else ""
            raise WeightsMissing(name, path, detail)
        return path

    def has(self, name: str) -> bool:
        """True when the checkpoint is present and complete."""
        return not self._missing_files(self.spec(name), self.expected_path(name))

    def list(self) -> list[dict[str, Any]]:
        """One row per known checkpoint: its spec, where it goes, and whether it is present."""
        cache = self._read_cache()
        rows = []
        for name, spec in self.specs.items():
            path = self.expected_path(name)
            present = not self._missing_files(spec, path)
            rows.append(
                {
                    "name": name,
                    "filename": spec.filename,
                    "path": str(path),
                    "present": present,
                    "format": spec.format,
                    "description": spec.description,
                    "url": spec.url,
                    "page_url": spec.page_url,
                    "sha256": spec.sha256,
                    "recorded_sha256": self._cached_hash(cache, path) if present else None,
                    "size": spec.size,
                    "is_dir": spec.is_dir,
                    "optional": spec.optional,
                }
            )
        return rows

    # ---- random demo weights ----------------------------------------------------------------

    def is_random(self) -> bool:
        """True if this folder holds random demo weights (a RANDOM_WEIGHTS marker file)."""
        return (self.weights_dir / RANDOM_MARKER).is_file()

    def mark_random(self, note: str = "") -> Path:
        """Mark the folder as random demo weights; every service then says so loudly."""
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        marker = self.weights_dir / RANDOM_MARKER
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        marker.write_text(f"RANDOM demo weights, not the official checkpoints ({stamp})\n{note}\n")
        return marker

    # ---- checksums --------------------------------------------------------------------------

    def _read_cache(self) -> dict[str, Any]:
        try:
            return json.loads((self.weights_dir / HASH_CACHE).read_text())
        except (OSError, ValueError):
            return {}

    def _write_cache(self, cache: dict[str, Any]) -> None:
        # The cache only saves re-hashing; a read-only weights volume (containers) must not break loading.
        tmp = self.weights_dir / f"{HASH_CACHE}.{os.getpid()}.tmp"
        try:
            self.weights_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
            os.replace(tmp, self.weights_dir / HASH_CACHE)
        except OSError as exc:
            log.debug("cannot write the checksum cache in %s: %s", self.weights_dir, exc)

    def _stamp(self, path: Path) -> dict[str, int]:
        stat = path.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def _cached_hash(self, cache: dict[str, Any], path: Path) -> str | None:
        entry = cache.get(path.name)
        if not entry:
            return None
        stamp = self._dir_stamp(path) if path.is_dir() else self._stamp(path)
        return entry.get("sha256") if entry.get("stamp") == stamp else None

    def _dir_stamp(self, path: Path) -> builtins.list[builtins.list[Any]]:
        return [[str(f.relative_to(path)), *self._stamp(f).values()] for f in self._dir_files(path)]

    @staticmethod
    def _dir_files(path: Path) -> builtins.list[Path]:  # `list` is also a method here
        return sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))

    def provenance(self, name: str) -> dict[str, Any]:
        """What a dataset records about a checkpoint it was made with: name, file, sha256, random or not."""
        return {
            "checkpoint": name,
            "file": self.path(name).name,
            "sha256": self.sha256(name),
            "random_weights": self.is_random(),
        }

    def sha256(self, name: str) -> str:
        """sha256 of the checkpoint (for a folder: of its sorted `"<sha256>  <file>"` lines).

        Cached by size and mtime, so the 1 GB files are hashed once.
        """
        path = self.path(name)
        cache = self._read_cache()
        cached = self._cached_hash(cache, path)
        if cached:
            return cached
        if path.is_dir():
            lines = "".join(f"{_sha256_file(f)}  {f.relative_to(path)}\n" for f in self._dir_files(path))
            digest = hashlib.sha256(lines.encode()).hexdigest()
            cache[path.name] = {"sha256": digest, "stamp": self._dir_stamp(path)}
        else:
            digest = _sha256_file(path)
            cache[path.name] = {"sha256": digest, "stamp": self._stamp(path)}
        self._write_cache(cache)
        return digest

    def verify(self, name: str) -> bool:
        """True if the checkpoint matches its published sha256 (or hash prefix).

        Without a published hash there is nothing to compare: the computed sha256 is recorded
        (see `sha256`) and the answer is True.
        """
        spec = self.spec(name)
        actual = self.sha256(name)
        if spec.sha256:
            return actual == spec.sha256.lower()
        if spec.sha256_prefix:
            return actual.startswith(spec.sha256_prefix.lower())
        log.info("checkpoint %s has no published sha256; recorded %s", name, actual)
        return True

    def _check_hash(self, name: str, actual: str) -> None:
        spec = self.spec(name)
        if spec.sha256 and actual != spec.sha256.lower():
            raise WeightsChecksumError(name, spec.sha256, actual)
        if spec.sha256_prefix and not actual.startswith(spec.sha256_prefix.lower()):
            raise WeightsChecksumError(name, f"{spec.sha256_prefix}...", actual)

    # ---- adding -----------------------------------------------------------------------------

    def add(self, name: str, src: str | os.PathLike[str], link: bool = False) -> Path:
        """Register a checkpoint you already have: copy it in (atomically) or, with `link`, symlink it."""
        spec = self.spec(name)
        source = Path(src).expanduser().resolve()
        if spec.is_dir:
            missing = [f for f in spec.files if not (source / f).is_file()]
            if not source.is_dir() or missing:
                raise WeightsError(
                    f"{source} is not a {spec.format} folder for {name!r} (missing: {', '.join(missing)})"
                )
        elif not source.is_file():
            raise WeightsError(f"{source} is not a file; {name!r} is a single {spec.format} file")
        dest = self.expected_path(name)
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        with self._lock(dest):
            if link:
                tmp = dest.with_name(f".{dest.name}.link-{os.getpid()}")
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(source, target_is_directory=spec.is_dir)
                self._replace(tmp, dest)
            else:
                tmp = dest.with_name(f".{dest.name}.copy-{os.getpid()}")
                self._remove(tmp)
                if spec.is_dir:
                    shutil.copytree(source, tmp)
                else:
                    shutil.copyfile(source, tmp)
                self._replace(tmp, dest)
        self._settle_hash(name, dest)
        return dest

    def _settle_hash(self, name: str, dest: Path) -> None:
        """Check the new file against a published hash; on mismatch remove it again."""
        try:
            self._check_hash(name, self.sha256(name))
        except WeightsChecksumError:
            self._remove(dest)
            raise

    @staticmethod
    def _remove(path: Path) -> None:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)

    def _replace(self, tmp: Path, dest: Path) -> None:
        # os.replace cannot put a folder over a folder: move the old one aside first.
        if dest.is_dir() and not dest.is_symlink():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            self._remove(old)
            os.replace(dest, old)
            os.replace(tmp, dest)
            self._remove(old)
        else:
            os.replace(tmp, dest)

    @contextlib.contextmanager
    def _lock(self, dest: Path) -> Iterator[None]:
        """One writer per checkpoint across processes (two `sfhq weights download` at once)."""
        lock_path = dest.with_name(f".{dest.name}.lock")
        with open(lock_path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ---- downloading ------------------------------------------------------------------------

    def download(
        self,
        name: str,
        url: str | None = None,
        progress: bool = True,
        *,
        force: bool = False,
        retries: int = 5,
    ) -> Path:
        """Fetch a checkpoint over HTTP(S): resumable (Range), verified, renamed into place atomically.

        A checkpoint already present (and matching its published hash, when there is one) is kept
        unless `force`.
        """
        spec = self.spec(name)
        dest = self.expected_path(name)
        if not force and not self._missing_files(spec, dest) and self.verify(name):
            log.info("checkpoint %s is already present at %s", name, dest)
            return dest
        source = url or spec.url
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        with self._lock(dest):
            if spec.is_dir:
                part_dir = dest.with_name(dest.name + ".part")
                part_dir.mkdir(exist_ok=True)
                for file in (*spec.files, *spec.optional_files):
                    target = part_dir / file
                    if target.is_file():
                        continue  # finished by an earlier, interrupted run
                    try:
                        self._fetch(f"{source.rstrip('/')}/{file}", target, progress, retries, name)
                    except WeightsDownloadError as exc:
                        if file in spec.files:
                            raise
                        log.info("optional file %s of %s not fetched: %s", file, name, exc)
                self._replace(part_dir, dest)
            else:
                part = dest.with_name(dest.name + ".part")
                self._fetch(source, part, progress, retries, name)
                actual = _sha256_file(part)
                try:
                    self._check_hash(name, actual)
                except WeightsChecksumError:
                    part.unlink(missing_ok=True)
                    raise
                os.replace(part, dest)
        if not spec.is_dir and not spec.sha256:
            log.info("downloaded %s; no published sha256, recorded %s", name, self.sha256(name))
        self._settle_hash(name, dest)
        return dest

    def _fetch(self, url: str, part: Path, progress: bool, retries: int, name: str) -> None:
        """Download `url` into `part`, resuming what `part` already holds."""
        if not url.startswith(("http://", "https://")):
            raise WeightsDownloadError(f"{url!r} is not an http(s) URL")
        failures = 0
        while True:
            try:
                if self._fetch_once(url, part, progress):
                    return
                reason = "the connection closed before the end of the file"
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    raise WeightsDownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
                unreachable = _unreachable(exc)
                if unreachable:  # retrying cannot help
                    host = urllib.parse.urlparse(url).hostname or url
                    raise WeightsDownloadError(
                        f"cannot reach {host} ({unreachable}): download {name} on a machine that is online "
                        f"and register it here with `sfhq weights add {name} PATH`"
                    ) from None
                reason = str(exc)
            failures += 1
            if failures > retries:
                raise WeightsDownloadError(f"{url}: gave up after {failures} broken transfers ({reason})")
            log.warning("download of %s interrupted (%s); resuming (attempt %d)", url, reason, failures + 1)
            time.sleep(min(self.retry_delay_s * 2 ** (failures - 1), 30.0))

    def _fetch_once(self, url: str, part: Path, progress: bool) -> bool:
        """One HTTP request. True when the file is complete."""
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "sfhq-factory weights", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # nothing left to fetch
                return True
            raise
        with response:
            if response.status == 206:
                mode = "ab"
            else:  # 200: the server ignored the Range header, so start over
                mode, have = "wb", 0
            content_type = response.headers.get("Content-Type", "")
            if content_type.startswith("text/html"):
                raise WeightsDownloadError(
                    f"{url} returned an HTML page, not the file (Google Drive shows one for quota or "
                    "confirmation); download it in a browser and run `sfhq weights add NAME PATH`"
                )
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            written = have
            with open(part, mode) as out, _progress_bar(part.name, total, have, progress) as advance:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    written += len(chunk)
                    advance(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        return total is None or written >= total


def _unreachable(exc: BaseException) -> str:
    """Why no connection could be made at all (no DNS, no route, refused), or "" for a transfer
    broken half-way (worth resuming)."""
    reason = getattr(exc, "reason", None)
    if not isinstance(exc, urllib.error.URLError) or not isinstance(reason, OSError):
        return ""
    if isinstance(reason, socket.gaierror | ConnectionRefusedError):
        return str(reason)
    if reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN):
        return str(reason)
    return ""


@contextlib.contextmanager
def _progress_bar(label: str, total: int | None, done: int, enabled: bool) -> Iterator[Any]:
    """A rich progress bar on stderr; yields `advance(n_bytes)`."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda n: bar.advance(task, n)
