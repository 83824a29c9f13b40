"""A small OTLP/HTTP receiver on 127.0.0.1: keeps every span and metric data point it is sent."""

from __future__ import annotations

import gzip
import threading
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from .servers import serving_http


def value_of(any_value: AnyValue) -> object:
    field = any_value.WhichOneof("value")
    return None if field is None else getattr(any_value, field)


def attributes_of(key_values: Any) -> dict[str, object]:
    pairs: list[KeyValue] = list(key_values)
    return {pair.key: value_of(pair.value) for pair in pairs}


def _histogram_fields(point: Any, data: str) -> dict[str, Any]:
    if data != "histogram":
        return {}
    return {
        "sum": point.sum,
        "bucket_counts": tuple(point.bucket_counts),
        "explicit_bounds": tuple(point.explicit_bounds),
        "min": point.min,
        "max": point.max,
        "start_time_unix_nano": point.start_time_unix_nano,
        "time_unix_nano": point.time_unix_nano,
    }


class Received:
    """What arrived, flattened: spans with their scope name, metric points with their metric name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[dict[str, Any]] = []
        self.points: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def add_traces(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        {
                            "scope": scope_spans.scope.name,
                            "name": span.name,
                            "kind": span.kind,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "attributes": attributes_of(span.attributes),
                            "status_code": span.status.code,
                        }
                    )

    def add_metrics(self, request: ExportMetricsServiceRequest) -> None:
        for resource_metrics in request.resource_metrics:
            resource = attributes_of(resource_metrics.resource.attributes)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    data = metric.WhichOneof("data")
                    if data is None:
                        continue
                    for point in getattr(metric, data).data_points:
                        self.points.append(
                            {
                                "resource": resource,
                                "scope": scope_metrics.scope.name,
                                "metric": metric.name,
                                "unit": metric.unit,
                                "type": data,
                                "attributes": attributes_of(point.attributes),
                                "count": getattr(point, "count", None),
                                "value": getattr(point, "as_int", None),
                                **_histogram_fields(point, data),
                            }
                        )

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with self.lock:
            return list(self.spans), list(self.points)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        received = self.server.received
        with received.lock:
            if self.path == "/v1/traces":
                traces = ExportTraceServiceRequest()
                traces.ParseFromString(body)
                received.add_traces(traces)
            elif self.path == "/v1/metrics":
                metrics = ExportMetricsServiceRequest()
                metrics.ParseFromString(body)
                received.add_metrics(metrics)
            elif self.path != "/v1/logs":
                received.errors.append(f"unexpected path {self.path}")
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received = Received()


class OtlpReceiver:
    """``with OtlpReceiver() as receiver:`` serves on ``receiver.endpoint`` until the block ends."""

    def __init__(self) -> None:
        self._server = _Server()
        self._serving = ExitStack()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def received(self) -> Received:
        return self._server.received

    def __enter__(self) -> OtlpReceiver:
        self._serving.enter_context(serving_http(self._server))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._serving.close()
