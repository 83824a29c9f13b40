"""The docker compose stack, checked without Docker: compose, Prometheus, Collector, Tempo (Alertmanager:
test_alertmanager.py; what is locked down: test_security_compose.py)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require_program
from tests.support.stack_files import (
    COLLECTOR_CONFIG,
    COMPOSE_FILE,
    PROMETHEUS_CONFIG,
    ROOT,
    RULES_FILE,
    TEMPO_CONFIG,
    alert_rules,
    load_yaml,
)

OBSERVABILITY = {"otel-collector", "tempo", "prometheus", "alertmanager", "grafana"}


def compose_config(password_file: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config`, with Grafana's password file named (or not) in the environment."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GRAFANA_ADMIN_PASSWORD")}
    if password_file is not None:
        env["GRAFANA_ADMIN_PASSWORD_FILE"] = str(password_file)
    program = require_program("docker-compose")
    return subprocess.run(
        [program, "--file", str(COMPOSE_FILE), "config", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secrets") / "grafana-admin-password"
    path.write_text("a-test-password")
    return path


@pytest.fixture(scope="module")
def resolved(password_file: Path) -> dict[str, Any]:
    """The compose file as docker-compose resolves it (ports, volumes and depends_on in long form)."""
    result = compose_config(password_file)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_docker_compose_validates_the_file(password_file: Path) -> None:
    result = compose_config(password_file, "-q")
    assert result.returncode == 0, result.stderr
    assert "version" not in load_yaml(COMPOSE_FILE)  # obsolete in compose v2, optional in v1.27+


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


def _wheel_command(wheel_dir: Path) -> list[str]:
    """What builds a wheel in this venv: pip where it has pip, else uv (a uv-made venv, such as
    make test-lowest's, has none; uv comes with the dev group)."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(wheel_dir), "."]
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or require_program("uv")
    return [uv, "build", "--quiet", "--wheel", "--python", sys.executable, "--out-dir", str(wheel_dir), "."]


def test_the_demo_images_wheel_builds_from_what_the_dockerfile_copies(tmp_path: Path) -> None:
    """The wheels stage, replayed without Docker: only what its COPY lines bring, and the wheel it
    builds is pure Python, for every platform."""
    copied: list[str] = []
    context = tmp_path / "context"
    context.mkdir()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] != ["COPY"] or words[1].startswith("--from"):
            continue
        *sources, _ = words[1:]
        copied += sources
        for source in sources:
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not there"
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, context / source, ignore=shutil.ignore_patterns("*.so"))
            else:
                shutil.copy(ROOT / source, context / source)
    assert "pyproject.toml" in copied
    built = subprocess.run(
        _wheel_command(tmp_path),
        capture_output=True,
        text=True,
        cwd=context,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("exitstack_otel-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as files:
        names = files.namelist()
    assert "exitstack_otel/middleware.py" in names
    assert not [name for name in names if name.endswith((".so", ".c"))]


def _checkable_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    config["rule_files"] = [str(RULES_FILE)]  # the rule path, pointed at the repository
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_prometheus_config_with_our_rules(tmp_path: Path) -> None:
    # promtool 3 (scripts/get-prometheus) checks the whole file, the `otlp:` block among it
    promtool = require_program("promtool")
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    # the names of docs/telemetry.md
    assert config["otlp"]["translation_strategy"] == "UnderscoreEscapingWithSuffixes"
    path = _checkable_config(tmp_path, config)
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@pytest.mark.parametrize(
    ("block", "key", "value"),
    [
        ("scrape", "sample_limt", 10),
        ("otlp", "promote_resource_attributs", ["a"]),
        ("otlp", "translation_strategy", "Dots"),
    ],
)
def test_promtool_would_notice_a_wrong_key(tmp_path: Path, block: str, key: str, value: object) -> None:
    # what makes the check above worth something: promtool parses strictly, the otlp block too
    promtool = require_program("promtool")
    config = load_yaml(PROMETHEUS_CONFIG)
    (config["scrape_configs"][0] if block == "scrape" else config["otlp"])[key] = value
    path = _checkable_config(tmp_path, config)
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert result.returncode != 0
    assert key in result.stderr or str(value) in result.stderr, result.stderr


def test_prometheus_promotes_only_the_resource_attributes_that_label_series_usefully() -> None:
    promoted = load_yaml(PROMETHEUS_CONFIG)["otlp"]["promote_resource_attributes"]
    assert "service.name" in promoted  # service_name: Tempo's trace-to-metrics tag map matches it
    assert not [name for name in promoted if name.startswith(("telemetry.", "process.", "host.", "os."))]
    assert "service.instance.id" not in promoted  # it is `instance` already


def test_prometheus_scrapes_the_pipeline_with_limits() -> None:
    jobs = {job["job_name"]: job for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    assert jobs["otel-collector"]["static_configs"][0]["targets"] == ["otel-collector:8888"]
    assert {"otel-collector", "tempo", "alertmanager", "prometheus"} <= set(jobs)
    for name, job in jobs.items():
        for limit in ("sample_limit", "label_limit", "label_name_length_limit", "label_value_length_limit"):
            assert job[limit] > 0, f"{name}: no {limit}"
        assert not job.get("honor_labels"), name  # nothing scraped may set job or instance for others


def test_prometheus_command_line() -> None:
    command = load_yaml(COMPOSE_FILE)["services"]["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in command
    assert "--web.enable-otlp-receiver" in command  # where the Collector pushes
    assert "--web.enable-lifecycle" not in command  # POST /-/quit would switch alerting off
    assert any(flag.startswith("--storage.tsdb.retention.size=") for flag in command)
    assert any(flag.startswith("--storage.tsdb.retention.time=") for flag in command)


def test_collector_pipelines() -> None:
    config = load_yaml(COLLECTOR_CONFIG)
    pipelines = config["service"]["pipelines"]
    assert set(pipelines) == {"metrics", "traces"}
    for pipeline in pipelines.values():
        assert pipeline["receivers"] == ["otlp"]
        # the limiter first, as documented; no batch processor: the exporters batch in their queues
        assert pipeline["processors"] == ["memory_limiter", "transform/limits"]
    assert pipelines["metrics"]["exporters"] == ["otlp_http/prometheus"]
    assert pipelines["traces"]["exporters"] == ["otlp_grpc/tempo"]
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    assert protocols["grpc"]["max_recv_msg_size_mib"] <= 16
    assert protocols["http"]["max_request_body_size"] <= 16 * 2**20
    assert config["exporters"]["otlp_http/prometheus"]["endpoint"] == "http://prometheus:9090/api/v1/otlp"
    assert config["exporters"]["otlp_grpc/tempo"]["endpoint"] == "tempo:4317"
    for name, exporter in config["exporters"].items():
        queue = exporter["sending_queue"]
        assert queue["enabled"], name
        assert queue["batch"]["flush_timeout"], name
        assert queue["batch"]["max_size"] <= queue["queue_size"], name
    # names and options that current releases renamed or deprecated
    assert "batch" not in config["processors"]
    assert not {"otlp", "otlphttp", "prometheus"} & {name.split("/")[0] for name in config["exporters"]}
    # nothing that exposes internals by default
    assert config["service"]["extensions"] == ["health_check"]
    assert not {"debug", "logging"} & {name.split("/")[0] for name in config["exporters"]}
    assert not {"zpages", "pprof"} & {name.split("/")[0] for name in config["extensions"]}


def test_collector_serves_its_own_metrics_to_prometheus() -> None:
    telemetry = load_yaml(COLLECTOR_CONFIG)["service"]["telemetry"]["metrics"]
    (reader,) = telemetry["readers"]
    exporter = reader["pull"]["exporter"]["prometheus"]
    assert (exporter["host"], exporter["port"]) == ("0.0.0.0", 8888)


def test_collector_limits_what_services_push() -> None:
    limits = load_yaml(COLLECTOR_CONFIG)["processors"]["transform/limits"]
    groups = limits["metric_statements"] + limits["trace_statements"]
    statements = [statement for group in groups for statement in group["statements"]]
    assert any(s.startswith("limit(attributes,") for s in statements)
    assert any(s.startswith("truncate_all(attributes,") for s in statements)
    assert limits["error_mode"] == "ignore"  # a statement that fails drops nothing


def test_tempo_3_config() -> None:
    tempo = load_yaml(TEMPO_CONFIG)
    # Tempo 3 refuses to start on these 2.x blocks
    assert not {"ingester", "compactor", "ingester_client", "metrics_generator_client"} & set(tempo)
    assert tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert tempo["server"]["http_listen_port"] == 3200
    scheduler = tempo["backend_scheduler"]["provider"]["compaction"]["compaction"]["block_retention"]
    assert scheduler == tempo["backend_worker"]["compaction"]["block_retention"] == "72h"
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
