"""The process's one vector index: loaded from the blob store on start, saved debounced and on stop."""

from __future__ import annotations

import logging
import threading
import time

from services.search.index import VectorIndex

log = logging.getLogger(__name__)

INDEX_KEY = "index/main"
SFHQ_DIM = 768  # CLIP ViT-L/14@336 projection size: the dimension of an index made before any vector arrives


class IndexState:
    """Owns the VectorIndex of a search process and its persistence.

    Mutations call `mark_dirty()`; a background thread saves once the index has been dirty for
    `debounce_s` (a burst of accepted items costs one save), and `close()` saves what is left. A big index
    takes seconds to write, so the wait grows to 10x the last save's duration: saving never takes more
    than ~10 % of the time. (Curate decisions are durable in Redis meanwhile; see `curate.catch_up_all`.)
    """

    def __init__(
        self, blobs, *, key: str = INDEX_KEY, debounce_s: float = 30.0, target_recall: float = 0.95
    ) -> None:
        self.blobs = blobs
        self.key = key
        self.debounce_s = debounce_s
        self.target_recall = target_recall
        self._index: VectorIndex | None = None
        self._lock = threading.Lock()
        self._dirty_since: float | None = None
        self._stop = threading.Event()
        self._saver: threading.Thread | None = None
        self._wait_s = debounce_s
        self.saves = 0

    def load(self) -> VectorIndex | None:
        """Load the persisted index if there is one (else the first vector decides the dimension)."""
        try:
            index = VectorIndex.load(self.blobs, self.key)
        except FileNotFoundError:
            log.info("search: no index at %s yet; starting empty", self.key)
            return None
        with self._lock:
            self._index = index
        log.info("search: loaded index %s (%s)", self.key, index.stats())
        return index

    @property
    def index(self) -> VectorIndex | None:
        return self._index

    def index_for(self, dim: int) -> VectorIndex:
        """The index, created with `dim` if none exists yet."""
        with self._lock:
            if self._index is None:
                self._index = VectorIndex(dim, target_recall=self.target_recall)
            return self._index

    def mark_dirty(self) -> None:
        with self._lock:
            if self._dirty_since is None:
                self._dirty_since = time.monotonic()

    def save_if_due(self, *, force: bool = False) -> bool:
        with self._lock:
            due = self._dirty_since is not None and (
                force or time.monotonic() - self._dirty_since >= self._wait_s
            )
            if not due or self._index is None:
                return False
            self._dirty_since = None  # changes from now on need another save
            index = self._index
        started = time.monotonic()
        try:
            version = index.save(self.blobs, self.key)
        except Exception:
            self.mark_dirty()  # try again on the next tick
            raise
        took = time.monotonic() - started
        self._wait_s = max(self.debounce_s, 10 * took)
        self.saves += 1
        log.info("search: saved index %s version %s (%d items, %.1f s)", self.key, version, len(index), took)
        return True

    def start_saver(self, tick_s: float = 1.0) -> None:
        def run() -> None:
            while not self._stop.wait(tick_s):
                try:
                    self.save_if_due()
                except Exception:
                    log.exception("search: saving the index failed; will retry")

        self._saver = threading.Thread(target=run, name="sfhq-index-saver", daemon=True)
        self._saver.start()

    def close(self) -> None:
        """Stop the saver and save pending changes (called on shutdown)."""
        self._stop.set()
        if self._saver is not None:
            self._saver.join(timeout=10)
        self.save_if_due(force=True)
