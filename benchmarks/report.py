"""Turns measurements into the printed table and the verdict on each target."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .floor import SdkFloor
from .memory import MemoryGrowth
from .variants import BASELINE, PEER
from .wrk import Load

TARGET_CALLBACKS = 3
NOSDK_MAX_ADDED_US = 1.0
DEFAULT_MAX_PEER_SHARE = 0.20
FULL_MAX_PEER_SHARE = 0.50
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
    if ("ours-nosdk", n) in in_process:
        added = added_us(in_process, "ours-nosdk", n)
        found.append(
            Verdict(
                f"no SDK: at most +{NOSDK_MAX_ADDED_US:g} us over {BASELINE}",
                f"+{added:.2f} us",
                added <= NOSDK_MAX_ADDED_US,
            )
        )
    if (PEER, n) in in_process:
        peer = added_us(in_process, PEER, n)
        for variant, share in (("ours-default", DEFAULT_MAX_PEER_SHARE), ("ours-full", FULL_MAX_PEER_SHARE)):
            if (variant, n) in in_process:
                added = added_us(in_process, variant, n)
                found.append(
                    Verdict(
                        f"{variant}: adds at most {share:.2f} of what {PEER} adds",
                        f"+{added:.1f} us = {added / peer:.2f} of +{peer:.1f} us",
                        added <= share * peer,
                    )
                )
    if ("ours-metrics", n) in in_process and floor is not None:
        added = added_us(in_process, "ours-metrics", n)
        records = n + 2  # one per callback, unwind.duration, unwind.callbacks
        sdk = records * floor.record_us
        found.append(
            Verdict(
                f"ours-metrics: close to the SDK floor ({records} histogram records)",
                f"+{added:.1f} us, of which SDK floor {sdk:.1f} us ({records} x {floor.record_us:.2f})",
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
            f"inside a sampled span {floor.record_in_span_us:.2f} us; span start+end {floor.span_us:.2f} us",
        ]
    lines += ["", f"Targets ({TARGET_CALLBACKS} callbacks per request, in-process figures)", ""]
    for verdict in verdicts(in_process, floor):
        lines.append(f"- {_verdict_word(verdict.met)}: {verdict.target}: {verdict.measured}")
    return "\n".join(lines)
