"""The generator's errors (each carries its gRPC status: services.common.errors)."""

from __future__ import annotations

from services.common.errors import FailedPrecondition, InvalidInput, ServiceError

WEIGHTS_HINT = (
    "run `sfhq weights download stylegan2-ffhq-config-f` (or `sfhq weights add <name> <path>` "
    "to register a local file)"
)


class GeneratorError(ServiceError):
    """Base class of the generator's own errors."""


class CheckpointNotFoundError(GeneratorError, FailedPrecondition, FileNotFoundError):
    """The checkpoint file does not exist; the message says which `sfhq weights` command fetches it."""


class CheckpointFormatError(GeneratorError, FailedPrecondition, ValueError):
    """The file is not a StyleGAN2 checkpoint in a layout we know."""


class CheckpointLayoutError(CheckpointFormatError):
    """Strict loading failed: a missing or unexpected key, or a wrong shape (named in the message)."""


class InvalidLatentError(GeneratorError, InvalidInput):
    """Bad input to mapping/synthesis: wrong shape, non-finite values, unknown noise mode, bad psi."""
