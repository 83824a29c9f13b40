"""exitstack_otel._first_step, the compiled step of eager.first_part: what only it answers.

Everything else it does is tested through first_part in test_eager.py, once with it and once
with the pure-Python path."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from exitstack_otel import eager
from tests.conftest import require_compiled

require_compiled("_first_step", eager.compiled())

step: Any = eager._compiled_step


async def _unwind() -> str:
    return "unwound"


def test_outside_a_task_nothing_starts() -> None:
    loop = asyncio.new_event_loop()
    try:
        coro = _unwind()
        first = step(loop, object(), coro, None)
        assert isinstance(first, eager.Pending)
        assert (first.spare, first.coro, first.yielded, first.context) == (None, coro, None, None)
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CREATED
        coro.close()
    finally:
        loop.close()


def test_inside_the_stand_ins_own_step_nothing_starts() -> None:
    """An unwind started in a first part that runs as this very stand-in."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        request = asyncio.current_task()
        assert request is not None
        coro = _unwind()
        first = step(loop, request, coro, None)
        assert isinstance(first, eager.Pending)
        assert first.context is None
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CREATED
        coro.close()
        # another stand-in: it runs, and answers a done future of what the unwind returned
        done = step(loop, object(), _unwind(), None)
        assert isinstance(done, asyncio.Future)
        assert done.result() == "unwound"
        assert asyncio.current_task() is request

    asyncio.run(main())


def test_misuse_is_a_type_error() -> None:
    from exitstack_otel import _first_step  # built: the module-level check says so

    with pytest.raises(TypeError, match="4 arguments"):
        step(None, None)
    with pytest.raises(TypeError, match="setup"):
        _first_step.setup([], eager.Pending)  # type: ignore[arg-type]
