"""Which ``Telemetry`` a new stack gets, looked up per request.

Applications often configure the SDK after building the app (``opentelemetry-instrument`` does),
so the global providers are read for every stack, not once; the answer is cached for as long as
the providers stay the same objects, which makes the per-request cost two global reads and two
comparisons.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.environment_variables import OTEL_PYTHON_METER_PROVIDER, OTEL_PYTHON_TRACER_PROVIDER

from .internals import API_GLOBALS
from .options import TelemetryOptions
from .telemetry import Telemetry, logger

# The API's getters look the provider variables up in os.environ on every call while no provider
# is set, which alone cost more than our whole no-SDK budget (benchmarks/RESULTS.md). Reading the API's
# module globals gives the same answer; the getters still run when a variable names a provider,
# so that they load it as they would, and always when this API release keeps its globals elsewhere
# (internals.API_GLOBALS is None then).
_PRIVATE_GLOBALS = API_GLOBALS is not None
metrics_internal: Any = API_GLOBALS[1] if API_GLOBALS is not None else None
_READ_TRACER_GLOBAL = _PRIVATE_GLOBALS and OTEL_PYTHON_TRACER_PROVIDER not in os.environ
_READ_METER_GLOBAL = _PRIVATE_GLOBALS and OTEL_PYTHON_METER_PROVIDER not in os.environ


def global_tracer_provider() -> trace.TracerProvider:
    if not _READ_TRACER_GLOBAL:
        return trace.get_tracer_provider()
    provider = trace._TRACER_PROVIDER  # private: see above
    return provider if provider is not None else trace._PROXY_TRACER_PROVIDER


def global_meter_provider() -> metrics.MeterProvider:
    if not _READ_METER_GLOBAL:
        return metrics.get_meter_provider()
    provider: metrics.MeterProvider | None = metrics_internal._METER_PROVIDER  # private: see above
    return provider if provider is not None else metrics_internal._PROXY_METER_PROVIDER


_NOT_READ = object()


class TelemetrySource:
    """Telemetry for explicit providers, or for whichever global ones are set at the time."""

    __slots__ = (
        "_cached",
        "_fixed",
        "_global_seen",
        "_meter_provider",
        "_options",
        "_reads_globals",
        "_tracer_provider",
    )

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        options: TelemetryOptions | None = None,
    ) -> None:
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._options = options or TelemetryOptions()
        self._cached: tuple[object, object, Telemetry | None] | None = None
        # both providers given: what they make is decided once, at the first request
        self._fixed = tracer_provider is not None and meter_provider is not None
        # Both providers the globals, read as the API's module globals: the per-request check is
        # then two global reads against what they held last time (None until one is set).
        self._reads_globals = (
            tracer_provider is None and meter_provider is None and _READ_TRACER_GLOBAL and _READ_METER_GLOBAL
        )
        self._global_seen: tuple[object, object, Telemetry | None] = (_NOT_READ, _NOT_READ, None)

    @property
    def options(self) -> TelemetryOptions:
        return self._options

    @property
    def tracer_provider(self) -> trace.TracerProvider | None:
        """The explicit tracer provider, None for the global one."""
        return self._tracer_provider

    @property
    def meter_provider(self) -> metrics.MeterProvider | None:
        """The explicit meter provider, None for the global one."""
        return self._meter_provider

    def current(self) -> Telemetry | None:
        if self._reads_globals:
            seen = self._global_seen
            if seen[0] is trace._TRACER_PROVIDER and seen[1] is metrics_internal._METER_PROVIDER:
                return seen[2]
            tracer_global = trace._TRACER_PROVIDER  # private: see above
            meter_global = metrics_internal._METER_PROVIDER
            telemetry = self._resolve()
            self._global_seen = (tracer_global, meter_global, telemetry)
            return telemetry
        cached = self._cached
        if self._fixed and cached is not None:
            return cached[2]
        return self._resolve()

    def _resolve(self) -> Telemetry | None:
        # the two getters above, written out: two calls fewer per request
        tracer_provider = self._tracer_provider
        if tracer_provider is None:
            if _READ_TRACER_GLOBAL:
                tracer_provider = trace._TRACER_PROVIDER  # private: see above
                if tracer_provider is None:  # not "or": a provider may define __len__ or __bool__
                    tracer_provider = trace._PROXY_TRACER_PROVIDER
            else:
                tracer_provider = trace.get_tracer_provider()
        meter_provider = self._meter_provider
        if meter_provider is None:
            if _READ_METER_GLOBAL:
                meter_provider = metrics_internal._METER_PROVIDER
                if meter_provider is None:
                    meter_provider = metrics_internal._PROXY_METER_PROVIDER
            else:
                meter_provider = metrics.get_meter_provider()
        cached = self._cached
        if cached is not None and cached[0] is tracer_provider and cached[1] is meter_provider:
            return cached[2]
        try:
            telemetry = Telemetry.create(tracer_provider, meter_provider, self._options)
        except Exception:
            # a provider that cannot make a tracer or meter turns telemetry off, not the app
            logger.exception("exitstack-otel telemetry disabled: the tracer or meter provider failed")
            telemetry = None
        self._cached = (tracer_provider, meter_provider, telemetry)
        return telemetry


_sources: dict[TelemetryOptions, TelemetrySource] = {}


def current_telemetry(
    tracer_provider: trace.TracerProvider | None,
    meter_provider: metrics.MeterProvider | None,
    options: TelemetryOptions,
) -> Telemetry | None:
    """Telemetry for stacks made without an explicit one (``InstrumentedAsyncExitStack()``)."""
    if tracer_provider is not None or meter_provider is not None:
        return TelemetrySource(tracer_provider, meter_provider, options).current()
    source = _sources.get(options)
    if source is None:
        source = _sources[options] = TelemetrySource(options=options)
    return source.current()
