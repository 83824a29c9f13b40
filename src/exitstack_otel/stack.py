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
    """

    def __init__(
        self,
        name: str = DEFAULT_STACK_NAME,
        *,
        telemetry: Telemetry | None = _UNSET,
        scope: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if telemetry is _UNSET:
            telemetry = global_telemetry()
        self._telemetry = telemetry
        self._name = name
        self._scope = scope
        self._unwind: Unwind | None = None
        # the unwind span's parent is the span current where the stack was made (the request's)
        self._parent_context = (
            otel_context.get_current() if telemetry is not None and telemetry.tracer is not None else None
        )

    @property
    def name(self) -> str:
        return self._name

    def _push_exit_callback(self, callback: Callable[..., Any], is_sync: bool = True) -> None:
        telemetry = self._telemetry
        if telemetry is not None:
            try:
                kind, target = naming.classify(callback, is_sync)
                info = telemetry.on_push(self._name, kind, target, len(self._exit_callbacks) + 1)  # type: ignore[attr-defined]
            except Exception as exc:
                telemetry.fault("push", exc)
            else:
                observed = _ObservedSync if is_sync else _ObservedAsync
                callback = observed(callback, self, info, telemetry)
        super()._push_exit_callback(callback, is_sync)  # type: ignore[misc]  # private in typeshed

    def pop_all(self) -> InstrumentedAsyncExitStack:
        new_stack = super().pop_all()
        new_stack._telemetry = self._telemetry
        new_stack._name = self._name
        new_stack._scope = self._scope
        new_stack._parent_context = self._parent_context
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
        unwind = self._begin_unwind(telemetry)
        try:
            suppressed = await super().__aexit__(exc_type, exc, tb)
        except BaseException as escaped:
            self._end_unwind(telemetry, unwind, escaped)
            raise
        self._end_unwind(telemetry, unwind, None)
        return suppressed

    def _begin_unwind(self, telemetry: Telemetry) -> Unwind | None:
        try:
            unwind = telemetry.begin_unwind(self._name, self._parent_context)
        except Exception as exc:
            telemetry.fault("unwind start", exc)
            return None
        self._unwind = unwind
        return unwind

    def _end_unwind(self, telemetry: Telemetry, unwind: Unwind | None, exc: BaseException | None) -> None:
        self._unwind = None
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


def _failure_outcome(exc: BaseException) -> str:
    return semconv.OUTCOME_CANCELLED if is_cancellation(exc) else semconv.OUTCOME_ERROR


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
