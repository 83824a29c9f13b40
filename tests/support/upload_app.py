"""A small Starlette upload service behind ``ExitStackMiddleware``, and a runner for it.

The leak tests run it under a real uvicorn in a subprocess (``UploadServer``) so that its
descriptors and temporary files can be counted from outside; load and storm tests reuse both.
Limits come from ``UPLOAD_APP_*`` environment variables so the subprocess can be configured.

Routes: ``POST /upload`` (``read_form``), ``POST /plain-upload`` (Starlette's own
``request.form()``, never closed: the leak ``read_form`` fixes), ``GET /health`` and
``GET /closed-forms`` (how many ``FormData.close`` callbacks ran, from the server's own metrics).
``GOOD_UPLOADS`` and ``BAD_UPLOADS`` carry request bodies with the status each must get under
``TEST_LIMITS``. Reuse, as tests/integration/test_forms_server.py does::

    with run_upload_server(tmp_path, TEST_LIMITS) as server:
        baseline = usage(server.tempdir, server.pid)  # from tests.leaks
        ...  # post uploads to server.url + "/upload"
        after = settle(lambda: usage(server.tempdir, server.pid), lambda now: not now.temp_files)
        assert after.temp_files == [] and after.fd_count <= baseline.fd_count
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from exitstack_otel import ExitStackMiddleware, read_form, semconv

from .processes import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parents[2]
ENV_PREFIX = "UPLOAD_APP_"
LIMIT_NAMES = ("max_files", "max_fields", "max_part_size", "max_file_size", "spool_max_size")


async def describe_form(request: Request, limits: Mapping[str, int]) -> JSONResponse:
    form = await read_form(request, **limits)  # type: ignore[arg-type]  # keys are LIMIT_NAMES
    fields: dict[str, str] = {}
    files: list[dict[str, object]] = []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            content = await value.read()
            files.append({"field": name, "size": len(content), "filename_length": len(value.filename or "")})
        else:
            fields[name] = value
    return JSONResponse({"fields": fields, "files": files})


def closed_forms(reader: InMemoryMetricReader) -> dict[str, int]:
    """``FormData.close`` callbacks run so far, by outcome."""
    counts: dict[str, int] = {}
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data is not None else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name != semconv.CALLBACK_DURATION:
                    continue
                for point in metric.data.data_points:
                    attributes = point.attributes or {}
                    if attributes.get(semconv.CALLBACK_NAME) == "FormData.close":
                        assert isinstance(point, HistogramDataPoint)
                        outcome = str(attributes.get(semconv.CALLBACK_OUTCOME))
                        counts[outcome] = counts.get(outcome, 0) + point.count
    return counts


def create_app(
    limits: Mapping[str, int] | None = None,
    *,
    reader: InMemoryMetricReader | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Starlette:
    limits = dict(limits or {})
    reader = reader or InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])

    async def upload(request: Request) -> JSONResponse:
        return await describe_form(request, limits)

    async def plain_upload(request: Request) -> JSONResponse:
        form = await request.form()
        return JSONResponse({"parts": len(form)})

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def forms_closed(request: Request) -> JSONResponse:
        return JSONResponse(closed_forms(reader))

    return Starlette(
        routes=[
            Route("/upload", upload, methods=["POST"]),
            Route("/plain-upload", plain_upload, methods=["POST"]),
            Route("/health", health),
            Route("/closed-forms", forms_closed),
        ],
        middleware=[
            Middleware(ExitStackMiddleware, meter_provider=meter_provider, tracer_provider=tracer_provider)
        ],
    )


def limits_from_env(environ: Mapping[str, str]) -> dict[str, int]:
    return {
        name: int(environ[ENV_PREFIX + name.upper()])
        for name in LIMIT_NAMES
        if ENV_PREFIX + name.upper() in environ
    }


app = create_app(limits_from_env(os.environ))


# -- request bodies, good and bad -------------------------------------------------------------

BOUNDARY = "exitstack-otel-test-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
URLENCODED = "application/x-www-form-urlencoded"

# what the bad bodies below are measured against
TEST_LIMITS: Mapping[str, int] = {
    "max_files": 3,
    "max_fields": 5,
    "max_part_size": 1024,
    "max_file_size": 64 * 1024,
    "spool_max_size": 1024,  # every file over 1 KiB goes to disk, where leaks can be counted
}


def field_part(name: str, value: bytes) -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
    return head.encode() + value + b"\r\n"


def file_part(
    name: str, filename: str, content: bytes, content_type: str = "application/octet-stream"
) -> bytes:
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    )
    return head.encode("utf-8") + content + b"\r\n"


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


@dataclass(frozen=True)
class Upload:
    name: str
    content_type: str
    body: bytes
    status: int  # the answer expected under TEST_LIMITS


def _files(count: int, size: int) -> list[bytes]:
    return [file_part(f"f{i}", f"f{i}.bin", bytes([i % 256]) * size) for i in range(count)]


GOOD_UPLOADS: tuple[Upload, ...] = (
    Upload(
        "small file",
        MULTIPART,
        multipart(field_part("title", b"hello"), file_part("f", "a.txt", b"x" * 100)),
        200,
    ),
    Upload("files on disk", MULTIPART, multipart(*_files(3, 10 * 1024)), 200),
    Upload("urlencoded", URLENCODED, b"a=1&b=two&c=%20three", 200),
)

BAD_UPLOADS: tuple[Upload, ...] = (
    Upload(
        "malformed after a file",
        MULTIPART,
        file_part("f", "a.bin", b"y" * 4096) + f"--{BOUNDARY}\r\nno colon here\r\n\r\n".encode(),
        400,
    ),
    Upload("missing boundary", "multipart/form-data", multipart(field_part("a", b"1")), 400),
    # with an empty boundary python-multipart reads "----" as the closing one: a form of no parts
    Upload("empty boundary", "multipart/form-data; boundary=", b"----\r\n", 400),
    Upload("empty quoted boundary", 'multipart/form-data; boundary=""', b"----\r\n", 400),
    *(
        # codecs that are not charsets: decoding fails with UnicodeError or IndexError
        Upload(
            f"charset {charset}",
            f"{MULTIPART}; charset={charset}",
            multipart(field_part("a", b"xn--"), field_part("b", b"."), file_part("f", "a.bin", b"d" * 4096)),
            400,
        )
        for charset in ("undefined", "punycode", "idna")
    ),
    Upload(
        "boundary too long", "multipart/form-data; boundary=" + "b" * 300, b"--" + b"b" * 300 + b"--\r\n", 400
    ),
    Upload("too many files", MULTIPART, multipart(*_files(4, 2048)), 400),
    Upload("too many fields", MULTIPART, multipart(*(field_part(f"k{i}", b"v") for i in range(6))), 400),
    Upload("oversized field", MULTIPART, multipart(field_part("big", b"z" * 2048)), 413),
    Upload("oversized file", MULTIPART, multipart(file_part("f", "big.bin", b"w" * (70 * 1024))), 413),
    Upload("truncated", MULTIPART, file_part("f", "cut.bin", b"c" * 4096)[:-10], 400),
    Upload("missing field name", MULTIPART, multipart(b"--" + BOUNDARY.encode() + b"\r\n\r\nv\r\n"), 400),
    Upload("empty multipart body", MULTIPART, b"", 400),
    Upload("urlencoded too many fields", URLENCODED, b"&".join(b"k%d=v" % i for i in range(6)), 400),
    Upload("urlencoded oversized field", URLENCODED, b"big=" + b"z" * 2048, 413),
)


# -- running it under uvicorn in a subprocess -------------------------------------------------


@dataclass
class UploadServer:
    process: subprocess.Popen[bytes]
    port: int
    tempdir: Path
    log: Path | None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log is not None else ""

    def errors(self, since: int = 0) -> list[str]:
        """Lines of the server's output (from offset ``since``) telling of an unhandled exception."""
        lines = self.output()[since:].splitlines()
        return [line for line in lines if "Traceback" in line or "Exception in ASGI" in line]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def run_upload_server(
    tempdir: Path,
    limits: Mapping[str, int] | None = None,
    *,
    log: Path | None = None,
    startup_timeout: float = 30.0,
) -> Iterator[UploadServer]:
    """uvicorn serving ``app`` on 127.0.0.1 with ``TMPDIR=tempdir``; stopped on exit.

    ``log`` (outside ``tempdir``, which must hold nothing but temporary files) gets its output.
    """
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tempdir), PYTHONPATH=str(ROOT))
    for name, value in (limits or {}).items():
        env[ENV_PREFIX + name.upper()] = str(value)
    command = [sys.executable, "-m", "uvicorn", "tests.support.upload_app:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
    with ExitStack() as files:
        output = files.enter_context(open(log, "wb")) if log is not None else None
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=output)
    server = UploadServer(process, port, tempdir, log)
    try:
        wait_until_serving(process, server.url + "/health", startup_timeout)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
