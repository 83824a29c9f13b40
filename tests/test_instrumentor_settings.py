"""ExitStackInstrumentor reads the OTEL_PYTHON_EXITSTACK_* variables; instrument() keywords win.

In process here; tests/integration/test_instrumentor_settings_zero_code.py runs the same settings
under ``opentelemetry-instrument``.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.requests import Request

from exitstack_otel import ExitStackMiddleware, TelemetryOptions, semconv, settings
from exitstack_otel.fastapi import instrument_fastapi, uninstrument_fastapi
from exitstack_otel.instrumentor import ExitStackInstrumentor
from tests.support.fastapi_app import build_app
from tests.support.otel_helpers import Sdk, attrs, histogram_points

if TYPE_CHECKING:
    from collections.abc import Iterator

GET_DB_SPAN = f"{semconv.SPAN_CALLBACK} get_db"


@pytest.fixture(autouse=True)
def _uninstrument_afterwards() -> Iterator[None]:
    settings._warned.clear()  # each mistake is logged once per process; each test starts afresh
    yield
    if ExitStackInstrumentor().is_instrumented_by_opentelemetry:
        ExitStackInstrumentor().uninstrument()


def instrument(sdk: Sdk, **options: Any) -> None:
    ExitStackInstrumentor().instrument(
        tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider, **options
    )


async def get_item(sdk: Sdk) -> list[str]:
    """Sends one request; the names of the spans made, once its get_db teardown is on record."""
    transport = httpx.ASGITransport(app=build_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert (await http.get("/items/1")).status_code == 200
    executed = histogram_points(sdk.metrics()[semconv.CALLBACK_DURATION])
    assert "get_db" in {attrs(point)[semconv.CALLBACK_NAME] for point in executed}
    return [span.name for span in sdk.spans()]


@pytest.mark.anyio
async def test_the_environment_applies_to_instrument_without_keywords(
    sdk: Sdk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.CALLBACK_SPANS, "all")
    instrument(sdk)
    assert GET_DB_SPAN in await get_item(sdk)


@pytest.mark.anyio
async def test_instrument_keywords_win_over_the_environment(
    sdk: Sdk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.CALLBACK_SPANS, "all")
    instrument(sdk, callback_spans="problems")
    assert GET_DB_SPAN not in await get_item(sdk)


@pytest.mark.anyio
async def test_a_bad_variable_is_logged_and_instrument_goes_on_with_the_default(
    sdk: Sdk, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(settings.CALLBACK_SPANS, "everything")
    monkeypatch.setenv(settings.SLOW_CALLBACK_THRESHOLD, "0")  # a good one next to it still applies
    with caplog.at_level(logging.WARNING, logger="exitstack_otel"):
        instrument(sdk)
    [warning] = [r.getMessage() for r in caplog.records if r.name.startswith("exitstack_otel")]
    assert f"{settings.CALLBACK_SPANS}='everything'" in warning
    assert warning.endswith("uses the default, problems")
    # "problems" with a threshold of 0: get_db is slow, so it has its span
    assert GET_DB_SPAN in await get_item(sdk)


def test_a_bad_keyword_value_is_still_refused() -> None:
    with pytest.raises(ValueError, match="callback_spans must be 'all' or 'problems'"):
        ExitStackInstrumentor().instrument(callback_spans="everything")
    with pytest.raises(ValueError, match="slow_callback_threshold"):
        ExitStackInstrumentor().instrument(slow_callback_threshold=math.nan)
    # nothing was patched: a later, corrected instrument() starts from scratch
    ExitStackInstrumentor().instrument()
    ExitStackInstrumentor().uninstrument()


# -- ExitStackMiddleware and instrument_fastapi read the same variables ------------------------------


def test_the_middleware_reads_the_environment_and_its_keywords_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.CALLBACK_SPANS, "all")
    monkeypatch.setenv(settings.CALLBACK_TIMEOUT, "2.5")
    from_environment = ExitStackMiddleware(build_app())
    assert from_environment.telemetry.options.callback_spans == "all"
    assert from_environment.callback_timeout == 2.5
    explicit = ExitStackMiddleware(build_app(), callback_spans="problems", callback_timeout=None)
    assert explicit.telemetry.options.callback_spans == "problems"
    assert explicit.callback_timeout is None
    given = ExitStackMiddleware(build_app(), options=TelemetryOptions())  # an options object is all explicit
    assert given.telemetry.options.callback_spans == "problems"


@pytest.mark.anyio
async def test_a_bad_variable_never_fails_a_request_through_the_middleware(
    sdk: Sdk, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(settings.CALLBACK_TIMEOUT, "-1")
    monkeypatch.setenv(settings.CALLBACK_SPANS, "bogus")
    with caplog.at_level(logging.WARNING, logger="exitstack_otel"):
        middleware = ExitStackMiddleware(
            build_app(), tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider
        )
    assert middleware.callback_timeout is None
    assert middleware.telemetry.options == TelemetryOptions()
    warnings = sorted(r.getMessage() for r in caplog.records if r.name.startswith("exitstack_otel"))
    assert [settings.CALLBACK_SPANS in warnings[0], settings.CALLBACK_TIMEOUT in warnings[1]] == [True, True]
    transport = httpx.ASGITransport(app=middleware)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert (await http.get("/items/1")).status_code == 200


def test_a_bad_keyword_value_still_stops_the_middleware() -> None:
    with pytest.raises(ValueError, match="callback_timeout must be a finite positive number"):
        ExitStackMiddleware(build_app(), callback_timeout=-1)


@pytest.mark.anyio
async def test_instrument_fastapi_goes_on_with_the_default_for_a_bad_variable(
    sdk: Sdk, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(settings.MAX_CALLBACK_NAMES, "many")
    app = build_app()
    with caplog.at_level(logging.WARNING, logger="exitstack_otel"):
        instrument_fastapi(app, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            assert (await http.get("/items/1")).status_code == 200
    finally:
        uninstrument_fastapi(app)
    [warning] = [r.getMessage() for r in caplog.records if r.name.startswith("exitstack_otel")]
    assert f"{settings.MAX_CALLBACK_NAMES}='many'" in warning


@pytest.mark.anyio
async def test_instrument_fastapi_reads_the_environment(sdk: Sdk, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.CALLBACK_SPANS, "all")
    app = build_app()
    instrument_fastapi(app, tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            assert (await http.get("/items/1")).status_code == 200
    finally:
        uninstrument_fastapi(app)
    assert GET_DB_SPAN in [span.name for span in sdk.spans()]


@pytest.mark.anyio
async def test_callback_timeout_from_the_environment_reaches_fastapi_stacks(
    sdk: Sdk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.CALLBACK_TIMEOUT, "7")
    instrument(sdk)
    stacks: list[float | None] = []

    async def read_timeout(request: Request) -> None:
        stacks.append(request.scope["fastapi_inner_astack"]._callback_timeout)

    app = build_app()
    app.add_api_route("/timeout", read_timeout)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        assert (await http.get("/timeout")).status_code == 200
    assert stacks == [7.0]
