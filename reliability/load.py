"""Load test: many client processes on loopback submit small jobs and watch them, search and poll,
for a bounded time, against a hardened local cluster -- once with the bounded queue (ours: each
stage stream is capped and SubmitJob answers RESOURCE_EXHAUSTED when the first stage is full) and
once with an effectively unbounded queue (the naive way), side by side.

    python reliability/load.py --quick     # 4 clients x 6 s per mode (< 60 s with start-up)
    python reliability/load.py             # 12 clients x 120 s per mode (the RELIABILITY.md run)
    python reliability/load.py --clients 16 --seconds 300 --markdown /tmp/load.md

Every client is its own process with its own channel (mTLS + bearer token), as separate users would
be. Roles rotate: submitters (submit a burst of 1-sample jobs, watch each to its end through
WatchJob, repeat; back off 0.5 s on RESOURCE_EXHAUSTED), searchers (text search through the gateway) and
pollers (ListJobs + GetJob). Reported per mode: calls and status codes per RPC, error rate (every
non-OK status except the deliberate RESOURCE_EXHAUSTED), p50/p99 latencies, job turnaround (submit to
SUCCEEDED), the backlog left when the load stops, and the resident memory of every process
(first sample after warm-up, last, peak) plus Redis' own memory. The table goes to
bench/results/load.md (`make bench` puts it in BENCHMARKS.md) unless `--markdown` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reliability import harness  # noqa: E402
from services.local_run import SERVICE_ORDER  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUERIES = (
    "a smiling woman",
    "an old man with a beard",
    "a child with curly hair",
    "a face in profile",
    "a person wearing glasses",
    "a portrait with studio lighting",
)
ROLES = ("submitter", "searcher", "submitter", "poller")  # clients take roles in this order
UNBOUNDED = 1_000_000


# ---- the client processes -----------------------------------------------------------------------


def client_main(role: str, connection: dict[str, Any], seconds: float, seed: int, out_path: str) -> None:
    """One client process: run `role` until the deadline; append one JSON line per call to out_path."""
    import grpc

    from sfhq.sdk import Client, SfhqError, build_spec

    rng = random.Random(seed)
    tls = connection["tls"]
    client = Client(
        connection["gateway"],
        token=connection["token"],
        timeout=60,
        root_certificates=Path(tls, "ca.pem").read_bytes(),
        client_cert=(Path(tls, "client.pem").read_bytes(), Path(tls, "client.key").read_bytes()),
    )
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds

    def call(op: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
            code = "OK"
        except SfhqError as exc:
            result, code = None, exc.code.name
        except grpc.RpcError as exc:
            result, code = None, exc.code().name
        records.append({"op": op, "code": code, "s": time.perf_counter() - started})
        return result

    known_jobs: list[str] = []
    while time.monotonic() < deadline:
        if role == "submitter":
            # a burst of jobs, then watch each to its end (jobs finish roughly in submission order)
            accepted: list[tuple[str, float]] = []
            for _ in range(connection["burst"]):
                spec = build_spec(
                    mode="sampling",
                    samples=1,
                    corrections=["encoder_truncation:coarse=0.3,middle=0.3,fine=0.3"],
                    first_seed=rng.randrange(1 << 30),
                    annotation_size=64,
                    image_size=64,
                    disable_dedup=True,
                    output_uri=f"{connection['out']}/{seed}-{rng.randrange(1 << 30)}",
                )
                submitted = time.perf_counter()
                job = call("SubmitJob", client.submit, spec)
                if job is None:
                    time.sleep(0.5)  # refused (or failed): back off, as a polite client does
                    break
                accepted.append((job.job_id, submitted))
            for job_id, submitted in accepted:
                remaining = max(5.0, deadline - time.monotonic() + connection["grace_s"])
                try:
                    state = client.wait(job_id, timeout=remaining).state
                except (TimeoutError, SfhqError):
                    state = -1
                records.append(
                    {
                        "op": "job",
                        "code": "SUCCEEDED" if state == 5 else "UNFINISHED",
                        "s": time.perf_counter() - submitted,
                    }
                )
        elif role == "searcher":
            call("Search", client.search, rng.choice(QUERIES), top_k=5)
        else:
            jobs = call("ListJobs", client.list_jobs, limit=20)
            if jobs:
                known_jobs = [job.job_id for job in jobs]
            if known_jobs:
                call("GetJob", client.get_job, rng.choice(known_jobs))
    client.close()
    Path(out_path).write_text("\n".join(json.dumps(r) for r in records) + "\n")


# ---- memory ---------------------------------------------------------------------------------------


class MemorySampler(threading.Thread):
    """RSS of every service process and Redis' used memory, once a second."""

    def __init__(self, cluster: harness.ReliabilityCluster) -> None:
        super().__init__(name="memory-sampler", daemon=True)
        self.cluster = cluster
        self.samples: list[dict[str, float]] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        admin = self.cluster.admin_redis()
        while not self._stopping.is_set():
            sample = {name: self.cluster.rss_mb(name) for name in SERVICE_ORDER if self.cluster.alive(name)}
            sample["redis (used)"] = int(admin.info("memory")["used_memory"]) / 2**20
            self.samples.append(sample)
            self._stopping.wait(1.0)

    def stop(self) -> dict[str, dict[str, float]]:
        """Per process: first sample after a quarter of the run (warm-up), last, peak (MiB)."""
        self._stopping.set()
        self.join(5)
        warm = self.samples[len(self.samples) // 4 :] or self.samples
        return (
            {
                name: {
                    "start": round(warm[0][name]),
                    "end": round(warm[-1][name]),
                    "peak": round(max(s[name] for s in warm)),
                }
                for name in warm[0]
            }
            if warm
            else {}
        )


# ---- one mode -------------------------------------------------------------------------------------


def percentiles(values: list[float]) -> tuple[float, float]:
    return harness.percentile(values, 50), harness.percentile(values, 99)


def run_mode(
    cluster: harness.ReliabilityCluster,
    *,
    cap: int,
    clients: int,
    seconds: float,
    work: Path,
    seed: int,
    burst: int,
    grace_s: float,
) -> dict[str, Any]:
    """Restart the gateway with stream cap `cap`, run the clients, and summarise."""
    cluster.kill("gateway")
    cluster.start("gateway", env={"SFHQ_STREAM_MAXLEN": str(cap)})
    cluster.wait_healthy("gateway")
    admin = cluster.admin_redis()
    connection = {
        "gateway": cluster.addr("gateway"),
        "token": cluster.tokens[1],
        "tls": str(cluster.tls_dir),
        "out": str(cluster.workdir / f"load-{cap}"),
        "grace_s": grace_s,
        "burst": burst,
    }
    sampler = MemorySampler(cluster)
    sampler.start()
    context = multiprocessing.get_context("spawn")
    outputs = [work / f"client-{cap}-{n}.jsonl" for n in range(clients)]
    processes = [
        context.Process(
            target=client_main, args=(ROLES[n % len(ROLES)], connection, seconds, seed + n, str(outputs[n]))
        )
        for n in range(clients)
    ]
    started = time.monotonic()
    for process in processes:
        process.start()
    time.sleep(seconds)
    backlog = harness.queue_report(admin)
    waiting = sum(entry["backlog"] for entry in backlog["stages"].values())
    for process in processes:
        process.join(seconds + 120)
    memory = sampler.stop()
    wall = time.monotonic() - started
    # what is still running is cancelled, so that the next mode starts from an empty queue
    with cluster.client() as client:
        for job in client.list_jobs(limit=1000, state=2):
            client.cancel(job.job_id)
    drained = harness.wait_for_quiet_queue(admin, timeout_s=120)

    records = [
        json.loads(line)
        for path in outputs
        if path.exists()
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    by_op: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_op[record["op"]].append(record)
    ops = {}
    for op, rows in sorted(by_op.items()):
        codes: dict[str, int] = defaultdict(int)
        for row in rows:
            codes[row["code"]] += 1
        ok = [row["s"] for row in rows if row["code"] in ("OK", "SUCCEEDED")]
        p50, p99 = percentiles(ok)
        ops[op] = {
            "calls": len(rows),
            "codes": dict(codes),
            "p50_ms": round(p50 * 1000, 1),
            "p99_ms": round(p99 * 1000, 1),
        }
    rpc_rows = [r for r in records if r["op"] != "job"]
    errors = [r for r in rpc_rows if r["code"] not in ("OK", "RESOURCE_EXHAUSTED")]
    return {
        "cap": cap,
        "clients": clients,
        "seconds": seconds,
        "wall_s": round(wall, 1),
        "calls": len(rpc_rows),
        "errors": len(errors),
        "error_rate": len(errors) / max(1, len(rpc_rows)),
        "error_codes": sorted({r["code"] for r in errors}),
        "resource_exhausted": sum(r["code"] == "RESOURCE_EXHAUSTED" for r in rpc_rows),
        "ops": ops,
        "tasks_waiting_at_stop": waiting,
        "quiet_after_stop": harness.nothing_pending(drained),
        "memory_mb": memory,
        "clients_exit_codes": [p.exitcode for p in processes],
    }


# ---- report ---------------------------------------------------------------------------------------


def _op(result: dict[str, Any], op: str, what: str) -> str:
    entry = result["ops"].get(op)
    if entry is None:
        return "-"
    if what == "latency":
        return f"{entry['p50_ms']:.0f} / {entry['p99_ms']:.0f}"
    return str(entry["calls"])


def markdown(results: list[dict[str, Any]], command: str) -> str:
    ours, naive = results
    heads = [f"bounded queue (ours: stage cap {ours['cap']})", "unbounded queue (naive)"]

    def row(label: str, fn: Any) -> str:
        return f"| {label} | {fn(ours)} | {fn(naive)} |"

    def job_counts(r: dict[str, Any]) -> str:
        codes = r["ops"].get("job", {}).get("codes", {})
        return f"{codes.get('SUCCEEDED', 0)} / {codes.get('UNFINISHED', 0)}"

    def submits(r: dict[str, Any]) -> str:
        codes = r["ops"].get("SubmitJob", {}).get("codes", {})
        return f"{codes.get('OK', 0)} / {codes.get('RESOURCE_EXHAUSTED', 0)}"

    lines = [
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}); {ours['clients']} client processes per mode "
        f"(roles: {', '.join(ROLES)}, repeating), {ours['seconds']:.0f} s each, over mTLS + bearer tokens "
        "to a local cluster with tiny random models.",
        "",
        f"| figure | {heads[0]} | {heads[1]} |",
        "| --- | ---: | ---: |",
        row("RPC calls made", lambda r: r["calls"]),
        row(
            "errors (non-OK other than RESOURCE_EXHAUSTED)",
            lambda r: f"{r['errors']} ({r['error_rate']:.2%})",
        ),
        row("SubmitJob accepted / refused RESOURCE_EXHAUSTED", submits),
        row("SubmitJob p50 / p99 (ms)", lambda r: _op(r, "SubmitJob", "latency")),
        row("jobs finished / unfinished when the clients stopped", job_counts),
        row("job turnaround p50 / p99 (ms, submit to SUCCEEDED)", lambda r: _op(r, "job", "latency")),
        row("Search p50 / p99 (ms)", lambda r: _op(r, "Search", "latency")),
        row("ListJobs p50 / p99 (ms)", lambda r: _op(r, "ListJobs", "latency")),
        row("GetJob p50 / p99 (ms)", lambda r: _op(r, "GetJob", "latency")),
        row("tasks waiting when the load stopped", lambda r: r["tasks_waiting_at_stop"]),
    ]
    for name in [*SERVICE_ORDER, "redis (used)"]:

        def memory(r: dict[str, Any], name: str = name) -> str:
            return (
                "{start} → {end} (peak {peak})".format(**r["memory_mb"][name])
                if name in r["memory_mb"]
                else "-"
            )

        lines.append(row(f"memory of {name} (MiB, after warm-up → end)", memory))
    return "\n".join(lines) + "\n"


# ---- watchers: thousands of open WatchJob streams ----------------------------------------------------


def watchers_main(connection: dict[str, Any], job_ids: list[str], count: int, ready: Any, done: Any) -> None:
    """A client process holding `count` WatchJob streams (asyncio, 8 channels) until the jobs end."""
    import asyncio

    from sfhq.sdk import AsyncClient

    tls = connection["tls"]
    options = dict(
        token=connection["token"],
        retries=0,
        root_certificates=Path(tls, "ca.pem").read_bytes(),
        client_cert=(Path(tls, "client.pem").read_bytes(), Path(tls, "client.key").read_bytes()),
    )

    async def run() -> None:
        clients = [AsyncClient(connection["gateway"], **options) for _ in range(8)]
        opened = 0
        finished = 0

        async def watch(n: int) -> None:
            nonlocal opened, finished
            first = True
            async for _event in clients[n % 8].watch(job_ids[n % len(job_ids)]):
                if first:
                    first, opened = False, opened + 1
                    if opened == count:
                        ready.set()
            finished += 1

        results = await asyncio.gather(*(watch(n) for n in range(count)), return_exceptions=True)
        done.value = finished
        errors = [r for r in results if isinstance(r, BaseException)]
        done.errors = len(errors)  # type: ignore[attr-defined]
        done.first_error = repr(errors[0])[:300] if errors else ""  # type: ignore[attr-defined]
        for client in clients:
            await client.close()

    asyncio.run(run())


def probe_latencies(
    cluster: harness.ReliabilityCluster, job_id: str, seconds: float
) -> dict[str, list[float]]:
    """GetJob and a health check every 50 ms for `seconds`, on a channel of their own."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    times: dict[str, list[float]] = {"GetJob": [], "Health": []}
    with cluster.client(retries=0) as client, cluster.channel("gateway") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client.get_job(job_id)
            times["GetJob"].append(time.perf_counter() - started)
            started = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            times["Health"].append(time.perf_counter() - started)
            time.sleep(0.05)
    return times


def run_watchers(cluster: harness.ReliabilityCluster, *, streams: int, seconds: float) -> dict[str, Any]:
    """Open `streams` WatchJob streams on jobs held running (the generator frozen), and measure
    GetJob and health latency before and while they are open."""
    cluster.kill("gateway")
    cluster.start("gateway", env={"SFHQ_MAX_STREAMS_PER_USER": str(streams + 10)})
    cluster.wait_healthy("gateway")
    with cluster.client() as client:
        job_ids = [
            client.submit(harness.sampling_spec(2, cluster.workdir / f"watch-{n}")).job_id for n in range(10)
        ]
    cluster.pause("generator")  # no sample is made: the jobs stay RUNNING, their streams open
    try:
        idle = probe_latencies(cluster, job_ids[0], seconds)
        context = multiprocessing.get_context("spawn")
        ready, done = context.Event(), context.Manager().Namespace()
        done.value, done.errors, done.first_error = 0, 0, ""
        connection = {
            "gateway": cluster.addr("gateway"),
            "token": cluster.tokens[1],
            "tls": str(cluster.tls_dir),
        }
        watcher = context.Process(target=watchers_main, args=(connection, job_ids, streams, ready, done))
        opened_at = time.monotonic()
        watcher.start()
        if not ready.wait(timeout=300):
            raise RuntimeError(f"the {streams} streams did not all open within 300 s")
        open_s = time.monotonic() - opened_at
        busy = probe_latencies(cluster, job_ids[0], seconds)
        rss = cluster.rss_mb("gateway")
    finally:
        cluster.resume("generator")
    with cluster.client() as client:
        states = [client.wait(job_id, timeout=600).state for job_id in job_ids]
    watcher.join(120)
    return {
        "streams": streams,
        "open_s": round(open_s, 1),
        "idle": {k: percentiles(v) for k, v in idle.items()},
        "busy": {k: percentiles(v) for k, v in busy.items()},
        "probes": len(busy["GetJob"]),
        "gateway_rss_mb": round(rss),
        "jobs_succeeded": sum(state == 5 for state in states),
        "streams_finished": done.value,
        "stream_errors": done.errors,
        "first_stream_error": done.first_error,
    }


def watchers_markdown(result: dict[str, Any], command: str) -> str:
    def ms(pair: tuple[float, float]) -> str:
        return f"{pair[0] * 1000:.1f} / {pair[1] * 1000:.1f}"

    return (
        "\n".join(
            [
                f"Command: `{command}` ({time.strftime('%Y-%m-%d')}); {result['streams']} WatchJob streams from one client "
                "process (asyncio, 8 channels, mTLS + a user token) on 10 jobs held running (generator frozen); "
                f"GetJob + health probed every 50 ms from another connection ({result['probes']} probes).",
                "",
                "| figure | no streams open | streams open |",
                "| --- | ---: | ---: |",
                f"| GetJob p50 / p99 (ms) | {ms(result['idle']['GetJob'])} | {ms(result['busy']['GetJob'])} |",
                f"| health check p50 / p99 (ms) | {ms(result['idle']['Health'])} | {ms(result['busy']['Health'])} |",
                f"| time to open every stream (s) | - | {result['open_s']} |",
                f"| gateway memory (MiB) | - | {result['gateway_rss_mb']} |",
                f"| streams that ended with their job / errors | - | {result['streams_finished']} / {result['stream_errors']} |",
                f"| jobs succeeded after the generator resumed | - | {result['jobs_succeeded']} / 10 |",
            ]
        )
        + "\n"
    )


# ---- users: many people on one gateway ---------------------------------------------------------------


def user_main(
    connection: dict[str, Any], name: str, token: str, others: str, seconds: float, out_path: str
) -> None:
    """One user: submit small jobs, list them, try every other user's jobs; count what leaks."""
    from sfhq.sdk import Client, SfhqError

    tls = connection["tls"]
    client = Client(
        connection["gateway"],
        token=token,
        timeout=60,
        root_certificates=Path(tls, "ca.pem").read_bytes(),
        client_cert=(Path(tls, "client.pem").read_bytes(), Path(tls, "client.key").read_bytes()),
    )
    report = {"user": name, "jobs": 0, "succeeded": 0, "foreign_listed": 0, "foreign_reads": 0, "refused": 0}
    mine: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = client.submit(harness.sampling_spec(1, Path(connection["out"]) / f"{name}-{len(mine)}"))
        mine.append(job.job_id)
        Path(out_path).with_suffix(".jobs").write_text("\n".join(mine))
        report["jobs"] += 1
        report["succeeded"] += client.wait(job.job_id, timeout=300).state == 5
        listed = {j.job_id: j.owner for j in client.list_jobs(limit=1000)}
        report["foreign_listed"] += sum(owner != name for owner in listed.values())
        for path in Path(others).glob("*.jobs"):
            if path.stem == name:
                continue
            for job_id in path.read_text().split():
                try:
                    client.get_job(job_id)
                    report["foreign_reads"] += 1
                except SfhqError:
                    report["refused"] += 1
    client.close()
    Path(out_path).write_text(json.dumps(report))


def run_users(cluster: harness.ReliabilityCluster, *, seconds: float, work: Path) -> dict[str, Any]:
    connection = {
        "gateway": cluster.addr("gateway"),
        "tls": str(cluster.tls_dir),
        "out": str(cluster.workdir / "users"),
    }
    context = multiprocessing.get_context("spawn")
    outputs = {name: work / f"{name}.json" for name in cluster.user_tokens}
    processes = [
        context.Process(
            target=user_main, args=(connection, name, token, str(work), seconds, str(outputs[name]))
        )
        for name, token in cluster.user_tokens.items()
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(seconds + 400)
    reports = [json.loads(path.read_text()) for path in outputs.values() if path.exists()]
    return {
        "users": len(cluster.user_tokens),
        "seconds": seconds,
        "jobs": sum(r["jobs"] for r in reports),
        "succeeded": sum(r["succeeded"] for r in reports),
        "foreign_listed": sum(r["foreign_listed"] for r in reports),
        "foreign_reads": sum(r["foreign_reads"] for r in reports),
        "refused": sum(r["refused"] for r in reports),
        "reports": len(reports),
    }


def users_markdown(result: dict[str, Any], command: str) -> str:
    return (
        "\n".join(
            [
                f"Command: `{command}` ({time.strftime('%Y-%m-%d')}); {result['users']} users, one process each, for "
                f"{result['seconds']:.0f} s: submit a 1-sample job, watch it, list jobs, try to read every other user's jobs.",
                "",
                "| figure | value |",
                "| --- | ---: |",
                f"| jobs submitted / succeeded | {result['jobs']} / {result['succeeded']} |",
                f"| other users' jobs seen in ListJobs | {result['foreign_listed']} |",
                f"| other users' jobs read with GetJob | {result['foreign_reads']} |",
                f"| reads of other users' jobs refused (NOT_FOUND) | {result['refused']} |",
            ]
        )
        + "\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4 clients x 6 s per mode")
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--cap", type=int, default=6, help="the bounded mode's stage cap (tasks)")
    parser.add_argument("--burst", type=int, default=4, help="jobs a submitter has in flight at once")
    parser.add_argument(
        "--grace", type=float, default=15.0, help="how long submitters may watch past the end"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="")
    parser.add_argument(
        "--markdown",
        default=str(ROOT / "bench" / "results" / "load.md"),
        help="where the table goes (default: bench/results/load.md, for BENCHMARKS.md)",
    )
    parser.add_argument(
        "--mode",
        choices=("queue", "watchers", "users"),
        default="queue",
        help="queue: bounded vs unbounded (default); watchers: --streams WatchJob streams; "
        "users: --users people on one gateway",
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--users", type=int, default=6)
    args = parser.parse_args()
    harness.stop_cleanly_on_sigterm()
    if args.quick:
        args.clients, args.seconds, args.grace = 4, 6.0, 2.0
        args.streams, args.users = min(args.streams, 100), min(args.users, 3)
    if args.mode != "queue":
        return other_mode(args)
    with harness.running_cluster() as cluster:
        work = cluster.workdir / "load"
        work.mkdir()
        results = [
            run_mode(
                cluster,
                cap=cap,
                clients=args.clients,
                seconds=args.seconds,
                work=work,
                seed=args.seed,
                burst=args.burst,
                grace_s=args.grace,
            )
            for cap in (args.cap, UNBOUNDED)
        ]
    command = "python reliability/load.py" + (
        " --quick" if args.quick else f" --clients {args.clients} --seconds {args.seconds:.0f}"
    )
    table = markdown(results, command)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table)
    return 0 if all(r["errors"] == 0 for r in results) else 1


def other_mode(args: argparse.Namespace) -> int:
    with harness.running_cluster(users=args.users if args.mode == "users" else 0) as cluster:
        if args.mode == "watchers":
            result = run_watchers(cluster, streams=args.streams, seconds=min(args.seconds, 20.0))
            command = f"python reliability/load.py --mode watchers --streams {args.streams}"
            table, ok = watchers_markdown(result, command), result["stream_errors"] == 0
        else:
            work = cluster.workdir / "users-work"
            work.mkdir()
            result = run_users(cluster, seconds=args.seconds, work=work)
            command = (
                f"python reliability/load.py --mode users --users {args.users} --seconds {args.seconds:.0f}"
            )
            table = users_markdown(result, command)
            ok = result["foreign_listed"] == result["foreign_reads"] == 0 and result["reports"] == args.users
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results" / f"load-{args.mode}.md"
    out.write_text(table)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
