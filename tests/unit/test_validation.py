"""markd.validation: the one validator of the configuration and the emulators' scenarios.

The same rules judge both; only the words differ (TOML arrays and typed values for a
configuration file, JSON lists and Python reprs for a scenario).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from markd import validation
from markd.config import load
from markd.emulators.scenario import Scenario, ScenarioError
from markd.errors import ConfigError
from markd.validation import (
    ANY,
    BOOLEAN,
    INTEGER,
    JSON,
    NUMBER,
    STRING,
    TABLE,
    TOML,
    array_of,
    kind_of,
    optional,
    problems,
)


@pytest.mark.parametrize(
    ("value", "kind", "limits", "toml", "json"),
    [
        (
            "big",
            INTEGER,
            {},
            "expected an integer, got a string ('big')",
            "expected an integer, got 'big'",
        ),
        (
            True,
            INTEGER,
            {},
            "expected an integer, got a boolean (true)",
            "expected an integer, got True",
        ),
        (
            "yes",
            BOOLEAN,
            {},
            "expected a boolean (true or false), got a string ('yes')",
            "expected true or false, got 'yes'",
        ),
        (
            "1",
            array_of(INTEGER),
            {},
            "expected an array of integers, got a string ('1')",
            "expected a list of integers, got '1'",
        ),
        (5, TABLE, {}, "expected a table, got an integer (5)", "expected a table/object, got 5"),
        (
            "redy",
            STRING,
            {"choices": ("ready", "sync_error")},
            "expected one of ready, sync_error, got a string ('redy')",
            "expected one of ready, sync_error, got 'redy'",
        ),
        (
            0,
            INTEGER,
            {"min": 1, "max": 20},
            "expected an integer from 1 to 20, got 0",
            "expected an integer from 1 to 20, got 0",
        ),
        (
            0.5,
            NUMBER,
            {"min": 1},
            "expected a number of at least 1, got 0.5",
            "expected a number of at least 1, got 0.5",
        ),
        ("", STRING, {"min_length": 1}, "must not be empty", "must not be empty"),
    ],
)
def test_one_rule_two_wordings(
    value: Any, kind: validation.Kind, limits: Mapping[str, Any], toml: str, json: str
) -> None:
    assert problems(value, kind, limits, TOML) == [toml]
    assert problems(value, kind, limits, JSON) == [json]


def test_valid_values_have_no_problem() -> None:
    assert problems(3, INTEGER, {"min": 1, "max": 20}) == []
    assert problems(2.5, NUMBER) == []
    assert problems(None, optional(STRING), {}, JSON) == []
    assert problems({"a": 1}, TABLE) == []
    assert problems(object(), ANY) == []
    assert problems((1, 2), array_of(INTEGER)) == []


def test_a_configuration_names_each_bad_item_a_scenario_the_whole_list() -> None:
    lengths = array_of(INTEGER)

    assert problems([13, "6", 99], lengths, {"min": 1, "max": 20}, TOML) == [
        "item 2: expected an integer, got a string ('6')",
        "item 3: expected an integer from 1 to 20, got 99",
    ]
    assert problems([1, "2"], lengths, {}, JSON) == ["expected a list of integers, got [1, '2']"]


def test_a_check_function_speaks_last() -> None:
    def even(value: int) -> str | None:
        return None if value % 2 == 0 else f"{value} is odd"

    assert problems(3, INTEGER, {"check": even}) == ["3 is odd"]
    # A value of the wrong kind never reaches the check.
    assert problems("3", INTEGER, {"check": even}) == ["expected an integer, got a string ('3')"]


def test_kind_of_reads_type_hints() -> None:
    assert kind_of(str) is STRING
    assert kind_of(float) is NUMBER
    assert kind_of(tuple[int, ...]).item is INTEGER
    assert kind_of(str | None) == optional(STRING)
    assert kind_of(Mapping[str, Any]) is TABLE
    assert kind_of(dict[str, int]) is TABLE

    @dataclass(frozen=True)
    class Table:
        names: list[str] = field(default_factory=list)

    assert kind_of(Table) is TABLE
    assert kind_of(list[str]).item is STRING
    with pytest.raises(TypeError):
        kind_of(int | str)


def test_both_users_word_their_problems_through_it(tmp_path: Any) -> None:
    """The configuration and a scenario refuse the same mistake with the validator's words."""
    main = tmp_path / "markd.toml"
    main.write_text('[log]\nlevel = "loud"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as config_error:
        load(main)
    with pytest.raises(ScenarioError) as scenario_error:
        Scenario.from_dict({"local_module": {"state": "redy"}})

    levels = ("debug", "info", "warning", "error")
    states = ("ready", "initialization", "not_configured", "sync_error")
    assert config_error.value.problems == [
        f"{main}:2: [log] level: {problems('loud', STRING, {'choices': levels}, TOML)[0]}"
    ]
    assert str(scenario_error.value) == (
        f"scenario.local_module.state: {problems('redy', STRING, {'choices': states}, JSON)[0]}"
    )
