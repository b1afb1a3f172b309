"""systemd/markd.catalog: every MESSAGE_ID explained, in English and in Russian.

The file is parsed here the way journalctl reads it (``-- ID`` or ``-- ID LANG`` starts an
entry, header lines until a blank line, then the text), and also handed to the real journalctl
where one is installed.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import markd
from markd.systemd import MESSAGE_IDS as _REGISTRY


def all_message_ids() -> dict[str, str]:
    """MESSAGE_IDS after importing every module of the package: every kind belongs in
    ``markd.systemd.MESSAGE_IDS`` itself, and a module that added a kind of its own at import
    time would still be caught here, whatever tests ran before."""
    for module in pkgutil.walk_packages(markd.__path__, "markd."):
        importlib.import_module(module.name)
    return dict(_REGISTRY)


MESSAGE_IDS = all_message_ids()

CATALOG = Path(__file__).resolve().parents[2] / "systemd" / "markd.catalog"
CYRILLIC = re.compile("[А-Яа-яЁё]")


@dataclass
class Entry:
    message_id: str
    language: str  # "" for the default (English) entry
    headers: dict[str, str]
    body: str


def parse_catalog(text: str) -> list[Entry]:
    entries: list[Entry] = []
    current: Entry | None = None
    in_headers = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            continue
        if line.startswith("-- "):
            found = re.fullmatch(r"-- ([0-9a-f]{32})(?: ([a-z]{2}(?:_[A-Z]{2})?))?", line)
            assert found, f"line {number}: bad entry start {line!r}"
            current = Entry(found.group(1), found.group(2) or "", {}, "")
            entries.append(current)
            in_headers = True
            continue
        if current is None:
            assert not line.strip(), f"line {number}: text outside an entry"
            continue
        if in_headers:
            if not line.strip():
                in_headers = False
                continue
            name, sep, value = line.partition(": ")
            assert sep and re.fullmatch(r"[A-Z][A-Za-z-]+", name), f"line {number}: {line!r}"
            current.headers[name] = value
        else:
            current.body += line + "\n"
    return entries


@pytest.fixture(scope="module")
def entries() -> list[Entry]:
    return parse_catalog(CATALOG.read_text(encoding="utf-8"))


def test_every_message_id_has_an_english_and_a_russian_entry(entries: list[Entry]) -> None:
    have = {(e.message_id, e.language) for e in entries}
    for kind, message_id in MESSAGE_IDS.items():
        assert (message_id, "") in have, f"{kind}: no default (English) catalog entry"
        assert (message_id, "ru") in have, f"{kind}: no Russian catalog entry"


def test_the_catalog_has_no_stale_or_duplicate_entries(entries: list[Entry]) -> None:
    keys = [(e.message_id, e.language) for e in entries]
    assert len(keys) == len(set(keys))
    assert {e.message_id for e in entries} == set(MESSAGE_IDS.values())
    assert {e.language for e in entries} == {"", "ru"}


def test_each_entry_has_a_subject_an_owner_and_a_text_in_its_language(
    entries: list[Entry],
) -> None:
    for entry in entries:
        where = f"{entry.message_id} {entry.language or 'default'}"
        assert entry.headers.get("Subject"), where
        assert entry.headers.get("Defined-By") == "markd", where
        assert len(entry.body.strip()) > 40, where
        if entry.language == "ru":
            assert CYRILLIC.search(entry.headers["Subject"]), where
            assert len(CYRILLIC.findall(entry.body)) > len(entry.body) // 3, where
        else:
            # English text may quote a Russian term (КИ, ТС ПИоТ) but not be written in Russian.
            assert not CYRILLIC.search(entry.headers["Subject"]), where
            assert len(CYRILLIC.findall(entry.body)) < 20, where


def test_substituted_fields_are_markd_fields_the_records_carry(entries: list[Entry]) -> None:
    for entry in entries:
        for name in re.findall(r"@([A-Z0-9_]+)@", entry.headers["Subject"] + entry.body):
            assert name.startswith("MARKD_"), f"{entry.message_id}: @{name}@"


def test_no_secret_or_code_tail_field_is_shown(entries: list[Entry]) -> None:
    for entry in entries:
        text = entry.headers["Subject"] + entry.body
        for forbidden in ("@MARKD_KM@", "@MARKD_CRYPTO@", "@MARKD_CODE@", "@MARKD_RAW@"):
            assert forbidden not in text


@pytest.fixture
def catalog_root(tmp_path: Path) -> Path:
    """A root with only markd's catalog installed and its database built by journalctl."""
    if shutil.which("journalctl") is None:
        pytest.skip("journalctl is not installed")
    directory = tmp_path / "usr" / "lib" / "systemd" / "catalog"
    directory.mkdir(parents=True)
    shutil.copy(CATALOG, directory / "markd.catalog")
    result = subprocess.run(
        ["journalctl", f"--root={tmp_path}", "--update-catalog"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "ignoring" not in result.stderr.lower(), result.stderr
    return tmp_path


def test_journalctl_reads_every_entry(catalog_root: Path) -> None:
    listed = subprocess.run(
        ["journalctl", f"--root={catalog_root}", "--list-catalog"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
    )
    assert listed.returncode == 0, listed.stderr
    ids = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    assert ids == set(MESSAGE_IDS.values())
    # The database holds the Russian texts as well (journalctl picks them by locale).
    database = (catalog_root / "var/lib/systemd/catalog/database").read_bytes()
    assert "Сканер".encode() in database and "перечитал настройки".encode() in database


def test_journalctl_shows_the_russian_text_under_a_russian_locale(
    catalog_root: Path, tmp_path: Path
) -> None:
    if shutil.which("localedef") is None or not Path("/usr/share/i18n/locales/ru_RU").exists():
        pytest.skip("no localedef or ru_RU locale source (package locales) to build ru_RU.UTF-8")
    locales = tmp_path / "locales"
    locales.mkdir()
    built = subprocess.run(
        ["localedef", "-i", "ru_RU", "-f", "UTF-8", str(locales / "ru_RU.UTF-8")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if built.returncode not in (0, 1) or not (locales / "ru_RU.UTF-8").exists():
        pytest.skip(f"localedef could not build ru_RU.UTF-8: {built.stderr.strip()}")
    env = {**os.environ, "LOCPATH": str(locales), "LANG": "ru_RU.UTF-8", "LC_ALL": "ru_RU.UTF-8"}
    shown = subprocess.run(
        [
            "journalctl",
            f"--root={catalog_root}",
            "--dump-catalog",
            MESSAGE_IDS["reload-refused"],
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert shown.returncode == 0, shown.stderr
    assert "Subject: markd отклонил новые настройки" in shown.stdout


def test_the_operations_guide_lists_every_event_kind_with_its_message_id() -> None:
    guide = (CATALOG.parents[1] / "docs" / "operations.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z-]+)` \| `([0-9a-f]{32})` \|", guide, re.M))
    assert rows == MESSAGE_IDS
