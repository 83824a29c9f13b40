"""The docker compose stack, checked without Docker: compose, Prometheus, Alertmanager, Collector, Tempo."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import require_program
from .stack_files import (
    COLLECTOR_CONFIG,
    COMPOSE_FILE,
    PROMETHEUS_CONFIG,
    ROOT,
    RULES_FILE,
    TEMPO_CONFIG,
    load_yaml,
)

OBSERVABILITY = {"otel-collector", "tempo", "prometheus", "alertmanager", "grafana"}


def _compose_config(password: str | None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "GRAFANA_ADMIN_PASSWORD"}
    if password is not None:
        env["GRAFANA_ADMIN_PASSWORD"] = password
    program = require_program("docker-compose")
    return subprocess.run(
        [program, "--file", str(COMPOSE_FILE), "config"], capture_output=True, text=True, env=env, cwd=ROOT
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (ports, volumes and depends_on in long form)."""
    result = _compose_config("a-test-password")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def _host_ip(port: str | dict[str, Any]) -> str:
    # docker-compose v1 resolves ports to "HOST_IP:HOST:CONTAINER/proto", v2 to a mapping
    if isinstance(port, dict):
        return str(port.get("host_ip", ""))
    parts = port.split(":")
    return parts[0] if len(parts) == 3 else ""


def _mount(volume: str | dict[str, Any]) -> tuple[str, str, bool]:
    """(source, target, read_only) of a resolved volume entry, short (v1) or long (v2) form."""
    if isinstance(volume, dict):
        return volume["source"], volume["target"], bool(volume.get("read_only"))
    source, target, *mode = volume.split(":")
    return source, target, mode == ["ro"]


def _services() -> dict[str, Any]:
    services: dict[str, Any] = load_yaml(COMPOSE_FILE)["services"]
    return services


def test_docker_compose_validates_the_file() -> None:
    program = require_program("docker-compose")
    env = {**os.environ, "GRAFANA_ADMIN_PASSWORD": "a-test-password"}
    result = subprocess.run(
        [program, "--file", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "version" not in load_yaml(COMPOSE_FILE)  # obsolete in compose v2, optional in v1.27+


def test_grafana_admin_password_must_come_from_the_environment(resolved: dict[str, Any]) -> None:
    result = _compose_config(None)
    assert result.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in result.stderr
    grafana = resolved["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == "a-test-password"
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def test_every_published_port_is_on_loopback(resolved: dict[str, Any]) -> None:
    published = [
        (name, port) for name, service in resolved["services"].items() for port in service.get("ports", [])
    ]
    assert {name for name, _ in published} >= OBSERVABILITY | {"demo"}
    for name, port in published:
        assert _host_ip(port) == "127.0.0.1", f"{name} publishes {port}"


def test_every_image_is_pinned() -> None:
    built = {service["image"] for service in _services().values() if "build" in service}
    for name, service in _services().items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert tag not in {"latest", "main", "master"}, f"{name}: {image}"
        if service["image"] not in built:
            assert tag[0].isdigit() or tag[0] == "v", f"{name}: {image} is not a version"


def test_services_start_in_order_on_health(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            wanted = condition["condition"]
            if wanted == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}'s health"
            elif wanted == "service_started":
                # only for images without a shell: their health is checked by wait-for-backends
                assert dependency in {"tempo", "otel-collector"}, f"{name} -> {dependency}"
    assert services["traffic"]["depends_on"]["demo"]["condition"] == "service_healthy"
    assert (
        services["demo"]["depends_on"]["wait-for-backends"]["condition"] == "service_completed_successfully"
    )
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    waiter = " ".join(services["wait-for-backends"]["command"])
    assert "otel-collector:13133" in waiter
    assert "tempo:3200/ready" in waiter
    for name in ("demo", "prometheus", "alertmanager", "grafana"):
        assert services[name]["healthcheck"]["test"], name


def test_data_lives_in_named_volumes_and_configs_are_the_committed_files(resolved: dict[str, Any]) -> None:
    assert set(resolved["volumes"]) >= {"prometheus-data", "alertmanager-data", "tempo-data", "grafana-data"}
    for name, service in resolved["services"].items():
        for volume in service.get("volumes", []):
            source, target, read_only = _mount(volume)
            if source.startswith("/"):
                assert Path(source).exists(), f"{name} mounts missing {source}"
                assert Path(source).is_relative_to(ROOT)
                assert read_only, f"{name} may write into the repository at {target}"
            else:
                assert source in resolved["volumes"], f"{name}: {source} is not a named volume"


def test_the_demo_exports_to_the_collector_and_traffic_targets_the_demo(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert services["demo"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert "--serve" in services["demo"]["command"]
    traffic = services["traffic"]["command"]
    assert traffic[0] == "traffic"
    assert traffic[traffic.index("--target") + 1] == "http://demo:8000"
    assert services["demo"]["build"]["context"] == str(ROOT)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "/healthz" in dockerfile
    assert "USER " in dockerfile


def test_prometheus_config_with_our_rules(tmp_path: Path) -> None:
    promtool = require_program("promtool")
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    collector_job = next(job for job in config["scrape_configs"] if job["job_name"] == "otel-collector")
    assert collector_job["honor_labels"] is True  # keep job = service.name from the Collector
    assert collector_job["static_configs"][0]["targets"] == ["otel-collector:8889"]
    # the same file with the rule path pointing at the repository, so promtool checks both together
    text = PROMETHEUS_CONFIG.read_text().replace("/etc/prometheus/rules/*.yml", str(RULES_FILE))
    (tmp_path / "prometheus.yml").write_text(text)
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout
    prometheus = load_yaml(COMPOSE_FILE)["services"]["prometheus"]
    assert "--enable-feature=exemplar-storage" in prometheus["command"]


def test_collector_pipelines() -> None:
    config = load_yaml(COLLECTOR_CONFIG)
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"metrics", "traces"}
    for pipeline in pipelines.values():
        assert pipeline["receivers"] == ["otlp"]
        assert pipeline["processors"] == ["memory_limiter", "batch"]  # the limiter first, as documented
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    assert pipelines["traces"]["exporters"] == ["otlp/tempo"]
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    prometheus = config["exporters"]["prometheus"]
    assert prometheus["add_metric_suffixes"] is True
    assert prometheus["resource_to_telemetry_conversion"]["enabled"] is True
    assert prometheus["enable_open_metrics"] is True  # exemplars
    assert prometheus["endpoint"].endswith(":8889")
    assert config["exporters"]["otlp/tempo"]["endpoint"] == "tempo:4317"
    # nothing that exposes internals by default
    assert config["service"]["extensions"] == ["health_check"]
    assert not {"debug", "logging"} & {name.split("/")[0] for name in config["exporters"]}
    assert not {"zpages", "pprof"} & {name.split("/")[0] for name in config["extensions"]}


def test_tempo_receives_what_the_collector_sends() -> None:
    tempo = load_yaml(TEMPO_CONFIG)
    assert tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert tempo["server"]["http_listen_port"] == 3200
    compose = load_yaml(COMPOSE_FILE)["services"]["tempo"]
    data_mount = next(v for v in compose["volumes"] if v.startswith("tempo-data:"))
    data_dir = data_mount.split(":")[1]
    storage = tempo["storage"]["trace"]
    assert storage["backend"] == "local"
    assert storage["wal"]["path"].startswith(data_dir)
    assert storage["local"]["path"].startswith(data_dir)


def test_the_service_commands_are_valid_for_the_cli(resolved: dict[str, Any]) -> None:
    # the compose commands go to the image's entrypoint, `exitstack-otel`: its own parser must accept them
    from exitstack_otel.cli import build_parser

    parser = build_parser()
    demo = parser.parse_args(resolved["services"]["demo"]["command"])
    assert (demo.command, demo.serve, demo.host, demo.port) == ("demo", True, "0.0.0.0", 8000)
    traffic = parser.parse_args(resolved["services"]["traffic"]["command"])
    assert traffic.command == "traffic"
    assert traffic.duration is None  # runs as long as the stack does
    assert 0 < traffic.failure_share < 1
    with pytest.raises(SystemExit):
        parser.parse_args(["traffic", "--target", "demo:8000"])  # the parser does reject bad input
