"""``read_form`` against bodies and headers made to hurt: charsets that are no charsets, a flood of
part headers. Each gets a client error, and every file the parser created is closed."""

from __future__ import annotations

import codecs
from pathlib import Path

import httpx
import pytest
from starlette.datastructures import UploadFile

from tests.support.forms import client_for, post
from tests.support.leaks import temp_files
from tests.support.upload_app import (
    BOUNDARY,
    MULTIPART,
    TEST_LIMITS,
    create_app,
    field_part,
    file_part,
    multipart,
)

# the reproduction: 20 MiB of 3.5 million tiny headers in one part; python-multipart
# before 0.0.27 has no limit on them and spends half a minute and half a gigabyte on it
HEADER_FLOOD = 3_500_000


def client() -> httpx.AsyncClient:
    return client_for(create_app(TEST_LIMITS))


@pytest.mark.anyio
async def test_a_flood_of_part_headers_is_refused_and_the_file_before_it_closed(
    tempdir: Path, created_files: list[UploadFile]
) -> None:
    # a well-formed field but for its headers: without a limit on them it is read, and answered 200
    flood = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="v"\r\n'.encode()
        + b"a:b\r\n" * HEADER_FLOOD
        + b"\r\nv\r\n"
    )
    body = file_part("f", "first.bin", b"d" * 4096) + flood + f"--{BOUNDARY}--\r\n".encode()
    assert len(body) > 16 * 1024 * 1024
    async with client() as http:
        response = await post(http, "/upload", body, MULTIPART)
    assert response.status_code == 400, response.text[:200]
    assert len(created_files) == 1
    assert all(upload.file.closed for upload in created_files)
    assert temp_files(tempdir) == []


@pytest.mark.anyio
@pytest.mark.parametrize("charset", ["utf-8", "UTF-8", "latin-1", "windows-1252", "no-such-charset"])
async def test_real_and_unknown_charsets_are_read(charset: str) -> None:
    # an unknown name is Starlette's business: it decodes with latin-1, losing no byte
    known = charset != "no-such-charset"
    body = multipart(field_part("title", "grüße".encode(charset if known else "latin-1")))
    async with client() as http:
        response = await post(http, "/upload", body, f"{MULTIPART}; charset={charset}")
    assert response.status_code == 200, response.text
    assert response.json()["fields"] == {"title": "grüße"}


def _broken_codec(name: str) -> codecs.CodecInfo | None:
    if name != "exitstack_test_broken":
        return None

    def decode(data: object, errors: str = "strict", /) -> tuple[str, int]:
        raise UnicodeError("broken codec")  # as "undefined" does; not a UnicodeDecodeError

    return codecs.CodecInfo(encode=codecs.utf_8_encode, decode=decode, name="exitstack_test_broken")


@pytest.mark.anyio
async def test_any_codec_that_fails_otherwise_than_a_charset_does_is_refused(
    tempdir: Path, created_files: list[UploadFile]
) -> None:
    codecs.register(_broken_codec)
    try:
        body = multipart(field_part("a", b"1"), file_part("f", "a.bin", b"d" * 4096))
        async with client() as http:
            response = await post(http, "/upload", body, f"{MULTIPART}; charset=exitstack_test_broken")
    finally:
        codecs.unregister(_broken_codec)
    assert response.status_code == 400
    assert response.text == (
        "Unsupported charset 'exitstack_test_broken' in Content-Type: it cannot decode form data."
    )
    assert all(upload.file.closed for upload in created_files)
    assert temp_files(tempdir) == []
