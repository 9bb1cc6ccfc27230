"""Errors carry their own status: the bases, every typed error of the code base, `naming`."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

from services.common.blobs import BlobKeyError, BlobNotFound, BlobWriteError
from services.common.errors import (
    FailedPrecondition,
    InvalidInput,
    NotFound,
    PermanentError,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    error_status,
    naming,
)
from services.common.images import ImageError
from services.common.queue import QueueFull
from services.common.server import transient_status
from services.common.weights import WeightsMissing

ROOT = Path(__file__).resolve().parents[2]


def test_each_base_names_its_status_and_a_code_can_be_given():
    assert [cls("x").code for cls in (InvalidInput, NotFound, FailedPrecondition, ResourceExhausted)] == [
        "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED",
    ]  # fmt: skip
    assert PermanentError("bad seed").code == "INVALID_ARGUMENT"
    assert PermanentError("no answer", code="DEADLINE_EXCEEDED").code == "DEADLINE_EXCEEDED"
    assert str(FailedPrecondition("no weights")) == "no weights"
    with pytest.raises(ValueError, match="not a gRPC error status"):
        PermanentError("x", code="WRONG")
    with pytest.raises(ValueError):
        PermanentError("x", code="OK")
    again = pickle.loads(pickle.dumps(NotFound("x", code="OUT_OF_RANGE")))
    assert (type(again), again.code, again.message) == (NotFound, "OUT_OF_RANGE", "x")
    missing = pickle.loads(pickle.dumps(WeightsMissing("fan-2d", Path("/w/x"))))
    assert isinstance(missing, WeightsMissing) and "sfhq weights download fan-2d" in str(missing)


def test_typed_errors_of_common_have_their_status():
    assert error_status(ImageError("image data is empty")) == ("INVALID_ARGUMENT", "image data is empty")
    assert error_status(BlobKeyError("bad key"))[0] == "INVALID_ARGUMENT"
    assert error_status(BlobNotFound("no blob"))[0] == "NOT_FOUND"
    assert error_status(WeightsMissing("fan-2d", Path("/w/x")))[0] == "FAILED_PRECONDITION"
    assert error_status(QueueFull("align", 5, 5, 1.0))[0] == "RESOURCE_EXHAUSTED"
    # transient or unexpected: no permanent status, so workers retry and servers answer UNAVAILABLE / UNKNOWN
    full_disk = BlobWriteError("k", OSError(28, "No space left on device"))
    assert error_status(full_disk) is None and transient_status(full_disk)[0] == "UNAVAILABLE"
    assert isinstance(full_disk, OSError) and isinstance(BlobNotFound("x"), FileNotFoundError)
    assert error_status(RuntimeError("bug")) is None
    assert error_status(ValueError("plain value error")) is None


def test_too_few_labels_is_a_precondition_not_a_bad_argument():
    from services.search.taste import TasteInputError, TooFewLabels

    assert (
        error_status(TooFewLabels("training needs at least 10 positive labels"))[0] == "FAILED_PRECONDITION"
    )
    assert error_status(TasteInputError("features contain NaN"))[0] == "INVALID_ARGUMENT"


def test_every_error_class_of_the_code_base_derives_from_a_status_base():
    """An exception class in services/ or gateway/ either carries a status (derives from ServiceError)
    or is listed here as deliberately transient or internal."""
    transient_or_internal = {"LockUnavailable", "HandlerContractError", "MalformedEntry"}
    classes = []
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("gateway/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(
                ("Error", "Missing", "NotFound", "Found", "Full")
            ):
                classes.append((path, node.name))
    assert len(classes) > 30
    import importlib

    untyped = []
    for path, name in classes:
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        cls = getattr(module, name)
        if (
            issubclass(cls, BaseException)
            and not issubclass(cls, ServiceError)
            and name not in transient_or_internal
        ):
            untyped.append(f"{path.relative_to(ROOT)}:{name}")
    assert not untyped, f"errors without a status base: {untyped}"
    assert issubclass(BlobWriteError, Unavailable)


def test_naming_prefixes_the_input_and_keeps_the_status():
    with pytest.raises(PermanentError) as caught, naming("image 2"):
        raise NotFound("no blob 'x'")
    assert (caught.value.code, caught.value.message) == ("NOT_FOUND", "image 2: no blob 'x'")
    with pytest.raises(PermanentError) as caught, naming("image 1"):
        raise InvalidInput("image 1: already named")
    assert caught.value.message == "image 1: already named"
    with pytest.raises(RuntimeError), naming("image 3"):
        raise RuntimeError("unexpected errors pass through")
