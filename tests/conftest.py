from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

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


def require_program(name: str) -> str:
    """Path of a real program a test needs: a skip on a laptop without it, a failure in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: see .ci/run for the package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
