"""One variant behind a real uvicorn server: ``python -m benchmarks.server VARIANT PORT [SHAPE]``.

SHAPE is the event loop and HTTP parser, named explicitly rather than left to uvicorn's ``auto``
(which picks uvloop and httptools when they are installed): a baseline and a variant measured in
different shapes are no comparison, so every server of a comparison is started in the same one.
"""

from __future__ import annotations

import importlib.util
import sys

import uvicorn

from .variants import VARIANTS_BY_NAME

# name -> (loop, http, the modules it needs)
SHAPES = {
    "standard": ("uvloop", "httptools", ("uvloop", "httptools")),  # what uvicorn[standard] installs
    "h11": ("asyncio", "h11", ("h11",)),
}
DEFAULT_SHAPE = "h11"


def missing(shape: str) -> list[str]:
    """The modules ``shape`` needs that cannot be imported here."""
    return [name for name in SHAPES[shape][2] if importlib.util.find_spec(name) is None]


def main() -> None:
    variant, port = sys.argv[1], int(sys.argv[2])
    shape = sys.argv[3] if len(sys.argv) > 3 else DEFAULT_SHAPE
    loop, http, _ = SHAPES[shape]
    app, sdk = VARIANTS_BY_NAME[variant].build()
    try:
        uvicorn.run(
            app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off",
            loop=loop, http=http,
        )  # fmt: skip
    finally:
        sdk.shutdown()


if __name__ == "__main__":
    main()
