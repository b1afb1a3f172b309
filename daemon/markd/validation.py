"""One validator for the data markd reads from people: configuration files and emulator scenarios.

A value is judged against a :class:`Kind` (string, integer, number, boolean, table, array of
one of those, possibly optional) and the limits of its key, and every problem is one sentence
a technician can act on: ``expected an integer from 1 to 20, got 25``. The caller adds where
the value was (file, line, key) and decides whether to collect problems or stop at the first.

Users:

- :mod:`markd.config` (``config/validation.py`` walks the schema's dataclasses with it);
- :mod:`markd.emulators.scenario` (a scenario's settings and per-code answers).

Both describe their tables as frozen dataclasses: :func:`kind_of` turns a field's type hint
into its kind, and the field's ``metadata`` carries the limits (:data:`LIMIT_KEYS`):

``choices``
    the allowed values (of a string, or of each item of an array);
``min`` / ``max``
    bounds of an integer or number (or of each item of an array);
``min_length``
    shortest allowed string (1 for "must not be empty");
``check``
    a function returning a problem (str) or None, for what the rest cannot say.

The two kinds of file word problems differently (:class:`Dialect`): a configuration file is
TOML, so it has arrays and tables and a value found is shown with its type (``a string
('big')``); a scenario is JSON (or a Python dict), so it has lists and objects and a value
found is shown as written in Python (``'big'``). Which words, not which rules: the judging is
the same code for both.

This module imports nothing of markd (a foundation, docs/architecture.md): the emulators may
use it without reaching into the daemon.
"""

from __future__ import annotations

import dataclasses
import datetime
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: The metadata keys of a field that limit its value (see the module docstring).
LIMIT_KEYS = ("choices", "min", "max", "min_length", "check")


@dataclass(frozen=True)
class Kind:
    """A type of TOML or JSON value: how to recognise one, and its name for a :class:`Dialect`.

    ``item`` is set for an array (its items' kind); ``nullable`` accepts None too (JSON's
    ``null``; TOML has none, so an optional configuration key is simply left out).
    """

    name: str
    accepts: Callable[[Any], bool] = dataclasses.field(compare=False)
    item: Kind | None = None
    nullable: bool = False


def is_integer(value: Any) -> bool:
    """An integer, not a boolean: ``True`` is an int to Python, but ``port = true`` is a typo."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An integer or a float, not a boolean."""
    return isinstance(value, int | float) and not isinstance(value, bool)


STRING = Kind("string", lambda value: isinstance(value, str))
INTEGER = Kind("integer", is_integer)
NUMBER = Kind("number", is_number)
BOOLEAN = Kind("boolean", lambda value: isinstance(value, bool))
TABLE = Kind("table", lambda value: isinstance(value, Mapping))
ANY = Kind("value", lambda value: True)


def array_of(item: Kind) -> Kind:
    """An array (a list; a tuple from Python) whose items are each of kind ``item``."""
    return Kind("array", lambda value: isinstance(value, list | tuple), item=item)


def optional(kind: Kind) -> Kind:
    """``kind`` or None."""
    return dataclasses.replace(kind, nullable=True)


_SCALARS: dict[Any, Kind] = {str: STRING, int: INTEGER, float: NUMBER, bool: BOOLEAN}


def kind_of(hint: Any) -> Kind:
    """The kind of a field's (resolved) type hint: ``str``, ``int``, ``float`` (any number),
    ``bool``, ``tuple[X, ...]`` or ``list[X]`` (an array), ``X | None`` (optional),
    a mapping or a dataclass (a table), ``Any``."""
    if hint in _SCALARS:
        return _SCALARS[hint]
    if hint is Any:
        return ANY
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return optional(kind_of(args[0]))
        raise TypeError(f"no kind for the union {hint!r}")
    if origin in (tuple, list):
        return array_of(kind_of(typing.get_args(hint)[0]))
    if dataclasses.is_dataclass(hint) or hint in (dict, Mapping) or origin in (dict, Mapping):
        return TABLE
    raise TypeError(f"no kind for the type hint {hint!r}")


def describe(value: Any) -> str:
    """``a string ('big')``: what was found, with its TOML type, shortened so that a pasted
    blob stays readable."""
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return f"a date/time ({value.isoformat()})"
    return type(value).__name__


def bounds(low: int | float | None, high: int | float | None) -> str:
    """``from 1 to 20``, ``of at least 1``, ``of at most 20``."""
    if low is not None and high is not None:
        return f"from {low} to {high}"
    if low is not None:
        return f"of at least {low}"
    return f"of at most {high}"


_PLURALS = {"string": "strings", "integer": "integers", "number": "numbers", "boolean": "booleans"}


@dataclass(frozen=True)
class Dialect:
    """How problems are worded for one kind of file (see the module docstring)."""

    #: Kind name → the words for "a value of this kind" (``an integer``).
    names: Mapping[str, str]
    #: Words before the plural of an array's items (``an array of`` integers).
    array: str
    #: How a value found is shown after "got".
    describe: Callable[[Any], str]
    #: Name each bad item of an array (``item 2: expected …``) rather than the whole array.
    each_item: bool

    def expected(self, kind: Kind) -> str:
        """``an integer``, ``an array of strings``: what a value of ``kind`` is called."""
        if kind.item is not None:
            return f"{self.array} {_PLURALS.get(kind.item.name, 'values')}"
        return self.names[kind.name]


#: Configuration files.
TOML = Dialect(
    names={
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "a boolean (true or false)",
        "table": "a table",
        "value": "a value",
    },
    array="an array of",
    describe=describe,
    each_item=True,
)

#: Emulator scenarios.
JSON = Dialect(
    names={
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
        "table": "a table/object",
        "value": "a value",
    },
    array="a list of",
    describe=repr,
    each_item=False,
)


def problems(
    value: Any,
    kind: Kind,
    limits: Mapping[str, Any] | None = None,
    dialect: Dialect = TOML,
) -> list[str]:
    """Why ``value`` is not a valid ``kind`` under ``limits`` (:data:`LIMIT_KEYS`, other keys
    are ignored, so a field's whole metadata may be passed); empty when it is valid.

    The limits of an array apply to each item. A scalar has at most one problem (the first
    found); an array in a dialect that names items has one per bad item.
    """
    limits = limits or {}
    if value is None and kind.nullable:
        return []
    if not kind.accepts(value):
        return [f"expected {dialect.expected(kind)}, got {dialect.describe(value)}"]
    if kind.item is None:
        problem = _limit_problem(value, kind, limits, dialect)
        return [] if problem is None else [problem]
    found = []
    for index, item in enumerate(value, start=1):
        for problem in problems(item, kind.item, limits, dialect):
            if not dialect.each_item:
                return [f"expected {dialect.expected(kind)}, got {dialect.describe(value)}"]
            found.append(f"item {index}: {problem}")
    return found


def _limit_problem(
    value: Any, kind: Kind, limits: Mapping[str, Any], dialect: Dialect
) -> str | None:
    choices = limits.get("choices")
    if choices is not None and value not in choices:
        return f"expected one of {', '.join(choices)}, got {dialect.describe(value)}"
    if kind.name in ("integer", "number"):
        low, high = limits.get("min"), limits.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return f"expected {dialect.expected(kind)} {bounds(low, high)}, got {value}"
    min_length = limits.get("min_length")
    if kind.name == "string" and min_length is not None and len(value) < min_length:
        return "must not be empty" if min_length == 1 else f"shorter than {min_length} characters"
    check = limits.get("check")
    return None if check is None else check(value)


__all__ = [
    "ANY",
    "BOOLEAN",
    "INTEGER",
    "JSON",
    "LIMIT_KEYS",
    "NUMBER",
    "STRING",
    "TABLE",
    "TOML",
    "Dialect",
    "Kind",
    "array_of",
    "bounds",
    "describe",
    "is_integer",
    "is_number",
    "kind_of",
    "optional",
    "problems",
]
