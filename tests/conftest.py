from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator

import pytest

from exitstack_otel import cleanup_log, eager, shield
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


# How the shield starts an unwind's task on asyncio: a spare task stands in (3.11 and newer,
# exitstack_otel.eager) through its compiled step or its pure-Python one, an eager task (3.12 and
# newer, where no spare can), or an ordinary task (3.10, and the last fallback).
UNWIND_TASK_STARTS = (
    (["eager"] if sys.version_info >= (3, 12) else [])
    + (["spare", "spare-python"] if sys.version_info >= (3, 11) else [])
    + ["plain"]
)
FIRST_STEPS = ("compiled", "python")
"""How a spare runs an unwind's first step: ``_first_step.c`` where it built, else Python."""


def use_first_step(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """The spare's first step the test runs: the compiled one (a skip on a laptop where it did
    not build, a failure in CI), or the pure-Python path that runs wherever it did not."""
    if step == "python":
        monkeypatch.setattr(eager, "_compiled_step", None)
    else:
        require_compiled("_first_step", eager.compiled())


@pytest.fixture
def unwind_task_start(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each way the shield can start an unwind's task on this Python, one after the other."""
    start = str(request.param)
    monkeypatch.setattr(shield, "_EAGER_TASKS", start == "eager")
    monkeypatch.setattr(eager, "AVAILABLE", start.startswith("spare"))
    use_first_step(monkeypatch, "python" if start == "spare-python" else "compiled")
    return start


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # every anyio test runs on both backends
    if "anyio_backend" in metafunc.fixturenames:
        metafunc.parametrize("anyio_backend", ["asyncio", "trio"], indirect=True)
    if "unwind_task_start" in metafunc.fixturenames:
        metafunc.parametrize("unwind_task_start", UNWIND_TASK_STARTS, indirect=True)


def require_program(name: str) -> str:
    """Path of a real program a test needs: a skip on a laptop without it, a failure in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: see .ci/run for the package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def require_compiled(module: str, built: bool) -> None:
    """A compiled part of the package (``exitstack_otel.<module>``) a test needs: a skip on a
    laptop where it did not build, a failure in CI (which installs the compiler and headers).
    Works at a module's top level too."""
    if built:
        return
    message = f"exitstack_otel.{module} is not built (needs a C compiler and Python's headers)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message, allow_module_level=True)
