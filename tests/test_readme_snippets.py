"""The README's install lines and Starlette snippets, as a new user would copy them.

The snippets are taken from README.md itself (``readme_block``), so a test fails when the README
drifts; the zero-code commands are run in tests/integration/test_readme_zero_code.py.
"""

from __future__ import annotations

import re
import shlex
from importlib.metadata import metadata
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exitstack_otel import ExitStackMiddleware, semconv
from tests.support.otel_helpers import Sdk, attrs, histogram_points, reset_global_providers
from tests.support.readme_apps import readme_block

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def global_sdk() -> Iterator[Sdk]:
    # the snippets use the global providers, as an app run by opentelemetry-instrument does
    reset_global_providers()
    sdk = Sdk()
    trace.set_tracer_provider(sdk.tracer_provider)
    metrics.set_meter_provider(sdk.meter_provider)
    yield sdk
    reset_global_providers()
    sdk.shutdown()


def test_the_install_lines_install_this_checkout_with_extras_it_has() -> None:
    # nothing is published: every line installs the checkout ("."), never a name from an index
    block = readme_block("install")
    extras = set(metadata("exitstack-otel").get_all("Provides-Extra") or [])
    lines = [shlex.split(line, comments=True) for line in block.splitlines()]
    assert lines
    assert all(words[:2] == ["pip", "install"] and len(words) == 3 for words in lines), lines
    for *_, target in lines:
        found = re.fullmatch(r"\.(?:\[([\w,]+)\])?", target)
        assert found is not None, target
        assert set(filter(None, (found.group(1) or "").split(","))) <= extras, target
    assert {target for *_, target in lines} >= {".", *(f".[{extra}]" for extra in extras)}


async def get(app: Any, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        return await http.get(path)


@pytest.mark.anyio
async def test_the_starlette_snippet_runs_as_copied(
    global_sdk: Sdk, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace: dict[str, Any] = {}
    exec(readme_block("starlette"), namespace)  # nothing from here: the snippet imports what it uses
    response = await get(namespace["app"], "/orders/7")
    assert (response.status_code, response.text) == (200, "order 7")
    assert capsys.readouterr().out == "released after the response was sent\n"
    executed = histogram_points(global_sdk.metrics()[semconv.CALLBACK_DURATION])
    assert [(attrs(point)[semconv.CALLBACK_NAME], point.count) for point in executed] == [
        ("Connection.release", 1)
    ]


async def order(request: Request) -> PlainTextResponse:
    return PlainTextResponse("order")


def snippet_app(marker: str) -> Starlette:
    """The README's zero-code Starlette snippets: they take ``routes`` and what the README imported above."""
    namespace: dict[str, Any] = {
        "Starlette": Starlette,
        "Middleware": Middleware,
        "ExitStackMiddleware": ExitStackMiddleware,
        "routes": [Route("/orders/{order_id}", order)],
    }
    exec(readme_block(marker), namespace)
    app = namespace["app"]
    assert isinstance(app, Starlette)
    return app


def server_spans(sdk: Sdk) -> list[tuple[str, Any]]:
    return [
        (span.name, attrs(span).get("http.route")) for span in sdk.spans() if span.kind is SpanKind.SERVER
    ]


@pytest.mark.anyio
async def test_the_asgi_middleware_names_server_spans_by_raw_path(global_sdk: Sdk) -> None:
    # what the README says of the zero-code Starlette setup: one span name per order id
    app = snippet_app("zero-code-starlette")
    for path in ("/orders/0", "/orders/1"):
        assert (await get(app, path)).status_code == 200
    assert server_spans(global_sdk) == [("GET /orders/0", None), ("GET /orders/1", None)]


@pytest.mark.anyio
async def test_span_details_from_the_readme_name_server_spans_by_route(global_sdk: Sdk) -> None:
    app = snippet_app("starlette-route-names")
    for path in ("/orders/0", "/orders/1", "/nowhere"):
        await get(app, path)
    assert server_spans(global_sdk) == [
        ("GET /orders/{order_id}", "/orders/{order_id}"),
        ("GET /orders/{order_id}", "/orders/{order_id}"),
        ("GET /nowhere", None),  # no route takes it: the default name
    ]
