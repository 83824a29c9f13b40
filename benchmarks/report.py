"""Turns measurements into the printed table and the verdict on each target."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from .floor import SdkFloor
from .memory import MemoryGrowth
from .targets import FLAT_MAX_TRACED_KIB, TARGET_CALLBACKS, Key, Verdict
from .variants import BASELINE
from .wrk import Load


def group_table(title: str, names: Sequence[str], callbacks: int, timings: Mapping[Key, float]) -> list[str]:
    """A group's in-process timings against its first variant, the group's baseline."""
    base = timings[(names[0], callbacks)]
    lines = ["", f"In process, {title} (fastest batch, us/request, against {names[0]})", ""]
    lines += ["| variant | callbacks | us/req | x base | added us |", "|---|---:|---:|---:|---:|"]
    for name in names:
        us = timings[(name, callbacks)]
        lines.append(f"| {name} | {callbacks} | {us:.1f} | {us / base:.2f} | {us - base:+.1f} |")
    return lines


def targets_section(verdicts: Sequence[Verdict]) -> list[str]:
    python = ".".join(map(str, sys.version_info[:3]))
    lines = [
        "",
        f"Targets (issue 25; Python {python}; {TARGET_CALLBACKS} callbacks per request unless said)",
        "",
    ]
    lines += [f"- {verdict.word}: {verdict.target}: {verdict.measured}" for verdict in verdicts]
    return lines


def table(
    variants: Sequence[str],
    callback_counts: Sequence[int],
    in_process: Mapping[tuple[str, int], float],
    load: Mapping[tuple[str, int], Load],
    memory: Sequence[MemoryGrowth],
    floor: SdkFloor | None,
) -> str:
    lines = [
        "In-process (fastest batch, us/request) and uvicorn+wrk (median req/s, p99), ratios against "
        f"{BASELINE} in the same run",
        "",
        "| variant | callbacks | us/req | x base | added us | req/s | x base | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for callbacks in callback_counts:
        base = in_process[(BASELINE, callbacks)]
        base_load = load.get((BASELINE, callbacks))
        for name in variants:
            us = in_process[(name, callbacks)]
            row = f"| {name} | {callbacks} | {us:.1f} | {us / base:.2f} | {us - base:+.1f} |"
            found = load.get((name, callbacks))
            if found is not None and base_load is not None:
                ratio = found.requests_per_second / base_load.requests_per_second
                row += f" {found.requests_per_second:.0f} | {ratio:.2f} | {found.p99_ms:.2f} |"
            else:
                row += " - | - | - |"
            lines.append(row)
    lines += memory_table(memory)
    if floor is not None:
        lines += [
            "",
            f"SDK floor, same run: histogram record (4 attributes) {floor.record_us:.2f} us, "
            f"inside a sampled span {floor.record_in_span_us:.2f} us; span start+end {floor.span_us:.2f} us; "
            f"the {TARGET_CALLBACKS + 1} spans of 'all' at {TARGET_CALLBACKS} callbacks "
            f"{floor.full_spans_us:.2f} us",
        ]
    return "\n".join(lines)


def memory_table(memory: Sequence[MemoryGrowth]) -> list[str]:
    if not memory:
        return []
    lines = [
        "",
        "Memory (fresh process per variant, after warm-up)",
        "",
        "| variant | callbacks | requests | RSS growth KiB (2nd half) "
        "| tracemalloc growth KiB (2nd half) | flat |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for growth in memory:
        flat = "yes" if growth.traced_growth_kib <= FLAT_MAX_TRACED_KIB else "NO"
        lines.append(
            f"| {growth.variant} | {growth.callbacks} | {growth.requests} "
            f"| {growth.rss_growth_kib} ({growth.rss_second_half_growth_kib}) "
            f"| {growth.traced_growth_kib:.1f} ({growth.traced_second_half_growth_kib:.1f}) | {flat} |"
        )
    return lines
