"""Validating parsed TOML against the schema's dataclasses (:mod:`markd.config.schema`).

:func:`build` walks a table and its dataclass together: unknown keys, sub-tables, tables of
named tables (``[scanners.NAME]``), arrays, scalars and required keys. Each value is judged by
the one validator markd has (:func:`markd.validation.problems`, TOML wording), and every
problem is recorded with the ``file:line`` of its key (:class:`Checker`), so one run reports
everything wrong in every file. A key that names a file markd reads (``[sale] catalog``) has
that file parsed here, once per load, and every problem of that file is reported
(:meth:`Checker.parse`).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from markd.config.lines import key_name, table_name, toml_key
from markd.errors import ConfigError
from markd.validation import TOML, describe, kind_of, problems

#: A value that failed validation (its problems are already recorded).
INVALID: Any = object()


class Checker:
    """Collects problems; ``where`` turns a key path into ``file:line``.

    ``parsed`` is shared by every checker of one load: what each file named by a key parsed
    to (or the :class:`~markd.errors.ConfigError` it raised), so the file is read once even
    though each configuration file and then their merge are validated.
    """

    def __init__(
        self,
        where: Callable[[tuple[str, ...]], str],
        require: bool,
        parsed: dict[tuple[Callable[[str], Any], str], Any] | None = None,
    ) -> None:
        self.where = where
        self.require = require  # False for a single file: another file may set the key
        self.problems: list[str] = []
        self.parsed = {} if parsed is None else parsed

    def add(self, key_path: tuple[str, ...], message: str) -> None:
        self.problems.append(f"{self.where(key_path)}: {message}")

    def parse(self, parser: Callable[[str], Any], path: str, key_path: tuple[str, ...]) -> Any:
        """``parser(path)``, once per load; on a :class:`~markd.errors.ConfigError` record
        each of its problems (each with the file's own ``file:line``) under the key, and
        return :data:`INVALID`. All of them: a technician fixing a price list wants every bad
        line at once, not one per attempt."""
        memo = (parser, path)
        if memo not in self.parsed:
            try:
                self.parsed[memo] = parser(path)
            except ConfigError as exc:
                self.parsed[memo] = exc
        result = self.parsed[memo]
        if isinstance(result, ConfigError):
            for problem in result.problems:
                self.add(key_path, f"{key_name(key_path)}: {problem}")
            return INVALID
        return result


def build(cls: type, raw: Any, table: tuple[str, ...], checker: Checker) -> Any:
    """Validate ``raw`` (a parsed TOML table) against dataclass ``cls`` and construct it;
    :data:`INVALID` when anything in it is wrong (the problems are in ``checker``)."""
    if not isinstance(raw, dict):
        checker.add(table, f"{table_name(table)}: expected a table, got {describe(raw)}")
        return INVALID
    fields_by_name = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("toml", True)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    invalid = False
    for key, value in raw.items():
        key_path = (*table, key)
        spec = fields_by_name.get(key)
        if spec is None:
            checker.add(key_path, _unknown_key_message(table, key, value, sorted(fields_by_name)))
            continue
        converted = _convert(value, hints[key], spec.metadata, key_path, checker)
        if converted is not INVALID and converted and "parse" in spec.metadata:
            parsed = checker.parse(spec.metadata["parse"], converted, key_path)
            if parsed is INVALID:
                converted = INVALID
            else:
                values[spec.metadata["parsed_into"]] = parsed
        if converted is INVALID:
            invalid = True
        elif not (spec.metadata.get("empty_is_default") and not converted):
            values[key] = converted

    for name, spec in fields_by_name.items():
        if name not in raw and not has_default(spec):
            invalid = True
            if checker.require:
                checker.add((*table, name), f"{key_name((*table, name))}: required key is missing")
    return INVALID if invalid else cls(**values)


def _convert(
    value: Any, hint: Any, meta: Mapping[str, Any], key_path: tuple[str, ...], checker: Checker
) -> Any:
    """Check one value against a type hint and field metadata; return it in schema form."""
    optional = optional_dataclass(hint)
    if optional is not None:
        hint = optional  # an optional sub-table: present in the file means used
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key_path, checker)  # type: ignore[arg-type]

    if typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            message = f"{table_name(key_path)}: expected a table, got {describe(value)}"
            checker.add(key_path, message)
            return INVALID
        item_hint = typing.get_args(hint)[1]
        pattern = meta.get("name_pattern")
        result: dict[str, Any] = {}
        for name, item in value.items():
            item_path = (*key_path, name)
            if pattern is not None and not re.fullmatch(pattern, name):
                checker.add(
                    item_path,
                    f"{table_name(item_path)}: bad name: {meta.get('name_doc', pattern)}",
                )
                continue
            converted = _convert(item, item_hint, {}, item_path, checker)
            if converted is not INVALID:
                result[name] = converted
        return result if len(result) == len(value) else INVALID

    kind = kind_of(hint)
    found = problems(value, kind, meta, TOML)
    for problem in found:
        checker.add(key_path, f"{key_name(key_path)}: {problem}")
    if found:
        return INVALID
    return tuple(value) if kind.item is not None else value


def optional_dataclass(hint: Any) -> Any:
    """The dataclass of an ``X | None`` hint, else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def has_default(spec: dataclasses.Field[Any]) -> bool:
    return (
        spec.default is not dataclasses.MISSING or spec.default_factory is not dataclasses.MISSING
    )


def _unknown_key_message(table: tuple[str, ...], key: str, value: Any, known: list[str]) -> str:
    if not table:
        sections = ", ".join(known)
        if not isinstance(value, dict):
            # `level = "debug"` above every [section] header: the header was forgotten.
            return f"unknown top-level key {toml_key(key)} (keys belong in a section: {sections})"
        return f"unknown section [{toml_key(key)}] (known sections: {sections})"
    return f"unknown key {key_name((*table, key))} (known keys: {', '.join(known)})"
