"""The asyncio flavour of `services.common.server`, for processes whose calls wait more than they
compute: the gateway (thousands of `WatchJob` streams must not each hold a thread).

`AsyncServiceProcess` serves a `grpc.aio` server with the same behaviour as `ServiceProcess`:
message limits, TLS, health (NOT_SERVING at shutdown), reflection, Prometheus metrics on their own
address, and two interceptors that mirror the threaded ones -- observability (metrics, logs, and a
typed error raised by a servicer becomes its status) and auth (bearer token -> the call's principal,
`services.common.auth`). A servicer's methods are coroutines, and streams are async generators (or
coroutines that call `context.write`, like the standard health servicer).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.auth import Refusal, TokenBook, authenticate, reset_principal, set_principal
from services.common.config import Settings
from services.common.errors import InvalidInput, error_status
from services.common.metrics import METRICS, Metrics
from services.common.server import (
    AUTH_EXEMPT_PREFIXES,
    HEALTH_SERVICE,
    KEEPALIVE_MS,
    UndecodableRequest,
    _rebuild,
    channel_credentials,
    record_call,
    server_credentials,
    server_options,
    transient_status,
)
from services.common.tracing import server_span, setup_tracing, shutdown_tracing

log = logging.getLogger(__name__)

AsyncBehavior = Callable[[Any, grpc.aio.ServicerContext], Any]


def _code_name(context: grpc.aio.ServicerContext) -> str | None:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else None


def _status_for(method: str, exc: BaseException) -> tuple[str, str] | None:
    status = error_status(exc) or transient_status(exc)
    if status is None:
        log.error("%s raised an unexpected error", method, exc_info=exc)
    elif status[0] == "UNAVAILABLE":
        log.warning("%s: %s", method, status[1])
    return status


async def _decodable_messages(messages: AsyncIterator[Any], method: str) -> AsyncIterator[Any]:
    number = 0
    async for message in messages:
        if isinstance(message, UndecodableRequest):
            raise InvalidInput(
                f"message {number} of the stream is not a valid {method} message: {message.reason}"
            )
        number += 1
        yield message


class AsyncObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Request metrics and logs; typed errors from servicers become their gRPC status."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or METRICS

    async def intercept_service(
        self, continuation: Any, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return _rebuild(
            handler,
            lambda behavior, streams: self._observe(method, behavior, streams),
            tolerant_requests=True,
            tolerant_streams=True,
        )

    def _observe(self, method: str, behavior: AsyncBehavior, streams: bool) -> AsyncBehavior:
        async def refuse_undecodable(request: Any, context: grpc.aio.ServicerContext) -> None:
            if isinstance(request, UndecodableRequest) and not getattr(behavior, "ignores_request", False):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the request is not a valid {method} message: {request.reason}",
                )

        async def fail(exc: BaseException, context: grpc.aio.ServicerContext) -> str:
            status = _status_for(method, exc)
            if status is None:
                return "UNKNOWN"
            await context.abort(grpc.StatusCode[status[0]], status[1])
            return status[0]  # not reached: abort raises

        if streams and inspect.isasyncgenfunction(behavior):

            async def observed_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started, code = time.perf_counter(), "UNKNOWN"
                try:
                    await refuse_undecodable(request, context)
                    with server_span(method, context.invocation_metadata()):
                        async for response in behavior(request, context):
                            yield response
                    code = _code_name(context) or "OK"
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                except grpc.aio.AbortError:
                    code = _code_name(context) or "UNKNOWN"
                    raise
                except Exception as exc:
                    code = await fail(exc, context)
                    raise
                finally:
                    record_call(self.metrics, method, code, started)

            return observed_stream

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, code = time.perf_counter(), "UNKNOWN"
            try:
                await refuse_undecodable(request, context)
                if hasattr(request, "__aiter__"):  # a client stream: each message is checked as it comes
                    request = _decodable_messages(request, method)
                with server_span(method, context.invocation_metadata()):
                    response = await behavior(request, context)
                code = _code_name(context) or "OK"
                return response
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except grpc.aio.AbortError:
                code = _code_name(context) or "UNKNOWN"
                raise
            except Exception as exc:
                code = await fail(exc, context)
                raise
            finally:
                record_call(self.metrics, method, code, started)

        return observed


class AsyncAuthInterceptor(grpc.aio.ServerInterceptor):
    """Bearer token -> the call's principal; health checks are exempt."""

    def __init__(self, book: TokenBook, *, internal: bool) -> None:
        self.book = book
        self.internal = internal

    async def intercept_service(
        self, continuation: Any, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(AUTH_EXEMPT_PREFIXES):
            return handler
        outcome = authenticate(self.book, handler_call_details.invocation_metadata, internal=self.internal)
        if isinstance(outcome, Refusal):

            async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> Any:
                await context.abort(grpc.StatusCode[outcome.code], outcome.reason)

            refuse.ignores_request = True  # type: ignore[attr-defined]
            return _rebuild(handler, lambda _behavior, _streams: refuse)

        def with_principal(behavior: AsyncBehavior, streams: bool) -> AsyncBehavior:
            if streams and inspect.isasyncgenfunction(behavior):

                async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    token = set_principal(outcome)
                    try:
                        async for response in behavior(request, context):
                            yield response
                    finally:
                        reset_principal(token)

                return stream

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                token = set_principal(outcome)
                try:
                    return await behavior(request, context)
                finally:
                    reset_principal(token)

            return unary

        return _rebuild(handler, with_principal)


class AsyncServiceProcess:
    """One asyncio service process: gRPC server, health, reflection, metrics, graceful stop."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        *,
        internal: bool = False,
        grace_s: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.grace_s = grace_s
        self.metrics = metrics or METRICS
        book = TokenBook(settings.auth_tokens, settings.service_tokens)
        self.server = grpc.aio.server(
            interceptors=[
                AsyncObservabilityInterceptor(self.metrics),
                AsyncAuthInterceptor(book, internal=internal),
            ],
            options=server_options(settings),
        )
        self.servicer: Any = None
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self._service_names: list[str] = []
        self._on_stop: list[Callable[[], Awaitable[Any] | Any]] = []
        self._metrics_server: Any = None
        self._stop = asyncio.Event()

    def add_servicer(self, servicer: Any, add_to_server: Callable[[Any, Any], None], pb2: Any) -> None:
        add_to_server(servicer, self.server)
        self._service_names += [service.full_name for service in pb2.DESCRIPTOR.services_by_name.values()]
        if self.servicer is None:
            self.servicer = servicer

    def on_stop(self, callback: Callable[[], Awaitable[Any] | Any]) -> None:
        """Run `callback` (sync or async) during stop, before the server is gone."""
        self._on_stop.append(callback)

    async def start(self) -> int:
        setup_tracing(self.name)
        if self.settings.metrics_port:
            from prometheus_client import start_http_server

            self._metrics_server, _ = start_http_server(
                self.settings.metrics_port, addr=self.settings.metrics_host, registry=self.metrics.registry
            )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        for name in ["", *self._service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection(
            [*self._service_names, HEALTH_SERVICE, reflection.SERVICE_NAME], self.server
        )
        address = f"{self.settings.host}:{self.settings.port_for(self.name)}"
        credentials = server_credentials(self.settings)
        port = (
            self.server.add_secure_port(address, credentials)
            if credentials
            else self.server.add_insecure_port(address)
        )
        if not port:
            raise OSError(f"cannot bind the gRPC server to {address} (in use?)")
        self.port = port
        await self.server.start()
        log.info("%s serving on %s:%d (asyncio)", self.name, self.settings.host, port)
        return port

    def request_stop(self) -> None:
        self._stop.set()

    async def serve_forever(self) -> None:
        """Start, then serve until SIGTERM/SIGINT (or `request_stop()`), then stop gracefully."""
        await self.start()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        await self._stop.wait()
        await self.stop()

    async def stop(self, grace: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()  # probes see NOT_SERVING at once
        for callback in self._on_stop:
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("%s: stop callback %r failed", self.name, callback)
        await self.server.stop(self.grace_s if grace is None else grace)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        shutdown_tracing()
        log.info("%s stopped", self.name)


def aio_client_channel(addr: str, settings: Settings) -> tuple[grpc.aio.Channel, tuple[tuple[str, str], ...]]:
    """An asyncio channel to another service and the metadata its calls carry (the first service
    token; over TLS it travels as call credentials instead). TLS as `client_channel`."""
    size = settings.max_message_bytes
    options = [
        ("grpc.max_send_message_length", size),
        ("grpc.max_receive_message_length", size),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.lb_policy_name", "round_robin"),
    ]
    token = settings.service_tokens[0] if settings.service_tokens else None
    if settings.tls_ca or settings.tls_enabled:
        credentials = channel_credentials(settings)
        if token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token)
            )
        return grpc.aio.secure_channel(addr, credentials, options=options), ()
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return grpc.aio.insecure_channel(addr, options=options), metadata
