"""EmbeddedRedis: a private redis-server with password, durability and clean shutdown."""

from __future__ import annotations

import os

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from services.common.embedded_redis import EmbeddedRedis, free_port, redis_server_binary


def test_the_binary_is_found():
    binary = redis_server_binary()
    assert os.access(binary, os.X_OK) and binary.endswith("redis-server")


def test_password_and_append_only_durability(tmp_path):
    port = free_port()
    with EmbeddedRedis(port=port, dir=tmp_path, appendonly=True, password="s3cret/:@") as server:
        assert server.url == f"redis://:s3cret%2F%3A%40@127.0.0.1:{port}/0"
        client = redis.Redis.from_url(server.url, decode_responses=True)
        client.set("job:1", "running")
        client.close()
        no_retry = Retry(NoBackoff(), 0)  # an auth failure is not worth redis-py's default retries
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, retry=no_retry).ping()
        pid = server.process.pid
    assert server.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the child is gone
    with EmbeddedRedis(port=port, dir=tmp_path, appendonly=True, password="s3cret/:@") as again:
        assert redis.Redis.from_url(again.url, decode_responses=True).get("job:1") == "running"
    assert (tmp_path / "redis.log").exists()  # a caller's folder is kept


def test_a_server_that_cannot_start_reports_its_log(tmp_path):
    with EmbeddedRedis(dir=tmp_path / "a") as first:
        clash = EmbeddedRedis(port=first.port, dir=tmp_path / "b", start_timeout_s=5)
        with pytest.raises(RuntimeError, match="redis-server exited"):
            clash.start()
