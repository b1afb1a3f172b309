"""Scanner URLs are parsed strictly, and every error restates the accepted form."""

from __future__ import annotations

import doctest
from pathlib import Path
from types import ModuleType

import pytest

import markd.scanners.base
import markd.scanners.virtual
from markd.errors import ScannerError
from markd.scanners import open_scanner, parse_url
from markd.scanners.hid_keyboard import HidKeyboardScanner
from markd.scanners.hid_pos import HidPosScanner
from markd.scanners.serial import SerialScanner
from markd.scanners.virtual import VirtualScanner


@pytest.mark.parametrize(
    "module", [markd.scanners.base, markd.scanners.virtual], ids=lambda m: m.__name__
)
def test_module_examples_run(module: ModuleType) -> None:
    assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize(
    ("url", "scheme", "target"),
    [
        ("serial:///dev/ttyACM0", "serial", "/dev/ttyACM0"),
        ("serial:///dev/markd/scanner0?baudrate=9600", "serial", "/dev/markd/scanner0"),
        (
            "serial:///dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0",
            "serial",
            "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0",
        ),
        ("serial+loop://", "serial", "loop://"),
        ("serial+socket://192.0.2.10:4001", "serial", "socket://192.0.2.10:4001"),
        ("serial+rfc2217://192.0.2.10:2217", "serial", "rfc2217://192.0.2.10:2217"),
        ("serial+spy:///dev/ttyACM0", "serial", "spy:///dev/ttyACM0"),
        ("serial+hwgrep://1eab:8306", "serial", "hwgrep://1eab:8306"),
        ("virtual://front", "virtual", "front"),
        ("virtual://kiosk_2-left", "virtual", "kiosk_2-left"),
        ("hid-kbd://0C2E:0B61", "hid-kbd", "0c2e:0b61"),
        (
            "hid-kbd:///dev/markd/scanner-0c2e-10d3-port-pci-0000_00_14_0-usb-0_2",
            "hid-kbd",
            "/dev/markd/scanner-0c2e-10d3-port-pci-0000_00_14_0-usb-0_2",
        ),
        ("hid-pos://1eab:0010?serial=NL123&interface=1", "hid-pos", "1eab:0010"),
    ],
)
def test_accepted_forms(url: str, scheme: str, target: str) -> None:
    parsed = parse_url(url)
    assert (parsed.scheme, parsed.target) == (scheme, target)
    assert str(parsed) == url


def test_defaults_and_options() -> None:
    parsed = parse_url("serial:///dev/ttyACM0")
    assert (parsed.terminator, parsed.max_length, parsed.options["baudrate"]) == ("cr", 512, 9600)
    parsed = parse_url("serial:///dev/ttyACM0?baudrate=115200&terminator=crlf&max_length=300")
    assert (parsed.terminator, parsed.max_length) == ("crlf", 300)
    assert parsed.options["baudrate"] == 115200
    framer = parsed.framer()
    assert (framer.terminator, framer.max_length) == (b"\r\n", 300)
    assert parse_url("virtual://a?terminator=none").framer().terminator is None
    assert parse_url("virtual://a").gap_ms == 50
    assert parse_url("virtual://a?terminator=none&gap_ms=20").gap_ms == 20


def test_usb_options() -> None:
    kbd = parse_url("hid-kbd://0c2e:0b61")
    assert dict(kbd.options) == {"serial": None, "interface": None, "gs_key": "f8"}
    assert kbd.terminator == "cr"
    kbd = parse_url("hid-kbd://0c2e:0b61?serial=A%20B&interface=2&gs_key=F12")
    assert dict(kbd.options) == {"serial": "A B", "interface": 2, "gs_key": "f12"}
    pos = parse_url("hid-pos://1eab:0010?interface=0")
    assert dict(pos.options) == {"serial": None, "interface": 0}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("hid://0c2e:0b61", "unknown scheme 'hid'"),
        ("/dev/ttyACM0", "not a URL"),
        ("serial://dev/ttyACM0", "three slashes"),
        ("serial://", "missing device path"),
        ("serial:///dev/ttyACM0?baud=9600", "unknown option 'baud'"),
        # pyserial reads the port only when it opens: refused here, not "absent" forever
        ("serial+socket://192.0.2.10:99999", "a port from 1 to 65535"),
        ("serial+rfc2217://192.0.2.10", "needs HOST:PORT"),
        ("serial:///dev/ttyACM0?baudrate=fast", "bad baudrate='fast'"),
        ("serial:///dev/ttyACM0?baudrate=0", "bad baudrate='0'"),
        ("serial:///dev/ttyACM0?terminator=enter", "terminator must be one of"),
        ("serial:///dev/ttyACM0?max_length=0", "max_length must be"),
        ("serial:///dev/ttyACM0?terminator=cr&terminator=lf", "given twice"),
        ("serial:///dev/ttyACM0#frag", "fragment"),
        ("serial+ftp://host", "unknown pyserial handler 'ftp'"),
        ("virtual://", "missing or invalid NAME"),
        ("virtual://front/left", "no path"),
        ("virtual://front?baudrate=9600", "unknown option 'baudrate'"),
        ("virtual+loop://x", "no '+' variants"),
        ("serial:///dev/ttyACM0?terminator=none&gap_ms=1", "gap_ms must be"),
        ("hid-kbd://0c2e", "is not VID:PID"),
        ("hid-kbd://0c2e:0b61/x", "has no path"),
        ("hid-kbd://", "missing VID:PID or device path"),
        ("hid-kbd+x://0c2e:0b61", "no '+' variants"),
        ("hid-kbd://0c2e:0b61?gs_key=f13", "bad gs_key='f13'"),
        ("hid-kbd://0c2e:0b61?interface=32", "bad interface='32'"),
        ("hid-kbd://0c2e:0b61?serial=", "bad serial=''"),
        ("hid-kbd://0c2e:0b61?baudrate=9600", "unknown option 'baudrate'"),
        ("hid-pos://1eab:0010?gs_key=f8", "unknown option 'gs_key'"),
    ],
)
def test_rejected_urls_restate_the_form(url: str, problem: str) -> None:
    with pytest.raises(ScannerError) as err:
        parse_url(url)
    message = err.value.message
    assert problem in message
    assert repr(url) in message
    assert err.value.reason == "bad-scanner-url"
    # The accepted form is restated, so the technician can fix the line without a manual.
    if url.startswith("virtual"):
        assert "virtual://NAME" in message
    elif url.startswith("hid-kbd"):
        assert "hid-kbd://VID:PID" in message and "gs_key=f8" in message
    elif url.startswith("hid-pos"):
        assert "hid-pos://VID:PID" in message and "serial=SERIAL" in message
    elif url.startswith("serial"):
        assert "serial:///dev/PATH" in message and "baudrate=9600" in message
    else:
        assert "serial:///dev/PATH" in message and "virtual://NAME" in message
        assert "hid-kbd://VID:PID" in message and "hid-pos://VID:PID" in message


def test_open_scanner_picks_the_backend_without_opening_the_device() -> None:
    # A device that does not exist is fine until start(): the reader retries it.
    with open_scanner("front", "serial:///dev/markd/no-such-scanner") as scanner:
        assert isinstance(scanner, SerialScanner)
        assert scanner.present is None
    with open_scanner("kiosk", "virtual://kiosk") as scanner:
        assert isinstance(scanner, VirtualScanner)
    with open_scanner("kbd", "hid-kbd://0c2e:0b61") as scanner:
        assert isinstance(scanner, HidKeyboardScanner)
    with open_scanner("pos", "hid-pos://1eab:0010") as scanner:
        assert isinstance(scanner, HidPosScanner)


@pytest.mark.parametrize("name", ["", "front left", "x" * 33, "сканер"])
def test_scanner_names_are_short_bare_words(name: str) -> None:
    with pytest.raises(ScannerError):
        open_scanner(name, "virtual://ok")


def test_scanner_name_rule_matches_the_configuration_rule() -> None:
    from markd.config import SCANNER_NAME_PATTERN

    assert markd.scanners.base.NAME_PATTERN == SCANNER_NAME_PATTERN


def test_config_validator_uses_the_strict_parser(tmp_path: Path) -> None:
    from markd.config import load
    from markd.errors import ConfigError

    path = tmp_path / "markd.toml"
    path.write_text('[scanners.front]\nurl = "serial:///dev/ttyACM0?baud=9600"\n')
    with pytest.raises(ConfigError) as err:
        load(str(path))
    assert any("unknown option 'baud'" in problem for problem in err.value.problems)
