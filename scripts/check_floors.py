"""Fails unless every lower bound exitstack-otel declares (dependencies and extras) is the version
installed: run in the lowest-versions venv, it proves the suite ran on the floors themselves, not
on whatever a resolver picked above them."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement
from packaging.version import Version


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
            wrong.append(f"{requirement.name}: {installed} installed, floor is {max(floors)}")
    for problem in sorted(set(wrong)):
        print(f"check-floors: {problem}", file=sys.stderr)
    print(f"check-floors: {checked} lower bounds checked, {len(set(wrong))} not at their floor")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
