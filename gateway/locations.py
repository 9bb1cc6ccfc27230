"""Where a job may read and write: safe by default, checked on the string before any I/O.

* Protocols: only local files and the blob store's own protocol (e.g. `s3` when the blob store
  is on S3). Anything else (`memory://`, `webhdfs://`, `ftp://`, `http://`...) is refused from
  the URI string alone: no connection is opened to check it.
* Places: the blob store, where each user has an area of their own (`users/<user>/`), plus the
  folders or URL prefixes of `SFHQ_DATA_ROOTS` (opt-in). A user cannot point a job at another
  user's area, and relative paths are refused (they would resolve against each process's working
  directory).
* Links: local paths are compared after resolving every symbolic link, so no link leads out of a
  root, on read or on write; a link met while listing an input folder is skipped.
* Input folders are listed with limits (files, bytes, depth) checked while walking, before
  anything is copied.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import fsspec

from gateway.jobs import IMAGE_EXTENSIONS, SpecError
from services.common.blobs import BlobStore

LOCAL_PROTOCOLS = ("file", "local")


def user_area(user: str) -> str:
    """The blob-store key prefix that belongs to `user`."""
    return f"users/{user}"


def protocol_of(uri: str) -> str:
    """The protocol a URI names ("file" for a plain path), from the string alone."""
    if "://" not in uri:
        return "file"
    return uri.split("://", 1)[0].lower()


@dataclass(frozen=True)
class FolderLimits:
    files: int
    total_bytes: int
    depth: int


@dataclass(frozen=True)
class Place:
    """A checked location: its URI, and whether it lies in the blob store (else in a data root)."""

    uri: str
    in_blob_store: bool


class Locations:
    """The rules above for one gateway: its blob store and its data roots."""

    def __init__(self, blobs: BlobStore, data_roots: list[str], limits: FolderLimits) -> None:
        self.blobs = blobs
        self.limits = limits
        self.blob_protocols = set(LOCAL_PROTOCOLS) if blobs.is_local else _protocols(blobs)
        self.allowed_protocols = {"file", *self.blob_protocols}
        for root in data_roots:
            self._check_protocol("SFHQ_DATA_ROOTS", root)
        self.data_roots = [self._comparable("SFHQ_DATA_ROOTS", root) for root in data_roots]
        self.blob_root = self._comparable("blob store", blobs.uri_root())

    # ---- checks on strings ------------------------------------------------------------------

    def _check_protocol(self, field: str, uri: str) -> None:
        protocol = protocol_of(uri)
        if protocol not in self.allowed_protocols:
            allowed = ", ".join(sorted(self.allowed_protocols - {"local"}))
            raise SpecError(f"{field}: the {protocol}:// protocol is not allowed here (allowed: {allowed})")

    def _comparable(self, field: str, uri: str) -> str:
        """A local path resolved through its links (nearest existing ancestor), or `proto://path`."""
        protocol = protocol_of(uri)
        if protocol in LOCAL_PROTOCOLS:
            path = unquote(urlparse(uri).path) if "://" in uri else uri
            if not os.path.isabs(path):
                raise SpecError(
                    f"{field}: {uri!r} is a relative path; give an absolute path or a blob-store URL"
                )
            return _resolve(path)
        rest = uri.split("://", 1)[1]
        return f"{protocol}://{posixpath.normpath('/' + rest)[1:]}"

    def canonical(self, field: str, uri: str) -> str:
        """The one name of a location (links resolved, `file://` and plain paths alike): datasets are
        known by it."""
        self._check_protocol(field, uri)
        return self._comparable(field, uri)

    @staticmethod
    def _within(location: str, root: str) -> bool:
        return location == root or location.startswith(root.rstrip("/") + "/")

    def place(self, field: str, uri: str, user: str) -> Place:
        """Check that `uri` is the caller's: in their blob-store area, or in a data root."""
        if not uri or len(uri) > 4096 or "\x00" in uri:
            raise SpecError(f"{field}: missing, too long or not text")
        self._check_protocol(field, uri)
        location = self._comparable(field, uri)
        if self._within(location, self.blob_root):
            own = self._comparable(field, self.blobs.uri(user_area(user)))
            if not self._within(location, own):
                raise SpecError(
                    f"{field}: {uri!r} is in the blob store but outside your area ({user_area(user)}/); "
                    "another user's data cannot be read or written"
                )
            return Place(uri, in_blob_store=True)
        if any(self._within(location, root) for root in self.data_roots):
            return Place(uri, in_blob_store=False)
        roots = ", ".join(self.data_roots) or "none configured"
        raise SpecError(
            f"{field}: {uri!r} is outside your blob-store area and outside the data roots ({roots}; "
            "an operator can add folders with SFHQ_DATA_ROOTS)"
        )

    def blob_key(self, field: str, key_or_uri: str, user: str) -> str:
        """An input given as a blob key (or a URI of the blob store): it must be in the user's area."""
        uri = key_or_uri if "://" in key_or_uri else self.blobs.uri(key_or_uri)
        self.place(field, uri, user)
        return self.blobs.key_for(uri)

    # ---- input folders ----------------------------------------------------------------------

    def list_images(self, field: str, uri: str, user: str) -> list[tuple[str, int]]:
        """The images of an input folder (path or URL, size), sorted; limits checked while listing."""
        self.place(field, uri, user)
        found: list[tuple[str, int]] = []
        total = 0
        for path, size in self._walk(field, uri):
            found.append((path, size))
            total += size
            if len(found) > self.limits.files:
                raise SpecError(f"{field}: more than {self.limits.files} images (SFHQ_MAX_INPUT_FILES)")
            if total > self.limits.total_bytes:
                raise SpecError(
                    f"{field}: more than {self.limits.total_bytes} bytes of images (SFHQ_MAX_INPUT_BYTES)"
                )
        if not found:
            raise SpecError(f"{field}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {uri!r}")
        return sorted(found)

    def _walk(self, field: str, uri: str) -> Iterator[tuple[str, int]]:
        if protocol_of(uri) in LOCAL_PROTOCOLS:
            yield from self._walk_local(field, unquote(urlparse(uri).path) if "://" in uri else uri)
            return
        try:
            fs, root = fsspec.core.url_to_fs(uri)  # the blob store's own protocol, checked above
            for folder, _, files in fs.walk(root, maxdepth=self.limits.depth + 1, detail=True):
                for name, info in files.items():
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        yield fs.unstrip_protocol(f"{folder.rstrip('/')}/{name}"), int(info.get("size") or 0)
        except SpecError:
            raise
        except Exception as exc:
            raise SpecError(f"{field}: cannot list {uri!r}: {type(exc).__name__}: {exc}") from exc

    def _walk_local(self, field: str, path: str) -> Iterator[tuple[str, int]]:
        root = _resolve(path)
        if not os.path.isdir(root):
            raise SpecError(f"{field}: {path!r} is not a folder")
        base_depth = root.rstrip("/").count("/")
        for folder, subfolders, files in os.walk(root, followlinks=False):
            if folder.count("/") - base_depth >= self.limits.depth:
                subfolders.clear()  # deeper folders are not listed (SFHQ_MAX_INPUT_DEPTH)
            for name in sorted(files):
                if not name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                full = os.path.join(folder, name)
                info = os.lstat(full)
                if not stat.S_ISREG(info.st_mode):
                    continue  # a symbolic link (or a device...): never followed out of the root
                yield full, info.st_size


def _resolve(path: str) -> str:
    """`path` with every symbolic link resolved, also when its last parts do not exist yet."""
    return str(Path(path).resolve(strict=False))


def _protocols(blobs: BlobStore) -> set[str]:
    protocol = blobs.fs.protocol
    return set(protocol if isinstance(protocol, tuple) else (protocol,))
