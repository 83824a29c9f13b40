"""One variant behind a real uvicorn server: ``python -m benchmarks.server VARIANT PORT``."""

from __future__ import annotations

import sys

import uvicorn

from .variants import VARIANTS_BY_NAME


def main() -> None:
    variant, port = sys.argv[1], int(sys.argv[2])
    app, sdk = VARIANTS_BY_NAME[variant].build()
    try:
        # the h11 parser on asyncio, whatever else is installed (uvicorn[standard] would pick uvloop and
        # httptools): the baseline and every variant in the same shape
        uvicorn.run(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off",
            loop="asyncio", http="h11",
        )  # fmt: skip
    finally:
        sdk.shutdown()


if __name__ == "__main__":
    main()
