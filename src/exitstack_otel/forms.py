"""``read_form``: a request's form, closed by the request's exit stack once the response is sent.

Plain Starlette never closes a parsed form (its routing awaits the endpoint and the response,
nothing more), so each upload's spooled temporary file stays open until garbage collection.
FastAPI pushes ``FormData.close`` onto its request stack; this does the same for Starlette apps
behind ``ExitStackMiddleware``, where the close shows up as the ``FormData.close`` callback.

Bad input is the client's fault and answered as such (400, or 413 for a part over its size
limit) through ``HTTPException``; whatever the parser created before failing is closed first.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing, suppress
from functools import lru_cache

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from .middleware import DEFAULT_SCOPE_KEY, get_exit_stack

MiB = 1024 * 1024

# Starlette allows 1000 files; once past the spool size each one holds a descriptor until the
# response is sent, so 1000 of them can exhaust a process's default limit of 1024 by themselves.
DEFAULT_MAX_FILES = 100
DEFAULT_MAX_FIELDS = 1000  # Starlette's default
DEFAULT_MAX_PART_SIZE = 1 * MiB  # a non-file field, held in memory (Starlette's default)
DEFAULT_MAX_FILE_SIZE = 100 * MiB  # a file part, spooled to disk; Starlette has no limit
DEFAULT_SPOOL_MAX_SIZE = 1 * MiB  # a file part stays in memory up to this size (Starlette's)

# The parsed form is kept in the scope: a second read_form (another Request object over the same
# scope, say) returns it instead of finding the body consumed, and pushes no second close.
_FORM_SCOPE_KEY = "exitstack_otel.form"


async def read_form(
    request: Request,
    *,
    max_files: int = DEFAULT_MAX_FILES,
    max_fields: int = DEFAULT_MAX_FIELDS,
    max_part_size: int = DEFAULT_MAX_PART_SIZE,
    max_file_size: int | None = DEFAULT_MAX_FILE_SIZE,
    spool_max_size: int = DEFAULT_SPOOL_MAX_SIZE,
    scope_key: str = DEFAULT_SCOPE_KEY,
) -> FormData:
    """The request's form (multipart or urlencoded), closed after the response has been sent.

    Any other content type gives an empty form, as ``request.form()`` does. ``max_file_size=None``
    lifts the limit on file parts.
    """
    cached = request.scope.get(_FORM_SCOPE_KEY)
    if isinstance(cached, FormData):
        return cached
    _check_limits(max_files, max_fields, max_part_size, max_file_size, spool_max_size)
    # before reading anything: without a stack nothing would ever close the form
    stack = get_exit_stack(request, scope_key)

    content_type, params = parse_options_header(request.headers.get("content-type"))
    if content_type == b"multipart/form-data":
        _check_multipart_params(params)
        form = await _parse(
            request,
            lambda stream: _MultiPartParser(
                request.headers,
                stream,
                max_files=max_files,
                max_fields=max_fields,
                max_part_size=max_part_size,
                max_file_size=max_file_size,
                spool_max_size=spool_max_size,
            ),
        )
    elif content_type == b"application/x-www-form-urlencoded":
        form = await _parse(
            request, lambda stream: _FormParser(request.headers, stream, max_fields, max_part_size)
        )
    else:
        form = FormData()
    stack.push_async_callback(form.close)
    request.scope[_FORM_SCOPE_KEY] = form
    return form


def _check_limits(
    max_files: int,
    max_fields: int,
    max_part_size: int,
    max_file_size: int | None,
    spool_max_size: int,
) -> None:
    # whole numbers only: NaN passes every "< 0" refusal, and an infinity or a fraction of a byte
    # is no limit a parser can count to
    for name, value in (("max_files", max_files), ("max_fields", max_fields)):
        if not _whole(value) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0, not {value!r}")
    for name, value in (("max_part_size", max_part_size), ("spool_max_size", spool_max_size)):
        if not _whole(value) or value < 1:
            raise ValueError(f"{name} must be a whole number of bytes, at least 1, not {value!r}")
    if max_file_size is not None and (not _whole(max_file_size) or max_file_size < 1):
        raise ValueError(
            f"max_file_size must be a whole number of bytes, at least 1, or None, not {max_file_size!r}"
        )


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_multipart_params(params: dict[bytes, bytes]) -> None:
    """Refuse, before anything is read, what Starlette's parser would accept or fail on with a 500."""
    if not params.get(b"boundary"):
        # python-multipart takes an empty boundary, and then any body as a form with no parts
        raise HTTPException(400, detail="Missing boundary in multipart.")
    charset = params.get(b"charset")
    if charset is None:
        return
    name = charset.decode("latin-1")
    try:
        codec = codecs.lookup(name).name
    except LookupError:
        return  # Starlette decodes with latin-1 then, which loses no byte
    if codec in _NOT_CHARSETS or not _decodes_any_bytes(codec):
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise HTTPException(
            400, detail=f"Unsupported charset {shown!r} in Content-Type: it cannot decode form data."
        )


# Codecs Python has that are no charset: decoding fails with UnicodeError or IndexError for some
# input on some Python versions (on 3.13 less often), which Starlette does not handle (a 500).
_NOT_CHARSETS = frozenset({"undefined", "punycode", "idna"})
# Inputs that such codecs (a third-party one, say) fail on otherwise than with UnicodeDecodeError,
# the one decoding failure Starlette handles, by falling back to latin-1.
_DECODE_PROBES = (b"", b"a", b"abc-", b"-", b"xn--a", b"\xff", b"\x80abc", b"\xc3\xa9", b"a" * 70, b"\x00")


@lru_cache(maxsize=64)  # by codec name, found by codecs.lookup: in practice a handful
def _decodes_any_bytes(codec: str) -> bool:
    for probe in _DECODE_PROBES:
        try:
            probe.decode(codec)
        except (UnicodeDecodeError, LookupError):  # what Starlette catches (IndexError is a LookupError)
            pass
        except Exception:
            return False
    return True


class _TooLarge(MultiPartException):
    pass


class _Truncated(MultiPartException):
    pass


async def _parse(
    request: Request, make_parser: Callable[[AsyncGenerator[bytes, None]], _MultiPartParser | _FormParser]
) -> FormData:
    parser = None
    try:
        async with aclosing(request.stream()) as stream:
            parser = make_parser(stream)
            form = await parser.parse()
        parser.check_complete()
    except BaseException as exc:
        if parser is not None:
            parser.close_files()
        client_error = _client_error(exc)
        if client_error is None:
            raise
        raise client_error from exc
    return form


def _client_error(exc: BaseException) -> HTTPException | None:
    """The ``HTTPException`` answering a client's mistake, None for anything else."""
    if isinstance(exc, _TooLarge):
        return HTTPException(413, detail=exc.message)
    if isinstance(exc, MultiPartException):
        return HTTPException(400, detail=exc.message)
    if isinstance(exc, FormParserError):  # urlencoded parse errors and older Starlettes
        return HTTPException(400, detail="Invalid form data.")
    if isinstance(exc, ClientDisconnect):
        # nobody reads this answer; it keeps a routine disconnect out of the server's error log
        return HTTPException(400, detail="Client disconnected before the form was received.")
    return None


class _MultiPartParser(MultiPartParser):
    """Starlette's parser with a size limit for file parts, truncation detection and a record of
    every file it created, so that a failure at any point can close them all."""

    def __init__(
        self,
        headers: Headers,
        stream: AsyncGenerator[bytes, None],
        *,
        max_files: int,
        max_fields: int,
        max_part_size: int,
        max_file_size: int | None,
        spool_max_size: int,
    ) -> None:
        super().__init__(
            headers, stream, max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
        )
        self.spool_max_size = spool_max_size
        self.max_file_size = max_file_size
        self.created: list[UploadFile] = []
        self.ended = False
        self._part_size = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._part_size = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._part_size += end - start
        if self._current_part.file is None:
            if self._part_size > self.max_part_size:
                raise _TooLarge(f"Form field exceeded the maximum size of {self.max_part_size} bytes.")
        elif self.max_file_size is not None and self._part_size > self.max_file_size:
            raise _TooLarge(f"Uploaded file exceeded the maximum size of {self.max_file_size} bytes.")
        super().on_part_data(data, start, end)

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        if self._current_part.file is not None:
            self.created.append(self._current_part.file)

    def on_end(self) -> None:
        self.ended = True

    def check_complete(self) -> None:
        # python-multipart's finalize() accepts a body cut short; the files of unfinished parts
        # would be missing from the form, and so never closed by it.
        if not self.ended:
            raise _Truncated("Multipart body ended before its closing boundary.")

    def close_files(self) -> None:
        for upload in self.created:
            with suppress(OSError):  # one failed close must not keep the others open
                upload.file.close()


class _FormParser(FormParser):
    """Starlette's urlencoded parser, answering an oversized field with 413."""

    def __init__(
        self, headers: Headers, stream: AsyncGenerator[bytes, None], max_fields: int, max_part_size: int
    ) -> None:
        super().__init__(headers, stream, max_fields=max_fields, max_part_size=max_part_size)
        self._field_size = 0

    def on_field_start(self) -> None:
        super().on_field_start()
        self._field_size = 0

    def on_field_name(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        super().on_field_name(data, start, end)

    def on_field_data(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        super().on_field_data(data, start, end)

    def _count(self, size: int) -> None:
        self._field_size += size
        if self._field_size > self.max_part_size:
            raise _TooLarge(f"Form field exceeded the maximum size of {self.max_part_size} bytes.")

    def check_complete(self) -> None:
        pass

    def close_files(self) -> None:
        pass
