from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import pytest

from tests.support.clock import SteppedClock
from tests.support.otel_helpers import Sdk

# fixtures that live beside the helpers they go with
pytest_plugins = ["tests.support.forms"]


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
