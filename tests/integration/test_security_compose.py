"""The compose stack exposes nothing beyond the machine and nothing without a login: published
ports on 127.0.0.1 only and no other way onto the host network, a Grafana admin password that
has no default and is read from a secret file, no anonymous or self-service editing, provisioned
dashboards and data sources read-only, no Prometheus admin or lifecycle API; every container
limited, read-only, without capabilities and not root; our own servers default to 127.0.0.1.
docs/security.md says what this protects and what it does not."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
import yaml

from exitstack_otel.cli import build_parser
from tests.conftest import require_program
from tests.support.stack_files import COMPOSE_FILE, DATASOURCES, ROOT, load_yaml

DASHBOARD_PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"
SECURITY_DOC = ROOT / "docs" / "security.md"
# the one container that runs as root, and the one capability it keeps (it hands Tempo's volume over)
ROOT_ONE_SHOT = "tempo-volume-init"


def compose_config(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    program = require_program("docker-compose")
    env = {key: value for key, value in os.environ.items() if not key.startswith("GRAFANA_ADMIN_PASSWORD")}
    return subprocess.run(
        [program, "--file", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        env={**env, **environ},
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    secret = tmp_path_factory.mktemp("secrets") / "grafana-admin-password"
    secret.write_text("s3cret-for-the-test")
    result = compose_config({"GRAFANA_ADMIN_PASSWORD_FILE": str(secret)})
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


@pytest.fixture(scope="module")
def services(resolved: dict[str, Any]) -> dict[str, Any]:
    services: dict[str, Any] = resolved["services"]
    return services


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


def test_grafana_admin_password_has_no_default_and_is_read_from_a_secret_file(
    resolved: dict[str, Any],
) -> None:
    missing = compose_config({})
    assert missing.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD_FILE" in missing.stderr
    assert compose_config({"GRAFANA_ADMIN_PASSWORD_FILE": ""}).returncode != 0
    grafana = resolved["services"]["grafana"]
    # the password is in no environment variable, so `docker inspect` cannot show it
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert [secret["source"] for secret in grafana["secrets"]] == ["grafana_admin_password"]
    assert resolved["secrets"]["grafana_admin_password"]["file"].endswith("grafana-admin-password")
    raw = load_yaml(COMPOSE_FILE)["secrets"]["grafana_admin_password"]["file"]
    assert str(raw).startswith("${GRAFANA_ADMIN_PASSWORD_FILE:?")  # refused when unset or empty


def test_no_password_or_secret_in_any_environment(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for key in service.get("environment", {}):
            assert not any(word in key for word in ("PASSWORD", "SECRET", "TOKEN")) or key.endswith(
                "__FILE"
            ), f"{name}: {key}"


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


def test_prometheus_and_alertmanager_offer_no_admin_or_lifecycle_api(services: dict[str, Any]) -> None:
    for name in ("prometheus", "alertmanager"):
        command = " ".join(services[name].get("command", []))
        assert "--web.enable-admin-api" not in command, name
        assert "--web.enable-lifecycle" not in command, name  # POST /-/quit stops alerting


def _limits(service: dict[str, Any]) -> dict[str, Any]:
    limits: dict[str, Any] = service.get("deploy", {}).get("resources", {}).get("limits", {})
    return limits


def _bytes(size: str) -> int:
    number, unit = size[:-1], size[-1].upper()
    return int(float(number) * {"K": 2**10, "M": 2**20, "G": 2**30}[unit])


def test_every_service_has_memory_and_cpu_limits(services: dict[str, Any]) -> None:
    for name, service in services.items():
        limits = _limits(service)
        assert 0 < float(limits["cpus"]) <= 2, name
        assert 0 < _bytes(str(limits["memory"])) <= 2 * 2**30, name
    # the memory_limiter's 80 % is of this limit, not of the host's memory
    assert _bytes(str(_limits(services["otel-collector"])["memory"])) <= 2**30


def test_every_container_is_read_only_without_capabilities_or_privilege_gain(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("cap_add", []) == (["CHOWN"] if name == ROOT_ONE_SHOT else []), name


def test_nothing_runs_as_root_that_need_not(services: dict[str, Any]) -> None:
    # images that default to root are given a user here; the others keep their image's own non-root user
    # (prom/* run as nobody, grafana/grafana as 472, grafana/tempo and the Collector as 10001)
    defaults_to_root = {"busybox"}
    for name, service in services.items():
        user = str(service.get("user", ""))
        image = service["image"].split(":")[0]
        if name == ROOT_ONE_SHOT:
            assert user == "root"
            assert service["network_mode"] == "none"  # chown needs no network
        else:
            assert user or image not in defaults_to_root, f"{name} would run as its image's root"
            assert user.split(":")[0] not in {"0", "root"}, name
    assert "USER " in (ROOT / "Dockerfile").read_text()  # the demo image


def test_tmpfs_is_bounded(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for mount in service.get("tmpfs", []):
            assert "size=" in mount, f"{name}: unbounded tmpfs {mount}"


def test_security_doc_says_what_is_and_is_not_protected() -> None:
    text = SECURITY_DOC.read_text()
    for heading in ("## What is protected", "## What is not protected"):
        assert heading in text
    for point in ("127.0.0.1", "TLS", "GF_SECURITY_ADMIN_PASSWORD__FILE", "--web.enable-lifecycle"):
        assert point in text, point


def test_our_own_servers_default_to_loopback() -> None:
    args = build_parser().parse_args(["demo", "--serve"])
    assert args.host == "127.0.0.1"
    assert args.prometheus_host == "127.0.0.1"
