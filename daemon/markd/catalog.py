"""The kiosk's price list (``[sale] catalog``) and how a kiosk prices a unit.

The price list is a CSV file of ``gtin;name;price`` lines: the price in roubles (``89.90`` or
``89,90``, spaces between thousands allowed), ``#`` starts a comment line, an optional first
line ``gtin;name;price`` is a header. Any bad line is a :class:`~markd.errors.ConfigError`
naming the file and the line, so ``markctl config check`` reports it.

:func:`markd.config.load` parses the file once and keeps the result in the loaded
configuration (``SaleConfig.parsed_catalog``); the sale desk takes it from there
(``SaleConfig.price_list()``), so one load reads the file once however many files name it.

:func:`quote` is the kiosk's pricing rule: the price list's line for the code's GTIN, else a
tobacco code's own maximum retail price.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from markd import codes
from markd.errors import ConfigError
from markd.money import MAX_KOPECKS, money_problem
from markd.text import control_problem

#: Position name of a tobacco unit priced at its MRP with no line in the price list.
MRP_NAME = "Табачная продукция"
#: Highest price a price list may give (100 million roubles): a bigger one is a typo. Below
#: what a ККТ takes (markd.money.MAX_KOPECKS), which every other edge uses.
MAX_PRICE_KOPECKS = 10_000_000_000
assert MAX_PRICE_KOPECKS <= MAX_KOPECKS
#: Longest position name the ККТ takes (tag 1030).
MAX_NAME_CHARS = 128

_PRICE = re.compile(r"(\d{1,12})(?:[.,](\d{1,2}))?")
_SPACES = re.compile(r"[ \u00a0\u202f]")


@dataclass(frozen=True)
class CatalogEntry:
    """One line of the price list."""

    #: GTIN-14 (shorter GTINs are padded with zeros on the left, as in a marking code).
    gtin: str
    name: str
    price_kopecks: int
    #: Line in the file, for messages.
    line: int


@dataclass(frozen=True)
class Catalog:
    """The price list of a kiosk, by GTIN-14."""

    path: str
    entries: Mapping[str, CatalogEntry]

    def get(self, gtin: str) -> CatalogEntry | None:
        return self.entries.get(gtin.zfill(14))

    def __len__(self) -> int:
        return len(self.entries)


def load_catalog(path: str | Path) -> Catalog:
    """Read the price list at ``path`` (UTF-8, a byte-order mark allowed, ``;``-separated,
    fields may be quoted). Raises :class:`~markd.errors.ConfigError` with one ``FILE:LINE:``
    problem per bad line (or one for a file that cannot be read)."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{name}: cannot read the price list: {exc.strerror or exc}",
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: the price list is not UTF-8 text (byte {exc.start})") from None
    problems: list[str] = []
    entries: dict[str, CatalogEntry] = {}
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=";", strict=True)
    first = True
    line = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(f"{name}:{reader.line_num}: {exc}")
            break
        line = reader.line_num
        fields = [f.strip() for f in row]
        while fields and not fields[-1]:
            fields.pop()  # "gtin;name;price;" from a spreadsheet
        if not fields or fields[0].startswith("#"):
            continue
        if first and fields[0].lower() == "gtin":
            first = False
            continue  # the header line
        first = False
        entry = _catalog_entry(fields, name, line, problems)
        if entry is None:
            continue
        earlier = entries.get(entry.gtin)
        if earlier is not None:
            problems.append(
                f"{name}:{line}: GTIN {entry.gtin} is already priced on line {earlier.line}"
            )
            continue
        entries[entry.gtin] = entry
    if problems:
        count = len(problems)
        raise ConfigError(
            f"price list {name} has {count} problem{'s' if count != 1 else ''}", problems
        )
    return Catalog(name, entries)


def _catalog_entry(
    fields: list[str], name: str, line: int, problems: list[str]
) -> CatalogEntry | None:
    where = f"{name}:{line}"
    if len(fields) != 3:
        problems.append(f"{where}: expected 3 fields gtin;name;price, got {len(fields)}")
        return None
    gtin, title, price_text = fields
    ok = True
    if not (gtin.isascii() and gtin.isdigit() and len(gtin) in (8, 12, 13, 14)):
        problems.append(f"{where}: gtin: expected 8, 12, 13 or 14 digits, got {gtin!r}")
        ok = False
    elif not codes.gtin_is_valid(gtin):
        problems.append(f"{where}: gtin: check digit of {gtin} is wrong")
        ok = False
    if not title:
        problems.append(f"{where}: name: must not be empty")
        ok = False
    elif len(title) > MAX_NAME_CHARS:
        problems.append(f"{where}: name: at most {MAX_NAME_CHARS} characters (tag 1030)")
        ok = False
    elif (problem := control_problem(title, "name")) is not None:
        # It would be printed on a receipt and shown on screens (markd.text).
        problems.append(f"{where}: {problem}")
        ok = False
    price = _price_kopecks(price_text)
    if price is None:
        problems.append(
            f"{where}: price: expected roubles such as 89.90 or 89,90, got {price_text!r}"
        )
        ok = False
    elif price > MAX_PRICE_KOPECKS or (problem := money_problem(price, "price")) is not None:
        problems.append(
            f"{where}: {problem or f'price: at most {MAX_PRICE_KOPECKS // 100} roubles'}"
        )
        ok = False
    return CatalogEntry(gtin.zfill(14), title, price, line) if ok and price is not None else None


def _price_kopecks(text: str) -> int | None:
    found = _PRICE.fullmatch(_SPACES.sub("", text))
    if found is None:
        return None
    return int(found.group(1)) * 100 + int((found.group(2) or "0").ljust(2, "0"))


@dataclass(frozen=True)
class Quote:
    """What a kiosk sells a unit as: its name and price, and where the price came from
    (``catalog``, ``mrp``; ``api`` for units the POS priced)."""

    name: str
    price_kopecks: int
    source: str


def quote(code: codes.MarkingCode, catalog: Catalog | None, *, use_mrp: bool) -> Quote | None:
    """A kiosk's price for ``code``: the price list's line for its GTIN, else (with
    ``use_mrp``) a tobacco code's own maximum retail price; None when there is neither. The
    MRP is the price only for tobacco: in other groups a code's MRP is a minimum."""
    if catalog is not None:
        entry = catalog.get(code.gtin)
        if entry is not None:
            return Quote(entry.name, entry.price_kopecks, "catalog")
    if use_mrp and code.group == "tobacco" and code.mrp_kopecks is not None:
        return Quote(f"{MRP_NAME} {code.gtin}", code.mrp_kopecks, "mrp")
    return None


__all__ = [
    "MAX_NAME_CHARS",
    "MAX_PRICE_KOPECKS",
    "MRP_NAME",
    "Catalog",
    "CatalogEntry",
    "Quote",
    "load_catalog",
    "quote",
]
