"""The app tests/integration/test_readme_zero_code.py serves with several uvicorn workers: like the
README's FastAPI app (the instrumentor finds it), and each response names the worker that served it
(its pid and the service.instance.id of its SDK's resource), so the test can match what each worker
reports to what it served."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI
from opentelemetry import trace

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


async def get_session() -> AsyncIterator[str]:
    yield "session"


app = FastAPI()


@app.get("/worker")
async def worker(session: Annotated[str, Depends(get_session)]) -> dict[str, object]:
    resource = getattr(trace.get_tracer_provider(), "resource", None)
    instance = None if resource is None else resource.attributes.get("service.instance.id")
    return {"pid": os.getpid(), "instance": instance, "session": session}
