"""Whether the unwind needs a shield from cancellation, decided cheaply per request.

A shielded ``anyio.CancelScope`` costs about 4 us per request on asyncio, four times the whole
no-SDK budget, and on asyncio it guards against one thing only: the cancellation of an enclosing
anyio cancel scope (a plain ``Task.cancel()`` goes through it anyway). A task that no anyio scope
encloses, such as the task uvicorn runs a request in when no outer middleware starts a task group,
has nothing a shield could hold off, so the middleware skips it there. Everywhere else (trio,
tasks inside anyio scopes, an anyio whose internals are not the ones read here) it shields.
"""

from __future__ import annotations

import asyncio
from typing import Any

_task_states: Any
try:
    # private: anyio's record of which cancel scope each asyncio task runs in (anyio 4.x)
    from anyio._backends._asyncio import _task_states
except ImportError:  # another anyio layout: always shield
    _task_states = None


def cancellation_can_reach_task() -> bool:
    loop = asyncio._get_running_loop()  # None under trio, without the cost of an exception
    if _task_states is None or loop is None:
        return True
    state = _task_states.get(asyncio.current_task(loop))
    return state is not None and getattr(state, "cancel_scope", True) is not None
