"""The Mark Unit answer fixtures (``tests/data/mark_unit/``) and the check of an answer
against them. The fixtures were written from FMU-API's public C# source (each names its files
and commit); see ``tests/data/mark_unit/README.md`` for their format.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data" / "mark_unit"

#: JSON types by fixture name; ``integer`` is a JSON number without a fraction, never a bool.
_PLAIN = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


@cache
def shape(name: str) -> dict[str, Any]:
    return json.loads((DATA / "shapes" / f"{name}.json").read_text("utf-8"))


@cache
def answer_fixture(name: str) -> dict[str, Any]:
    return json.loads((DATA / "answers" / f"{name}.json").read_text("utf-8"))


def _resolve(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with a named shape's fields and ``extra_fields`` merged under its own (the
    spec's ``fields`` refine the shape's, one by one)."""
    kind = spec["type"]
    if kind in _PLAIN:
        return spec
    base = shape(kind)
    merged = {**base["fields"], **spec.get("fields", {})}
    return {
        **spec,
        "type": "object",
        "fields": merged,
        "extra_fields": spec.get("extra_fields", base["extra_fields"]),
    }


def problems(value: Any, spec: dict[str, Any], where: str = "$") -> list[str]:
    """What in ``value`` breaks ``spec`` (a fixture's type description): empty when nothing."""
    spec = _resolve(spec)
    kind = spec["type"]
    if not _PLAIN[kind](value):
        return [f"{where}: {type(value).__name__} where the fixture says {kind}"]
    found: list[str] = []
    if "value" in spec and value != spec["value"]:
        found.append(f"{where}: {value!r} where the fixture fixes {spec['value']!r}")
    if kind == "string":
        if len(value) < spec.get("min_length", 0):
            found.append(f"{where}: shorter than {spec['min_length']}")
        if "contains" in spec and spec["contains"] not in value:
            found.append(f"{where}: does not contain {spec['contains']!r}")
    if kind == "array":
        if len(value) < spec.get("min_items", 0):
            found.append(f"{where}: fewer than {spec['min_items']} items")
        if len(value) > spec.get("max_items", len(value)):
            found.append(f"{where}: more than {spec['max_items']} items")
        if "items" in spec:
            for n, item in enumerate(value):
                found += problems(item, spec["items"], f"{where}[{n}]")
    if kind == "object" and "fields" in spec:
        fields = spec["fields"]
        for name, field in fields.items():
            if name in value:
                found += problems(value[name], field, f"{where}.{name}")
            elif field.get("required", True):
                found.append(f"{where}: no field {name!r}")
        if not spec.get("extra_fields", False):
            found += [
                f"{where}: field {name!r} not in the fixture"
                for name in sorted(value.keys() - fields)
            ]
    return found


def check_answer(name: str, status: int, body: Any) -> None:
    """Fail (AssertionError listing every problem) unless ``status`` and ``body`` are the
    answer the fixture ``answers/<name>.json`` describes."""
    fixture = answer_fixture(name)
    found = [] if status == fixture["status"] else [f"HTTP {status}, not {fixture['status']}"]
    found += problems(body, fixture["body"])
    assert not found, f"{name}: " + "; ".join(found)
