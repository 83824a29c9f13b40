"""The service tests/integration/test_e2e_workers.py runs as several workers: cleanup whose outcome the
request decides, so the test knows every failure and every slow run it caused.

``/order?fail=1`` makes the ``audit_flush`` callback raise, ``/order?slow=1`` makes ``upload_close`` take
SLOW_SECONDS; both are pushed on ExitStackMiddleware's stack (2 callbacks per unwind) and the request
has one ``yield`` dependency on FastAPI's own stack (1 callback per unwind). Nothing here mentions an
SDK: it is served by ``opentelemetry-instrument``, as the README runs a service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import anyio
from fastapi import Depends, FastAPI
from starlette.requests import Request

from exitstack_otel import ExitStackMiddleware, get_exit_stack

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

# above the slow alert's 0.5 s p99 threshold (monitoring/config.py SLOW_P99_SECONDS)
SLOW_SECONDS = 0.6


class AuditFlushError(Exception):
    pass


async def audit_flush(fail: bool) -> None:
    if fail:
        raise AuditFlushError("the audit sink refused the batch")


async def upload_close(slow: bool) -> None:
    if slow:
        await anyio.sleep(SLOW_SECONDS)


async def session() -> AsyncIterator[str]:
    yield "session"


app = FastAPI()
app.add_middleware(ExitStackMiddleware)


@app.get("/order")
async def order(
    request: Request, current: Annotated[str, Depends(session)], fail: int = 0, slow: int = 0
) -> dict[str, str]:
    stack = get_exit_stack(request)
    stack.push_async_callback(audit_flush, bool(fail))
    stack.push_async_callback(upload_close, bool(slow))
    return {"session": current}
