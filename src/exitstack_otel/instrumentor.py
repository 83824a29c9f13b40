"""``ExitStackInstrumentor``: ``opentelemetry-instrument`` support, no code change in the app.

Starlette apps that use ``ExitStackMiddleware`` need nothing from here: the middleware reads the
global providers per request, and ``opentelemetry-instrument`` sets them. What needs patching is
FastAPI, whose own three request stacks are plain contextlib until ``exitstack_otel.fastapi``
instruments them; this does that for every FastAPI app built while it is instrumented.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .package import _instruments
from .providers import TelemetrySource
from .telemetry import TelemetryOptions

if TYPE_CHECKING:
    from opentelemetry import metrics, trace


class ExitStackInstrumentor(BaseInstrumentor):  # type: ignore[misc]  # the base class is untyped
    """``ExitStackInstrumentor().instrument(tracer_provider=..., meter_provider=...)``; both optional.

    Further keyword arguments are the ``TelemetryOptions`` fields (``callback_spans``, ...).
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        tracer_provider: trace.TracerProvider | None = kwargs.pop("tracer_provider", None)
        meter_provider: metrics.MeterProvider | None = kwargs.pop("meter_provider", None)
        options = TelemetryOptions(**_option_kwargs(kwargs))
        # BaseInstrumentor.instrument() has checked that FastAPI is installed (``_instruments``)
        from .fastapi import instrument_all_apps

        instrument_all_apps(TelemetrySource(tracer_provider, meter_provider, options))

    def _uninstrument(self, **kwargs: Any) -> None:
        from .fastapi import uninstrument_all_apps

        uninstrument_all_apps()


_OPTION_NAMES = frozenset(TelemetryOptions.__dataclass_fields__)


def _option_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # opentelemetry-instrument passes nothing; a caller's unknown keyword is a mistake worth naming
    unknown = set(kwargs) - _OPTION_NAMES
    if unknown:
        raise TypeError(
            f"ExitStackInstrumentor.instrument() got unknown keyword(s) {sorted(unknown)}; "
            f"accepted: tracer_provider, meter_provider, {', '.join(sorted(_OPTION_NAMES))}"
        )
    return kwargs
