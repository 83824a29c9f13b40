"""Options from environment variables, for apps run under ``opentelemetry-instrument``.

The names follow opentelemetry-python-contrib's instrumentations (``OTEL_PYTHON_FASTAPI_EXCLUDED_URLS``,
``OTEL_PYTHON_LOG_CORRELATION``): ``OTEL_PYTHON_`` and the instrumentation's name. Only variables that
are set appear in the result, so that ``{**options_from_environment(), **explicit}`` lets explicit
keyword arguments win and leaves every other option at its default.

A value that cannot be used is handled as OpenTelemetry's specification for environment variables
asks: one warning, naming the variable, its value and the default used instead, and the default
applies. A typo in a deployment's settings must not take the service down (or, under
``opentelemetry-instrument``, stop it starting); values passed in code are still refused
(``TelemetryOptions``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from .options import TelemetryOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import OptionFields

logger = logging.getLogger(__name__)

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

    An empty variable counts as unset. A bad value is left out (its option keeps its default) and
    logged once per process as a warning naming the variable, its value, what it accepts and the
    default used.
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
            _warn_once(variable, text, f"{exc}; it accepts {accepted}", _default_text(keyword))
    return options


def _default_text(keyword: str) -> str:
    default = getattr(TelemetryOptions(), keyword)
    return "none" if default is None else str(default)


# (variable, value) pairs already warned about: the middleware, instrument_fastapi and the
# instrumentor may each read the same environment, and one mistake is worth one line
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_once(variable: str, text: str, reason: str, default: str) -> None:
    with _warned_lock:
        if (variable, text) in _warned:
            return
        _warned.add((variable, text))
    logger.warning(
        "exitstack-otel ignores %s=%r (%s) and uses the default, %s",
        variable,
        text,
        reason,
        default,
    )


def build_options(
    options: TelemetryOptions | None = None, **overrides: Unpack[OptionFields]
) -> TelemetryOptions:
    """``options`` with the keyword arguments given explicitly put over it. Without ``options``,
    the ``OTEL_PYTHON_EXITSTACK_*`` environment variables over the defaults (README: Settings),
    read once, when the app is built."""
    if options is None:
        options = TelemetryOptions(**options_from_environment())  # type: ignore[arg-type]
    return dataclasses.replace(options, **overrides) if overrides else options
