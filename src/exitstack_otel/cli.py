"""``exitstack-otel``: ``demo`` (service + traffic + cleanup report, or ``--serve`` alone) and ``traffic``."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from .demo.settings import APPS
from .version import __version__

DEFAULT_DEMO_SECONDS = 20.0

_N = TypeVar("_N", int, float)


def _checked(
    convert: Callable[[str], _N], what: str, accepts: Callable[[_N], bool], rule: str
) -> Callable[[str], _N]:
    """An argparse ``type``: the text converted, then checked; either failure is a one-line error."""

    def parse(text: str) -> _N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not accepts(value):  # NaN too: no comparison accepts it
            raise argparse.ArgumentTypeError(f"{rule}, not {text}")
        return value

    return parse


# finite: "inf" and "nan" are floats to Python, not a rate or a number of seconds
_positive_float = _checked(float, "a number", lambda value: math.isfinite(value) and value > 0, "must be > 0")
_seconds = _checked(float, "a number", lambda value: math.isfinite(value) and value >= 0, "must be >= 0")
_share = _checked(float, "a number", lambda value: 0.0 <= value <= 1.0, "must be between 0 and 1")
_count = _checked(int, "a whole number", lambda value: value >= 1, "must be at least 1")
_port = _checked(int, "a port number", lambda value: 0 <= value <= 65535, "a port is 0-65535")


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL, not {text!r}")
    return text


def _mix(text: str) -> dict[str, float]:
    from .demo.traffic import parse_mix

    try:
        return parse_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_traffic_options(parser: argparse.ArgumentParser, default_duration: float | None) -> None:
    group = parser.add_argument_group("traffic")
    shown = "until stopped" if default_duration is None else f"{default_duration:g}"
    group.add_argument(
        "--duration",
        type=_positive_float,
        default=default_duration,
        help=f"seconds of traffic (default: {shown})",
    )
    group.add_argument(
        "--rate", type=_positive_float, default=40.0, help="target requests per second (default: 40)"
    )
    group.add_argument(
        "--concurrency", type=_count, default=8, help="requests in flight at most (default: 8)"
    )
    group.add_argument(
        "--failure-share",
        type=_share,
        default=0.05,
        help="share of requests whose audit-flush cleanup fails (default: 0.05)",
    )
    group.add_argument(
        "--slow-share",
        type=_share,
        default=0.02,
        help="share of requests whose cleanup is slow (default: 0.02)",
    )
    group.add_argument(
        "--mix",
        type=_mix,
        default=None,
        metavar="KIND=WEIGHT,...",
        help="request kinds and weights, of upload, pool, stream, websocket "
        "(default: upload=3,pool=4,stream=2,websocket=1)",
    )
    group.add_argument("--seed", type=int, default=None, help="random seed, for a repeatable mix")
    parser.add_argument(
        "--json-report", type=Path, default=None, metavar="PATH", help="also write the report as JSON"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exitstack-otel", description="Request-scoped cleanup made visible as OpenTelemetry telemetry."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{demo,traffic}")

    demo = commands.add_parser(
        "demo",
        help="run the demo service with traffic and print a cleanup report",
        description="Runs the demo service in-process with traffic for --duration seconds, then prints a "
        "cleanup report read from the OpenTelemetry SDK's own metrics. --serve runs the service alone; "
        "--traffic-only --target URL sends traffic to a running one.",
    )
    mode = demo.add_mutually_exclusive_group()
    mode.add_argument("--serve", action="store_true", help="run the service alone until Ctrl-C or SIGTERM")
    mode.add_argument("--traffic-only", action="store_true", help="only send traffic to --target")
    demo.add_argument("--target", type=_url, help="base URL of a running demo service (with --traffic-only)")
    service = demo.add_argument_group("service")
    service.add_argument("--app", choices=APPS, default="starlette", help="which demo app")
    service.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    service.add_argument(
        "--port",
        type=_port,
        default=None,
        help="port to listen on (default: 8000 with --serve, else a free one)",
    )
    service.add_argument(
        "--otlp-endpoint",
        type=_url,
        default=os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
        help="send traces and metrics over OTLP/HTTP to this collector base URL, e.g. http://localhost:4318 "
        "(default: $OTEL_EXPORTER_OTLP_ENDPOINT, else none)",
    )
    service.add_argument("--prometheus-port", type=_port, default=None, help="serve /metrics on this port")
    service.add_argument(
        "--prometheus-host", default="127.0.0.1", help="address for /metrics (default: 127.0.0.1)"
    )
    service.add_argument(
        "--slow-seconds", type=_seconds, default=0.25, help="how long a slow cleanup takes (default: 0.25)"
    )
    service.add_argument(
        "--log-file",
        type=Path,
        default=None,
        help="where the demo writes the cleanup log's full records; the failures the traffic asks for "
        "are only counted on stderr (default: exitstack-otel-demo-PID.log in the temp directory)",
    )
    service.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        default=None,
        help="uvicorn's log level (default: warning with --serve, else critical, since the report "
        "shows failed cleanups)",
    )
    _add_traffic_options(demo, DEFAULT_DEMO_SECONDS)

    traffic = commands.add_parser(
        "traffic",
        help="send demo traffic to a running service",
        description="Sends the demo's traffic mix to --target.",
    )
    traffic.add_argument("--target", type=_url, required=True, help="base URL of a running demo service")
    _add_traffic_options(traffic, None)
    return parser


# What the demo extra brings, by import name: one of these missing is an install to do, not a bug.
_DEMO_DEPENDENCIES = (
    ("uvicorn", "uvicorn"),
    ("httpx", "httpx"),
    ("websockets", "websockets"),
    ("opentelemetry.sdk", "opentelemetry-sdk"),
    ("opentelemetry.exporter.otlp", "opentelemetry-exporter-otlp-proto-http"),
    ("opentelemetry.exporter.prometheus", "opentelemetry-exporter-prometheus"),
    ("prometheus_client", "prometheus-client"),
    ("opentelemetry.exporter", "OpenTelemetry's exporters"),  # the namespace, when none is installed
)
# from the checkout, where '.' is this project: it is not on PyPI yet (README: Install)
DEMO_EXTRA = "pip install '.[demo]' in the exitstack-otel checkout"


def missing_demo_dependency(exc: ModuleNotFoundError) -> str | None:
    """The distribution the demo needs and lacks, or None when ``exc`` is about something else."""
    name = exc.name or ""
    for module, distribution in _DEMO_DEPENDENCIES:
        if name == module or name.startswith(module + "."):
            return distribution
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(parser, args)
    except KeyboardInterrupt:
        return 130
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"exitstack-otel: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        missing = missing_demo_dependency(exc)
        if missing is None:
            raise
        print(
            f"exitstack-otel: error: the demo needs {missing}, which is not installed: {DEMO_EXTRA}",
            file=sys.stderr,
        )
        return 2


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import anyio

    from .demo.run import ServiceOptions, run_demo, run_serve, run_traffic
    from .demo.settings import DemoSettings
    from .demo.traffic import DEFAULT_MIX, TrafficConfig

    def traffic_config(target: str, duration: float | None) -> TrafficConfig:
        return TrafficConfig(
            target,
            rate=args.rate,
            concurrency=args.concurrency,
            duration=duration,
            failure_share=args.failure_share,
            slow_share=args.slow_share,
            mix=args.mix if args.mix is not None else dict(DEFAULT_MIX),
            seed=args.seed,
        )

    if args.command == "traffic" or args.traffic_only:
        if not args.target:
            parser.error("--traffic-only needs --target URL")
        return anyio.run(run_traffic, traffic_config(args.target, args.duration), args.json_report)

    if args.target:
        parser.error("--target goes with --traffic-only (or the traffic command)")
    serve = bool(args.serve)
    options = ServiceOptions(
        app=args.app,
        host=args.host,
        port=args.port if args.port is not None else (8000 if serve else 0),
        otlp_endpoint=args.otlp_endpoint,
        prometheus_port=args.prometheus_port,
        prometheus_host=args.prometheus_host,
        log_level=args.log_level or ("warning" if serve else "critical"),
        settings=DemoSettings(slow_seconds=args.slow_seconds),
        log_file=args.log_file,
    )
    if serve:
        return anyio.run(run_serve, options, args.json_report)
    return anyio.run(run_demo, options, traffic_config("http://127.0.0.1", args.duration), args.json_report)
