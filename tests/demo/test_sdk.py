"""The demo's resource: replicas stay apart by service.instance.id, which Prometheus turns into `instance`."""

from __future__ import annotations

import os
import socket

import pytest

from exitstack_otel.demo.sdk import DEFAULT_SERVICE_NAME, demo_resource


def test_every_process_gets_an_instance_id_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    attributes = demo_resource().attributes
    assert attributes["service.instance.id"] == f"{socket.gethostname()}-{os.getpid()}"
    assert attributes["service.name"] == DEFAULT_SERVICE_NAME


def test_an_instance_id_from_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=pod-7,deployment.environment.name=prod"
    )
    monkeypatch.setenv("OTEL_SERVICE_NAME", "orders")
    attributes = demo_resource().attributes
    assert attributes["service.instance.id"] == "pod-7"
    assert attributes["service.name"] == "orders"
    assert attributes["deployment.environment.name"] == "prod"
