from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exitstack_otel import cleanup_log
from tests.support.clock import SteppedClock
from tests.support.otel_helpers import Sdk

# fixtures that live beside the helpers they go with
pytest_plugins = ["tests.support.forms"]


@pytest.fixture(scope="session", autouse=True)
def _cleanup_log_summaries_before_exit() -> Iterator[None]:
    # The failure logs of the tests' storms say what they left out at exit (atexit), after pytest's
    # report, where nobody asked; said at the end of the session instead, they are captured.
    yield
    cleanup_log._flush_all()


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sdk() -> Iterator[Sdk]:
    """A live SDK with in-memory span exporter and metric reader, shut down after the test."""
    sdk = Sdk()
    yield sdk
    sdk.shutdown()


@pytest.fixture
def stepped_clock(monkeypatch: pytest.MonkeyPatch) -> SteppedClock:
    """``time.perf_counter`` replaced for the test: the stack's durations are what the test says.

    trio reads its own clock (imported before), asyncio and the SDK use other clocks.
    """
    clock = SteppedClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    return clock


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # every anyio test runs on both backends
    if "anyio_backend" in metafunc.fixturenames:
        metafunc.parametrize("anyio_backend", ["asyncio", "trio"], indirect=True)


# scripts/get-prometheus puts Debian unstable's Prometheus 3 and Alertmanager here; looked at before PATH,
# where a distribution's Prometheus 2 (bookworm: 2.42) may be
PROMETHEUS_BIN = Path(os.environ.get("PROMETHEUS_PREFIX", "/opt/prometheus-sid")) / "bin"
PROMETHEUS_PROGRAMS = {"prometheus", "promtool", "alertmanager", "amtool"}


def require_program(name: str) -> str:
    """Path of a real program a test needs: a skip on a laptop without it, a failure in CI.

    Prometheus and promtool count only at major version 3, the one the compose stack ships: the rules
    and dashboards rely on its left-open ranges."""
    search = f"{PROMETHEUS_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    path = shutil.which(name, path=search if name in PROMETHEUS_PROGRAMS else None)
    message = f"{name} is not installed (Debian: see .ci/run for the package)"
    if name in PROMETHEUS_PROGRAMS:
        message = f"{name} is not installed; run scripts/get-prometheus"
    if path is not None and name in {"prometheus", "promtool"}:
        version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        if not version.startswith(f"{name}, version 3."):
            first_line = version.partition("\n")[0]
            message = f"{path} is not Prometheus 3 ({first_line}); run scripts/get-prometheus"
            path = None
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
