"""gRPC set-up shared by every service: server, interceptors, health, reflection, process life cycle.

`build_server` returns a `grpc.Server` with message-size limits from the settings and two
interceptors:

* observability (outermost): counts requests and records latency by method and status code,
  logs failures, and turns the typed errors of `services.common.errors` raised by a servicer
  (`ImageError`, `PermanentError`, `WeightsMissing`, `QueueFull`...) into the matching
  status, so servicers can simply raise;
* auth (`services.common.auth`): with tokens configured every call but health checks needs
  `authorization: Bearer <token>` (compared in constant time), else UNAUTHENTICATED; these worker
  services take service tokens and the admin user only (PERMISSION_DENIED for other users).

`ServiceProcess` is the life cycle of one service process: gRPC server + stage workers +
Prometheus endpoint; SIGTERM/SIGINT stop it gracefully (health NOT_SERVING, workers finish their
batch, in-flight calls get `grace` seconds).
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.auth import Principal, Refusal, TokenBook, authenticate, reset_principal, set_principal
from services.common.config import DEFAULT_PORTS, Settings
from services.common.errors import STATUS_NAMES, Unavailable, error_status
from services.common.metrics import METRICS, Metrics
from services.common.tracing import metadata_with_context, server_span, setup_tracing, shutdown_tracing

__all__ = [
    "HEALTH_SERVICE",
    "run_service",
    "ServiceProcess",
    "abort_with",
    "add_health_and_reflection",
    "bind_server",
    "build_server",
    "client_channel",
]

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# Calls that never need a token: load balancers and orchestrators probe health without one.
AUTH_EXEMPT_PREFIXES = (f"/{HEALTH_SERVICE}/",)
# Client keepalive pings; the server must accept pings at least this often or it hangs up.
KEEPALIVE_MS = 60_000
# Status codes that mean "the caller asked for something wrong", logged quietly.
_CLIENT_ERRORS = {
    "CANCELLED", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "OUT_OF_RANGE", "UNAUTHENTICATED", "DEADLINE_EXCEEDED",
}  # fmt: skip


def abort_with(context: grpc.ServicerContext, code_name: str | grpc.StatusCode, message: str) -> NoReturn:
    """End the call with a status (by name, e.g. "INVALID_ARGUMENT") and a message naming the problem."""
    if isinstance(code_name, grpc.StatusCode):
        code = code_name
    elif code_name in STATUS_NAMES and code_name != "OK":
        code = grpc.StatusCode[code_name]
    else:
        raise ValueError(f"{code_name!r} is not a gRPC error status name")
    context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def transient_status(exc: BaseException) -> tuple[str, str] | None:
    """`("UNAVAILABLE", message)` for infrastructure errors that a retry may well fix; else None.

    A call that meets Redis restarting or a blob store refusing a write says so with a status that
    clients retry (the SDK retries UNAVAILABLE), not as an anonymous UNKNOWN. Stage workers do not
    use this: for them such errors are transient and the task is redelivered.
    """
    if isinstance(exc, Unavailable):
        return exc.code, exc.message
    redis = sys.modules.get("redis")  # a process without Redis cannot meet its errors
    if redis is not None and isinstance(
        exc, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError
    ):
        # the message names the error type only (never the URL, which may hold a password)
        return "UNAVAILABLE", f"the job store (Redis) is unreachable, try again later: {type(exc).__name__}"
    return None


# ---- interceptors -----------------------------------------------------------------------------

Behavior = Callable[[Any, grpc.ServicerContext], Any]


class UndecodableRequest:
    """Stands in for a request whose bytes are not a valid message.

    grpc answers INTERNAL ("Exception deserializing request!") when parsing fails; handing the
    servicer wrapper this instead lets the call end with INVALID_ARGUMENT and the reason.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, recursion limit, ...: all mean "bad bytes from the client"
            return UndecodableRequest(f"{type(exc).__name__}: {exc}"[:300])

    return deserialize


def _rebuild(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Behavior, bool], Behavior],
    *,
    tolerant_requests: bool = False,
    tolerant_streams: bool = False,
) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour wrapped; `wrap(behavior, streams_responses)`.

    `tolerant_requests`: undecodable unary requests reach the behaviour as `UndecodableRequest`;
    `tolerant_streams`: so do the undecodable messages of a request stream (the wrapper must check).
    """
    deserializer = handler.request_deserializer
    if (tolerant_requests and not handler.request_streaming) or (
        tolerant_streams and handler.request_streaming
    ):
        deserializer = _tolerant_deserializer(deserializer)
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
        ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
        ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
        ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
    )
    for attribute, factory, streams in kinds:
        behavior = getattr(handler, attribute)
        if behavior is not None:
            return factory(
                wrap(behavior, streams),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
    raise TypeError(f"unsupported RPC handler {handler!r}")


def _code_name(context: grpc.ServicerContext) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else "OK"


def record_call(metrics: Metrics, method: str, code: str, started: float) -> None:
    """Count and time a finished call by method and status; log it (quietly for caller errors)."""
    elapsed = time.perf_counter() - started
    metrics.grpc_requests.labels(method, code).inc()
    metrics.grpc_latency.labels(method, code).observe(elapsed)
    if code == "OK":
        log.debug("%s OK %.1f ms", method, elapsed * 1000)
    elif code in _CLIENT_ERRORS:
        log.info("%s %s %.1f ms", method, code, elapsed * 1000)
    else:
        log.warning("%s %s %.1f ms", method, code, elapsed * 1000)


class AuthInterceptor(grpc.ServerInterceptor):
    """Bearer tokens -> the call's principal (`services.common.auth`); health checks are exempt so
    probes work without a token. `internal`: only service tokens and the admin user may call."""

    def __init__(
        self, book: TokenBook, *, internal: bool, exempt_prefixes: Sequence[str] = AUTH_EXEMPT_PREFIXES
    ) -> None:
        self.book = book
        self.internal = internal
        self._exempt = tuple(exempt_prefixes)

    def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._exempt):
            return handler
        outcome = authenticate(self.book, handler_call_details.invocation_metadata, internal=self.internal)
        if isinstance(outcome, Refusal):
            return _rebuild(handler, lambda _behavior, _streams: _refusing(outcome))
        return _rebuild(handler, lambda behavior, streams: _as_principal(outcome, behavior, streams))


def _refusing(refusal: Refusal) -> Behavior:
    def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode[refusal.code], refusal.reason)

    # Never looks at the request: an undecodable one is refused for the token first,
    # so a caller without a token learns nothing about what the service accepts.
    refuse.ignores_request = True  # type: ignore[attr-defined]
    return refuse


def _as_principal(principal: Principal, behavior: Behavior, streams: bool) -> Behavior:
    """`behavior` run with `current_principal()` set (the behaviour runs in a pool thread)."""
    if streams:

        def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            token = set_principal(principal)
            try:
                yield from behavior(request, context)
            finally:
                reset_principal(token)

        return stream

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        token = set_principal(principal)
        try:
            return behavior(request, context)
        finally:
            reset_principal(token)

    return unary


class ObservabilityInterceptor(grpc.ServerInterceptor):
    """Request metrics and logs; typed errors from servicers become their gRPC status."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or METRICS

    def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return _rebuild(
            handler,
            lambda behavior, streams: self._observe(method, behavior, streams),
            tolerant_requests=True,
        )

    def _status_of(
        self, method: str, exc: Exception, context: grpc.ServicerContext
    ) -> tuple[str, str | None]:
        """(status name, message to abort with) for an exception out of a servicer.

        The message is None when there is nothing to add: the servicer aborted itself, or the
        error is unexpected (grpc then answers UNKNOWN).
        """
        if context.code() is not None:
            return _code_name(context), None
        status = error_status(exc) or transient_status(exc)
        if status is None:
            log.error("%s raised an unexpected error", method, exc_info=exc)
            return "UNKNOWN", None
        if status[0] == "UNAVAILABLE":
            log.warning("%s: %s", method, status[1])
        return status

    @staticmethod
    def _refuse_undecodable(
        method: str, behavior: Behavior, request: Any, context: grpc.ServicerContext
    ) -> None:
        if isinstance(request, UndecodableRequest) and not getattr(behavior, "ignores_request", False):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid {method} message: {request.reason}",
            )

    def _observe(self, method: str, behavior: Behavior, streams: bool) -> Behavior:
        if streams:

            def observed_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                started, code = time.perf_counter(), "UNKNOWN"
                try:
                    self._refuse_undecodable(method, behavior, request, context)
                    with server_span(method, context.invocation_metadata()):
                        yield from behavior(request, context)
                    code = _code_name(context)
                except GeneratorExit:
                    code = "CANCELLED"
                    raise
                except Exception as exc:
                    code, message = self._status_of(method, exc, context)
                    if message is not None:
                        context.abort(grpc.StatusCode[code], message)
                    raise
                finally:
                    record_call(self.metrics, method, code, started)

            return observed_stream

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            started, code = time.perf_counter(), "UNKNOWN"
            try:
                self._refuse_undecodable(method, behavior, request, context)
                with server_span(method, context.invocation_metadata()):
                    response = behavior(request, context)
                code = _code_name(context)
                return response
            except Exception as exc:
                code, message = self._status_of(method, exc, context)
                if message is not None:
                    context.abort(grpc.StatusCode[code], message)
                raise
            finally:
                record_call(self.metrics, method, code, started)

        return observed


# ---- server -----------------------------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    size = settings.max_message_bytes
    return [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        # fail loudly when the port is taken, instead of silently sharing it
        ("grpc.so_reuseport", 0),
        # accept the clients' keepalive pings (see client_channel)
        ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_MS // 2),
        ("grpc.keepalive_permit_without_calls", 1),
        # Clients re-resolve and rebalance only on new connections: age them out so that scaled-up
        # replicas behind a headless Service get traffic (deploy/k8s uses dns:/// + round_robin).
        ("grpc.max_connection_age_ms", 300_000),
        ("grpc.max_connection_age_grace_ms", 30_000),
    ]


def build_server(
    settings: Settings,
    *,
    max_workers: int = 16,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    metrics: Metrics | None = None,
    internal: bool = True,
) -> grpc.Server:
    """A gRPC server with size limits, metrics/logging and (when tokens are set) auth. `internal`:
    a worker service, which only service tokens and the admin user may call.

    Not bound yet: add the servicers, then `bind_server` (which applies TLS/mTLS from the
    settings) and `server.start()` -- or let `ServiceProcess` do all of that.
    """
    chain: list[grpc.ServerInterceptor] = [ObservabilityInterceptor(metrics)]
    chain.append(AuthInterceptor(TokenBook(settings.auth_tokens, settings.service_tokens), internal=internal))
    chain.extend(interceptors)
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=chain,
        options=server_options(settings),
    )


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings (mTLS when `tls_ca` is set); None for plaintext."""
    if not settings.tls_enabled:
        return None
    key = _read(settings.tls_key, "TLS private key")
    cert = _read(settings.tls_cert, "TLS certificate")
    ca = _read(settings.tls_ca, "TLS CA bundle") if settings.tls_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def bind_server(server: grpc.Server, settings: Settings, address: str) -> int:
    """Bind `address` (`host:port`; port 0 = any free one) with TLS if configured; returns the port."""
    credentials = server_credentials(settings)
    try:
        port = (
            server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        )
    except RuntimeError as exc:
        raise OSError(f"cannot bind the gRPC server to {address}: {exc}") from None
    if not port:
        raise OSError(f"cannot bind the gRPC server to {address} (in use?)")
    return port


def add_health_and_reflection(server: grpc.Server, service_names: list[str]) -> health.HealthServicer:
    """Register the standard health service (all SERVING) and reflection listing `service_names`."""
    servicer = health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="health"),
    )
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ["", *service_names]:
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*service_names, HEALTH_SERVICE, reflection.SERVICE_NAME], server)
    return servicer


# ---- client -----------------------------------------------------------------------------------


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ["method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"]
    ),
    grpc.ClientCallDetails,
):
    pass


class _BearerTokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the trace context and, on plaintext channels (which cannot carry call credentials),
    `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str | None) -> None:
        self._header = ("authorization", f"Bearer {token}") if token else None

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        headers: tuple[tuple[str, str], ...] = (self._header,) if self._header else ()
        return _CallDetails(
            details.method,
            details.timeout,
            list(metadata_with_context((*(details.metadata or ()), *headers))),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._with_token(details), request_iterator)


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials:
    """TLS credentials of a client: the CA bundle, and this process's certificate for mTLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls_ca, "TLS CA bundle") if settings.tls_ca else None,
        private_key=_read(settings.tls_key, "TLS private key") if settings.tls_enabled else None,
        certificate_chain=_read(settings.tls_cert, "TLS certificate") if settings.tls_enabled else None,
    )


def client_channel(addr: str, settings: Settings, *, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel to another service: TLS when `tls_ca`/`tls_cert` are set, the first service token, limits."""
    size = settings.max_message_bytes
    channel_options = [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", 20_000),
        # spread calls over every address a (headless) Service name resolves to
        ("grpc.lb_policy_name", "round_robin"),
        *options,
    ]
    token = settings.service_tokens[0] if settings.service_tokens else None
    if settings.tls_ca or settings.tls_enabled:
        credentials = channel_credentials(settings)
        if token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token)
            )
        return grpc.intercept_channel(
            grpc.secure_channel(addr, credentials, options=channel_options), _BearerTokenInterceptor(None)
        )
    channel = grpc.insecure_channel(addr, options=channel_options)
    return grpc.intercept_channel(channel, _BearerTokenInterceptor(token))


# ---- the process ------------------------------------------------------------------------------


class ServiceProcess:
    """One service process: gRPC server, stage workers, health, metrics endpoint, graceful stop.

    Typical use::

        process = ServiceProcess("generator", settings)
        generator_pb2_grpc.add_GeneratorServicer_to_server(servicer, process.server)
        process.add_worker("synthesize", handle_synthesize)
        process.serve_forever(["sfhq.v1.Generator"])
    """

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        service_names: Sequence[str] = (),
        max_workers: int = 16,
        interceptors: Sequence[grpc.ServerInterceptor] = (),
        grace_s: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.metrics = metrics or METRICS
        self.grace_s = grace_s
        self.server = build_server(
            settings, max_workers=max_workers, interceptors=interceptors, metrics=self.metrics
        )
        self.workers: list[Any] = []  # StageWorker; typed loosely so gRPC-only processes skip Redis imports
        self.health: health.HealthServicer | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.servicer: Any = None  # the first servicer added (tests and tools reach it here)
        self._service_names = list(service_names)
        self._on_stop: list[Callable[[], Any]] = []
        self._queue: Any = None
        self._store_pool: futures.ThreadPoolExecutor | None = None
        self._metrics_server: Any = None
        self._started = False
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def queue(self) -> Any:
        """The process's RedisQueue (created on first use from `settings.redis_url`)."""
        if self._queue is None:
            from services.common.queue import RedisQueue, connect_redis

            if not self.settings.redis_url:
                raise RuntimeError(f"{self.name}: stage workers need Redis; set REDIS_URL")
            client = connect_redis(self.settings.redis_url, client_name=f"{self.name}-{os.getpid()}")
            self._queue = RedisQueue.from_settings(self.settings, client)
        return self._queue

    @property
    def store_pool(self) -> futures.ThreadPoolExecutor | None:
        """The threads that run stage handlers' `store` calls (`store_threads`; None when 0): with
        it, a worker encodes and writes batch k while its model runs batch k+1."""
        if self._store_pool is None and self.settings.store_threads > 0:
            self._store_pool = futures.ThreadPoolExecutor(
                self.settings.store_threads, thread_name_prefix=f"{self.name}-store"
            )
        return self._store_pool

    def add_servicer(
        self, servicer: Any, add_to_server: Callable[[Any, grpc.Server], None], pb2: Any
    ) -> None:
        """Serve `servicer` (`add_to_server` is the generated `add_XServicer_to_server`); the
        service defined in the generated module `pb2` is listed in health and reflection."""
        add_to_server(servicer, self.server)
        for service in pb2.DESCRIPTOR.services_by_name.values():
            self.add_service_name(service.full_name)
        if self.servicer is None:
            self.servicer = servicer

    def add_service_name(self, service_name: str) -> None:
        """A full gRPC service name (`sfhq.v1.Generator`) for health and reflection."""
        self._service_names.append(service_name)

    def on_stop(self, callback: Callable[[], Any]) -> None:
        """Run `callback` during stop, after the workers stopped and before the server is gone."""
        self._on_stop.append(callback)

    def add_worker(
        self,
        stage: str,
        handler: Callable[[list[Any]], list[Any]],
        *,
        batch_size: int | None = None,
        consumer: str | None = None,
    ) -> Any:
        """Consume `stage` with `handler`, unless the `stages` setting leaves this stage out (then None)."""
        from services.common.worker import StageWorker, default_consumer_name

        if self.settings.stages is not None and stage not in self.settings.stages:
            log.info(
                "%s: not consuming stage %s (SFHQ_STAGES=%s)",
                self.name,
                stage,
                ",".join(self.settings.stages),
            )
            return None
        worker = StageWorker(
            self.queue,
            stage,
            handler,
            consumer=consumer or f"{default_consumer_name(self.name)}-{stage}",
            batch_size=batch_size or self.settings.batch_size,
            block_ms=self.settings.batch_wait_ms,
            metrics=self.metrics,
            max_lease_s=self.settings.max_lease_s or None,
        )
        self.workers.append(worker)
        if self._started:
            worker.start()
        return worker

    def start(self, service_names: Sequence[str] | None = None) -> int:
        """Bind and start everything; returns the gRPC port."""
        if self._started:
            return self.port or 0
        for service_name in service_names or ():
            self.add_service_name(service_name)
        if self.settings.metrics_port:
            from prometheus_client import start_http_server

            self._metrics_server, _ = start_http_server(
                self.settings.metrics_port, addr=self.settings.metrics_host, registry=self.metrics.registry
            )
            self.metrics_port = self._metrics_server.server_port
        self.health = add_health_and_reflection(self.server, self._service_names)
        # Services have a default port; any other name (tests, tools) takes `port` or a free one.
        port = self.settings.port_for(self.name) if self.name in DEFAULT_PORTS else (self.settings.port or 0)
        address = f"{self.settings.host}:{port}"
        self.port = bind_server(self.server, self.settings, address)
        self.server.start()
        if self.workers:
            self.queue.ensure_groups()
        for worker in self.workers:
            worker.start()
        self._started = True
        log.info(
            "%s serving on %s:%d (%d workers: %s)",
            self.name, self.settings.host, self.port, len(self.workers), ", ".join(w.stage for w in self.workers),
        )  # fmt: skip
        return self.port

    def serve_forever(self, service_names: Sequence[str] | None = None) -> None:
        """Start, then block until SIGTERM/SIGINT (or `stop()`), then stop gracefully."""
        self.start(service_names)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._on_signal)
        while not self._stop_requested.wait(0.5):
            pass
        self.stop()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop_requested.is_set():
            log.warning("%s: second %s, exiting now", self.name, signal.Signals(signum).name)
            os._exit(1)
        log.info("%s: %s received, stopping", self.name, signal.Signals(signum).name)
        self._stop_requested.set()

    def request_stop(self) -> None:
        """Ask `serve_forever` to stop (safe from any thread)."""
        self._stop_requested.set()

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, finish worker batches and in-flight calls."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            grace = self.grace_s if grace is None else grace
            self._stop_requested.set()
            if self.health is not None:
                self.health.enter_graceful_shutdown()  # probes see NOT_SERVING at once
            server_done = self.server.stop(grace) if self._started else None
            for worker in self.workers:
                worker.request_stop()
            for worker in self.workers:
                if not worker.stop(grace):
                    log.warning(
                        "%s: worker %s still busy after %.0f s; its tasks will be redelivered",
                        self.name,
                        worker.stage,
                        grace,
                    )
            for callback in self._on_stop:
                try:
                    callback()
                except Exception:
                    log.exception("%s: stop callback %r failed", self.name, callback)
            if self._store_pool is not None:
                self._store_pool.shutdown(wait=True)
            if server_done is not None:
                server_done.wait(grace + 1)
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()
            self._stopped.set()
            log.info("%s stopped", self.name)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the process has stopped; True if it did."""
        return self._stopped.wait(timeout)


def serve_together(processes: Sequence[ServiceProcess]) -> None:
    """Start several services in this one process, block until SIGTERM/SIGINT, stop them all.

    This is how one GPU serves several models (e4e, CLIP and BiSeNet need a fraction of one GPU
    each): one CUDA context, one memory pool, each service on its own port with its own workers.
    """
    stop = threading.Event()
    started: list[ServiceProcess] = []
    try:
        for process in processes:
            process.start()
            started.append(process)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: stop.set())
        while not stop.wait(0.5) and not any(p._stop_requested.is_set() for p in started):
            pass
    finally:
        for process in reversed(started):
            process.stop()


def run_services(
    builds: Sequence[Callable[[Settings], ServiceProcess]], settings: Settings | None = None
) -> None:
    """`run_service` for several services in one process (`sfhq serve encoder,search,annotator`).

    Each binds its own default port (so `port` must be unset) and the first one serves the
    shared metrics endpoint.
    """
    from services.common.config import ConfigError, get_settings

    settings = settings or get_settings()
    if len(builds) > 1 and settings.port is not None:
        raise ConfigError("several services in one process each use their default port: unset SFHQ_PORT")
    settings.configure_logging()
    processes = [
        build(settings if i == 0 else settings.model_copy(update={"metrics_port": 0}))
        for i, build in enumerate(builds)
    ]
    serve_together(processes)


def run_service(build: Callable[[Settings], ServiceProcess], settings: Settings | None = None) -> None:
    """Every service's `main`: settings from the environment, logging, build, serve until SIGTERM."""
    from services.common.config import get_settings

    settings = settings or get_settings()
    settings.configure_logging()
    process = build(settings)
    setup_tracing(process.name)
    try:
        process.serve_forever()
    finally:
        shutdown_tracing()
