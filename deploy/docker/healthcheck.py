#!/usr/bin/env python3
"""Container health probe: ask the local gRPC server's standard health service (grpc.health.v1).

Docker's HEALTHCHECK (and a Kubernetes exec probe, where native gRPC probes cannot be used because
the server speaks TLS) run this inside the service's container:

    python /opt/sfhq/healthcheck.py                  # port from SFHQ_PORT
    python /opt/sfhq/healthcheck.py --port 50051 --service sfhq.v1.Encoder
    python /opt/sfhq/healthcheck.py --ca /etc/sfhq/tls/ca.pem   # TLS server, CA-signed certificate

Exit status 0 when the server answers SERVING, else 1 (not serving, unreachable in time, or the
probe is misconfigured; Docker reserves 2), with the reason on stderr. It reads the same settings as the
server (`SFHQ_PORT`, `SFHQ_TLS_CERT`/`SFHQ_TLS_KEY`/`SFHQ_TLS_CA`, `SFHQ_SERVICE_TOKENS`)
and imports only grpcio and grpcio-health-checking, so a probe costs a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1


class ProbeConfigError(Exception):
    """The probe cannot run as configured (no port, unreadable TLS file, ...)."""


def _read_pem(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ProbeConfigError(f"cannot read {what} {path!r}: {exc.strerror}") from None


def _port(cli_port: int | None, env: dict[str, str]) -> int:
    raw = str(cli_port) if cli_port is not None else env.get("SFHQ_PORT", "").strip()
    if not raw:
        raise ProbeConfigError("no port: pass --port or set SFHQ_PORT (the service's gRPC port)")
    try:
        port = int(raw)
    except ValueError:
        raise ProbeConfigError(f"port must be a number, got {raw!r}") from None
    if not 0 < port < 65536:
        raise ProbeConfigError(f"port out of range: {port}")
    return port


def open_channel(target: str, env: dict[str, str], server_name: str, ca_file: str = "") -> grpc.Channel:
    """A channel to the local server, with TLS (and a client certificate for mTLS) when it uses them."""
    cert, key, ca = env.get("SFHQ_TLS_CERT", ""), env.get("SFHQ_TLS_KEY", ""), env.get("SFHQ_TLS_CA", "")
    if not (cert and key):
        return grpc.insecure_channel(target)
    # What to trust: --ca, else the server's CA (SFHQ_TLS_CA), else the server's own certificate,
    # which gRPC accepts as the trust anchor (self-signed or not). The name checked is the one the
    # certificate was issued for, since nobody issues certificates for 127.0.0.1.
    trusted = ca_file or ca or cert
    root = _read_pem(trusted, "the CA file" if (ca_file or ca) else "SFHQ_TLS_CERT")
    # With SFHQ_TLS_CA set the server demands client certificates (mTLS): present its own pair.
    client_key = _read_pem(key, "SFHQ_TLS_KEY") if ca else None
    client_chain = _read_pem(cert, "SFHQ_TLS_CERT") if ca else None
    credentials = grpc.ssl_channel_credentials(root, client_key, client_chain)
    return grpc.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", server_name)])


def check(
    port: int,
    *,
    service: str = "",
    timeout_s: float = 3.0,
    env: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    server_name: str = "localhost",
    ca_file: str = "",
) -> tuple[bool, str]:
    """Ask the health service at `host:port` about `service` ("" = the whole server).

    Returns `(healthy, description)`; never raises for an unhealthy or unreachable server.
    """
    env = dict(os.environ) if env is None else env
    # Health is exempt from auth, but a proxy in front may still want a token: send a service token.
    tokens = [t.strip() for t in env.get("SFHQ_SERVICE_TOKENS", "").split(",") if t.strip()]
    metadata = (("authorization", f"Bearer {tokens[0]}"),) if tokens else None
    with open_channel(f"{host}:{port}", env, server_name, ca_file) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s, metadata=metadata
            )
        except grpc.RpcError as exc:
            # A failed unary call is also a grpc.Call, which carries the status code and details.
            if isinstance(exc, grpc.Call):
                return False, f"{host}:{port} health check failed: {exc.code().name}: {exc.details()}"
            return False, f"{host}:{port} health check failed: {exc}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return (
        reply.status == health_pb2.HealthCheckResponse.SERVING,
        f"{host}:{port} {service or '(server)'}: {status}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=None, help="gRPC port (default: $SFHQ_PORT)")
    parser.add_argument("--service", default="", help="health service name; empty = the whole server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    parser.add_argument(
        "--server-name", default="localhost", help="TLS: the name the server certificate was issued for"
    )
    parser.add_argument(
        "--ca",
        default="",
        help="TLS: PEM file of the CA that signed the server certificate "
        "(default: $SFHQ_TLS_CA, else the certificate itself)",
    )
    args = parser.parse_args(argv)
    try:
        port = _port(args.port, dict(os.environ))
        healthy, description = check(
            port, service=args.service, timeout_s=args.timeout, server_name=args.server_name, ca_file=args.ca
        )
    except ProbeConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return EXIT_UNHEALTHY
    print(description, file=sys.stdout if healthy else sys.stderr)
    return EXIT_HEALTHY if healthy else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
