# The compiled step of eager.first_part (_first_step.c); eager.py documents both.
from asyncio import AbstractEventLoop
from collections.abc import Coroutine
from typing import Any

def first_step(
    loop: AbstractEventLoop, stand_in: object, coro: Coroutine[Any, Any, Any], if_false: object, /
) -> Any: ...
def setup(current_tasks: dict[Any, Any], pending: type, /) -> None: ...
