"""Text rendering of finished spans as a tree, as the README's "Traces" section shows one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitstack_otel import semconv

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan

_SHOWN_ATTRIBUTES = (semconv.STACK_NAME, semconv.CALLBACK_OUTCOME, "http.route")


def render(spans: Sequence[ReadableSpan], *, timings: bool = True) -> str:
    """One line per span, children under parents in start order; times relative to the root's start."""
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    ids = {span.context.span_id for span in spans if span.context is not None}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None and span.parent.span_id in ids else None
        by_parent.setdefault(parent, []).append(span)
    for children in by_parent.values():
        children.sort(key=lambda span: span.start_time or 0)
    roots = by_parent.get(None, [])
    origin = min((span.start_time or 0) for span in roots) if roots else 0
    lines: list[str] = []

    def children_of(span: ReadableSpan) -> list[ReadableSpan]:
        return by_parent.get(span.context.span_id if span.context is not None else None, [])

    def walk(run: list[ReadableSpan], prefix: str, connector: str) -> None:
        first, last = run[0], run[-1]
        label = f"{prefix}{connector}{first.name}" + (f" ({len(run)} spans)" if len(run) > 1 else "")
        attributes = first.attributes or {}
        shown = [key + "=" + str(attributes[key]) for key in _SHOWN_ATTRIBUTES if key in attributes]
        if first.name.startswith(semconv.SPAN_CALLBACK):
            shown = shown[1:] if shown and shown[0].startswith(semconv.STACK_NAME) else shown  # on the unwind
        if timings:
            start = ((first.start_time or 0) - origin) / 1e6
            end = ((last.end_time or 0) - origin) / 1e6
            label = f"{label:<58} {start:6.2f} → {end:6.2f} ms"
        lines.append("  ".join([label, *shown]).rstrip())
        child_prefix = prefix + ("    " if connector == "└── " else "│   " if connector else "")
        runs = _runs(children_of(first))
        for index, child_run in enumerate(runs):
            walk(child_run, child_prefix, "└── " if index == len(runs) - 1 else "├── ")

    def _runs(siblings: list[ReadableSpan]) -> list[list[ReadableSpan]]:
        # consecutive leaf siblings of one name (the ASGI "http receive" of each body chunk) share a line
        runs: list[list[ReadableSpan]] = []
        for span in siblings:
            leaf = not children_of(span)
            if runs and leaf and runs[-1][-1].name == span.name and not children_of(runs[-1][-1]):
                runs[-1].append(span)
            else:
                runs.append([span])
        return runs

    for root in roots:
        walk([root], "", "")
    return "\n".join(lines)


def without_timings(rendered: str) -> str:
    """The README's tree with its timing column taken out, to compare with ``render(timings=False)``."""
    lines = []
    for line in rendered.splitlines():
        if " ms" in line:
            head, _, rest = line.partition(" → ")
            head = head.rsplit(" ", 1)[0].rstrip()
            rest = rest.split(" ms", 1)[1].strip()
            line = "  ".join(part for part in (head, rest) if part)
        lines.append(line.rstrip())
    return "\n".join(lines)
