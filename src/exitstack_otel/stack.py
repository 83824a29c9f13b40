"""``InstrumentedAsyncExitStack``: ``contextlib.AsyncExitStack`` that reports what it runs.

contextlib funnels every public push method (``callback``, ``push``, ``enter_context``,
``push_async_callback``, ``push_async_exit``, ``enter_async_context``) into one private method,
``_push_exit_callback``. Overriding it sees every push; wrapping the callback there is the only
way to time it, since nothing hooks the unwind loop itself. The wrappers keep ``is_sync``,
return the callback's result (a truthy one suppresses) and re-raise with a bare ``raise`` so
contextlib's own ``__context__`` fix-ups see exactly what they would without us.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio
from opentelemetry import context as otel_context

from . import naming, semconv
from .providers import current_telemetry
from .telemetry import CallbackInfo, Telemetry, TelemetryOptions, Unwind, is_cancellation

DEFAULT_STACK_NAME = "exitstack"

_UNSET: Any = object()


class InstrumentedAsyncExitStack(AsyncExitStack):
    """An ``AsyncExitStack`` whose pushes, callbacks and unwinds appear as spans and metrics.

    ``name`` becomes ``exitstack.stack.name``. ``telemetry`` defaults to one built on the global
    providers; with both of them the API's no-ops, the stack is plain contextlib. ``scope``, when
    given, supplies ``http.route`` and ``http.request.method`` at unwind time.
    ``callback_timeout``, when given, cancels an async exit callback still running after that many
    seconds; it then fails with ``CallbackTimeoutError`` (outcome ``timeout``) and the unwind goes
    on with the next callback. Sync callbacks cannot be interrupted and are never timed out.
    """

    def __init__(
        self,
        name: str = DEFAULT_STACK_NAME,
        *,
        telemetry: Telemetry | None = _UNSET,
        scope: Mapping[str, Any] | None = None,
        callback_timeout: float | None = None,
    ) -> None:
        super().__init__()
        self._callback_timeout = checked_callback_timeout(callback_timeout)
        if telemetry is _UNSET:
            telemetry = global_telemetry()
        self._telemetry = telemetry
        self._name = name
        self._scope = scope
        self._unwind: Unwind | None = None
        self.awaits_on_exit = False
        """True once an async exit callback was pushed: only then can unwinding await anything."""
        # the unwind span's parent is the span current where the stack was made (the request's)
        self._parent_context = (
            otel_context.get_current() if telemetry is not None and telemetry.tracer is not None else None
        )

    @property
    def name(self) -> str:
        return self._name

    def _push_exit_callback(self, callback: Callable[..., Any], is_sync: bool = True) -> None:
        run = callback
        if not is_sync:
            self.awaits_on_exit = True
            if self._callback_timeout is not None:
                run = _TimeLimited(callback, self._callback_timeout)
        telemetry = self._telemetry
        if telemetry is not None:
            try:
                kind, target = naming.classify(callback, is_sync)
                info = telemetry.on_push(self._name, kind, target, len(self._exit_callbacks) + 1)  # type: ignore[attr-defined]
            except Exception as exc:
                telemetry.fault("push", exc)
            else:
                observed = _ObservedSync if is_sync else _ObservedAsync
                run = observed(run, self, info, telemetry)
        # contextlib's own _push_exit_callback is this one line on 3.10 to 3.13 (the equivalence
        # tests run on each): appending here saves every push a second call
        self._exit_callbacks.append((is_sync, run))  # type: ignore[attr-defined]  # private in typeshed

    def pop_all(self) -> InstrumentedAsyncExitStack:
        new_stack = super().pop_all()
        new_stack._telemetry = self._telemetry
        new_stack._name = self._name
        new_stack._scope = self._scope
        new_stack._parent_context = self._parent_context
        new_stack._callback_timeout = self._callback_timeout
        new_stack.awaits_on_exit = self.awaits_on_exit
        # moved callbacks report to the stack that now owns them and will run them
        for _, callback in new_stack._exit_callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, _Observed) and callback.owner is self:
                callback.owner = new_stack
        return new_stack

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        telemetry = self._telemetry
        if telemetry is None:
            return await super().__aexit__(exc_type, exc, tb)
        outer = self._unwind  # not None when an exit callback closes this same stack again
        unwind = self._begin_unwind(telemetry)
        try:
            suppressed = await super().__aexit__(exc_type, exc, tb)
        except BaseException as escaped:
            self._end_unwind(telemetry, unwind, escaped, outer)
            raise
        # contextlib returns False rather than re-raising a pending exception nothing suppressed.
        # The endpoint's own errors are not the unwind's, but a cancellation escapes the
        # ``async with`` all the same: the request was cancelled, and the unwind reads so.
        pending_cancellation = exc if exc is not None and not suppressed and is_cancellation(exc) else None
        self._end_unwind(telemetry, unwind, pending_cancellation, outer)
        return suppressed

    def _begin_unwind(self, telemetry: Telemetry) -> Unwind | None:
        try:
            unwind = telemetry.begin_unwind(self._name, self._parent_context)
        except Exception as exc:
            telemetry.fault("unwind start", exc)
            return None
        self._unwind = unwind
        return unwind

    def _end_unwind(
        self, telemetry: Telemetry, unwind: Unwind | None, exc: BaseException | None, outer: Unwind | None
    ) -> None:
        self._unwind = outer
        if unwind is None:
            return
        try:
            telemetry.end_unwind(self._name, unwind, exc, self._scope)
        except Exception as fault:
            telemetry.fault("unwind end", fault)


class _Observed:
    __slots__ = ("__wrapped__", "owner", "info", "telemetry")

    def __init__(
        self,
        callback: Callable[..., Any],
        owner: InstrumentedAsyncExitStack,
        info: CallbackInfo,
        telemetry: Telemetry,
    ) -> None:
        self.__wrapped__ = callback
        self.owner = owner
        self.info = info
        self.telemetry = telemetry

    def _done(self, start: float, outcome: str, exc: BaseException | None) -> None:
        try:
            self.telemetry.on_callback_done(self.info, self.owner._unwind, start, outcome, exc)
        except Exception as fault:
            self.telemetry.fault("callback", fault)


def checked_callback_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"callback_timeout must be a positive number of seconds or None, not {timeout!r}")
    return float(timeout)


class CallbackTimeoutError(TimeoutError):
    """An async exit callback was cancelled after running longer than the stack's callback_timeout.

    It fails like any other callback: contextlib passes it to the callbacks still on the stack and
    raises it from the unwind unless one of them suppresses it.
    """


class _TimeLimited:
    __slots__ = ("__wrapped__", "timeout")

    def __init__(self, callback: Callable[..., Any], timeout: float) -> None:
        self.__wrapped__ = callback
        self.timeout = timeout

    async def __call__(self, *exc_details: Any) -> Any:
        with anyio.move_on_after(self.timeout):
            return await self.__wrapped__(*exc_details)
        raise CallbackTimeoutError(f"exit callback abandoned after {self.timeout} s (callback_timeout)")


def _failure_outcome(exc: BaseException) -> str:
    if is_cancellation(exc):
        return semconv.OUTCOME_CANCELLED
    return semconv.OUTCOME_TIMEOUT if isinstance(exc, CallbackTimeoutError) else semconv.OUTCOME_ERROR


class _ObservedSync(_Observed):
    __slots__ = ()

    def __call__(self, *exc_details: Any) -> Any:
        start = time.perf_counter()
        try:
            result = self.__wrapped__(*exc_details)
        except BaseException as exc:
            self._done(start, _failure_outcome(exc), exc)
            raise
        self._done(
            start,
            semconv.OUTCOME_SUPPRESSED if result and exc_details[0] is not None else semconv.OUTCOME_OK,
            None,
        )
        return result


class _ObservedAsync(_Observed):
    __slots__ = ()

    async def __call__(self, *exc_details: Any) -> Any:
        start = time.perf_counter()
        try:
            result = await self.__wrapped__(*exc_details)
        except BaseException as exc:
            self._done(start, _failure_outcome(exc), exc)
            raise
        self._done(
            start,
            semconv.OUTCOME_SUPPRESSED if result and exc_details[0] is not None else semconv.OUTCOME_OK,
            None,
        )
        return result


_DEFAULT_OPTIONS = TelemetryOptions()


def global_telemetry(options: TelemetryOptions = _DEFAULT_OPTIONS) -> Telemetry | None:
    return current_telemetry(None, None, options)
