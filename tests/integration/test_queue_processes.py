"""Stage workers as real processes (ServiceProcess + StageWorker): crashes, poison, SIGTERM.

Each worker process runs `worker_main` below. Its handler records, in Redis:
  * `attempts:<task_id>`   INCR on every attempt (redeliveries show up here);
  * `started:<task_id>`    the pid that started it (so a test knows when to kill);
  * `effects`              HSETNX task_id -> pid: the task's *effect*, idempotent like a blob
                             written to a deterministic key.
The test plays coordinator: it applies each result once (SADD `applied`) and counts them.
"""

from __future__ import annotations

import logging
import os
import time

import pytest
import redis

from services.common.queue import RedisQueue, Task, TaskResult, connect_redis
from tests.helpers.processes import start_python, wait_for_redis_key

pytestmark = pytest.mark.integration

STAGE = "encode"
WORKER_TARGET = "tests.integration.test_queue_processes:worker_main"


def worker_main() -> None:
    """Entry point of a worker process (settings from SFHQ_* env)."""
    from services.common.config import get_settings
    from services.common.server import ServiceProcess

    logging.basicConfig(level="INFO", format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    pid = str(os.getpid())

    def handler(tasks: list[Task]) -> list[TaskResult]:
        results = []
        for task in tasks:
            client.incr(f"attempts:{task.task_id}")
            client.set(f"started:{task.task_id}", pid)
            behaviour = task.payload.get("behaviour", "")
            if behaviour == "hang_first" and task.deliveries == 1:
                time.sleep(60)  # the test SIGKILLs us here
            elif behaviour == "crash":
                os._exit(13)  # like a segfault in native code: no exception, no clean-up
            elif behaviour == "slow":
                time.sleep(float(task.payload["seconds"]))
            client.hsetnx("effects", task.task_id, pid)
            results.append(TaskResult.success(task, {"pid": pid, "deliveries": task.deliveries}))
        return results

    process = ServiceProcess("queue-test-worker", settings)
    process.add_worker(STAGE, handler)
    process.serve_forever()


def worker_env(redis_url: str, **settings: object) -> dict[str, str]:
    env = {"SFHQ_REDIS_URL": redis_url, "SFHQ_PORT": "0", "SFHQ_BATCH_SIZE": "1", "SFHQ_BATCH_WAIT_MS": "20"}
    env.update({f"SFHQ_{name.upper()}": str(value) for name, value in settings.items()})
    return env


class Coordinator:
    """Applies each result once, like the gateway's coordinator."""

    def __init__(self, queue: RedisQueue, client: redis.Redis) -> None:
        self.queue = queue
        self.client = client
        self.results: dict[str, TaskResult] = {}
        self.deliveries_of_results = 0

    def poll(self) -> None:
        entries = self.queue.read_results("test-coordinator", 50, 50)
        for _, result in entries:
            self.deliveries_of_results += 1
            if self.client.sadd("applied", result.task_id):  # 1 only the first time: apply once
                self.results[result.task_id] = result
        self.queue.ack_results([entry_id for entry_id, _ in entries])

    def wait_for(self, count: int, timeout: float, *watch) -> None:
        deadline = time.monotonic() + timeout
        while len(self.results) < count:
            for proc in watch:
                proc.check_alive()
            assert time.monotonic() < deadline, f"{len(self.results)} of {count} results after {timeout} s"
            self.poll()


@pytest.fixture()
def queue(redis_url):
    client = connect_redis(redis_url)
    q = RedisQueue(client, stream_maxlen=1000, visibility_timeout_s=1.0, max_deliveries=2)
    q.ensure_groups()
    yield q
    client.close()


def test_a_task_of_a_killed_worker_is_reclaimed_and_done_once(queue, redis_url, tmp_path):
    client = queue.redis
    victim = Task.make("job", "victim", STAGE, {"behaviour": "hang_first"})
    others = [Task.make("job", f"ok{i}", STAGE, {}) for i in range(4)]
    queue.enqueue_many([victim, *others])
    env = worker_env(redis_url, visibility_timeout_s=1.0)

    with start_python(WORKER_TARGET, env=env, log_dir=tmp_path) as first:
        wait_for_redis_key(redis_url, f"started:{victim.task_id}", timeout=20)
        assert first.kill() == -9
    with start_python(WORKER_TARGET, env=env, log_dir=tmp_path) as second:
        coordinator = Coordinator(queue, client)
        coordinator.wait_for(5, 20, second)
        assert second.stop() == 0, second.log_tail()  # SIGTERM: clean exit

    assert int(client.get(f"attempts:{victim.task_id}")) == 2
    effects = client.hgetall("effects")
    assert sorted(effects) == sorted(t.task_id for t in [victim, *others])
    assert effects[victim.task_id] == str(second.pid)
    assert coordinator.results[victim.task_id].output == {"pid": str(second.pid), "deliveries": 2}
    assert all(int(client.get(f"attempts:{t.task_id}")) == 1 for t in others)
    assert client.scard("applied") == 5
    assert queue.stats()["stages"][STAGE] == {"backlog": 0, "pending": 0}
    assert queue.dead_letters() == []


def test_a_task_that_kills_every_worker_ends_in_the_dead_letter_stream(queue, redis_url, tmp_path):
    client = queue.redis
    poison = Task.make("job", "poison", STAGE, {"behaviour": "crash"})
    good = [Task.make("job", f"good{i}", STAGE, {}) for i in range(2)]
    queue.enqueue_many([poison, *good])
    env = worker_env(redis_url, visibility_timeout_s=0.5, max_deliveries=2)
    coordinator = Coordinator(queue, client)

    crashes = 0
    # A supervisor (Kubernetes, compose) restarts crashed workers; so do we, a few times at most.
    for _ in range(5):
        with start_python(WORKER_TARGET, env=env, log_dir=tmp_path) as worker:
            while worker.alive() and len(coordinator.results) < 3:
                coordinator.poll()
            if not worker.alive():
                assert worker.wait(5) == 13
                crashes += 1
                continue
            assert worker.stop() == 0
            break
    coordinator.wait_for(3, 5)

    assert crashes == 2  # max_deliveries
    assert int(client.get(f"attempts:{poison.task_id}")) == 2
    failed = coordinator.results[poison.task_id]
    assert not failed.ok and failed.error_code == "ABORTED"
    assert failed.error_message.startswith("delivered 3 times; last error: none recorded")
    letters = queue.dead_letters()
    assert [(d["task_id"], d["deliveries"]) for d in letters] == [(poison.task_id, 3)]
    assert all(coordinator.results[t.task_id].ok for t in good)
    assert client.hlen("effects") == 2  # only the good tasks had an effect
    assert queue.backlog(STAGE) == 0


def test_sigterm_lets_the_task_in_hand_finish(queue, redis_url, tmp_path):
    client = queue.redis
    slow = Task.make("job", "slow", STAGE, {"behaviour": "slow", "seconds": 1.0})
    waiting = Task.make("job", "waiting", STAGE, {})
    queue.enqueue_many([slow, waiting])

    with start_python(
        WORKER_TARGET, env=worker_env(redis_url, visibility_timeout_s=5), log_dir=tmp_path
    ) as worker:
        wait_for_redis_key(redis_url, f"started:{slow.task_id}", timeout=20)
        started = time.monotonic()
        assert worker.stop(timeout=15) == 0, worker.log_tail()
        # it stayed until the slow task was done, not one second longer than needed
        assert 0.3 < time.monotonic() - started < 8
    coordinator = Coordinator(queue, client)
    coordinator.wait_for(1, 5)
    assert coordinator.results[slow.task_id].ok
    assert client.hget("effects", slow.task_id) == str(worker.pid)
    # the next task was never taken: still waiting for the next worker, not pending on a dead one
    assert queue.stats()["stages"][STAGE] == {"backlog": 1, "pending": 0}
    assert not client.exists(f"started:{waiting.task_id}")
