"""Printer URLs (strict parsing, errors that restate the form, lazy backends) and the
``[fiscal]`` configuration section."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

import markd
from markd import config
from markd.errors import ConfigError, PrinterUnavailable, PrinterURLError
from markd.fiscal import model
from markd.fiscal.base import open_printer, parse_printer_url


@pytest.mark.parametrize(
    ("url", "scheme", "target", "options"),
    [
        ("emulator:///var/lib/markd/kkt", "emulator", "/var/lib/markd/kkt", {"ism": None}),
        ("emulator:///tmp/kkt/?ism=offline", "emulator", "/tmp/kkt", {"ism": "offline"}),
        ("atol-web://127.0.0.1", "atol-web", "127.0.0.1:16732", {"cancel_task": "cancelReceipt"}),
        (
            "atol-web://kkt.local:8080/",
            "atol-web",
            "kkt.local:8080",
            {"cancel_task": "cancelReceipt"},
        ),
        (
            "atol-web://[::1]:16732?cancel_task=cancelDoc",
            "atol-web",
            "[::1]:16732",
            {"cancel_task": "cancelDoc"},
        ),
        ("atol-lib://usb", "atol-lib", "usb", {"baudrate": 115200, "lib": ""}),
        (
            "atol-lib:///dev/ttyACM0?baudrate=57600&lib=/opt/atol/libfptr10.so",
            "atol-lib",
            "/dev/ttyACM0",
            {"baudrate": 57600, "lib": "/opt/atol/libfptr10.so"},
        ),
        (
            "atol-lib://192.0.2.20:5555",
            "atol-lib",
            "192.0.2.20:5555",
            {"baudrate": 115200, "lib": ""},
        ),
    ],
)
def test_good_urls(url: str, scheme: str, target: str, options: dict[str, object]) -> None:
    parsed = parse_printer_url(url)

    assert (parsed.scheme, parsed.target, dict(parsed.options)) == (scheme, target, options)
    assert str(parsed) == url


@pytest.mark.parametrize(
    ("url", "problem", "form"),
    [
        ("kkt", "not a URL", "accepted forms: emulator:///"),
        ("mercury://usb", "unknown scheme 'mercury'", "atol-web://HOST[:PORT]"),
        ("emulator://var/lib/kkt", "no host is expected", "emulator:///ABSOLUTE/STATE/DIR"),
        ("emulator:///", "an absolute state directory is required", "emulator:///"),
        ("emulator:///tmp/k?ism=maybe", "bad ism='maybe'", "online|offline|timeout"),
        ("emulator:///tmp/k?colour=red", "unknown option 'colour'", "?ism="),
        ("atol-web://", "a host is required", "atol-web://HOST[:PORT]"),
        ("atol-web://h:99999", "Port out of range", "port 16732 by default"),
        ("atol-web://h/api", "no path is expected", "atol-web://"),
        ("atol-web://user:pw@h", "credentials do not belong in the URL", "atol-web://"),
        ("atol-web://h?cancel_task=a b", "bad cancel_task='a b'", "cancel_task"),
        ("atol-web://h?cancel_task", "malformed query", "cancel_task"),
        ("atol-web://h?cancel_task=x&cancel_task=y", "given twice", "cancel_task"),
        ("atol-lib://serial", "expected usb, a /dev/ path or HOST:PORT", "atol-lib://usb"),
        ("atol-lib:///dev/ttyS0?baudrate=12", "bad baudrate='12'", "9600|19200"),
        ("atol-lib://usb?lib=libfptr10.so", "bad lib='libfptr10.so'", "absolute path"),
        ("atol-web://h#frag", "'#fragment' is not allowed", "atol-web://"),
    ],
)
def test_bad_urls_say_what_is_wrong_and_the_form(url: str, problem: str, form: str) -> None:
    with pytest.raises(PrinterURLError) as err:
        parse_printer_url(url)

    text = str(err.value)
    assert problem in text and form in text
    assert err.value.reason == "bad-printer-url"
    assert isinstance(err.value, ValueError)


def test_backends_are_imported_only_when_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("markd.fiscal.atol", "markd.fiscal.emulator", "markd.emulators.virtual_kkt"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    parse_printer_url("emulator:///tmp/kkt")

    assert "markd.fiscal.emulator" in sys.modules
    assert "markd.fiscal.atol" in sys.modules  # the emulator is the ATOL backend in process
    monkeypatch.delitem(sys.modules, "markd.fiscal.atol")
    monkeypatch.delitem(sys.modules, "markd.fiscal.emulator")
    import markd.fiscal.base  # noqa: F401 - the registry itself imports no backend

    assert "markd.fiscal.atol" not in sys.modules


def test_atol_lib_without_the_driver_names_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "libfptr10", None)  # as if not installed

    parse_printer_url("atol-lib://usb")  # parsing needs no driver: config check passes
    with pytest.raises(PrinterUnavailable) as err:
        open_printer("atol-lib://usb")

    assert err.value.reason == "driver-missing"
    text = str(err.value)
    assert "libfptr10" in text and "IFptr" in text and "ДТО10" in text
    assert "atol-web://" in text  # and what to use instead


def test_atol_lib_binding_is_really_absent_here() -> None:
    """The environment the suite runs in has no ATOL driver: the real import fails."""
    if "libfptr10" in sys.modules and sys.modules["libfptr10"] is not None:
        pytest.skip("an ATOL binding is installed here")
    with pytest.raises(PrinterUnavailable, match="libfptr10"):
        open_printer("atol-lib:///dev/ttyACM0")


# --------------------------------------------------------------------------------------------
# [fiscal]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_fiscal_defaults() -> None:
    fiscal = config.default_config().fiscal

    assert fiscal.url == "emulator:///var/lib/markd/kkt"
    assert (fiscal.tag1262, fiscal.tag1263, fiscal.tag1264) == ("030", "26.03.2022", "477")
    assert fiscal.sale_status == 1 and fiscal.on_oism_no_answer == "accept"
    assert fiscal.lm_sell and fiscal.auto_shift


def test_fiscal_section_loads(tmp_path: Path) -> None:
    main = write(
        tmp_path / "markd.toml",
        "[fiscal]\nurl = 'atol-web://127.0.0.1:16732'\ntag1262 = '020'\nsale_status = 2\n"
        "tax = 'vat22'\non_oism_no_answer = 'decline'\nlm_sell = false\n",
    )

    fiscal = config.load(main).fiscal

    assert fiscal.url == "atol-web://127.0.0.1:16732"
    assert (fiscal.tag1262, fiscal.sale_status, fiscal.tax) == ("020", 2, "vat22")
    assert fiscal.on_oism_no_answer == "decline" and fiscal.lm_sell is False


def test_fiscal_mistakes_name_file_line_and_key(tmp_path: Path) -> None:
    main = write(
        tmp_path / "markd.toml",
        "[fiscal]\nurl = 'atol-web://'\ntag1262 = '0300'\ntag1263 = '2022-03-26'\n"
        "tag1264 = ''\nsale_status = 3\ntax = 'vat18'\ntimeout_ms = 'long'\ncolour = 1\n",
    )

    with pytest.raises(ConfigError) as err:
        config.load(main)

    text = "\n".join(err.value.problems)
    assert f"{main}:2: [fiscal] url: printer URL 'atol-web://': a host is required" in text
    assert f"{main}:3: [fiscal] tag1262: tag 1262 is 1 to 3 characters" in text
    assert f"{main}:4: [fiscal] tag1263: tag 1263 is a date DD.MM.YYYY" in text
    assert f"{main}:5: [fiscal] tag1264: tag 1264 is 1 to 32 characters" in text
    assert f"{main}:6: [fiscal] sale_status: expected an integer from 1 to 2, got 3" in text
    assert f"{main}:7: [fiscal] tax: expected one of none" in text
    assert f"{main}:8: [fiscal] timeout_ms: expected an integer" in text
    assert f"{main}:9: unknown key [fiscal] colour" in text


def test_tax_types_are_defined_once_in_the_fiscal_model() -> None:
    # The configuration offers the fiscal model's own tuple, not a copy kept in step by hand.
    (tax,) = [f for f in dataclasses.fields(config.FiscalConfig) if f.name == "tax"]
    assert tax.metadata["choices"] is model.TAX_TYPES
    # And no other module of markd spells the list out again.
    package = Path(markd.__file__).parent
    spelled = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if '"vat122"' in path.read_text(encoding="utf-8")
    ]
    assert spelled == ["fiscal/model.py"]


def test_atol_web_names_a_device_only_when_told() -> None:
    chosen = parse_printer_url("atol-web://127.0.0.1?deviceID=kkt-2.hall_1")

    assert dict(chosen.options) == {"cancel_task": "cancelReceipt", "deviceID": "kkt-2.hall_1"}
    assert "deviceID" not in parse_printer_url("atol-web://127.0.0.1").options
    for bad in ("", "a b", "kkt/1", "x" * 65):
        with pytest.raises(PrinterURLError) as err:
            parse_printer_url(f"atol-web://127.0.0.1?deviceID={bad}")
        assert f"bad deviceID={bad!r}" in str(err.value)
        assert "a device id: 1 to 64 letters" in str(err.value)
