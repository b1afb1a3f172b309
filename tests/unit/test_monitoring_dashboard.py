"""monitoring/grafana-markd.json: the Grafana dashboard for a fleet of kiosks.

Grafana is not needed: the file is read as JSON, and every query is handed to promtool as a
recording rule (Grafana's own variables replaced by values first), so a query Prometheus would
refuse fails here, and a query on a metric docs/metrics.md does not list fails too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from monitoring_helpers import DASHBOARD, metric_names, run_promtool, undocumented, unknown_labels

BOARD: dict[str, Any] = json.loads(DASHBOARD.read_text())
PANELS: list[dict[str, Any]] = BOARD["panels"]
#: Every query of every panel: (panel id, refId, expr).
QUERIES = [
    (panel["id"], target["refId"], target["expr"])
    for panel in PANELS
    for target in panel.get("targets", [])
]

#: What Grafana puts in place of its built-in variables before a query leaves it.
BUILT_IN = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def as_prometheus_sees_it(expr: str) -> str:
    """The query with the built-in variables given durations and ``$instance`` every kiosk."""
    return VARIABLE.sub(lambda m: BUILT_IN.get(m[1] or m[2], ".*"), expr)


def test_the_dashboard_is_one_json_object_with_panels_and_unique_ids() -> None:
    assert BOARD["uid"] == "markd-fleet" and BOARD["title"]
    ids = [panel["id"] for panel in PANELS]
    assert len(ids) == len(set(ids)), ids
    assert all(isinstance(panel_id, int) for panel_id in ids)
    assert len(QUERIES) >= 20


def test_the_fleet_is_chosen_with_variables() -> None:
    variables = {variable["name"]: variable for variable in BOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["multi"] and instance["includeAll"] and instance["allValue"] == ".*"
    assert "markd" in instance["definition"]


def test_every_panel_reads_the_chosen_data_source_and_kiosks() -> None:
    for panel in PANELS:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("targets"), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            # Every series a query selects is narrowed to the chosen kiosks of job markd.
            for match in re.finditer(r"\b(markd_[a-z0-9_]+|up)\b(\{[^}]*\})?", target["expr"]):
                assert match[2] and 'instance=~"$instance"' in match[2], (panel["title"], match[0])
                assert 'job="markd"' in match[2], (panel["title"], match[0])


def test_the_panel_titles_say_what_they_show() -> None:
    titles = [panel["title"] for panel in PANELS]
    assert len(titles) == len(set(titles)), titles
    for panel in PANELS:
        if panel["type"] != "row":
            assert panel.get("description"), panel["title"]


def test_every_query_is_promql(tmp_path: Path) -> None:
    rules = tmp_path / "dashboard-queries.yml"
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for panel_id, ref_id, expr in QUERIES:
        lines.append(f"      - record: dashboard:panel{panel_id}_{ref_id}")
        lines.append(f"        expr: {json.dumps(as_prometheus_sees_it(expr))}")
    rules.write_text("\n".join(lines) + "\n")
    done = run_promtool("check", "rules", str(rules))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(QUERIES)} rules found" in done.stdout, done.stdout


def test_a_broken_query_is_caught(tmp_path: Path) -> None:
    rules = tmp_path / "broken.yml"
    broken = as_prometheus_sees_it(QUERIES[1][2]).replace(")", "", 1)
    rules.write_text(
        "groups:\n  - name: dashboard\n    rules:\n"
        f"      - record: dashboard:broken\n        expr: {json.dumps(broken)}\n"
    )
    done = run_promtool("check", "rules", str(rules))
    assert done.returncode == 1, done.stdout + done.stderr


def test_every_label_a_panel_groups_or_shows_is_one_its_series_have() -> None:
    """A label of another metric (or a typo) in ``by (…)`` or a legend folds every series into
    one line with an empty name; promtool and Prometheus accept it without a word."""
    wrong = {
        (panel["id"], target["refId"]): unknown_labels(
            target["expr"], target.get("legendFormat", "")
        )
        for panel in PANELS
        for target in panel.get("targets", [])
    }
    assert {key: names for key, names in wrong.items() if names} == {}


def test_a_label_of_another_metric_is_caught() -> None:
    expr = "sum by (instance, reason) (rate(markd_api_requests_refused_total[5m]))"
    assert unknown_labels(expr, "{{instance}} {{reason}}") == {"reason"}
    assert unknown_labels(expr.replace("reason", "error"), "{{error}}") == set()


def test_every_metric_the_dashboard_reads_is_documented() -> None:
    names = set().union(*(metric_names(expr) for _, _, expr in QUERIES))
    assert "markd_verdict_duration_seconds_bucket" in names
    assert not undocumented(names), f"not in docs/metrics.md: {sorted(undocumented(names))}"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'rate(markd_scans_total{instance=~"$instance"}[$__rate_interval])',
            'rate(markd_scans_total{instance=~".*"}[5m])',
        ),
        ('up{instance=~"${instance}"}[${__range}]', 'up{instance=~".*"}[1h]'),
        ('up{instance=~"${instance:regex}"}', 'up{instance=~".*"}'),
    ],
)
def test_grafana_variables_are_replaced(expr: str, expected: str) -> None:
    assert as_prometheus_sees_it(expr) == expected
