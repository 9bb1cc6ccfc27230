"""A whole local cluster with random weights for a test module: the gateway and the four services
as real processes on loopback, sharing the session's Redis.

    @pytest.fixture(scope="module")
    def cluster(redis_server, tmp_path_factory):
        with random_cluster(redis_server, tmp_path_factory) as running:
            yield running
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from services.local_run import LocalCluster

# Fast reclaim and small batching waits: the tests wait for whole jobs.
QUICK_ENV = {"SFHQ_VISIBILITY_TIMEOUT_S": "5", "SFHQ_BATCH_WAIT_MS": "20"}


@contextmanager
def random_cluster(
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    env: Mapping[str, str] | None = None,
    data_roots: tuple[Path, ...] | None = None,
    name: str = "cluster",
) -> Iterator[LocalCluster]:
    """Started and healthy; `data_roots` defaults to pytest's temporary folder (the tests' datasets)."""
    from services.random_weights import write_random_weights

    weights = tmp_path_factory.mktemp("weights")
    write_random_weights(weights)
    roots = (tmp_path_factory.getbasetemp(),) if data_roots is None else data_roots
    with LocalCluster(
        tmp_path_factory.mktemp(name),
        redis_url,
        weights,
        extra_env={**QUICK_ENV, **(env or {})},
        data_roots=roots,
    ) as running:
        running.start_all(timeout_s=240)
        yield running
