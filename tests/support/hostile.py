"""Hostile input's marker, and every string telemetry would export, to look for it in."""

from __future__ import annotations

from typing import Any

from .otel_helpers import Sdk

MARK = "zx9q"  # in every hostile value; must never show up in what telemetry exports


def exported_strings(sdk: Sdk) -> list[tuple[str, str]]:
    """(where, value) for every string the SDK would export, exception events aside."""
    found: list[tuple[str, str]] = []

    def add(where: str, attributes: Any) -> None:
        for key, value in (attributes or {}).items():
            found.append((where, str(key)))
            found.append((f"{where} {key}", str(value)))

    for span in sdk.spans():
        found.append(("span name", span.name))
        add(span.name, span.attributes)
        found.append((f"{span.name} status", span.status.description or ""))
        for event in span.events:
            if event.name != "exception":
                found.append(("event name", event.name))
                add(f"{span.name} event {event.name}", event.attributes)
    data = sdk.reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    add(metric.name, point.attributes)
    return found
