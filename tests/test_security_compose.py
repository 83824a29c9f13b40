"""The compose stack exposes nothing beyond the machine and nothing without a login: published
ports on 127.0.0.1 only and no other way onto the host network, a Grafana admin password that
has no default, no anonymous or self-service editing, provisioned dashboards and data sources
read-only, no Prometheus admin API; our own servers default to 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
import yaml

from exitstack_otel.cli import build_parser

from .conftest import require_program
from .stack_files import COMPOSE_FILE, DATASOURCES, ROOT, load_yaml

DASHBOARD_PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"
WEAK_PASSWORDS = {"", "admin", "password", "grafana", "changeme"}


def compose_config(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    program = require_program("docker-compose")
    env = {key: value for key, value in os.environ.items() if key != "GRAFANA_ADMIN_PASSWORD"}
    return subprocess.run(
        [program, "--file", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        env={**env, **environ},
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    result = compose_config({"GRAFANA_ADMIN_PASSWORD": "s3cret-for-the-test"})
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return resolved


def published(port: str | dict[str, Any]) -> tuple[str, str]:
    """(host ip, host port) of a resolved port: "IP:HOST:CONTAINER" (compose v1) or a mapping (v2)."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), str(port.get("published", ""))
    parts = str(port).split(":")
    if len(parts) == 3:
        return parts[0], parts[1]
    return "", parts[0] if len(parts) == 2 else ""


def test_nothing_is_published_beyond_loopback(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip, _ = published(port)
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
        # other ways onto the host's network or into the host
        assert service.get("network_mode") != "host", name
        assert not service.get("privileged"), name
        assert "pid" not in service, name
        assert "ipc" not in service, name
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else str(volume).split(":")[0]
            assert "docker.sock" not in source, f"{name} mounts the Docker socket"


def test_grafana_admin_password_has_no_default() -> None:
    missing = compose_config({})
    assert missing.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in missing.stderr
    raw = load_yaml(COMPOSE_FILE)["services"]["grafana"]["environment"]
    # ${VAR:?message}: refused when unset or empty, and never a literal in the file
    assert str(raw["GF_SECURITY_ADMIN_PASSWORD"]).startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert "GF_SECURITY_ADMIN_PASSWORD__FILE" not in raw
    empty = compose_config({"GRAFANA_ADMIN_PASSWORD": ""})
    assert empty.returncode != 0


def test_the_password_given_is_the_one_used(services: dict[str, Any]) -> None:
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret-for-the-test"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].lower() not in WEAK_PASSWORDS


def test_no_anonymous_or_self_service_editing(services: dict[str, Any]) -> None:
    grafana = {key: str(value).lower() for key, value in services["grafana"]["environment"].items()}
    assert grafana.get("GF_AUTH_ANONYMOUS_ENABLED") == "false"
    assert grafana.get("GF_USERS_ALLOW_SIGN_UP") == "false"
    assert grafana.get("GF_USERS_VIEWERS_CAN_EDIT", "false") == "false"
    assert grafana.get("GF_AUTH_DISABLE_LOGIN_FORM", "false") == "false"
    assert grafana.get("GF_AUTH_BASIC_ENABLED", "true") == "true"  # the API still needs credentials
    # no Grafana ini file that could switch any of this back on behind the environment's back
    assert list((ROOT / "grafana").rglob("*.ini")) == []


def test_provisioned_dashboards_and_data_sources_are_read_only() -> None:
    for provider in load_yaml(DASHBOARD_PROVIDERS)["providers"]:
        assert provider.get("allowUiUpdates") is False, provider["name"]
        assert provider.get("disableDeletion") is True, provider["name"]
    for source in load_yaml(DATASOURCES)["datasources"]:
        assert source.get("editable") is False, source["name"]


def test_prometheus_and_alertmanager_offer_no_admin_api(services: dict[str, Any]) -> None:
    for name in ("prometheus", "alertmanager"):
        command = " ".join(services[name].get("command", []))
        assert "--web.enable-admin-api" not in command, name


def test_our_own_servers_default_to_loopback() -> None:
    args = build_parser().parse_args(["demo", "--serve"])
    assert args.host == "127.0.0.1"
    assert args.prometheus_host == "127.0.0.1"
