"""A hardened local cluster with fault hooks, and the checks a fault run ends with.

The cluster is the real thing, as `sfhq run` starts it (five `sfhq serve` processes on loopback,
tiny random models), configured the way a careful deployment would be:

* every gRPC server needs a bearer token and speaks mutual TLS (a private CA made with openssl);
* Redis has a password on its default (admin) user, and the services log in as an ACL user that
  may touch only `sfhq:*` keys and no dangerous command (FLUSHALL, CONFIG, KEYS, ...);
* Redis writes an append-only file, so it can be restarted mid-job.

Fault hooks: `kill` (SIGKILL), `pause`/`resume` (SIGSTOP/SIGCONT: a hung process), `restart`,
`start(..., preexec_fn=...)` (resource limits, another user), replicas, Redis restarts with or
without persistence. `check_dataset` and `queue_report` say whether a job's output is exactly
once and whether anything was left behind.

Used by tests/integration/test_{chaos,faults,security,fuzz_rpcs}.py (one cluster per test session,
see `shared_cluster`) and by reliability/{chaos,fuzz,load}.py.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import Settings
from services.common.embedded_redis import EmbeddedRedis, free_port
from services.common.queue import RedisQueue
from services.common.server import client_channel
from services.local_run import SERVICE_ORDER, LocalCluster
from sfhq.sdk import Client

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE_USER = "sfhq"  # the Redis ACL user the services log in as
WORKER_SERVICES = ("annotator", "encoder", "generator", "search")
TEMP_MARKER = ".sfhq-tmp-"  # BlobStore's in-flight write prefix: none may be left behind

# Short timeouts so that faults are recovered in seconds, not minutes (production: 300 s).
FAST_ENV = {
    "SFHQ_VISIBILITY_TIMEOUT_S": "3",
    "SFHQ_BATCH_SIZE": "4",
    "SFHQ_BATCH_WAIT_MS": "20",
    "SFHQ_MAX_DELIVERIES": "3",
    "SFHQ_DEVICE": "cpu",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


# ---- weights and certificates -------------------------------------------------------------------


def random_weights_dir() -> Path:
    """Tiny random models in the official layouts, written once per version of their writers.

    Writing them takes ~20 s, so they are cached in the temp folder under a digest of the code that
    writes them (a change to that code makes a fresh folder). World-readable, so a service started
    as another user (the permission tests) can load them.
    """
    sources = sorted((REPO_ROOT / "services").glob("**/random_weights.py"))
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"sfhq-reliability-weights-{digest}"
    if (folder / "RANDOM_WEIGHTS").exists():
        return folder
    from services.random_weights import write_random_weights

    scratch = Path(tempfile.mkdtemp(prefix="sfhq-weights-", dir=folder.parent))
    write_random_weights(scratch)
    scratch.chmod(0o755)
    try:
        scratch.rename(folder)  # atomic: a concurrent session sees all of it or nothing
    except OSError:  # another session won the race; its folder is just as good
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path) -> Path:
    """A private CA, a server certificate for 127.0.0.1/localhost and a client certificate (EC keys).

    The keys are made world-readable: TEST MATERIAL ONLY, so that a service started as another user
    can read them. Real keys stay 0600, owned by the service user.
    """
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is needed to make the test certificates")
    folder.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=sfhq reliability CA", cwd=folder)  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=sfhq {name}",
                 cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext", cwd=folder)  # fmt: skip
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


# ---- Redis --------------------------------------------------------------------------------------


class HardenedRedis(EmbeddedRedis):
    """redis-server with a password on the default (admin) user and a least-privilege ACL user.

    The ACL user is declared on the command line, so it survives restarts, even those that lose the
    data. `url` is the admin URL (tests, tools); `service_url` is what the services get.
    """

    def __init__(self, *, dir: Path, appendonly: bool = True, port: int | None = None) -> None:
        super().__init__(port=port, dir=dir, appendonly=appendonly, password=secrets.token_urlsafe(18))
        self.service_password = secrets.token_urlsafe(18)
        self.restarts = 0

    @property
    def service_url(self) -> str:
        return f"redis://{SERVICE_USER}:{self.service_password}@127.0.0.1:{self.port}/0"

    def secret_config(self) -> list[str]:
        # ~sfhq:* : only our keys. -@dangerous: no FLUSHALL, CONFIG, KEYS, DEBUG, SHUTDOWN, ACL, MONITOR...
        # CLIENT is "dangerous" as a whole; its SETNAME only labels our own connection. In the 0600
        # secrets file, like requirepass: never on a command line that `ps` shows to everyone.
        acl = f"user {SERVICE_USER} on >{self.service_password} ~sfhq:* +@all -@dangerous +client|setname"
        return [*super().secret_config(), acl]

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=10)

    def enable_persistence(self) -> None:
        """Turn the AOF on in the running server (it writes the current data set to a fresh file)."""
        admin = self.admin()
        try:
            admin.config_set("appendonly", "yes")
            deadline = time.monotonic() + 30
            while admin.info("persistence").get("aof_rewrite_in_progress") and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            admin.close()
        self.appendonly = True

    def restart(self, *, persistent: bool = True, kill: bool = False, down_s: float = 0.0) -> None:
        """Stop (SIGTERM flushes the AOF; `kill` = SIGKILL, as a crash) and start on the same port.

        `persistent=False` starts the new server without the AOF and deletes the old file: the
        data set is gone, as after a restart of a Redis that had no persistence.
        """
        process = self.process
        if kill and process is not None:
            process.kill()
            process.wait()
            self.process = None
        else:
            self.stop()
        self.appendonly = persistent
        if not persistent:
            for name in ("appendonly.aof", "dump.rdb"):
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / name).unlink()
        time.sleep(down_s)
        self.start()
        self.restarts += 1


# ---- the cluster --------------------------------------------------------------------------------


def service_of(name: str) -> str:
    """`encoder#2` (a replica) -> `encoder`."""
    return name.split("#", 1)[0]


class ReliabilityCluster(LocalCluster):
    """LocalCluster + bearer tokens, mutual TLS, a Redis ACL user, and fault hooks."""

    def __init__(
        self,
        workdir: Path,
        redis_server: HardenedRedis,
        weights_dir: Path,
        *,
        tls: bool = True,
        auth: bool = True,
        extra_env: dict[str, str] | None = None,
        users: int = 0,
    ) -> None:
        self.redis_server = redis_server
        # more users, each with a token of their own (the multi-user load mode): user0, user1, ...
        self.user_tokens = {f"user{n}": secrets.token_urlsafe(24) for n in range(users)} if auth else {}
        # three tokens: the services' own (tokens[0]), the user "tester"'s (tokens[1]), the admin's (tokens[2])
        self.tokens = [secrets.token_urlsafe(24) for _ in range(3)] if auth else []
        self.tls_dir = make_certificates(workdir / "tls") if tls else None
        # SFHQ_DATA_ROOTS: jobs (and fuzzers) may read and write inside the work folder only.
        env = {**FAST_ENV, "SFHQ_DATA_ROOTS": str(workdir)}
        if auth:
            env |= {
                "SFHQ_SERVICE_TOKENS": self.tokens[0],
                "SFHQ_AUTH_TOKENS": ",".join(
                    [f"tester={self.tokens[1]}", f"admin={self.tokens[2]}"]
                    + [f"{name}={token}" for name, token in self.user_tokens.items()]
                ),
            }
        if self.tls_dir is not None:
            env |= {
                "SFHQ_TLS_CERT": str(self.tls_dir / "server.pem"),
                "SFHQ_TLS_KEY": str(self.tls_dir / "server.key"),
                "SFHQ_TLS_CA": str(self.tls_dir / "ca.pem"),
            }
        super().__init__(
            workdir, redis_server.service_url, weights_dir, extra_env={**env, **(extra_env or {})}
        )
        # How the tests and scripts reach the internal services: the client certificate and a service
        # token (internal RPCs refuse user tokens); the gateway is reached as the user (`client()`).
        tls_files = {}
        if self.tls_dir is not None:
            tls_files = {
                "tls_cert": str(self.tls_dir / "client.pem"),
                "tls_key": str(self.tls_dir / "client.key"),
                "tls_ca": str(self.tls_dir / "ca.pem"),
            }
        self.client_settings = Settings(service_tokens=self.tokens[:1], **tls_files)

    # -- processes ----------------------------------------------------------------------------

    def start(
        self,
        name: str,
        env: dict[str, str] | None = None,
        *,
        obey_file_permissions: bool = False,
        max_file_bytes: int | None = None,
        log_name: str | None = None,
    ) -> subprocess.Popen:
        """Start `name` (a service, or `service#N` for a replica on its own port).

        `obey_file_permissions`: when we are root, start it without CAP_DAC_OVERRIDE and
        CAP_DAC_READ_SEARCH (util-linux `setpriv`), so that file modes bind it like any user and a
        read-only folder gives a real EACCES. `max_file_bytes`: RLIMIT_FSIZE, so that a write past
        that size fails with EFBIG, as on a full disk (Python ignores SIGXFSZ). `log_name`: another
        log file than `<name>.log` (a fresh one, so that the size limit does not silence the log).
        """
        if name not in self.ports:
            self.ports[name] = free_port()
        command = [sys.executable, "-m", "services.launch", service_of(name)]
        if obey_file_permissions and os.geteuid() == 0:
            command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *command]
        with open(self.log_path(log_name or name), "ab") as log_file:
            proc = subprocess.Popen(
                command,
                env={**self.env, "SFHQ_PORT": str(self.ports[name]), **(env or {})},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,  # relative paths in requests land in the work folder, never in the repo
            )
        if max_file_bytes is not None:
            # set from outside (no preexec_fn: it is unsafe in a threaded parent); the interpreter's
            # first writes are its log lines, far below any limit used here
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
        self.processes[name] = proc
        return proc

    def wait_healthy(self, name: str, timeout_s: float = 180.0) -> None:
        """Poll the standard health check (over TLS when on) until SERVING."""
        deadline = time.monotonic() + timeout_s
        process = self.processes[name]
        with self.channel(name) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with code {process.returncode}; log:\n{self.tail(name)}"
                    )
                with contextlib.suppress(grpc.RpcError):
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                time.sleep(0.2)
        raise RuntimeError(f"{name} not healthy after {timeout_s} s; log:\n{self.tail(name)}")

    def wait_all(self, timeout_s: float = 180.0) -> None:
        for name in self.processes:
            self.wait_healthy(name, timeout_s)

    def restart(self, name: str, *, wait: bool = True, timeout_s: float = 180.0) -> None:
        self.kill(name)
        self.start(name)
        if wait:
            self.wait_healthy(name, timeout_s)

    def pause(self, name: str) -> None:
        """SIGSTOP: the process and every thread in it freeze, as a hung machine would."""
        os.kill(self.processes[name].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.kill(self.processes[name].pid, signal.SIGCONT)

    def kill(self, name: str) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.resume(name)  # a frozen process dies just the same, but be tidy
        super().kill(name)

    def alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def rss_mb(self, name: str) -> float:
        """Resident memory of a process (MiB), from /proc."""
        status = Path(f"/proc/{self.processes[name].pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def ensure_healthy(self, timeout_s: float = 240.0) -> None:
        """Every service running and SERVING (restart what died, thaw what was frozen); replicas stopped."""
        for name in list(self.processes):
            if name not in SERVICE_ORDER:
                self.kill(name)
                del self.processes[name]
                continue
            if self.alive(name):
                self.resume(name)
            else:
                self.start(name)
        for name in SERVICE_ORDER:
            self.wait_healthy(name, timeout_s)

    def stop(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.resume(name)  # a frozen process cannot act on SIGTERM
        super().stop()

    def logs(self) -> dict[str, str]:
        return {path.stem: path.read_text(errors="replace") for path in (self.workdir / "logs").glob("*.log")}

    # -- clients --------------------------------------------------------------------------------

    def channel(self, name: str) -> grpc.Channel:
        """A channel to `name` with the client certificate and the services' token."""
        return client_channel(self.addr(name), self.client_settings)

    def client(self, *, as_admin: bool = False, token: str | None = None, **options: Any) -> Client:
        """An SDK client of the gateway, authenticated as the user "tester" (or the admin user)."""
        tls: dict[str, Any] = {}
        if self.tls_dir is not None:
            tls = {
                "root_certificates": (self.tls_dir / "ca.pem").read_bytes(),
                "client_cert": (
                    (self.tls_dir / "client.pem").read_bytes(),
                    (self.tls_dir / "client.key").read_bytes(),
                ),
            }
        options.setdefault("timeout", 60)
        if token is None and self.tokens:
            token = self.tokens[2] if as_admin else self.tokens[1]
        return Client(self.addr("gateway"), token=token, **tls, **options)

    def admin_redis(self) -> redis.Redis:
        return self.redis_server.admin()


# ---- one cluster per test session ---------------------------------------------------------------

_SHARED: dict[str, ReliabilityCluster] = {}
# Limits lower than the defaults, so that tests can cross them cheaply.
SHARED_LIMITS = {
    "SFHQ_MAX_MESSAGE_MB": "16",
    "SFHQ_MAX_IMAGE_BYTES": str(4 * 1024 * 1024),
    "SFHQ_MAX_IMAGE_PIXELS": str(16_000_000),
    "SFHQ_STREAM_MAXLEN": "2000",
}


def new_workdir(prefix: str = "sfhq-reliability-") -> Path:
    """A work folder other users can traverse (the permission tests run a service as `nobody`)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o755)
    return workdir


@contextlib.contextmanager
def running_cluster(
    *,
    extra_env: dict[str, str] | None = None,
    keep: bool = False,
    tls: bool = True,
    auth: bool = True,
    users: int = 0,
) -> Iterator[ReliabilityCluster]:
    """A hardened cluster on its own append-only Redis, stopped and removed on exit."""
    workdir = new_workdir()
    redis_server = HardenedRedis(dir=workdir / "redis", appendonly=True).start()
    cluster = ReliabilityCluster(
        workdir, redis_server, random_weights_dir(), extra_env=extra_env, tls=tls, auth=auth, users=users
    )
    try:
        cluster.start_all(timeout_s=300)
        yield cluster
    finally:
        cluster.stop()
        redis_server.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def stop_cleanly_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit in a script, so that `running_cluster` stops what it started.

    (Python's default for SIGTERM ends the process at once and would leave the cluster running.)
    """

    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def shared_cluster() -> ReliabilityCluster:
    """The session's hardened cluster: started on first use, stopped when the interpreter exits.

    Starting five torch processes costs ~30 s of two shared cores, so the reliability test modules
    share one; each leaves it healthy (`ensure_healthy`) for the next.
    """
    if "cluster" not in _SHARED:
        context = running_cluster(
            keep=bool(os.environ.get("SFHQ_KEEP_RELIABILITY_WORKDIR")), extra_env=SHARED_LIMITS
        )
        _SHARED["cluster"] = context.__enter__()
        atexit.register(context.__exit__, None, None, None)
    return _SHARED["cluster"]


# ---- jobs and checks ----------------------------------------------------------------------------


def sampling_spec(samples: int, output: Path, *, first_seed: int = 0, image_size: int = 0) -> Any:
    """The cheapest real job: psi > 1 samples -> encode -> correct -> embed -> curate -> annotate.

    No dlib alignment, the annotator works at 64 px, and dedup is off (random CLIP features would make
    everything a near-duplicate), so every sample must end up written exactly once.
    """
    from sfhq.sdk import build_spec

    return build_spec(
        mode="sampling",
        samples=samples,
        corrections=["encoder_truncation:coarse=0.3,middle=0.3,fine=0.3"],  # one candidate per sample
        first_seed=first_seed,
        annotation_size=64,
        disable_dedup=True,
        output_uri=str(output),
        image_size=image_size,
    )


def sample_item_ids(samples: int) -> set[str]:
    """The ids of the written items of a sampling job: one candidate per sample."""
    return {f"s{n:07d}-c0" for n in range(samples)}


@dataclass
class DatasetCheck:
    """What a finished dataset holds compared with what it should hold."""

    manifest_rows: int = 0
    duplicate_stems: list[str] = field(default_factory=list)
    duplicate_items: list[str] = field(default_factory=list)
    missing_items: list[str] = field(default_factory=list)
    unexpected_items: list[str] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)  # folder -> file count
    mismatched_folders: dict[str, list[str]] = field(default_factory=dict)  # folder -> stems off the manifest
    temp_files: list[str] = field(default_factory=list)

    @property
    def exactly_once(self) -> bool:
        return not (
            self.duplicate_stems
            or self.duplicate_items
            or self.missing_items
            or self.unexpected_items
            or self.mismatched_folders
            or self.temp_files
        )


DATASET_FOLDERS = {
    "images": ".jpg",
    "segmentations": ".png",
    "landmarks": ".npz",
    "pretrained_features": ".pickle",
    "latents": ".npy",
}


def check_dataset(root: Path, expected_items: set[str]) -> DatasetCheck:
    """Every expected item once in the manifest, each folder holding exactly the manifest's stems."""
    check = DatasetCheck()
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line.strip()]
    check.manifest_rows = len(rows)
    stems = [row["stem"] for row in rows]
    items = [row["item_id"] for row in rows]
    check.duplicate_stems = sorted({s for s in stems if stems.count(s) > 1})
    check.duplicate_items = sorted({i for i in items if items.count(i) > 1})
    check.missing_items = sorted(expected_items - set(items))
    check.unexpected_items = sorted(set(items) - expected_items)
    for folder, suffix in DATASET_FOLDERS.items():
        found = (
            [p.name[: -len(suffix)] for p in (root / folder).glob(f"*{suffix}")]
            if (root / folder).exists()
            else []
        )
        check.files[folder] = len(found)
        off = sorted(set(found) ^ set(stems))
        if off:
            check.mismatched_folders[folder] = off[:20]
    check.temp_files = sorted(str(p.relative_to(root)) for p in root.rglob(f"{TEMP_MARKER}*"))
    return check


def queue_report(admin: redis.Redis) -> dict[str, Any]:
    """Backlog and pending entries per stage and for results, and the dead-letter count."""
    return RedisQueue(admin).stats()


def nothing_pending(report: dict[str, Any]) -> bool:
    stages = [*report["stages"].values(), report["results"]]
    return all(entry["backlog"] == 0 and entry["pending"] == 0 for entry in stages)


def wait_for_quiet_queue(admin: redis.Redis, timeout_s: float = 30.0) -> dict[str, Any]:
    """The queue report once nothing is waiting or pending (late duplicates get acked), or at the timeout."""
    deadline = time.monotonic() + timeout_s
    report = queue_report(admin)
    while not nothing_pending(report) and time.monotonic() < deadline:
        time.sleep(0.5)
        report = queue_report(admin)
    return report


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]
