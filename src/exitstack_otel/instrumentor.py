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

from .options import OPTION_NAMES, TelemetryOptions, unknown_options
from .package import _instruments
from .providers import TelemetrySource
from .settings import options_from_environment

if TYPE_CHECKING:
    from opentelemetry import metrics, trace


class ExitStackInstrumentor(BaseInstrumentor):  # type: ignore[misc]  # the base class is untyped
    """``ExitStackInstrumentor().instrument(tracer_provider=..., meter_provider=...)``; both optional.

    Further keyword arguments are the ``TelemetryOptions`` fields (``callback_spans``, ...); they win
    over the ``OTEL_PYTHON_EXITSTACK_*`` environment variables (``exitstack_otel.settings``). A bad
    keyword value raises; a bad variable is logged and its default used, so that a deployment's typo
    never stops ``opentelemetry-instrument`` starting the service.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        tracer_provider: trace.TracerProvider | None = kwargs.pop("tracer_provider", None)
        meter_provider: metrics.MeterProvider | None = kwargs.pop("meter_provider", None)
        options = TelemetryOptions(**{**options_from_environment(), **_option_kwargs(kwargs)})
        # BaseInstrumentor.instrument() has checked that FastAPI is installed (``_instruments``)
        from .fastapi import instrument_all_apps

        instrument_all_apps(TelemetrySource(tracer_provider, meter_provider, options))

    def _uninstrument(self, **kwargs: Any) -> None:
        from .fastapi import uninstrument_all_apps

        uninstrument_all_apps()


def _option_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # opentelemetry-instrument passes nothing; a caller's unknown keyword is a mistake worth naming
    unknown = unknown_options(kwargs)
    if unknown:
        raise TypeError(
            f"ExitStackInstrumentor.instrument() got unknown keyword(s) {unknown}; "
            f"accepted: tracer_provider, meter_provider, {', '.join(sorted(OPTION_NAMES))}"
        )
    return kwargs
