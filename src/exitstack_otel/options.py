"""``TelemetryOptions``: what to record and how, accepted by every entry point; defaults live here only."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    pass

CallbackNamer = Callable[[object, str], "str | None"]
"""``namer(target, kind)``: a name for a callback, or None for the default.

``target`` is the function given to ``callback``/``push_async_callback``, the exit callable given
to ``push``/``push_async_exit``, or the context manager object of ``enter_context``/
``enter_async_context``; ``kind`` is its ``exitstack.callback.kind``.
"""

CallbackSpans = Literal["all", "problems"]


@dataclass(frozen=True)
class TelemetryOptions:
    """How much to record. The defaults suit a production service."""

    callback_spans: CallbackSpans = "problems"
    """``"problems"``: spans only for unwinds in which a callback failed, was cancelled, timed out
    or took at least ``slow_callback_threshold``, made once the unwind is over, with one span for
    each such callback; ``"all"``: a live unwind span (spans made by cleanup code nest under it), a
    span for every callback and a span event for every push."""
    slow_callback_threshold: float = 0.1
    max_callback_names: int = 200
    callback_namer: CallbackNamer | None = None
    callback_timeout: float | None = None
    """Seconds after which an async exit callback is cancelled (``CallbackTimeoutError``); None: never."""
    hung_callback_warning: float | None = 30.0
    """Seconds after which a callback still running is logged as a warning (once); None: never."""
    report_framework_callbacks: bool = False
    """Also report the callbacks FastAPI pushes for its own bookkeeping (the dependency cancel
    scope and its ``dict.pop``). They run either way."""

    def __post_init__(self) -> None:
        hung = self.hung_callback_warning
        if hung is not None and (not _is_number(hung) or not hung > 0):
            raise ValueError(
                f"hung_callback_warning must be a finite positive number of seconds or None, not {hung!r}"
            )
        if self.callback_spans not in ("all", "problems"):
            raise ValueError(f"callback_spans must be 'all' or 'problems', not {self.callback_spans!r}")
        threshold = self.slow_callback_threshold
        if not _is_number(threshold) or threshold < 0:
            raise ValueError(
                f"slow_callback_threshold must be a finite number of seconds >= 0, not {threshold!r}"
            )
        if isinstance(self.max_callback_names, bool) or not isinstance(self.max_callback_names, int):
            raise ValueError(f"max_callback_names must be an integer, not {self.max_callback_names!r}")
        if self.max_callback_names < 1:
            raise ValueError("max_callback_names must be at least 1")
        timeout = self.callback_timeout
        if timeout is not None and (not _is_number(timeout) or not timeout > 0):
            raise ValueError(
                f"callback_timeout must be a finite positive number of seconds or None, not {timeout!r}"
            )


class OptionFields(TypedDict, total=False):
    """The fields of ``TelemetryOptions`` as keyword arguments, for signatures that accept them."""

    callback_spans: CallbackSpans
    slow_callback_threshold: float
    max_callback_names: int
    callback_namer: CallbackNamer | None
    callback_timeout: float | None
    hung_callback_warning: float | None
    report_framework_callbacks: bool


OPTION_NAMES = frozenset(field.name for field in dataclasses.fields(TelemetryOptions))


def unknown_options(kwargs: Mapping[str, Any]) -> list[str]:
    return sorted(set(kwargs) - OPTION_NAMES)


def _is_number(value: object) -> bool:
    # finite: NaN passes no comparison's refusal (NaN < 0 is False) and an infinite duration is
    # no duration; both are refused wherever a number of seconds is taken
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
