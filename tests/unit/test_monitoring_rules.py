"""monitoring/markd-alerts.yml: the alert rules a fleet's Prometheus loads.

promtool (Debian 12's ``prometheus`` package) checks the file and runs its unit tests,
monitoring/markd-alerts.test.yml. Those tests are then tested in turn: each rule is broken on
purpose in a copy (it never fires, it never clears, its ``for:`` a minute shorter, its threshold
moved onto the edge) and promtool must fail the copy, so no rule is left without a case that
shows it firing, clearing and not firing too early.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from monitoring_helpers import (
    OPERATIONS_DOC,
    RULE_TESTS,
    RULES,
    AlertRule,
    metric_names,
    read_rules,
    run_promtool,
    undocumented,
    unknown_labels,
)

RULES_TEXT = RULES.read_text()
ALERTS = read_rules(RULES_TEXT)
IDS = [f"{rule.name}-{rule.labels.get('severity')}" for rule in ALERTS]


def test_promtool_accepts_the_rules_and_counts_what_the_tests_read() -> None:
    done = run_promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    # The line reader of the other tests must see every rule promtool sees.
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout, done.stdout
    assert len(ALERTS) >= 20


def test_the_unit_tests_pass() -> None:
    done = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "FAILED" not in done.stdout, done.stdout


@pytest.mark.parametrize("rule", ALERTS, ids=IDS)
def test_every_alert_says_how_bad_and_what_happened(rule: AlertRule) -> None:
    assert rule.name.startswith("Markd"), rule.name
    assert rule.labels.get("severity") in {"warning", "critical"}, rule.labels
    summary = rule.annotations.get("summary", "")
    description = rule.annotations.get("description", "")
    assert summary and description, rule.annotations
    # Every alert names its kiosk, so the technician knows where to go.
    assert "{{ $labels.instance }}" in summary and "{{ $labels.instance }}" in description


@pytest.mark.parametrize("rule", ALERTS, ids=IDS)
def test_every_alert_keeps_the_labels_of_its_target(rule: AlertRule) -> None:
    """A fleet routes alerts by the labels it gives its targets (a shop, a city): an
    aggregation that names what it keeps (``by``) would drop them."""
    assert not re.search(r"\bby\s*\(", rule.expr), rule.expr


def test_an_alert_with_two_levels_keeps_one_name_and_one_group() -> None:
    by_name: dict[str, list[AlertRule]] = {}
    for rule in ALERTS:
        by_name.setdefault(rule.name, []).append(rule)
    for name, rules in by_name.items():
        severities = [rule.labels["severity"] for rule in rules]
        assert len(severities) == len(set(severities)), f"{name}: {severities}"
        assert len({rule.group for rule in rules}) == 1, name


def test_every_metric_the_rules_and_their_tests_use_is_documented() -> None:
    names = metric_names(RULES_TEXT) | metric_names(RULE_TESTS.read_text())
    assert names, "no markd_* name found"
    assert not undocumented(names), (
        f"not in docs/metrics.md: {sorted(undocumented(names))} (renamed or misspelt?)"
    )


@pytest.mark.parametrize("rule", ALERTS, ids=IDS)
def test_every_label_a_rule_matches_or_shows_is_one_its_series_have(rule: AlertRule) -> None:
    assert unknown_labels(rule.expr, *rule.annotations.values()) == set()


def test_a_misspelt_metric_is_caught() -> None:
    assert undocumented({"markd_source_up", "markd_verdict_duration_seconds_bucket"}) == set()
    assert undocumented({"markd_source_upp", "markd_printer_up_bucket"}) == {
        "markd_source_upp",
        "markd_printer_up_bucket",
    }


def test_operations_md_says_what_to_do_for_every_alert() -> None:
    text = OPERATIONS_DOC.read_text()
    section = text.partition("## Monitoring a fleet")[2].partition("\n## ")[0]
    assert section, "operations.md has no section 'Monitoring a fleet'"
    for name in {rule.name for rule in ALERTS}:
        assert f"`{name}`" in section, f"{name} is not in operations.md, 'Monitoring a fleet'"
    # The promtool output shown there is today's.
    assert f"SUCCESS: {len(ALERTS)} rules found" in section


# -- the unit tests catch a broken rule ----------------------------------------------------------


def minutes(duration: str) -> int:
    """``5m``, ``1h``, ``90s`` (whole minutes only) → minutes."""
    match = re.fullmatch(r"(\d+)([smh])", duration)
    assert match, f"a for: of one unit expected, not {duration!r}"
    number, unit = int(match[1]), match[2]
    seconds = number * {"s": 1, "m": 60, "h": 3600}[unit]
    assert seconds % 60 == 0, duration
    return seconds // 60


def never_fires(rule: AlertRule) -> dict[int, str]:
    return {rule.expr_line: "        expr: absent(vector(1))"}


def never_clears(rule: AlertRule) -> dict[int, str]:
    """The condition held on for an hour after it ended (the clearing cases look sooner).
    ``+ 0`` drops the metric name, which differs between the sides of an ``or``."""
    return {rule.expr_line: f"        expr: last_over_time((({rule.expr}) + 0)[1h:1m])"}


def fires_a_minute_early(rule: AlertRule) -> dict[int, str]:
    assert rule.for_ is not None and rule.for_line is not None
    return {rule.for_line: f"        for: {minutes(rule.for_) - 1}m"}


THRESHOLD = re.compile(r"(?<![<>=!])([<>])(?!=)")


def fires_on_the_edge(rule: AlertRule) -> dict[int, str]:
    """``< 30`` becomes ``<= 30``: the value exactly at the threshold, which each test feeds
    for a while, must then change what fires."""
    return {rule.expr_line: "        expr: " + THRESHOLD.sub(r"\1=", rule.expr)}


def rule_tests_for(alert: str) -> str:
    """markd-alerts.test.yml with only the test groups that look at ``alert`` (faster)."""
    text = RULE_TESTS.read_text()
    head, _, body = text.partition("\ntests:\n")
    groups = re.split(r"\n(?=  - name: )", body)
    mine = [group for group in groups if f"alertname: {alert}\n" in group]
    assert mine, f"no test looks at {alert}"
    return head + "\ntests:\n" + "\n".join(mine) + "\n"


Mutation = Callable[[AlertRule], dict[int, str]]
MUTATIONS: list[tuple[str, Mutation, Callable[[AlertRule], bool]]] = [
    ("never-fires", never_fires, lambda rule: True),
    ("never-clears", never_clears, lambda rule: True),
    ("fires-a-minute-early", fires_a_minute_early, lambda rule: rule.for_ not in (None, "0m")),
    ("fires-on-the-edge", fires_on_the_edge, lambda rule: bool(THRESHOLD.search(rule.expr))),
]


@dataclass(frozen=True)
class Mutant:
    """One rule broken one way; ``name`` is its test id and its folder in the batch."""

    name: str
    rule: AlertRule
    mutation: Mutation

    def rules_text(self) -> str:
        lines = RULES_TEXT.splitlines()
        for number, replacement in self.mutation(self.rule).items():
            lines[number] = replacement
        return "\n".join(lines) + "\n"


MUTANTS = [
    Mutant(f"{rule_id}-{label}", rule, mutation)
    for rule, rule_id in zip(ALERTS, IDS, strict=True)
    for label, mutation, applies in MUTATIONS
    if applies(rule)
]

#: The unbroken rules with one alert's tests, run in the same batch: it must pass there.
CONTROL = "unbroken"


@dataclass(frozen=True)
class FileResult:
    """What promtool printed for one file of a run over several, and its verdict."""

    passed: bool
    output: str


def per_file(output: str, header: str, files: list[str]) -> dict[str, FileResult]:
    """Split the output of one promtool run over ``files`` (stderr merged into stdout, in the
    order written) at the line each file's part starts with: ``Checking <file>`` for ``check
    rules``, ``Unit Testing:  <file>`` for ``test rules``. Every file must appear once, in
    order, and its part begin with ``SUCCESS`` or ``FAILED:`` (promtool 2.42 prints the latter
    to stderr, the rest to stdout: read apart, the two could not be matched to a file)."""
    parts = re.split(rf"^{re.escape(header)} +(\S+)\n", output, flags=re.M)
    assert parts[0] == "", output
    assert parts[1::2] == files, output
    results = {}
    for name, part in zip(parts[1::2], parts[2::2], strict=True):
        verdict = part.lstrip("\n").partition("\n")[0]
        assert verdict.startswith(("  SUCCESS", "  FAILED:")), f"{name}: {part}"
        results[name] = FileResult(verdict.startswith("  SUCCESS"), part)
    return results


def promtool_over(command: str, header: str, files: list[str], cwd: Path) -> dict[str, FileResult]:
    """One ``promtool <command> rules`` over all ``files``, split per file. Its exit status
    must say what the parts say: 1 if a file failed, else 0."""
    done = run_promtool(command, "rules", *files, cwd=cwd, merge_stderr=True)
    results = per_file(done.stdout, header, files)
    failed = not all(result.passed for result in results.values())
    assert done.returncode == (1 if failed else 0), done.stdout
    return results


@pytest.fixture(scope="module")
def mutant_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[FileResult, FileResult]]:
    """Every selected mutant in a folder of its own (its rules, and the tests of its alert,
    whose ``rule_files`` finds the rules next to them), checked by one ``promtool check
    rules`` and tested by two ``promtool test rules`` side by side (half the mutants each;
    promtool tests one file at a time, on one core). Each mutant's result is its own part of
    the output: ``name`` → (check, test)."""
    selected = set()  # the mutants -k keeps
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and isinstance(callspec.params.get("mutant"), Mutant):
            selected.add(callspec.params["mutant"].name)
    mutants = [mutant for mutant in MUTANTS if mutant.name in selected]
    root = tmp_path_factory.mktemp("mutants")
    for mutant in mutants:
        (root / mutant.name).mkdir()
        (root / mutant.name / RULES.name).write_text(mutant.rules_text())
        (root / mutant.name / RULE_TESTS.name).write_text(rule_tests_for(mutant.rule.name))
    (root / CONTROL).mkdir()
    (root / CONTROL / RULES.name).write_text(RULES_TEXT)
    (root / CONTROL / RULE_TESTS.name).write_text(rule_tests_for(ALERTS[0].name))

    checks = promtool_over(
        "check", "Checking", [f"{m.name}/{RULES.name}" for m in mutants], cwd=root
    )
    test_files = [f"{name}/{RULE_TESTS.name}" for name in [CONTROL, *(m.name for m in mutants)]]
    halves = [test_files[0::2], test_files[1::2]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(
            pool.map(lambda half: promtool_over("test", "Unit Testing:", half, cwd=root), halves)
        )
    tests = {name: result for run in runs for name, result in run.items()}
    assert tests[f"{CONTROL}/{RULE_TESTS.name}"].passed, tests[f"{CONTROL}/{RULE_TESTS.name}"]
    return {
        m.name: (checks[f"{m.name}/{RULES.name}"], tests[f"{m.name}/{RULE_TESTS.name}"])
        for m in mutants
    }


@pytest.mark.parametrize("mutant", MUTANTS, ids=[mutant.name for mutant in MUTANTS])
def test_the_unit_tests_fail_a_broken_rule(
    mutant: Mutant, mutant_runs: dict[str, tuple[FileResult, FileResult]]
) -> None:
    check, test = mutant_runs[mutant.name]
    assert check.passed, check.output  # still a valid rule
    assert f"SUCCESS: {len(ALERTS)} rules found" in check.output, check.output
    assert not test.passed, f"the tests did not notice:\n{test.output}"
    assert f"alertname: {mutant.rule.name}," in test.output, test.output


def test_the_package_ships_the_folder_uncompressed() -> None:
    """operations.md has the technician copy the rules from /usr/share/doc/markd/monitoring/
    into Prometheus's folder, and Prometheus reads no .gz."""
    debian = RULES.parents[1] / "debian"
    assert "monitoring" in (debian / "markd.docs").read_text().split()
    compress = re.search(r"^\tdh_compress (.*)$", (debian / "rules").read_text(), re.M)
    assert compress and "-Xmonitoring/" in compress[1].split()
    assert "/usr/share/doc/markd/monitoring/markd-alerts.yml" in OPERATIONS_DOC.read_text()


# -- the examples of operations.md, "Monitoring a fleet" -----------------------------------------


def fleet_section() -> str:
    return OPERATIONS_DOC.read_text().partition("## Monitoring a fleet")[2].partition("\n## ")[0]


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", fleet_section(), re.M | re.S)


@pytest.mark.parametrize(
    "example",
    [block for block in code_blocks("yaml") if "scrape_configs:" in block],
    ids=["static", "file_sd"],
)
def test_the_scrape_examples_are_prometheus_configuration(example: str, tmp_path: Path) -> None:
    token = tmp_path / "markd-token"
    token.write_text("secret\n")
    example = example.replace("/etc/prometheus/markd-token", str(token))
    example = example.replace("/etc/prometheus/markd-kiosks/", f"{tmp_path}/")
    assert "/etc/" not in example, example
    config = tmp_path / "prometheus.yml"
    config.write_text(f"rule_files: [{RULES}]\n{example}")
    done = run_promtool("check", "config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout, done.stdout


def test_the_targets_file_example_is_a_file_sd_list() -> None:
    (example,) = code_blocks("json")
    groups = json.loads(example)
    assert groups and all(set(group) == {"targets", "labels"} for group in groups)
    for group in groups:
        assert all(re.fullmatch(r"[\w.-]+:\d+", target) for target in group["targets"])
        assert all(isinstance(value, str) for value in group["labels"].values())
