"""Dashboards and alert rules as code: ``python -m monitoring.build`` writes grafana/dashboards/*.json and
prometheus/rules/*.yml; tests fail when the committed files differ from what this package builds."""
