"""Errors that carry their own gRPC status.

Every module raises a subclass of one of the bases below; the class says what went wrong for the
caller, so no service keeps a table from exception types to statuses and no status is chosen by
matching message text:

| base | status | meaning |
| --- | --- | --- |
| `InvalidInput` | INVALID_ARGUMENT | the request or payload is wrong; the message names the field or file |
| `NotFound` | NOT_FOUND | an id or key that does not exist |
| `FailedPrecondition` | FAILED_PRECONDITION | the system is not ready for it (missing or bad checkpoint, too few labels) |
| `ResourceExhausted` | RESOURCE_EXHAUSTED | a bounded resource is full (a stage's queue) |
| `PermissionDenied` | PERMISSION_DENIED | the caller is known but may not do this |
| `DataLoss` | DATA_LOSS | state that existed is gone |
| `Unavailable` | UNAVAILABLE | infrastructure that a retry may well fix (a blob store refusing a write) |

All but `Unavailable` are `PermanentError`s: a stage worker publishes a failed result for the task and
never retries it. `Unavailable` is transient: a worker leaves the task to be redelivered, a gRPC
call answers UNAVAILABLE (which the SDK retries). Anything else is unexpected: a worker retries it
and dead-letters it after `max_deliveries`; a gRPC call answers UNKNOWN.

This module needs neither grpc nor torch: model files raise these errors too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

# grpc.StatusCode names, spelled out so that this module does not need grpc.
STATUS_NAMES: frozenset[str] = frozenset(
    {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)  # fmt: skip


def check_status_name(code: str) -> str:
    """`code` if it is a gRPC error status name (not OK), else ValueError."""
    if code not in STATUS_NAMES or code == "OK":
        raise ValueError(f"{code!r} is not a gRPC error status name")
    return code


class ServiceError(Exception):
    """An error whose class (or `code`) names its gRPC status."""

    default_code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = check_status_name(code or self.default_code)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # picklable (multiprocessing) whatever a subclass's constructor looks like
        return (_rebuild, (type(self), self.message, self.code))


def _rebuild(cls: type[ServiceError], message: str, code: str) -> ServiceError:
    error = cls.__new__(cls)
    ServiceError.__init__(error, message, code=code)
    return error


class PermanentError(ServiceError):
    """Retrying cannot fix it. Raised as is, it means INVALID_ARGUMENT unless `code` says otherwise."""

    default_code = "INVALID_ARGUMENT"


class InvalidInput(PermanentError, ValueError):
    """A bad request, payload, file or value; the message names it."""

    default_code = "INVALID_ARGUMENT"


class NotFound(PermanentError, LookupError):
    """An id, name or key that does not exist."""

    default_code = "NOT_FOUND"


class FailedPrecondition(PermanentError):
    """The system is not in a state to do it: a missing or unusable checkpoint, too few labels..."""

    default_code = "FAILED_PRECONDITION"


class ResourceExhausted(PermanentError):
    """A bounded resource is full; try again later or ask for less."""

    default_code = "RESOURCE_EXHAUSTED"


class PermissionDenied(PermanentError):
    """The caller is known but may not do this (a user token on an internal service)."""

    default_code = "PERMISSION_DENIED"


class DataLoss(PermanentError):
    """State that existed is gone (Redis restarted without persistence, files deleted)."""

    default_code = "DATA_LOSS"


class Unavailable(ServiceError):
    """Infrastructure that a retry may well fix (storage, the job store)."""

    default_code = "UNAVAILABLE"


def error_status(exc: BaseException) -> tuple[str, str] | None:
    """`(status name, message)` for an error that retrying cannot fix; None for any other."""
    if isinstance(exc, PermanentError):
        return exc.code, exc.message
    return None


@contextmanager
def naming(what: str) -> Iterator[None]:
    """Prefix the message of a PermanentError raised inside with `what` ("image 3: ..."), keeping
    its status, so that a batch call says which input was bad."""
    try:
        yield
    except PermanentError as error:
        if not what or error.message.startswith(what):
            raise
        raise PermanentError(f"{what}: {error.message}", code=error.code) from error
