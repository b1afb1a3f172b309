"""``[mark_unit]`` and ``[terminal] inn``/``kpp``: the front's keys and every refusal naming
its key (docs/mark_unit.md, "Security"; docs/configuration.md, "Mark Unit front for tills")."""

from __future__ import annotations

from pathlib import Path

import pytest

from markd import config
from markd.cli import markctl
from markd.errors import ConfigError


@pytest.fixture
def main(tmp_path: Path) -> Path:
    return tmp_path / "markd.toml"


def problems_of(path: Path, text: str) -> list[str]:
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    return caught.value.problems


def test_off_by_default_on_loopback_2578(main: Path) -> None:
    main.write_text("", encoding="utf-8")
    front = config.load(main).mark_unit
    assert (front.enabled, front.listen) == (False, "127.0.0.1:2578")
    assert front.allowed_clients == ("127.0.0.0/8", "::1")


def test_lan_listener_with_the_tills_listed_loads(main: Path) -> None:
    main.write_text(
        "[mark_unit]\nenabled = true\nlisten = '0.0.0.0:2578'\n"
        "allowed_clients = ['192.168.1.21', '192.168.1.0/24']\n",
        encoding="utf-8",
    )
    assert config.load(main).mark_unit.allowed_clients == ("192.168.1.21", "192.168.1.0/24")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listen = '0.0.0.0:2578'\n", "[mark_unit] listen: 0.0.0.0 is not a loopback address"),
        ("allowed_clients = []\n", "[mark_unit] allowed_clients: empty"),
        (
            "listen = '0.0.0.0:2578'\nallowed_clients = ['0.0.0.0/0']\n",
            "[mark_unit] allowed_clients: a /0 network",
        ),
        ("allowed_clients = ['shop-lan']\n", "expected an IP address or network"),
        ("listen = 'till:2578'\n", "expected HOST:PORT"),
        ("encoding = 'koi8-r'\n", "utf-8"),
        ("price_unit = 'cents'\n", "rubles"),
    ],
)
def test_refusals_name_the_key(main: Path, text: str, expected: str) -> None:
    problems = problems_of(main, "[mark_unit]\nenabled = true\n" + text)
    assert any(expected in problem for problem in problems), problems


def test_the_port_of_the_control_api_is_refused(main: Path) -> None:
    problems = problems_of(
        main,
        "[api]\nlisten = '127.0.0.1:2578'\n[mark_unit]\nenabled = true\n",
    )
    assert any("takes the port of [api] listen" in p for p in problems), problems


def test_a_disabled_front_is_not_judged_for_its_lan_address(main: Path) -> None:
    main.write_text("[mark_unit]\nlisten = '0.0.0.0:2578'\n", encoding="utf-8")
    assert config.load(main).mark_unit.enabled is False


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("inn", "77012345", "10 or 12 digits"),
        ("inn", "770123456X", "10 or 12 digits"),
        ("kpp", "77010100", "9 characters"),
    ],
)
def test_terminal_organisation_is_checked(main: Path, key: str, value: str, expected: str) -> None:
    problems = problems_of(main, f"[terminal]\n{key} = '{value}'\n")
    assert any(expected in p and f"{key}" in p for p in problems), problems


def test_config_check_refuses_a_lan_front_without_an_allow_list(main: Path, capsys) -> None:
    main.write_text("[mark_unit]\nenabled = true\nlisten = '0.0.0.0:2578'\n", encoding="utf-8")
    status = markctl.main(["config", "check", str(main)])
    assert status != 0
    assert "allowed_clients" in capsys.readouterr().err
