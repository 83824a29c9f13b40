"""``InstrumentedAsyncExitStack``: ``contextlib.AsyncExitStack`` that reports what it runs.

contextlib funnels every public push method into one private method, ``_push_exit_callback``;
overriding it sees every push. What it appends to ``_exit_callbacks`` is exactly what contextlib
appends, since other code inspects that list: what we learn at push time (the callback's name
and series) goes into a list of our own beside it. The unwind is contextlib's own loop, written
out here so that each callback can be timed where it runs, with no wrapper around it: the same
calls, the same ``__context__`` fix-ups, the same traceback lines.

The core knows nothing of ASGI: whoever owns the stack sets ``route`` and ``method`` before it
unwinds (``ExitStackMiddleware``, the FastAPI integration).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable
from contextlib import AsyncExitStack
from types import FunctionType, MethodType, TracebackType
from typing import Any

import anyio
from opentelemetry import context as otel_context

from . import semconv
from .cleanup_log import hung_watch
from .instruments import FOLD_EVERY
from .internals import ASYNC_CALLBACK_CODE, GENERATOR_MANAGER_CLASSES, SYNC_CALLBACK_CODE, current_context
from .naming import EXIT_NAMES, WRAPPER_CODE_NAMES, identity
from .options import TelemetryOptions
from .providers import current_telemetry
from .telemetry import NOTHING_KNOWN, CallbackInfo, KnownPushes, Telemetry, Unwinding, is_cancellation

DEFAULT_STACK_NAME = "exitstack"

_UNSET: Any = object()

MAX_KNOWN_KEYS = 4096
"""Fast push keys remembered per stack name and kind of exit (sync or async)."""

_SYNC_CALLBACK_CODE = SYNC_CALLBACK_CODE
_ASYNC_CALLBACK_CODE = ASYNC_CALLBACK_CODE
_GENERATOR_MANAGERS = GENERATOR_MANAGER_CLASSES

_DETAILS_FROM_PENDING = sys.version_info >= (3, 13)
"""3.13's contextlib hands each callback ``(type(exc), exc, exc.__traceback__)`` of the pending
exception; earlier ones hand on the tuple ``__aexit__`` was given until a callback changes it."""


class InstrumentedAsyncExitStack(AsyncExitStack):
    """An ``AsyncExitStack`` whose pushes, callbacks and unwinds appear as spans and metrics.

    ``name`` becomes ``exitstack.stack.name``. ``telemetry`` defaults to one built on the global
    providers; with both of them the API's no-ops, the stack is plain contextlib.
    ``callback_timeout``, when given, cancels an async exit callback still running after that many
    seconds; it then fails with ``CallbackTimeoutError`` (outcome ``timeout``) and the unwind goes
    on with the next callback. Sync callbacks cannot be interrupted and are never timed out.
    """

    # Slots, each set in __init__: the interpreter reads and writes them in a few instructions
    # from the first request on. (Class-level defaults, stored on the instance only where they
    # differed, left those accesses unspecialised: 3k instructions per request more on 3.12.)
    # contextlib's own attribute, _exit_callbacks, stays in the instance dict, as contextlib has it.
    __slots__ = (
        "_callback_timeout",
        "_known",
        "_name",
        "_parent_context",
        "_reported",
        "_telemetry",
        "method",
        "route",
        "running_callback",
    )

    route: str | None
    """``http.route`` of the unwind: set by the integration that owns the stack."""
    method: str | None
    """``http.request.method`` of the unwind, likewise."""
    running_callback: tuple[CallbackInfo, float, float | None] | None
    """The reported callback running now, since when, and its hung-warning threshold (set only
    while hung-callback warnings are on: the watcher is its only reader)."""

    def __init__(
        self,
        name: str = DEFAULT_STACK_NAME,
        *,
        telemetry: Telemetry | None = _UNSET,
        callback_timeout: float | None = _UNSET,
    ) -> None:
        # contextlib's own __init__ is this one line on 3.11 to 3.15, as _push_exit_callback's is
        # (typeshed leaves the attribute out: declaring it here types it for the code below)
        self._exit_callbacks: deque[tuple[bool, Callable[..., Any]]] = deque()
        self.route = self.method = self.running_callback = None
        self._name = name
        self._reported: list[tuple[Callable[..., Any], CallbackInfo]] = []
        if telemetry is _UNSET:
            telemetry = global_telemetry()
        self._telemetry = telemetry
        self._callback_timeout: float | None = None
        if callback_timeout is _UNSET:
            if telemetry is not None:
                self._callback_timeout = telemetry.options.callback_timeout
        elif callback_timeout is not None:
            self._callback_timeout = checked_callback_timeout(callback_timeout)
        self._parent_context: otel_context.Context | None = None
        self._known: KnownPushes = NOTHING_KNOWN
        if telemetry is not None:
            if telemetry.tracer is not None:
                # the unwind span's parent: the span current where the stack was made (the request's)
                self._parent_context = current_context()
            # (None, None) where every push must go through on_push (a namer, or "all")
            self._known = telemetry.known_pushes[name]

    @property
    def name(self) -> str:
        return self._name

    @property
    def parent_context(self) -> otel_context.Context | None:
        """The OpenTelemetry context the stack was made in: the request's."""
        return self._parent_context

    def _push_exit_callback(self, callback: Callable[..., Any], is_sync: bool = True) -> None:
        # contextlib's own _push_exit_callback is this one line on 3.11 to 3.15 (the equivalence
        # tests run on each): appending here saves every push a second call
        self._exit_callbacks.append((is_sync, callback))
        known = self._known[is_sync]
        if known is None:
            if self._telemetry is not None:
                self._push_without_key(callback, is_sync)
            return
        # The pushes services make on every request, known by an object that is the same from one
        # request to the next, with no call and nothing built: the function behind callback() and
        # push_async_callback(), the class of a manager (enter_context, enter_async_context), the
        # name of a @contextmanager's function. Each such key stands for one kind and one default
        # name within the stack (known is per stack name and per is_sync); identity() decides the
        # rest, and its first answer for a key is remembered under it.
        key: object = None
        try:
            kind = type(callback)
            if kind is FunctionType:
                code = callback.__code__
                if code is _SYNC_CALLBACK_CODE or code is _ASYNC_CALLBACK_CODE:
                    key = callback.__wrapped__  # type: ignore[attr-defined]
                    if type(key) is MethodType:
                        key = key.__func__
                    if type(key) is not FunctionType:
                        key = None
            elif kind is MethodType and callback.__name__ in EXIT_NAMES:
                manager: Any = callback.__self__  # type: ignore[attr-defined]
                key = type(manager)
                if key in _GENERATOR_MANAGERS:
                    key = manager.gen.__qualname__
                    if key in WRAPPER_CODE_NAMES:  # FastAPI's wrapper of a sync dependency
                        key = None
            info = known.get(key)
        except Exception:  # an unhashable class, a manager without its generator: no fast key
            key = info = None
        if info is None:
            self._push_without_key(callback, is_sync, key, known)
            return
        info.pushed.value += 1
        self._reported.append((callback, info))

    def _push_without_key(
        self,
        callback: Callable[..., Any],
        is_sync: bool,
        key: object = None,
        known: dict[object, CallbackInfo] | None = None,
    ) -> None:
        """A push the fast path could not count: code not seen before, one with no fast key, or
        any push while a namer or "all" needs to see every push."""
        telemetry: Telemetry = self._telemetry  # type: ignore[assignment]
        try:
            code_key = identity(callback, is_sync, self._name) if telemetry.by_code else None
            try:
                info = telemetry.known_push(code_key)
            except TypeError:  # a key holding an unhashable class (its metaclass defines __eq__)
                code_key = info = None
            if info is None:
                info = telemetry.on_push(self._name, callback, is_sync, code_key, len(self._exit_callbacks))
            else:
                info.pushed.value += 1
            if key is not None and known is not None and len(known) < MAX_KNOWN_KEYS:
                known[key] = info
        except Exception as exc:
            telemetry.fault("push", exc)
        else:
            self._reported.append((callback, info))

    def pop_all(self) -> InstrumentedAsyncExitStack:
        new_stack = super().pop_all()
        new_stack._telemetry = self._telemetry
        new_stack._name = self._name
        new_stack.route = self.route
        new_stack.method = self.method
        new_stack._parent_context = self._parent_context
        new_stack._callback_timeout = self._callback_timeout
        new_stack._known = self._known
        # moved callbacks report to the stack that now owns them and will run them
        new_stack._reported, self._reported = self._reported, []
        return new_stack

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        callbacks = self._exit_callbacks
        if not callbacks:
            # contextlib's loop would not run: nothing suppressed, nothing raised, nothing to report
            # (most of FastAPI's stacks, most requests of some routes)
            return False
        telemetry = self._telemetry
        # nothing to report (no telemetry, FastAPI's bookkeeping only): the loop below runs as
        # contextlib's, and the unwind appears nowhere
        reported = self._reported if telemetry is not None else None
        exc_details: tuple[Any, Any, Any] = (exc_type, exc_value, tb)
        exc: Any = exc_value  # the pending exception, as 3.13 calls it
        received_exc = exc_type is not None
        frame_exc = sys.exc_info()[1]
        details_from_pending = _DETAILS_FROM_PENDING
        if details_from_pending and exc is None:
            exc_details = (None, None, None)
        timeout = self._callback_timeout
        span_threshold = 0.0
        unwinding: Unwinding | None = None
        count = 0
        clock = time.perf_counter
        start = last = 0.0
        active = None
        hung = None
        if not reported:
            reported = None
        else:
            # One reading per callback: each one's end is the next one's start (the few bookkeeping
            # instructions between two callbacks count to the next one).
            start = last = clock()
            try:
                span_threshold = telemetry.span_threshold  # type: ignore[union-attr]
                hung = telemetry.hung_callback_warning  # type: ignore[union-attr]
                if hung is not None:
                    hung_watch.unwinding.add(self)
                    if hung_watch.thread is None:
                        hung_watch.start()
                # a dict that makes the count it lacks: asking costs the unwind no Python call
                active = telemetry.active_counts[self._name]  # type: ignore[union-attr]
                if active is not None:
                    active.value += 1
                if telemetry.all_spans:  # type: ignore[union-attr]
                    unwinding = telemetry.unwinding(  # type: ignore[union-attr]
                        self._name, self.route, start, self._parent_context
                    )
            except Exception as fault:
                telemetry.fault("unwind start", fault)  # type: ignore[union-attr]
        suppressed_exc = False
        pending_raise = False
        try:
            # contextlib's loop: callbacks LIFO, as nested with statements would run them
            while callbacks:
                is_sync, cb = callbacks.pop()
                info = None
                if reported:
                    entry = reported.pop()
                    if entry[0] is cb:
                        info = entry[1]
                    else:  # cb is not reported (FastAPI's bookkeeping), or entries were taken out
                        reported.append(entry)
                        if len(reported) > 1:
                            info = _reported_info(reported, cb)
                try:
                    if details_from_pending and exc is not None:
                        exc_details = (type(exc), exc, exc.__traceback__)
                    if info is not None:
                        cb_start = last
                        if hung is not None:
                            self.running_callback = (info, cb_start, hung)
                    if is_sync:
                        cb_suppress = cb(*exc_details)
                    elif timeout is None:
                        cb_suppress = await cb(*exc_details)
                    else:
                        cb_suppress = await _time_limited(cb, exc_details, timeout)
                    if info is not None:
                        last = clock()
                        duration = last - cb_start
                        count += 1
                        try:
                            if duration < span_threshold:
                                if cb_suppress and exc_details[0] is not None:
                                    info.record_suppressed(duration)
                                else:
                                    info.record_ok(duration)
                            else:
                                suppressed = cb_suppress and exc_details[0] is not None
                                unwinding = self._slow_path(
                                    unwinding, info, cb_start, last,
                                    semconv.OUTCOME_SUPPRESSED if suppressed else semconv.OUTCOME_OK,
                                    None,
                                )  # fmt: skip
                        except Exception as fault:  # never the callback's exception
                            telemetry.fault("callback", fault)  # type: ignore[union-attr]
                    elif reported is not None:  # a callback not reported: its time is no one's
                        last = clock()
                    if cb_suppress:
                        suppressed_exc = True
                        pending_raise = False
                        exc_details = (None, None, None)
                        exc = None
                except BaseException as new_exc:
                    if reported is not None:
                        last = clock()
                    if info is not None:
                        count += 1
                        unwinding = self._slow_path(
                            unwinding, info, cb_start, last, _failure_outcome(new_exc), new_exc
                        )
                    # simulate the stack of exceptions by setting the context
                    _fix_exception_context(new_exc, exc, frame_exc)
                    pending_raise = True
                    exc_details = (type(new_exc), new_exc, new_exc.__traceback__)
                    exc = new_exc
        finally:
            if active is not None:
                active.value -= 1
            if hung is not None:
                self.running_callback = None
                hung_watch.unwinding.discard(self)
        if count:
            if unwinding is None and exc is None:
                # what went well, nothing pending: Telemetry.append_unwind written out (a call
                # fewer per request): two appends to series found by one dict lookup
                try:
                    key = (self._name, self.route, self.method, semconv.OUTCOME_OK)
                    series = telemetry.unwind_series_by_key.get(key) or telemetry.unwind_series(*key)  # type: ignore[union-attr]
                    series.record_duration(last - start)
                    series.record_callbacks(count)
                    instruments = telemetry.instruments  # type: ignore[union-attr]
                    if instruments is not None:
                        instruments.unfolded += count + 2
                        if instruments.unfolded >= FOLD_EVERY:
                            instruments.fold()
                except Exception as fault:
                    telemetry.fault("unwind", fault)  # type: ignore[union-attr]
            else:
                self._report(
                    unwinding, start, last, count, exc if pending_raise else None, exc, suppressed_exc
                )
        if pending_raise:
            try:
                # bare "raise exc" replaces our carefully
                # set-up context
                fixed_ctx = exc.__context__
                raise exc
            except BaseException:
                exc.__context__ = fixed_ctx
                raise
        return received_exc and suppressed_exc

    def _report(
        self,
        unwinding: Unwinding | None,
        start: float,
        end: float,
        count: int,
        escaped: BaseException | None,
        pending: BaseException | None,
        suppressed: bool,
    ) -> None:
        """The unwind is over, ``count`` reported callbacks ran; ``escaped`` is what a callback
        raised out of it, ``pending`` the exception still pending at its end."""
        telemetry: Telemetry = self._telemetry  # type: ignore[assignment]
        if escaped is None and pending is not None and not suppressed and is_cancellation(pending):
            # The endpoint's own errors are not the unwind's, but a cancellation escapes the
            # ``async with`` all the same: the request was cancelled, and the unwind reads so.
            escaped = pending
        telemetry.unwound(
            self._name, self.route, self.method, self._parent_context,
            unwinding, start, end, count, escaped,
        )  # fmt: skip

    def _slow_path(
        self,
        unwinding: Unwinding | None,
        info: CallbackInfo,
        start: float,
        end: float,
        outcome: str,
        exc: BaseException | None,
    ) -> Unwinding | None:
        telemetry: Telemetry = self._telemetry  # type: ignore[assignment]
        try:
            if unwinding is None:
                unwinding = telemetry.unwinding(self._name, self.route, start, self._parent_context)
            unwinding.callback_done(info, start, end, outcome, exc)
        except Exception as fault:
            telemetry.fault("callback", fault)
        return unwinding


def _reported_info(
    reported: list[tuple[Callable[..., Any], CallbackInfo]], cb: object
) -> CallbackInfo | None:
    # The last entry is not cb's (the unwind looked at it first): a callback we do not report
    # (FastAPI's bookkeeping), or entries someone took out of _exit_callbacks by hand. Look
    # further down, and drop what lies above a match.
    for index in range(len(reported) - 2, -1, -1):
        if reported[index][0] is cb:
            info = reported[index][1]
            del reported[index:]
            return info
    return None


def _fix_exception_context(
    new_exc: BaseException, old_exc: BaseException | None, frame_exc: BaseException | None
) -> None:
    # contextlib's: the context may not be correct, so find the end of the chain
    while True:
        exc_context = new_exc.__context__
        if exc_context is None or exc_context is old_exc:
            # Context is already set correctly (see issue 20317)
            return
        if exc_context is frame_exc:
            break
        new_exc = exc_context
    # Change the end of the chain to point to the exception we expect it to reference
    new_exc.__context__ = old_exc


def checked_callback_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    TelemetryOptions(callback_timeout=timeout)  # the one place that says what is accepted
    return float(timeout)


class CallbackTimeoutError(TimeoutError):
    """An async exit callback was cancelled after running longer than the stack's callback_timeout.

    It fails like any other callback: contextlib passes it to the callbacks still on the stack and
    raises it from the unwind unless one of them suppresses it.
    """


async def _time_limited(cb: Callable[..., Any], exc_details: tuple[Any, Any, Any], seconds: float) -> Any:
    with anyio.move_on_after(seconds):
        return await cb(*exc_details)
    raise CallbackTimeoutError(f"exit callback abandoned after {seconds} s (callback_timeout)")


def _failure_outcome(exc: BaseException) -> str:
    if is_cancellation(exc):
        return semconv.OUTCOME_CANCELLED
    return semconv.OUTCOME_TIMEOUT if isinstance(exc, CallbackTimeoutError) else semconv.OUTCOME_ERROR


_DEFAULT_OPTIONS = TelemetryOptions()


def global_telemetry(options: TelemetryOptions = _DEFAULT_OPTIONS) -> Telemetry | None:
    return current_telemetry(None, None, options)
