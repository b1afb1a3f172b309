"""The key table of ``docs/configuration.md``, generated from the schema's dataclasses.

:func:`schema_reference` writes the Markdown table between the ``schema_reference()``
markers of that page; a test keeps the two equal, so a key added to the schema without its
documentation fails the tests. :func:`schema_keys` lists the same keys as data.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from markd.config.output import toml_value
from markd.config.schema import Config
from markd.config.validation import optional_dataclass
from markd.validation import TOML, bounds, kind_of


@dataclass(frozen=True)
class KeyReference:
    """One configuration key as documented: ``[section] key``, type, default and meaning."""

    table: str
    key: str
    type: str
    default: str
    doc: str
    limits: str


def schema_keys() -> Iterator[KeyReference]:
    """Every configuration key of the schema, in declaration order (sub-tables after their
    table's own keys)."""
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        if not section.metadata.get("toml", True):
            continue
        hint = hints[section.name]
        if typing.get_origin(hint) is dict:
            yield from _table_keys(f"{section.name}.NAME", typing.get_args(hint)[1])
        else:
            yield from _table_keys(section.name, hint)


def _table_keys(table: str, cls: Any) -> Iterator[KeyReference]:
    cls_hints = typing.get_type_hints(cls)
    nested = []
    for spec in dataclasses.fields(cls):
        if not spec.metadata.get("toml", True):
            continue
        sub_table = optional_dataclass(cls_hints[spec.name])
        if sub_table is not None or dataclasses.is_dataclass(cls_hints[spec.name]):
            nested.append((f"{table}.{spec.name}", sub_table or cls_hints[spec.name]))
            continue
        default = (
            toml_value(list(spec.default) if isinstance(spec.default, tuple) else spec.default)
            if spec.default is not dataclasses.MISSING
            else "(required)"
        )
        yield KeyReference(
            table=table,
            key=spec.name,
            type=_type_name(cls_hints[spec.name]),
            default=default,
            doc=spec.metadata.get("doc", ""),
            limits=_limits(spec.metadata, cls_hints[spec.name]),
        )
    for sub_table, sub_cls in nested:
        yield from _table_keys(sub_table, sub_cls)


def _type_name(hint: Any) -> str:
    """``integer``, ``array of strings``: the words of a problem message, without the article."""
    expected = TOML.expected(kind_of(hint))
    return expected.removeprefix("an ").removeprefix("a ").replace(" (true or false)", "")


def _limits(meta: Any, hint: Any) -> str:
    each = " each" if typing.get_origin(hint) is tuple else ""
    parts = []
    if "choices" in meta:
        parts.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
    if "min" in meta or "max" in meta:
        parts.append(bounds(meta.get("min"), meta.get("max")).removeprefix("of ") + each)
    if meta.get("min_length") == 1:
        parts.append("not empty")
    return "; ".join(parts)


def schema_reference() -> str:
    """A Markdown table of every key, for ``docs/configuration.md`` (a test keeps them equal)."""
    rows = [
        "| Key | Type | Default | Allowed | Meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for ref in schema_keys():
        default = f"`{ref.default}`" if ref.default != "(required)" else "(required)"
        rows.append(
            f"| `[{ref.table}] {ref.key}` | {ref.type} | {default} | {ref.limits} | {ref.doc} |"
        )
    return "\n".join(rows) + "\n"
