"""Starts one service by name: `sfhq serve <name>` and the containers call this."""

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


def serve_service(name: str, settings: Settings) -> None:
    configure_logging(settings.log_level, name)
    module = importlib.import_module(SERVICES[name])
    module.main(settings)


def main(argv: list[str] | None = None) -> None:
    """`python -m services.launch NAME`: what `sfhq serve NAME` runs, without the CLI."""
    from services.common.config import get_settings

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in SERVICES:
        sys.exit(f"usage: python -m services.launch {{{'|'.join(SERVICES)}}}")
    serve_service(args[0], get_settings())


if __name__ == "__main__":
    main()
