"""The udev rules for scanners (udev/70-markd-scanners.rules) and the local-rule templates in
udev/README.md: parsed, checked rule by rule, and run through a small model of udev's rule
evaluation, so a typo, a half-copied block or two scanners fighting over one name fails here
and not at a till."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from markd.fiscal.base import parse_printer_url
from markd.scanners import parse_url

UDEV = Path(__file__).resolve().parents[2] / "udev"
RULES = UDEV / "70-markd-scanners.rules"
README = UDEV / "README.md"

#: The (vendor, product) pairs domain.md §8.5 gives, with the USB mode each one is seen in.
#: Vendors it gives without a product id (0536, 05e0, 05f9, 1659) have no rule on purpose:
#: their users add a local rule from the README's template.
MODELS = {
    ("0c2e", "10d3"): "hid",  # Honeywell CM4680SR, HID/hidraw
    ("1eab", "8306"): "cdc-acm",  # Newland
    ("1eab", "0c06"): "cdc-acm",  # Newland
    ("1eab", "0010"): "hid",  # Newland, HID-POS
    ("0488", "5788"): "cdc-acm",  # Netum ("BLMicroelectronics VCP")
}

#: The one name several scanners may share: the default URL of an unconfigured markd
#: (DEFAULT_SCANNER_URL in markd/config/schema.py, docs/configuration.md). Only CDC-ACM
#: ttys carry it; every scanner also gets a name of its own.
ALIAS = "markd/scanner0"

#: The parts of a symlink that tell one scanner from another, and the match that must guard
#: each one so that its value is safe in a path and in a scanner URL.
UNIQUE = {
    "$env{ID_SERIAL_SHORT}": ("ENV{ID_SERIAL_SHORT}", "!=", "*[!0-9A-Za-z._-]*"),
    "$env{ID_PATH_TAG}": ("ENV{ID_PATH_TAG}", "==", "?*"),
}
NAME = re.compile(
    r"^markd/scanner-(?P<vid>[0-9a-f]{4})-(?P<pid>[0-9a-f]{4})-(?:sn|port)-(?P<var>\$env\{[A-Z_]+\})$"
)
SAFE_NAME = re.compile(r"^markd/[0-9A-Za-z._-]+$")
PORT = "pci-0000_00_14_0-usb-0_2"  # an ID_PATH_TAG as path_id makes it

#: Keys udev accepts in the forms these files use (udev(7)).
KNOWN_KEYS = re.compile(
    r"^(ACTION|SUBSYSTEM|KERNEL|GOTO|LABEL|GROUP|MODE|OPTIONS|SYMLINK|IMPORT\{builtin\}"
    r"|ATTRS\{[A-Za-z]+\}|ATTR\{[A-Za-z]+\}|ENV\{\.?[A-Z_]+\})$"
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


def device_rules(rules: list[tuple[int, Rule]]) -> list[tuple[int, Rule]]:
    return [(n, r) for n, r in rules if get(r, "SUBSYSTEM", "==")]


def model_of(rule: Rule) -> tuple[str, str]:
    """The rule's (vendor, product): ATTRS on a tty or hidraw node (the ids live on its USB
    parent), ATTR on the USB device node itself (its own ids, never a hub's above it)."""
    kind = "ATTR" if get(rule, "SUBSYSTEM", "==") == ["usb"] else "ATTRS"
    vendor = get(rule, f"{kind}{{idVendor}}", "==")
    product = get(rule, f"{kind}{{idProduct}}", "==")
    assert len(vendor) == 1 and len(product) == 1, f"needs one {kind}{{idVendor}} and idProduct"
    assert re.fullmatch(r"[0-9a-f]{4}", vendor[0]) and re.fullmatch(r"[0-9a-f]{4}", product[0])
    return vendor[0], product[0]


# --------------------------------------------------------------------------------------------
# A model of udev's evaluation (udev(7)): enough of it to run these files on a described device


def evaluate(rules: list[tuple[int, Rule]], device: dict[str, object]) -> dict[str, object]:
    """Run ``rules`` on an "add" event for ``device`` (SUBSYSTEM, KERNEL, DEVTYPE, attrs,
    env): matches with fnmatch as udev does, then GROUP, MODE, ENV and SYMLINK assignments,
    with ``$env{X}`` substituted. The builtins' results are given in ``device["env"]``."""
    env: dict[str, str] = dict(device["env"])  # type: ignore[arg-type]
    attrs: dict[str, str] = device["attrs"]  # type: ignore[assignment]
    result: dict[str, object] = {"links": [], "group": None, "mode": None, "env": env}
    skip_to = None
    for _, rule in rules:
        if skip_to:
            if get(rule, "LABEL", "=") == [skip_to]:
                skip_to = None
            continue
        if not all(_matches(key, op, value, device, attrs, env) for key, op, value in rule):
            continue
        for key, op, value in rule:
            expanded = re.sub(r"\$env\{([^}]+)\}", lambda m: env.get(m.group(1), ""), value)
            if key == "GOTO":
                skip_to = value
            elif key == "GROUP":
                result["group"] = expanded
            elif key == "MODE":
                result["mode"] = expanded
            elif key.startswith("ENV{") and op == "=":
                env[key[4:-1]] = expanded
            elif key == "SYMLINK":
                result["links"].append(expanded)  # type: ignore[union-attr]
    return result


def _matches(key: str, op: str, value: str, device: dict, attrs: dict, env: dict) -> bool:
    if op not in ("==", "!="):
        return True  # an assignment
    if key == "ACTION":
        actual = "add"
    elif key in ("SUBSYSTEM", "KERNEL"):
        actual = device[key]
    elif key.startswith(("ATTR{", "ATTRS{")):
        actual = attrs.get(key[key.index("{") + 1 : -1], "")
    elif key == "ENV{DEVTYPE}":
        actual = device.get("DEVTYPE", "")
    elif key.startswith("ENV{"):
        actual = env.get(key[4:-1], "")
    else:
        raise AssertionError(f"the model does not know {key}")
    hit = any(fnmatch.fnmatchcase(actual, alt) for alt in value.split("|"))
    return hit if op == "==" else not hit


def scanner(vid: str, pid: str, mode: str, serial: str | None, port: str) -> dict[str, object]:
    """The node markd opens for a scanner in ``mode``: its tty, or its USB device node."""
    env = {"ID_PATH_TAG": port}
    if serial is not None:
        env["ID_SERIAL_SHORT"] = serial
    if mode == "cdc-acm":
        return {"SUBSYSTEM": "tty", "KERNEL": "ttyACM0", "attrs": ids(vid, pid), "env": env}
    return {
        "SUBSYSTEM": "usb",
        "KERNEL": "1-2",
        "DEVTYPE": "usb_device",
        "attrs": ids(vid, pid),
        "env": env,
    }


def ids(vid: str, pid: str) -> dict[str, str]:
    return {"idVendor": vid, "idProduct": pid}


def own_names(result: dict[str, object]) -> list[str]:
    return [link for link in result["links"] if link != ALIAS]  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rules() -> list[tuple[int, Rule]]:
    return parse_rules(RULES.read_text())


def readme_templates() -> dict[str, list[tuple[int, Rule]]]:
    """The fenced ``udev`` blocks of udev/README.md, by their first comment line, with the
    placeholders VVVV and PPPP filled in as a technician would."""
    blocks = re.findall(r"```udev\n(.*?)```", README.read_text(), re.S)
    assert blocks, "udev/README.md has no ```udev template"
    return {
        block.splitlines()[0]: parse_rules(block.replace("VVVV", "abcd").replace("PPPP", "1234"))
        for block in blocks
    }


def test_every_key_is_a_known_udev_key_with_a_sane_operator(rules: list[tuple[int, Rule]]) -> None:
    for number, rule in rules:
        for key, op, _ in rule:
            assert KNOWN_KEYS.match(key), f"line {number}: unknown key {key}"
            if key.startswith(("ATTR", "KERNEL", "SUBSYSTEM", "ACTION")) or key == "ENV{DEVTYPE}":
                assert op in ("==", "!="), f"line {number}: {key} must be matched, not assigned"
            if key in ("GROUP", "MODE", "GOTO", "LABEL") or key.startswith("IMPORT"):
                assert op == "=", f"line {number}: {key} takes '='"
            if key in ("SYMLINK", "OPTIONS"):
                assert op == "+=", f"line {number}: {key} should add (+=), not replace"


def test_every_rule_matches_vendor_and_product(rules: list[tuple[int, Rule]]) -> None:
    for number, rule in device_rules(rules):
        try:
            model_of(rule)
        except AssertionError as err:
            raise AssertionError(f"line {number}: {err}") from None


def test_each_known_model_is_covered_in_its_mode(rules: list[tuple[int, Rule]]) -> None:
    seen: dict[tuple[str, str], set[str]] = {}
    for number, rule in device_rules(rules):
        model = model_of(rule)
        assert model in MODELS, f"line {number}: {model} is not a model domain.md §8.5 gives"
        seen.setdefault(model, set()).update(get(rule, "SUBSYSTEM", "=="))
    expected = {"cdc-acm": {"tty"}, "hid": {"usb", "hidraw"}}
    assert seen == {model: expected[mode] for model, mode in MODELS.items()}


def test_every_device_rule_grants_group_markd_0660(rules: list[tuple[int, Rule]]) -> None:
    for number, rule in device_rules(rules):
        assert get(rule, "GROUP", "=") == ["markd"], f"line {number}"
        assert get(rule, "MODE", "=") == ["0660"], f"line {number}"
        assert not get(rule, "TAG", "+="), f"line {number}: uaccess does not fit a headless kiosk"


def test_cdc_acm_rules_keep_modemmanager_off(rules: list[tuple[int, Rule]]) -> None:
    for number, rule in device_rules(rules):
        if get(rule, "SUBSYSTEM", "==") == ["tty"]:
            assert get(rule, "KERNEL", "==") == ["ttyACM*"], f"line {number}"
            assert get(rule, "ENV{ID_MM_DEVICE_IGNORE}", "=") == ["1"], f"line {number}"


def test_usb_rules_open_the_node_pyusb_uses(rules: list[tuple[int, Rule]]) -> None:
    for number, rule in device_rules(rules):
        if get(rule, "SUBSYSTEM", "==") == ["usb"]:
            # Only the device node (/dev/bus/usb/BBB/DDD); interfaces have no node.
            assert get(rule, "ENV{DEVTYPE}", "==") == ["usb_device"], f"line {number}"


def test_no_two_rules_claim_one_name_without_a_unique_part(rules: list[tuple[int, Rule]]) -> None:
    templates: dict[str, int] = {}
    for number, rule in device_rules(rules):
        for link in get(rule, "SYMLINK", "+="):
            if link == ALIAS:
                assert get(rule, "SUBSYSTEM", "==") == ["tty"], f"line {number}: alias off a tty"
                continue
            match = NAME.match(link)
            assert match, f"line {number}: {link} is not markd/scanner-VID-PID-(sn|port)-$env{{…}}"
            assert (match["vid"], match["pid"]) == model_of(rule), f"line {number}: ids differ"
            assert UNIQUE[match["var"]] in rule, f"line {number}: {match['var']} is not checked"
            assert link not in templates, f"lines {templates[link]} and {number} claim {link}"
            templates[link] = number
    serial_names = {t for t in templates if "-sn-" in t}
    port_names = {t for t in templates if "-port-" in t}
    assert len(serial_names) == len(port_names) == len(MODELS)


@pytest.mark.parametrize("model", sorted(MODELS), ids=":".join)
def test_each_scanner_gets_exactly_one_name_of_its_own(
    rules: list[tuple[int, Rule]], model: tuple[str, str]
) -> None:
    vid, pid = model
    mode = MODELS[model]
    by_serial = evaluate(rules, scanner(vid, pid, mode, "NLS123.45_A-b", PORT))
    assert own_names(by_serial) == [f"markd/scanner-{vid}-{pid}-sn-NLS123.45_A-b"]
    assert (by_serial["group"], by_serial["mode"]) == ("markd", "0660")
    # No serial, or one that is not safe in a path or a URL: the USB port names it.
    for serial in (None, "", "AB#1/../x", "a b", "Ключ"):
        result = evaluate(rules, scanner(vid, pid, mode, serial, "pci-0000_00_14_0-usb-0_3"))
        assert own_names(result) == [f"markd/scanner-{vid}-{pid}-port-pci-0000_00_14_0-usb-0_3"]
    # Two identical scanners without serial numbers on two ports: two names.
    left = evaluate(rules, scanner(vid, pid, mode, None, "pci-0000_00_14_0-usb-0_1"))
    right = evaluate(rules, scanner(vid, pid, mode, None, PORT))
    assert set(own_names(left)).isdisjoint(own_names(right))
    expected_alias = [ALIAS] if mode == "cdc-acm" else []
    assert [link for link in left["links"] if link == ALIAS] == expected_alias  # type: ignore[union-attr]
    if mode == "cdc-acm":
        assert left["env"]["ID_MM_DEVICE_IGNORE"] == "1"  # type: ignore[index]


def test_names_are_safe_in_a_path_and_a_scanner_url(rules: list[tuple[int, Rule]]) -> None:
    for (vid, pid), mode in MODELS.items():
        for serial in ("NLS0001", "a.b-c_d", "..", "x" * 64):
            result = evaluate(rules, scanner(vid, pid, mode, serial, PORT))
            for link in result["links"]:  # type: ignore[union-attr]
                assert SAFE_NAME.match(link) and "/../" not in f"/{link}/", link
                scheme = "serial" if mode == "cdc-acm" else "hid-pos"
                assert parse_url(f"{scheme}:///dev/{link}").target == f"/dev/{link}"


def test_other_devices_are_left_alone(rules: list[tuple[int, Rule]]) -> None:
    # A vendor id alone (domain.md gives no product for Zebra) or another product of a known
    # vendor (a Netum vendor id is shared with unrelated devices) gets nothing from markd.
    for vid, pid in (("05e0", "1200"), ("0488", "0001"), ("1eab", "ffff")):
        for mode in ("cdc-acm", "hid"):
            result = evaluate(rules, scanner(vid, pid, mode, "S1", PORT))
            assert result["links"] == [] and result["group"] is None, (vid, pid, mode)
            assert "ID_MM_DEVICE_IGNORE" not in result["env"]  # type: ignore[operator]


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
    readme = README.read_text()
    assert "## Add a scanner model" in readme and "lsusb" in readme
    assert "test_udev_rules.py" in readme
    for vid in ("0536", "05e0", "05f9", "1659"):  # vendors without a known product id
        assert vid in readme, f"README does not tell {vid}'s users to add a local rule"


def test_readme_scanner_templates_give_one_name_per_scanner() -> None:
    templates = readme_templates()
    scanners = {k: v for k, v in templates.items() if "scanner" in k}
    modes = {"CDC-ACM": "cdc-acm", "HID": "hid"}
    assert {m for k in scanners for m in modes if m in k} == set(modes)
    for title, rules in scanners.items():
        mode = next(v for k, v in modes.items() if k in title)
        for number, rule in device_rules(rules):
            assert model_of(rule) == ("abcd", "1234"), f"{title} line {number}"
            assert get(rule, "GROUP", "=") == ["markd"] and get(rule, "MODE", "=") == ["0660"]
            if get(rule, "SUBSYSTEM", "==") == ["tty"]:
                assert get(rule, "ENV{ID_MM_DEVICE_IGNORE}", "=") == ["1"], title
        for serial in ("S1", None):
            result = evaluate(rules, scanner("abcd", "1234", mode, serial, PORT))
            (name,) = result["links"]  # type: ignore[misc]
            assert name.startswith("markd/scanner-abcd-1234-") and SAFE_NAME.match(name)


def test_readme_kkt_template_keeps_modemmanager_off_its_port() -> None:
    # docs/fiscal.md points here: a USB ККТ on /dev/ttyACM* needs ModemManager kept off and
    # a stable name for shtrih:///dev/markd/kkt; markd reaches it through group dialout.
    (kkt,) = [v for k, v in readme_templates().items() if "ККТ" in k]
    fiscal = (UDEV.parent / "docs" / "fiscal.md").read_text()
    assert "markd/kkt" in fiscal and "udev/README.md" in fiscal
    ((number, rule),) = device_rules(kkt)
    assert model_of(rule) == ("abcd", "1234")
    port = {"SUBSYSTEM": "tty", "KERNEL": "ttyACM1", "attrs": ids("abcd", "1234"), "env": {}}
    result = evaluate(kkt, port)
    assert result["links"] == ["markd/kkt"]
    assert result["env"]["ID_MM_DEVICE_IGNORE"] == "1"  # type: ignore[index]
    assert parse_printer_url("shtrih:///dev/markd/kkt").target == "/dev/markd/kkt"


@pytest.mark.skipif(shutil.which("udevadm") is None, reason="udevadm is not installed here")
def test_udevadm_verify_accepts_the_file(tmp_path: Path) -> None:
    files = [RULES]
    for number, text in enumerate(re.findall(r"```udev\n(.*?)```", README.read_text(), re.S)):
        template = tmp_path / f"7{number}-markd-template.rules"
        template.write_text(text.replace("VVVV", "abcd").replace("PPPP", "1234"))
        files.append(template)
    result = subprocess.run(
        ["udevadm", "verify", "--no-style", *map(str, files)], capture_output=True, text=True
    )
    if "Unknown command" in result.stderr or "invalid option" in result.stderr:
        pytest.skip("this udevadm has no 'verify' (systemd < 253)")
    assert result.returncode == 0, result.stdout + result.stderr
