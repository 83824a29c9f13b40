from __future__ import annotations

import math
from dataclasses import dataclass

APPS = ("starlette", "fastapi")  # the demo app in either framework


@dataclass(frozen=True)
class DemoSettings:
    pool_size: int = 8
    slow_seconds: float = 0.25  # above the default slow_callback_threshold, so slow flushes get spans
    stream_rows: int = 50

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if not (math.isfinite(self.slow_seconds) and self.slow_seconds >= 0):
            raise ValueError(f"slow_seconds must be a finite number >= 0, not {self.slow_seconds}")
        if self.stream_rows < 1:
            raise ValueError("stream_rows must be at least 1")
