"""The FastAPI application of the FastAPI rows: a JSON POST with two ``yield`` dependencies.

One dependency is a plain ``def`` (FastAPI enters and exits it in its thread pool), the other an
``async def``: the two ways services write request-scoped cleanup in FastAPI. Both do nothing, so
what differs between the plain and the instrumented app is FastAPI's stacks and their telemetry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel


class Item(BaseModel):
    name: str
    quantity: int


class Session:
    pass


def session() -> Iterator[Session]:
    yield Session()


async def audit() -> AsyncIterator[list[str]]:
    yield []


def build_app() -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/items")
    async def create_item(
        item: Item,
        db: Annotated[Session, Depends(session)],
        trail: Annotated[list[str], Depends(audit)],
    ) -> dict[str, object]:
        trail.append(item.name)
        return {"name": item.name, "quantity": item.quantity, "audited": len(trail)}

    return app
