"""TOML keys in a file's text: the line each key path is on, and how a key path is written.

tomllib reports the position of a syntax error but not of a key, and a problem that names
``/etc/markd/markd.toml:12`` is what lets a technician fix it over the phone; so the text
tomllib accepted is read once more here, only for positions (:func:`key_lines`).

The spelling helpers write a key path as a technician would type it: ``[store] map_size_mb``,
``[scanners."front desk"]``.
"""

from __future__ import annotations

import bisect
import json
import re

#: A bare TOML key: written without quotes.
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    """A key as it would be written in TOML: bare when possible, else quoted."""
    return key if BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


def table_name(table: tuple[str, ...]) -> str:
    """``[check.online]`` for ``("check", "online")``."""
    return "[" + ".".join(toml_key(k) for k in table) + "]"


def key_name(key_path: tuple[str, ...]) -> str:
    """``[store] map_size_mb`` for ``("store", "map_size_mb")``."""
    return f"{table_name(key_path[:-1])} {toml_key(key_path[-1])}"


# --------------------------------------------------------------------------------------------
# Locating keys in the file text


_ESCAPES = {
    "b": "\b",
    "t": "\t",
    "n": "\n",
    "f": "\f",
    "r": "\r",
    '"': '"',
    "\\": "\\",
    "e": "\x1b",
}
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)")


def _unescape(text: str) -> str:
    def one(found: re.Match[str]) -> str:
        code = found.group(1)
        if code[0] in "uU" and len(code) > 1:
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, code)

    return _ESCAPE.sub(one, text)


class _KeyLineScanner:
    """Maps every dotted key path of a TOML text to the line where it first appears.

    Only used on text tomllib has already accepted, so it can be lenient: it follows table
    headers, dotted and quoted keys and inline tables, and steps over strings (including
    multi-line ones) and arrays so that their insides are not mistaken for keys.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[tuple[str, ...], int] = {}
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]

    def run(self) -> dict[tuple[str, ...], int]:
        table: tuple[str, ...] = ()
        text = self.text
        while True:
            self._skip_space(newlines=True)
            if self.pos >= len(text):
                return self.lines
            start = self.pos
            if text[self.pos] == "[":
                self.pos += 2 if text.startswith("[[", self.pos) else 1
                table = self._key()
                self._record(table, start)
            else:
                key = self._key()
                self._record((*table, *key), start)
                self._skip_space()
                if text.startswith("=", self.pos):
                    self.pos += 1
                    self._value((*table, *key))
            self._skip_to_line_end()
            if self.pos == start:  # never loop on something unexpected
                self.pos += 1

    def _record(self, key_path: tuple[str, ...], pos: int) -> None:
        line = bisect.bisect_left(self._newlines, pos) + 1
        for depth in range(1, len(key_path) + 1):
            self.lines.setdefault(key_path[:depth], line)

    def _skip_space(self, newlines: bool = False) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r" or (newlines and char == "\n"):
                self.pos += 1
            elif char == "#" and newlines:
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def _skip_to_line_end(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + 1

    def _key(self) -> tuple[str, ...]:
        """A possibly dotted, possibly quoted key; stops before ``=``, ``]`` or ``}``."""
        parts: list[str] = []
        text = self.text
        while self.pos < len(text):
            self._skip_space()
            char = text[self.pos] if self.pos < len(text) else ""
            if char == '"':
                parts.append(_unescape(self._basic_string()))
            elif char == "'":
                end = text.find("'", self.pos + 1)
                end = len(text) if end < 0 else end
                parts.append(text[self.pos + 1 : end])
                self.pos = end + 1
            else:
                found = BARE_KEY.match(text, self.pos)
                if found is None:
                    break
                parts.append(found.group())
                self.pos = found.end()
            self._skip_space()
            if not text.startswith(".", self.pos):
                break
            self.pos += 1
        return tuple(parts)

    def _basic_string(self) -> str:
        """Consume ``"..."`` at ``pos`` (one line, with escapes); return its raw inside."""
        text = self.text
        start = self.pos + 1
        index = start
        while index < len(text) and text[index] not in '"\n':
            index += 2 if text[index] == "\\" else 1
        self.pos = index + 1
        return text[start:index]

    def _value(self, key_path: tuple[str, ...] | None) -> None:
        """Step over one value; record the keys of an inline table under ``key_path``."""
        self._skip_space()
        text = self.text
        if self.pos >= len(text):
            return
        for quotes in ('"""', "'''"):
            if text.startswith(quotes, self.pos):
                index = self.pos + 3
                while index < len(text) and not text.startswith(quotes, index):
                    index += 2 if quotes == '"""' and text[index] == "\\" else 1
                index += 3
                # Up to two quote characters may sit right before the closing delimiter.
                while index < len(text) and text[index] == quotes[0]:
                    index += 1
                self.pos = index
                return
        char = text[self.pos]
        if char == '"':
            self._basic_string()
        elif char == "'":
            end = text.find("'", self.pos + 1)
            self.pos = len(text) if end < 0 else end + 1
        elif char == "[":
            self._container("]", None)
        elif char == "{":
            self._container("}", key_path)
        else:
            # Numbers, booleans, dates (which may contain a space) run to a delimiter.
            found = re.compile(r"[^,\]}#\n]*").match(text, self.pos)
            self.pos = found.end() if found else self.pos + 1

    def _container(self, closing: str, key_path: tuple[str, ...] | None) -> None:
        """Step over an array (``key_path`` None) or an inline table."""
        text = self.text
        self.pos += 1
        while self.pos < len(text):
            self._skip_space(newlines=True)
            if self.pos >= len(text):
                return
            char = text[self.pos]
            before = self.pos
            if char == closing:
                self.pos += 1
                return
            if char == ",":
                self.pos += 1
            elif key_path is None:
                self._value(None)
            else:
                start = self.pos
                key = self._key()
                self._record((*key_path, *key), start)
                self._skip_space()
                if text.startswith("=", self.pos):
                    self.pos += 1
                self._value((*key_path, *key))
            if self.pos == before:
                self.pos += 1


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Line (1-based) of every table header and key path in ``text``, first occurrence wins."""
    scanner = _KeyLineScanner(text)
    try:
        return scanner.run()
    except (IndexError, ValueError):
        # Best effort: positions are a convenience, a problem without a line is still reported.
        return scanner.lines
