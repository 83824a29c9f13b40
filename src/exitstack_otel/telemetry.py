"""Turns pushes, executed callbacks and unwinds into the spans and metrics of docs/telemetry.md.

The stack asks in here once at each of three speeds. Per push: ``known_push``, a bound
``dict.get`` (no Python call), and an add the stack does itself; ``on_push`` names code not seen
before. Per callback that went well: nothing but a recorder (a bare append) of a series looked up
at push time. Per unwind: ``active_counts[name]`` at its start (a dict that makes what it lacks),
``unwound`` at its end (its two values, and what the recorders appended, so that the histograms
fold when due). Everything that makes a span or an SDK call with a context (failed, cancelled,
timed-out and slow callbacks, and every callback with ``callback_spans="all"``) goes through
``Unwinding``, which exists only then. In a failure storm most failures go no further than that:
beyond their budget (``failure_budget``), they and their unwind go through recorders too.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider
from opentelemetry.util.types import AttributeValue

from . import naming, semconv, spans
from .cleanup_log import FailureLog
from .failure_budget import MAX_KINDS, Budget, FailureKind
from .instruments import FOLD_EVERY, Count, Instruments, instruments_for
from .internals import PROXY_METER_PROVIDER_TYPE
from .options import CallbackNamer, CallbackSpans, TelemetryOptions
from .version import __version__

# the API's global before one is set: a no-op that is no NoOpMeterProvider
_ProxyMeterProvider = PROXY_METER_PROVIDER_TYPE

__all__ = ["CallbackNamer", "CallbackSpans", "Telemetry", "TelemetryOptions", "error_type"]

logger = logging.getLogger(__name__)

Attributes = Mapping[str, AttributeValue]

FAILED_OUTCOMES = frozenset({semconv.OUTCOME_ERROR, semconv.OUTCOME_CANCELLED, semconv.OUTCOME_TIMEOUT})

MAX_KNOWN_CODE = 4096
"""Pushed code remembered per ``Telemetry``, so that pushing it again needs no naming."""

MAX_STACK_NAMES = 1000
"""Stack names whose fast push keys are kept (names are code's: scope keys, ``stack_name``)."""

MAX_ERROR_TYPES = 100
"""Distinct ``error.type`` values per ``Telemetry``; later ones are reported as ``_OTHER``."""


class _NullSeries:
    """Where measurements go without a meter provider."""

    __slots__ = ()

    def record(self, value: float) -> None:
        pass

    @property
    def recorder(self) -> Callable[[float], None]:
        return self.record


NULL_SERIES: Any = _NullSeries()


class CallbackInfo:
    """What is known of one (stack, callback name, kind) when it is pushed; shared by pushes."""

    __slots__ = (
        "base",
        "kind",
        "name",
        "ok",
        "outcome_attributes",
        "pushed",
        "record_ok",
        "record_suppressed",
        "span_name",
        "suppressed",
    )

    def __init__(self, stack_name: str, name: str, kind: str, pushed: Count, instruments: Instruments | None):
        self.name = name
        self.kind = kind
        self.span_name = f"{semconv.SPAN_CALLBACK} {name}"
        self.pushed = pushed
        self.base = {semconv.STACK_NAME: stack_name, semconv.CALLBACK_NAME: name, semconv.CALLBACK_KIND: kind}
        self.outcome_attributes: dict[tuple[str, str | None], Attributes] = {}
        self.ok = self.suppressed = NULL_SERIES
        if instruments is not None:
            self.ok = instruments.callback_duration.series(self.attributes(semconv.OUTCOME_OK, None))
            self.suppressed = instruments.callback_duration.series(
                self.attributes(semconv.OUTCOME_SUPPRESSED, None)
            )
        # the fast path's: a bare append, folded by Instruments.fold
        self.record_ok = self.ok.recorder
        self.record_suppressed = self.suppressed.recorder

    def attributes(self, outcome: str, error_type: str | None) -> Attributes:
        key = (outcome, error_type)
        found = self.outcome_attributes.get(key)
        if found is None:
            found = {**self.base, semconv.CALLBACK_OUTCOME: outcome}
            if error_type is not None:
                found[semconv.ERROR_TYPE] = error_type
            self.outcome_attributes[key] = found  # bounded: error types are capped
        return found


class UnwindSeries:
    """The two histogram series one (stack, route, method, outcome) records into."""

    __slots__ = (
        "callbacks",
        "callbacks_attributes",
        "duration",
        "duration_attributes",
        "record_callbacks",
        "record_duration",
    )

    def __init__(self, instruments: Instruments | None, duration: Attributes, callbacks: Attributes) -> None:
        self.duration_attributes = duration
        self.callbacks_attributes = callbacks
        self.duration = self.callbacks = NULL_SERIES
        if instruments is not None:
            self.duration = instruments.unwind_duration.series(duration)
            self.callbacks = instruments.unwind_callbacks.series(callbacks)
        # the fast path's, folded by Instruments.fold as the callbacks' are
        self.record_duration = self.duration.recorder
        self.record_callbacks = self.callbacks.recorder


class _ActiveCounts(dict[str, Count | None]):
    """Each stack's count of unwinds in progress (None without a meter provider), made at the
    stack name's first lookup: ``active_counts[name]`` costs the unwind no Python call after."""

    def __init__(self, instruments: Instruments | None) -> None:
        super().__init__()
        self._instruments = instruments

    def __missing__(self, stack_name: str) -> Count | None:
        instruments = self._instruments
        found = self[stack_name] = instruments.active_count(stack_name) if instruments is not None else None
        return found


KnownPushes = tuple[dict[object, CallbackInfo], dict[object, CallbackInfo]] | tuple[None, None]
NOTHING_KNOWN: KnownPushes = (None, None)
"""A stack's pair where every push must reach ``on_push``, or where nothing is reported."""


class _KnownPushes(dict[str, KnownPushes]):
    """Made at a stack name's first lookup, so that a new stack finds its pair in one lookup."""

    def __init__(self, enabled: bool) -> None:
        super().__init__()
        self._enabled = enabled

    def __missing__(self, stack_name: str) -> KnownPushes:
        found: KnownPushes = ({}, {}) if self._enabled else NOTHING_KNOWN
        if len(self) < MAX_STACK_NAMES:
            self[stack_name] = found
        return found


def is_noop_tracer_provider(provider: trace.TracerProvider) -> bool:
    return isinstance(provider, (ProxyTracerProvider, NoOpTracerProvider))


def is_noop_meter_provider(provider: metrics.MeterProvider) -> bool:
    return isinstance(provider, (_ProxyMeterProvider, NoOpMeterProvider))


_qualified_error_names: dict[type[BaseException], str] = {}


def error_type(exc: BaseException) -> str:
    """The exception's class, qualified by module unless builtin."""
    cls = type(exc)
    found = _qualified_error_names.get(cls)
    if found is None:
        module = cls.__module__
        found = cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
        if len(_qualified_error_names) < 1000:
            _qualified_error_names[cls] = found
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
        instruments: Instruments | None,
        options: TelemetryOptions,
    ) -> None:
        self.tracer = tracer
        self.instruments = instruments
        self.options = options
        self.all_spans = tracer is not None and options.callback_spans == "all"
        # a callback that took this long or more leaves the fast path; with "all", every one does
        self.span_threshold = -1.0 if self.all_spans else options.slow_callback_threshold
        # read at every unwind: an attribute of this object costs less than one of the options'
        self.hung_callback_warning = options.hung_callback_warning
        self._infos: dict[tuple[str, str, str], CallbackInfo] = {}
        self.by_code = options.callback_namer is None  # a namer sees every push
        """Pushes are known by ``naming.identity``, the key of ``infos_by_code``."""
        self.infos_by_code: dict[tuple[object, ...] | None, CallbackInfo] = {}
        """Pushed code seen before; the stack counts those pushes itself, without ``on_push``."""
        never_known: dict[tuple[object, ...] | None, CallbackInfo] = {}
        self.known_push: Callable[[tuple[object, ...] | None], CallbackInfo | None] = (
            never_known.get if self.all_spans else self.infos_by_code.get
        )
        """The info of a push the stack may count itself (by its identity), None when ``on_push``
        must see it: code not seen before, or any push with "all" (it adds an event to the
        request's span). A bound ``dict.get``, so that asking costs the push no Python call."""
        self.known_pushes = _KnownPushes(self.by_code and not self.all_spans)
        """Per stack name, the infos of pushes known by a fast key, async and sync exits apart
        (indexed by ``is_sync``: ``InstrumentedAsyncExitStack._push_exit_callback``); ``(None, None)``
        where every push must reach ``on_push``: a namer names each one, "all" adds an event for each."""
        self._names: set[str] = set()
        self._error_types: set[str] = set()
        self.active_counts = _ActiveCounts(instruments)
        self.unwind_series_by_key: dict[tuple[str, str | None, str | None, str], UnwindSeries] = {}
        """Stacks look a series up here first, by ``unwind_series``' arguments."""
        self._faults: set[str] = set()
        self.failures = FailureLog()
        self.failure_kinds: dict[tuple[CallbackInfo, str, type[object]], FailureKind] = {}
        """Each kind of failure's budget of full records (spans, exception event, log record), by
        the exception's class: the failure is known without naming its ``error.type`` again."""
        self.shared_budget = Budget()
        """The budget of the kinds beyond ``MAX_KINDS``."""

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
            instruments = instruments_for(meter_provider)
        if tracer is None and instruments is None:
            return None
        return cls(tracer, instruments, options)

    def fault(self, where: str, exc: BaseException) -> None:
        """Telemetry trouble is logged once per place and never reaches the request."""
        if where in self._faults:
            return
        self._faults.add(where)
        logger.error("exitstack-otel telemetry failed in %s; the stack keeps working", where, exc_info=exc)

    # -- pushes ---------------------------------------------------------------------------------

    def on_push(
        self,
        stack_name: str,
        callback: Callable[..., Any],
        is_sync: bool,
        key: tuple[object, ...] | None,
        depth: int,
    ) -> CallbackInfo:
        """A push the stack could not count itself: code not in ``infos_by_code`` (``key`` is its
        identity, None for none), or any push with "all", which adds an event to the request's span."""
        info = self.infos_by_code.get(key)
        if info is None:
            info = self._info_by_name(stack_name, callback, is_sync, key)
        info.pushed.value += 1
        if self.all_spans:
            self._push_event(info, depth)
        return info

    def _info_by_name(
        self, stack_name: str, callback: Callable[..., Any], is_sync: bool, key: tuple[object, ...] | None
    ) -> CallbackInfo:
        kind, target = naming.classify(callback, is_sync)
        name = self._name(kind, target)
        name_key = (stack_name, name, kind)
        info = self._infos.get(name_key)
        if info is None:
            info = self._new_info(name_key)
        if key is not None and len(self.infos_by_code) < MAX_KNOWN_CODE:
            self.infos_by_code[key] = info
        return info

    def _push_event(self, info: CallbackInfo, depth: int) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                semconv.EVENT_PUSH,
                {
                    semconv.CALLBACK_NAME: info.name,
                    semconv.CALLBACK_KIND: info.kind,
                    semconv.STACK_DEPTH: depth,
                },
            )

    def _new_info(self, key: tuple[str, str, str]) -> CallbackInfo:
        stack_name, name, kind = key
        instruments = self.instruments
        pushed = instruments.pushed_count(key) if instruments is not None else Count({})
        info = self._infos[key] = CallbackInfo(stack_name, name, kind, pushed, instruments)
        return info

    def _name(self, kind: str, target: object) -> str:
        name = None
        namer = self.options.callback_namer
        if namer is not None:
            try:
                name = namer(target, kind)
            except Exception as exc:
                self.fault("callback_namer", exc)
        if not name or not isinstance(name, str):
            name = naming.default_name(kind, target)
        if name not in self._names:
            if len(self._names) >= self.options.max_callback_names:
                return semconv.OTHER_NAME
            self._names.add(name)
        return name

    def error_type(self, exc: BaseException) -> str:
        found = error_type(exc)
        if found not in self._error_types:
            if len(self._error_types) >= MAX_ERROR_TYPES:
                return semconv.OTHER_NAME
            self._error_types.add(found)
        return found

    def failure_kind(self, info: CallbackInfo, outcome: str, exc: BaseException | None) -> FailureKind:
        """What ``failure_kinds`` lacks for this failure: made once, kept up to ``MAX_KINDS``."""
        err_type = self.error_type(exc) if exc is not None else None
        attributes = info.attributes(outcome, err_type)
        instruments = self.instruments
        series = NULL_SERIES if instruments is None else instruments.callback_duration.series(attributes)
        if len(self.failure_kinds) >= MAX_KINDS:
            # not kept, so made again each time: its series' own folding check stays on
            return FailureKind(attributes, self.shared_budget, series.record)
        found = self.failure_kinds[(info, outcome, type(exc))] = FailureKind(
            attributes, Budget(), series.recorder
        )
        return found

    # -- unwinds --------------------------------------------------------------------------------

    def unwound(
        self,
        stack_name: str,
        route: str | None,
        method: str | None,
        parent: otel_context.Context | None,
        unwinding: Unwinding | None,
        start: float,
        end: float,
        callbacks: int,
        escaped: BaseException | None,
    ) -> None:
        """An unwind that ran ``callbacks`` reported callbacks is over, ``escaped`` what it raised.

        With nothing to make a span of, its two values go through recorders; otherwise
        ``Unwinding`` records it. Either way the histograms fold once recorders appended
        ``FOLD_EVERY`` values."""
        try:
            outcome = semconv.OUTCOME_OK
            if escaped is not None:
                outcome = semconv.OUTCOME_CANCELLED if is_cancellation(escaped) else semconv.OUTCOME_ERROR
            if unwinding is None and escaped is not None and self.tracer is not None:
                # an unwind that ended in an error or a cancellation is a problem of its own
                unwinding = self.unwinding(stack_name, route, start, parent)
            if unwinding is not None:
                unwinding.start = start
                unwinding.finish(end, callbacks, escaped, route, method, outcome)
                return
            self.append_unwind(stack_name, route, method, outcome, end - start, callbacks)
        except Exception as fault:
            self.fault("unwind", fault)

    def append_unwind(
        self,
        stack_name: str,
        route: str | None,
        method: str | None,
        outcome: str,
        duration: float,
        count: int,
    ) -> None:
        """An unwind's two values through its series' recorders, and the fold once recorders have
        appended ``FOLD_EVERY`` values (its callbacks' and its own two). ``InstrumentedAsyncExitStack``
        writes this out for an unwind that went well, a call fewer per request."""
        key = (stack_name, route, method, outcome)
        series = self.unwind_series_by_key.get(key) or self.unwind_series(*key)
        series.record_duration(duration)
        series.record_callbacks(count)
        instruments = self.instruments
        if instruments is not None:
            instruments.unfolded += count + 2
            if instruments.unfolded >= FOLD_EVERY:
                instruments.fold()

    def unwind_series(
        self, stack_name: str, route: str | None, method: str | None, outcome: str
    ) -> UnwindSeries:
        key = (stack_name, route, method, outcome)
        found = self.unwind_series_by_key.get(key)
        if found is None:
            duration: dict[str, AttributeValue] = {semconv.STACK_NAME: stack_name}
            callbacks: dict[str, AttributeValue] = {semconv.STACK_NAME: stack_name}
            if route is not None:
                duration[semconv.HTTP_ROUTE] = callbacks[semconv.HTTP_ROUTE] = route
            if method is not None:
                duration[semconv.HTTP_REQUEST_METHOD] = method
            duration[semconv.UNWIND_OUTCOME] = outcome
            found = UnwindSeries(self.instruments, duration, callbacks)
            if len(self.unwind_series_by_key) < 4096:  # routes are templates, but stay bounded
                self.unwind_series_by_key[key] = found
        return found

    def unwinding(
        self, stack_name: str, route: str | None, start: float, parent: otel_context.Context | None
    ) -> Unwinding:
        """The slow path's state for one unwind: made at its start with "all", else at the first problem."""
        return Unwinding(self, stack_name, route, start, parent)


class Unwinding:
    """One unwind that makes spans or records with exemplars: with ``"all"``, or once a problem happened.

    With ``"problems"`` an unwind is recorded in full (its span, its problems' spans, their
    exemplars and log records) or not at all: in full when it had a slow callback, a failure within
    its kind's budget (``failure_budget``), or an escape that was not one of its failures. Else it
    is *quiet*: its failures and its own values go through the recorders the fast path uses.
    """

    __slots__ = (
        "failed",
        "in_full",
        "live",
        "parent",
        "problems",
        "route",
        "stack_name",
        "start",
        "telemetry",
        "troubled",
    )

    def __init__(
        self,
        telemetry: Telemetry,
        stack_name: str,
        route: str | None,
        start: float,
        parent: otel_context.Context | None,
    ) -> None:
        self.telemetry = telemetry
        self.stack_name = stack_name
        self.route = route
        self.start = start
        self.parent = parent
        self.failed = 0
        self.troubled = False
        """a callback failed or was slow: the unwind's measurement keeps an exemplar too"""
        self.in_full = False
        """a problem that is always recorded in full, or a failure within its budget, happened"""
        self.problems: list[spans.CallbackRun] = []
        self.live: spans.LiveUnwind | None = None
        if telemetry.all_spans and telemetry.tracer is not None:
            self.live = spans.LiveUnwind.start(telemetry.tracer, parent)

    def callback_done(
        self, info: CallbackInfo, start: float, end: float, outcome: str, exc: BaseException | None
    ) -> None:
        """A callback left the fast path: it failed, was slow, or every callback gets a span."""
        telemetry = self.telemetry
        failed = outcome in FAILED_OUTCOMES
        if failed:
            self.failed += 1
            kind = telemetry.failure_kinds.get((info, outcome, type(exc)))
            if kind is None:
                kind = telemetry.failure_kind(info, outcome, exc)
            run = spans.CallbackRun(info.span_name, kind.attributes, start, end, exc, kind)
            # One budget share per unwind recorded in full: its other failures come with it. A
            # storm's failure is declined by the comparison, without a call.
            budget = kind.budget
            if not self.in_full and self.live is None and end >= budget.allowed_from and budget.take(end):
                self.in_full = True
        else:
            run = spans.CallbackRun(info.span_name, info.attributes(outcome, None), start, end, None, None)
        problem = failed or end - start >= telemetry.options.slow_callback_threshold
        live = self.live
        context = None
        if live is not None:
            context = live.callback_span(telemetry.tracer, run)  # type: ignore[arg-type]
        if not problem:
            (info.suppressed if outcome == semconv.OUTCOME_SUPPRESSED else info.ok).record(end - start)
            return
        self.troubled = True
        if not failed:
            self.in_full = True  # a slow callback: not what a storm is made of, and never budgeted
        if live is not None:
            self._record_problem(run, context)
        else:
            self.problems.append(run)  # its span, and its measurement with it, once the unwind is over

    def _record_problem(self, run: spans.CallbackRun, context: otel_context.Context | None) -> None:
        if run.exc is not None:
            self.telemetry.failures.failed(
                stack=self.stack_name,
                callback=str(run.attributes[semconv.CALLBACK_NAME]),
                route=self.route,
                error_type=str(run.attributes.get(semconv.ERROR_TYPE, semconv.OTHER_NAME)),
                exc=run.exc,
                context=context,
            )
        instruments = self.telemetry.instruments
        if instruments is not None:
            # through the SDK inside the callback's span: the exemplar a person clicks on
            instruments.callback_duration.record(run.end - run.start, run.attributes, context)

    def finish(
        self,
        end: float,
        count: int,
        exc: BaseException | None,
        route: str | None,
        method: str | None,
        outcome: str,
    ) -> None:
        """The unwind's end: its span (or the spans of its problems) and its two values.

        Left out of the traces (*quiet*) when it had only failures beyond their budgets, and
        nothing escaped but the last of them (a cancellation of the request is a problem of its own).
        """
        problems = self.problems
        if not self.in_full and self.live is None and problems and (exc is None or problems[-1].exc is exc):
            self._finish_quietly(end, count, route, method, outcome)
            return
        telemetry = self.telemetry
        series = telemetry.unwind_series(self.stack_name, route, method, outcome)
        instruments = telemetry.instruments
        if instruments is not None:
            instruments.appended(count)  # what its callbacks that went well appended (or fewer)
        tracer = telemetry.tracer
        err_type = telemetry.error_type(exc) if exc is not None else None
        attributes: dict[str, AttributeValue] = {
            semconv.STACK_NAME: self.stack_name,
            semconv.CALLBACK_COUNT: count,
            semconv.CALLBACK_FAILED: self.failed,
        }
        if route is not None:
            attributes[semconv.HTTP_ROUTE] = route
        if method is not None:
            attributes[semconv.HTTP_REQUEST_METHOD] = method
        if err_type is not None:
            attributes[semconv.ERROR_TYPE] = err_type
        unwind_context = None
        if self.live is not None:
            unwind_context = self.live.end(attributes, err_type, end)
        elif tracer is not None:
            clock = spans.Clock.now()
            unwind_context = spans.unwind_after_the_fact(
                tracer, self.parent, clock, self.start, end, attributes, err_type
            )
            for run in self.problems:
                self._record_problem(run, spans.callback_after_the_fact(tracer, unwind_context, clock, run))
        else:
            for run in self.problems:
                self._record_problem(run, None)
        if instruments is not None and (self.troubled or exc is not None):
            instruments.unwind_duration.record(end - self.start, series.duration_attributes, unwind_context)
        else:  # an unwind that went well ("all" makes its span all the same): no exemplar
            series.duration.record(end - self.start)
        series.callbacks.record(count)

    def _finish_quietly(
        self, end: float, count: int, route: str | None, method: str | None, outcome: str
    ) -> None:
        """Every value through a recorder, as ``Telemetry.unwound`` records an unwind that went well."""
        telemetry = self.telemetry
        problems = self.problems
        for run in problems:
            run.failure.record(run.end - run.start)  # type: ignore[union-attr]
        # the failures' values are among the count's
        telemetry.append_unwind(self.stack_name, route, method, outcome, end - self.start, count)
        failures = telemetry.failures
        failures.unlogged += len(problems)  # counted in the log's summary, at no call here
        if failures.timer is None:
            failures.summary_due()
