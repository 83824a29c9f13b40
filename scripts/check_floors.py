"""Fails unless every lower bound exitstack-otel declares (dependencies and extras) is the version
installed: run in the lowest-versions venv, it proves the suite ran on the floors themselves, not
on whatever a resolver picked above them.

One exception, named in its output: a version another installed package pins exactly (``==``). The
exporter extras need opentelemetry-sdk 1.43 (the first with service.instance.id), which pins
opentelemetry-api 1.43 and, through the semantic conventions, the 0.64b0 instrumentation; the
library's own floors (API 1.31, instrumentation 0.52b0) stay, and the API-only venv runs on them."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distributions, requires, version

from packaging.requirements import Requirement
from packaging.version import Version


def _pinned_by(name: str, installed: Version) -> str | None:
    """An installed distribution that requires exactly ``name==installed``, if any."""
    for dist in distributions():
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            if requirement.name == name and any(
                spec.operator == "==" and Version(spec.version) == installed for spec in requirement.specifier
            ):
                return f"{dist.metadata['Name']} {dist.version}"
    return None


def main() -> int:
    wrong: list[str] = []
    checked = 0
    for line in requires("exitstack-otel") or []:
        requirement = Requirement(line)
        if requirement.name == "exitstack-otel":  # an extra made of other extras
            continue
        floors = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
        if not floors:
            continue
        try:
            installed = Version(version(requirement.name))
        except PackageNotFoundError:
            wrong.append(f"{requirement.name}: not installed (floor {floors[0]})")
            continue
        checked += 1
        if installed != max(floors):
            pinned_by = _pinned_by(requirement.name, installed)
            if pinned_by is not None:
                floor = max(floors)
                print(f"check-floors: {requirement.name}: {installed}, pinned by {pinned_by} (floor {floor})")
                continue
            wrong.append(f"{requirement.name}: {installed} installed, floor is {max(floors)}")
    for problem in sorted(set(wrong)):
        print(f"check-floors: {problem}", file=sys.stderr)
    print(f"check-floors: {checked} lower bounds checked, {len(set(wrong))} not at their floor")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
