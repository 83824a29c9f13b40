"""Run by ``opentelemetry-instrument python -m tests.support.zero_code_probe`` in test_instrumentor_settings.

Sends two requests to the FastAPI app of tests/support/fastapi_app.py in process (the instrumentor has
patched FastAPI by the time this runs) and prints our spans as JSON lines on stdout.
"""

from __future__ import annotations

import json

import anyio
import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exitstack_otel import semconv

from .fastapi_app import build_app


async def send_requests() -> None:
    transport = httpx.ASGITransport(app=build_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert (await http.get("/items/1")).status_code == 200
        upload = {"file": ("a.txt", b"hello", "text/plain")}
        assert (await http.post("/upload", data={"title": "t"}, files=upload)).status_code == 200


def main() -> None:
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), f"opentelemetry-instrument set no SDK: {provider!r}"
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    anyio.run(send_requests)
    print(json.dumps({"requests": "done"}))  # so that no span at all still shows that the probe ran
    for span in exporter.get_finished_spans():
        if span.instrumentation_scope is not None and span.instrumentation_scope.name == semconv.SCOPE_NAME:
            print(json.dumps({"name": span.name, "attributes": dict(span.attributes or {})}))


if __name__ == "__main__":
    main()
