"""One model of a service process: loaded once, on first use or at start, shared by every thread.

A `LazyModel` wraps a load function that returns the model and the `Provenance` of its
checkpoint. It

* loads at most once at a time (a lock) and keeps the model; a failed load is not kept, so the
  next call tries again and `sfhq weights download` needs no restart;
* says loudly, once, when the weights are random demo weights;
* serialises model calls (`run`): gRPC threads and stage workers share one model, and with it
  the process's cores or GPU;
* reports provenance in one shape, `{role: {checkpoint, file, sha256, random_weights, ...}}`,
  which stage outputs carry into the dataset's manifest.

Model files know nothing of this class: a service's wiring builds one per model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from services.common.weights import WeightsRegistry

log = logging.getLogger(__name__)

M = TypeVar("M")
R = TypeVar("R")


@dataclass(frozen=True)
class Provenance:
    """What a dataset records about the checkpoint a model was loaded from."""

    checkpoint: str  # the registry name ("e4e-ffhq-encode"), or "" for a file given by path
    file: str = ""
    sha256: str = ""
    random_weights: bool = False
    details: dict[str, Any] = field(default_factory=dict)  # backend, device, dtype, ...

    @classmethod
    def from_registry(cls, registry: WeightsRegistry, name: str, **details: Any) -> Provenance:
        record = registry.provenance(name)
        return cls(name, record["file"], record["sha256"], bool(record["random_weights"]), details)

    @classmethod
    def from_path(cls, path: str | Path, *, random_weights: bool = False, **details: Any) -> Provenance:
        return cls("", Path(path).name, "", random_weights, details)

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "file": self.file,
            "sha256": self.sha256,
            "random_weights": self.random_weights,
            **self.details,
        }


Loader = Callable[[], "tuple[M, Provenance]"]


class LazyModel(Generic[M]):
    """A model loaded on first use; `role` names it in logs and provenance ("encoder", "clip", ...)."""

    def __init__(self, role: str, load: Callable[[], tuple[M, Provenance]]) -> None:
        self.role = role
        self._load = load
        self._model: M | None = None
        self._provenance: Provenance | None = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.RLock()

    @classmethod
    def ready(cls, role: str, model: M, provenance: Provenance | None = None) -> LazyModel[M]:
        """An already built model (tests, tools)."""
        holder = cls(role, lambda: (model, provenance or Provenance("")))
        holder.get()
        return holder

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def get(self) -> M:
        """The model, loading it now if needed (raises what the load raises, e.g. WeightsMissing)."""
        model = self._model
        if model is not None:
            return model
        with self._load_lock:
            if self._model is None:
                model, provenance = self._load()
                if provenance.random_weights:
                    log.warning(
                        "%s: RANDOM WEIGHTS loaded from %s: its outputs are meaningless (demo only)",
                        self.role,
                        provenance.file or "memory",
                    )
                log.info(
                    "%s: loaded %s %s",
                    self.role,
                    provenance.checkpoint or provenance.file,
                    provenance.details,
                )
                self._provenance = provenance
                self._model = model
            return self._model

    def preload(self) -> bool:
        """Load at start if possible; log and return False when the model cannot be loaded yet."""
        try:
            self.get()
            return True
        except Exception as error:
            log.error("%s: not loaded, calls that need it fail until it is: %s", self.role, error)
            return False

    @contextmanager
    def use(self) -> Iterator[M]:
        """The model, held for the caller alone until the block ends."""
        model = self.get()
        with self._run_lock:
            yield model

    def run(self, call: Callable[[M], R]) -> R:
        """`call(model)` while holding the model."""
        with self.use() as model:
            return call(model)

    @property
    def provenance(self) -> Provenance | None:
        return self._provenance

    def provenance_record(self) -> dict[str, dict[str, Any]]:
        """`{role: provenance}` as stage outputs carry it (empty before the first load)."""
        return {self.role: self._provenance.to_dict()} if self._provenance is not None else {}
