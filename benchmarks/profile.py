"""``python -m benchmarks.profile VARIANT [CALLBACKS] [REQUESTS]``: where one variant's time goes.

pyinstrument's call tree over in-process requests, after a warm-up; the SDK's own frames are
folded into the call that entered them.
"""

from __future__ import annotations

import asyncio
import sys

from pyinstrument import Profiler

from .inprocess import call_app
from .variants import VARIANTS_BY_NAME


async def _profile(variant: str, callbacks: int, requests: int) -> str:
    app, sdk = VARIANTS_BY_NAME[variant].build()
    shape = VARIANTS_BY_NAME[variant].shape
    try:
        for _ in range(max(requests // 10, 1)):
            await call_app(app, callbacks, shape)
        profiler = Profiler(interval=0.0001, async_mode="disabled")
        profiler.start()
        for _ in range(requests):
            await call_app(app, callbacks, shape)
        profiler.stop()
    finally:
        sdk.shutdown()
    return profiler.output_text(unicode=False, color=False, show_all=False)


def main(argv: list[str]) -> str:
    variant = argv[0]
    callbacks = int(argv[1]) if len(argv) > 1 else 3
    requests = int(argv[2]) if len(argv) > 2 else 20_000
    text = asyncio.run(_profile(variant, callbacks, requests))
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
