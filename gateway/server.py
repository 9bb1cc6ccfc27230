"""The gateway: the public gRPC API (jobs, items, progress, search, labels) and the coordinator.

It runs on `grpc.aio`: a `WatchJob` stream costs a coroutine, not a thread, and every stream of
the process is fed by one Redis reader (`gateway/watch.py`), so thousands of watchers leave
`GetJob` and health checks fast. The blocking work of the other RPCs (`gateway/core.py`: Redis
scripts, staging input files) runs in a thread pool. The coordinator, which drives every item
from stage to stage, is a thread of its own.

Every call acts for its caller (`services.common.auth`): users see only their own jobs, items,
search hits and labels; the admin user sees everything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import redis.asyncio as aioredis

from gateway import messages
from gateway.coordinator import EVENTS_MAXLEN, Coordinator, JobStore
from gateway.core import GatewayCore
from gateway.search_client import SearchClient
from gateway.watch import WatchHub
from services.common import tracing
from services.common.aio_server import AsyncServiceProcess, aio_client_channel
from services.common.auth import Principal, current_principal
from services.common.blobs import BlobStore
from services.common.config import ConfigError, Settings
from services.common.errors import FailedPrecondition, InvalidInput, PermanentError, ResourceExhausted
from services.common.queue import RedisQueue, connect_redis
from sfhq import __version__
from sfhq.v1 import gateway_pb2, gateway_pb2_grpc, search_pb2, search_pb2_grpc

log = logging.getLogger("sfhq.gateway")

T = TypeVar("T")
BLOCKING_THREADS = 32  # the pool for the blocking parts of unary calls
REDIS_CONNECTIONS = 64  # the asyncio Redis pool of the WatchJob streams
SEARCH_TIMEOUT_S = 60.0
RETRY_AFTER_S = "30"
MAX_IMPORT_ITEMS = 1000  # per ImportItems message (1000 x 768 float32 = 3 MB)
MAX_IMPORT_TOTAL = 2_000_000  # per ImportItems call: every SFHQ part together is ~425,000


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    """`sfhq.v1.Gateway`: each method runs the blocking core in the pool, or streams from the hub."""

    def __init__(
        self,
        core: GatewayCore,
        hub: WatchHub,
        search: search_pb2_grpc.SearchStub,
        search_metadata: tuple[tuple[str, str], ...],
        settings: Settings,
    ) -> None:
        self.core = core
        self.hub = hub
        self.search = search
        self.search_metadata = search_metadata
        self.settings = settings
        self.open_streams: Counter[str] = Counter()

    async def _blocking(self, call: Callable[..., T], *args: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await asyncio.to_thread(call, *args, current_principal())
        except ResourceExhausted:
            context.set_trailing_metadata((("retry-after-s", RETRY_AFTER_S),))
            raise

    # ---- jobs -----------------------------------------------------------------------------------

    async def SubmitJob(
        self, request: gateway_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.Job:
        return await self._blocking(self.core.submit, request, context=context)

    async def GetJob(
        self, request: gateway_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.Job:
        return await self._blocking(self.core.get_job, request.job_id, context=context)

    async def CancelJob(
        self, request: gateway_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.Job:
        return await self._blocking(self.core.cancel, request.job_id, context=context)

    async def ListJobs(
        self, request: gateway_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListJobsResponse:
        return await self._blocking(self.core.list_jobs, request, context=context)

    async def WatchJob(
        self, request: gateway_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gateway_pb2.JobEvent]:
        caller = current_principal()
        await asyncio.to_thread(self.core.job_for, request.job_id, caller)
        after = request.after_event_id or "0-0"
        if len(after) > 64 or not all(part.isdigit() for part in after.split("-", 1)):
            raise InvalidInput(f"after_event_id: {after!r} is not a stream id")
        if self.open_streams[caller.name] >= self.settings.max_streams_per_user and not caller.is_admin:
            context.set_trailing_metadata((("retry-after-s", RETRY_AFTER_S),))
            raise ResourceExhausted(
                f"user {caller.name!r} has {self.open_streams[caller.name]} WatchJob streams open; "
                f"at most {self.settings.max_streams_per_user} (SFHQ_MAX_STREAMS_PER_USER)"
            )
        self.open_streams[caller.name] += 1
        try:
            async for event_id, fields, record in self.hub.events(request.job_id, after):
                yield messages.event(request.job_id, event_id, fields, messages.job_counts(record))
        finally:
            self.open_streams[caller.name] -= 1

    # ---- items ----------------------------------------------------------------------------------

    async def ListItems(
        self, request: gateway_pb2.ListItemsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ListItemsResponse:
        return await self._blocking(self.core.list_items, request, context=context)

    async def GetItem(
        self, request: gateway_pb2.GetItemRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.Item:
        return await self._blocking(self.core.get_item, request, context=context)

    # ---- search and labels, for the caller only -------------------------------------------------

    async def _proxy(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        remaining = context.time_remaining()
        timeout = min(remaining, SEARCH_TIMEOUT_S) if remaining is not None else SEARCH_TIMEOUT_S
        try:
            metadata = tracing.metadata_with_context(self.search_metadata)
            return await getattr(self.search, method)(request, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            code = exc.code() or grpc.StatusCode.UNAVAILABLE
            raise PermanentError(f"search service: {exc.details()}", code=code.name) from None

    async def Search(
        self, request: search_pb2.SearchRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.SearchResponse:
        caller = current_principal()
        if request.filter.job_id:  # only a job the caller may see
            await asyncio.to_thread(self.core.job_for, request.filter.job_id, caller)
        if not caller.is_admin:
            request.filter.owner = caller.name  # the caller's items and public ones
        return await self._proxy("Search", request, context)

    async def Label(
        self, request: search_pb2.LabelRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.LabelResponse:
        caller = current_principal()
        await asyncio.to_thread(self._check_labelled_items, request, caller)
        request.owner = caller.name  # labels train the caller's own taste model
        return await self._proxy("Label", request, context)

    async def ImportItems(
        self,
        request_iterator: AsyncIterator[gateway_pb2.ImportItemsRequest],
        context: grpc.aio.ServicerContext,
    ) -> gateway_pb2.ImportItemsResponse:
        """Batches of features into the running search index. The admin's imports are public (a shared
        SFHQ part); a user's are theirs alone."""
        caller = current_principal()
        owner = "" if caller.is_admin else caller.name
        reply = gateway_pb2.ImportItemsResponse()
        async for request in request_iterator:
            reply.batches += 1
            if len(request.items) > MAX_IMPORT_ITEMS:
                raise InvalidInput(f"items: {len(request.items)} in one message; at most {MAX_IMPORT_ITEMS}")
            if reply.added + len(request.items) > MAX_IMPORT_TOTAL:
                raise ResourceExhausted(f"items: at most {MAX_IMPORT_TOTAL} per import; split it")
            for n, item in enumerate(request.items):
                # "<job>/<item>" ids belong to jobs' items: an import may not stand in for one
                if not item.item_id or len(item.item_id) > 200 or "/" in item.item_id:
                    raise InvalidInput(
                        f"items[{n}].item_id: {item.item_id[:60]!r} must be 1-200 characters, no '/'"
                    )
                item.owner, item.job_id = owner, ""
            added = await self._proxy("Add", search_pb2.AddRequest(items=request.items), context)
            reply.added += len(request.items)
            reply.index_size = added.index_size
        return reply

    def _check_labelled_items(self, request: search_pb2.LabelRequest, caller: Principal) -> None:
        """Items named `<job_id>/<item_id>` (or `<job_id>/<stem>`) must be in the caller's jobs; a stem
        becomes its item's id. Bare stems name imported SFHQ images (public)."""
        for label in request.labels:
            if "/" not in label.item_id:
                continue
            job_id, _, item = label.item_id.partition("/")
            self.core.job_for(job_id, caller)
            if item.startswith("SFHQ_"):
                label.item_id = f"{job_id}/{self.core.item_id_of_stem(job_id, item)}"

    # ---- curation (gateway/curation.py) ---------------------------------------------------------

    def _curation(self) -> Any:
        if self.core.curation is None:
            raise FailedPrecondition("this gateway has no search service configured")
        return self.core.curation

    async def TrainTaste(
        self, request: search_pb2.TrainTasteRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.TasteModelInfo:
        return await self._blocking(self._curation().train, request, context=context)

    async def ListTasteModels(
        self, request: search_pb2.ListTasteModelsRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.ListTasteModelsResponse:
        return await self._blocking(self._curation().list_models, context=context)

    async def GetTasteModel(
        self, request: search_pb2.GetTasteModelRequest, context: grpc.aio.ServicerContext
    ) -> search_pb2.TasteModelInfo:
        return await self._blocking(self._curation().get_model, request, context=context)

    async def ScoreItems(
        self, request: gateway_pb2.ScoreItemsRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ScoreItemsResponse:
        return await self._blocking(self._curation().score_items, request, context=context)

    async def ReviewQueue(
        self, request: gateway_pb2.ReviewQueueRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.ReviewQueueResponse:
        return await self._blocking(self._curation().review_queue, request, context=context)

    async def Review(
        self, request: gateway_pb2.ReviewRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.Item:
        return await self._blocking(self._curation().review, request, context=context)

    async def CurateDataset(
        self, request: gateway_pb2.CurateDatasetRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.CurateDatasetResponse:
        return await self._blocking(self._curation().curate_dataset, request, context=context)

    async def DedupDataset(
        self, request: gateway_pb2.DedupDatasetRequest, context: grpc.aio.ServicerContext
    ) -> gateway_pb2.DedupDatasetResponse:
        return await self._blocking(self._curation().dedup_dataset, request, context=context)


async def serve(settings: Settings) -> None:
    if not settings.redis_url:
        raise ConfigError("the gateway keeps job state in Redis: set REDIS_URL (or SFHQ_REDIS_URL)")
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(BLOCKING_THREADS, thread_name_prefix="gw")
    )
    process = AsyncServiceProcess("gateway", settings, internal=False)
    client = connect_redis(settings.redis_url)
    queue = RedisQueue.from_settings(settings, client)
    queue.ensure_groups()
    store = JobStore(client)
    store.epoch_ms()  # record when this Redis data set began (see JobStore.state_lost)
    blobs = BlobStore(settings.blob_url)
    # A bounded pool that makes callers wait for a connection (never MaxConnectionsError): the end of
    # a big job wakes every one of its streams at once.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url, decode_responses=True, max_connections=REDIS_CONNECTIONS, timeout=30
    )
    hub = WatchHub(aioredis.Redis(connection_pool=pool))
    channel, metadata = aio_client_channel(settings.addr_for("search"), settings)
    search = SearchClient(settings)  # blocking calls: the coordinator's dedup passes, the curation RPCs
    servicer = GatewayServicer(
        GatewayCore(settings, queue, store, blobs, search),
        hub,
        search_pb2_grpc.SearchStub(channel),
        metadata,
        settings,
    )
    process.add_servicer(servicer, gateway_pb2_grpc.add_GatewayServicer_to_server, gateway_pb2)
    coordinator = Coordinator(
        queue,
        store,
        blobs,
        consumer=f"gateway-{socket.gethostname()}-{os.getpid()}",
        provenance={"code_version": __version__},
        retention_s=settings.job_retention_s,
        search=search,
    )
    process.on_stop(coordinator.stop)
    process.on_stop(search.close)
    process.on_stop(hub.close)
    process.on_stop(channel.close)
    coordinator.start()
    log.info(
        "gateway ready on port %s (events kept: %d per job)", settings.port_for("gateway"), EVENTS_MAXLEN
    )
    await process.serve_forever()


def main(settings: Settings) -> None:
    """Run the gateway until SIGTERM/SIGINT."""
    asyncio.run(serve(settings))
