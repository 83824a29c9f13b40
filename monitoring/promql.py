"""PromQL for the dashboards: counts and rates that see a new series' first events and never go negative."""

from __future__ import annotations

from . import config as c

RATE = "$__rate_interval"
# Grafana's $__rate_interval in seconds: the divisor that turns a young series' count into a rate
RATE_SECONDS = "($__rate_interval_ms / 1000)"


def rate(series: str, by: str, window: str = RATE, seconds: str = RATE_SECONDS) -> str:
    """Per-second rate by `by`, including a series born within the window.

    rate() needs two points, so a series' first point (the events before it, often the one failure that
    matters) is lost: a new error type shows no errors at all. A series that did not exist one window ago
    counts with its whole value spread over the window; an older one with rate(). The two sets are
    disjoint, so `or` adds nothing twice."""
    old = f"rate({series}[{window}]) and {series} offset {window}"
    young = f"({series} unless {series} offset {window}) / {seconds}"
    return f"sum by ({by}) (\n  {old}\n  or\n  {young}\n)"


def count_over(series: str, by: str, window: str) -> str:
    """Events within the window by `by`, a series born within it counting from zero (see rate()); a
    series that ended within it (a replaced worker) with its last value, not dropped."""
    old = f"increase({series}[{window}]) and {series} offset {window}"
    young = f"last_over_time({series}[{window}]) unless {series} offset {window}"
    return f"sum by ({by}) (\n  {old}\n  or\n  {young}\n)"


def not_negative(expr: str) -> str:
    # a difference of two counts read at slightly different moments can dip below zero at a window's
    # edge (-0.07 hung unwinds, -1 callbacks never run); neither can be negative
    return f"clamp_min(\n{expr},\n0)"


def gap(by: str, selector: str, offset: str = "") -> str:
    """Pushes minus runs since each instance started, from the raw counters, summed before they are
    subtracted: a run counted in a series born later (the first failure's outcome="error") is in the sum
    from its first value on, where increase() of that series would miss its first value."""
    pushed = f"sum by ({by}) ({c.CALLBACK_PUSHED}{selector}{offset})"
    ran = f"sum by ({by}) ({c.CALLBACK_DURATION}_count{selector}{offset})"
    # a callback that never ran at all has no duration series: count it as zero runs, not as no data
    return f"{pushed}\n- ({ran} or {pushed} * 0)"


def leaked(window: str, by: str, selector: str) -> str:
    """Pushes minus runs over the window (`selector` with its braces, or ""): callbacks that did not run,
    and those in flight now less those in flight at the window's start. An instance younger than the
    window counts from its start. Exact integers: no increase() extrapolation."""
    now = gap(by, selector)
    then = gap(by, selector, f" offset {window}")
    return f"(\n{now}\n)\n- (\n(\n{then}\n)\nor\n(\n{now}\n) * 0\n)"


def never_run(window: str, by: str, selector: str) -> str:
    """Callbacks pushed and not run within the window, requests in flight not counted: the lowest
    pushes-minus-runs over the last NEVER_RUN_PANEL_SETTLE less the lowest over the window (config.py
    says why). Never below 0; 0, not "No data", before the first step."""
    pending = gap(by, "{" + selector + "}")
    settled = f"min_over_time((\n{pending}\n)[{c.NEVER_RUN_PANEL_SETTLE}:{c.NEVER_RUN_PANEL_STEP}])"
    lowest = f"min_over_time((\n{pending}\n)[{window}:1m])"
    return not_negative(f"(\n{settled}\n-\n{lowest}\n)\nor\n(\n{pending}\n) * 0")


def hung(by: str, selector: str) -> str:
    """As in the ExitstackUnwindsStuck rule, over the dashboard's rate window: unwinds in progress beyond
    the seconds of unwinding that finish per second (0 when every unwind ends)."""
    in_progress = f"sum by ({by}) (avg_over_time({c.UNWIND_ACTIVE}{{{selector}}}[{RATE}]))"
    finished = rate(f"{c.UNWIND_DURATION}_sum{{{selector}}}", by)
    return not_negative(f"{in_progress}\n- (\n{finished}\nor\n{in_progress} * 0\n)")


def quantile(q: float, metric: str, selector: str, by: str) -> str:
    return f"histogram_quantile({q:g}, {rate(f'{metric}_bucket{{{selector}}}', f'{by}, le')})"


def count_quantile(q: float, metric: str, selector: str, by: str) -> str:
    """A quantile of a histogram of whole counts whose bucket boundaries are whole numbers: interpolation
    inside the bucket (n-1, n] reads 0.95 or 1.95 where every value was 1 or 2; rounded up it is the
    bucket's top, the true value where buckets are 1 wide."""
    return f"ceil(\n{quantile(q, metric, selector, by)}\n)"


def ratio(failed: str, runs: str, by: str) -> str:
    """failed / runs by `by`; 0, not "No data", where runs exist and no failure series does."""
    all_runs = rate(runs, by)
    return f"(\n{rate(failed, by)}\nor\n{all_runs} * 0\n)\n/\n{all_runs}"


def seconds_since_last_point(selector: str, by: str) -> str:
    """How long ago each instance's latest exitstack.unwind.active point arrived (while within the
    5-minute lookback; after that the instance shows no value)."""
    return f"time() - max by ({by}) (timestamp({c.UNWIND_ACTIVE}{{{selector}}}))"
