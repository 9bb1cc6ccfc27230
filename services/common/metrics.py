"""Prometheus metrics shared by every module of a service process.

`METRICS` lives on prometheus-client's default registry, which `/metrics` (see
`ServiceProcess`) exports together with the process metrics. Tests build their own
`Metrics(CollectorRegistry())` to read counts without interference from other tests.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Seconds: from sub-millisecond health checks to minute-long CPU model batches.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The metric objects of one registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.grpc_requests = Counter(
            "sfhq_grpc_requests_total",
            "gRPC requests handled, by method and status code",
            ["method", "code"],
            registry=registry,
        )
        self.grpc_latency = Histogram(
            "sfhq_grpc_request_seconds",
            "gRPC request latency, by method and status code",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "sfhq_queue_backlog",
            "Tasks waiting or in progress in a stage stream",
            ["stage"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "sfhq_worker_batch_size",
            "Tasks per batch handed to a stage handler",
            ["stage"],
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_latency = Histogram(
            "sfhq_worker_batch_seconds",
            "Time a stage handler took for one batch",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tasks = Counter(
            "sfhq_worker_tasks_total",
            "Tasks finished by stage workers, by outcome (ok, failed)",
            ["stage", "outcome"],
            registry=registry,
        )
        self.task_failures = Counter(
            "sfhq_worker_task_failures_total",
            "Task failures, by kind: permanent (failed result, acked) or transient (left for redelivery)",
            ["stage", "kind"],
            registry=registry,
        )


METRICS = Metrics()
