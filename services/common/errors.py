"""Typed errors and their gRPC status names, shared by stage workers and gRPC servicers.

A stage handler or a servicer raises a typed exception naming the problem; ``error_status`` turns
it into ``(status name, message)``: the worker publishes a failed result with it (no retry), the
gRPC interceptor aborts the call with it. Anything not listed here is an unexpected (transient or
internal) error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# grpc.StatusCode names, spelled out so that this module does not need grpc.
STATUS_NAMES: frozenset[str] = frozenset(
    {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)  # fmt: skip


class PermanentError(Exception):
    """A failure that retrying cannot fix (bad input, missing checkpoint...).

    ``code`` is a gRPC status name (default ``INVALID_ARGUMENT``). Both spellings work:
    ``PermanentError("no face found")``, ``PermanentError("no face found", code="NOT_FOUND")`` and,
    as in docs/architecture.md, ``PermanentError("NOT_FOUND", "no face found")``.
    """

    def __init__(self, *args: str, code: str | None = None) -> None:
        if len(args) == 1:
            message = args[0]
        elif len(args) == 2 and code is None and args[0] in STATUS_NAMES:
            code, message = args
        elif len(args) == 2 and code is None and args[1] in STATUS_NAMES:
            message, code = args
        else:
            raise TypeError("PermanentError(message, code=...) or PermanentError(code, message)")
        code = code or "INVALID_ARGUMENT"
        if code not in STATUS_NAMES or code == "OK":
            raise ValueError(f"{code!r} is not a gRPC error status name")
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # keeps the exception picklable (multiprocessing) despite the keyword-only code
        return (_rebuild_permanent_error, (self.message, self.code))


def _rebuild_permanent_error(message: str, code: str) -> PermanentError:
    return PermanentError(message, code=code)


def error_status(exc: BaseException) -> tuple[str, str] | None:
    """``(gRPC status name, message)`` for the errors that mean "the request cannot succeed"; else None."""
    # Imported here: each module is light on its own, and this keeps import cycles impossible.
    from services.common.blobs import BlobError, BlobKeyError, BlobNotFound
    from services.common.images import ImageError
    from services.common.weights import WeightsError, WeightsMissing

    if isinstance(exc, PermanentError):
        return exc.code, exc.message
    if isinstance(exc, ImageError | BlobKeyError):
        return "INVALID_ARGUMENT", str(exc)
    if isinstance(exc, BlobNotFound):
        return "NOT_FOUND", str(exc)
    if isinstance(exc, WeightsMissing | WeightsError):
        return "FAILED_PRECONDITION", str(exc)
    if isinstance(exc, BlobError):
        return None  # a write failure (disk full...) may well pass: let it be retried
    try:
        from services.common.queue import QueueFull
    except ImportError:  # redis not installed: a light process cannot raise QueueFull anyway
        return None
    if isinstance(exc, QueueFull):
        return "RESOURCE_EXHAUSTED", str(exc)
    return None


def transient_status(exc: BaseException) -> tuple[str, str] | None:
    """``("UNAVAILABLE", message)`` for infrastructure errors that a retry may well fix; else None.

    A gRPC call that meets Redis restarting or a blob store refusing a write must say so with a
    status clients retry (the SDK retries UNAVAILABLE), not as an anonymous UNKNOWN. Stage workers
    do not use this: for them such errors are transient and the task is redelivered.
    """
    from services.common.blobs import BlobWriteError

    if isinstance(exc, BlobWriteError):
        return "UNAVAILABLE", f"the blob store could not store data, try again later: {exc}"
    try:
        import redis
    except ImportError:  # the light client has no Redis and cannot meet its errors
        return None
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError):
        # the message names host:port only (never the URL, which may hold a password)
        return "UNAVAILABLE", f"the job store (Redis) is unreachable, try again later: {type(exc).__name__}"
    return None


StatusOf = Callable[[BaseException], "tuple[str, str] | None"]


@contextmanager
def as_permanent(status_of: StatusOf, what: str = "") -> Iterator[None]:
    """Re-raise the errors that ``status_of`` maps to a status as PermanentError (which the shared
    interceptor and workers turn into that status); anything unexpected passes through unchanged.
    ``what`` (e.g. "image 3") prefixes the message so a batch call names the bad input."""
    try:
        yield
    except PermanentError as error:
        if what and not error.message.startswith(what):
            raise PermanentError(f"{what}: {error.message}", code=error.code) from error
        raise
    except Exception as error:
        status = status_of(error)
        if status is None:
            raise
        message = f"{what}: {status[1]}" if what else status[1]
        raise PermanentError(message, code=status[0]) from error
