"""A service process started for a test, and the settings such tests use.

`settings_for(tmp_path, ...)`: settings with temporary blobs and weights, the CPU, a free port and
no queue workers (`stages="none"`: gRPC only, no Redis needed) unless the test says otherwise.
`ServedProcess(process, Stub)`: starts a built `ServiceProcess` and holds a stub to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from services.common.config import Settings, get_settings
from services.common.server import ServiceProcess


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "blob_url": str(tmp_path / "blobs"),
        "weights_dir": tmp_path / "weights",
        "device": "cpu",
        "port": 0,
        "stages": "none",
        **overrides,
    }
    return get_settings(**values)


class ServedProcess:
    """A started service process (gRPC on loopback) with a stub; `close()` stops both."""

    def __init__(self, process: ServiceProcess, stub_class: Any, *, grace_s: float = 0.0) -> None:
        self.process = process
        self.servicer = process.servicer
        port = process.start()
        self.address = f"127.0.0.1:{port}"
        self.channel = grpc.insecure_channel(self.address)
        self.stub = stub_class(self.channel)
        self.grace_s = grace_s

    def close(self) -> None:
        self.channel.close()
        self.process.stop(grace=self.grace_s)

    def __enter__(self) -> ServedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
