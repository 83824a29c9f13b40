"""``options_from_environment``: the OTEL_PYTHON_EXITSTACK_* variables as keyword arguments."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from exitstack_otel import settings
from exitstack_otel.settings import build_options, options_from_environment
from exitstack_otel.telemetry import TelemetryOptions


def test_nothing_set_is_nothing_returned() -> None:
    assert options_from_environment({}) == {}
    assert options_from_environment({"OTEL_SERVICE_NAME": "shop", settings.CALLBACK_SPANS: ""}) == {}


def test_every_variable_becomes_its_keyword() -> None:
    environ = {
        settings.CALLBACK_SPANS: " All ",
        settings.SLOW_CALLBACK_THRESHOLD: "0.25",
        settings.CALLBACK_TIMEOUT: "5",
        settings.MAX_CALLBACK_NAMES: "50",
    }
    assert options_from_environment(environ) == {
        "callback_spans": "all",
        "slow_callback_threshold": 0.25,
        "callback_timeout": 5.0,
        "max_callback_names": 50,
    }


def test_only_what_is_set_is_returned() -> None:
    assert options_from_environment({settings.SLOW_CALLBACK_THRESHOLD: "0"}) == {
        "slow_callback_threshold": 0.0
    }
    assert options_from_environment({settings.CALLBACK_TIMEOUT: "none"}) == {"callback_timeout": None}
    assert options_from_environment({settings.CALLBACK_TIMEOUT: "NONE"}) == {"callback_timeout": None}


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.CALLBACK_SPANS, "problems")
    assert options_from_environment() == {"callback_spans": "problems"}


def test_the_keywords_are_telemetry_options_fields() -> None:
    # what the variables give is what TelemetryOptions takes
    environ = {
        settings.CALLBACK_SPANS: "all",
        settings.SLOW_CALLBACK_THRESHOLD: "1",
        settings.MAX_CALLBACK_NAMES: "3",
    }
    options = TelemetryOptions(**options_from_environment(environ))  # type: ignore[arg-type]
    assert (options.callback_spans, options.slow_callback_threshold, options.max_callback_names) == (
        "all",
        1,
        3,
    )


@pytest.fixture(autouse=True)
def _forget_warnings() -> None:
    settings._warned.clear()  # each mistake is logged once per process; each test starts afresh


@pytest.mark.parametrize(
    ("variable", "value", "accepted", "default"),
    [
        (settings.CALLBACK_SPANS, "some", "'all' or 'problems'", "problems"),
        (settings.CALLBACK_SPANS, "bogus", "'all' or 'problems'", "problems"),
        (settings.SLOW_CALLBACK_THRESHOLD, "-1", "a number of seconds >= 0", "0.1"),
        (settings.SLOW_CALLBACK_THRESHOLD, "100ms", "a number of seconds >= 0", "0.1"),
        (settings.SLOW_CALLBACK_THRESHOLD, "nan", "a number of seconds >= 0", "0.1"),
        (settings.CALLBACK_TIMEOUT, "0", "a number of seconds > 0, e.g. 5, or 'none'", "none"),
        (settings.CALLBACK_TIMEOUT, "inf", "a number of seconds > 0, e.g. 5, or 'none'", "none"),
        (settings.CALLBACK_TIMEOUT, "off", "a number of seconds > 0, e.g. 5, or 'none'", "none"),
        (settings.MAX_CALLBACK_NAMES, "0", "a whole number >= 1", "200"),
        (settings.MAX_CALLBACK_NAMES, "2.5", "a whole number >= 1", "200"),
    ],
)
def test_a_bad_value_is_one_warning_and_the_default_applies(
    caplog: pytest.LogCaptureFixture, variable: str, value: str, accepted: str, default: str
) -> None:
    # OpenTelemetry's rule for environment settings: warn, ignore, go on with the default
    with caplog.at_level(logging.WARNING, logger="exitstack_otel"):
        assert options_from_environment({variable: value}) == {}
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "\n" not in message
    assert f"{variable}={value!r}" in message
    assert accepted in message
    assert message.endswith(f"uses the default, {default}")


def test_a_bad_value_leaves_the_good_ones_in_force(caplog: pytest.LogCaptureFixture) -> None:
    environ = {settings.CALLBACK_SPANS: "all", settings.MAX_CALLBACK_NAMES: "lots"}
    with caplog.at_level(logging.WARNING, logger="exitstack_otel"):
        assert options_from_environment(environ) == {"callback_spans": "all"}
        assert options_from_environment(environ) == {"callback_spans": "all"}
    # read twice (middleware and instrumentor, say): one line for one mistake
    assert [settings.MAX_CALLBACK_NAMES in r.getMessage() for r in caplog.records] == [True]


def test_telemetry_options_build_from_a_bad_environment_gives_the_defaults(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for variable, value in [
        (settings.CALLBACK_SPANS, "bogus"),
        (settings.SLOW_CALLBACK_THRESHOLD, "nan"),
        (settings.CALLBACK_TIMEOUT, "-3"),
        (settings.MAX_CALLBACK_NAMES, "zero"),
    ]:
        monkeypatch.setenv(variable, value)
    with caplog.at_level(logging.WARNING, logger="exitstack_otel"):
        assert build_options() == TelemetryOptions()
    assert len(caplog.records) == 4


def test_the_readme_table_names_every_variable_and_its_keyword() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("<!-- settings:", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `(OTEL_PYTHON_EXITSTACK_\w+)` \| `(\w+)` \|", table, re.MULTILINE)
    assert dict(rows) == {variable: keyword for variable, (keyword, _, _) in settings._VARIABLES.items()}
    # and each default shown is TelemetryOptions' (callback_timeout: none, the stack's default)
    defaults = dict(re.findall(r"^\| `\w+` \| `(\w+)` \|.*\| `([^`]+)` \|$", table, re.MULTILINE))
    options = TelemetryOptions()
    assert defaults == {
        "callback_spans": options.callback_spans,
        "slow_callback_threshold": str(options.slow_callback_threshold),
        "callback_timeout": "none",
        "max_callback_names": str(options.max_callback_names),
    }
