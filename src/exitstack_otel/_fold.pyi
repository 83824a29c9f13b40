# The in-process histograms' fold of a batch, compiled (_fold.c); sdk_histograms.py documents it.
from typing import Any

def fold_batch(
    values: list[Any], boundaries: tuple[float, ...], counts: list[int], start_sum: Any, /
) -> tuple[Any, Any, Any] | None: ...
