"""``python -m runtime``: serve models; ``python -m runtime profile``: profile them."""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if argv and argv[0] == "profile":
        from runtime.profile_cli import main as profile_main

        return profile_main(argv[1:])
    from runtime.config import parse_args

    cfg, unknown = parse_args(argv)
    if unknown:
        logging.getLogger("runtime").warning("ignoring unknown arguments: %s", unknown)
    # kserve reads sys.argv when imported; give it only what it understands
    sys.argv = [sys.argv[0], "--http_port", str(cfg.http_port), "--grpc_port", str(cfg.grpc_port)]
    from runtime.serve import main as serve_main

    return serve_main(cfg)


if __name__ == "__main__":
    sys.exit(main())
