"""The package's modules import one another without a circle, type-only imports included: each can
be read knowing only the modules below it."""

from __future__ import annotations

import ast
from pathlib import Path

import exitstack_otel

PACKAGE = Path(exitstack_otel.__file__).parent


def _imports_within_the_package(path: Path, modules: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 1:  # from .x import y; from . import x, y
            names = [node.module] if node.module else [alias.name for alias in node.names]
        elif node.level == 0 and node.module and node.module.startswith("exitstack_otel."):
            names = [node.module.removeprefix("exitstack_otel.")]
        else:
            continue
        found.update(name.split(".")[0] for name in names)
    return found & modules


def _graph() -> dict[str, set[str]]:
    paths = {path.stem: path for path in PACKAGE.glob("*.py")}
    return {name: _imports_within_the_package(path, set(paths)) for name, path in paths.items()}


def _a_circle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            circle = visit(imported, [*path, module])
            if circle is not None:
                return circle
        done.add(module)
        return None

    for module in sorted(graph):
        circle = visit(module, [])
        if circle is not None:
            return circle
    return None


def test_the_graph_is_read_from_the_package() -> None:
    graph = _graph()
    assert {"telemetry", "cleanup_log"} <= graph["stack"]
    assert graph["sdk_bridge"] == {"histogram_series"}


def test_no_module_imports_itself_through_others() -> None:
    assert _a_circle(_graph()) is None


def test_a_circle_is_found() -> None:
    assert _a_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
