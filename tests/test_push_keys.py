"""Pushes seen before are counted by a fast key (``_push_exit_callback``), and must land exactly
where naming them would: the same name, kind and stack, whichever push was first."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from exitstack_otel import semconv
from exitstack_otel.stack import InstrumentedAsyncExitStack
from exitstack_otel.telemetry import Telemetry
from tests.support.otel_helpers import Sdk, attrs, histogram_points, number_points


def _cleanup(*args: object) -> None:
    pass


async def _async_cleanup(*args: object) -> None:
    pass


class _Base:
    def __enter__(self) -> _Base:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    async def __aenter__(self) -> _Base:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass

    def close(self) -> None:
        pass


class FirstResource(_Base):
    pass


class SecondResource(_Base):  # shares FirstResource's __exit__ and __aexit__: named apart all the same
    pass


class _Equal(type):
    # a metaclass with __eq__ and no __hash__ makes its classes unhashable
    def __eq__(cls, other: object) -> bool:
        return cls is other

    __hash__ = None  # type: ignore[assignment]


class Unhashable(_Base, metaclass=_Equal):
    pass


@contextlib.contextmanager
def sync_session() -> Iterator[None]:
    yield


@contextlib.asynccontextmanager
async def async_session() -> AsyncIterator[None]:
    yield


@contextlib.asynccontextmanager
async def other_session() -> AsyncIterator[None]:
    yield


async def _push_every_kind(stack: InstrumentedAsyncExitStack) -> None:
    stack.callback(_cleanup)
    stack.callback(_cleanup, 1)  # the same function, another argument: the same series
    stack.push_async_callback(_async_cleanup)
    stack.push(_cleanup)  # the same function as a plain exit: kind exit, not callback
    stack.push_async_exit(_async_cleanup)  # likewise: async_exit, not async_callback
    stack.enter_context(FirstResource())
    stack.enter_context(SecondResource())
    await stack.enter_async_context(FirstResource())
    await stack.enter_async_context(SecondResource())
    stack.enter_context(Unhashable())
    stack.callback(FirstResource().close)  # a bound method: known by its function
    stack.enter_context(sync_session())
    await stack.enter_async_context(async_session())
    await stack.enter_async_context(other_session())
    stack.push(FirstResource())  # push() of a manager: its __exit__, kind context


EXPECTED = {
    ("_cleanup", semconv.KIND_CALLBACK): 2,
    ("_async_cleanup", semconv.KIND_ASYNC_CALLBACK): 1,
    ("_cleanup", semconv.KIND_EXIT): 1,
    ("_async_cleanup", semconv.KIND_ASYNC_EXIT): 1,
    ("FirstResource", semconv.KIND_CONTEXT): 2,
    ("SecondResource", semconv.KIND_CONTEXT): 1,
    ("FirstResource", semconv.KIND_ASYNC_CONTEXT): 1,
    ("SecondResource", semconv.KIND_ASYNC_CONTEXT): 1,
    ("Unhashable", semconv.KIND_CONTEXT): 1,
    ("_Base.close", semconv.KIND_CALLBACK): 1,
    ("sync_session", semconv.KIND_CONTEXT): 1,
    ("async_session", semconv.KIND_ASYNC_CONTEXT): 1,
    ("other_session", semconv.KIND_ASYNC_CONTEXT): 1,
}


def _counts(sdk: Sdk, metric: str, value: Callable[[Any], int]) -> dict[tuple[str, str, str], int]:
    found: dict[tuple[str, str, str], int] = {}
    points = sdk.metrics()[metric]
    for point in number_points(points) if metric == semconv.CALLBACK_PUSHED else histogram_points(points):
        labels = attrs(point)
        key = (labels[semconv.STACK_NAME], labels[semconv.CALLBACK_NAME], labels[semconv.CALLBACK_KIND])
        found[key] = found.get(key, 0) + value(point)
    return found


@pytest.mark.anyio
@pytest.mark.parametrize("stacks", [1, 3])
async def test_pushes_seen_before_land_where_naming_them_would(sdk: Sdk, stacks: int) -> None:
    telemetry = sdk.telemetry()
    for _ in range(stacks):  # the first stack's pushes are named; the later ones' are known by key
        for stack_name in ("first", "second"):
            async with InstrumentedAsyncExitStack(stack_name, telemetry=telemetry) as stack:
                await _push_every_kind(stack)
    expected = {
        (stack_name, name, kind): count * stacks
        for stack_name in ("first", "second")
        for (name, kind), count in EXPECTED.items()
    }
    assert _counts(sdk, semconv.CALLBACK_PUSHED, lambda point: int(point.value)) == expected
    assert _counts(sdk, semconv.CALLBACK_DURATION, lambda point: int(point.count)) == expected


@pytest.mark.anyio
@pytest.mark.parametrize(
    "options", [{"callback_spans": "all"}, {"callback_namer": lambda target, kind: None}]
)
async def test_no_fast_keys_where_every_push_must_be_seen(sdk: Sdk, options: dict[str, Any]) -> None:
    telemetry: Telemetry = sdk.telemetry(**options)
    for _ in range(2):
        async with InstrumentedAsyncExitStack("s", telemetry=telemetry) as stack:
            stack.callback(_cleanup)
    assert telemetry.known_pushes["s"] == (None, None)
    counts = _counts(sdk, semconv.CALLBACK_PUSHED, lambda point: int(point.value))
    assert counts == {("s", "_cleanup", "callback"): 2}
