"""The configuration written out: plain data for JSON (``markctl config show --json``) and a
complete TOML file (``markctl config show``) that loads back to the same configuration."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from markd.config.lines import table_name, toml_key
from markd.config.schema import Config


def to_dict(config: Config) -> dict[str, Any]:
    """The configuration as plain data (dicts, lists, str, int, bool) for JSON or TOML.

    ``sources`` is left out: the result is configuration only, so writing it back as TOML and
    loading it gives the same configuration.
    """

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {
                f.name: plain(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if f.metadata.get("toml", True) and getattr(value, f.name) is not None
            }
        if isinstance(value, dict):
            return {name: plain(item) for name, item in value.items()}
        if isinstance(value, tuple | list):
            return [plain(item) for item in value]
        return value

    return plain(config)


def to_toml(config: Config) -> str:
    """The configuration as a complete TOML file (every key, defaults included)."""
    lines: list[str] = []

    def table(path: tuple[str, ...], data: dict[str, Any]) -> None:
        scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
        if scalars or not data:
            if lines:
                lines.append("")
            lines.append(table_name(path))
            lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in scalars.items())
        for key, value in data.items():
            if isinstance(value, dict):
                table((*path, key), value)

    for section, data in to_dict(config).items():
        table((section,), data)
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """One value (boolean, integer, string or array of them) as TOML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # A JSON string is a valid TOML basic string, except that TOML also wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
