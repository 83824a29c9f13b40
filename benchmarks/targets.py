"""Issue 25's targets, and the verdict on each from what was measured.

In-process targets are microseconds added over a baseline. Where valgrind counted the requests,
the added microseconds are the added instructions converted at the baseline's own rate in the same
run (its fastest batch's microseconds over its instructions): load cannot move a count, and the rate only
scales it. Without counts the verdict falls back to the timings, and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .floor import SdkFloor
from .memory import MemoryGrowth

Key = tuple[str, int]  # (variant, callbacks)

TARGET_CALLBACKS = 3
# microseconds added over the contextlib baseline, 3 callbacks per request unless said
NOSDK_MAX_ADDED_US = 2.0
DEFAULT_MAX_ADDED_US = 5.0
DEFAULT_EMPTY_MAX_ADDED_US = 1.0  # a request that pushes nothing
FULL_MAX_OVER_SPANS_US = 10.0  # over the SDK's own cost of the spans "all" makes (floor.py)
FASTAPI_MAX_ADDED_US = 5.0  # instrument_fastapi over the same app uninstrumented
STORM_MAX_ADDED_US = 20.0  # a failing request, over contextlib failing the same way
# the baseline's server instructions over the variant's, by uvicorn shape (server.SHAPES)
SERVER_MIN_KEPT = {"standard": 0.95, "h11": 0.97}
FASTAPI_SERVER_MIN_KEPT = 0.98
# a leak of one small object per request would grow the heap by megabytes over 100,000 requests
FLAT_MAX_TRACED_KIB = 256.0


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: reported, or not measured (``measured`` says which)

    @property
    def word(self) -> str:
        if self.met is not None:
            return "MET" if self.met else "NOT MET"
        return "NOT MEASURED" if self.measured.startswith("not measured") else "reported"


@dataclass(frozen=True)
class Added:
    """Microseconds each variant adds over ``baseline``, and how they were found."""

    us: Mapping[Key, float]
    basis: str


def by_timing(timings: Mapping[Key, float], baseline: str, why: str = "") -> Added:
    us = {key: value - timings[(baseline, key[1])] for key, value in timings.items()}
    return Added(us, f"by timing{why}")


def by_instructions(counts: Mapping[Key, float], timings: Mapping[Key, float], baseline: str) -> Added:
    us = {}
    for (name, callbacks), count in counts.items():
        base = counts[(baseline, callbacks)]
        us[(name, callbacks)] = (count - base) * timings[(baseline, callbacks)] / base
    return Added(us, f"by instructions at {baseline}'s rate")


def added(
    counts: Mapping[Key, float] | None, timings: Mapping[Key, float], baseline: str, why_not: str
) -> Added:
    """From the counts where there are counts, else from the timings."""
    if counts:
        return by_instructions(counts, timings, baseline)
    return by_timing(timings, baseline, f", {why_not}")


def within(found: Added, key: Key, limit: float, target: str) -> Verdict | None:
    if key not in found.us:
        return None
    us = found.us[key]
    return Verdict(target, f"{us:+.2f} us ({found.basis})", us <= limit)


def in_process(found: Added, floor: SdkFloor | None, baseline: str) -> list[Verdict]:
    n = TARGET_CALLBACKS
    limits = [
        (("ours-nosdk", n), NOSDK_MAX_ADDED_US, "no SDK"),
        (("ours-default", n), DEFAULT_MAX_ADDED_US, "default mode"),
        (("ours-default", 0), DEFAULT_EMPTY_MAX_ADDED_US, "default mode, pushing nothing"),
    ]
    verdicts = [
        within(found, key, limit, f"{label}: at most +{limit:g} us over {baseline}")
        for key, limit, label in limits
    ]
    if floor is not None:
        # the SDK's charge for the unwind span and one per callback, timed in this run
        limit = floor.full_spans_us + FULL_MAX_OVER_SPANS_US
        verdicts.append(
            within(found, ("ours-full", n), limit,
                   f"full mode: at most the SDK's cost of its {n + 1} spans ({floor.full_spans_us:.2f} us, "
                   f"timed) + {FULL_MAX_OVER_SPANS_US:g} us = +{limit:.1f} us over {baseline}")
        )  # fmt: skip
    return [verdict for verdict in verdicts if verdict is not None]


def storm(found: Added, variant: str, callbacks: int, baseline: str) -> list[Verdict]:
    target = f"failure storm: at most +{STORM_MAX_ADDED_US:g} us per failing request over {baseline}"
    verdict = within(found, (variant, callbacks), STORM_MAX_ADDED_US, target)
    return [] if verdict is None else [verdict]


def fastapi(found: Added, variant: str, callbacks: int, baseline: str) -> list[Verdict]:
    target = f"FastAPI, instrument_fastapi: at most +{FASTAPI_MAX_ADDED_US:g} us over {baseline}"
    verdict = within(found, (variant, callbacks), FASTAPI_MAX_ADDED_US, target)
    return [] if verdict is None else [verdict]


def server(
    counts: Mapping[Key, float] | None,
    key: Key,
    baseline: str,
    shape: str,
    minimum: float,
    not_measured: str = "",
) -> Verdict:
    """``not_measured`` (why) when the servers could not be counted."""
    target = f"uvicorn ({shape}): {key[0]} keeps at least {minimum:g} of {baseline}'s throughput"
    if counts is None or key not in counts:
        return Verdict(target, f"not measured: {not_measured or 'skipped'}", None)
    kept = counts[(baseline, key[1])] / counts[key]
    return Verdict(target, f"{kept:.3f} (server instructions)", kept >= minimum)


def memory_flat(growth: MemoryGrowth) -> Verdict:
    target = f"memory flat over {growth.requests:,} requests of {growth.variant}"
    measured = (
        f"traced {growth.traced_growth_kib:+.1f} KiB ({growth.traced_second_half_growth_kib:+.1f} in the "
        f"second half), RSS {growth.rss_growth_kib:+d} KiB"
    )
    return Verdict(target, measured, growth.traced_growth_kib <= FLAT_MAX_TRACED_KIB)


def against_peer(timings: Mapping[Key, float], baseline: str, peer: str) -> Verdict | None:
    """Reported, no target: ours beside the instrumentation a user already pays for (timed; the
    peer is not counted under valgrind)."""
    n = TARGET_CALLBACKS
    if (peer, n) not in timings or ("ours-default", n) not in timings:
        return None
    found = by_timing(timings, baseline).us
    ours, theirs = found[("ours-default", n)], found[(peer, n)]
    return Verdict(
        f"ours-default against {peer}", f"+{ours:.1f} us = {ours / theirs:.3f} of +{theirs:.1f} us", None
    )
