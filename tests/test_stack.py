"""Corner cases of InstrumentedAsyncExitStack that the random scenarios do not spell out."""

from __future__ import annotations

import inspect
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from exitstack_otel import semconv
from exitstack_otel.stack import InstrumentedAsyncExitStack
from tests.support.otel_helpers import Sdk, histogram_points

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator


def test_is_an_async_exit_stack() -> None:
    assert issubclass(InstrumentedAsyncExitStack, AsyncExitStack)


async def _push_everything(stack: AsyncExitStack, log: list[str]) -> list[object]:
    def close(name: str) -> None:
        log.append(name)

    async def aclose(name: str) -> None:
        log.append(name)

    def exit_function(*exc_details: object) -> None:
        log.append("exit")

    async def async_exit_function(*exc_details: object) -> None:
        log.append("async exit")

    @contextmanager
    def resource() -> Iterator[str]:
        yield "resource"
        log.append("resource closed")

    @asynccontextmanager
    async def async_resource() -> AsyncIterator[str]:
        yield "async resource"
        log.append("async resource closed")

    return [
        stack.callback(close, "callback") is close,
        stack.push_async_callback(aclose, "async callback") is aclose,
        stack.push(exit_function) is exit_function,
        stack.push_async_exit(async_exit_function) is async_exit_function,
        stack.enter_context(resource()),
        await stack.enter_async_context(async_resource()),
    ]


@pytest.mark.anyio
async def test_push_results_and_wrapped_callbacks_match_contextlib(sdk: Sdk) -> None:
    results: dict[str, tuple[list[object], list[str], list[str]]] = {}
    stacks: dict[str, AsyncExitStack] = {
        "contextlib": AsyncExitStack(),
        "instrumented": InstrumentedAsyncExitStack("s", telemetry=sdk.telemetry(callback_spans="all")),
    }
    for label, stack in stacks.items():
        log: list[str] = []
        async with stack:
            returned = await _push_everything(stack, log)
            # what inspect.unwrap finds behind each entry is what contextlib put there
            unwrapped = [
                getattr(inspect.unwrap(callback), "__qualname__", "?")
                for _, callback in stack._exit_callbacks  # type: ignore[attr-defined]
            ]
        results[label] = (returned, log, unwrapped)
    assert results["instrumented"] == results["contextlib"]
    assert results["contextlib"][0] == [True, True, True, True, "resource", "async resource"]
    assert len(sdk.spans_named(semconv.SPAN_UNWIND)) == 1


@pytest.mark.anyio
async def test_bad_context_manager_is_refused_like_contextlib_and_pushes_nothing(sdk: Sdk) -> None:
    errors = []
    for stack in (AsyncExitStack(), InstrumentedAsyncExitStack(telemetry=sdk.telemetry())):
        with pytest.raises((TypeError, AttributeError)) as caught:
            stack.enter_context(object())  # type: ignore[arg-type]
        errors.append((caught.type, str(caught.value)))
        assert not stack._exit_callbacks  # type: ignore[attr-defined]
    assert errors[0] == errors[1]


@pytest.mark.anyio
async def test_the_escaping_exception_is_the_very_object_raised(sdk: Sdk) -> None:
    error = ValueError("body")
    seen: list[BaseException | None] = []

    def reraise(exc_type: object, exc: BaseException | None, tb: object) -> None:
        seen.append(exc)
        assert exc is not None
        raise exc

    async def fail_in_body() -> None:
        stack = InstrumentedAsyncExitStack(telemetry=sdk.telemetry())
        async with stack:
            stack.push(reraise)
            raise error

    with pytest.raises(ValueError, match="body") as caught:
        await fail_in_body()
    assert caught.value is error
    assert seen == [error]


@pytest.mark.anyio
async def test_pop_all_moves_callbacks_to_an_instrumented_stack(sdk: Sdk) -> None:
    telemetry = sdk.telemetry(callback_spans="all")
    log: list[str] = []
    stack = InstrumentedAsyncExitStack("request", telemetry=telemetry)
    async with stack:
        stack.callback(log.append, "moved")
        moved = stack.pop_all()
    assert log == []
    assert sdk.spans_named(semconv.SPAN_UNWIND) == []  # nothing left to run: an empty unwind is not reported
    assert type(moved) is InstrumentedAsyncExitStack
    assert moved.name == "request"
    moved.callback(log.append, "pushed later")
    await moved.aclose()
    assert log == ["pushed later", "moved"]
    [unwind] = sdk.spans_named(semconv.SPAN_UNWIND)
    assert unwind.attributes[semconv.CALLBACK_COUNT] == 2  # type: ignore[index]
    callbacks = [span for span in sdk.spans() if span.name.startswith(semconv.SPAN_CALLBACK + " ")]
    assert len(callbacks) == 2
    assert all(span.parent is not None for span in callbacks)
    assert {span.parent.span_id for span in callbacks} == {unwind.context.span_id}  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_aclose_then_reuse(sdk: Sdk) -> None:
    log: list[str] = []
    stack = InstrumentedAsyncExitStack(telemetry=sdk.telemetry())
    stack.callback(log.append, "first")
    await stack.aclose()
    stack.callback(log.append, "second")
    await stack.aclose()
    assert log == ["first", "second"]
    # problems mode: quick successes make no span at all, and both unwinds are measured
    assert sdk.spans() == ()
    [point] = histogram_points(sdk.metrics()[semconv.UNWIND_DURATION])
    assert point.count == 2


@pytest.mark.anyio
async def test_non_callable_exit_fails_at_unwind_like_contextlib(sdk: Sdk) -> None:
    outcomes: list[tuple[type[BaseException], str]] = []
    make: list[Callable[[], AsyncExitStack]] = [
        AsyncExitStack,
        lambda: InstrumentedAsyncExitStack(telemetry=sdk.telemetry()),
    ]
    for factory in make:
        stack: Any = factory()
        stack.push(42)
        with pytest.raises(TypeError) as caught:
            await stack.aclose()
        outcomes.append((caught.type, str(caught.value)))
    assert outcomes[0] == outcomes[1]


@pytest.mark.anyio
async def test_callbacks_pushed_during_the_unwind_run_like_contextlib(sdk: Sdk) -> None:
    logs: list[list[str]] = []
    for stack in (
        AsyncExitStack(),
        InstrumentedAsyncExitStack(telemetry=sdk.telemetry(callback_spans="all")),
    ):
        log: list[str] = []

        def push_more(stack: AsyncExitStack = stack, log: list[str] = log) -> None:
            log.append("push_more")
            stack.callback(log.append, "pushed while unwinding")

        async with stack:
            stack.callback(log.append, "first")
            stack.callback(push_more)
        logs.append(log)
    assert logs[1] == logs[0]
    assert logs[0] == ["push_more", "pushed while unwinding", "first"]
    (unwind,) = sdk.spans_named(semconv.SPAN_UNWIND)
    assert dict(unwind.attributes or {})[semconv.CALLBACK_COUNT] == 3


@pytest.mark.anyio
async def test_a_callback_closing_its_own_stack_keeps_the_outer_unwind_counted(sdk: Sdk) -> None:
    telemetry = sdk.telemetry(callback_spans="all")
    logs: list[list[str]] = []
    for stack in (AsyncExitStack(), InstrumentedAsyncExitStack(telemetry=telemetry)):
        log: list[str] = []

        async def close_again(stack: AsyncExitStack = stack, log: list[str] = log) -> None:
            log.append("closing again")
            await stack.aclose()

        async with stack:
            stack.callback(log.append, "first")
            stack.push_async_callback(close_again)
            stack.callback(log.append, "last")
        logs.append(log)
    assert logs[1] == logs[0] == ["last", "closing again", "first"]
    outer, inner = sorted(sdk.spans_named(semconv.SPAN_UNWIND), key=lambda span: span.start_time or 0)
    # "last" and "close_again" ran in the outer unwind, "first" in the inner one
    assert dict(outer.attributes or {})[semconv.CALLBACK_COUNT] == 2
    assert dict(inner.attributes or {})[semconv.CALLBACK_COUNT] == 1
