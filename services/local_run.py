"""The suite's processes on one machine: what `sfhq up` and `sfhq run` start, and the tests.

`LocalCluster` starts the four services and the gateway as subprocesses on loopback ports,
sharing one Redis, blob store and weights folder: the same processes and protocols as a
deployment, just local (also used by the end-to-end and fault tests).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import DEFAULT_PORTS

SERVICE_ORDER = ("annotator", "encoder", "generator", "search", "gateway")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(addr: str, deadline: float, process: subprocess.Popen) -> None:
    """Polls the standard gRPC health check until SERVING; raises if the process dies first."""
    channel = grpc.insecure_channel(addr)
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"exited with code {process.returncode}")
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"not healthy at {addr} in time")
    finally:
        channel.close()


class LocalCluster:
    """The five service processes on free loopback ports, sharing one Redis, blob store and weights.

    Used by `sfhq run`, the end-to-end tests and the fault tests (which kill and restart members).
    """

    def __init__(
        self,
        workdir: Path,
        redis_url: str,
        weights_dir: Path,
        *,
        blob_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        services: tuple[str, ...] = SERVICE_ORDER,
        data_roots: tuple[Path, ...] = (),
        ports: dict[str, int] | None = None,
    ) -> None:
        self.workdir = workdir
        self.services = services
        self.ports = dict(ports) if ports else {name: free_port() for name in DEFAULT_PORTS}
        self.env = {
            **os.environ,
            "SFHQ_REDIS_URL": redis_url,
            "SFHQ_BLOB_URL": blob_url or str(workdir / "blobs"),
            "SFHQ_WEIGHTS_DIR": str(weights_dir),
            "SFHQ_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            **{f"SFHQ_{name.upper()}_ADDR": f"127.0.0.1:{port}" for name, port in self.ports.items()},
            # where the jobs of this machine's user may read and write besides the blob store
            "SFHQ_DATA_ROOTS": ",".join(str(Path(root).resolve()) for root in data_roots),
            **(extra_env or {}),
        }
        self.env.pop("REDIS_URL", None)
        self.processes: dict[str, subprocess.Popen] = {}
        (workdir / "logs").mkdir(parents=True, exist_ok=True)

    def addr(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def log_path(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def start(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.log_path(name), "ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.launch", name],
                env={**self.env, "SFHQ_PORT": str(self.ports[name]), **(env or {})},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = proc
        return proc

    def start_all(self, timeout_s: float = 180.0) -> None:
        for name in self.services:
            self.start(name)
        self.wait_all(timeout_s)

    def wait_all(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        for name in self.services:
            try:
                wait_healthy(self.addr(name), deadline, self.processes[name])
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{name} did not start ({exc}); its log:\n{self.tail(name)}") from None

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash would."""
        proc = self.processes[name]
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def tail(self, name: str, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
