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

# A cleanup runs after the response on the same worker; at p99 over half a second it holds a
# connection or a worker slot long enough to starve a busy pool.
SLOW_P99_SECONDS: Final = 0.5
SLOW_FOR: Final = "15m"  # slowness is a trend to look at, not an outage: wait it out a while

# Unwinds in progress, averaged over a window, equal the seconds of unwinding that finished per second
# (Little's law) when every unwind ends; an unwind that never ends adds 1 to the first and nothing to the
# second. A gap of half an unwind means one has hung for at least half the window, on a busy service
# just as on an idle one (a plain "in progress > 0" cannot tell busy from stuck).
STUCK_WINDOW: Final = "10m"
STUCK_UNWINDS_THRESHOLD: Final = 0.5
STUCK_FOR: Final = "5m"

# Callbacks pushed and never run leak what they were meant to release. Pushes are counted at push time
# and runs at unwind time, so requests in flight at the window's edges differ by a few; a share of 1 %
# of the pushes over the window is far above that noise.
NEVER_RUN_WINDOW: Final = "15m"
NEVER_RUN_RATIO_THRESHOLD: Final = 0.01
NEVER_RUN_FOR: Final = "15m"

# Runbook: one section per alert in docs/runbooks.md, linked from the alert's runbook_url.
RUNBOOK_BASE_URL: Final = "https://github.com/exitstack-otel/exitstack-otel/blob/main/docs/runbooks.md"

# Dashboard
DASHBOARD_UID: Final = "exitstack-request-cleanup"  # stable: links and bookmarks survive a rebuild
DASHBOARD_TITLE: Final = "Request cleanup"
PROMETHEUS_UID: Final = "prometheus"  # the datasource uids provisioned in grafana/provisioning
TEMPO_UID: Final = "tempo"
TABLE_TOP_N: Final = 10  # the table lists the callbacks most worth a look, not all 200 names
