"""markd under the real systemd, installed as a kiosk installs it: the Debian package built by
``tools/build-deb.sh`` (``make deb``), installed with ``apt-get install ./markd_*.deb`` in a
container booted with systemd-nspawn from this machine's own ``/usr``, with no network; then
driven like a till, upgraded to a rebuilt package and purged.

How the container is made and driven:

* ``systemd-nspawn -D / --volatile=yes --register=no --keep-unit -b``: the host's OS tree with a
  fresh tmpfs root (empty /etc and /var, so nothing of the host's configuration leaks in) and
  ``--overlay=/usr::/usr`` so that the package can write to the usual places (the overlay's
  upper layer is temporary). A copy of dpkg's database and apt's and dpkg's configuration
  (bound read-only) let apt in the container know what the host has installed:
  the package's dependencies (Debian's ``python3-*`` libraries, which the fixture installs on
  the host first) come from the host's packages, never from a network. ``--private-network``
  gives the container its own loopback and nothing else.
* One such container runs on a host at a time (a lock in /run, and a check that no other
  container occupies ``/payload``). systemd-nspawn ``--keep-unit`` takes the caller's cgroup,
  and a test process without a unit (a CI runner, a host without systemd) has none: every
  container then lands in the same ``/payload`` tree. Two at once (two test runs on one host,
  or a run in a second worktree) put their ``markd.service`` processes in one cgroup; each
  container's systemd sees the other's as PID 0 (a process of another PID namespace), and
  systemd 252 gives up killing that cgroup with EIO ("Failed to kill control group …
  Input/output error"): the clean-stop test failed on such hosts for that reason. Two
  containers booted side by side here showed both PID 1s in ``/payload/init.scope``.
* ``--register=no`` means no machined and no ``machinectl``: commands run inside through
  ``nsenter`` into the namespaces of the container's PID 1 (a child of systemd-nspawn).
* The scanner is a pseudo-terminal made inside the container by a small service
  (``pty_scanner.py``, its own transient unit), linked at ``/run/markd-test/NAME``; the test
  writes a code into it through a Unix socket in the shared directory. The CDN and Local Module
  emulators run as transient units inside the container too, from the project's venv (bound
  in read-only at its own path); the service itself runs Debian's ``/usr/bin/python3``.
* The unit gets a test drop-in: the tests' ``sitecustomize`` on ``PYTHONPATH`` with
  ``MARKD_TEST_HOOKS=1`` (``markd.testing.hang``: SIGUSR2 hangs the loop), a 3 s watchdog,
  ``DeviceAllow=char-pts`` for the pty, no core files, and — when the project lives under
  /root or /home — ``ProtectHome=tmpfs`` with that directory bound back in (and under /tmp:
  bound back into the service's private /tmp).

Each test is named after the failure it prevents. They share one container (booting takes about
a second; building the two packages takes most of the module's minute) and run in file order.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import WATER, WATER_KI
from markd.systemd import MESSAGE_IDS

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
SHARED = "/srv/markd-test"
CDN_PORT, LM_PORT = 18081, 15995
HOST_DPKG = "/srv/markd-host-dpkg"
TOKEN = "5c0ffee0-1d2e-4f3a-8b4c-5d6e7f8091a2"
WATCHDOG_SEC = 3
DAIRY = "0104670540176099215LpGKy\x1d93dGVz"
DAIRY_KI = "0104670540176099215LpGKy"


def _ensure_nspawn() -> str | None:
    """None when systemd-nspawn can be used, else why not. As root on Debian, a missing
    systemd-container is installed (tools/bootstrap.sh does the same)."""
    if sys.platform != "linux":
        return "systemd-nspawn needs Linux"
    if os.geteuid() != 0:
        return "booting a container with systemd-nspawn needs root"
    if shutil.which("systemd-nspawn") is None and shutil.which("apt-get") is not None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = [
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "systemd-container",
        ]
        if subprocess.run(install, capture_output=True, env=env, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
            subprocess.run(install, capture_output=True, env=env, timeout=600)
    for tool in ("systemd-nspawn", "nsenter", "make"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install systemd-container util-linux make)"
    if not Path("/usr/lib/systemd/systemd").exists():
        return "no /usr/lib/systemd/systemd to boot"
    if shutil.which("dpkg") is None or shutil.which("apt-get") is None:
        return "installing the package needs dpkg and apt-get (a Debian host)"
    missing = [p for p in package_depends() if not _installed(p)]
    if missing:
        # The package's dependencies come from the host's packages (the container has no
        # network): installed here like any other test tool.
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
        if subprocess.run(install, capture_output=True, env=env, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
            done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600)
            if done.returncode != 0:
                return f"cannot install the package's dependencies {missing}: {done.stderr[-500:]}"
    return None


def package_depends() -> list[str]:
    """The Debian packages markd's package depends on by name (debian/control)."""
    control = (ROOT / "debian" / "control").read_text(encoding="utf-8")
    binary = control.split("\nPackage: markd\n", 1)[1]
    depends = binary.split("\nDepends:", 1)[1]
    field = re.split(r"\n(?=\S)", depends, maxsplit=1)[0]
    names = [item.strip().split()[0] for item in field.split(",") if item.strip()]
    return [n for n in names if not n.startswith("${")]


def _installed(package: str) -> bool:
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return status.returncode == 0 and status.stdout.endswith(" installed")


#: Held for as long as this module's container runs: one such container on a host at a time.
HOST_LOCK = "/run/markd-systemd-nspawn.lock"


def _shared_payload_busy() -> list[str]:
    """PIDs in the cgroup tree systemd-nspawn gives a container on this host when the caller
    has no unit of its own (``/payload`` of the name=systemd hierarchy), i.e. another container
    that would share it."""
    found: list[str] = []
    for top in (Path("/sys/fs/cgroup/systemd/payload"), Path("/sys/fs/cgroup/payload")):
        for procs in top.glob("**/cgroup.procs"):
            try:
                found += procs.read_text().split()
            except OSError:
                continue
    return found


class Machine:
    """A booted container and the means to run commands in it."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path, shared: Path) -> None:
        self.process = process
        self.log = log
        self.shared = shared
        self.pid = 0

    def find_init(self, timeout: float = 30.0) -> None:
        """Wait for the container's PID 1 (a child of systemd-nspawn) to answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"systemd-nspawn exited with {self.process.returncode}:\n{self.boot_log()}"
                )
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            try:
                pids = children.read_text().split()
            except OSError:
                pids = []
            for pid in pids:
                try:
                    exe = os.readlink(f"/proc/{pid}/exe")
                except OSError:
                    continue
                if exe.endswith("/systemd"):
                    self.pid = int(pid)
                    return
            time.sleep(0.05)
        pytest.fail(f"the container's systemd did not start within {timeout} s:\n{self.boot_log()}")

    def boot_log(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def run(
        self, *command: str, check: bool = True, timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside the container (all of PID 1's namespaces)."""
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "SYSTEMD_PAGER": "",
            "SYSTEMD_COLORS": "0",
        }
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "--", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            input=input,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"{' '.join(command)} exited with {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}\n--- journal ---\n{self.journal_tail()}"
            )
        return result

    def sh(self, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, **kwargs)

    def write(self, path: str, text: str) -> None:
        self.run("sh", "-c", f'mkdir -p "$(dirname {path})" && cat > {path}', input=text)

    def journal_tail(self, lines: int = 60) -> str:
        try:
            return self.run(
                "journalctl", "--no-pager", "-n", str(lines), "-o", "short-monotonic", check=False
            ).stdout
        except Exception as exc:  # noqa: BLE001 - only a debugging aid
            return f"(no journal: {exc})"

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *matches: str) -> list[dict[str, Any]]:
        """Records of markd.service matching the ``FIELD=value`` matches, as JSON objects."""
        out = self.run(
            "journalctl", "--no-pager", "-u", "markd.service", "-o", "json", *matches, check=False
        ).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {timeout} s waiting for {what}\n{self.journal_tail()}"
                )
            time.sleep(0.1)

    def scan(self, scanner: str, code: str) -> None:
        """Have the pty scanner ``scanner`` send ``code`` and a CR, as a scanner does."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(self.shared / "scanner.sock"))
            conn.sendall(scanner.encode() + b" " + code.encode() + b"\r")
            conn.shutdown(socket.SHUT_WR)
            assert conn.recv(100) == b"ok"


def _home_paths() -> list[Path]:
    """Directories the markd service must see that ProtectHome= would hide."""
    wanted = {Path(sys.base_prefix).resolve(), VENV.resolve(), ROOT}
    return sorted(p for p in wanted if p.parts[1:2] in (("root",), ("home",)))


def _tmp_paths() -> list[Path]:
    """Directories the markd service must see that PrivateTmp= would hide (a checkout under
    /tmp, as a CI runner may make it)."""
    wanted = {Path(sys.base_prefix).resolve(), VENV.resolve(), ROOT}
    return sorted(p for p in wanted if p.parts[1:2] == ("tmp",) or p.parts[1:3] == ("var", "tmp"))


def _binds() -> list[Path]:
    """The project, its venv and the Python the venv was made from, each once (a directory
    inside another is bound with it; /usr is the container's own already)."""
    wanted = sorted({ROOT, VENV.resolve(), Path(sys.base_prefix).resolve()})
    usr = Path("/usr")
    chosen: list[Path] = []
    for path in wanted:
        if path == usr or usr in path.parents:
            continue
        if not any(parent in path.parents for parent in chosen):
            chosen.append(path)
    return chosen


@pytest.fixture(scope="module")
def machine() -> Iterator[Machine]:
    reason = _ensure_nspawn()
    if reason is not None:
        pytest.skip(reason)
    shared = Path(tempfile.mkdtemp(prefix="markd-systest-"))
    log = shared / "nspawn.log"
    binds = _binds()
    command = [
        "systemd-nspawn",
        "-D",
        "/",
        "--volatile=yes",
        "--overlay=/usr::/usr",
        # apt and dpkg see what the host has installed (the package's dependencies): dpkg's
        # database is copied from here into the container's /var (`installed`).
        f"--bind-ro=/var/lib/dpkg:{HOST_DPKG}",
        "--bind-ro=/etc/apt",
        "--bind-ro=/etc/dpkg",
        "--register=no",
        "--keep-unit",
        "--private-network",
        "--console=passive",
        f"--machine=markd-test-{os.getpid()}",
        f"--bind={shared}:{SHARED}",
        *(f"--bind-ro={path}" for path in binds),
        "-b",
        "systemd.firstboot=off",
    ]
    # One container of this kind at a time on a host (the module's docstring says why): wait
    # for another test run's container to end, and refuse to share with a stranger's.
    lock = open(HOST_LOCK, "w")  # noqa: SIM115 - held until the fixture ends
    deadline = time.monotonic() + 900
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                pytest.fail(f"another test container held {HOST_LOCK} for 15 minutes")
            time.sleep(1)
    strangers = _shared_payload_busy()
    if strangers:
        lock.close()
        pytest.fail(
            "another systemd-nspawn container without a unit of its own runs on this host "
            f"(processes {' '.join(strangers[:10])} in /payload); a second one would share its "
            "cgroups"
        )
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    box = Machine(process, log, shared)
    try:
        box.find_init()
        deadline = time.monotonic() + 60
        # systemctl fails until PID 1 listens on its bus, a moment after it starts, and says
        # "offline" while /run/systemd/system does not exist yet in the fresh container.
        while True:
            state = box.run("systemctl", "is-system-running", "--wait", check=False, timeout=60)
            if state.stdout.strip() not in ("", "offline") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if state.stdout.strip() not in ("running", "degraded"):
            pytest.fail(
                f"the container did not boot: {state.stdout}{state.stderr}\n{box.journal_tail()}"
            )
        yield box
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # nspawn shuts the container down in order
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        lock.close()
        shutil.rmtree(shared, ignore_errors=True)


CONFIG = textwrap.dedent(
    f"""\
    [terminal]
    fn_serial = "9960440300000001"

    [check]
    mode = "direct"

    [check.online]
    url = "http://127.0.0.1:{CDN_PORT}"

    [check.local_module]
    url = "http://127.0.0.1:{LM_PORT}"

    [scanners.front]
    url = "serial:///run/markd-test/front?baudrate=9600&terminator=cr"
    """
)


VERSION = re.search(
    r'__version__ = "([^"]+)"', (ROOT / "daemon" / "markd" / "__init__.py").read_text()
).group(1)
UPGRADE = f"{VERSION}+upgrade1"


def build_package(machine: Machine, version: str, lintian: bool) -> str:
    """Build markd's .deb with the project's own tool (what `make deb` runs) into the shared
    directory; return its path inside the container."""
    out = machine.shared / "debs"
    env = {
        **os.environ,
        "DEB_OUT": str(out),
        "DEB_VERSION": "" if version == VERSION else version,
        "LINTIAN": "yes" if lintian else "no",
    }
    built = subprocess.run(
        [str(ROOT / "tools" / "build-deb.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    deb = out / f"markd_{version}_all.deb"
    assert built.stdout.strip().endswith(deb.name) and deb.is_file(), built.stdout
    # lintian's warnings are each overridden with a reason (debian/markd.lintian-overrides):
    # none may be left unexplained, and no error passes the build.
    if lintian:
        assert not re.search(r"^[EW]: ", built.stderr, re.M), built.stderr[-3000:]
    return f"{SHARED}/debs/{deb.name}"


def apt_get(machine: Machine, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """apt-get in the container, non-interactive, with no network to reach."""
    return machine.run(
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "-y",
        "-q",
        "-o",
        "Dpkg::Use-Pty=0",
        *args,
        timeout=300,
        **kwargs,
    )


@pytest.fixture(scope="module")
def installed(machine: Machine) -> Machine:
    """markd installed from its Debian package, as a technician installs it; not configured."""
    deb = build_package(machine, VERSION, lintian=True)
    # The host's stat overrides name the host's own groups, which the container's fresh /etc
    # does not have; they concern none of the packages installed here.
    machine.sh(
        f"mkdir -p /var/lib/dpkg && cp -a {HOST_DPKG}/. /var/lib/dpkg/"
        " && : > /var/lib/dpkg/statoverride"
    )
    # A host made from a Docker image has a policy-rc.d that forbids maintainer scripts to
    # start services; a kiosk has none, and the package's start is part of what is tested.
    machine.run("rm", "-f", "/usr/sbin/policy-rc.d")
    apt_get(machine, "install", "--no-install-recommends", deb)
    return machine


@pytest.fixture(scope="module")
def configured(installed: Machine) -> Machine:
    """The installed package configured for the tests: secrets in the credential store,
    emulators and the pty scanners running, the test drop-in; markd not started yet."""
    machine = installed
    python = str(VENV / "bin" / "python")
    machine.write(f"{SHARED}/cdn.json", json.dumps({"cdn": {"token": TOKEN}}))
    for unit, argv in {
        "markd-test-cdn": [python, "-m", "markd.emulators", "crpt_cdn", "--port", str(CDN_PORT),
                           "--scenario", f"{SHARED}/cdn.json"],
        "markd-test-lm": [python, "-m", "markd.emulators", "local_module", "--port", str(LM_PORT)],
        "markd-test-pty": ["python3", str(Path(__file__).with_name("pty_scanner.py")),
                           "/run/markd-test", f"{SHARED}/scanner.sock", "front", "side"],
    }.items():  # fmt: skip
        machine.run("systemd-run", f"--unit={unit}", "--quiet", *argv)
    machine.wait("the pty scanners", lambda: (machine.shared / "scanner.sock").exists())
    # Secrets go where the unit's LoadCredential= looks: /etc/credstore/markd.NAME (root only).
    machine.sh(
        f"umask 077 && printf '%s\\n' '{TOKEN}' > /etc/credstore/markd.crpt-token"
        " && printf 'admin\\n' > /etc/credstore/markd.lm-password"
    )
    machine.write("/etc/markd/markd.toml", CONFIG)
    drop_in = [
        "[Service]",
        "# Test-only: the tests' sitecustomize installs markd.testing's hang hook, so SIGUSR2",
        "# hangs the loop and the watchdog can be seen at work.",
        f"Environment=PYTHONPATH={ROOT / 'tests' / 'sitehooks'}",
        "Environment=MARKD_TEST_HOOKS=1",
        f"WatchdogSec={WATCHDOG_SEC}s",
        "RestartSec=500ms",
        "DeviceAllow=char-pts rw",
        "LimitCORE=0",
    ]
    homes = _home_paths()
    if homes:
        drop_in += ["ProtectHome=tmpfs", *(f"BindReadOnlyPaths={p}" for p in homes)]
    # The service's private /tmp would hide a project under /tmp: bound back in, read-only.
    drop_in += [f"BindReadOnlyPaths={p}" for p in _tmp_paths()]
    machine.write("/etc/systemd/system/markd.service.d/50-test.conf", "\n".join(drop_in) + "\n")
    machine.run("systemctl", "daemon-reload")
    return machine


def ensure_started(machine: Machine) -> dict[str, str]:
    if machine.show("markd", "ActiveState")["ActiveState"] != "active":
        machine.run("systemctl", "start", "markd")
    machine.wait(
        "scanner front present",
        lambda: "front ok" in machine.show("markd", "StatusText")["StatusText"],
    )
    return machine.show("markd", "MainPID", "NRestarts", "ActiveState", "SubState")


# --------------------------------------------------------------------------------------------


def test_the_package_installs_enabled_and_waits_for_a_configuration(installed: Machine) -> None:
    """apt-get installed it offline: the commands on PATH from Debian's python3, the user, the
    directories, the catalog (systemd's trigger), the rules, the conffile; the unit enabled and
    skipped, not failed, while the shipped file (all comments) configures nothing."""
    box = installed
    for command in ("markd", "markctl"):
        found = box.run("sh", "-c", f"command -v {command}").stdout.strip()
        assert found == f"/usr/bin/{command}"
    assert box.run("markd", "--version").stdout.strip() == f"markd {VERSION}"
    where = box.run("/usr/bin/python3", "-c", "import markd, lmdb; print(markd.__file__)")
    assert where.stdout.startswith("/usr/lib/python3/dist-packages/markd/")
    assert "markd" in box.run("getent", "passwd", "markd").stdout
    assert box.run("stat", "-c", "%a %U", "/var/lib/markd").stdout.split() == ["750", "markd"]
    assert box.run("stat", "-c", "%a %U", "/etc/credstore").stdout.split() == ["700", "root"]
    catalog = box.run("journalctl", "--list-catalog", "--no-pager").stdout
    assert MESSAGE_IDS["verdict"] in catalog
    assert (
        box.run("test", "-f", "/lib/udev/rules.d/70-markd-scanners.rules", check=False).returncode
        == 0
    )
    conffiles = box.run("dpkg-query", "-W", "-f=${Conffiles}", "markd").stdout
    assert "/etc/markd/markd.toml" in conffiles
    shipped = box.run("cat", "/etc/markd/markd.toml").stdout
    assert shipped.strip() and all(
        not line.strip() or line.lstrip().startswith("#") for line in shipped.splitlines()
    )
    assert box.run("systemctl", "is-enabled", "markd").stdout.strip() == "enabled"
    # The postinst started it, and the condition held it back (said in the journal, with no
    # failure); an explicit start does the same.
    by_postinst = box.run("journalctl", "--no-pager", "-u", "markd", "-o", "cat").stdout
    assert "not configured yet" in by_postinst, by_postinst
    assert box.show("markd", "ActiveState")["ActiveState"] == "inactive"
    start = box.run("systemctl", "start", "markd", check=False)
    assert start.returncode == 0, start.stderr
    state = box.show("markd", "ActiveState", "Result", "NRestarts")
    assert state["ActiveState"] == "inactive" and state["Result"] == "exec-condition"
    said = box.run("journalctl", "--no-pager", "-u", "markd", "-o", "cat").stdout
    assert "not configured yet" in said and "/etc/markd/markd.toml" in said
    assert not box.journal("MARKD_EVENT=service-started")


def test_unit_files_pass_systemd_analyze_verify_and_security(configured: Machine) -> None:
    unit = configured.run("systemctl", "show", "-P", "FragmentPath", "markd").stdout.strip()
    assert unit.endswith("/systemd/system/markd.service")
    verify = configured.run("systemd-analyze", "verify", unit, check=False)
    assert verify.returncode == 0, verify.stderr
    assert "markd" not in verify.stderr, verify.stderr
    security = configured.run(
        "systemd-analyze", "security", "--offline=yes", "--no-pager", unit, check=False
    )
    found = re.search(r"Overall exposure level for markd\.service: (\d+\.\d)", security.stdout)
    assert found and float(found.group(1)) <= 2.5, security.stdout[-1500:]
    # The install made the user and the directories, and the catalog is in the database.
    assert "markd" in configured.run("getent", "passwd", "markd").stdout
    assert configured.run("stat", "-c", "%a %U", "/var/lib/markd").stdout.split() == [
        "750",
        "markd",
    ]
    catalog = configured.run("journalctl", "--list-catalog", "--no-pager").stdout
    assert MESSAGE_IDS["verdict"] in catalog


def test_unit_becomes_active_only_through_ready(configured: Machine) -> None:
    started = time.monotonic()
    configured.run("systemctl", "start", "markd")  # Type=notify: returns once READY=1 arrived
    state = configured.show(
        "markd", "ActiveState", "SubState", "Type", "StatusText", "WatchdogUSec", "User"
    )
    assert (state["ActiveState"], state["SubState"], state["Type"]) == (
        "active",
        "running",
        "notify",
    )
    assert state["StatusText"].startswith("ready; mode direct; scanners front")
    assert state["WatchdogUSec"] == f"{WATCHDOG_SEC}s" and state["User"] == "markd"
    assert time.monotonic() - started < 20
    (record,) = configured.journal("MARKD_EVENT=service-started")
    assert record["MESSAGE_ID"] == MESSAGE_IDS["service-started"]
    assert record["_UID"] != "0"  # runs as markd, not root


def test_a_scan_yields_a_journaled_verdict_with_its_fields(configured: Machine) -> None:
    ensure_started(configured)
    configured.scan("front", WATER)
    configured.wait("the verdict", lambda: len(configured.journal("MARKD_EVENT=verdict")) == 1)
    (verdict,) = configured.journal("MARKD_EVENT=verdict")
    assert verdict["MESSAGE_ID"] == MESSAGE_IDS["verdict"]
    assert verdict["MARKD_KI"] == WATER_KI
    assert (verdict["MARKD_DECISION"], verdict["MARKD_SOURCE"]) == ("allow", "cdn")
    assert verdict["MARKD_SCANNER"] == "front" and verdict["MARKD_REASON"]
    assert float(verdict["MARKD_LATENCY_MS"]) < 2000
    assert re.fullmatch(r"[0-9a-f-]{36}", verdict["MARKD_REQ_ID"])
    assert verdict["_SYSTEMD_UNIT"] == "markd.service" and verdict["PRIORITY"] == "6"
    # The credential reached the CDN client (the emulator refuses any other key) and neither
    # the key nor the code's crypto tail reached the journal.
    everything = json.dumps(configured.journal(), ensure_ascii=False)
    assert TOKEN not in everything and "938p9E" not in everything
    assert "ready" in configured.show("markd", "StatusText")["StatusText"]
    assert "verdicts 1 allow" in configured.show("markd", "StatusText")["StatusText"]


SCRAPE = """
import socket, sys
with socket.socket(socket.AF_UNIX) as s:
    s.connect("/run/markd/control.sock")
    s.sendall(b"GET /metrics HTTP/1.1\\r\\nHost: markd\\r\\nConnection: close\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
sys.stdout.write(data.decode())
"""


def test_metrics_are_served_by_the_package_on_debians_prometheus_client(
    configured: Machine,
) -> None:
    """GET /metrics of the packaged daemon, which runs on Debian's python3-prometheus-client
    (not the venv's newer release)."""
    box = configured
    ensure_started(box)
    if not box.journal("MARKD_EVENT=verdict"):
        box.scan("front", WATER)
        box.wait("a verdict", lambda: bool(box.journal("MARKD_EVENT=verdict")))
    answer = box.run("/usr/bin/python3", "-c", SCRAPE).stdout
    head, _, body = answer.partition("\n\n")  # text mode turned CRLF into LF
    assert head.startswith("HTTP/1.1 200") and "text/plain" in head, head
    assert re.search(r'^markd_verdicts_total\{[^}]*decision="allow"[^}]*\} [1-9]', body, re.M), (
        body[:2000]
    )
    assert re.search(r'^markd_scanner_present\{scanner="front"\} 1', body, re.M), body[:2000]
    assert WATER_KI not in body


def test_journalctl_x_explains_the_record_from_the_catalog(configured: Machine) -> None:
    ensure_started(configured)
    if not configured.journal("MARKD_EVENT=verdict"):
        configured.scan("front", WATER)
        configured.wait("a verdict", lambda: bool(configured.journal("MARKD_EVENT=verdict")))
    shown = configured.run(
        "journalctl", "--no-pager", "-x", "-u", "markd", "MARKD_EVENT=verdict"
    ).stdout
    assert "Subject: markd decided on a scanned code: allow" in shown
    assert "Scanner front read a code" in shown  # the catalog text with the record's fields
    assert "crypto tail of the" in shown


def test_journalctl_recipes_in_the_operations_guide_work(configured: Machine) -> None:
    """Every `journalctl` line of docs/operations.md's recipes runs as written (except -f,
    which follows forever), and the one about a КИ finds the verdict."""
    ensure_started(configured)
    if not configured.journal("MARKD_EVENT=verdict"):
        configured.scan("front", WATER)
        configured.wait("a verdict", lambda: bool(configured.journal("MARKD_EVENT=verdict")))
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    block = guide.split("<!-- recipes:", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    recipes = [line.split("  #")[0].strip() for line in block.splitlines()]
    recipes = [r for r in recipes if r.startswith("journalctl ") and " -f" not in r]
    assert len(recipes) >= 10
    for recipe in recipes:
        result = configured.sh(f"{recipe} --no-pager", check=False)
        assert result.returncode == 0, f"{recipe}: {result.stderr}"
        assert not result.stderr.strip(), f"{recipe}: {result.stderr}"
        if "MARKD_KI=" in recipe:
            assert WATER_KI in result.stdout


def test_reload_applies_a_new_scanner_without_dropping_the_running_one(
    configured: Machine,
) -> None:
    before = ensure_started(configured)
    configured.write(
        "/etc/markd/markd.toml.d/50-side.toml",
        '[scanners.side]\nurl = "serial:///run/markd-test/side?baudrate=9600&terminator=cr"\n',
    )
    reload = configured.run("systemctl", "reload", "markd", check=False)
    assert reload.returncode == 0, reload.stderr + configured.journal_tail()
    after = configured.show("markd", "MainPID", "ActiveState", "NRestarts")
    assert after["MainPID"] == before["MainPID"] and after["ActiveState"] == "active"
    (reloaded,) = configured.journal("MARKD_EVENT=service-reloaded")
    assert reloaded["MARKD_SCANNERS_KEPT"] == "front"
    assert reloaded["MARKD_SCANNERS_STARTED"] == "side"
    configured.wait(
        "scanner side present",
        lambda: "side ok" in configured.show("markd", "StatusText")["StatusText"],
    )
    # The change is in force: the new scanner's scans are checked.
    configured.scan("side", DAIRY)
    configured.wait(
        "a verdict from side",
        lambda: bool(configured.journal("MARKD_EVENT=verdict", "MARKD_SCANNER=side")),
    )
    (side,) = configured.journal("MARKD_EVENT=verdict", "MARKD_SCANNER=side")
    assert side["MARKD_KI"] == DAIRY_KI
    # front was never closed: no absent/present record for it after the start.
    assert len(configured.journal("MARKD_EVENT=scanner-present", "MARKD_SCANNER=front")) == 1


def test_a_bad_configuration_fails_the_reload_and_changes_nothing(configured: Machine) -> None:
    before = ensure_started(configured)
    configured.write("/etc/markd/markd.toml.d/90-broken.toml", "[check]\nmode = 'guess'\n")
    try:
        reload = configured.run("systemctl", "reload", "markd", check=False)
    finally:
        configured.run("rm", "-f", "/etc/markd/markd.toml.d/90-broken.toml")
    assert reload.returncode != 0
    state = configured.show("markd", "MainPID", "ActiveState", "SubState")
    assert state["MainPID"] == before["MainPID"]
    assert (state["ActiveState"], state["SubState"]) == ("active", "running")
    (refused,) = configured.journal("MARKD_EVENT=reload-refused")
    assert "90-broken.toml" in refused["MARKD_PROBLEMS"] and "guess" in refused["MARKD_PROBLEMS"]
    assert refused["MESSAGE_ID"] == MESSAGE_IDS["reload-refused"]


def test_a_hung_loop_is_killed_by_the_watchdog_and_restarted(configured: Machine) -> None:
    before = ensure_started(configured)
    configured.run("systemctl", "kill", "--kill-who=main", "--signal=SIGUSR2", "markd")
    configured.wait("the test hook", lambda: bool(configured.journal("MARKD_EVENT=test-hook")))
    configured.wait(
        "a restart after the watchdog timeout",
        lambda: (
            configured.show("markd", "NRestarts")["NRestarts"] == str(int(before["NRestarts"]) + 1)
        ),
        timeout=WATCHDOG_SEC * 4 + 10,
    )
    after = ensure_started(configured)
    assert after["MainPID"] != before["MainPID"] and after["ActiveState"] == "active"
    manager = configured.run(
        "journalctl", "--no-pager", "-u", "markd", "-o", "cat", "SYSLOG_IDENTIFIER=systemd"
    ).stdout
    assert "Watchdog timeout" in manager
    # The restarted daemon checks again.
    count = len(configured.journal("MARKD_EVENT=verdict"))
    configured.scan("front", WATER)
    configured.wait(
        "a verdict after the restart",
        lambda: len(configured.journal("MARKD_EVENT=verdict")) > count,
    )


def test_stop_is_clean(configured: Machine) -> None:
    ensure_started(configured)
    started = time.monotonic()
    configured.run("systemctl", "stop", "markd")
    took = time.monotonic() - started
    state = configured.show("markd", "ActiveState", "Result", "ExecMainStatus")
    assert state["ActiveState"] == "inactive" and state["Result"] == "success"
    assert state["ExecMainStatus"] == "0"
    assert took < 10  # well within TimeoutStopSec=, so nothing was killed
    manager = configured.run(
        "journalctl", "--no-pager", "-u", "markd", "-o", "cat", "SYSLOG_IDENTIFIER=systemd"
    ).stdout.splitlines()
    last_stop = manager[
        len(manager)
        - manager[::-1].index("Stopping markd.service - markd marking-code check daemon...") :
    ]
    assert "markd.service: Deactivated successfully." in last_stop
    assert not [line for line in last_stop if "SIGKILL" in line or "Failed" in line]
    stopping = configured.journal("MARKD_EVENT=service-stopping")
    assert stopping and stopping[-1]["MESSAGE_ID"] == MESSAGE_IDS["service-stopping"]


def test_root_imports_a_blocklist_the_service_can_open(configured: Machine) -> None:
    """A technician's `markctl store import` as root writes the store as the service's user
    (markctl switches to the store's owner), so markd starts on it and denies the listed КИ."""
    box = configured
    box.run("systemctl", "stop", "markd")
    box.write("/var/tmp/blocklist.txt", DAIRY_KI + "\n")
    box.run("chmod", "0644", "/var/tmp/blocklist.txt")
    box.run("markctl", "store", "import", "/var/tmp/blocklist.txt", "--reason", "recalled")
    owners = box.sh("find /var/lib/markd/store -printf '%u:%g %p\\n'").stdout.splitlines()
    assert owners and all(line.startswith("markd:markd ") for line in owners), owners
    ensure_started(box)
    box.scan("side", DAIRY)
    box.wait(
        "the blocklist's verdict",
        lambda: any(
            r.get("MARKD_DECISION") == "deny"
            for r in box.journal("MARKD_EVENT=verdict", f"MARKD_KI={DAIRY_KI}")
        ),
    )


def _sha256(box: Machine, path: str) -> str:
    return box.run("sha256sum", path).stdout.split()[0]


def test_an_upgrade_keeps_the_store_the_sale_journal_and_the_changed_conffile(
    configured: Machine,
) -> None:
    box = configured
    # A sale, so that the sale journal and the virtual ККТ hold something.
    box.write(
        "/etc/markd/markd.toml.d/60-sale.toml",
        '[sale]\nmode = "attendant"\n\n[fiscal]\nurl = "emulator:///var/lib/markd/kkt"\n',
    )
    box.run("systemctl", "restart", "markd")
    ensure_started(box)
    box.run("markctl", "receipt", "add", WATER, "--price", "89.90")
    box.run("markctl", "receipt", "close", "--payment", "cash")
    journal_before = box.run("cat", "/var/lib/markd/fiscal/session.journal").stdout
    assert journal_before.strip()
    stats_before = json.loads(box.run("markctl", "store", "stats", "--json").stdout)
    conffile = _sha256(box, "/etc/markd/markd.toml")
    pid_before = box.show("markd", "MainPID")["MainPID"]

    deb = build_package(box, UPGRADE, lintian=False)
    apt_get(box, "install", "--no-install-recommends", deb)

    assert box.run("dpkg-query", "-W", "-f=${Version}", "markd").stdout == UPGRADE
    assert box.run("markd", "--version").stdout.strip() == f"markd {VERSION}"
    # The technician's file stays as it was, with nothing for dpkg to ask about.
    assert _sha256(box, "/etc/markd/markd.toml") == conffile
    leftovers = box.sh("ls /etc/markd | grep -e dpkg -e ucf || true").stdout.split()
    assert leftovers == []
    # Restarted on the new code, on the same store and journal.
    box.wait("markd restarted", lambda: box.show("markd", "MainPID")["MainPID"] != pid_before)
    ensure_started(box)
    stats_after = json.loads(box.run("markctl", "store", "stats", "--json").stdout)
    assert stats_before["blocked"]["ki"] == 1 and stats_before["sold"] == 1, stats_before
    for key in ("blocked", "sold", "version", "source"):
        assert stats_after[key] == stats_before[key], (key, stats_before, stats_after)
    journal_after = box.run("cat", "/var/lib/markd/fiscal/session.journal").stdout
    assert journal_after.startswith(journal_before)
    box.scan("side", DAIRY)
    box.wait(
        "a deny from the kept blocklist",
        lambda: (
            len(
                [
                    r
                    for r in box.journal("MARKD_EVENT=verdict", f"MARKD_KI={DAIRY_KI}")
                    if r.get("MARKD_DECISION") == "deny"
                ]
            )
            >= 2
        ),
    )


def test_purge_removes_the_user_and_configuration_and_keeps_the_store(
    configured: Machine,
) -> None:
    box = configured
    purge = apt_get(box, "purge", "markd")
    assert "kept /var/lib/markd" in purge.stdout + purge.stderr
    assert box.run("getent", "passwd", "markd", check=False).returncode != 0
    assert box.run("getent", "group", "markd", check=False).returncode != 0
    assert box.run("test", "-e", "/etc/markd", check=False).returncode != 0
    assert box.run("test", "-e", "/etc/credstore/markd.crpt-token", check=False).returncode != 0
    assert box.run("systemctl", "cat", "markd", check=False).returncode != 0
    assert box.run("test", "-e", "/usr/bin/markd", check=False).returncode != 0
    # The store and the sale journal stay until the technician asks, given to root so that no
    # later account with markd's old uid can read them.
    for kept in ("/var/lib/markd/store/data.mdb", "/var/lib/markd/fiscal/session.journal"):
        assert box.run("test", "-s", kept, check=False).returncode == 0, kept
    owners = box.sh("find /var/lib/markd -printf '%u\\n' | sort -u").stdout.split()
    assert owners == ["root"]
    assert box.run("stat", "-c", "%a", "/var/lib/markd").stdout.strip() == "700"


def test_a_reinstall_after_purge_takes_over_the_kept_store(configured: Machine) -> None:
    """The new markd may get another uid (here a system user made in between takes the old
    one): the kept store and sale journal become the new markd's, and the store opens."""
    box = configured
    box.run("useradd", "--system", "--no-create-home", "markd-test-squatter")
    try:
        apt_get(box, "install", "--no-install-recommends", f"{SHARED}/debs/markd_{UPGRADE}_all.deb")
        owners = box.sh("find /var/lib/markd -printf '%u:%g\\n' | sort -u").stdout.split()
        assert owners == ["markd:markd"]
        assert box.run("test", "-e", "/var/lib/markd/.kept-by-purge", check=False).returncode
        stats = json.loads(box.run("markctl", "store", "stats", "--json").stdout)
        assert (stats["blocked"]["ki"], stats["sold"]) == (1, 1), stats
        # Nothing configured any more (the purge took /etc/markd): it waits again.
        assert box.show("markd", "ActiveState")["ActiveState"] == "inactive"
    finally:
        box.run("userdel", "markd-test-squatter", check=False)


def test_purge_with_the_state_removes_the_store_when_asked(configured: Machine) -> None:
    box = configured
    box.run(
        "env",
        "MARKD_PURGE_STATE=yes",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "-y",
        "-q",
        "purge",
        "markd",
        timeout=300,
    )
    assert box.run("test", "-e", "/var/lib/markd", check=False).returncode != 0
    assert box.run("getent", "passwd", "markd", check=False).returncode != 0
