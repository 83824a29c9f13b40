"""``exitstack-otel``'s argument checks and messages, in process (tests/integration/test_cli.py runs it)."""

from __future__ import annotations

import pytest

from exitstack_otel.cli import main, missing_demo_dependency


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--rate", "fast"], "argument --rate: not a number: 'fast'"),
        (["demo", "--rate", "0"], "argument --rate: must be > 0, not 0"),
        (["demo", "--rate", "nan"], "argument --rate: must be > 0, not nan"),
        (["demo", "--rate", "inf"], "argument --rate: must be > 0, not inf"),
        (["demo", "--duration", "inf"], "argument --duration: must be > 0, not inf"),
        (["demo", "--slow-seconds", "nan"], "argument --slow-seconds: must be >= 0, not nan"),
        (["demo", "--slow-seconds", "-1"], "argument --slow-seconds: must be >= 0, not -1"),
        (["demo", "--mix", "upload=inf"], "mix weights must be finite"),
        (["demo", "--concurrency", "0"], "argument --concurrency: must be at least 1, not 0"),
        (["demo", "--concurrency", "1.5"], "argument --concurrency: not a whole number: '1.5'"),
        (["demo", "--slow-share", "-0.1"], "argument --slow-share: must be between 0 and 1, not -0.1"),
        (["demo", "--prometheus-port", "x"], "argument --prometheus-port: not a port number: 'x'"),
        (["demo", "--failure-share", "2"], "argument --failure-share: must be between 0 and 1, not 2"),
        (["demo", "--mix", "socks=1"], "unknown request kind(s) socks"),
        (["demo", "--port", "70000"], "a port is 0-65535"),
        (["demo", "--otlp-endpoint", "collector:4318"], "must be an http:// or https:// URL"),
        (["demo", "--serve", "--traffic-only"], "not allowed with argument"),
        (["demo", "--traffic-only"], "--traffic-only needs --target URL"),
        (["demo", "--target", "http://127.0.0.1:1"], "--target goes with --traffic-only"),
        (["traffic"], "the following arguments are required: --target"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_flags_get_a_one_line_error(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("exitstack-otel")
    assert "error:" in last_line
    assert message in last_line


def test_other_missing_modules_are_not_blamed_on_the_extra() -> None:
    assert missing_demo_dependency(ModuleNotFoundError("x", name="websockets.sync.client")) == "websockets"
    assert missing_demo_dependency(ModuleNotFoundError("x", name="opentelemetry.exporter")) == (
        "OpenTelemetry's exporters"
    )
    assert missing_demo_dependency(ModuleNotFoundError("x", name="opentelemetry")) is None
    assert missing_demo_dependency(ModuleNotFoundError("x", name="exitstack_otel.demo.nothing")) is None
    assert missing_demo_dependency(ModuleNotFoundError("x")) is None
