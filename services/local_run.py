"""`sfhq run`: the whole suite on one machine for one job.

Starts Redis (embedded unless REDIS_URL is set), the four services and the gateway as
subprocesses on free loopback ports, submits the job through the SDK, shows progress, and
stops everything — the same processes and protocols as a deployment, just local.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

from services.common.config import DEFAULT_PORTS, get_settings
from services.common.weights import WeightsMissing, WeightsRegistry

# What a job needs: the generator may instead use e4e's bundled decoder, so it is not listed.
REQUIRED_WEIGHTS = ("e4e-ffhq-encode", "bisenet-face-parsing", "clip-vit-l-14-336")
SERVICE_ORDER = ("annotator", "encoder", "generator", "search", "gateway")


@dataclass
class LocalRunOptions:
    inputs: Path
    output: Path
    random_weights: bool = False
    mode: str = "inspiration"
    strategies: list[str] = field(default_factory=list)
    samples: int = 8
    dedup: float | None = None  # None: SFHQ's 0.92, or off with random weights
    taste_model: str = ""
    seed: int = 0
    image_size: int = 1024
    startup_timeout_s: float = 180.0


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


@contextlib.contextmanager
def redis_for_run(workdir: Path, console: Console) -> Iterator[str]:
    url = os.environ.get("REDIS_URL") or os.environ.get("SFHQ_REDIS_URL")
    if url:
        console.print(f"using Redis at {url}")
        yield url
        return
    from services.common.embedded_redis import EmbeddedRedis

    with EmbeddedRedis(dir=workdir / "redis") as redis_server:
        console.print(f"started an embedded Redis at {redis_server.url}")
        yield redis_server.url


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
    ) -> None:
        self.workdir = workdir
        self.services = services
        self.ports = {name: free_port() for name in DEFAULT_PORTS}
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


def run_local(options: LocalRunOptions, console: Console | None = None) -> int:
    """Runs one job end to end; returns a process exit code (0 = the job succeeded)."""
    from sfhq.progress import follow
    from sfhq.sdk import Client, SfhqError, build_spec, image_files

    console = console or Console(stderr=True)
    settings = get_settings()
    output = options.output.resolve()
    workdir = output.with_name(output.name + ".work")
    (workdir / "logs").mkdir(parents=True, exist_ok=True)

    if options.random_weights:
        from services.random_weights import write_random_weights

        weights_dir = workdir / "weights-random"
        if not WeightsRegistry(weights_dir).is_random():
            console.print(
                "[bold yellow]--random-weights: writing small RANDOM models (demo only; the faces will "
                "be noise, not photoreal)[/]"
            )
            write_random_weights(weights_dir)
    else:
        weights_dir = settings.weights_dir
        registry = WeightsRegistry(weights_dir)
        try:
            for name in REQUIRED_WEIGHTS:
                registry.path(name)
        except WeightsMissing as exc:
            console.print(
                f"[bold red]missing checkpoint:[/] {exc}\n"
                "Register the official checkpoints with `sfhq weights download NAME` (or "
                "`sfhq weights add NAME PATH`), or try the pipeline with `sfhq run --random-weights`."
            )
            return 2
    if options.mode != "sampling":
        try:
            images = image_files([options.inputs])
        except FileNotFoundError as exc:
            console.print(f"[bold red]error:[/] {exc}")
            return 2
        if not images:
            console.print(f"[bold red]error:[/] no images in {options.inputs}")
            return 2
    else:
        images = []

    dedup = options.dedup
    if dedup is None:
        dedup = 0.0 if options.random_weights else 0.92
        if options.random_weights:
            console.print(
                "near-duplicate removal is off: a random CLIP cannot tell faces apart "
                "(pass --dedup 0.92 to see it anyway)"
            )
    with (
        redis_for_run(workdir, console) as redis_url,
        LocalCluster(workdir, redis_url, weights_dir, data_roots=(output.parent,)) as cluster,
    ):
        with console.status("starting services ..."):
            try:
                cluster.start_all(options.startup_timeout_s)
            except RuntimeError as exc:
                console.print(f"[bold red]{exc}[/]")
                return 1
        console.print("services up: " + ", ".join(f"{n} {cluster.addr(n)}" for n in SERVICE_ORDER))
        spec = build_spec(
            mode=options.mode,
            images=images,
            strategies=options.strategies,
            samples=options.samples if options.mode == "sampling" else 0,
            taste_model=options.taste_model,
            dedup_threshold=dedup if dedup > 0 else None,
            disable_dedup=dedup <= 0,
            output_uri=str(output),
            image_size=options.image_size,
            seed=options.seed,
            name="sfhq run",
        )
        with Client(cluster.addr("gateway"), timeout=60) as client:
            try:
                job = client.submit(spec)
                console.print(f"job {job.job_id}: {len(images) or options.samples} inputs -> {output}")
                job = follow(client, job.job_id, console)
            except SfhqError as exc:
                console.print(f"[bold red]job failed:[/] {exc}")
                return 1
            _report(console, client, job, output, weights_dir, options.random_weights)
        return 0 if job.state == 5 else 1  # JOB_STATE_SUCCEEDED


def _report(console: Console, client, job, output: Path, weights_dir: Path, random_weights: bool) -> None:
    from sfhq.v1 import gateway_pb2

    c = job.counts
    state = gateway_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
    console.print(
        f"\n[bold]{state}[/]: {c.inputs} inputs, {c.candidates} candidates, {c.accepted} accepted, "
        f"{c.written} written, {c.rejected_taste} rejected by taste, {c.rejected_duplicate} near-duplicates, "
        f"{c.failed} failed"
    )
    if job.error:
        console.print(f"[red]{job.error}[/]")
    for item in client.list_items(job.job_id, state="failed")[:10]:
        console.print(f"  failed {item.item_id} at {item.error.code}: {item.error.message}")
    try:
        hits = client.search("a smiling person", job_id=job.job_id, top_k=3).hits
        if hits:
            console.print(
                "search 'a smiling person': " + ", ".join(f"{h.item_id} ({h.score:.2f})" for h in hits)
            )
    except Exception as exc:  # search is a bonus here; the dataset is the result
        console.print(f"(search unavailable: {exc})")
    console.print(
        f"dataset: {output}  (images/, segmentations/, landmarks/, pretrained_features/, latents/, "
        "manifest.jsonl, manifest.parquet)"
    )
    console.print(
        "search it later: start the services on the same blob store (`docker compose up`, or "
        "`sfhq serve search` + `sfhq serve gateway`) and run `sfhq search 'TEXT' --job "
        f"{job.job_id}`"
    )
    if random_weights:
        console.print(
            f"[bold yellow]made with RANDOM weights ({weights_dir}); register real checkpoints with "
            "`sfhq weights` for real faces[/]"
        )
