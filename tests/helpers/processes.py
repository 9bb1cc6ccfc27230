"""Start Python subprocesses for integration tests, wait for them to be ready, stop or kill them.

    with start_python("tests.integration.test_queue_processes:worker_main", env={...}) as proc:
        wait_for_redis_key(redis_url, "started:job/1/encode", timeout=10)
        proc.kill()  # SIGKILL: no clean-up, like a crashed machine

A target is `package.module` (run as `python -m`) or `package.module:function` (imported and
called with no arguments). The child runs from the repository root with it on `PYTHONPATH`; its
stdout and stderr go to a log file whose tail is shown when a wait fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from services.common.embedded_redis import free_port

__all__ = [
    "ManagedProcess",
    "free_port",
    "start_python",
    "wait_for_grpc_health",
    "wait_for_port",
    "wait_for_redis_key",
    "wait_until",
]

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll `condition` until it is true; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    def accepting() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            return False

    wait_until(accepting, timeout, f"{host}:{port} to accept connections")


def wait_for_grpc_health(addr: str, service: str = "", timeout: float = 15.0) -> None:
    """Wait until the standard gRPC health check of `addr` answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(addr)
    stub = health_pb2_grpc.HealthStub(channel)

    def serving() -> bool:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=0.5)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    try:
        wait_until(serving, timeout, f"gRPC health of {addr} to be SERVING", interval=0.05)
    finally:
        channel.close()


def wait_for_redis_key(redis_url: str, key: str, timeout: float = 10.0) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        wait_until(lambda: bool(client.exists(key)), timeout, f"Redis key {key!r}")
    finally:
        client.close()


class ManagedProcess:
    """A child process with its log; a context manager that SIGKILLs it on exit if still running."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path, target: str) -> None:
        self.popen = popen
        self.log_path = log_path
        self.target = target

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> int:
        """SIGKILL, like a machine dying: no handler runs, nothing is cleaned up."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        return self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for a graceful exit; returns the exit code (SIGKILL after `timeout`)."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
            raise TimeoutError(
                f"{self.target} ignored SIGTERM for {timeout} s; log:\n{self.log_tail()}"
            ) from None

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def check_alive(self) -> None:
        """Raise with the log tail if the child has exited (useful inside wait loops)."""
        if not self.alive():
            raise RuntimeError(
                f"{self.target} exited with code {self.popen.returncode}; log:\n{self.log_tail()}"
            )

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.alive():
            self.kill()


def start_python(
    target: str,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_dir: str | os.PathLike[str] | None = None,
) -> ManagedProcess:
    """Run `module` or `module:function` in a fresh interpreter with `env` added to ours."""
    if ":" in target:
        module, function = target.split(":", 1)
        code = f"import sys, {module} as m; sys.argv[1:] = {list(args)!r}; m.{function}()"
        command = [sys.executable, "-c", code]
    else:
        command = [sys.executable, "-m", target, *args]
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH", "")]))
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    folder = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="sfhq-proc-"))
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"{target.replace(':', '.').replace('/', '_')}-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log_file:
        popen = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=child_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return ManagedProcess(popen, log_path, target)
