"""PermanentError spellings and the typed-error -> gRPC status table."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from services.common.blobs import BlobKeyError, BlobNotFound, BlobWriteError
from services.common.errors import PermanentError, error_status
from services.common.images import ImageError
from services.common.queue import QueueFull
from services.common.weights import WeightsMissing


def test_permanent_error_spellings():
    assert (PermanentError("bad seed").code, PermanentError("bad seed").message) == (
        "INVALID_ARGUMENT",
        "bad seed",
    )
    assert PermanentError("no face", code="NOT_FOUND").code == "NOT_FOUND"
    assert (PermanentError("NOT_FOUND", "no face").code, PermanentError("NOT_FOUND", "no face").message) == (
        "NOT_FOUND",
        "no face",
    )
    assert PermanentError("no face", "NOT_FOUND").code == "NOT_FOUND"
    assert str(PermanentError("FAILED_PRECONDITION", "no weights")) == "no weights"
    with pytest.raises(ValueError, match="not a gRPC error status"):
        PermanentError("x", code="WRONG")
    with pytest.raises(ValueError):
        PermanentError("x", code="OK")
    with pytest.raises(TypeError):
        PermanentError("two", "plain strings")
    again = pickle.loads(pickle.dumps(PermanentError("x", code="OUT_OF_RANGE")))
    assert (again.code, again.message) == ("OUT_OF_RANGE", "x")


def test_error_status_table():
    assert error_status(PermanentError("ALREADY_EXISTS", "dup")) == ("ALREADY_EXISTS", "dup")
    assert error_status(ImageError("image data is empty")) == ("INVALID_ARGUMENT", "image data is empty")
    assert error_status(BlobKeyError("bad key"))[0] == "INVALID_ARGUMENT"
    assert error_status(BlobNotFound("no blob"))[0] == "NOT_FOUND"
    assert error_status(WeightsMissing("fan-2d", Path("/w/x")))[0] == "FAILED_PRECONDITION"
    assert error_status(QueueFull("align", 5, 5, 1.0))[0] == "RESOURCE_EXHAUSTED"
    # transient or unexpected: no status, so workers retry and servers answer UNKNOWN
    assert error_status(BlobWriteError("k", OSError(28, "No space left on device"))) is None
    assert error_status(RuntimeError("bug")) is None
    assert error_status(ValueError("plain value error")) is None


def test_as_permanent_maps_known_errors_names_the_input_and_passes_others_through():
    import pytest

    from services.common.errors import PermanentError, as_permanent

    def status_of(error):
        return ("INVALID_ARGUMENT", str(error)) if isinstance(error, KeyError) else None

    with pytest.raises(PermanentError) as caught, as_permanent(status_of, "image 2"):
        raise KeyError("bad")
    assert caught.value.code == "INVALID_ARGUMENT" and caught.value.message.startswith("image 2: ")
    with pytest.raises(PermanentError) as caught, as_permanent(status_of, "image 1"):
        raise PermanentError("no face found", code="INVALID_ARGUMENT")
    assert caught.value.message == "image 1: no face found"
    with pytest.raises(RuntimeError), as_permanent(status_of):
        raise RuntimeError("unexpected")
