from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exitstack_otel import eager, shield
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
