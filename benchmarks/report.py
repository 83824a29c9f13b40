"""Turns measurements into the printed table and the verdict on each target."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .floor import SdkFloor
from .memory import MemoryGrowth
from .variants import BASELINE, PEER
from .wrk import Load

TARGET_CALLBACKS = 3
# issue 10's targets, in microseconds added over the contextlib baseline, 3 callbacks per request
NOSDK_MAX_ADDED_US = 1.0
METRICS_MAX_ADDED_US = 4.0
DEFAULT_MAX_ADDED_US = 5.0
DEFAULT_EMPTY_MAX_ADDED_US = 2.0  # a request that pushes nothing, any Python
FULL_MAX_OVER_SPANS_US = 10.0  # over the SDK's own cost of the spans "all" makes
# a leak of one small object per request would grow the heap by megabytes over 100,000 requests
FLAT_MAX_TRACED_KIB = 256.0


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: reported, no pass/fail


def added_us(in_process: Mapping[tuple[str, int], float], variant: str, callbacks: int) -> float:
    return in_process[(variant, callbacks)] - in_process[(BASELINE, callbacks)]


def verdicts(in_process: Mapping[tuple[str, int], float], floor: SdkFloor | None) -> list[Verdict]:
    found: list[Verdict] = []
    n = TARGET_CALLBACKS
    limits: list[tuple[str, int, float, str]] = [
        ("ours-nosdk", n, NOSDK_MAX_ADDED_US, f"no SDK: at most +{NOSDK_MAX_ADDED_US:g} us"),
        (
            "ours-metrics",
            n,
            METRICS_MAX_ADDED_US,
            f"metrics only: at most +{METRICS_MAX_ADDED_US:g} us",
        ),
        (
            "ours-default",
            n,
            DEFAULT_MAX_ADDED_US,
            f"default mode: at most +{DEFAULT_MAX_ADDED_US:g} us",
        ),
    ]
    limits.append(
        ("ours-default", 0, DEFAULT_EMPTY_MAX_ADDED_US,
         f"default mode, pushing nothing: at most +{DEFAULT_EMPTY_MAX_ADDED_US:g} us")
    )  # fmt: skip
    if floor is not None:
        # "all": the unwind span and one per callback, as the SDK charges for them with their
        # attributes and times (floor.spans_like_full_mode), measured in the same run
        limit = floor.full_spans_us + FULL_MAX_OVER_SPANS_US
        limits.append(
            ("ours-full", n, limit, f"full mode: at most the SDK's cost of its {n + 1} spans "
             f"({floor.full_spans_us:.2f} us) + {FULL_MAX_OVER_SPANS_US:g} us = +{limit:.1f} us")
        )  # fmt: skip
    for variant, callbacks, limit, target in limits:
        if (variant, callbacks) in in_process:
            added = added_us(in_process, variant, callbacks)
            found.append(Verdict(f"{target} over {BASELINE}", f"+{added:.2f} us", added <= limit))
    if (PEER, n) in in_process and ("ours-default", n) in in_process:
        peer = added_us(in_process, PEER, n)
        added = added_us(in_process, "ours-default", n)
        found.append(
            Verdict(
                f"ours-default against {PEER}",
                f"+{added:.1f} us = {added / peer:.3f} of +{peer:.1f} us",
                None,
            )
        )
    return found


def _verdict_word(met: bool | None) -> str:
    return "reported" if met is None else ("MET" if met else "NOT MET")


def table(
    variants: Sequence[str],
    callback_counts: Sequence[int],
    in_process: Mapping[tuple[str, int], float],
    load: Mapping[tuple[str, int], Load],
    memory: Sequence[MemoryGrowth],
    floor: SdkFloor | None,
) -> str:
    lines = [
        "In-process (median us/request) and uvicorn+wrk (median req/s, p99), ratios against "
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
    if memory:
        lines += [
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
    if floor is not None:
        lines += [
            "",
            f"SDK floor, same run: histogram record (4 attributes) {floor.record_us:.2f} us, "
            f"inside a sampled span {floor.record_in_span_us:.2f} us; span start+end {floor.span_us:.2f} us; "
            f"the {TARGET_CALLBACKS + 1} spans of 'all' at {TARGET_CALLBACKS} callbacks "
            f"{floor.full_spans_us:.2f} us",
        ]
    python = ".".join(map(str, sys.version_info[:3]))
    lines += [
        "",
        f"Targets (Python {python}; {TARGET_CALLBACKS} callbacks per request unless said; in-process)",
        "",
    ]
    for verdict in verdicts(in_process, floor):
        lines.append(f"- {_verdict_word(verdict.met)}: {verdict.target}: {verdict.measured}")
    return "\n".join(lines)
