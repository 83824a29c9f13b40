"""A FastAPI app with every kind of request-scoped cleanup FastAPI has; shared by the FastAPI tests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, UploadFile, WebSocket
from fastapi.responses import StreamingResponse

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

# What each dependency saw, in order, so tests can tell that teardowns really ran.
events: list[str] = []


class TeardownFailed(Exception):
    pass


async def get_db() -> AsyncIterator[str]:
    events.append("get_db open")
    yield "db"
    events.append("get_db close")


def get_sync_resource() -> Iterator[str]:
    events.append("get_sync_resource open")
    yield "sync"
    events.append("get_sync_resource close")


async def get_failing_teardown() -> AsyncIterator[str]:
    yield "x"
    raise TeardownFailed("teardown failed")


async def get_reraising() -> AsyncIterator[str]:
    try:
        yield "x"
    except HTTPException:
        events.append("get_reraising saw HTTPException")
        raise


async def get_swallowing() -> AsyncIterator[str]:
    try:
        yield "x"
    except HTTPException:
        events.append("get_swallowing swallowed HTTPException")


def build_app() -> FastAPI:
    app = FastAPI()

    @app.post("/upload")
    async def upload(
        file: Annotated[UploadFile, File()],
        title: Annotated[str, Form()],
        db: Annotated[str, Depends(get_db)],
        sync: Annotated[str, Depends(get_sync_resource, scope="function")],
    ) -> dict[str, object]:
        content = await file.read()
        return {"title": title, "size": len(content), "db": db, "sync": sync}

    @app.get("/items/{item_id}")
    async def read_item(item_id: int, db: Annotated[str, Depends(get_db)]) -> dict[str, object]:
        return {"item_id": item_id, "db": db}

    @app.get("/teardown-fails")
    async def teardown_fails(value: Annotated[str, Depends(get_failing_teardown)]) -> dict[str, str]:
        return {"value": value}

    @app.get("/missing")
    async def missing(value: Annotated[str, Depends(get_reraising)]) -> None:
        raise HTTPException(status_code=404, detail="no such thing")

    @app.get("/swallowed")
    async def swallowed(value: Annotated[str, Depends(get_swallowing)]) -> None:
        raise HTTPException(status_code=404, detail="no such thing")

    @app.get("/stream")
    async def stream(db: Annotated[str, Depends(get_db)]) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for index in range(3):
                events.append(f"chunk {index}")
                yield f"chunk {index};".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.websocket("/ws")
    async def echo(websocket: WebSocket, db: Annotated[str, Depends(get_db)]) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(f"{db}:{text}")
        await websocket.close()

    return app
