"""Queue throughput and latency: our RedisQueue / StageWorker next to raw Redis Streams commands.

All rows run in one process against one redis-server that this script starts itself (loopback):

* naive: one round trip per command (XADD; per task XREADGROUP COUNT 1, the result XADD, XACK
  and XDEL: the same work as our consumer, one command at a time);
* raw, pipelined (redis-benchmark style): XADD in pipelines of 256; XREADGROUP COUNT 32, then the
  32 result XADDs + XACK + XDEL in one pipeline;
* ours: `RedisQueue.enqueue` (capped: Lua check + XADD), `enqueue_many`; `read_batch` +
  `complete` (result XADD + XACK + XDEL in one transaction) at batch 1 and 32, with redis-py's
  hiredis reply parser (the default when hiredis is installed) and with its pure-Python one; and
  the whole `StageWorker` loop with a no-op handler at batch 1 and 32;
* enqueue -> dequeue latency (p50/p99) with a producer at a steady rate and a blocking consumer.

Every row runs once per round, rows in turn, for several rounds; the table shows the best and
the median round.

    python bench/queue.py            # 10,000 tasks per row, 3 rounds
    python bench/queue.py --quick    # 2,000 tasks per row, 2 rounds (< 60 s)

Writes the tables to bench/results/queue.md.
"""

from __future__ import annotations

import sys

if __name__ != "__main__":
    # This file is named like the standard library's `queue`, and scripts run from bench/ have
    # bench/ first on sys.path, so `import torch` (which imports `queue`) would land here. Hand
    # such an import the real module instead.
    import importlib.util
    import sysconfig

    _spec = importlib.util.spec_from_file_location("queue", f"{sysconfig.get_paths()['stdlib']}/queue.py")
    assert _spec is not None and _spec.loader is not None
    _stdlib_queue = importlib.util.module_from_spec(_spec)
    sys.modules["queue"] = _stdlib_queue
    _spec.loader.exec_module(_stdlib_queue)
    globals().update({k: v for k, v in _stdlib_queue.__dict__.items() if not k.startswith("__")})
else:
    from pathlib import Path as _Path

    # Run as a script: drop bench/ from the path so that `import queue` means the standard library.
    _here = _Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if _Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))


def main() -> int:
    import argparse
    import statistics
    import threading
    import time
    from pathlib import Path

    import redis
    from prometheus_client import CollectorRegistry
    from redis.connection import _RESP2Parser

    from services.common.embedded_redis import EmbeddedRedis
    from services.common.metrics import Metrics
    from services.common.queue import (
        RESULTS_STREAM,
        WORKER_GROUP,
        RedisQueue,
        Task,
        TaskResult,
        connect_redis,
        stage_stream,
    )
    from services.common.worker import StageWorker

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2,000 tasks per row")
    parser.add_argument(
        "--tasks", type=int, default=0, help="tasks per row (default 10,000; 2,000 with --quick)"
    )
    args = parser.parse_args()
    n = args.tasks or (2_000 if args.quick else 10_000)
    n_rounds = 2 if args.quick else 3
    stage = "embed"
    stream = stage_stream(stage)
    fields = Task.make(
        "bench-job", "item", stage, {"image": "jobs/bench/items/x/align/aligned.png"}
    ).to_fields()

    rates: dict[tuple[str, int], list[float]] = {}  # (method, batch) -> tasks/s of each round

    def timed(label: str, batch: int, run) -> None:
        started = time.perf_counter()
        run()
        rate = n / (time.perf_counter() - started)
        rates.setdefault((label, batch), []).append(rate)
        print(f"{label:<60} batch {batch:>3}: {rate:>10,.0f} tasks/s", flush=True)

    with EmbeddedRedis() as server:

        def one_round() -> None:  # every row once; rounds run the rows in turn
            client = connect_redis(server.url)
            queue = RedisQueue(client, stream_maxlen=n + 1000, visibility_timeout_s=300, max_deliveries=3)
            pure_client = redis.Redis.from_url(server.url, decode_responses=True, parser_class=_RESP2Parser)
            pure_queue = RedisQueue(
                pure_client, stream_maxlen=n + 1000, visibility_timeout_s=300, max_deliveries=3
            )

            def reset() -> None:
                client.flushall()
                queue.ensure_groups()

            # ---- naive: one round trip per command ----
            reset()
            timed(
                "naive: XADD, one round trip each", 1, lambda: [client.xadd(stream, fields) for _ in range(n)]
            )

            def result_fields(entry_fields: dict) -> dict:
                task = Task.from_fields(entry_id="0-0", fields=entry_fields)
                return TaskResult.success(task, {}).to_fields()

            def naive_consume() -> None:
                for _ in range(n):
                    for _, entries in client.xreadgroup(WORKER_GROUP, "c", {stream: ">"}, count=1):
                        entry_id, entry_fields = entries[0]
                        client.xadd(RESULTS_STREAM, result_fields(entry_fields))
                        client.xack(stream, WORKER_GROUP, entry_id)
                        client.xdel(stream, entry_id)

            timed("naive: per task XREADGROUP COUNT 1, result XADD, XACK, XDEL", 1, naive_consume)

            # ---- raw Redis, pipelined ----
            reset()

            def raw_produce() -> None:
                for start in range(0, n, 256):
                    pipe = client.pipeline(transaction=False)
                    for _ in range(min(256, n - start)):
                        pipe.xadd(stream, fields)
                    pipe.execute()

            timed("raw: XADD, pipelined x256", 256, raw_produce)

            def raw_consume() -> None:
                done = 0
                while done < n:
                    reply = client.xreadgroup(WORKER_GROUP, "c", {stream: ">"}, count=32)
                    entries = [entry for _, batch in reply for entry in batch]
                    ids = [entry_id for entry_id, _ in entries]
                    pipe = client.pipeline(transaction=False)
                    for _, entry_fields in entries:
                        pipe.xadd(RESULTS_STREAM, result_fields(entry_fields))
                    pipe.xack(stream, WORKER_GROUP, *ids)
                    pipe.xdel(stream, *ids)
                    pipe.execute()
                    done += len(ids)

            timed("raw: XREADGROUP COUNT 32, then results + XACK + XDEL pipelined", 32, raw_consume)

            # ---- ours ----
            tasks = [Task.make("bench-job", f"i{i}", stage, {"i": i}) for i in range(n)]
            reset()
            timed(
                "ours: enqueue (capped: Lua XLEN check + XADD)", 1, lambda: [queue.enqueue(t) for t in tasks]
            )
            reset()
            timed(
                "ours: enqueue_many (capped, atomic)",
                32,
                lambda: [queue.enqueue_many(tasks[i : i + 32]) for i in range(0, n, 32)],
            )

            def consume(batch: int, on: RedisQueue = queue) -> None:
                done = 0
                while done < n:
                    got = on.read_batch(stage, "c", batch, 0)
                    on.complete(stage, [(t.entry_id, TaskResult.success(t, {})) for t in got])
                    done += len(got)

            for batch in (1, 32):
                reset()
                queue.enqueue_many(tasks)
                timed("ours: read_batch + complete (result + XACK + XDEL)", batch, lambda b=batch: consume(b))
            reset()
            queue.enqueue_many(tasks)
            timed(
                "ours: read_batch + complete, pure-Python reply parser (no hiredis)",
                32,
                lambda: consume(32, pure_queue),
            )
            pure_client.close()

            def worker_run(batch: int) -> None:
                worker = StageWorker(
                    queue,
                    stage,
                    lambda ts: [TaskResult.success(t, {}) for t in ts],
                    consumer=f"w{batch}",
                    batch_size=batch,
                    block_ms=5,
                    metrics=Metrics(CollectorRegistry()),
                )
                worker.start()
                while queue.backlog(stage) > 0:
                    time.sleep(0.02)
                worker.stop(5)

            for batch in (1, 32):
                reset()
                queue.enqueue_many(tasks)
                timed("ours: StageWorker loop, no-op handler", batch, lambda b=batch: worker_run(b))

        for _round in range(n_rounds):
            one_round()

        # ---- latency: steady producer, blocking consumer (once) ----
        client = connect_redis(server.url)
        queue = RedisQueue(client, stream_maxlen=n + 1000, visibility_timeout_s=300, max_deliveries=3)

        def reset() -> None:
            client.flushall()
            queue.ensure_groups()

        latency_rows: list[tuple[int, int, float, float]] = []
        # A steady rate that a batch-1 consumer sustains, so that the figure is latency, not backlog.
        rate = 250
        count = min(n, 500 if args.quick else 2500)
        for batch in (1, 32):
            reset()
            waits: list[float] = []

            def produce() -> None:
                start = time.perf_counter()
                for i in range(count):
                    due = start + i / rate
                    pause = due - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    queue.enqueue(Task.make("bench-job", f"l{i}", stage, {"t": time.perf_counter()}))

            producer = threading.Thread(target=produce)
            producer.start()
            while len(waits) < count:
                got = queue.read_batch(stage, "c", batch, 50)
                now = time.perf_counter()
                waits += [(now - t.payload["t"]) * 1000 for t in got]
                queue.ack(stage, [t.entry_id for t in got])
            producer.join()
            waits.sort()
            p50, p99 = statistics.median(waits), waits[int(0.99 * (len(waits) - 1))]
            latency_rows.append((batch, rate, p50, p99))
            print(f"latency batch {batch:>2} at {rate}/s: p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
        version = client.info("server")["redis_version"]
        client.close()

    rows = list(rates.items())
    producer_naive = statistics.median(rows[0][1])  # naive XADD is the producer baseline
    consumer_naive = statistics.median(rows[1][1])
    lines = [
        f"Redis {version} on loopback (started by the script), {n:,} tasks per row, one client process; "
        f"a task is a stage entry with a small JSON payload; {n_rounds} rounds, rows in turn.",
        "",
        "| method | batch | tasks/s (best round) | tasks/s (median) | vs naive (medians) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    producer_rows = {"naive: XADD", "raw: XADD,", "ours: enqueue"}
    for (label, batch), values in rows:
        base = producer_naive if any(label.startswith(p) for p in producer_rows) else consumer_naive
        middle = statistics.median(values)
        lines.append(f"| {label} | {batch} | {max(values):,.0f} | {middle:,.0f} | {middle / base:.2f}x |")
    lines += [
        "",
        "Producers compare with naive XADD, consumers with the naive consumer (which does the same work: "
        "read, publish the result, ack, delete).",
        "",
        f"Enqueue -> dequeue latency, producer at {rate} tasks/s, consumer blocking `read_batch` (block 50 ms):",
        "",
        "| consumer batch | p50 ms | p99 ms |",
        "| ---: | ---: | ---: |",
    ]
    lines += [f"| {batch} | {p50:.2f} | {p99:.2f} |" for batch, _, p50, p99 in latency_rows]
    table = "\n".join(lines) + "\n"
    out = Path(__file__).resolve().parent / "results" / "queue.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(table)
    print()
    print(table)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
