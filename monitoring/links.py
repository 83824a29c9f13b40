"""Where an alert points: its runbook section and the dashboard, opened on the alert's service."""

from __future__ import annotations

from . import config as c


def runbook_url(alert: str) -> str:
    # GitHub's anchor of a "## AlertName" heading is the name in lower case
    return f"{c.RUNBOOK_BASE_URL}#{alert.lower()}"


def dashboard_url(*, instance: bool = False) -> str:
    url = f"{c.GRAFANA_URL}/d/{c.DASHBOARD_UID}?var-service={{{{ $labels.job | urlquery }}}}"
    if instance:
        url += "&var-instance={{ $labels.instance | urlquery }}"
    return url
