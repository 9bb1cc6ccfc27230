"""Search service: CLIP features, the vector index, near-duplicates and the taste model behind gRPC
(`sfhq.v1.Search`) and the `embed` / `curate` queue stages.

* RPCs: Embed, Search (text / image / vector, with filters), Add, Remove, Dedup, Label, TrainTaste, Score.
* `embed` stage: payload `image` (blob key) → CLIP features, float32 [D] raw, at
  `jobs/<job>/items/<item>/embed/features.npy`; output `features`, `feature_key`, `dim`.
* `curate` stage: see `services.search.curate` (taste, per-job near-duplicates, index; serialised per job).

The index lives in the blob store (`index/main`): loaded on start, saved debounced after changes and on
stop. CLIP loads lazily from the weights registry (`clip-vit-l-14-336`); while it is missing, calls that
need it fail with FAILED_PRECONDITION naming `sfhq weights`, everything else works (e.g. search by
vector over an imported SFHQ part).

Errors: bad requests → INVALID_ARGUMENT naming the problem; unknown taste model → NOT_FOUND; too few
labels → FAILED_PRECONDITION.

Index persistence assumes one writing process per blob store (run the `curate` stage and Add/Remove on
one replica; `embed` workers scale freely). Curate *decisions* are correct with any number of workers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from services.common.blobs import BlobStore, item_key
from services.common.config import ConfigError, Settings, get_settings
from services.common.errors import as_permanent, error_status
from services.common.images import decode_image
from services.common.queue import Task, TaskResult
from services.common.server import ServiceProcess
from services.common.weights import WeightsRegistry
from services.search.clip_model import FEATURE_KEY, ClipEmbedder, ClipInputError, load_clip_from_registry
from services.search.curate import CurateInputError, CurateRequest, Curator
from services.search.dedup import SFHQ_THRESHOLD, DedupInputError, near_duplicates
from services.search.index import IndexInputError, ItemMeta, SearchFilter, VectorIndex
from services.search.labels import LabelRecord, LabelStore
from services.search.sfhq_import import SfhqImportError, import_sfhq, probe_feature_dim
from services.search.state import INDEX_KEY, SFHQ_DIM, IndexState
from services.search.taste import TasteInputError, TasteModel, TasteModelNotFound, TasteStore
from sfhq.tensors import numpy_to_tensor, tensor_to_numpy
from sfhq.v1 import common_pb2, search_pb2, search_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["Search"].full_name
EMBED_STAGE, CURATE_STAGE = "embed", "curate"
FEATURES_BLOB_NAME = "features.npy"
DEFAULT_TASTE_MODEL = "default"
DEFAULT_TOP_K = 10
MAX_TOP_K = 1000
MAX_IMAGES_PER_REQUEST = 256
MAX_TEXTS_PER_REQUEST = 1024
MAX_TEXT_CHARS = 2000
MAX_VECTORS_PER_REQUEST = 500_000
TASTE_CACHE_S = 10.0  # how long "name" (latest) keeps resolving to the same version


def status_of(error: BaseException) -> tuple[str, str] | None:
    """(gRPC status name, message) for errors retrying cannot fix; None for unexpected ones."""
    if isinstance(error, ClipInputError | IndexInputError | DedupInputError | CurateInputError | SfhqImportError):
        return "INVALID_ARGUMENT", str(error)
    if isinstance(error, ConfigError):
        return "FAILED_PRECONDITION", str(error)
    if isinstance(error, TasteModelNotFound):
        return "NOT_FOUND", str(error)
    if isinstance(error, TasteInputError):
        too_few = "at least" in str(error)
        return ("FAILED_PRECONDITION" if too_few else "INVALID_ARGUMENT"), str(error)
    return error_status(error)


def typed_errors() -> AbstractContextManager[None]:
    """Our typed errors become PermanentError, which the shared interceptor turns into a status."""
    return as_permanent(status_of)

class ClipLoader:
    """CLIP loaded on first use; a missing folder fails each call (FAILED_PRECONDITION) until it appears."""

    def __init__(self, settings: Settings, registry: WeightsRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or WeightsRegistry(settings.weights_dir)
        self._embedder: ClipEmbedder | None = None
        self._lock = threading.Lock()

    def get(self) -> ClipEmbedder:
        with self._lock:
            if self._embedder is None:
                backend = self.settings.clip_backend
                self._embedder = load_clip_from_registry(
                    self.registry, device=self.settings.resolved_device(), backend=backend,
                    fp16=self.settings.use_fp16(), batch_size=self.settings.batch_size)
                log.info("search: CLIP loaded (%d-d, %s on %s%s)", self._embedder.dim, backend,
                         self._embedder.device, ", RANDOM weights" if self._embedder.is_random else "")
            return self._embedder


class ClipRunner:
    """One model call at a time: gRPC threads and the embed worker share the model and its cores."""

    def __init__(self, source: Callable[[], ClipEmbedder]) -> None:
        self.source = source
        self._lock = threading.Lock()

    def images(self, images: Sequence[Image.Image]) -> np.ndarray:
        embedder = self.source()
        with self._lock:
            return embedder.embed_images(images)

    def provenance(self) -> dict:
        """The CLIP checkpoint's sha256 and whether it is random (recorded in the manifest)."""
        return self.source().provenance()

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        embedder = self.source()
        with self._lock:
            return embedder.embed_texts(texts)


class TasteCache:
    """Taste models by "name" / "name@version"; the latest version is re-checked every few seconds."""

    def __init__(self, store: TasteStore) -> None:
        self.store = store
        self._latest: dict[str, tuple[float, TasteModel]] = {}
        self._lock = threading.Lock()

    def __call__(self, spec: str) -> TasteModel:
        if "@" in spec:
            return self.store.resolve(spec)
        with self._lock:
            cached = self._latest.get(spec)
            if cached is None or time.monotonic() - cached[0] > TASTE_CACHE_S:
                cached = (time.monotonic(), self.store.latest(spec))
                self._latest[spec] = cached
            return cached[1]

    def forget(self, name: str) -> None:
        with self._lock:
            self._latest.pop(name, None)


def read_image(image: common_pb2.Image, blobs: BlobStore, settings: Settings, what: str) -> Image.Image:
    """An Image message (inline bytes or blob URI/key) → RGB PIL image."""
    source = image.WhichOneof("source")
    if source == "data":
        data = image.data
    elif source == "uri":
        data = blobs.get(image.uri)
    else:
        raise ClipInputError(f"{what}: neither data nor uri is set")
    try:
        return decode_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    except ValueError as error:
        raise ClipInputError(f"{what}: {error}") from None


def read_vector(tensor: common_pb2.Tensor, what: str) -> np.ndarray:
    """A Tensor holding one feature vector ([D] or [1, D]) → float32 [D]."""
    try:
        array = tensor_to_numpy(tensor, name=what)
    except ValueError as error:
        raise IndexInputError(str(error)) from None
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise IndexInputError(f"{what}: expected one vector [D], got shape {list(array.shape)}")
    return array


class SearchServicer(search_pb2_grpc.SearchServicer):
    """`sfhq.v1.Search`. Errors are raised typed; the shared interceptor sets the status."""

    def __init__(self, clip: ClipRunner, state: IndexState, blobs: BlobStore, settings: Settings,
                 tastes: TasteCache, labels: LabelStore) -> None:
        self.clip = clip
        self.state = state
        self.blobs = blobs
        self.settings = settings
        self.tastes = tastes
        self.labels = labels
        self._train_lock = threading.Lock()

    # ---- features -----------------------------------------------------------------------------------

    def Embed(self, request: search_pb2.EmbedRequest, context: grpc.ServicerContext) -> search_pb2.EmbedResponse:
        with typed_errors():
            if not request.images and not request.texts:
                raise ClipInputError("the request has neither images nor texts")
            if len(request.images) > MAX_IMAGES_PER_REQUEST or len(request.texts) > MAX_TEXTS_PER_REQUEST:
                raise ClipInputError(f"at most {MAX_IMAGES_PER_REQUEST} images and {MAX_TEXTS_PER_REQUEST} "
                                     "texts per call")
            response = search_pb2.EmbedResponse()
            if request.images:
                images = [read_image(im, self.blobs, self.settings, f"image {i}")
                          for i, im in enumerate(request.images)]
                response.image_features.extend(numpy_to_tensor(v) for v in self.clip.images(images))
            if request.texts:
                texts = [self._text(t, f"text {i}") for i, t in enumerate(request.texts)]
                response.text_features.extend(numpy_to_tensor(v) for v in self.clip.texts(texts))
            return response

    @staticmethod
    def _text(text: str, what: str) -> str:
        if len(text) > MAX_TEXT_CHARS:
            raise ClipInputError(f"{what} is {len(text)} characters; at most {MAX_TEXT_CHARS} "
                                 "(CLIP reads 75 tokens anyway)")
        return text

    # ---- index --------------------------------------------------------------------------------------

    def Search(self, request: search_pb2.SearchRequest, context: grpc.ServicerContext) -> search_pb2.SearchResponse:
        with typed_errors():
            top_k = request.top_k or DEFAULT_TOP_K
            if not 1 <= top_k <= MAX_TOP_K:
                raise IndexInputError(f"top_k must be between 1 and {MAX_TOP_K}, got {request.top_k}")
            query = request.WhichOneof("query")
            if query == "text":
                if not request.text.strip():
                    raise ClipInputError("the text query is empty")
                vector = self.clip.texts([self._text(request.text, "text query")])[0]
            elif query == "image":
                vector = self.clip.images([read_image(request.image, self.blobs, self.settings, "query image")])[0]
            elif query == "vector":
                vector = read_vector(request.vector, "query vector")
            else:
                raise IndexInputError("the request has no query: set text, image or vector")
            index = self.state.index
            if index is None:
                return search_pb2.SearchResponse()
            hits = index.search(vector, top_k, filter=self._filter(request.filter))[0]
            return search_pb2.SearchResponse(hits=[
                search_pb2.SearchHit(item_id=h.item_id, score=h.score, image_uri=h.image_uri, job_id=h.job_id,
                                     source=h.source, taste_score=h.taste_score) for h in hits])

    @staticmethod
    def _filter(message: search_pb2.SearchFilter) -> SearchFilter:
        return SearchFilter(
            job_id=message.job_id or None, source=message.source or None,
            min_taste=message.min_taste_score if message.HasField("min_taste_score") else None,
            max_taste=message.max_taste_score if message.HasField("max_taste_score") else None)

    def Add(self, request: search_pb2.AddRequest, context: grpc.ServicerContext) -> search_pb2.AddResponse:
        with typed_errors():
            if not request.items:
                raise IndexInputError("the request has no items")
            if len(request.items) > MAX_VECTORS_PER_REQUEST:
                raise IndexInputError(f"at most {MAX_VECTORS_PER_REQUEST} items per call")
            vectors = np.stack([read_vector(item.vector, f"item {i} vector") for i, item in enumerate(request.items)])
            metas = [ItemMeta(job_id=item.job_id, source=item.source, image_uri=item.image_uri,
                              taste_score=item.taste_score if item.HasField("taste_score") else None)
                     for item in request.items]
            index = self.state.index_for(vectors.shape[1])
            size = index.add([item.item_id for item in request.items], vectors, metas)
            self.state.mark_dirty()
            return search_pb2.AddResponse(index_size=size)

    def Remove(self, request: search_pb2.RemoveRequest, context: grpc.ServicerContext) -> search_pb2.RemoveResponse:
        with typed_errors():
            index = self.state.index
            removed = index.remove(list(request.item_ids)) if index is not None else 0
            if removed:
                self.state.mark_dirty()
            return search_pb2.RemoveResponse(removed=removed, index_size=len(index) if index is not None else 0)

    def Dedup(self, request: search_pb2.DedupRequest, context: grpc.ServicerContext) -> search_pb2.DedupResponse:
        with typed_errors():
            if not request.vectors:
                raise DedupInputError("the request has no vectors")
            if len(request.vectors) > MAX_VECTORS_PER_REQUEST:
                raise DedupInputError(f"at most {MAX_VECTORS_PER_REQUEST} vectors per call")
            vectors = np.stack([read_vector(v, f"vector {i}") for i, v in enumerate(request.vectors)])
            scores = np.asarray(request.scores, np.float64) if request.scores else None
            if scores is not None and len(scores) != len(vectors):
                raise DedupInputError(f"{len(scores)} scores for {len(vectors)} vectors")
            index = self.state.index if request.against_index else None
            result = near_duplicates(vectors, threshold=request.threshold or SFHQ_THRESHOLD, scores=scores,
                                     worst_first=request.worst_first,
                                     index=index if index is not None and len(index) else None)
            return search_pb2.DedupResponse(kept=result.kept, duplicates=[
                search_pb2.Duplicate(index=pos, duplicate_of=f"#{other}" if isinstance(other, int) else other,
                                     similarity=sim) for pos, other, sim in result.duplicates])

    # ---- taste --------------------------------------------------------------------------------------

    def Label(self, request: search_pb2.LabelRequest, context: grpc.ServicerContext) -> search_pb2.LabelResponse:
        with typed_errors():
            name = request.taste_model or DEFAULT_TASTE_MODEL
            if not request.labels:
                raise TasteInputError("the request has no labels")
            records = []
            for i, label in enumerate(request.labels):
                if label.HasField("vector"):
                    features = read_vector(label.vector, f"label {i} vector")
                elif label.item_id:
                    index = self.state.index
                    features = index.get_vector(label.item_id) if index is not None else None
                    if features is None:
                        raise IndexInputError(f"label {i}: item {label.item_id!r} is not in the index; send its "
                                              "vector instead")
                else:
                    raise TasteInputError(f"label {i} has neither an item id nor a vector")
                records.append(LabelRecord(features=features, positive=label.positive,
                                           item_id=label.item_id or None, labeler=label.labeler))
            self.labels.append(name, records)
            positives, negatives = self.labels.counts(name)
            return search_pb2.LabelResponse(positives=positives, negatives=negatives)

    def TrainTaste(self, request: search_pb2.TrainTasteRequest, context: grpc.ServicerContext) -> search_pb2.TasteModelInfo:
        with typed_errors():
            name = request.taste_model or DEFAULT_TASTE_MODEL
            with self._train_lock:  # one training at a time: versions stay consecutive
                features, labels = self.labels.training_set(name)
                model = TasteModel.train(features, labels, name=name)
                self.tastes.store.save(model)
                self.tastes.forget(name)
            return taste_info(model)

    def Score(self, request: search_pb2.ScoreRequest, context: grpc.ServicerContext) -> search_pb2.ScoreResponse:
        with typed_errors():
            spec = request.taste_model or DEFAULT_TASTE_MODEL
            if not request.vectors and not request.images:
                raise TasteInputError("the request has neither vectors nor images")
            model = self.tastes(spec)
            rows = [read_vector(v, f"vector {i}") for i, v in enumerate(request.vectors)]
            if request.images:
                if len(request.images) > MAX_IMAGES_PER_REQUEST:
                    raise ClipInputError(f"at most {MAX_IMAGES_PER_REQUEST} images per call")
                images = [read_image(im, self.blobs, self.settings, f"image {i}") for i, im in enumerate(request.images)]
                rows.extend(self.clip.images(images))
            scores = model.predict_proba(np.stack(rows))
            return search_pb2.ScoreResponse(scores=scores.tolist(), model=taste_info(model))


def taste_info(model: TasteModel) -> search_pb2.TasteModelInfo:
    return search_pb2.TasteModelInfo(
        name=model.name, version=model.version or 0, positives=model.positives, negatives=model.negatives,
        cv_accuracy=model.cv_accuracy, cv_auc=model.cv_auc, low_threshold=model.low_threshold,
        high_threshold=model.high_threshold, created_at=model.created_at)


# ---- queue stages ------------------------------------------------------------------------------------


def embed_handler(clip: ClipRunner, blobs: BlobStore, settings: Settings) -> Callable[[list[Task]], list[TaskResult]]:
    """The `embed` stage: one CLIP batch for all readable images of the task batch."""

    def handle(tasks: list[Task]) -> list[TaskResult]:
        results: list[TaskResult | None] = [None] * len(tasks)
        images, positions = [], []
        for position, task in enumerate(tasks):
            try:
                key = task.payload.get("image")
                if not isinstance(key, str) or not key:
                    raise ClipInputError("embed payload needs 'image': the blob key of the image")
                images.append(decode_image(blobs.get(key), max_bytes=settings.max_image_bytes,
                                           max_pixels=settings.max_image_pixels))
                positions.append(position)
            except Exception as error:
                status = status_of(error)
                if status is None:
                    raise  # transient (storage hiccup): the worker retries
                results[position] = TaskResult.failure(task, *status)
        if images:
            try:
                features = clip.images(images)
            except Exception as error:
                status = status_of(error)
                if status is None:
                    raise
                for position in positions:  # e.g. CLIP weights missing: every task fails the same way
                    results[position] = TaskResult.failure(tasks[position], *status)
            else:
                for position, vector in zip(positions, features, strict=True):
                    task = tasks[position]
                    key = item_key(task.job_id, task.item_id, EMBED_STAGE, FEATURES_BLOB_NAME)
                    blobs.put_npy(key, vector.astype(np.float32))
                    results[position] = TaskResult.success(
                        task, {"features": key, "feature_key": FEATURE_KEY, "dim": int(vector.size),
                               "provenance": {"clip": clip.provenance()}})
        return [r for r in results if r is not None]

    return handle


def curate_handler(curator: Curator) -> Callable[[list[Task]], list[TaskResult]]:
    """The `curate` stage: tasks of one job are decided in order under that job's lock."""

    def handle(tasks: list[Task]) -> list[TaskResult]:
        results: list[TaskResult | None] = [None] * len(tasks)
        by_job: dict[str, list[int]] = defaultdict(list)
        for position, task in enumerate(tasks):
            by_job[task.job_id].append(position)
        for job_id, positions in by_job.items():
            with curator.lock(job_id) as job_lock:
                for position in positions:
                    task = tasks[position]
                    try:
                        request = CurateRequest.from_payload(task.job_id, task.item_id, task.payload)
                        results[position] = TaskResult.success(task, curator.decide(request, job_lock))
                    except Exception as error:
                        status = status_of(error)
                        if status is None:
                            raise  # lock lost, Redis or storage hiccup: retried by the worker
                        results[position] = TaskResult.failure(task, *status)
        return [r for r in results if r is not None]

    return handle


# ---- process -----------------------------------------------------------------------------------------


def build_process(settings: Settings, *, clip_source: Callable[[], ClipEmbedder] | None = None,
                  blobs: BlobStore | None = None, save_debounce_s: float = 30.0,
                  redis_client=None) -> tuple[ServiceProcess, SearchServicer]:
    """The search process (gRPC servicer + embed/curate workers), not started."""
    blobs = blobs or BlobStore(settings.blob_url)
    state = IndexState(blobs, key=INDEX_KEY, debounce_s=save_debounce_s)
    state.load()
    clip = ClipRunner(clip_source or ClipLoader(settings).get)
    tastes = TasteCache(TasteStore(blobs))
    process = ServiceProcess("search", settings)
    servicer = SearchServicer(clip, state, blobs, settings, tastes, LabelStore(blobs))
    search_pb2_grpc.add_SearchServicer_to_server(servicer, process.server)
    process.add_service_name(SERVICE_NAME)
    stages = settings.stages_for("search")
    if EMBED_STAGE in stages:
        process.add_worker(EMBED_STAGE, embed_handler(clip, blobs, settings))
    if CURATE_STAGE in stages:
        redis = redis_client if redis_client is not None else process.queue.redis
        curator = Curator(redis, state, blobs, tastes)
        curator.catch_up_all()
        process.add_worker(CURATE_STAGE, curate_handler(curator))
    state.start_saver()
    process.on_stop(state.close)
    return process, servicer


def import_into_store(path: str | Path, settings: Settings, *, part: int = 0) -> dict:
    """`sfhq import-sfhq PATH`: add an SFHQ part to the index in the blob store (run with the search
    service stopped, or restart it afterwards: a running service keeps its own copy and saves over it)."""
    blobs = BlobStore(settings.blob_url)
    index = IndexState(blobs).load()
    if index is None:  # a first import decides the dimension (768 for SFHQ's CLIP ViT-L/14@336 features)
        index = VectorIndex(probe_feature_dim(path) or SFHQ_DIM)
    report = import_sfhq(path, index, part=part or None)
    version = index.save(blobs, INDEX_KEY)
    return {**report.to_dict(), "index_items": len(index), "index_version": version, "index": index.spec.describe()}


def main(settings: Settings | None = None) -> None:
    """Run the search service until SIGTERM/SIGINT."""
    settings = settings or get_settings()
    settings.configure_logging()
    process, _ = build_process(settings)
    process.serve_forever()


if __name__ == "__main__":
    main()
