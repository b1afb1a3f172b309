"""The files in systemd/: the unit template, sysusers.d and tmpfiles.d snippets.

The unit is rendered as ``make install`` renders it and handed to the real systemd tools:
``systemd-analyze verify`` and ``systemd-analyze security --offline=yes``, whose overall
exposure must stay at 2.5 or lower. sysusers and tmpfiles snippets are applied with the real
``systemd-sysusers`` and ``systemd-tmpfiles`` to a temporary root.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = ROOT / "systemd"
TEMPLATE = SYSTEMD_DIR / "markd.service.in"
#: The highest `systemd-analyze security` exposure the unit may have (0 best, 10 worst).
MAX_EXPOSURE = 2.5


def render(bindir: str, docdir: str = "/usr/local/share/doc/markd") -> str:
    """The unit as tools/install.sh writes it."""
    return TEMPLATE.read_text().replace("@BINDIR@", bindir).replace("@DOCDIR@", docdir)


def directives(unit_text: str) -> dict[str, list[str]]:
    """``Section.Key`` → every value given, in order (unit files repeat keys)."""
    found: dict[str, list[str]] = defaultdict(list)
    section = ""
    for line in unit_text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found[f"{section}.{key.strip()}"].append(value.strip())
    return found


@pytest.fixture
def unit_file(tmp_path: Path) -> Path:
    """markd.service rendered for this venv's markd, in a directory of its own."""
    path = tmp_path / "markd.service"
    path.write_text(render(str(Path(sys.executable).parent)))
    return path


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


def test_the_template_has_only_the_placeholders_install_fills() -> None:
    placeholders = set(re.findall(r"@[A-Z_]+@", TEMPLATE.read_text()))
    assert placeholders == {"@BINDIR@", "@DOCDIR@"}
    install = (ROOT / "tools" / "install.sh").read_text()
    assert all(f"s|{p}|" in install for p in placeholders)
    assert not re.search(r"@[A-Z_]+@", render("/opt/markd/bin"))


def test_the_unit_says_what_the_daemon_needs() -> None:
    unit = directives(render("/opt/markd/bin"))
    assert unit["Service.Type"] == ["notify"]
    assert unit["Service.ExecStart"] == ["/opt/markd/bin/markd"]
    assert unit["Service.ExecReload"] == ["/opt/markd/bin/markd reload $MAINPID"]
    assert unit["Service.WatchdogSec"] and unit["Service.Restart"] == ["on-failure"]
    assert unit["Service.RestartPreventExitStatus"] == ["2"]  # a bad config: no restart loop
    for key in ("User", "Group", "StateDirectory", "RuntimeDirectory", "ConfigurationDirectory"):
        assert unit[f"Service.{key}"] == ["markd"], key
    assert unit["Service.UMask"] == ["0027"]
    assert "Service.NotifyAccess" not in unit  # main: only markd itself may notify
    assert unit["Install.WantedBy"] == ["multi-user.target"]


def test_a_memory_or_thread_runaway_is_bounded_with_room_for_the_sync_child() -> None:
    """A gzip bomb or an endless download must not take the kiosk's memory: the unit caps
    markd's cgroup, leaving room for the daemon (about 32 MiB, docs/performance.md) plus an
    import or sync child (at most 300 MB, issue 15) and a margin; a killed child does not stop
    the daemon."""
    unit = directives(render("/opt/markd/bin"))
    (memory,) = unit["Service.MemoryMax"]
    assert memory.endswith("M")
    assert 32 + 300 + 128 <= int(memory[:-1]) <= 2048
    assert unit["Service.OOMPolicy"] == ["continue"]
    (tasks,) = unit["Service.TasksMax"]
    # The daemon's executor (32), scanners, writers and helpers, plus the child's threads.
    assert 64 <= int(tasks) <= 1024


def test_every_credential_the_code_reads_is_loaded_and_optional() -> None:
    wanted: set[str] = set()
    for source in (ROOT / "daemon" / "markd").rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        wanted |= set(re.findall(r'load_secret\(\s*[^,()]+,\s*"([a-z0-9-]+)"', text, re.S))
    assert {"crpt-token", "lm-password", "tspiot-token"} <= wanted
    loaded = directives(render("/opt/markd/bin"))["Service.LoadCredential"]
    # NAME:markd.NAME is looked up in /etc/credstore and skipped when absent (systemd 252);
    # an absolute path would fail the whole unit when its file is missing.
    assert sorted(loaded) == sorted(f"{name}:markd.{name}" for name in wanted)


def test_systemd_analyze_verify_accepts_the_unit(unit_file: Path) -> None:
    need("systemd-analyze")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "markd.service" not in result.stderr, result.stderr


def exposure(unit_file: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit_file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit_file.parent,
    )
    if result.returncode != 0 and "--offline" in result.stderr:
        pytest.skip(f"systemd-analyze has no --offline (systemd < 250): {result.stderr.strip()}")
    found = re.search(r"Overall exposure level for markd\.service: (\d+\.\d)", result.stdout)
    assert found, result.stdout[-2000:] + result.stderr
    return float(found.group(1))


def test_systemd_analyze_security_rates_the_sandbox_at_most_2_5(unit_file: Path) -> None:
    need("systemd-analyze")
    assert exposure(unit_file) <= MAX_EXPOSURE


def test_the_exposure_check_can_fail(tmp_path: Path) -> None:
    """The same measurement on the unit without its [Service] sandbox lines rates far worse,
    so the bound above is a real measurement and not a parse that always passes."""
    need("systemd-analyze")
    lines = render(str(Path(sys.executable).parent)).splitlines()
    start = lines.index("# Sandbox.")
    bare = tmp_path / "markd.service"
    bare.write_text("\n".join(lines[:start] + lines[lines.index("[Install]") :]) + "\n")
    assert exposure(bare) > 5.0


def test_sysusers_creates_the_system_user_with_dialout(tmp_path: Path) -> None:
    need("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    # A root with the base groups, as on any Debian system.
    (tmp_path / "etc" / "group").write_text("root:x:0:\ndialout:x:20:\n")
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    result = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD_DIR / "markd.sysusers")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    assert "markd" in passwd
    uid, home, shell = int(passwd["markd"][2]), passwd["markd"][5], passwd["markd"][6]
    assert 0 < uid < 1000  # a system user
    assert home == "/var/lib/markd" and shell.endswith("nologin")
    groups = {
        line.split(":")[0]: line for line in (tmp_path / "etc/group").read_text().splitlines()
    }
    assert groups["dialout"].split(":")[3].split(",") == ["markd"]
    assert "markd" in groups


def test_tmpfiles_creates_the_directories_with_their_modes(tmp_path: Path) -> None:
    need("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    # tmpfiles resolves the user and group names in the root it works on.
    (tmp_path / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\nmarkd:x:990:990::/var/lib/markd:/usr/sbin/nologin\n"
    )
    (tmp_path / "etc" / "group").write_text("root:x:0:\nmarkd:x:990:\n")
    result = subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(SYSTEMD_DIR / "markd.tmpfiles")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    expected = {
        "var/lib/markd": (0o750, 990),
        "run/markd": (0o755, 990),
        "etc/markd": (0o755, 0),
        "etc/markd/markd.toml.d": (0o755, 0),
        "etc/credstore": (0o700, 0),
    }
    for relative, (mode, owner) in expected.items():
        info = (tmp_path / relative).stat()
        assert stat.S_ISDIR(info.st_mode), relative
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (mode, owner), relative
        if os.geteuid() == 0:
            assert info.st_gid == owner, relative
