"""Pictures the browser gets: WebP thumbnails cached by content hash, and parsing-map overlays."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections import OrderedDict

import numpy as np
import PIL.Image

from sfhq.annotations import PARSING_CLASSES, PARSING_COLORS

THUMB_SIZES = (128, 256, 512)
WEBP_QUALITY = 82


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def make_thumbnail(data: bytes, size: int) -> bytes:
    """The image fitted into size×size, as WebP. JPEG decodes at a reduced scale straight away."""
    with PIL.Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))  # JPEG only: decode at 1/2, 1/4, 1/8 when that is enough
        picture = image.convert("RGB")
    picture.thumbnail((size, size), PIL.Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, "WEBP", quality=WEBP_QUALITY, method=2)
    return out.getvalue()


class ThumbnailCache:
    """An LRU of thumbnails by (content hash, size), bounded in bytes; thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, digest: str, size: int) -> bytes | None:
        with self._lock:
            found = self._entries.get((digest, size))
            if found is not None:
                self._entries.move_to_end((digest, size))
                self.hits += 1
            else:
                self.misses += 1
            return found

    def thumbnail(self, data: bytes, size: int) -> tuple[str, bytes]:
        """(content hash, WebP) of `data` at `size`, made once."""
        digest = content_hash(data)
        found = self.get(digest, size)
        if found is not None:
            return digest, found
        made = make_thumbnail(data, size)
        with self._lock:
            if (digest, size) not in self._entries and len(made) <= self.max_bytes:
                self._entries[(digest, size)] = made
                self._bytes += len(made)
                while self._bytes > self.max_bytes:
                    _, dropped = self._entries.popitem(last=False)
                    self._bytes -= len(dropped)
        return digest, made


def parse_classes(spec: str) -> list[int]:
    """ "1,2,17" or "all" → class indices (ValueError naming the bad one)."""
    if spec in ("", "all"):
        return list(range(1, len(PARSING_CLASSES)))
    classes = []
    for part in spec.split(",")[: len(PARSING_CLASSES)]:
        if not part.strip().isdigit() or not 0 <= int(part) < len(PARSING_CLASSES):
            raise ValueError(f"classes: {part!r} is not a class index 0..{len(PARSING_CLASSES) - 1}")
        classes.append(int(part))
    return classes


def parsing_overlay(segmentation_png: bytes, classes: list[int], size: int) -> bytes:
    """An RGBA PNG at size×size: the chosen classes in their legend colours, everything else clear."""
    with PIL.Image.open(io.BytesIO(segmentation_png)) as image:
        labels = np.asarray(image.convert("L"))
    if labels.shape != (size, size):  # class indices: nearest, never blended
        labels = np.asarray(PIL.Image.fromarray(labels).resize((size, size), PIL.Image.Resampling.NEAREST))
    palette = np.zeros((256, 4), np.uint8)
    for index in classes:
        palette[index, :3] = PARSING_COLORS[index]
        palette[index, 3] = 255
    out = io.BytesIO()
    PIL.Image.fromarray(palette[labels], "RGBA").save(out, "PNG", compress_level=1)
    return out.getvalue()


DIGEST_TTL_S = 300.0


class Digests:
    """(user, job, item) → the content hash of its image, so a repeated thumbnail request is answered
    from the cache (or with 304) without fetching the image again."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str, str], tuple[float, str]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> str | None:
        with self._lock:
            found = self._known.get(key)
        return found[1] if found and time.monotonic() - found[0] < DIGEST_TTL_S else None

    def put(self, key: tuple[str, str, str], digest: str) -> None:
        with self._lock:
            if len(self._known) > 200_000:
                self._known.clear()
            self._known[key] = (time.monotonic(), digest)
