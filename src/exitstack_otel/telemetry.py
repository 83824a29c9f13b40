"""Turns pushes, executed callbacks and unwinds into the spans and metrics of docs/telemetry.md.

Cost matters: this runs per request and per callback. Attribute dictionaries are built once per
(stack, callback name, kind, outcome); counts that need no distribution (pushed, in progress) are
plain integers read by observable instruments at collection time; nothing is created for a
provider that is the API's no-op.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, NoOpMeterProvider, Observation
from opentelemetry.metrics._internal import _ProxyMeterProvider  # the API's not-yet-set global
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from . import naming, semconv
from .version import __version__

logger = logging.getLogger("exitstack_otel")

CallbackNamer = Callable[[object, str], "str | None"]
"""``namer(target, kind)``: a name for a callback, or None for the default.

``target`` is the function given to ``callback``/``push_async_callback``, the exit callable given
to ``push``/``push_async_exit``, or the context manager object of ``enter_context``/
``enter_async_context``; ``kind`` is its ``exitstack.callback.kind``.
"""

CallbackSpans = Literal["all", "problems"]

Attributes = Mapping[str, AttributeValue]

_FAILED_OUTCOMES = frozenset({semconv.OUTCOME_ERROR, semconv.OUTCOME_CANCELLED, semconv.OUTCOME_TIMEOUT})


@dataclass(frozen=True)
class TelemetryOptions:
    """How much to record. The defaults suit a production service."""

    callback_spans: CallbackSpans = "problems"
    """``"problems"``: a callback span only for callbacks that fail, are cancelled, time out or
    take at least ``slow_callback_threshold``; ``"all"``: a span for every callback and a span
    event for every push."""
    slow_callback_threshold: float = 0.1
    max_callback_names: int = 200
    callback_namer: CallbackNamer | None = None

    def __post_init__(self) -> None:
        if self.callback_spans not in ("all", "problems"):
            raise ValueError(f"callback_spans must be 'all' or 'problems', not {self.callback_spans!r}")
        if self.slow_callback_threshold < 0:
            raise ValueError("slow_callback_threshold must be >= 0 seconds")
        if self.max_callback_names < 1:
            raise ValueError("max_callback_names must be at least 1")


class _Count:
    __slots__ = ("value", "attributes")

    def __init__(self, attributes: Attributes) -> None:
        self.value = 0
        self.attributes = attributes


class CallbackInfo:
    """What is known of one (stack, callback name, kind) when it is pushed; shared by pushes."""

    __slots__ = ("name", "kind", "span_name", "pushed", "outcome_attributes", "push_event_attributes")

    def __init__(self, stack_name: str, name: str, kind: str, pushed: _Count) -> None:
        self.name = name
        self.kind = kind
        self.span_name = f"{semconv.SPAN_CALLBACK} {name}"
        self.pushed = pushed
        base = {semconv.STACK_NAME: stack_name, semconv.CALLBACK_NAME: name, semconv.CALLBACK_KIND: kind}
        self.outcome_attributes: dict[tuple[str, str | None], Attributes] = {
            (outcome, None): {**base, semconv.CALLBACK_OUTCOME: outcome}
            for outcome in (semconv.OUTCOME_OK, semconv.OUTCOME_SUPPRESSED)
        }
        self.push_event_attributes = {semconv.CALLBACK_NAME: name, semconv.CALLBACK_KIND: kind}

    def attributes(self, outcome: str, error_type: str | None) -> Attributes:
        key = (outcome, error_type)
        found = self.outcome_attributes.get(key)
        if found is None:
            found = dict(self.outcome_attributes[(semconv.OUTCOME_OK, None)])
            found[semconv.CALLBACK_OUTCOME] = outcome
            if error_type is not None:
                found[semconv.ERROR_TYPE] = error_type
            if len(self.outcome_attributes) < 64:  # error types come from code, but stay bounded
                self.outcome_attributes[key] = found
        return found


class Unwind:
    """One run of a stack's exit callbacks."""

    __slots__ = ("start", "start_ns", "span", "span_context", "token", "count", "failed")

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.start_ns = time.time_ns()
        self.span: trace.Span | None = None
        self.span_context: otel_context.Context | None = None
        self.token: object = None
        self.count = 0
        self.failed = 0

    def epoch_ns(self, perf: float) -> int:
        return self.start_ns + int((perf - self.start) * 1e9)


class _Instruments:
    """The instruments of one meter provider, and the local counts its observable ones report."""

    def __init__(self, meter_provider: metrics.MeterProvider) -> None:
        meter = meter_provider.get_meter(semconv.SCOPE_NAME, __version__)
        self.pushed: dict[tuple[str, str, str], _Count] = {}
        self.active: dict[str, _Count] = {}
        self.callback_duration = meter.create_histogram(
            semconv.CALLBACK_DURATION,
            unit=semconv.UNIT_SECONDS,
            description="Time one exit callback took to run.",
            explicit_bucket_boundaries_advisory=semconv.DURATION_BUCKETS,
        )
        self.unwind_duration = meter.create_histogram(
            semconv.UNWIND_DURATION,
            unit=semconv.UNIT_SECONDS,
            description="Time from the start of a stack's exit to the end of its last callback.",
            explicit_bucket_boundaries_advisory=semconv.DURATION_BUCKETS,
        )
        self.unwind_callbacks = meter.create_histogram(
            semconv.UNWIND_CALLBACKS,
            unit=semconv.UNIT_CALLBACK,
            description="Exit callbacks run by one unwind.",
            explicit_bucket_boundaries_advisory=semconv.CALLBACK_COUNT_BUCKETS,
        )
        meter.create_observable_counter(
            semconv.CALLBACK_PUSHED,
            callbacks=[self._observe_pushed],
            unit=semconv.UNIT_CALLBACK,
            description="Exit callbacks pushed onto a stack.",
        )
        meter.create_observable_up_down_counter(
            semconv.UNWIND_ACTIVE,
            callbacks=[self._observe_active],
            unit=semconv.UNIT_UNWIND,
            description="Unwinds started and not yet finished.",
        )

    def _observe_pushed(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(count.value, count.attributes) for count in list(self.pushed.values())]

    def _observe_active(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(count.value, count.attributes) for count in list(self.active.values())]


# One set of instruments per meter provider: a second registration of an observable instrument
# would be ignored by the SDK, and its counts lost.
_instruments_by_provider: MutableMapping[Any, _Instruments] = weakref.WeakKeyDictionary()


def _instruments_for(meter_provider: metrics.MeterProvider) -> _Instruments:
    found = _instruments_by_provider.get(meter_provider)
    if found is None:
        found = _instruments_by_provider[meter_provider] = _Instruments(meter_provider)
    return found


def is_noop_tracer_provider(provider: trace.TracerProvider) -> bool:
    return isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider))


def is_noop_meter_provider(provider: metrics.MeterProvider) -> bool:
    return isinstance(provider, (_ProxyMeterProvider, NoOpMeterProvider))


_error_types: dict[type[BaseException], str] = {}


def error_type(exc: BaseException) -> str:
    cls = type(exc)
    found = _error_types.get(cls)
    if found is None:
        module = cls.__module__
        found = cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
        if len(_error_types) < 1000:
            _error_types[cls] = found
    return found


def is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, asyncio.CancelledError):
        return True
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(exc, trio.Cancelled)


class Telemetry:
    """Records for one (tracer provider, meter provider, options); shared by every stack using them."""

    def __init__(
        self,
        tracer: trace.Tracer | None,
        instruments: _Instruments | None,
        options: TelemetryOptions,
    ) -> None:
        self.tracer = tracer
        self.instruments = instruments
        self.options = options
        self.all_spans = tracer is not None and options.callback_spans == "all"
        self._infos: dict[tuple[str, str, str], CallbackInfo] = {}
        self._names: set[str] = set()
        self._unwind_attributes: dict[tuple[str, str | None, str | None, str], Attributes] = {}
        self._faults: set[str] = set()

    @classmethod
    def create(
        cls,
        tracer_provider: trace.TracerProvider,
        meter_provider: metrics.MeterProvider,
        options: TelemetryOptions,
    ) -> Telemetry | None:
        """None when both providers are the API's no-ops: then stacks do nothing extra at all."""
        tracer = None
        if not is_noop_tracer_provider(tracer_provider):
            tracer = tracer_provider.get_tracer(semconv.SCOPE_NAME, __version__)
        instruments = None
        if not is_noop_meter_provider(meter_provider):
            instruments = _instruments_for(meter_provider)
        if tracer is None and instruments is None:
            return None
        return cls(tracer, instruments, options)

    # -- faults ---------------------------------------------------------------------------------

    def fault(self, where: str, exc: BaseException) -> None:
        """Telemetry trouble is logged once per place and never reaches the request."""
        if where in self._faults:
            return
        self._faults.add(where)
        logger.error("exitstack-otel telemetry failed in %s; the stack keeps working", where, exc_info=exc)

    # -- pushes ---------------------------------------------------------------------------------

    def on_push(self, stack_name: str, kind: str, target: object, depth: int) -> CallbackInfo:
        name = self._name(kind, target)
        key = (stack_name, name, kind)
        info = self._infos.get(key)
        if info is None:
            info = self._new_info(key)
        info.pushed.value += 1
        if self.all_spans:
            span = trace.get_current_span()
            if span.is_recording():
                span.add_event(semconv.EVENT_PUSH, {**info.push_event_attributes, semconv.STACK_DEPTH: depth})
        return info

    def _new_info(self, key: tuple[str, str, str]) -> CallbackInfo:
        stack_name, name, kind = key
        if self.instruments is not None:
            pushed = self.instruments.pushed.get(key)
            if pushed is None:
                pushed = self.instruments.pushed[key] = _Count(
                    {semconv.STACK_NAME: stack_name, semconv.CALLBACK_NAME: name, semconv.CALLBACK_KIND: kind}
                )
        else:
            pushed = _Count({})
        info = self._infos[key] = CallbackInfo(stack_name, name, kind, pushed)
        return info

    def _name(self, kind: str, target: object) -> str:
        name = None
        namer = self.options.callback_namer
        if namer is not None:
            try:
                name = namer(target, kind)
            except Exception as exc:
                self.fault("callback_namer", exc)
        if not name:
            name = naming.default_name(kind, target)
        if name not in self._names:
            if len(self._names) >= self.options.max_callback_names:
                return semconv.OTHER_NAME
            self._names.add(name)
        return name

    # -- unwinds --------------------------------------------------------------------------------

    def begin_unwind(self, stack_name: str, parent: otel_context.Context | None) -> Unwind:
        unwind = Unwind()
        if self.instruments is not None:
            active = self.instruments.active.get(stack_name)
            if active is None:
                active = self.instruments.active[stack_name] = _Count({semconv.STACK_NAME: stack_name})
            active.value += 1
        if self.tracer is not None:
            span = self.tracer.start_span(
                semconv.SPAN_UNWIND, context=parent, kind=SpanKind.INTERNAL, start_time=unwind.start_ns
            )
            unwind.span = span
            # user code run by callbacks nests its own spans under the unwind
            unwind.span_context = trace.set_span_in_context(span, parent)
            unwind.token = otel_context.attach(unwind.span_context)
        return unwind

    def end_unwind(
        self,
        stack_name: str,
        unwind: Unwind,
        exc: BaseException | None,
        scope: Mapping[str, Any] | None,
    ) -> None:
        end = time.perf_counter()
        route = method = None
        if scope is not None:
            route = http_route(scope)
            method = scope.get("method")
        outcome = semconv.OUTCOME_OK
        if exc is not None:
            outcome = semconv.OUTCOME_CANCELLED if is_cancellation(exc) else semconv.OUTCOME_ERROR
        instruments = self.instruments
        if instruments is not None:
            instruments.active[stack_name].value -= 1
            attributes = self._unwind_attrs(stack_name, route, method, outcome)
            instruments.unwind_duration.record(end - unwind.start, attributes)
            instruments.unwind_callbacks.record(unwind.count, self._unwind_attrs(stack_name, route, None, ""))
        span = unwind.span
        if span is not None:
            otel_context.detach(unwind.token)  # type: ignore[arg-type]
            if span.is_recording():
                attributes = {
                    semconv.STACK_NAME: stack_name,
                    semconv.CALLBACK_COUNT: unwind.count,
                    semconv.CALLBACK_FAILED: unwind.failed,
                }
                if route is not None:
                    attributes[semconv.HTTP_ROUTE] = route
                if method is not None:
                    attributes[semconv.HTTP_REQUEST_METHOD] = method
                span.set_attributes(attributes)
                if exc is not None:
                    span.set_status(Status(StatusCode.ERROR, error_type(exc)))
                    span.set_attribute(semconv.ERROR_TYPE, error_type(exc))
            span.end(end_time=unwind.epoch_ns(end))

    def _unwind_attrs(
        self, stack_name: str, route: str | None, method: str | None, outcome: str
    ) -> Attributes:
        key = (stack_name, route, method, outcome)
        found = self._unwind_attributes.get(key)
        if found is None:
            found = {semconv.STACK_NAME: stack_name}
            if route is not None:
                found[semconv.HTTP_ROUTE] = route
            if method is not None:
                found[semconv.HTTP_REQUEST_METHOD] = method
            if outcome:
                found[semconv.UNWIND_OUTCOME] = outcome
            if len(self._unwind_attributes) < 4096:  # routes are templates, but stay bounded
                self._unwind_attributes[key] = found
        return found

    # -- executed callbacks ---------------------------------------------------------------------

    def on_callback_done(
        self,
        info: CallbackInfo,
        unwind: Unwind | None,
        start: float,
        outcome: str,
        exc: BaseException | None,
    ) -> None:
        end = time.perf_counter()
        duration = end - start
        err_type = error_type(exc) if exc is not None and outcome in _FAILED_OUTCOMES else None
        if self.instruments is not None:
            self.instruments.callback_duration.record(duration, info.attributes(outcome, err_type))
        failed = outcome in _FAILED_OUTCOMES
        if unwind is not None:
            unwind.count += 1
            if failed:
                unwind.failed += 1
        if self.tracer is None:
            return
        if not (self.all_spans or failed or duration >= self.options.slow_callback_threshold):
            return
        parent = unwind.span_context if unwind is not None else None
        if unwind is not None and unwind.span is not None and not unwind.span.is_recording():
            return  # unsampled trace: metrics only
        span_start = unwind.epoch_ns(start) if unwind is not None else time.time_ns() - int(duration * 1e9)
        span = self.tracer.start_span(
            info.span_name,
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=info.attributes(outcome, err_type),
            start_time=span_start,
        )
        if failed and exc is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, err_type))
        span.end(end_time=span_start + int(duration * 1e9))


def http_route(scope: Mapping[str, Any]) -> str | None:
    """The matched route's template (never the raw path), or None when no route matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return None
