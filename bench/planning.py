"""Planning a new job: `first_tasks` + cutting the plan into atomic enqueue chunks (what SubmitJob does
before anything reaches Redis), ours vs the previous implementation, at growing job sizes.

The previous implementation, kept here as the baseline: each item's stage was found by scanning
every task of the plan (`plan_stage`), and each chunk of 500 items scanned every task again to find
its own: O(items x tasks), quadratic in the job's size. Ours makes each item's task with the item and
indexes tasks by item once: linear. The baseline is skipped where it would take minutes (its time
grows 100x per 10x more items; the rows it has show the trend).

    python bench/planning.py            # 1k, 10k, 100k items, 5 interleaved rounds
    python bench/planning.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import jobs  # noqa: E402
from gateway.pipeline import Plan, first_plans, first_tasks  # noqa: E402
from sfhq.v1 import gateway_pb2  # noqa: E402

CHUNK = 500  # the gateway's SUBMIT_CHUNK
BASELINE_MAX_ITEMS = 10_000  # beyond this the quadratic baseline runs for minutes


def spec_for(items: int) -> jobs.ResolvedSpec:
    spec = gateway_pb2.JobSpec(mode=gateway_pb2.JOB_MODE_SAMPLING)
    spec.sampling.count = items
    return jobs.validate_spec(spec, default_dataset_uri="/tmp/ds", max_image_bytes=1 << 20)


def ours(spec: jobs.ResolvedSpec) -> int:
    return sum(len(chunk.tasks) for chunk in first_plans(spec, "job", [], CHUNK))


def previous(spec: jobs.ResolvedSpec) -> int:
    """The code before: the same plan, then the two scans over all tasks."""
    plan = first_tasks(spec, "job", [])
    for item_id in plan.items:  # plan_stage: the first task of this item, by scanning them all
        plan.items[item_id]["stage"] = next((t.stage for t in plan.tasks if t.item_id == item_id), "")
    item_ids, count = list(plan.items), 0
    for start in range(0, len(item_ids), CHUNK):  # the gateway's chunk loop
        chunk_ids = set(item_ids[start : start + CHUNK])
        chunk = Plan(
            items={i: plan.items[i] for i in chunk_ids},
            tasks=[t for t in plan.tasks if t.item_id in chunk_ids],
        )
        count += len(chunk.tasks)
    return count


def measure(sizes: list[int], rounds: int) -> list[dict]:
    rows = []
    for size in sizes:
        spec = spec_for(size)
        timings: dict[str, list[float]] = {"ours": [], "previous": []}
        for _ in range(rounds):  # interleaved: ours, previous, ours, previous, ...
            for name, run in (("ours", ours), ("previous", previous)):
                if name == "previous" and size > BASELINE_MAX_ITEMS:
                    continue
                started = time.perf_counter()
                assert run(spec) == size  # one first task per sample, nothing lost or doubled
                timings[name].append(time.perf_counter() - started)
        rows.append({"items": size, **{k: v for k, v in timings.items() if v}})
    return rows


def table(rows: list[dict], rounds: int) -> str:
    lines = [
        f"Planning a sampling job of N items (first tasks + {CHUNK}-item enqueue chunks), {rounds} interleaved "
        "rounds, one thread; min / median seconds.",
        "",
        "| items | ours min | ours median | previous min | previous median | previous / ours (min) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        ours_t, prev_t = row["ours"], row.get("previous")
        prev = (
            f"{min(prev_t):.3f} | {statistics.median(prev_t):.3f} | {min(prev_t) / min(ours_t):.0f}x"
            if prev_t
            else "not run (quadratic: minutes) | | "
        )
        lines.append(f"| {row['items']:,} | {min(ours_t):.3f} | {statistics.median(ours_t):.3f} | {prev} |")
    lines.append("")
    lines.append("Goal: 100,000 items planned in under a second.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes, rounds = ([100, 1_000], 2) if args.quick else ([1_000, 10_000, 100_000], 5)
    rows = measure(sizes, rounds)
    text = table(rows, rounds)
    print(text)
    out = ROOT / "bench" / "results" / ("planning.quick.md" if args.quick else "planning.md")
    out.write_text(text)
    biggest = rows[-1]
    return 0 if args.quick or min(biggest["ours"]) < 1.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
