"""Every span, metric and attribute name of the telemetry contract (docs/telemetry.md).

Nothing else in the package spells one of these strings; dashboards, alert rules and tests
follow the same document, and tests/test_semconv.py checks that they agree with this module.
"""

from __future__ import annotations

from typing import Final

SCOPE_NAME: Final = "exitstack_otel"

# Spans and events
SPAN_UNWIND: Final = "exitstack.unwind"
SPAN_CALLBACK: Final = "exitstack.callback"  # the span is named "exitstack.callback {name}"
EVENT_PUSH: Final = "exitstack.push"
# OpenTelemetry's own exception event, written by hand when the SDK cannot render an exception
EVENT_EXCEPTION: Final = "exception"
EXCEPTION_TYPE: Final = "exception.type"
EXCEPTION_MESSAGE: Final = "exception.message"

# Attributes
STACK_NAME: Final = "exitstack.stack.name"
STACK_DEPTH: Final = "exitstack.stack.depth"
CALLBACK_NAME: Final = "exitstack.callback.name"
CALLBACK_KIND: Final = "exitstack.callback.kind"
CALLBACK_OUTCOME: Final = "exitstack.callback.outcome"
CALLBACK_COUNT: Final = "exitstack.callback.count"
CALLBACK_FAILED: Final = "exitstack.callback.failed"
UNWIND_OUTCOME: Final = "exitstack.unwind.outcome"
ERROR_TYPE: Final = "error.type"
HTTP_ROUTE: Final = "http.route"
HTTP_REQUEST_METHOD: Final = "http.request.method"

# Values of exitstack.callback.kind
KIND_CALLBACK: Final = "callback"
KIND_ASYNC_CALLBACK: Final = "async_callback"
KIND_EXIT: Final = "exit"
KIND_ASYNC_EXIT: Final = "async_exit"
KIND_CONTEXT: Final = "context"
KIND_ASYNC_CONTEXT: Final = "async_context"
KINDS: Final = (
    KIND_CALLBACK,
    KIND_ASYNC_CALLBACK,
    KIND_EXIT,
    KIND_ASYNC_EXIT,
    KIND_CONTEXT,
    KIND_ASYNC_CONTEXT,
)

# Values of exitstack.callback.outcome and exitstack.unwind.outcome
OUTCOME_OK: Final = "ok"
OUTCOME_ERROR: Final = "error"
OUTCOME_SUPPRESSED: Final = "suppressed"  # an exit callback swallowed the pending exception
OUTCOME_CANCELLED: Final = "cancelled"
OUTCOME_TIMEOUT: Final = "timeout"  # abandoned after the configured callback timeout
OUTCOMES: Final = (
    OUTCOME_OK,
    OUTCOME_ERROR,
    OUTCOME_SUPPRESSED,
    OUTCOME_CANCELLED,
    OUTCOME_TIMEOUT,
)

# Value that replaces callback names beyond the cardinality cap
OTHER_NAME: Final = "_OTHER"

# Metrics: name, instrument, unit.
CALLBACK_PUSHED: Final = "exitstack.callback.pushed"  # Counter (observable), {callback}
CALLBACK_DURATION: Final = "exitstack.callback.duration"  # Histogram, s
UNWIND_DURATION: Final = "exitstack.unwind.duration"  # Histogram, s
UNWIND_CALLBACKS: Final = "exitstack.unwind.callbacks"  # Histogram, {callback}
UNWIND_ACTIVE: Final = "exitstack.unwind.active"  # UpDownCounter (observable), {unwind}
METRICS: Final = (
    CALLBACK_PUSHED,
    CALLBACK_DURATION,
    UNWIND_DURATION,
    UNWIND_CALLBACKS,
    UNWIND_ACTIVE,
)

UNIT_CALLBACK: Final = "{callback}"
UNIT_UNWIND: Final = "{unwind}"
UNIT_SECONDS: Final = "s"

# Cleanup ranges from a file close (tens of microseconds) to a slow network release (seconds);
# the SDK's default buckets start at 5 (milliseconds, read as seconds here) and would lump it all.
DURATION_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
CALLBACK_COUNT_BUCKETS: Final = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)
