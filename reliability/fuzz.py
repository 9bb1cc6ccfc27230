"""Fuzz every public RPC of a running hardened cluster with generated and mutated requests.

    python reliability/fuzz.py                     # 10,500 requests (420 per RPC; the recorded run)
    python reliability/fuzz.py --quick             # 40 per RPC (a few minutes)
    python reliability/fuzz.py --per-rpc 1000 --seed 3 --markdown /tmp/fuzz.md

Each RPC gets `--per-rpc` cases from reliability/fuzzing.py (hypothesis strategies: generated
messages, valid requests with one hostile field, byte mutations, hostile metadata), plus one
message over the size limit per service. Every answer's status is counted; a forbidden one
(UNKNOWN, INTERNAL) or a process that died is a finding: the case is kept in
tests/data/fuzz_corpus/ (`--corpus`), where the test suite replays it. Resident memory of every
process is read before and after. Exit code 0 only if there was no finding.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402

from reliability import fuzzing, harness  # noqa: E402
from services.local_run import SERVICE_ORDER  # noqa: E402

warnings.filterwarnings("ignore", message="Generating overly large repr")

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "fuzz_corpus"


def oversized_cases(limit_mb: float) -> list[fuzzing.FuzzCase]:
    """One request per service just over the message size limit (an Image with that many bytes)."""
    size = int(limit_mb * 1024 * 1024) + 1024
    payload = b"\x0a" + fuzzing._varint(size + 6) + b"\x0a" + fuzzing._varint(size) + b"\x00" * size
    paths = [
        "/sfhq.v1.Gateway/SubmitJob",
        "/sfhq.v1.Encoder/Encode",
        "/sfhq.v1.Generator/Synthesize",
        "/sfhq.v1.Annotator/Detect",
        "/sfhq.v1.Search/Embed",
    ]
    return [fuzzing.FuzzCase(path, payload, (), "oversized") for path in paths]


def run(
    cluster: harness.ReliabilityCluster,
    *,
    per_rpc: int,
    seed: int,
    corpus: Path,
    max_message_mb: float,
    only: set[str] | None = None,
) -> dict:
    env = fuzzing.discover(cluster, cluster.workdir / "fuzz")
    sender = fuzzing.Sender(cluster.channel, timeout_s=120)
    rss_before = {name: round(cluster.rss_mb(name)) for name in SERVICE_ORDER}
    outcomes: dict[str, list[fuzzing.Outcome]] = defaultdict(list)
    kinds: dict[str, int] = defaultdict(int)
    findings: list[dict] = []
    crashes: list[str] = []
    slowest: list[tuple[float, str, str]] = []
    started = time.monotonic()

    examples: dict[str, str] = {}  # "RPC CODE" -> the first answer's details, to read what was said

    def record(rpc_name: str, case: fuzzing.FuzzCase, outcome: fuzzing.Outcome) -> None:
        outcomes[rpc_name].append(outcome)
        examples.setdefault(f"{rpc_name} {outcome.code}", f"[{case.kind}] {outcome.details[:200]}")
        kinds[case.kind] += 1
        slowest.append((outcome.seconds, rpc_name, f"{case.kind} -> {outcome.code}"))
        if outcome.code in fuzzing.FORBIDDEN_CODES:
            path = fuzzing.save_case(corpus, case, outcome, note="found by reliability/fuzz.py")
            findings.append(
                {
                    "rpc": rpc_name,
                    "kind": case.kind,
                    "code": outcome.code,
                    "details": outcome.details,
                    "saved": str(path.relative_to(corpus.parent.parent.parent)),
                }
            )

    for case in oversized_cases(max_message_mb):
        record(case.rpc_path.rsplit(".", 1)[-1].replace("/", "."), case, sender.send(case))

    def fuzz_rpc(rpc: fuzzing.Rpc, recent: list[fuzzing.FuzzCase]) -> None:
        @settings(
            max_examples=per_rpc,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis_seed(seed)
        @given(case=fuzzing.cases(rpc, env))
        def fuzz_one(case: fuzzing.FuzzCase) -> None:
            recent[:] = [*recent[-19:], case]
            record(rpc.name, case, sender.send(case))

        fuzz_one()

    for rpc in fuzzing.public_rpcs():
        if only and rpc.name not in only:
            continue
        recent: list[fuzzing.FuzzCase] = []
        rpc_started = time.monotonic()
        fuzz_rpc(rpc, recent)
        dead = [name for name in SERVICE_ORDER if not cluster.alive(name)]
        if dead:  # keep what was sent last: one of these cases took the process down
            crashes.append(f"{rpc.name}: {', '.join(dead)} died")
            for case in recent:
                fuzzing.save_case(
                    corpus,
                    case,
                    fuzzing.Outcome("CRASH", ",".join(dead), 0.0),
                    note="sent shortly before a process died",
                )
            cluster.ensure_healthy()
        print(
            f"{rpc.name:28s} {len(outcomes[rpc.name]):5d} requests in {time.monotonic() - rpc_started:6.1f} s  "
            f"{fuzzing.histogram(outcomes[rpc.name])}",
            flush=True,
        )
    sender.close()
    rss_after = {name: round(cluster.rss_mb(name)) if cluster.alive(name) else None for name in SERVICE_ORDER}
    total = sum(len(v) for v in outcomes.values())
    return {
        "requests": total,
        "seconds": round(time.monotonic() - started, 1),
        "per_rpc": {name: len(v) for name, v in outcomes.items()},
        "histogram_by_rpc": {name: fuzzing.histogram(v) for name, v in outcomes.items()},
        "histogram": fuzzing.histogram([o for v in outcomes.values() for o in v]),
        "kinds": dict(kinds),
        "findings": findings,
        "crashes": crashes,
        "rss_mb_before": rss_before,
        "rss_mb_after": rss_after,
        "slowest": [f"{s:.1f} s {name} ({what})" for s, name, what in sorted(slowest, reverse=True)[:5]],
        "environment": {"n_latent": env.n_latent, "clip_dim": env.clip_dim},
        "examples": examples,
    }


def markdown(result: dict, command: str) -> str:
    codes = sorted(result["histogram"])
    lines = [
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}): {result['requests']} requests in "
        f"{result['seconds']} s; cases by kind: {result['kinds']}",
        "",
        "| RPC | requests | " + " | ".join(codes) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in codes) + " |",
    ]
    for name, counts in sorted(result["histogram_by_rpc"].items()):
        lines.append(
            f"| {name} | {sum(counts.values())} | " + " | ".join(str(counts.get(c, 0)) for c in codes) + " |"
        )
    lines.append(
        f"| **all** | **{result['requests']}** | "
        + " | ".join(f"**{result['histogram'][c]}**" for c in codes)
        + " |"
    )
    lines += ["", "| process | RSS before (MiB) | RSS after (MiB) |", "| --- | ---: | ---: |"]
    for name in SERVICE_ORDER:
        lines.append(f"| {name} | {result['rss_mb_before'][name]} | {result['rss_mb_after'][name]} |")
    lines += [
        "",
        f"Findings (UNKNOWN/INTERNAL answers): {len(result['findings'])}; process deaths: "
        f"{len(result['crashes'])}. Slowest answers: {'; '.join(result['slowest'])}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="40 cases per RPC")
    parser.add_argument("--per-rpc", type=int, default=420)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--only", nargs="*", default=None, help="RPC names, e.g. Gateway.GetItem")
    parser.add_argument("--json", default="")
    parser.add_argument("--markdown", default="")
    args = parser.parse_args()
    harness.stop_cleanly_on_sigterm()
    if args.quick:
        args.per_rpc = 40
    # A small stream cap: fuzzed SubmitJobs that are valid get real work; big ones get RESOURCE_EXHAUSTED.
    with harness.running_cluster(
        extra_env={"SFHQ_STREAM_MAXLEN": "500", "SFHQ_MAX_MESSAGE_MB": "16"}
    ) as cluster:
        result = run(
            cluster,
            per_rpc=args.per_rpc,
            seed=args.seed,
            corpus=args.corpus,
            max_message_mb=16,
            only=set(args.only) if args.only else None,
        )
    command = "python reliability/fuzz.py" + (
        " --quick" if args.quick else f" --per-rpc {args.per_rpc} --seed {args.seed}"
    )
    table = markdown(result, command)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0 if not result["findings"] and not result["crashes"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
