"""Request-scoped cleanup in ASGI apps, made visible as OpenTelemetry spans and metrics."""

from .forms import read_form
from .middleware import DEFAULT_SCOPE_KEY, ExitStackMiddleware, get_exit_stack
from .stack import InstrumentedAsyncExitStack
from .telemetry import CallbackNamer, TelemetryOptions
from .version import __version__

__all__ = [
    "DEFAULT_SCOPE_KEY",
    "CallbackNamer",
    "ExitStackMiddleware",
    "InstrumentedAsyncExitStack",
    "TelemetryOptions",
    "__version__",
    "get_exit_stack",
    "read_form",
]
