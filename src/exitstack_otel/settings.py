"""Options from environment variables, for apps run under ``opentelemetry-instrument``.

The names follow opentelemetry-python-contrib's instrumentations (``OTEL_PYTHON_FASTAPI_EXCLUDED_URLS``,
``OTEL_PYTHON_LOG_CORRELATION``): ``OTEL_PYTHON_`` and the instrumentation's name. Only variables that
are set appear in the result, so that ``{**options_from_environment(), **explicit}`` lets explicit
keyword arguments win and leaves every other option at its default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Final

CALLBACK_SPANS: Final = "OTEL_PYTHON_EXITSTACK_CALLBACK_SPANS"
SLOW_CALLBACK_THRESHOLD: Final = "OTEL_PYTHON_EXITSTACK_SLOW_CALLBACK_THRESHOLD"
CALLBACK_TIMEOUT: Final = "OTEL_PYTHON_EXITSTACK_CALLBACK_TIMEOUT"
MAX_CALLBACK_NAMES: Final = "OTEL_PYTHON_EXITSTACK_MAX_CALLBACK_NAMES"


def _callback_spans(text: str) -> str:
    value = text.lower()
    if value not in ("all", "problems"):
        raise ValueError("unknown value")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError("not a number of seconds")
    return value


def _threshold(text: str) -> float:
    value = _seconds(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _timeout(text: str) -> float | None:
    if text.lower() == "none":
        return None
    value = _seconds(text)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _names(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("not a whole number") from None
    if value < 1:
        raise ValueError("must be at least 1")
    return value


# variable -> (keyword, parser, what it accepts: for the error message)
_VARIABLES: Final[dict[str, tuple[str, Callable[[str], object], str]]] = {
    CALLBACK_SPANS: ("callback_spans", _callback_spans, "'all' or 'problems'"),
    SLOW_CALLBACK_THRESHOLD: ("slow_callback_threshold", _threshold, "a number of seconds >= 0, e.g. 0.1"),
    CALLBACK_TIMEOUT: ("callback_timeout", _timeout, "a number of seconds > 0, e.g. 5, or 'none'"),
    MAX_CALLBACK_NAMES: ("max_callback_names", _names, "a whole number >= 1, e.g. 200"),
}


def options_from_environment(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The options the ``OTEL_PYTHON_EXITSTACK_*`` variables set, as keyword arguments.

    An empty variable counts as unset. A bad value raises ``ValueError`` naming the variable, its
    value and what it accepts: a misspelt setting stops startup instead of being ignored.
    """
    env = os.environ if environ is None else environ
    options: dict[str, object] = {}
    for variable, (keyword, parse, accepted) in _VARIABLES.items():
        text = env.get(variable, "").strip()
        if not text:
            continue
        try:
            options[keyword] = parse(text)
        except ValueError as exc:
            raise ValueError(f"{variable}={text!r} is not valid ({exc}): it accepts {accepted}") from None
    return options
