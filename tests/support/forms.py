"""What the form tests share: a private spool directory, the UploadFiles the parser made, and a
client that posts one body through httpx's ASGI transport. A pytest plugin (tests/conftest.py
loads it), so that the fixtures reach every test module by name."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.datastructures import UploadFile


@pytest.fixture
def tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Spooled files roll over into this directory, where the test can find the ones left open."""
    private = tmp_path / "spool"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    return private


@pytest.fixture
def created_files() -> Iterator[list[UploadFile]]:
    """Every UploadFile made during the test, caught where the parser makes it: also those of a
    body that fails before the endpoint gets a form."""
    seen: list[UploadFile] = []
    original = UploadFile.__init__

    def record(self: UploadFile, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        seen.append(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(UploadFile, "__init__", record)
        yield seen


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


class OneChunk(httpx.AsyncByteStream):
    """A request body that is not an async generator.

    httpx's own body streams are; when the app stops reading early (a 413, say) one is left
    unfinished, and trio warns about it whenever the garbage collector gets to it, in any test.
    """

    def __init__(self, body: bytes) -> None:
        self._body: bytes | None = body

    def __aiter__(self) -> OneChunk:
        return self

    async def __anext__(self) -> bytes:
        body, self._body = self._body, None
        if body is None:
            raise StopAsyncIteration
        return body


async def post(client: httpx.AsyncClient, path: str, body: bytes, content_type: str) -> httpx.Response:
    request = client.build_request("POST", path, content=body, headers={"content-type": content_type})
    request.stream = OneChunk(body)
    return await client.send(request)
