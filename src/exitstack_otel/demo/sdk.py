"""The OpenTelemetry SDK the demo runs on: an in-process metric reader for the report, and optionally
OTLP/HTTP export to a collector and a Prometheus ``/metrics`` endpoint."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

DEFAULT_SERVICE_NAME = "exitstack-otel-demo"
SERVICE_INSTANCE_ID = "service.instance.id"
OTLP_EXPORT_INTERVAL_MS = 5000  # dashboards look at rates over a minute; 5 s keeps them fresh


@dataclass
class DemoSdk:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    reader: InMemoryMetricReader
    prometheus_server: Any = None
    notes: list[str] = field(default_factory=list)

    def shutdown(self) -> None:
        # exporters flush what they still hold; a collector that went away must not hang or crash the exit
        for provider in (self.tracer_provider, self.meter_provider):
            try:
                provider.shutdown()
            except Exception as exc:
                self.notes.append(f"telemetry shutdown: {exc}")
        if self.prometheus_server is not None:
            self.prometheus_server.shutdown()
            self.prometheus_server.server_close()


def otlp_base(endpoint: str) -> str:
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"OTLP endpoint must be an http:// or https:// URL, not {endpoint!r}")
    return endpoint.rstrip("/")


def demo_resource() -> Resource:
    """service.name (unless OTEL_SERVICE_NAME names it) and service.instance.id (unless
    OTEL_RESOURCE_ATTRIBUTES sets it), on top of the SDK's detectors.

    Without an instance id every replica of a service is the same series (Prometheus derives `instance`
    from it), and the oldest SDK pyproject allows sets none; newer ones set a random UUID. Host name and
    process id tell replicas apart just as well (a container's host name is its id) and say where to look
    when an alert names the instance."""
    resource = Resource.create(
        {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: DEFAULT_SERVICE_NAME}
    )
    if SERVICE_INSTANCE_ID in OTELResourceDetector().detect().attributes:
        return resource
    return resource.merge(Resource({SERVICE_INSTANCE_ID: f"{socket.gethostname()}-{os.getpid()}"}))


def build_sdk(
    *,
    otlp_endpoint: str | None = None,
    prometheus_port: int | None = None,
    prometheus_host: str = "127.0.0.1",
) -> DemoSdk:
    resource = demo_resource()
    reader = InMemoryMetricReader()
    readers: list[MetricReader] = [reader]
    tracer_provider = TracerProvider(resource=resource)
    notes: list[str] = []
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        base = otlp_base(otlp_endpoint)
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces")))
        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=f"{base}/v1/metrics"),
                export_interval_millis=OTLP_EXPORT_INTERVAL_MS,
            )
        )
        notes.append(f"OTLP/HTTP export to {base}")
    prometheus_server = None
    if prometheus_port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        try:
            prometheus_server, _ = start_http_server(prometheus_port, addr=prometheus_host)
        except OSError as exc:
            where = f"{prometheus_host}:{prometheus_port}"
            raise OSError(f"cannot serve Prometheus metrics on {where}: {exc.strerror or exc}") from exc
        readers.append(PrometheusMetricReader())
        notes.append(f"Prometheus metrics on http://{prometheus_host}:{prometheus_port}/metrics")
    meter_provider = MeterProvider(metric_readers=readers, resource=resource)
    return DemoSdk(tracer_provider, meter_provider, reader, prometheus_server, notes)
