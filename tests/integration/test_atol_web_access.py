"""Reaching the right ККТ behind ATOL's web server: HTTP Basic auth when the server asks for
it (the password from a file or a systemd credential, never in a message) and one device of
several chosen with ``?deviceID=`` (domain.md §7.4a) — the ``atol`` backend over real HTTP to
the ``atol_web`` emulator on loopback."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from markd import config
from markd.codes import parse
from markd.emulators.atol_web import AtolWebEmulator
from markd.errors import ConfigError, OutcomeUnknown, PrinterFault, PrinterUnavailable
from markd.fiscal.base import FiscalPrinter, PrinterSettings, new_op_id
from markd.fiscal.model import IndustryTags, MarkedItem, Position
from markd.receipts import Payment
from markd.secrets import Secret
from markd.service.wiring import open_configured_printer, printer_settings
from markd.testing import fiscal as testing

PASSWORD = "s3cret-Kassa-7"
AUTH = ("kassa", PASSWORD)
REQUESTS = "/api/v2/requests"


def sell_one(printer: FiscalPrinter) -> int:
    printer.ensure_shift(new_op_id())
    km = testing.SHOES
    code = parse(km)
    check = printer.check_code(new_op_id(), km, code.ki, 1)
    assert check.accepted, check.reason
    printer.open_receipt(new_op_id())
    printer.add_position(
        new_op_id(),
        Position(
            "Кроссовки",
            8990,
            mark=MarkedItem(
                km,
                code.ki,
                1,
                industry=IndustryTags(tag1265="UUID=x&Time=1"),
                validation=check.validation,
            ),
        ),
    )
    return printer.close_receipt(new_op_id(), [Payment(8990)]).document_number


def with_auth(user: str, password: str) -> PrinterSettings:
    return replace(testing.FAST, web_user=user, web_password=Secret(password, "test"))


# -- HTTP Basic auth -----------------------------------------------------------------------------


def test_the_configured_credentials_go_with_every_request(tmp_path: Path) -> None:
    settings = with_auth(*AUTH)
    with testing.atol_web_printer(tmp_path / "kkt", settings, auth=AUTH) as (printer, server):
        number = sell_one(printer)

        assert server.kkt.receipts()[-1]["number"] == number
        requests = server.requests
        assert {r.method for r in requests} == {"POST", "GET"}
        assert all(r.status != 401 for r in requests)


def test_no_credentials_is_unavailable_and_says_why(tmp_path: Path) -> None:
    with testing.atol_web_printer(tmp_path / "kkt", auth=AUTH) as (printer, server):
        with pytest.raises(PrinterUnavailable) as err:
            printer.status()

        assert err.value.reason == "web-unauthorized"
        assert "HTTP 401" in str(err.value) and "none are configured" in str(err.value)
        assert not isinstance(err.value, OutcomeUnknown)  # refused before it was queued
        assert server.kkt.documents() == []


def test_a_wrong_password_names_the_user_and_never_the_password(tmp_path: Path) -> None:
    settings = with_auth("kassa", "wrong-" + PASSWORD)
    with testing.atol_web_printer(tmp_path / "kkt", settings, auth=AUTH) as (printer, server):
        with pytest.raises(PrinterUnavailable) as err:
            printer.open_shift(new_op_id())

        text = str(err.value)
        assert "'kassa'" in text and "refused" in text
        assert PASSWORD not in text and PASSWORD not in repr(err.value)
        assert PASSWORD not in repr(printer.settings) and PASSWORD not in repr(printer)
        assert server.kkt.state()["shift"]["state"] == "closed"  # nothing ran


def test_the_password_comes_from_its_file_or_credential(tmp_path: Path) -> None:
    password_file = tmp_path / "atol-password"
    password_file.write_text(PASSWORD + "\n", encoding="utf-8")
    with AtolWebEmulator(state_dir=tmp_path / "kkt", auth=AUTH) as server:
        main = tmp_path / "markd.toml"
        main.write_text(
            "[fiscal]\n"
            f"url = 'atol-web://{server.host}:{server.port}'\n"
            "web_user = 'kassa'\n"
            f"web_password_file = '{password_file}'\n",
            encoding="utf-8",
        )
        loaded = config.load(main)

        with open_configured_printer(loaded) as printer:
            assert printer.status().shift_state == "closed"

        # No file named: the systemd credential; neither there: a clear error naming both.
        no_file = replace(loaded, fiscal=replace(loaded.fiscal, web_password_file=""))
        credentials = tmp_path / "credentials"
        credentials.mkdir()
        (credentials / "atol-web-password").write_text(PASSWORD, encoding="utf-8")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
            assert printer_settings(no_file).web_password == Secret(PASSWORD, "")
            patch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "empty"))
            with pytest.raises(ConfigError) as err:
                printer_settings(no_file)
        assert "[fiscal] web_password_file" in str(err.value)
        assert "atol-web-password" in str(err.value)


def test_web_user_needs_an_atol_web_printer(tmp_path: Path) -> None:
    main = tmp_path / "markd.toml"
    main.write_text("[fiscal]\nweb_user = 'kassa'\n", encoding="utf-8")

    with pytest.raises(ConfigError) as err:
        config.load(main)

    assert err.value.problems == [
        f"{main}:2: [fiscal] web_user: HTTP authentication is for an atol-web:// printer, and "
        "[fiscal] url is 'emulator:///var/lib/markd/kkt'"
    ]
    main.write_text("[fiscal]\nweb_user = 'a:b'\nurl = 'atol-web://127.0.0.1'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        config.load(main)
    assert "[fiscal] web_user: an HTTP Basic user holds no ':'" in err.value.problems[0]


# -- one device of several -----------------------------------------------------------------------


def test_device_id_routes_every_request_to_that_device(tmp_path: Path) -> None:
    with testing.atol_web_printer(tmp_path / "kkt", query="?deviceID=kkt2", devices=["kkt2"]) as (
        printer,
        server,
    ):
        number = sell_one(printer)

        other = server.devices["kkt2"]
        assert [r["number"] for r in other.receipts()] == [number]
        assert server.kkt.documents() == []  # the default device saw nothing
        requests = [r for r in server.requests if r.path.startswith(REQUESTS)]
        assert requests and all(r.query.get("deviceID") == ["kkt2"] for r in requests)


def test_without_device_id_the_default_device_answers(tmp_path: Path) -> None:
    with testing.atol_web_printer(tmp_path / "kkt", devices=["kkt2"]) as (printer, server):
        sell_one(printer)

        assert len(server.kkt.receipts()) == 1
        assert server.devices["kkt2"].documents() == []
        assert all("deviceID" not in r.query for r in server.requests)


def test_an_unknown_device_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    with testing.atol_web_printer(tmp_path / "kkt", query="?deviceID=kkt9") as (printer, server):
        with pytest.raises(PrinterFault) as err:
            printer.open_shift(new_op_id())

        assert err.value.reason == "web-request-refused"
        assert "HTTP 404" in str(err.value) and "kkt9" in str(err.value)
        assert server.kkt.documents() == []
