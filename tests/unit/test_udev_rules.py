"""The udev rules for scanners (udev/70-markd-scanners.rules): parsed and checked rule by rule,
so a typo or a half-copied block fails here and not at a till."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "udev" / "70-markd-scanners.rules"

#: Vendor ids from domain.md §8.5 (and the one product id a shared vendor id needs).
VENDORS = {
    "0c2e": None,
    "0536": None,
    "05e0": None,
    "05f9": None,
    "1eab": None,
    "0488": "5788",
    "1659": None,
}

#: Keys udev accepts in the forms this file uses (udev(7)).
KNOWN_KEYS = re.compile(
    r"^(ACTION|SUBSYSTEM|KERNEL|GOTO|LABEL|GROUP|MODE|OPTIONS|SYMLINK"
    r"|ATTRS\{[A-Za-z]+\}|ATTR\{[A-Za-z]+\}|ENV\{[A-Z_]+\})$"
)
_PAIR = re.compile(r'\s*([A-Z]+(?:\{[^}]*\})?)\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(?:,|$)')

Rule = list[tuple[str, str, str]]


def parse_rules(text: str) -> list[tuple[int, Rule]]:
    rules = []
    for number, line in enumerate(text.replace("\\\n", "").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pairs: Rule = []
        pos = 0
        while pos < len(line):
            match = _PAIR.match(line, pos)
            assert match, f"line {number}: cannot parse at {line[pos : pos + 30]!r}"
            pairs.append(match.groups())
            pos = match.end()
        rules.append((number, pairs))
    return rules


def get(rule: Rule, key: str, op: str) -> list[str]:
    return [v for k, o, v in rule if k == key and o == op]


@pytest.fixture(scope="module")
def rules() -> list[tuple[int, Rule]]:
    return parse_rules(RULES.read_text())


def device_rules(rules: list[tuple[int, Rule]]) -> list[tuple[int, Rule]]:
    return [(n, r) for n, r in rules if get(r, "SUBSYSTEM", "==")]


def test_every_key_is_a_known_udev_key_with_a_sane_operator(rules: list[tuple[int, Rule]]) -> None:
    for number, rule in rules:
        for key, op, _ in rule:
            assert KNOWN_KEYS.match(key), f"line {number}: unknown key {key}"
            if key.startswith(("ATTR", "KERNEL", "SUBSYSTEM", "ACTION")) or key == "ENV{DEVTYPE}":
                assert op in ("==", "!="), f"line {number}: {key} must be matched, not assigned"
            if key in ("GROUP", "MODE", "GOTO", "LABEL"):
                assert op == "=", f"line {number}: {key} takes '='"
            if key in ("SYMLINK", "OPTIONS"):
                assert op == "+=", f"line {number}: {key} should add (+=), not replace"


def test_every_device_rule_grants_group_markd_0660(rules: list[tuple[int, Rule]]) -> None:
    for number, rule in device_rules(rules):
        assert get(rule, "GROUP", "=") == ["markd"], f"line {number}"
        assert get(rule, "MODE", "=") == ["0660"], f"line {number}"
        assert not get(rule, "TAG", "+="), f"line {number}: uaccess does not fit a headless kiosk"


def test_cdc_acm_rules(rules: list[tuple[int, Rule]]) -> None:
    tty = [(n, r) for n, r in device_rules(rules) if get(r, "SUBSYSTEM", "==") == ["tty"]]
    assert tty
    for number, rule in tty:
        assert get(rule, "KERNEL", "==") == ["ttyACM*"], f"line {number}"
        assert get(rule, "ENV{ID_MM_DEVICE_IGNORE}", "=") == ["1"], f"line {number}"
        links = get(rule, "SYMLINK", "+=")
        assert links and all(link.startswith("markd/scanner") for link in links), f"line {number}"
        assert get(rule, "ATTRS{idVendor}", "=="), f"line {number}: no vendor match"


def test_usb_device_rules_open_the_node_pyusb_uses(rules: list[tuple[int, Rule]]) -> None:
    usb = [(n, r) for n, r in device_rules(rules) if get(r, "SUBSYSTEM", "==") == ["usb"]]
    assert usb
    for number, rule in usb:
        # Only the device node (/dev/bus/usb/BBB/DDD); interfaces have no node.
        assert get(rule, "ENV{DEVTYPE}", "==") == ["usb_device"], f"line {number}"
        assert get(rule, "ATTR{idVendor}", "=="), f"line {number}"
        (link,) = get(rule, "SYMLINK", "+=")
        assert link.startswith("markd/scanner-usb-$attr{idVendor}-$attr{idProduct}"), number


def test_serial_number_names_are_escaped(rules: list[tuple[int, Rule]]) -> None:
    for number, rule in device_rules(rules):
        links = " ".join(get(rule, "SYMLINK", "+="))
        if "serial}" in links:
            assert "string_escape=replace" in get(rule, "OPTIONS", "+="), f"line {number}"
            # The serial must be matched on the same device as the vendor id, or a hub's
            # serial could end up in the name.
            assert any(k in ("ATTRS{serial}", "ATTR{serial}") for k, _, _ in rule), number


def test_each_vendor_has_its_full_block(rules: list[tuple[int, Rule]]) -> None:
    seen: dict[str, set[str]] = {vid: set() for vid in VENDORS}
    for number, rule in device_rules(rules):
        vendor = get(rule, "ATTRS{idVendor}", "==") or get(rule, "ATTR{idVendor}", "==")
        assert len(vendor) == 1, f"line {number}: every rule names exactly one vendor"
        vid = vendor[0]
        assert vid in VENDORS, f"line {number}: vendor {vid} not in the test's list"
        product = get(rule, "ATTRS{idProduct}", "==") or get(rule, "ATTR{idProduct}", "==")
        assert product == ([VENDORS[vid]] if VENDORS[vid] else []), f"line {number}"
        subsystem = get(rule, "SUBSYSTEM", "==")[0]
        serial = any("serial" in k for k, _, _ in rule)
        seen[vid].add(subsystem + ("+serial" if serial else ""))
    for vid, kinds in seen.items():
        assert kinds == {"tty", "tty+serial", "usb", "usb+serial", "hidraw"}, vid


def test_remove_events_skip_to_the_label(rules: list[tuple[int, Rule]]) -> None:
    gotos = [get(r, "GOTO", "=") for _, r in rules if get(r, "GOTO", "=")]
    labels = [get(r, "LABEL", "=") for _, r in rules if get(r, "LABEL", "=")]
    assert gotos == [["markd_scanners_end"]] and labels == [["markd_scanners_end"]]
    assert rules[-1][1] == [("LABEL", "=", "markd_scanners_end")]


def test_the_parser_catches_a_broken_rule() -> None:
    with pytest.raises(AssertionError):
        parse_rules('SUBSYSTEM=="tty", GROUP="markd" MODE="0660"\n')
    ((_, rule),) = parse_rules('SUBSYSTEM=="tty", GROUP="markd"\n')
    assert rule == [("SUBSYSTEM", "==", "tty"), ("GROUP", "=", "markd")]


def test_readme_tells_how_to_add_a_model() -> None:
    readme = (RULES.parent / "README.md").read_text()
    assert "## Add a scanner model" in readme and "lsusb" in readme
    assert "test_udev_rules.py" in readme


@pytest.mark.skipif(shutil.which("udevadm") is None, reason="udevadm is not installed here")
def test_udevadm_verify_accepts_the_file() -> None:
    result = subprocess.run(
        ["udevadm", "verify", "--no-style", str(RULES)], capture_output=True, text=True
    )
    if "Unknown command" in result.stderr or "invalid option" in result.stderr:
        pytest.skip("this udevadm has no 'verify' (systemd < 253)")
    assert result.returncode == 0, result.stdout + result.stderr
