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
    dedup: float = 0.92
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
                if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0).status == \
                        health_pb2.HealthCheckResponse.SERVING:
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


def _stop(processes: dict[str, subprocess.Popen]) -> None:
    for proc in processes.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in processes.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_local(options: LocalRunOptions, console: Console | None = None) -> int:
    """Runs one job end to end; returns a process exit code (0 = the job succeeded)."""
    from sfhq.cli import follow
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
            console.print("[bold yellow]--random-weights: writing small RANDOM models (demo only; the faces will "
                          "be noise, not photoreal)[/]")
            write_random_weights(weights_dir)
    else:
        weights_dir = settings.weights_dir
        registry = WeightsRegistry(weights_dir)
        try:
            for name in REQUIRED_WEIGHTS:
                registry.path(name)
        except WeightsMissing as exc:
            console.print(f"[bold red]missing checkpoint:[/] {exc}\n"
                          "Register the official checkpoints with `sfhq weights download NAME` (or "
                          "`sfhq weights add NAME PATH`), or try the pipeline with `sfhq run --random-weights`.")
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

    with redis_for_run(workdir, console) as redis_url:
        ports = {name: free_port() for name in DEFAULT_PORTS}
        env = {**os.environ, "SFHQ_REDIS_URL": redis_url, "SFHQ_BLOB_URL": str(workdir / "blobs"),
               "SFHQ_WEIGHTS_DIR": str(weights_dir), "SFHQ_HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1",
               **{f"SFHQ_{name.upper()}_ADDR": f"127.0.0.1:{port}" for name, port in ports.items()}}
        env.pop("REDIS_URL", None)
        processes: dict[str, subprocess.Popen] = {}
        logs = {name: workdir / "logs" / f"{name}.log" for name in SERVICE_ORDER}
        try:
            for name in SERVICE_ORDER:
                with open(logs[name], "ab") as log_file:
                    processes[name] = subprocess.Popen(
                        [sys.executable, "-m", "sfhq.cli", "serve", name], env={**env, "SFHQ_PORT": str(ports[name])},
                        stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + options.startup_timeout_s
            with console.status("starting services ..."):
                for name in SERVICE_ORDER:
                    try:
                        wait_healthy(f"127.0.0.1:{ports[name]}", deadline, processes[name])
                    except (RuntimeError, TimeoutError) as exc:
                        console.print(f"[bold red]{name} did not start ({exc}); its log:[/]\n{_tail(logs[name])}")
                        return 1
            console.print(f"services up: " + ", ".join(f"{n} :{ports[n]}" for n in SERVICE_ORDER))

            spec = build_spec(mode=options.mode, images=images, strategies=options.strategies,
                              samples=options.samples if options.mode == "sampling" else 0,
                              taste_model=options.taste_model,
                              dedup_threshold=options.dedup if options.dedup > 0 else None,
                              disable_dedup=options.dedup <= 0, output_uri=str(output),
                              image_size=options.image_size, seed=options.seed, name="sfhq run")
            with Client(f"127.0.0.1:{ports['gateway']}", timeout=60) as client:
                try:
                    job = client.submit(spec)
                    console.print(f"job {job.job_id}: {len(images) or options.samples} inputs -> {output}")
                    job = follow(client, job.job_id)
                except SfhqError as exc:
                    console.print(f"[bold red]job failed:[/] {exc}")
                    return 1
                _report(console, client, job, output, weights_dir, options.random_weights)
            return 0 if job.state == 5 else 1  # JOB_STATE_SUCCEEDED
        finally:
            _stop(processes)


def _report(console: Console, client, job, output: Path, weights_dir: Path, random_weights: bool) -> None:
    from sfhq.v1 import gateway_pb2
    c = job.counts
    state = gateway_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
    console.print(f"\n[bold]{state}[/]: {c.inputs} inputs, {c.candidates} candidates, {c.accepted} accepted, "
                  f"{c.written} written, {c.rejected_taste} rejected by taste, {c.rejected_duplicate} near-duplicates, "
                  f"{c.failed} failed")
    if job.error:
        console.print(f"[red]{job.error}[/]")
    for item in client.list_items(job.job_id, state="failed")[:10]:
        console.print(f"  failed {item.item_id} at {item.error.code}: {item.error.message}")
    try:
        hits = client.search("a smiling person", job_id=job.job_id, top_k=3).hits
        if hits:
            console.print("search 'a smiling person': " + ", ".join(f"{h.item_id} ({h.score:.2f})" for h in hits))
    except Exception as exc:  # search is a bonus here; the dataset is the result
        console.print(f"(search unavailable: {exc})")
    console.print(f"dataset: {output}  (images/, segmentations/, landmarks/, pretrained_features/, latents/, "
                  "manifest.jsonl, manifest.parquet)")
    console.print("search it later: start the services on the same blob store (`docker compose up`, or "
                  "`sfhq serve search` + `sfhq serve gateway`) and run `sfhq search 'TEXT' --job "
                  f"{job.job_id}`")
    if random_weights:
        console.print(f"[bold yellow]made with RANDOM weights ({weights_dir}); register real checkpoints with "
                      "`sfhq weights` for real faces[/]")
