"""tools/bootstrap.sh as root asks apt for the test tools that are missing, and leaves no
service of theirs running: here, Debian's ``prometheus`` package, installed for its promtool.

The script runs for real against stand-ins on ``PATH`` (apt-get, dpkg-query, systemctl,
update-rc.d and the interpreter record what they were asked and succeed), so nothing is
installed and no service is touched; the policy-rc.d it writes goes to a temporary path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP = ROOT / "tools" / "bootstrap.sh"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="bootstrap.sh installs test tools only as root"
)

#: Real programs the script uses besides the stand-ins.
REAL_TOOLS = ("bash", "dirname", "id", "readlink", "grep", "chmod", "rm", "cat", "touch")


def stand_in(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def run_bootstrap(
    tmp_path: Path, present: set[str]
) -> tuple[subprocess.CompletedProcess[str], str]:
    """bootstrap.sh with ``present`` among the optional test tools on PATH; returns its run and
    the log the stand-ins wrote."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "log"
    policy = tmp_path / "policy-rc.d"
    for tool in REAL_TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    include = tmp_path / "include"
    include.mkdir()
    (include / "Python.h").touch()
    # The interpreter: new enough, with venv and headers; pip and the import check succeed.
    python = bin_dir / "python3"
    stand_in(python, f'case "$*" in *sysconfig*) echo {include};; esac\nexit 0')
    # Every Debian package the script asks about is installed ...
    stand_in(bin_dir / "dpkg-query", "echo 'install ok installed'")
    # ... and apt-get records what it installs and what policy-rc.d says meanwhile.
    stand_in(
        bin_dir / "apt-get",
        f'echo "apt-get $*" >>{log}\n'
        f'if [ "$1" = install ]; then {policy} start; echo "policy-rc.d exit $?" >>{log}; fi',
    )
    stand_in(bin_dir / "systemctl", f'echo "systemctl $*" >>{log}')
    stand_in(bin_dir / "update-rc.d", f'echo "update-rc.d $*" >>{log}')
    for tool in ("cc", *present):
        stand_in(bin_dir / tool, "exit 0")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(python)

    env = {
        "PATH": str(bin_dir),
        "PYTHON": "python3",
        "MARKD_POLICY_RC_D": str(policy),
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        ["bash", str(BOOTSTRAP), str(venv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert not policy.exists(), "the policy-rc.d was left behind"
    return done, log.read_text() if log.exists() else ""


def test_a_missing_promtool_brings_prometheus_without_its_server(tmp_path: Path) -> None:
    done, log = run_bootstrap(
        tmp_path, present={"systemd-nspawn", "tinyproxy", "chromium", "umockdev-wrapper"}
    )
    assert done.returncode == 0, done.stderr
    assert "installing apt packages: prometheus" in done.stderr
    installs = [line for line in log.splitlines() if line.startswith("apt-get install")]
    assert installs == ["apt-get install -y -qq --no-install-recommends prometheus"]
    # No service may start while the package installs (invoke-rc.d(8): 101 = action forbidden).
    assert "policy-rc.d exit 101" in log
    # Nor at the next boot.
    if Path("/run/systemd/system").is_dir():
        assert "systemctl disable --now prometheus" in log
    else:
        assert "update-rc.d prometheus disable" in log
    assert "tinyproxy" not in log


def test_nothing_is_installed_when_promtool_is_there(tmp_path: Path) -> None:
    done, log = run_bootstrap(
        tmp_path,
        present={"systemd-nspawn", "tinyproxy", "promtool", "chromium", "umockdev-wrapper"},
    )
    assert done.returncode == 0, done.stderr
    assert "apt-get" not in log
    assert "installing apt packages" not in done.stderr


def test_a_missing_chromium_is_installed_for_the_browser_tests(tmp_path: Path) -> None:
    done, log = run_bootstrap(
        tmp_path, present={"systemd-nspawn", "tinyproxy", "promtool", "umockdev-wrapper"}
    )

    assert done.returncode == 0, done.stderr
    installs = [line for line in log.splitlines() if line.startswith("apt-get install")]
    assert installs == ["apt-get install -y -qq --no-install-recommends chromium"]
    assert "systemctl" not in log and "update-rc.d" not in log  # no service of its own


def test_a_missing_umockdev_is_installed_for_the_real_libusb_tests(tmp_path: Path) -> None:
    done, log = run_bootstrap(
        tmp_path, present={"systemd-nspawn", "tinyproxy", "promtool", "chromium"}
    )

    assert done.returncode == 0, done.stderr
    installs = [line for line in log.splitlines() if line.startswith("apt-get install")]
    assert installs == ["apt-get install -y -qq --no-install-recommends umockdev"]
    assert "systemctl" not in log and "update-rc.d" not in log  # no service of its own
