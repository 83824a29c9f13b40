"""``exitstack-otel`` without the demo extra installed: a one-line message naming the extra, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exitstack_otel.cli import DEMO_EXTRA

TIMEOUT = 120.0  # seconds; a bound for a loaded machine, never a measurement

# Blocks one module the way a missing install does (None in sys.modules: ModuleNotFoundError), then
# runs the CLI as the console script would.
RUN_WITHOUT = """
import sys
sys.modules[sys.argv[1]] = None
from exitstack_otel.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", RUN_WITHOUT, module, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)


@pytest.mark.parametrize(
    ("module", "distribution", "args"),
    [
        ("websockets", "websockets", ["demo", "--duration", "1"]),
        ("uvicorn", "uvicorn", ["demo", "--serve"]),
        ("httpx", "httpx", ["traffic", "--target", "http://127.0.0.1:1"]),
        ("opentelemetry.sdk", "opentelemetry-sdk", ["demo", "--duration", "1"]),
        ("prometheus_client", "prometheus-client", ["demo", "--duration", "1", "--prometheus-port", "0"]),
    ],
)
def test_a_missing_demo_dependency_is_one_line_naming_the_extra(
    module: str, distribution: str, args: list[str]
) -> None:
    result = run_without(module, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"exitstack-otel: error: the demo needs {distribution}, which is not installed: {DEMO_EXTRA}"
    )
    assert DEMO_EXTRA == "pip install '.[demo]' in the exitstack-otel checkout"  # README: Install
