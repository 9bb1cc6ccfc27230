"""Starts a service by name: `sfhq serve <name>` and the containers call this.

Several model services can share one process (and one GPU): `sfhq serve encoder,search,annotator`.
"""

from __future__ import annotations

import importlib
import logging
import sys

from services.common.config import Settings

# service name -> module with `main(settings)`
SERVICES: dict[str, str] = {
    "gateway": "gateway.server",
    "encoder": "services.encoder.service",
    "generator": "services.generator.service",
    "annotator": "services.annotator.service",
    "search": "services.search.service",
}


def configure_logging(level: str, service: str) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"
    )


# Services that can share a process: each has `build_process(settings)` (the gateway stays alone).
MODEL_SERVICES = ("encoder", "generator", "annotator", "search")


def service_names(spec: str) -> list[str]:
    """`"encoder,search"` → the names; raises ValueError naming what is not allowed."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in SERVICES]
    if not names or unknown:
        raise ValueError(f"unknown service {', '.join(unknown) or spec!r}; choose from {', '.join(SERVICES)}")
    if len(names) > 1 and not set(names) <= set(MODEL_SERVICES):
        raise ValueError(
            f"only the model services share a process ({', '.join(MODEL_SERVICES)}), got {spec!r}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"a service is named twice in {spec!r}")
    return names


def serve_service(name: str, settings: Settings) -> None:
    names = service_names(name)
    configure_logging(settings.log_level, "+".join(names))
    if len(names) == 1:
        importlib.import_module(SERVICES[names[0]]).main(settings)
        return
    from services.common.server import run_services

    run_services([importlib.import_module(SERVICES[n]).build_process for n in names], settings)


def main(argv: list[str] | None = None) -> None:
    """`python -m services.launch NAME`: what `sfhq serve NAME` runs, without the CLI."""
    from services.common.config import get_settings

    args = sys.argv[1:] if argv is None else argv
    try:
        service_names(args[0] if len(args) == 1 else "")
    except ValueError as error:
        sys.exit(f"usage: python -m services.launch {{{'|'.join(SERVICES)}}}[,...]: {error}")
    serve_service(args[0], get_settings())


if __name__ == "__main__":
    main()
