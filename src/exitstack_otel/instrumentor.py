"""``ExitStackInstrumentor``: ``opentelemetry-instrument`` support, no code change in the app.

Starlette apps that use ``ExitStackMiddleware`` need nothing from here: the middleware reads the
global providers per request, and ``opentelemetry-instrument`` sets them. What needs patching is
FastAPI, whose own three request stacks are plain contextlib until ``exitstack_otel.fastapi``
instruments them; this does that for every FastAPI app built while it is instrumented.

It also makes a process stopped by SIGTERM report what it measured. The SDK flushes its providers
at interpreter exit (atexit), but uvicorn, after its graceful shutdown, raises the signal again with
the default action restored, and the default action of SIGTERM ends the process without atexit: a
worker of ``uvicorn --workers N`` that is stopped or replaced would lose everything since its last
export (up to the SDK's 60 s interval). Where nothing else handles SIGTERM, the instrumentor's
handler flushes the global providers first, then lets the signal end the process as before.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Collection
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from .options import OPTION_NAMES, TelemetryOptions, unknown_options
from .package import _instruments
from .providers import TelemetrySource
from .settings import options_from_environment

if TYPE_CHECKING:
    from opentelemetry import metrics, trace

_logger = logging.getLogger(__name__)

# a collector that does not answer must not hold up the exit for longer than this, per provider
FLUSH_TIMEOUT_MILLIS: Final = 5_000


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
        _flush_before_sigterm_exit()
        _warn_without_instance_id(tracer_provider)

    def _uninstrument(self, **kwargs: Any) -> None:
        from .fastapi import uninstrument_all_apps

        uninstrument_all_apps()
        if signal.getsignal(signal.SIGTERM) is _flush_then_exit:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _warn_without_instance_id(tracer_provider: trace.TracerProvider | None) -> None:
    # the exporter extras require an SDK that sets service.instance.id (1.43); an application that
    # brings an older one of its own gets every worker of a multi-worker server into one series
    from opentelemetry import trace

    provider = tracer_provider or trace.get_tracer_provider()
    resource = getattr(provider, "resource", None)
    attributes = getattr(resource, "attributes", None)
    if attributes is not None and "service.instance.id" not in attributes:
        _logger.warning(
            "exitstack-otel: the OpenTelemetry resource has no service.instance.id; the workers of one "
            "server will write into the same series. Use opentelemetry-sdk 1.43 or newer, or set a "
            "unique service.instance.id per process."
        )


def flush_providers() -> None:
    """Export what the global meter and tracer providers hold (SDK providers; the API's no-op ones
    have nothing to flush). A failing exporter is logged, never raised into the exit."""
    from opentelemetry import metrics, trace

    for provider in (metrics.get_meter_provider(), trace.get_tracer_provider()):
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is None:
            continue
        try:
            force_flush(timeout_millis=FLUSH_TIMEOUT_MILLIS)
        except Exception:
            _logger.exception("exitstack-otel: flushing %s at SIGTERM failed", type(provider).__name__)


def _flush_then_exit(signum: int, frame: FrameType | None) -> None:
    signal.signal(signum, signal.SIG_DFL)
    flush_providers()
    signal.raise_signal(signum)  # the default action: the process ends by the signal, as before


def _flush_before_sigterm_exit() -> None:
    # only where SIGTERM has its default action: an application's or a server's own handler is
    # theirs (uvicorn installs its own while serving and puts this one back before re-raising)
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _flush_then_exit)


def _option_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # opentelemetry-instrument passes nothing; a caller's unknown keyword is a mistake worth naming
    unknown = unknown_options(kwargs)
    if unknown:
        raise TypeError(
            f"ExitStackInstrumentor.instrument() got unknown keyword(s) {unknown}; "
            f"accepted: tracer_provider, meter_provider, {', '.join(sorted(OPTION_NAMES))}"
        )
    return kwargs
