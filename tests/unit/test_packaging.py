"""What the Debian package and the unit decide without a container: when an installed markd
counts as configured (``markd configured``, the unit's ``ExecCondition=``), that the shipped
``/etc/markd/markd.toml`` configures nothing yet is a valid file once uncommented, and that the
package depends on every runtime requirement of setup.cfg (tests/system builds and installs
it)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from markd.cli.markd import main as markd_main
from markd.config import configured_files, load

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "systemd" / "markd.toml"


def test_nothing_configured_when_the_files_are_missing_or_all_comments(tmp_path: Path) -> None:
    main = tmp_path / "markd.toml"
    assert configured_files(default_path=main) == []
    main.write_text(SHIPPED.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "markd.toml.d").mkdir()
    (tmp_path / "markd.toml.d" / "10-empty.toml").write_text("# nothing yet\n")
    assert configured_files(default_path=main) == []


@pytest.mark.parametrize(
    ("where", "text"),
    [
        ("markd.toml", '[check]\nmode = "direct"\n'),
        ("markd.toml.d/50-till.toml", '[scanners.front]\nurl = "serial:///dev/ttyACM0"\n'),
        # Unreadable as TOML: counted, so that the start runs and explains it at err.
        ("markd.toml.d/60-broken.toml", "[check\n"),
        ("markd.toml", b"\xff\xfe mode = 1\n"),
    ],
)
def test_a_key_or_a_broken_file_counts_as_configured(
    tmp_path: Path, where: str, text: str | bytes
) -> None:
    main = tmp_path / "markd.toml"
    main.write_text("# the shipped comments\n")
    target = tmp_path / where
    target.parent.mkdir(exist_ok=True)
    if isinstance(text, bytes):
        target.write_bytes(text)
    else:
        target.write_text(text)
    assert configured_files(default_path=main) == [str(target)]


def test_markd_configured_exits_1_with_advice_then_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = tmp_path / "markd.toml"
    main.write_text(SHIPPED.read_text(encoding="utf-8"), encoding="utf-8")
    assert markd_main(["--config", str(main), "configured"]) == 1
    said = capsys.readouterr().out
    assert "not configured yet" in said and str(main) in said and "systemctl start" in said
    with main.open("a") as out:
        out.write('\n[check]\nmode = "direct"\n')
    assert markd_main(["--config", str(main), "configured"]) == 0
    assert str(main) in capsys.readouterr().out


def test_an_explicit_file_that_is_missing_lets_the_start_say_so(tmp_path: Path) -> None:
    # ExecCondition= must not hide `--config FILE` pointing nowhere: the start reports it.
    assert markd_main(["--config", str(tmp_path / "nowhere.toml"), "configured"]) == 0


def test_a_failure_of_markd_configured_fails_the_unit_instead_of_skipping_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # ExecCondition= takes 1 as "not configured" and skips the start in silence; 255 makes
    # systemd fail the unit, so a bug shows in `systemctl status` and at err.
    from markd import config

    def broken(*args: object, **kwargs: object) -> list[str]:
        raise RuntimeError("a bug in reading the drop-ins")

    monkeypatch.setattr(config, "configured_files", broken)
    main = tmp_path / "markd.toml"
    main.write_text('[check]\nmode = "direct"\n')
    assert markd_main(["--config", str(main), "configured"]) == 255
    err = capsys.readouterr().err
    assert "markd configured: internal-error: RuntimeError: a bug in reading the drop-ins" in err


def _uncommented(text: str) -> str:
    """The shipped file with its settings switched on: lines ``#[table]`` and ``#key = …``
    lose their ``#``; placeholders (``...``) stay off."""
    lines = []
    for line in text.splitlines():
        if re.match(r"#(\[|[a-z_0-9]+ = )", line) and "..." not in line:
            line = line[1:]
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_the_shipped_file_is_all_comments_and_valid_once_uncommented(tmp_path: Path) -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    assert all(not line.strip() or line.startswith("#") for line in text.splitlines())
    on = _uncommented(text)
    assert on.count("\n[") >= 8, on  # the tables really were switched on
    main = tmp_path / "markd.toml"
    main.write_text(on, encoding="utf-8")
    (tmp_path / "catalog.csv").write_text("4680029460908;Вода;89.90\n", encoding="utf-8")
    main.write_text(on.replace("/etc/markd/catalog.csv", str(tmp_path / "catalog.csv")))
    config = load(main)
    assert config.check.mode == "direct" and config.sale.mode == "kiosk"
    assert config.fiscal.url.startswith("atol-web://")


#: setup.cfg's requirement names and the Debian 12 package of each (dh-python's own mapping
#: names the same packages; this table is what the test holds the control file to).
DEBIAN_NAMES = {
    "pyserial": "python3-serial",
    "pyusb": "python3-usb",
    "lmdb": "python3-lmdb",
    "systemd-python": "python3-systemd",
    "h11": "python3-h11",
    "cryptography": "python3-cryptography",
    "prometheus-client": "python3-prometheus-client",
    "wsproto": "python3-wsproto",
}


def test_the_package_depends_on_every_runtime_requirement() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    required = [
        re.split(r"[<>=!~ ;\[]", line.strip(), maxsplit=1)[0]
        for line in setup["options"]["install_requires"].splitlines()
        if line.strip()
    ]
    missing_names = [r for r in required if r not in DEBIAN_NAMES]
    assert not missing_names, f"add the Debian package of {missing_names} to DEBIAN_NAMES"
    control = (ROOT / "debian" / "control").read_text(encoding="utf-8")
    depends = control.split("\nPackage: markd\n", 1)[1].split("\nDepends:", 1)[1]
    depends = re.split(r"\n(?=\S)", depends, maxsplit=1)[0]
    listed = {item.strip().split()[0] for item in depends.split(",") if item.strip()}
    assert {DEBIAN_NAMES[r] for r in required} <= listed


def test_the_unit_waits_for_a_configuration() -> None:
    unit = (ROOT / "systemd" / "markd.service.in").read_text(encoding="utf-8")
    assert "\nExecCondition=@BINDIR@/markd configured\n" in unit
    rules = (ROOT / "debian" / "rules").read_text(encoding="utf-8")
    assert "s|@BINDIR@|/usr/bin|g" in rules
