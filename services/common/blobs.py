"""The blob store: images, maps and arrays by key, on a local folder or any fsspec URL.

Keys are relative, slash-separated paths (`jobs/<job>/items/<item>/<stage>/<name>`). They are
validated, so a key from a request can never escape the store (no `..`, no absolute paths), and a
URI is accepted only if it points inside the store.

Local writes are atomic: the bytes go to a hidden temporary file in the target folder, are
fsynced, and then `os.replace`d over the key, so a reader sees the old blob or the new one, never
half of one. On object stores (`s3://`...) a single PUT is atomic already. Intermediates (a
stage's outputs, which a redelivered task recomputes) are written with `durable=False`: still
atomic, but not fsynced, since an fsync costs more than encoding the image and a crash only costs
a recomputation.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from services.common.errors import InvalidInput, NotFound, ServiceError, Unavailable

__all__ = [
    "BlobError",
    "BlobKeyError",
    "BlobNotFound",
    "BlobStore",
    "BlobWriteError",
    "item_key",
    "validate_key",
]

# Temporary files of in-flight writes start with this; keys may not, so list() never shows them.
TMP_PREFIX = ".sfhq-tmp-"
MAX_KEY_CHARS = 1024
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class BlobError(ServiceError):
    """Base class of blob store errors."""


class BlobKeyError(BlobError, InvalidInput):
    """A key or URI is malformed or points outside the store."""


class BlobNotFound(BlobError, NotFound, FileNotFoundError):
    """No blob under this key."""


class BlobWriteError(BlobError, Unavailable, OSError):
    """A blob could not be written (disk full, permission denied...). Nothing partial is left."""

    def __init__(self, key: str, cause: BaseException) -> None:
        super().__init__(f"could not write blob {key!r}: {cause}")
        self.key = key
        self.cause = cause


def _check_segment(segment: str, what: str) -> str:
    if not isinstance(segment, str) or not segment:
        raise BlobKeyError(f"{what} must be a non-empty string, got {segment!r}")
    if segment in (".", ".."):
        raise BlobKeyError(f"{what} {segment!r} is not allowed (keys cannot walk out of their folder)")
    if "/" in segment or "\\" in segment or _CONTROL_CHARS.search(segment):
        raise BlobKeyError(
            f"{what} {segment!r} must be one path segment (no '/', '\\' or control characters)"
        )
    return segment


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative key, else raise BlobKeyError saying why."""
    if not isinstance(key, str) or not key:
        raise BlobKeyError(f"blob key must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_CHARS:
        raise BlobKeyError(f"blob key is {len(key)} characters long; the limit is {MAX_KEY_CHARS}")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        raise BlobKeyError(f"blob key {key!r} must be relative, not an absolute path")
    for segment in key.split("/"):
        if not segment:
            raise BlobKeyError(f"blob key {key!r} has an empty path segment")
        _check_segment(segment, f"blob key {key!r}: segment")
        if segment.startswith(TMP_PREFIX):
            raise BlobKeyError(f"blob key {key!r}: names starting with {TMP_PREFIX!r} are reserved")
    return key


def item_key(job_id: str, item_id: str, stage: str, name: str) -> str:
    """`jobs/<job_id>/items/<item_id>/<stage>/<name>`: where a stage writes the outputs of an item."""
    _check_segment(job_id, "job_id")
    _check_segment(item_id, "item_id")
    _check_segment(stage, "stage")
    return validate_key(f"jobs/{job_id}/items/{item_id}/{stage}/{validate_key(name)}")


class BlobStore:
    """Blobs under one root: a local folder (default) or any fsspec URL (`s3://bucket/prefix`)."""

    item_key = staticmethod(item_key)

    def __init__(self, url: str | os.PathLike[str]) -> None:
        self.url = str(url)
        fs, root = fsspec.core.url_to_fs(self.url)
        self.fs = fs
        self.is_local = isinstance(fs, LocalFileSystem)
        if self.is_local:
            root = os.path.abspath(root)
            os.makedirs(root, exist_ok=True)
        self.root = root.rstrip("/") or "/"

    def __repr__(self) -> str:
        return f"BlobStore({self.uri_root()!r})"

    # ---- addressing -------------------------------------------------------------------------

    def _full_path(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}"

    def uri_root(self) -> str:
        return Path(self.root).as_uri() if self.is_local else self.fs.unstrip_protocol(self.root)

    def uri(self, key: str) -> str:
        """The URI of `key` (`file:///...` for a local store), usable by other processes."""
        full = self._full_path(key)
        return Path(full).as_uri() if self.is_local else self.fs.unstrip_protocol(full)

    def key_for(self, key_or_uri: str) -> str:
        """The key of `key_or_uri`; a URI must point inside this store (else BlobKeyError)."""
        if not isinstance(key_or_uri, str) or "://" not in key_or_uri:
            return validate_key(key_or_uri)
        if self.is_local:
            parsed = urlparse(key_or_uri)
            if parsed.scheme not in ("file", "local") or parsed.netloc not in ("", "localhost"):
                raise BlobKeyError(f"URI {key_or_uri!r} is not a file:// URI of this local blob store")
            path = unquote(parsed.path)
        else:
            protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
            if not any(key_or_uri.startswith(f"{p}://") for p in protocols):
                raise BlobKeyError(f"URI {key_or_uri!r} does not belong to blob store {self.uri_root()}")
            path = self.fs._strip_protocol(key_or_uri)
        prefix = self.root.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise BlobKeyError(f"URI {key_or_uri!r} is outside blob store {self.uri_root()}")
        return validate_key(path[len(prefix) :])

    def local_path(self, key_or_uri: str) -> Path | None:
        """The file path of a blob in a local store (for libraries that want a path); None otherwise."""
        return Path(self._full_path(self.key_for(key_or_uri))) if self.is_local else None

    # ---- bytes ------------------------------------------------------------------------------

    def put(self, key: str, data: bytes | bytearray | memoryview, *, durable: bool = True) -> str:
        """Write `data` under `key` atomically; returns the blob's URI. `durable=False` skips the
        fsyncs of a local store (for intermediates, which a crash only makes us recompute)."""
        full = self._full_path(key)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"blob data must be bytes, got {type(data).__name__}")
        if self.is_local:
            self._put_local(key, full, data, durable)
        else:
            try:
                parent = full.rsplit("/", 1)[0]
                self.fs.makedirs(parent, exist_ok=True)
                self.fs.pipe_file(full, bytes(data))
            except Exception as exc:
                raise BlobWriteError(key, exc) from exc
        return self.uri(key)

    def _put_local(self, key: str, full: str, data: bytes | bytearray | memoryview, durable: bool) -> None:
        folder, name = os.path.split(full)
        tmp = os.path.join(folder, f"{TMP_PREFIX}{secrets.token_hex(6)}-{name}")
        try:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                view = memoryview(data)
                while view:  # os.write may write less than asked
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)  # the bytes are on disk before the name points at them
            finally:
                os.close(fd)
            os.replace(tmp, full)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise BlobWriteError(key, exc) from exc
        if not durable:
            return
        # Persist the rename itself; best effort (not every filesystem can fsync a folder).
        with contextlib.suppress(OSError):
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def get(self, key_or_uri: str) -> bytes:
        key = self.key_for(key_or_uri)
        full = self._full_path(key)
        try:
            if self.is_local:
                with open(full, "rb") as handle:
                    return handle.read()
            return self.fs.cat_file(full)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(f"no blob {key!r} in {self.uri_root()}") from None

    def exists(self, key_or_uri: str) -> bool:
        full = self._full_path(self.key_for(key_or_uri))
        return os.path.isfile(full) if self.is_local else bool(self.fs.isfile(full))

    def delete(self, key_or_uri: str) -> bool:
        """Remove a blob; returns False if there was none."""
        full = self._full_path(self.key_for(key_or_uri))
        try:
            if self.is_local:
                os.unlink(full)
            else:
                self.fs.rm_file(full)
        except FileNotFoundError:
            return False
        return True

    def move(self, key: str, new_key: str) -> bool:
        """Move a blob to another key (a rename on a local store); returns False if there was none."""
        source, target = self._full_path(key), self._full_path(new_key)
        if self.is_local:
            try:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(source, target)
            except FileNotFoundError:
                return False
            return True
        try:
            data = self.fs.cat_file(source)
        except FileNotFoundError:
            return False
        self.put(new_key, data)
        self.fs.rm_file(source)
        return True

    def delete_folder(self, prefix: str) -> bool:
        """Remove every blob under the folder `prefix` ("jobs/<id>"); returns False if there was none."""
        folder = validate_key(prefix.rstrip("/"))
        full = self._full_path(folder)
        try:
            if self.is_local:
                shutil.rmtree(full)
            else:
                self.fs.rm(full, recursive=True)
        except FileNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys that start with `prefix` (e.g. `"jobs/j1/"`)."""
        if prefix:
            for segment in prefix.split("/")[:-1]:  # the last part may be a partial name
                _check_segment(segment, f"prefix {prefix!r}: segment")
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = f"{self.root}/{folder}".rstrip("/")
        keys: list[str] = []
        if self.is_local:
            for dirpath, _, files in os.walk(base):
                for name in files:
                    if not name.startswith(TMP_PREFIX):
                        keys.append(
                            os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                        )
        else:
            if not self.fs.exists(base):
                return []
            root = self.root.rstrip("/") + "/"
            for path in self.fs.find(base):
                path = self.fs._strip_protocol(path)
                if path.startswith(root) and not path.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
                    keys.append(path[len(root) :])
        return sorted(key for key in keys if key.startswith(prefix))

    # ---- arrays -----------------------------------------------------------------------------

    def put_npy(self, key: str, array: np.ndarray, *, durable: bool = True) -> str:
        """Store an array as `.npy` (no pickle: object arrays are refused)."""
        buffer = io.BytesIO()
        try:
            np.save(buffer, np.asarray(array), allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"blob {key!r}: only plain numeric arrays can be stored ({exc})") from None
        return self.put(key, buffer.getvalue(), durable=durable)

    def get_npy(self, key_or_uri: str) -> np.ndarray:
        data = self.get(key_or_uri)
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"blob {key_or_uri!r} is not a plain .npy array: {exc}") from None
