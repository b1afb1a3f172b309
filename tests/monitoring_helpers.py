"""The fleet monitoring files in monitoring/, as the tests read them: promtool, the alert rules
read line by line, and the metric names docs/metrics.md documents.

The venv has no YAML library, and markd needs none, so the rules file is read by its layout
(one ``- alert:`` line per rule, its keys below it, ``expr:`` on one line). promtool parses the
same file for real, and the tests compare its count of rules with this reader's, so a rule the
reader misses fails a test rather than escaping it.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from conftest import required_tool

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "monitoring"
RULES = MONITORING / "markd-alerts.yml"
RULE_TESTS = MONITORING / "markd-alerts.test.yml"
DASHBOARD = MONITORING / "grafana-markd.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

#: The series a histogram adds to its name.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

METRIC_NAME = re.compile(r"\bmarkd_[a-z0-9_]*[a-z0-9]")


def require_promtool() -> str:
    """The path of ``promtool`` (Debian 12's ``prometheus`` package; a root
    ``tools/bootstrap.sh`` installs it). Skips without it, fails without it in CI."""
    return required_tool("promtool", "prometheus")


def run_promtool(
    *args: str, cwd: Path | None = None, merge_stderr: bool = False
) -> subprocess.CompletedProcess[str]:
    """``merge_stderr``: stderr into ``stdout``, in the order promtool wrote the two."""
    return subprocess.run(
        [require_promtool(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


@dataclass
class AlertRule:
    """One ``- alert:`` entry of the rules file, with the line numbers a test may rewrite."""

    name: str
    group: str
    line: int  #: index of the ``- alert:`` line
    expr: str
    expr_line: int
    for_: str | None = None
    for_line: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def read_rules(text: str) -> list[AlertRule]:
    """The alert rules of a rules file written as monitoring/markd-alerts.yml is."""
    rules: list[AlertRule] = []
    group = ""
    section = ""
    lines = text.splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("- name:"):
            group = stripped.removeprefix("- name:").strip()
            continue
        if stripped.startswith("- record:"):
            raise AssertionError(f"line {number + 1}: a recording rule; the reader knows alerts")
        if stripped.startswith("- alert:"):
            name = stripped.removeprefix("- alert:").strip()
            rules.append(AlertRule(name=name, group=group, line=number, expr="", expr_line=-1))
            section = ""
            continue
        if not rules:
            continue
        rule = rules[-1]
        key, _, value = stripped.partition(":")
        value = value.strip()
        if key == "expr":
            assert value and value[0] not in "|>", f"line {number + 1}: expr on one line"
            rule.expr, rule.expr_line = value, number
        elif key == "for":
            rule.for_, rule.for_line = value, number
        elif key in {"labels", "annotations"} and not value:
            section = key
        elif section:
            getattr(rule, section)[key] = unquote(value)
    return rules


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"')
    return value


def metric_names(text: str) -> set[str]:
    """Every ``markd_*`` name in a text (an expression, a file)."""
    return set(METRIC_NAME.findall(text))


def documented_metrics() -> set[str]:
    """The ``markd_*`` names docs/metrics.md's tables list (a row each, as
    tests/unit/test_service_metrics.py reads them); a name only mentioned in prose is not."""
    return set(re.findall(r"^\| `(markd_[a-z0-9_]+)`", METRICS_DOC.read_text(), re.M))


#: Labels every series has or a fleet adds (the scrape's target; `shop`, `city`: a target's own
#: labels in the docs' examples; `le`: a histogram bucket's bound).
TARGET_LABELS = frozenset({"instance", "job", "shop", "city", "le", "__name__"})
#: Where a query or a template names a label: grouping and matching clauses, a selector's
#: matchers, a legend's ``{{label}}``, an annotation's ``$labels.label``.
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
_TEMPLATE = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}|\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")


def documented_labels() -> dict[str, set[str]]:
    """Each ``markd_*`` family docs/metrics.md's tables list → its label names (the Labels
    column, the values in parentheses left out)."""
    labels: dict[str, set[str]] = {}
    rows = re.findall(r"^\| `(markd_[a-z0-9_]+)` \|[^|]*\|([^|]*)\|", METRICS_DOC.read_text(), re.M)
    for name, column in rows:
        labels[name] = set(re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", column)))
    return labels


def unknown_labels(expr: str, *templates: str) -> set[str]:
    """The label names ``expr`` (and the legends or annotations ``templates`` that show its
    results) use that none of the series it reads has: a label of another metric, a typo."""
    documented = documented_labels()
    allowed = set(TARGET_LABELS)
    for name in metric_names(expr):
        family = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in documented:
                family = name.removesuffix(suffix)
        allowed |= documented.get(family, set())
    used = label_names(expr)
    for template in templates:
        used |= label_names(template)
    return used - allowed


def label_names(text: str) -> set[str]:
    """The label names a query (or a legend, an annotation) uses."""
    names: set[str] = set()
    for group in _GROUPING.findall(text):
        names.update(n.strip() for n in group.split(",") if n.strip())
    names.update(_MATCHER.findall(text))
    for a, b in _TEMPLATE.findall(text):
        names.add(a or b)
    return names


def documented_histograms() -> set[str]:
    """The names docs/metrics.md's tables give the type ``histogram``."""
    return set(
        re.findall(
            r"^\|\s*`(markd_[a-z0-9_]+)`\s*\|\s*histogram\s*\|", METRICS_DOC.read_text(), re.M
        )
    )


def undocumented(names: set[str]) -> set[str]:
    """Those of ``names`` docs/metrics.md does not list, a histogram's ``_bucket``, ``_sum``
    and ``_count`` counted as the histogram."""
    known = documented_metrics()
    histograms = documented_histograms()
    missing = set()
    for name in names:
        family = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
                family = name.removesuffix(suffix)
        if family not in known:
            missing.add(name)
    return missing
