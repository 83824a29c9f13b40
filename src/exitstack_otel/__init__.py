"""Request-scoped cleanup in ASGI apps, made visible as OpenTelemetry spans and metrics."""

from .forms import read_form
from .middleware import DEFAULT_SCOPE_KEY, ExitStackMiddleware, get_exit_stack
from .options import CallbackNamer, TelemetryOptions
from .shield import wait_for_unwinds
from .stack import CallbackTimeoutError, InstrumentedAsyncExitStack
from .version import __version__

__all__ = [
    "DEFAULT_SCOPE_KEY",
    "CallbackNamer",
    "CallbackTimeoutError",
    "ExitStackMiddleware",
    "InstrumentedAsyncExitStack",
    "TelemetryOptions",
    "__version__",
    "get_exit_stack",
    "read_form",
    "wait_for_unwinds",
]
