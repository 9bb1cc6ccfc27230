"""One reader for every open `WatchJob` stream of a gateway process.

A stream first catches up on its job's events stream (`XRANGE` from where the client left off),
then joins the hub: one asyncio task runs a single blocking `XREAD` over the events of every
watched job, fetches each job's counters once per round, and hands the new events to every
stream of that job through a bounded queue. So a thousand watchers cost one Redis connection and
one read loop, not a thousand threads, and a slow client that falls behind simply catches up
from Redis again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from gateway import jobs
from gateway.messages import lost_state_message
from services.common.errors import DataLoss

log = logging.getLogger("sfhq.gateway.watch")

Event = tuple[str, dict[str, str], dict[str, str]]  # (event id, fields, the job's record at that time)
QUEUE_SIZE = 2_000  # events buffered per stream before it is told to catch up from Redis instead
READ_COUNT = 500
RECORD_TTL_S = 0.2


def id_key(event_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = event_id.partition("-")
    return int(milliseconds), int(sequence or 0)


@dataclass(eq=False)
class _Subscriber:
    queue: asyncio.Queue[Event] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    behind: bool = False  # events were dropped: catch up from Redis


@dataclass
class _Feed:
    last_id: str  # the newest event id the hub has read for this job
    subscribers: set[_Subscriber] = field(default_factory=set)


class WatchHub:
    def __init__(self, client: aioredis.Redis, *, block_ms: int = 1000) -> None:
        self.redis = client
        self.block_ms = block_ms
        self._feeds: dict[str, _Feed] = {}
        # a job's record, shared by all its streams for a moment (a job's end wakes them all at once)
        self._records: dict[str, tuple[float, asyncio.Future[dict[str, str]]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def streams(self) -> int:
        return sum(len(feed.subscribers) for feed in self._feeds.values())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()

    async def events(self, job_id: str, after: str) -> AsyncIterator[Event]:
        """Events of `job_id` after `after` until the job is over (a terminal state and nothing newer).

        Raises DataLoss when the job's state disappears from Redis meanwhile."""
        key = jobs.events_key(job_id)
        cursor = after
        async for event in self._catch_up(job_id, key, cursor):
            cursor = event[0]
            yield event
        if await self._over(job_id, key, cursor):
            return
        subscriber = _Subscriber()
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = _Feed(last_id=cursor)
        feed.subscribers.add(subscriber)
        self._ensure_reader()
        try:
            # The hub may already have read past our cursor: fetch what lies in between ourselves.
            async for event in self._catch_up(job_id, key, cursor, until=feed.last_id):
                cursor = event[0]
                yield event
            while True:
                if subscriber.behind:
                    subscriber.behind = False
                    async for event in self._catch_up(job_id, key, cursor):
                        cursor = event[0]
                        yield event
                try:
                    event = await asyncio.wait_for(subscriber.queue.get(), timeout=self.block_ms / 1000 + 1)
                except TimeoutError:
                    if await self._over(job_id, key, cursor):
                        return
                    continue
                if id_key(event[0]) <= id_key(cursor):
                    continue  # already sent during a catch-up
                cursor = event[0]
                yield event
                if event[1].get("state") in jobs.TERMINAL and await self._over(job_id, key, cursor):
                    return
        finally:
            feed.subscribers.discard(subscriber)
            if not feed.subscribers and self._feeds.get(job_id) is feed:
                del self._feeds[job_id]

    async def _record(self, job_id: str) -> dict[str, str]:
        """The job's record, read at most once per RECORD_TTL_S however many streams ask."""
        now = asyncio.get_running_loop().time()
        cached = self._records.get(job_id)
        if cached is None or now - cached[0] > RECORD_TTL_S:
            future = asyncio.ensure_future(self.redis.hgetall(jobs.job_key(job_id)))
            cached = self._records[job_id] = (now, future)
            if len(self._records) > 10_000:
                self._records = {k: v for k, v in self._records.items() if now - v[0] <= RECORD_TTL_S}
        try:
            return await asyncio.shield(cached[1])
        except Exception:
            self._records.pop(job_id, None)
            raise

    async def _over(self, job_id: str, key: str, cursor: str) -> bool:
        """True when the job has ended and no event after `cursor` exists; DataLoss when it vanished."""
        record = await self._record(job_id)
        if not record:
            raise DataLoss(lost_state_message(job_id))
        return record.get("state") in jobs.TERMINAL and not await self._newer(key, cursor)

    async def _newer(self, key: str, cursor: str) -> bool:
        return bool(await self.redis.xrange(key, min=f"({cursor}", max="+", count=1))

    async def _catch_up(self, job_id: str, key: str, cursor: str, until: str = "+") -> AsyncIterator[Event]:
        while True:
            if until != "+" and id_key(cursor) >= id_key(until):
                return
            batch = await self.redis.xrange(key, min=f"({cursor}", max=until, count=READ_COUNT)
            if not batch:
                return
            record = await self._record(job_id)
            for event_id, fields in batch:
                cursor = event_id
                yield event_id, fields, record
            if len(batch) < READ_COUNT:
                return

    def _ensure_reader(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._read_loop(), name="watch-hub")

    async def _read_loop(self) -> None:
        backoff = 0.1
        while self._feeds:
            feeds = dict(self._feeds)
            streams = {jobs.events_key(job_id): feed.last_id for job_id, feed in feeds.items()}
            try:
                replies = await self.redis.xread(streams, count=READ_COUNT, block=self.block_ms)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restarting: the streams keep waiting, the hub retries
                log.warning("watch hub: reading events failed (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for key, entries in replies or []:
                job_id = key.removeprefix("sfhq:job:").removesuffix(":events")
                feed = feeds.get(job_id)
                if feed is None or not entries:
                    continue
                record = await self.redis.hgetall(jobs.job_key(job_id))
                for event_id, fields in entries:
                    feed.last_id = event_id
                    for subscriber in list(feed.subscribers):
                        try:
                            subscriber.queue.put_nowait((event_id, fields, record))
                        except asyncio.QueueFull:
                            subscriber.behind = True
                            while not subscriber.queue.empty():
                                subscriber.queue.get_nowait()
