# naming.identity, compiled (_identity.c); naming.py documents it.
from collections.abc import Callable
from types import CodeType
from typing import Any

def identity(pushed: Callable[..., Any], is_sync: bool, stack_name: str, /) -> tuple[object, ...] | None: ...
def setup(
    sync_cb_code: CodeType,
    async_cb_code: CodeType,
    kinds: tuple[str, str, str, str, str, str],
    generator_cm_base: type,
    wrapper_code_names: frozenset[str],
    transparent_wrappers: frozenset[tuple[str, str]],
    /,
) -> None: ...
