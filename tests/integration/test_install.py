"""``make install`` / ``make uninstall`` into a staging root (DESTDIR): the files, their modes
and contents, and that nothing outside DESTDIR is touched.

The system tools the live install calls (systemctl, systemd-sysusers, systemd-tmpfiles,
journalctl, udevadm) are replaced on PATH by recorders that log their arguments, so "not
called with DESTDIR" is checked, not assumed. The live install itself runs in the system test
(tests/system/), inside a container with real systemd.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
SYSTEM_TOOLS = ("systemctl", "systemd-sysusers", "systemd-tmpfiles", "journalctl", "udevadm")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def pc(package: str, variable: str, default: str) -> str:
    """What tools/install.sh asks pkg-config, with the same fallback."""
    try:
        out = subprocess.run(
            ["pkg-config", f"--variable={variable}", package],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except FileNotFoundError:
        out = ""
    return out or default


@pytest.fixture
def recorders(tmp_path: Path) -> tuple[Path, Path]:
    """(a bin directory of recording stand-ins for the system tools, their log)."""
    bin_dir, log = tmp_path / "recorders", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in SYSTEM_TOOLS:
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        script.chmod(0o755)
    return bin_dir, log


def make(target: str, recorders: tuple[Path, Path], **variables: str) -> str:
    bin_dir, _ = recorders
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), target]
        + [f"{k}={v}" for k, v in variables.items()],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stderr


def listing(root: Path) -> dict[str, str]:
    """Every file and link under ``root``: relative path → ``mode`` or ``-> target``."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = "/" + str(path.relative_to(root))
        if path.is_symlink():
            found[relative] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[relative] = oct(stat.S_IMODE(path.stat().st_mode))
    return found


def test_install_into_destdir_with_an_existing_venv(
    tmp_path: Path, recorders: tuple[Path, Path]
) -> None:
    destdir = tmp_path / "stage"
    make("install", recorders, DESTDIR=str(destdir), USE_VENV=str(VENV), PREFIX="/usr/local")

    unitdir = pc("systemd", "systemdsystemunitdir", "/lib/systemd/system")
    udevdir = pc("udev", "udevdir", "/lib/udev")
    expected = {
        f"{unitdir}/markd.service": "0o644",
        pc("systemd", "sysusersdir", "/usr/lib/sysusers.d") + "/markd.conf": "0o644",
        pc("systemd", "tmpfilesdir", "/usr/lib/tmpfiles.d") + "/markd.conf": "0o644",
        pc("systemd", "catalogdir", "/usr/lib/systemd/catalog") + "/markd.catalog": "0o644",
        "/usr/local/bin/markd": f"-> {VENV}/bin/markd",
        "/usr/local/bin/markctl": f"-> {VENV}/bin/markctl",
    }
    expected |= {f"{udevdir}/rules.d/{r.name}": "0o644" for r in (ROOT / "udev").glob("*.rules")}
    expected |= {f"/usr/local/share/doc/markd/{d.name}": "0o644" for d in ROOT.glob("docs/*.md")}
    assert listing(destdir) == expected

    unit = (destdir / unitdir.lstrip("/") / "markd.service").read_text()
    assert f"ExecStart={VENV}/bin/markd\n" in unit
    assert f"ExecReload={VENV}/bin/markd reload $MAINPID\n" in unit
    assert "Documentation=file:///usr/local/share/doc/markd/operations.md" in unit
    assert "@BINDIR@" not in unit and "@DOCDIR@" not in unit
    catalog = destdir / pc("systemd", "catalogdir", "/usr/lib/systemd/catalog").lstrip("/")
    assert (catalog / "markd.catalog").read_bytes() == (ROOT / "systemd/markd.catalog").read_bytes()
    # Staging never tells the running system anything.
    assert not recorders[1].exists()

    make("uninstall", recorders, DESTDIR=str(destdir), USE_VENV=str(VENV), PREFIX="/usr/local")
    assert listing(destdir) == {}
    assert VENV.joinpath("bin", "markd").exists()  # a venv it did not make is left alone
    assert not recorders[1].exists()


def test_install_directories_can_be_chosen(tmp_path: Path, recorders: tuple[Path, Path]) -> None:
    destdir = tmp_path / "stage"
    make(
        "install",
        recorders,
        DESTDIR=str(destdir),
        USE_VENV=str(VENV),
        PREFIX="/usr",
        SYSTEMDUNITDIR="/etc/systemd/system",
        SYSUSERSDIR="/etc/sysusers.d",
        TMPFILESDIR="/etc/tmpfiles.d",
        CATALOGDIR="/usr/local/lib/systemd/catalog",
        UDEVDIR="/etc/udev",
    )
    files = listing(destdir)
    assert "/etc/systemd/system/markd.service" in files
    assert "/etc/sysusers.d/markd.conf" in files and "/etc/tmpfiles.d/markd.conf" in files
    assert "/usr/local/lib/systemd/catalog/markd.catalog" in files
    assert files["/usr/bin/markd"] == f"-> {VENV}/bin/markd"
    unit = (destdir / "etc/systemd/system/markd.service").read_text()
    assert "Documentation=file:///usr/share/doc/markd/operations.md" in unit


def test_install_makes_the_daemon_its_own_venv(
    tmp_path: Path, recorders: tuple[Path, Path]
) -> None:
    """Without USE_VENV, install makes MARKD_HOME from the system Python with markd installed
    for real (not editable); staged under DESTDIR, the venv's scripts name the final path."""
    python = Path("/usr/bin/python3")
    if not python.exists():
        pytest.skip("no /usr/bin/python3 to make the daemon's venv from")
    destdir = tmp_path / "stage"
    make("install", recorders, DESTDIR=str(destdir), MARKD_HOME="/opt/markd-test")
    home = destdir / "opt/markd-test"
    script = (home / "bin" / "markd").read_text().splitlines()[0]
    assert script == "#!/opt/markd-test/bin/python"
    assert str(destdir) not in (home / "bin" / "markctl").read_text()
    unitdir = pc("systemd", "systemdsystemunitdir", "/lib/systemd/system").lstrip("/")
    assert (
        "ExecStart=/opt/markd-test/bin/markd\n" in (destdir / unitdir / "markd.service").read_text()
    )
    assert os.readlink(destdir / "usr/local/bin/markctl") == "/opt/markd-test/bin/markctl"
    # The staged interpreter finds markd in its own site-packages, a copy and not the source.
    where = subprocess.run(
        [str(home / "bin" / "python"), "-c", "import markd, systemd.daemon; print(markd.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(home)) and "site-packages" in where.stdout
    assert not recorders[1].exists()
    if Path("/usr/lib/python3/dist-packages").is_dir():
        # On Debian the runtime takes its compiled libraries from Debian's packages: nothing
        # was built, so the runtime needs no compiler.
        origin = subprocess.run(
            [
                str(home / "bin" / "python"),
                "-c",
                "import systemd, lmdb; print(systemd.__file__); print(lmdb.__file__)",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert origin.returncode == 0, origin.stderr
        assert all(
            line.startswith("/usr/lib/python3/dist-packages/")
            for line in origin.stdout.splitlines()
        ), origin.stdout

    make("uninstall", recorders, DESTDIR=str(destdir), MARKD_HOME="/opt/markd-test")
    assert not home.exists()
    assert listing(destdir) == {}
