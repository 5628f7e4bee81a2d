"""ops/grafana/rebook.json and ops/prometheus/rebook-alerts.yaml query only what the exporter
exports (names from a real scrape and from the exporter's code), and `promtool` accepts the alert
rules and every dashboard query."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from worker.core.store import Store
from worker.operations import exporter

OPS = Path(__file__).resolve().parents[2] / "ops"
DASHBOARD = OPS / "grafana" / "rebook.json"
ALERTS = OPS / "prometheus" / "rebook-alerts.yaml"
_METRIC = re.compile(r"\brebook_[a-z0-9_]+\b")


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def exported_by_code() -> set[str]:
    """Every family the collector can export, as Prometheus names its samples."""
    names = set()
    for fam in [exporter._up(), *exporter._families().values()]:
        names.add(fam.name + "_total" if isinstance(fam, CounterMetricFamily) else fam.name)
    return names


def scraped(store: Store) -> set[str]:
    """Sample names of a real scrape, with an upstream call counted so those series exist."""
    store.r.hset(store.keys.upstream_calls, mapping={"getUserSummary:ok": 3, "token:Transient": 1})
    registry = CollectorRegistry()
    registry.register(exporter.collector(store))
    text = generate_latest(registry).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_every_dashboard_and_alert_metric_is_exported(store: Store) -> None:
    live = scraped(store)
    code = exported_by_code()
    assert live <= code, f"scraped but unknown to the code: {live - code}"
    assert {"rebook_up", "rebook_rebooks", "rebook_upstream_calls_total"} <= live
    queries = dashboard_queries()
    assert len(queries) >= 15
    for expr in queries:
        assert _METRIC.search(expr), f"a dashboard query on no rebook metric: {expr}"
    used = {m for expr in queries for m in _METRIC.findall(expr)}
    alerts = set(_METRIC.findall(ALERTS.read_text()))
    unknown = (used | alerts) - code
    assert not unknown, f"queried but not exported: {sorted(unknown)}"
    # the panels the dashboard promises, each on the metric it is about
    for metric in (
        "rebook_rebooks",
        "rebook_due_lag_seconds",
        "rebook_presence_achieved_interval_seconds",
        "rebook_upstream_calls_total",
        "rebook_presence_budget_calls_per_second",
        "rebook_paused",
        "rebook_audit_findings_total",
    ):
        assert metric in used, f"no panel on {metric}"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing (Debian's `prometheus` package; .ci/run installs it)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return found


def test_promtool_accepts_the_alert_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"SUCCESS: [1-9]\d* rules found", done.stdout + done.stderr)


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query as a recording rule: `promtool check rules` parses its PromQL."""
    rules = [
        {"record": f"rebook:dashboard_query_{i}", "expr": expr}
        for i, expr in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # YAML ⊇ JSON
    done = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout + done.stderr
