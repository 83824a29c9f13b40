"""Random push/fail/suppress/pop_all/aclose scenarios, run on any AsyncExitStack class.

A run returns everything contextlib lets a caller observe: the order callbacks ran in and the
exception each was given, what each push method returned, which exception escaped (with its
``__context__`` chain) and what escaped the stacks that ``pop_all`` moved callbacks to.
Exceptions are compared by class and label because each run raises fresh instances.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import anyio
from hypothesis import strategies as st

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AsyncExitStack
    from types import TracebackType

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

PushKind = Literal[
    "callback",
    "push_async_callback",
    "push",
    "push_async_exit",
    "push_cm",
    "push_async_cm",
    "enter_context",
    "enter_async_context",
    "nested_stack",
]
PUSH_KINDS: tuple[PushKind, ...] = get_args(PushKind)  # the Literal's values, in its order
Behaviour = Literal["ok", "raise", "raise_base", "suppress", "enter_fails"]
BEHAVIOURS: tuple[Behaviour, ...] = get_args(Behaviour)
BodyEnd = Literal["ok", "raise", "raise_base"]


class Boom(Exception):
    pass


class BaseBoom(BaseException):
    """Not an Exception: contextlib must still run every remaining callback past it."""


@dataclass(frozen=True)
class Push:
    kind: PushKind
    behaviour: Behaviour


@dataclass(frozen=True)
class PopAll:
    pass


@dataclass(frozen=True)
class Aclose:
    pass


Op = Push | PopAll | Aclose


@dataclass(frozen=True)
class Scenario:
    ops: tuple[Op, ...]
    body_end: BodyEnd


ExcShape = tuple[str, str]
Escaped = tuple[ExcShape, tuple[ExcShape, ...], bool] | None


@dataclass
class Observed:
    log: list[str] = field(default_factory=list)
    escaped: Escaped = None
    moved_escaped: list[Escaped] = field(default_factory=list)
    moved_types_ok: bool = True


def shape(exc: BaseException | None) -> ExcShape:
    if exc is None:
        return ("-", "-")
    return (type(exc).__name__, str(exc.args[0]) if exc.args else "")


def describe(exc: BaseException) -> Escaped:
    chain: list[ExcShape] = []
    seen = {id(exc)}
    link = exc.__context__
    while link is not None and id(link) not in seen and len(chain) < 20:
        seen.add(id(link))
        chain.append(shape(link))
        link = link.__context__
    return (shape(exc), tuple(chain), exc.__suppress_context__)


def failure(behaviour: Behaviour, label: str) -> BaseException | None:
    if behaviour == "raise":
        return Boom(label)
    if behaviour == "raise_base":
        return BaseBoom(label)
    return None


def _exit_result(behaviour: Behaviour, label: str) -> bool:
    error = failure(behaviour, label)
    if error is not None:
        raise error
    return behaviour == "suppress"


class _SyncCM:
    def __init__(self, label: str, behaviour: Behaviour, log: list[str]) -> None:
        self.label, self.behaviour, self.log = label, behaviour, log

    def __enter__(self) -> str:
        if self.behaviour == "enter_fails":
            raise Boom(f"{self.label} enter")
        return f"{self.label} entered"

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        self.log.append(f"{self.label} exit {shape(exc)}")
        return _exit_result(self.behaviour, self.label)


class _AsyncCM:
    def __init__(self, label: str, behaviour: Behaviour, log: list[str]) -> None:
        self.label, self.behaviour, self.log = label, behaviour, log

    async def __aenter__(self) -> str:
        await anyio.lowlevel.checkpoint()
        if self.behaviour == "enter_fails":
            raise Boom(f"{self.label} enter")
        return f"{self.label} entered"

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        await anyio.lowlevel.checkpoint()
        self.log.append(f"{self.label} aexit {shape(exc)}")
        return _exit_result(self.behaviour, self.label)


async def _push(
    stack: AsyncExitStack, op: Push, label: str, log: list[str], make_stack: Callable[[], AsyncExitStack]
) -> None:
    kind, behaviour = op.kind, op.behaviour

    def sync_callback(*args: Any, **kwargs: Any) -> bool:
        log.append(f"{label} callback {args} {kwargs}")
        return _exit_result(behaviour, label)

    async def async_callback(*args: Any, **kwargs: Any) -> bool:
        await anyio.lowlevel.checkpoint()
        # the exception being handled is the task's: it must survive the suspension
        log.append(f"{label} async callback {args} {kwargs} handling {shape(sys.exc_info()[1])}")
        return _exit_result(behaviour, label)

    def exit_function(
        exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        log.append(f"{label} exit function {shape(exc)} {exc_type is type(exc)} {tb is not None}")
        return _exit_result(behaviour, label)

    async def async_exit_function(
        exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        await anyio.lowlevel.checkpoint()
        handling = shape(sys.exc_info()[1])
        log.append(f"{label} async exit function {shape(exc)} {exc_type is type(exc)} handling {handling}")
        return _exit_result(behaviour, label)

    returned: object
    expected: object
    if kind == "callback":
        returned, expected = stack.callback(sync_callback, label, key=1), sync_callback
    elif kind == "push_async_callback":
        returned, expected = stack.push_async_callback(async_callback, label, key=2), async_callback
    elif kind == "push":
        returned, expected = stack.push(exit_function), exit_function
    elif kind == "push_async_exit":
        returned, expected = stack.push_async_exit(async_exit_function), async_exit_function
    elif kind == "push_cm":
        sync_cm = _SyncCM(label, behaviour if behaviour != "enter_fails" else "ok", log)
        returned, expected = stack.push(sync_cm), sync_cm
    elif kind == "push_async_cm":
        async_cm = _AsyncCM(label, behaviour if behaviour != "enter_fails" else "ok", log)
        returned, expected = stack.push_async_exit(async_cm), async_cm
    elif kind == "nested_stack":
        # a stack entered on a stack, holding a callback of its own
        inner = make_stack()
        returned, expected = await stack.enter_async_context(inner), inner
        inner.push(exit_function)
    elif kind == "enter_context":
        returned = stack.enter_context(_SyncCM(label, behaviour, log))
        log.append(f"{label} returned {returned}")
        return
    else:
        returned = await stack.enter_async_context(_AsyncCM(label, behaviour, log))
        log.append(f"{label} returned {returned}")
        return
    log.append(f"{label} returned the pushed object: {returned is expected}")


async def run_scenario(make_stack: Callable[[], AsyncExitStack], scenario: Scenario) -> Observed:
    observed = Observed()
    log = observed.log
    moved: list[AsyncExitStack] = []
    stack = make_stack()
    try:
        async with stack as entered:
            log.append(f"entered is the stack: {entered is stack}")
            await _body(stack, scenario, observed, moved, make_stack)
    except BaseException as exc:  # BaseBoom included: it is part of what is compared
        observed.escaped = describe(exc)
    await _after(observed, moved)
    return observed


async def run_scenario_in_middleware(
    middleware: Callable[[ASGIApp], ASGIApp],
    scope_key: str,
    make_stack: Callable[[], AsyncExitStack],
    scenario: Scenario,
) -> Observed:
    """The scenario as an endpoint behind ``middleware``, on the stack it puts at ``scope[scope_key]``."""
    observed = Observed()
    moved: list[AsyncExitStack] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await _body(scope[scope_key], scenario, observed, moved, make_stack)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    scope: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    try:
        await middleware(endpoint)(scope, receive, send)
    except BaseException as exc:
        observed.escaped = describe(exc)
    await _after(observed, moved)
    return observed


async def _body(
    stack: AsyncExitStack,
    scenario: Scenario,
    observed: Observed,
    moved: list[AsyncExitStack],
    make_stack: Callable[[], AsyncExitStack],
) -> None:
    log = observed.log
    for index, op in enumerate(scenario.ops):
        label = f"op{index}"
        if isinstance(op, Push):
            await _push(stack, op, label, log, make_stack)
        elif isinstance(op, PopAll):
            new_stack = stack.pop_all()
            observed.moved_types_ok &= type(new_stack) is type(stack)
            moved.append(new_stack)
        else:
            log.append(f"{label} aclose")
            await stack.aclose()
    error = failure(scenario.body_end, "body")
    if error is not None:
        raise error
    log.append("body done")


async def _after(observed: Observed, moved: list[AsyncExitStack]) -> None:
    observed.log.append("main stack done")
    for new_stack in moved:
        try:
            await new_stack.aclose()
        except BaseException as exc:
            observed.moved_escaped.append(describe(exc))
        else:
            observed.moved_escaped.append(None)


def run(make_stack: Callable[[], AsyncExitStack], scenario: Scenario, backend: str) -> Observed:
    async def main() -> Observed:
        return await run_scenario(make_stack, scenario)

    return anyio.run(main, backend=backend)


def scenarios(max_ops: int = 12) -> st.SearchStrategy[Scenario]:
    push = st.builds(Push, st.sampled_from(PUSH_KINDS), st.sampled_from(BEHAVIOURS))
    op = st.one_of(push, push, push, st.just(PopAll()), st.just(Aclose()))
    return st.builds(
        Scenario, st.lists(op, max_size=max_ops).map(tuple), st.sampled_from(("ok", "raise", "raise_base"))
    )
