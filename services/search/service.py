"""Search service: CLIP features, the vector index, near-duplicates and taste models behind gRPC
(`sfhq.v1.Search`) and the `embed` / `curate` stages. Wiring only.

* RPCs: Embed, Search (text / image / vector, with filters), Add, Remove, Dedup; and from
  `curation_rpcs.py`: Label, TrainTaste, Score, ListTasteModels, GetTasteModel, NextReview,
  SetDecisions, DedupGroups.
* `embed` stage: `EmbedPayload` -> `EmbedOutput` (raw float32 CLIP features, and the configured extra
  extractors'), wired in services/search/embed_stage.py.
* `curate` stage: `CuratePayload` -> `CurateOutput` (services.search.curate; one job's tasks in order
  under that job's lock).

The index lives in the blob store (`index/main`): loaded at start, saved debounced and at stop. It
assumes one writing process per blob store (run `curate` and Add/Remove on one replica; `embed`
workers scale freely). CLIP loads lazily: while it is missing, calls that need it fail with
FAILED_PRECONDITION naming `sfhq weights`, and everything else works (search by vector, say).
"""

from __future__ import annotations

import threading

import grpc
import numpy as np
import redis

from services.common.blobs import BlobStore
from services.common.config import Settings
from services.common.contracts import CurateOutput, CuratePayload
from services.common.errors import InvalidInput, PermanentError
from services.common.model_holder import LazyModel, Provenance
from services.common.queue import Task
from services.common.rpc import check_count, read_image, read_vector
from services.common.server import ServiceProcess, run_service
from services.common.stage_handler import StageHandler, batched_handler
from services.common.weights import WeightsRegistry
from services.search import messages
from services.search.clip_model import ClipEmbedder, clip_provenance, load_clip_from_registry
from services.search.curate import CurateRequest, Curator
from services.search.curation import CurationDesk
from services.search.curation_rpcs import CurationRpcs
from services.search.dedup import SFHQ_THRESHOLD, near_duplicates
from services.search.embed_stage import embed_stage, extractor_models
from services.search.labels import LabelStore
from services.search.state import INDEX_KEY, IndexState
from services.search.taste import TasteCache, TasteStore
from sfhq.tensors import numpy_to_tensor
from sfhq.v1 import common_pb2, search_pb2, search_pb2_grpc

DEFAULT_TOP_K = 10
MAX_TOP_K = 1000
MAX_IMAGES_PER_REQUEST = 256
MAX_TEXTS_PER_REQUEST = 1024
MAX_VECTORS_PER_REQUEST = 500_000

ClipModel = LazyModel[ClipEmbedder]


def clip_model(settings: Settings, registry: WeightsRegistry | None = None) -> ClipModel:
    """CLIP ViT-L/14@336 from the registered local folder (a missing one names `sfhq weights`)."""
    registry = registry or WeightsRegistry(settings.weights_dir)

    def load() -> tuple[ClipEmbedder, Provenance]:
        embedder = load_clip_from_registry(
            registry,
            device=settings.resolved_device(),
            backend=settings.clip_backend,
            fp16=settings.use_fp16(),
            batch_size=settings.batch_size,
        )
        return embedder, clip_provenance(embedder)

    return LazyModel("clip", load)


class SearchServicer(CurationRpcs, search_pb2_grpc.SearchServicer):
    """`sfhq.v1.Search`: typed errors raised here become the call's status. The curation RPCs
    (labels, taste models, review, decisions, dataset dedup) come from `CurationRpcs`."""

    def __init__(
        self,
        clip: ClipModel,
        state: IndexState,
        blobs: BlobStore,
        settings: Settings,
        tastes: TasteCache,
        labels: LabelStore,
        curator: Curator | None = None,
    ) -> None:
        self.clip = clip
        self.state = state
        self.blobs = blobs
        self.settings = settings
        self.tastes = tastes
        self.labels = labels
        self.desk = CurationDesk(state, tastes, curator)
        self._train_lock = threading.Lock()  # one training at a time: versions stay consecutive

    def _images(self, messages: list[common_pb2.Image], what: str = "image") -> np.ndarray:
        check_count(messages, f"{what}s", MAX_IMAGES_PER_REQUEST)
        images = [read_image(m, self.blobs, self.settings, f"{what} {i}") for i, m in enumerate(messages)]
        return self.clip.run(lambda clip: clip.embed_images(images))

    def _texts(self, texts: list[str]) -> np.ndarray:
        return self.clip.run(lambda clip: clip.embed_texts(texts))

    def Embed(
        self, request: search_pb2.EmbedRequest, context: grpc.ServicerContext
    ) -> search_pb2.EmbedResponse:
        if not request.images and not request.texts:
            raise InvalidInput("the request has neither images nor texts")
        check_count(request.texts, "texts", MAX_TEXTS_PER_REQUEST, least=0)
        response = search_pb2.EmbedResponse()
        if request.images:
            response.image_features.extend(numpy_to_tensor(v) for v in self._images(list(request.images)))
        if request.texts:
            texts = [messages.text(t, f"text {i}") for i, t in enumerate(request.texts)]
            response.text_features.extend(numpy_to_tensor(v) for v in self._texts(texts))
        return response

    def Search(
        self, request: search_pb2.SearchRequest, context: grpc.ServicerContext
    ) -> search_pb2.SearchResponse:
        top_k = request.top_k or DEFAULT_TOP_K
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidInput(f"top_k must be between 1 and {MAX_TOP_K}, got {request.top_k}")
        query = request.WhichOneof("query")
        if query == "text" and request.text.strip():
            vector = self._texts([messages.text(request.text, "text query")])[0]
        elif query == "image":
            vector = self._images([request.image], "query image")[0]
        elif query == "vector":
            vector = read_vector(request.vector, "query vector")
        else:
            raise InvalidInput("the request has no query: set text (not empty), image or vector")
        index = self.state.index
        if index is None:
            return search_pb2.SearchResponse()
        return messages.search_response(
            index.search(vector, top_k, filter=messages.search_filter(request.filter))[0]
        )

    def Add(self, request: search_pb2.AddRequest, context: grpc.ServicerContext) -> search_pb2.AddResponse:
        check_count(request.items, "items", MAX_VECTORS_PER_REQUEST)
        vectors = messages.vectors([item.vector for item in request.items], "item vector")
        ids, metas = [item.item_id for item in request.items], messages.item_metas(request.items)
        size = self.state.index_for(vectors.shape[1]).add(ids, vectors, metas)
        self.state.mark_dirty()
        return search_pb2.AddResponse(index_size=size)

    def Remove(
        self, request: search_pb2.RemoveRequest, context: grpc.ServicerContext
    ) -> search_pb2.RemoveResponse:
        index = self.state.index
        removed = index.remove(list(request.item_ids)) if index is not None else 0
        if removed:
            self.state.mark_dirty()
        return search_pb2.RemoveResponse(removed=removed, index_size=len(index) if index is not None else 0)

    def Dedup(
        self, request: search_pb2.DedupRequest, context: grpc.ServicerContext
    ) -> search_pb2.DedupResponse:
        check_count(request.vectors, "vectors", MAX_VECTORS_PER_REQUEST)
        vectors, scores = messages.vectors_and_scores(request)
        index = self.state.index if request.against_index else None
        result = near_duplicates(
            vectors,
            threshold=request.threshold or SFHQ_THRESHOLD,
            scores=scores,
            worst_first=request.worst_first,
            index=index if index is not None and len(index) else None,
        )
        return messages.dedup_response(result)


def curate_stage(curator: Curator) -> StageHandler:
    """`curate`: the tasks of one job are decided in order under that job's lock."""

    def parse(task: Task) -> CurateRequest:
        return CurateRequest(task.job_id, task.item_id, CuratePayload.parse(task.payload, "curate"))

    def run(requests: list[CurateRequest]) -> list[CurateOutput | PermanentError]:
        outcomes: list[CurateOutput | PermanentError] = []
        with curator.lock(requests[0].job_id) as job_lock:  # a group is one job (group_by below)
            for request in requests:
                try:
                    outcomes.append(curator.decide(request, job_lock))
                except PermanentError as error:
                    outcomes.append(error)
        return outcomes

    return batched_handler(
        parse, run, lambda _task, _request, output: output, group_by=lambda task, _: task.job_id
    )


def build_process(
    settings: Settings,
    *,
    clip: ClipModel | None = None,
    blobs: BlobStore | None = None,
    save_debounce_s: float = 30.0,
    redis_client: redis.Redis | None = None,
) -> ServiceProcess:
    """The search process (gRPC servicer + embed/curate workers), not started."""
    blobs = blobs or BlobStore(settings.blob_url)
    state = IndexState(blobs, key=INDEX_KEY, debounce_s=save_debounce_s)
    state.load()
    clip = clip or clip_model(settings)
    tastes = TasteCache(TasteStore(blobs))
    process = ServiceProcess("search", settings)
    curator = None
    if "curate" in settings.stages_for("search"):
        curator = Curator(
            redis_client if redis_client is not None else process.queue.redis, state, blobs, tastes
        )
        curator.catch_up_all()
    servicer = SearchServicer(clip, state, blobs, settings, tastes, LabelStore(blobs), curator)
    process.add_servicer(servicer, search_pb2_grpc.add_SearchServicer_to_server, search_pb2)
    process.add_worker("embed", embed_stage(clip, blobs, settings, extractor_models(settings)))
    if curator is not None:
        process.add_worker("curate", curate_stage(curator))
    state.start_saver()
    process.on_stop(state.close)
    return process


def main(settings: Settings | None = None) -> None:
    """Run the search service until SIGTERM/SIGINT."""
    run_service(build_process, settings)


if __name__ == "__main__":
    main()
