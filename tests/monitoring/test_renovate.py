"""Renovate keeps the image pins current: it watches docker-compose.yml, the Dockerfile and the README's
list of pins, and that list is the compose file's."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.support.stack_files import COMPOSE_FILE, ROOT, load_yaml

RENOVATE = ROOT / "renovate.json"


def _config() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(RENOVATE.read_text())
    return config


def _pulled_images() -> dict[str, str]:
    services = load_yaml(COMPOSE_FILE)["services"].values()
    return dict(service["image"].rsplit(":", 1) for service in services if "build" not in service)


def _readme_pins() -> dict[str, str]:
    (manager,) = _config()["customManagers"]
    (pattern,) = manager["matchStrings"]
    python_pattern = pattern.replace("(?<", "(?P<")  # Renovate's regexes are JavaScript's
    found = re.finditer(python_pattern, (ROOT / "README.md").read_text())
    return {match["depName"]: match["currentValue"] for match in found}


def test_renovate_watches_the_compose_file_and_the_dockerfile() -> None:
    config = _config()
    assert config["$schema"].startswith("https://docs.renovatebot.com/")
    assert {"docker-compose", "dockerfile"} <= set(config["enabledManagers"])
    majors = [rule for rule in config["packageRules"] if rule.get("matchUpdateTypes") == ["major"]]
    assert majors
    assert majors[0]["dependencyDashboardApproval"] is True


def test_the_readme_lists_exactly_the_pinned_monitoring_images() -> None:
    monitoring = {name: tag for name, tag in _pulled_images().items() if name != "busybox"}
    assert _readme_pins() == monitoring
