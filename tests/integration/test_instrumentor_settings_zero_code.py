"""The OTEL_PYTHON_EXITSTACK_* variables under ``opentelemetry-instrument python -m
tests.support.zero_code_probe``: the instrumentor is loaded from its entry point, as in production,
and configured by nothing but the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exitstack_otel import semconv, settings

ROOT = Path(__file__).resolve().parents[2]
RUN_DEADLINE = 120.0  # seconds; a bound for a loaded machine, never a measurement


def run_probe(**variables: str) -> subprocess.CompletedProcess[str]:
    instrument = Path(sys.executable).parent / "opentelemetry-instrument"
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("OTEL_")},
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        **variables,
    }
    command = [str(instrument), sys.executable, "-m", "tests.support.zero_code_probe"]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_DEADLINE, check=False
    )


def probe_spans(**variables: str) -> list[dict[str, Any]]:
    result = run_probe(**variables)
    assert result.returncode == 0, result.stderr
    done, *spans = [json.loads(line) for line in result.stdout.splitlines()]
    assert done == {"requests": "done"}, result.stdout
    return spans


def callback_names(spans: list[dict[str, Any]]) -> set[str]:
    return {
        span["attributes"][semconv.CALLBACK_NAME] for span in spans if span["name"] != semconv.SPAN_UNWIND
    }


@pytest.mark.integration
def test_without_variables_only_problem_callbacks_get_spans() -> None:
    assert callback_names(probe_spans()) == set()


@pytest.mark.integration
def test_callback_spans_and_max_callback_names_from_the_environment() -> None:
    spans = probe_spans(
        **{settings.CALLBACK_SPANS: "all", settings.MAX_CALLBACK_NAMES: "2"},
    )
    names = callback_names(spans)
    assert len(names) == 3, names  # two names kept, the rest folded into _OTHER
    assert semconv.OTHER_NAME in names


@pytest.mark.integration
def test_slow_callback_threshold_from_the_environment() -> None:
    # with a threshold of 0 every callback is slow, so "problems" gives each one its span
    names = callback_names(probe_spans(**{settings.SLOW_CALLBACK_THRESHOLD: "0"}))
    assert {"get_db", "get_sync_resource", "FormData.close"} <= names


@pytest.mark.integration
def test_a_bad_value_is_one_warning_line_and_the_default_applies() -> None:
    # OpenTelemetry's rule for environment settings; this once stopped the interpreter starting
    result = run_probe(**{settings.MAX_CALLBACK_NAMES: "zero", settings.CALLBACK_SPANS: "all"})
    assert result.returncode == 0, result.stderr
    [warning] = [line for line in result.stderr.splitlines() if settings.MAX_CALLBACK_NAMES in line]
    assert f"{settings.MAX_CALLBACK_NAMES}='zero'" in warning
    assert "a whole number >= 1" in warning
    assert warning.endswith("uses the default, 200")
    done, *spans = [json.loads(line) for line in result.stdout.splitlines()]
    assert done == {"requests": "done"}, result.stdout
    assert semconv.OTHER_NAME not in callback_names(spans)  # 200 names: none folded
    assert "get_db" in callback_names(spans)  # the good variable next to it applied
