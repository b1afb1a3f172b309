"""The customer screen's files (daemon/markd/screen/): shipped in the package, served from a
fixed table, and self-contained — nothing loaded from elsewhere, nothing inline that the
page's Content-Security-Policy would block."""

from __future__ import annotations

import configparser
import fnmatch
import re
from pathlib import Path

from markd.api.screen import SCREEN_FILES

ROOT = Path(__file__).resolve().parents[2]
SCREEN = ROOT / "daemon" / "markd" / "screen"


def shipped_patterns() -> list[str]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    return [p.strip() for p in setup["options.package_data"]["markd.screen"].split(",")]


def test_every_file_served_is_shipped_and_every_file_shipped_is_served() -> None:
    served = {name for name, _ in SCREEN_FILES.values()}
    present = {p.name for p in SCREEN.iterdir() if p.is_file() and p.suffix != ".py"}

    assert served == present == {"index.html", "screen.css", "screen.js"}
    for name in served:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in shipped_patterns()), name


def test_the_page_loads_nothing_from_elsewhere_and_has_nothing_inline() -> None:
    page = (SCREEN / "index.html").read_text(encoding="utf-8")
    style = (SCREEN / "screen.css").read_text(encoding="utf-8")
    script = (SCREEN / "screen.js").read_text(encoding="utf-8")

    assert re.findall(r'(?:src|href)="([^"]*)"', page) == ["screen.css", "screen.js"]
    assert not re.search(r"<script(?![^>]*\bsrc=)", page)  # no inline script
    assert not re.search(r"\sstyle=|\son[a-z]+=|<style", page)  # no inline style or handler
    assert "url(" not in style and "@import" not in style
    assert not re.search(r"https?://", page + style + script)
    assert "innerHTML" not in script and "eval(" not in script  # text from markd stays text


def test_the_script_says_what_each_state_needs_in_russian() -> None:
    script = (SCREEN / "screen.js").read_text(encoding="utf-8")

    for text in (
        "Отсканируйте товар",
        "Отсканируйте ещё раз",
        "Чек напечатан",
        "Обратитесь к сотруднику",
        "В принтере чеков закончилась бумага",
        "Экран не подключён к кассе",
    ):
        assert text in script, text


def test_the_screenshots_api_md_shows_are_there_as_png() -> None:
    doc = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    shown = re.findall(r"\]\((images/[^)]+)\)", doc)

    assert shown == ["images/screen-sale.png", "images/screen-refusal.png"]
    for name in shown:
        assert (ROOT / "docs" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
