"""Chaos, in small: SIGKILL every service and the gateway at random times during a job.

The full-size run (300 items, >= 24 kills) is `python reliability/chaos.py`; its figures are in
RELIABILITY.md. Here: 24 items, every process SIGKILLed at least once (the gateway included) and
a side job submitted *during* the chaos, on the session's hardened cluster. What must
hold: every job completes, each item is in the dataset and manifest exactly once, each stage
applied each item's result exactly once, and no stream keeps a pending or waiting entry.
"""

from __future__ import annotations

import pytest

from reliability import harness
from reliability.chaos import SAMPLING_STAGES, run_chaos
from services.local_run import SERVICE_ORDER

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> harness.ReliabilityCluster:
    cluster = harness.shared_cluster()
    cluster.ensure_healthy()
    yield cluster
    cluster.ensure_healthy()


def test_random_sigkills_lose_and_duplicate_nothing(cluster):
    # one shuffled round hits every process within a few seconds, well inside the job's run
    report = run_chaos(
        cluster,
        samples=24,
        min_kills=5,
        seed=11,
        interval_s=(0.3, 1.2),
        side_jobs=1,
        side_samples=3,
        timeout_s=400,
    )
    assert not report.monkey_errors, report.monkey_errors
    assert len(report.kills) >= 5 and set(report.kills_by_target) == set(SERVICE_ORDER), (
        report.kills_by_target
    )
    main = report.main_job
    assert main is not None and main.state == "SUCCEEDED", main
    assert (main.written, main.failed, main.in_flight, main.manifest_rows) == (24, 0, 0, 24), main.failures
    assert (main.duplicates, main.missing, main.unexpected, main.mismatched_files, main.temp_files) == (
        0,
        0,
        0,
        0,
        0,
    )
    assert {stage: main.done_by_stage.get(stage) for stage in SAMPLING_STAGES} == dict.fromkeys(
        SAMPLING_STAGES, 24
    )
    assert [job.exactly_once for job in report.side_jobs] == [True]
    assert report.side_job_duplicates == 0
    assert report.nothing_pending, report.queue
    assert report.dead_letters == 0
    assert report.ok
