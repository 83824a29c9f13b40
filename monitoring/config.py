"""Every threshold, selector and window the dashboards and alerts use, each with the reason for its value."""

from __future__ import annotations

from typing import Final

# Prometheus series names, as docs/telemetry.md ("In Prometheus") lists them.
CALLBACK_DURATION: Final = "exitstack_callback_duration_seconds"
CALLBACK_PUSHED: Final = "exitstack_callback_pushed_total"
UNWIND_DURATION: Final = "exitstack_unwind_duration_seconds"
UNWIND_CALLBACKS: Final = "exitstack_unwind_callbacks"
UNWIND_ACTIVE: Final = "exitstack_unwind_active"

# Labels. `job` is the service: a direct scrape names it, and the Collector's Prometheus exporter sets
# it from the resource's service.name (service.namespace/service.name when a namespace is set).
SERVICE: Final = "job"
STACK: Final = "exitstack_stack_name"
CALLBACK: Final = "exitstack_callback_name"
KIND: Final = "exitstack_callback_kind"
OUTCOME: Final = "exitstack_callback_outcome"
UNWIND_OUTCOME: Final = "exitstack_unwind_outcome"
ERROR_TYPE: Final = "error_type"
ROUTE: Final = "http_route"

# A cleanup failed when it raised, was cancelled or was abandoned; "suppressed" is an exit callback
# deliberately swallowing the request's exception, which is its job, not a failure of the cleanup.
FAILED_OUTCOMES: Final = 'exitstack_callback_outcome=~"error|cancelled|timeout"'

# Alerts group by service and callback so that one page names the code to look at.
ALERT_BY: Final = (SERVICE, STACK, CALLBACK)

# Rate window of the alerts: 5 m holds 20 scrapes at the usual 15 s interval, so one burst of failures
# in an otherwise idle minute does not decide alone.
ALERT_RATE_WINDOW: Final = "5m"

# Share of a callback's runs that may fail before someone is paged: above 1 % the leaked connections,
# files and audit records add up within hours on a busy service.
ERROR_RATIO_THRESHOLD: Final = 0.01
ERROR_FOR: Final = "5m"  # a failing deploy shows within minutes; one bad minute does not page
# The page needs the ratio over the last hour too (a burst that is already over does not wake anyone,
# as in the mixins' multi-window burn rates) and at least this many failed runs in that hour: two
# failures of two requests are 100 %, and not worth a page at night; ten leaked resources are.
ERROR_LONG_WINDOW: Final = "1h"
ERROR_MIN_FAILED_RUNS: Final = 10

# A cleanup runs after the response on the same worker; at p99 over half a second it holds a
# connection or a worker slot long enough to starve a busy pool.
SLOW_P99_SECONDS: Final = 0.5
SLOW_FOR: Final = "15m"  # slowness is a trend to look at, not an outage: wait it out a while
# a p99 of a handful of runs is the slowest run, not a percentile
SLOW_MIN_RUNS: Final = 20

# Unwinds in progress, averaged over a window, equal the seconds of unwinding that finished per second
# (Little's law) when every unwind ends; an unwind that never ends adds 1 to the first and nothing to the
# second. A gap of half an unwind means one has hung for at least half the window, on a busy service
# just as on an idle one (a plain "in progress > 0" cannot tell busy from stuck).
STUCK_WINDOW: Final = "10m"
STUCK_UNWINDS_THRESHOLD: Final = 0.5
STUCK_FOR: Final = "5m"

# An instance counts as alive while it sent a point of exitstack.unwind.active within this window: three
# times the SDK's default export interval (60 s), so one lost export does not count as death. It is
# shorter than STUCK_FOR, so an instance killed with unwinds in flight, whose last values linger in
# every range selector for STUCK_WINDOW, is never paged as stuck: it stops being alive first.
LIVENESS_WINDOW: Final = "3m"

# A callback that is pushed and never run leaks what it was meant to release, however rare; a ratio
# hides 3 leaks in 5,000 pushes, so the alert counts them. Pushes are counted at push time and runs at
# unwind time: pushes minus runs is what is in flight plus what is lost, and what is in flight never
# drops below what the traffic holds open. The alert reads the lowest gap over the last SETTLE minus the
# lowest over the WINDOW (a worker started within it has its own lowest), so steady traffic cancels and
# a callback lost for SETTLE counts; it resolves when the WINDOW's lowest catches up, an hour later.
NEVER_RUN_WINDOW: Final = "1h"
NEVER_RUN_SETTLE: Final = "10m"
NEVER_RUN_MIN_LEAKED: Final = 0.5  # "at least one"
NEVER_RUN_FOR: Final = "5m"

# A service that reported within the last hour and not within LIVENESS_WINDOW stopped reporting.
TELEMETRY_STOPPED_LOOKBACK: Final = "1h"
TELEMETRY_STOPPED_FOR: Final = "5m"

# The Collector's own metrics (its internal telemetry, scraped by Prometheus). Refused points mean the
# memory_limiter or a size limit turned data away; failed sends mean a backend is gone. Either one
# minute's worth is enough to look, not to page.
COLLECTOR_JOB: Final = "otel-collector"
# The Collector counts as down when its scrape job's up series is 0, or was there within this lookback
# and is gone (the job removed or renamed). A deployment without a Collector (services scraped, or
# pushing OTLP straight to Prometheus) never has that series and is never paged; the alert fires for a
# day after the job goes away, long enough to be seen, then resolves (docs/runbooks.md).
COLLECTOR_SEEN_LOOKBACK: Final = "1d"
# the Collector's counters per signal (metric points and spans count separately)
COLLECTOR_REFUSED: Final = {
    "metrics": "otelcol_receiver_refused_metric_points_total",
    "traces": "otelcol_receiver_refused_spans_total",
}
COLLECTOR_FAILED: Final = {  # send: the backend said no or did not answer; enqueue: the queue was full
    "metrics": "otelcol_exporter_send_failed_metric_points_total",
    "traces": "otelcol_exporter_send_failed_spans_total",
    "metrics (queue full)": "otelcol_exporter_enqueue_failed_metric_points_total",
    "traces (queue full)": "otelcol_exporter_enqueue_failed_spans_total",
}
COLLECTOR_FOR: Final = "5m"
TARGET_DOWN_FOR: Final = "5m"  # a restart takes seconds; five minutes down is not a restart

# Runbook: one section per alert in docs/runbooks.md, linked from the alert's runbook_url; dashboard_url
# opens the dashboard on the alert's service (the local stack's Grafana; change it with your own).
RUNBOOK_BASE_URL: Final = "https://github.com/exitstack-otel/exitstack-otel/blob/main/docs/runbooks.md"
GRAFANA_URL: Final = "http://127.0.0.1:3000"

# Dashboard
DASHBOARD_UID: Final = "exitstack-request-cleanup"  # stable: links and bookmarks survive a rebuild
DASHBOARD_TITLE: Final = "Request cleanup"
PROMETHEUS_UID: Final = "prometheus"  # the datasource uids provisioned in grafana/provisioning
TEMPO_UID: Final = "tempo"
TABLE_TOP_N: Final = 10  # the table lists the callbacks most worth a look, not all 200 names
# Grafana's floor for the sample interval (the datasource's timeInterval, "Min interval"): $__rate_interval
# is max(4 x this, query step + this), so every rate spans at least four samples. 60 s is the SDK's
# default export interval (OTEL_METRIC_EXPORT_INTERVAL unset): a service that pushes once a minute has
# one sample a minute, and a floor of 15 s (the scrape interval) gave 1-minute windows with one sample
# in them: every rate panel read "No data". At 15 s exports a 4-minute window holds 16 samples: smoother,
# never empty. Whoever exports every 15 s everywhere may lower it in grafana/provisioning.
SAMPLE_INTERVAL_FLOOR: Final = "60s"

# "Pushed, never run" on the dashboard. Pushes minus runs is the callbacks in flight plus those lost;
# in flight never drops below what the traffic holds open (5 on a busy service, at every moment), so the
# panels read the lowest the gap has been over the last NEVER_RUN_PANEL_SETTLE (what stayed that long)
# minus the lowest over the whole window (the level it started from, which a worker born within the
# window has too): steady traffic cancels, a lost callback raises the first and not the second.
NEVER_RUN_PANEL_SETTLE: Final = "5m"
# the settle window's steps: the floor of the sample interval, so a moment with nothing in flight is seen
NEVER_RUN_PANEL_STEP: Final = "15s"
# the per-callback panel's window: as long as the alert's, so what it shows is what the alert counts
NEVER_RUN_PANEL_WINDOW: Final = "1h"
