"""OpenTelemetry tracing: one trace per job, from the SDK through the gateway, the queue and every stage.

* Exporting is on when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the other `OTEL_*` variables work as usual
  (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_INSECURE`, `OTEL_BSP_*`...). Without them nothing is
  exported and spans cost next to nothing.
* Every gRPC call becomes a server span whose parent comes from the caller's `traceparent` header
  (the SDK and the services send theirs).
* The gateway records the trace context of `SubmitJob` with the job and puts it into every task it
  enqueues (a `trace` field of the stream entry); a worker opens one span per task under it, so one
  slow item can be followed across services.
* Log lines carry the trace id (`trace=<32 hex digits>`) of the span they were written in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Span, SpanKind

log = logging.getLogger(__name__)
TRACER = trace.get_tracer("sfhq")
_configured = False


def exporting() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup_tracing(service: str) -> None:
    """Install the tracer provider of this process (once), exporting over OTLP when configured."""
    global _configured
    if _configured:
        return
    _configured = True
    for handler in logging.getLogger().handlers:
        handler.setFormatter(TraceFormatter(LOG_FORMAT))
    if not exporting():
        return
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or f"sfhq-{service}"
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info(
        "tracing: exporting spans of %s over OTLP to %s", name, os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def shutdown_tracing() -> None:
    """Flush the spans still buffered (at process stop)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s trace=%(trace_id)s: %(message)s"


class TraceFormatter(logging.Formatter):
    """Log lines with the trace id of the span they were written in ("-" outside spans)."""

    def format(self, record: logging.LogRecord) -> str:
        span_context = trace.get_current_span().get_span_context()
        record.trace_id = format(span_context.trace_id, "032x") if span_context.is_valid else "-"
        return super().format(record)


# ---- carrying the context ---------------------------------------------------------------------------


def inject() -> str:
    """The current trace context as a `traceparent` value ("" when there is no span)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", "")


def context_of(traceparent: str) -> context.Context:
    return propagate.extract({"traceparent": traceparent}) if traceparent else context.Context()


def metadata_context(metadata: Sequence[tuple[str, Any]] | None) -> context.Context:
    """The caller's trace context from gRPC metadata (W3C `traceparent` / `tracestate`)."""
    carrier = {key: value for key, value in metadata or () if key in ("traceparent", "tracestate")}
    return propagate.extract(carrier)


def metadata_with_context(metadata: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
    """`metadata` plus the current trace context, for an outgoing call."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return (*metadata, *carrier.items())


# ---- spans ---------------------------------------------------------------------------------------------


@contextmanager
def server_span(method: str, metadata: Sequence[tuple[str, Any]] | None) -> Iterator[Span]:
    """The span of one served gRPC call, child of the caller's span."""
    with TRACER.start_as_current_span(
        method.lstrip("/"),
        context=metadata_context(metadata),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.method": method},
    ) as span:
        yield span


@contextmanager
def task_spans(stage: str, tasks: Sequence[Any]) -> Iterator[None]:
    """One span per task of a worker batch, each under its own job's trace (the task's `trace`)."""
    spans = [
        TRACER.start_span(
            f"stage {stage}",
            context=context_of(getattr(task, "trace", "")),
            kind=SpanKind.CONSUMER,
            attributes={
                "sfhq.stage": stage,
                "sfhq.job_id": task.job_id,
                "sfhq.item_id": task.item_id,
                "sfhq.batch_size": len(tasks),
            },
        )
        for task in tasks
    ]
    try:
        yield
    finally:
        for span in spans:
            span.end()
