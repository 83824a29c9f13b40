"""A bad ``OTEL_PYTHON_EXITSTACK_*`` value in a real server process: one warning line, then the service
answers as it would with the default. Plain ``uvicorn app:app`` (the Starlette middleware is built in
the lifespan, where a raised error once left every request a 500) and ``opentelemetry-instrument
uvicorn`` (where it once stopped the interpreter starting)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from exitstack_otel import settings
from tests.support.processes import free_port, stop, wait_until_serving

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STARTUP_DEADLINE = 120.0  # seconds; a bound for a loaded machine, never a measurement

pytestmark = pytest.mark.integration

BAD = {
    settings.CALLBACK_SPANS: "bogus",
    settings.SLOW_CALLBACK_THRESHOLD: "nan",
    settings.CALLBACK_TIMEOUT: "5s",
    settings.MAX_CALLBACK_NAMES: "lots",
}


def serve_and_get(prefix: list[str], target: str) -> tuple[list[int], str]:
    """Runs ``prefix uvicorn target`` with every variable bad; the statuses of three requests and
    the server's stderr."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none", **BAD)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    argv = [*prefix, str(BIN / "uvicorn"), target, "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, url + "/orders/0", STARTUP_DEADLINE)
        statuses = [httpx.get(f"{url}/orders/{n}", timeout=30).status_code for n in (1, 2, 3)]
    finally:
        stderr = stop(process).decode(errors="replace")
    return statuses, stderr


def assert_one_line_per_variable(stderr: str) -> None:
    for variable, value in BAD.items():
        lines = [line for line in stderr.splitlines() if variable in line]
        assert len(lines) == 1, stderr
        assert f"{variable}={value!r}" in lines[0], stderr
        assert "uses the default" in lines[0], stderr
    assert "Traceback" not in stderr, stderr


def test_plain_uvicorn_serves_a_starlette_app_with_bad_settings() -> None:
    statuses, stderr = serve_and_get([], "tests.support.readme_apps:starlette_app")
    assert statuses == [200, 200, 200], stderr
    assert "lifespan' protocol appears unsupported" not in stderr
    assert_one_line_per_variable(stderr)


def test_opentelemetry_instrument_starts_a_fastapi_app_with_bad_settings() -> None:
    statuses, stderr = serve_and_get(
        [str(BIN / "opentelemetry-instrument")], "tests.support.readme_apps:fastapi_app"
    )
    assert statuses == [200, 200, 200], stderr
    assert_one_line_per_variable(stderr)
