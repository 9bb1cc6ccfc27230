"""`sfhq up` / `sfhq down`: a local cluster that stays up between commands and keeps its data.

Everything lives under one data folder DIR:

    DIR/redis/        Redis with append-only persistence (jobs, datasets, queues survive a restart)
    DIR/blobs/        the blob store (intermediates, the search index, taste models, labels)
    DIR/logs/         one log per process
    DIR/cluster.json  ports, process ids and settings of the running cluster
    DIR/weights-random/  only with --random-weights
    DIR/studio-exports/  what the web studio exports as folders

`up` starts Redis, every service and the web studio (http://127.0.0.1:8080 when that port is free)
in the background (their own sessions: closing the terminal
does not stop them), waits until each answers its health check, and writes the env file the CLI
reads by itself (`sfhq.localenv`). `up` again with the same DIR resumes: the same ports when free,
the same weights, and the gateway picks up unfinished jobs from Redis. `down` stops the services
(SIGTERM, then SIGKILL after a grace period) and then Redis, which writes its append-only file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from services.common.config import DEFAULT_PORTS
from services.common.embedded_redis import EmbeddedRedis
from services.common.errors import FailedPrecondition
from services.local_run import SERVICE_ORDER, LocalCluster
from sfhq.localenv import env_file, read_env, write_env

STATE_FILE = "cluster.json"
STUDIO_PORT = 8080
STOP_GRACE_S = 20.0


@dataclass
class ClusterState:
    data_dir: str
    weights_dir: str
    random_weights: bool
    data_roots: list[str]
    redis_port: int
    ports: dict[str, int]
    pids: dict[str, int] = field(default_factory=dict)  # process name -> pid ("redis" included)
    started_at: str = ""
    studio_port: int = 0
    studio_secret: str = ""  # kept, so that studio sessions survive an `up` after a `down`

    @property
    def studio_url(self) -> str:
        return f"http://127.0.0.1:{self.studio_port}" if self.studio_port else ""

    @property
    def gateway_addr(self) -> str:
        return f"127.0.0.1:{self.ports['gateway']}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def env(self) -> dict[str, str]:
        """What the CLI needs to talk to this cluster."""
        values = {"SFHQ_GATEWAY_ADDR": self.gateway_addr, "SFHQ_CLUSTER_DATA": self.data_dir}
        if self.studio_url:
            values["SFHQ_STUDIO_URL"] = self.studio_url
        return values

    @classmethod
    def load(cls, data_dir: Path) -> ClusterState | None:
        try:
            return cls(**json.loads((data_dir / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self) -> None:
        path = Path(self.data_dir) / STATE_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.chmod(tmp, 0o600)  # it holds the studio's cookie secret
        os.replace(tmp, path)


class ClusterError(FailedPrecondition):
    """The cluster could not be started or stopped; the message says why (and where the log is)."""


def _alive(pid: int, marker: str) -> bool:
    """True when `pid` runs and is still our process (its command line holds `marker`): a pid the
    system gave to another program since is not ours to signal."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the pid
    return marker in cmdline


def _marker(name: str) -> str:
    return {"redis": "redis-server", "studio": "-m studio"}.get(name, "services.launch")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def running(data_dir: Path) -> ClusterState | None:
    """The cluster of `data_dir` if all its processes are alive."""
    state = ClusterState.load(data_dir)
    if state is None or not state.pids:
        return None
    if all(_alive(pid, _marker(name)) for name, pid in state.pids.items()):
        return state
    return None


def up(
    data_dir: Path,
    *,
    random_weights: bool = False,
    weights_dir: Path | None = None,
    data_roots: tuple[Path, ...] = (),
    timeout_s: float = 240.0,
    say=print,
) -> ClusterState:
    """Start (or find running) the cluster of `data_dir`; returns its state."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    current = running(data_dir)
    if current is not None:
        missing = [str(r) for r in data_roots if str(Path(r).resolve()) not in current.data_roots]
        if missing:
            raise ClusterError(
                f"the cluster of {data_dir} is up but may not write to {', '.join(missing)}: "
                f"`sfhq down`, then `sfhq up --data {data_dir} --allow {missing[0]}`"
            )
        write_env(env_file(), current.env())
        return current
    previous = ClusterState.load(data_dir)
    if previous is not None:
        stop_processes(previous, say=lambda _m: None)  # leftovers of a cluster that half-died
    state = _plan(data_dir, previous, random_weights, weights_dir, data_roots, say)
    redis_server = EmbeddedRedis(port=state.redis_port, dir=data_dir / "redis", appendonly=True)
    redis_server.start()
    assert redis_server.process is not None
    state.pids = {"redis": redis_server.process.pid}
    cluster = LocalCluster(
        data_dir,
        state.redis_url,
        Path(state.weights_dir),
        blob_url=str(data_dir / "blobs"),
        data_roots=tuple(Path(r) for r in state.data_roots),
        ports=state.ports,
    )
    try:
        for name in SERVICE_ORDER:
            state.pids[name] = cluster.start(name).pid
        state.pids["studio"] = _start_studio(state, cluster).pid
        state.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        state.save()  # before waiting: `sfhq down` can stop a cluster that never became healthy
        cluster.wait_all(timeout_s)
        _wait_studio(state, cluster, time.monotonic() + 60)
    except BaseException as exc:
        stop_processes(state, say=lambda _m: None)
        raise ClusterError(f"the cluster did not start: {exc}") from None
    write_env(env_file(), state.env())
    return state


def _plan(
    data_dir: Path,
    previous: ClusterState | None,
    random_weights: bool,
    weights_dir: Path | None,
    data_roots: tuple[Path, ...],
    say,
) -> ClusterState:
    """Ports, weights and roots for a start: those of the previous run where they still fit."""
    from services.common.config import get_settings
    from services.common.embedded_redis import free_port
    from services.common.weights import WeightsRegistry

    roots = sorted(
        {str(Path(r).resolve()) for r in data_roots} | set(previous.data_roots if previous else [])
    )
    if random_weights or (previous is not None and previous.random_weights and weights_dir is None):
        weights = data_dir / "weights-random"
        if not WeightsRegistry(weights).is_random():
            from services.random_weights import write_random_weights

            say("--random-weights: writing small RANDOM models (demo only; the faces will be noise)")
            write_random_weights(weights)
        random = True
    else:
        weights = (weights_dir or get_settings().weights_dir).resolve()
        random = WeightsRegistry(weights).is_random()

    def port(name: str, old: int | None) -> int:
        return old if old and _port_free(old) else free_port()

    old_ports = previous.ports if previous else {}
    return ClusterState(
        data_dir=str(data_dir),
        weights_dir=str(weights),
        random_weights=random,
        data_roots=roots,
        redis_port=port("redis", previous.redis_port if previous else None),
        ports={name: port(name, old_ports.get(name)) for name in DEFAULT_PORTS},
        # the studio's usual port when it is free (and it was ours before), else any free one
        studio_port=port("studio", (previous.studio_port if previous else 0) or STUDIO_PORT),
        studio_secret=(previous.studio_secret if previous else "") or secrets.token_urlsafe(32),
    )


def _start_studio(state: ClusterState, cluster: LocalCluster) -> subprocess.Popen:
    env = {
        **cluster.env,
        "SFHQ_STUDIO_PORT": str(state.studio_port),
        "SFHQ_STUDIO_GATEWAY_ADDR": state.gateway_addr,
        "SFHQ_STUDIO_SECRET": state.studio_secret,
        "SFHQ_STUDIO_EXPORT_DIR": str(Path(state.data_dir) / "studio-exports"),
    }
    with open(cluster.log_path("studio"), "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "studio"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_studio(state: ClusterState, cluster: LocalCluster, deadline: float) -> None:
    while time.monotonic() < deadline:
        if not _alive(state.pids["studio"], _marker("studio")):
            raise RuntimeError(f"the studio exited; its log:\n{cluster.tail('studio')}")
        try:
            with urllib.request.urlopen(f"{state.studio_url}/healthz", timeout=1.0) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the studio did not answer at {state.studio_url}; its log:\n{cluster.tail('studio')}")


def stop_processes(state: ClusterState, *, say=print) -> list[str]:
    """SIGTERM every service (gateway first), SIGKILL what is left after the grace period, then
    Redis (SIGTERM: it writes its append-only file). Returns the names that were running."""
    stopped = []
    order = ("studio", "gateway", *[s for s in SERVICE_ORDER if s != "gateway"])
    services = [n for n in order if n in state.pids]
    for group in (services, ["redis"] if "redis" in state.pids else []):
        live = {name: state.pids[name] for name in group if _alive(state.pids[name], _marker(name))}
        for pid in live.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while live and time.monotonic() < deadline:
            for pid in live.values():
                _reap(pid)
            live = {n: p for n, p in live.items() if _alive(p, _marker(n))}  # a zombie has no cmdline
            time.sleep(0.1)
        for name, pid in live.items():
            say(f"{name} (pid {pid}) did not stop in {STOP_GRACE_S:.0f} s: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stopped += group
    return stopped


def _reap(pid: int) -> None:
    """Collect `pid` if it is an exited child of ours (when `up` and `down` run in one process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def down(data_dir: Path | None = None, *, say=print) -> ClusterState | None:
    """Stop the cluster of `data_dir` (default: the one the env file names); None if none was up."""
    if data_dir is None:
        named = read_env(env_file()).get("SFHQ_CLUSTER_DATA")
        if not named:
            return None
        data_dir = Path(named)
    state = ClusterState.load(data_dir.resolve())
    if state is None:
        return None
    stop_processes(state, say=say)
    state.pids = {}
    state.save()
    if read_env(env_file()).get("SFHQ_CLUSTER_DATA") == state.data_dir:
        env_file().unlink(missing_ok=True)
    return state
