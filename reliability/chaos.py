"""Chaos run: a job of a few hundred items while random workers (every stage) and the gateway are
SIGKILLed at random times; then check that every item is in the dataset and manifest exactly once,
every stage applied each item's result exactly once, and nothing is left pending.

    python reliability/chaos.py                       # 300 samples, >= 24 kills (the recorded run)
    python reliability/chaos.py --quick               # 40 samples, every process killed once (< 1 min)
    python reliability/chaos.py --samples 500 --kills 40 --seed 7 --json /tmp/chaos.json

While the main job runs, a few small jobs are submitted *through* the chaos (the gateway may die
in the middle of a SubmitJob; the SDK retries with the same request id): each must exist once and
complete exactly once too. The cluster is the hardened one of reliability/harness.py (tokens, mTLS,
Redis ACL user, AOF), with max_deliveries raised so that kills never dead-letter a healthy task.
Exit code 0 only if every check holds. The figures go to RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from reliability import harness  # noqa: E402
from services.local_run import SERVICE_ORDER  # noqa: E402
from sfhq.v1 import gateway_pb2  # noqa: E402

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
REDIS = "redis"  # a chaos target besides the services: redis-server itself (AOF on)
SAMPLING_STAGES = ("sample", "encode", "synthesize", "embed", "curate", "annotate")


@dataclass
class Kill:
    at_s: float  # seconds since the monkey started
    target: str
    pid: int


class ChaosMonkey(threading.Thread):
    """SIGKILLs cluster processes at random intervals and restarts them, until told to stop.

    Targets are drawn in shuffled rounds, so every one is hit before any is hit twice. A target is
    killed only once it is healthy again (a kill during start-up would test nothing).
    """

    def __init__(
        self,
        cluster: harness.ReliabilityCluster,
        *,
        targets: tuple[str, ...] = SERVICE_ORDER,
        interval_s: tuple[float, float] = (1.0, 4.0),
        max_kills: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(name="chaos-monkey", daemon=True)
        self.cluster = cluster
        self.targets = targets
        self.interval_s = interval_s
        self.max_kills = max_kills
        self.random = random.Random(seed)
        self.kills: list[Kill] = []
        self.errors: list[str] = []
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def _next_targets(self) -> list[str]:
        batch = list(self.targets)
        self.random.shuffle(batch)
        return batch

    def run(self) -> None:
        started = time.monotonic()
        pending: list[str] = []
        while not self._stopping.is_set() and (self.max_kills is None or len(self.kills) < self.max_kills):
            if self._stopping.wait(self.random.uniform(*self.interval_s)):
                break
            pending = pending or self._next_targets()
            target = pending.pop()
            try:
                if target == REDIS:  # SIGKILL, then start again from the append-only file
                    pid = self.cluster.redis_server.process.pid
                    self.cluster.redis_server.restart(kill=True)
                    self.kills.append(Kill(round(time.monotonic() - started, 2), target, pid))
                    continue
                self.cluster.wait_healthy(target, timeout_s=180)
                if self._stopping.is_set():
                    break
                pid = self.cluster.processes[target].pid
                self.cluster.kill(target)
                self.kills.append(Kill(round(time.monotonic() - started, 2), target, pid))
                self.cluster.start(target)  # no wait: the next kill waits for health itself
            except Exception as exc:  # keep going; the report shows it
                self.errors.append(f"{target}: {type(exc).__name__}: {exc}")


@dataclass
class JobCheck:
    job_id: str
    samples: int
    state: str = ""
    written: int = 0
    failed: int = 0
    in_flight: int = 0
    done_by_stage: dict[str, int] = field(default_factory=dict)
    manifest_rows: int = 0
    duplicates: int = 0  # duplicate stems + duplicate items in the manifest
    missing: int = 0
    unexpected: int = 0
    mismatched_files: int = 0
    temp_files: int = 0
    failures: list[str] = field(default_factory=list)  # "item: stage CODE message" of failed items

    @property
    def exactly_once(self) -> bool:
        return (
            self.state == "SUCCEEDED"
            and self.written == self.samples
            and self.failed == 0
            and self.in_flight == 0
            and not (
                self.duplicates or self.missing or self.unexpected or self.mismatched_files or self.temp_files
            )
            and all(self.done_by_stage.get(stage) == self.samples for stage in SAMPLING_STAGES)
        )


def check_job(job: gateway_pb2.Job, out: Path, samples: int) -> JobCheck:
    c = job.counts
    check = JobCheck(
        job.job_id,
        samples,
        gateway_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_"),
        c.written,
        c.failed,
        c.in_flight,
        dict(c.done_by_stage),
    )
    if (out / "manifest.jsonl").exists():
        data = harness.check_dataset(out, harness.sample_item_ids(samples))
        check.manifest_rows = data.manifest_rows
        check.duplicates = len(data.duplicate_stems) + len(data.duplicate_items)
        check.missing, check.unexpected = len(data.missing_items), len(data.unexpected_items)
        check.mismatched_files = sum(len(stems) for stems in data.mismatched_folders.values())
        check.temp_files = len(data.temp_files)
    else:
        check.missing = samples
    return check


@dataclass
class ChaosReport:
    samples: int
    seed: int
    seconds: float = 0.0
    kills: list[Kill] = field(default_factory=list)
    monkey_errors: list[str] = field(default_factory=list)
    main_job: JobCheck | None = None
    side_jobs: list[JobCheck] = field(default_factory=list)
    side_job_duplicates: int = 0  # jobs created twice for one request id
    queue: dict[str, Any] = field(default_factory=dict)
    nothing_pending: bool = False
    dead_letters: int = 0

    @property
    def kills_by_target(self) -> dict[str, int]:
        return dict(Counter(kill.target for kill in self.kills))

    @property
    def ok(self) -> bool:
        jobs = [self.main_job, *self.side_jobs]
        return (
            all(job is not None and job.exactly_once for job in jobs)
            and self.nothing_pending
            and self.dead_letters == 0
            and self.side_job_duplicates == 0
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(kills_by_target=self.kills_by_target, ok=self.ok, kill_count=len(self.kills))
        return out


def _state(admin: Any, job_id: str) -> str:
    try:
        return admin.hget(f"sfhq:job:{job_id}", "state") or ""
    except redis.RedisError:  # redis-server is itself a chaos target
        return ""


def run_chaos(
    cluster: harness.ReliabilityCluster,
    *,
    samples: int,
    min_kills: int,
    seed: int = 0,
    interval_s: tuple[float, float] = (1.0, 4.0),
    side_jobs: int = 0,
    side_samples: int = 3,
    timeout_s: float = 1800.0,
    kill_redis: bool = False,
) -> ChaosReport:
    """One chaos run on a running cluster; returns what happened and what held.

    `kill_redis` adds redis-server (SIGKILL with the AOF on, fsync every second) to the targets.
    """
    report = ChaosReport(samples=samples, seed=seed)
    admin = cluster.admin_redis()
    out = cluster.workdir / f"chaos-{seed}-{int(time.time())}"
    started = time.monotonic()
    targets = (*SERVICE_ORDER, REDIS) if kill_redis else SERVICE_ORDER
    monkey = ChaosMonkey(cluster, targets=targets, interval_s=interval_s, seed=seed)
    side: list[tuple[str, Path]] = []
    with cluster.client(timeout=60, retries=8) as client:
        job = client.submit(harness.sampling_spec(samples, out))
        monkey.start()
        rng = random.Random(seed + 1)
        next_side = time.monotonic() + rng.uniform(*interval_s) * 2
        deadline = started + timeout_s
        # Keep the monkey busy until the job is done AND it has killed enough; watch via Redis so
        # that the loop itself never depends on the gateway being up.
        while time.monotonic() < deadline:
            if len(side) < side_jobs and time.monotonic() >= next_side:
                folder = out.with_name(out.name + f"-side{len(side)}")
                request_id = f"chaos-side-{seed}-{len(side)}"
                side_job = client.submit(harness.sampling_spec(side_samples, folder), request_id=request_id)
                side.append((side_job.job_id, folder))
                next_side = time.monotonic() + rng.uniform(*interval_s) * 3
            done = _state(admin, job.job_id) in TERMINAL and all(
                _state(admin, j) in TERMINAL for j, _ in side
            )
            if done and len(side) >= side_jobs:
                break
            if not monkey.is_alive():
                break
            time.sleep(0.25)
        monkey.stop()
        monkey.join(timeout=240)
        cluster.ensure_healthy()
        # Through the gateway (it was killed too): Watch resumes from the last event it saw.
        final = client.wait(job.job_id, timeout=max(60.0, deadline - time.monotonic()))
        report.main_job = check_job(final, out, samples)
        report.main_job.failures = [
            f"{item.item_id}: {item.error.code} {item.error.message}"
            for item in client.list_items(job.job_id, state="failed")[:10]
        ]
        for job_id, folder in side:
            report.side_jobs.append(check_job(client.wait(job_id, timeout=300), folder, side_samples))
        # one job per request id, however many times the SDK had to retry its SubmitJob
        side_folders = {str(folder) for _, folder in side}
        created = [j for j in client.list_jobs(limit=1000) if j.dataset_uri in side_folders]
        report.side_job_duplicates = max(0, len(created) - len(side))
    report.kills = monkey.kills
    report.monkey_errors = monkey.errors
    report.queue = harness.wait_for_quiet_queue(admin, timeout_s=60)
    report.nothing_pending = harness.nothing_pending(report.queue)
    report.dead_letters = int(report.queue.get("dead", 0))
    report.seconds = round(time.monotonic() - started, 1)
    if len(report.kills) < min_kills:
        report.monkey_errors.append(
            f"only {len(report.kills)} kills (wanted >= {min_kills}): the job ended first"
        )
    return report


def markdown(report: ChaosReport, command: str) -> str:
    main = report.main_job
    lines = [
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')})",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| items (samples) in the main job | {report.samples} |",
        f"| SIGKILLs | {len(report.kills)} ({', '.join(f'{k} {v}' for k, v in sorted(report.kills_by_target.items()))}) |",
        f"| side jobs submitted during the chaos | {len(report.side_jobs)} (jobs created twice: {report.side_job_duplicates}) |",
        f"| main job state | {main.state if main else '-'} |",
        f"| written / failed / in flight | {main.written if main else '-'} / {main.failed if main else '-'} / "
        f"{main.in_flight if main else '-'} |",
        f"| manifest rows | {main.manifest_rows if main else '-'} |",
        f"| duplicates in manifest + dataset | {main.duplicates if main else '-'} |",
        f"| missing items / unexpected items / files off the manifest / temp files | "
        f"{main.missing if main else '-'} / {main.unexpected if main else '-'} / "
        f"{main.mismatched_files if main else '-'} / {main.temp_files if main else '-'} |",
        f"| results applied per stage (each must equal the items) | "
        f"{', '.join(f'{s} {main.done_by_stage.get(s, 0)}' for s in SAMPLING_STAGES) if main else '-'} |",
        f"| pending or waiting entries left (all streams) | {0 if report.nothing_pending else report.queue} |",
        f"| dead letters | {report.dead_letters} |",
        f"| wall time | {report.seconds} s |",
        f"| verdict | {'PASS' if report.ok else 'FAIL'} |",
    ]
    if report.monkey_errors:
        lines += ["", "Monkey notes: " + "; ".join(report.monkey_errors[:10])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="40 samples, 5 kills (every process once)")
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--kills", type=int, default=24, help="minimum number of SIGKILLs")
    parser.add_argument("--side-jobs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kill-redis", action="store_true", help="SIGKILL redis-server too (AOF on)")
    parser.add_argument("--interval", type=float, nargs=2, default=(2.0, 6.0), metavar=("MIN_S", "MAX_S"))
    parser.add_argument("--json", default="", help="also write the full report here")
    parser.add_argument("--markdown", default="", help="write the summary table here")
    args = parser.parse_args()
    harness.stop_cleanly_on_sigterm()
    if args.quick:
        args.samples, args.kills, args.side_jobs, args.interval = 40, 5, 1, (0.5, 1.5)
    # A task killed with its worker is redelivered; allow many deliveries so that only a real
    # poison input could ever be dead-lettered (the run then shows dead letters = 0).
    with harness.running_cluster(extra_env={"SFHQ_MAX_DELIVERIES": "20"}) as cluster:
        report = run_chaos(
            cluster,
            samples=args.samples,
            min_kills=args.kills,
            seed=args.seed,
            interval_s=tuple(args.interval),
            side_jobs=args.side_jobs,
            kill_redis=args.kill_redis,
        )
    command = "python reliability/chaos.py" + (
        " --quick" if args.quick else f" --samples {args.samples} --kills {args.kills} --seed {args.seed}"
    )
    command += " --kill-redis" if args.kill_redis else ""
    table = markdown(report, command)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2, default=str))
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0 if report.ok and len(report.kills) >= args.kills else 1


if __name__ == "__main__":
    raise SystemExit(main())
