"""Tests that start a server or another program (uvicorn, Prometheus, promtool, Alertmanager,
docker-compose, the CLI, an OTLP receiver): every one is marked ``integration``, which the edit
loop's ``make test-fast`` leaves out. ``require_program`` (tests/conftest.py) finds the programs."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # a conftest's hook sees the whole session's items: mark only those collected below here
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)
