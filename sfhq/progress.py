"""Job progress in the terminal: one line per job, a bar per stage while a job runs (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from sfhq.sdk import TERMINAL_STATES, Client
from sfhq.v1 import common_pb2, gateway_pb2

STAGE_ORDER = ("diffuse", "align", "sample", "encode", "synthesize", "embed", "curate", "annotate")


def job_line(job: gateway_pb2.Job) -> str:
    c = job.counts
    return (
        f"{job.job_id}  {gateway_pb2.JobState.Name(job.state).removeprefix('JOB_STATE_')}  "
        f"inputs {c.inputs}  candidates {c.candidates}  accepted {c.accepted}  written {c.written}  "
        f"rejected {c.rejected_taste} by taste + {c.rejected_duplicate} duplicates  failed {c.failed}"
    )


def failure_text(error: common_pb2.Error) -> str:
    """'failed at align: <reason> (INVALID_ARGUMENT)': where, why, and the status code last."""
    stage = common_pb2.Stage.Name(error.stage).removeprefix("STAGE_").lower()
    where = f" at {stage}" if error.stage else ""
    return f"failed{where}: {error.message}" + (f" ({error.code})" if error.code else "")


def follow(client: Client, job_id: str, console: Console, *, quiet: bool = False) -> gateway_pb2.Job:
    """Shows a progress bar per stage until the job ends; returns the final job."""
    job = client.get_job(job_id)
    with Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    ) as progress:
        bars: dict[str, TaskID] = {}
        for event in client.watch(job_id):
            counts = event.counts
            expected = {
                "diffuse": counts.inputs,
                "align": counts.inputs,
                "sample": counts.inputs,
                "encode": counts.inputs,
                "synthesize": counts.inputs,
                "embed": counts.candidates,
                "curate": counts.candidates,
                "annotate": counts.accepted,
            }
            for stage in STAGE_ORDER:
                done = counts.done_by_stage.get(stage, 0)
                if stage not in bars and done == 0:
                    continue
                if stage not in bars:
                    bars[stage] = progress.add_task(stage, total=max(expected[stage], done))
                progress.update(bars[stage], completed=done, total=max(expected[stage], done))
            if event.kind == "item_failed" and not quiet:
                progress.console.print(f"[yellow]item {event.item_id} {failure_text(event.error)}[/]")
    job = client.get_job(job_id)
    while job.state not in TERMINAL_STATES:
        job = client.wait(job_id)
    return job
