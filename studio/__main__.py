"""`python -m studio`: what `sfhq serve studio` runs (the local cluster starts it this way)."""

from __future__ import annotations

import logging
import sys

from studio.app import serve


def main() -> None:
    logging.basicConfig(
        level="INFO", stream=sys.stderr, format="%(asctime)s studio %(levelname)s %(name)s: %(message)s"
    )
    serve()


if __name__ == "__main__":
    main()
