"""The USB scanner backends over pyusb's real libusb1 backend, devices emulated by umockdev.

umockdev's preload library must be in the process from its start, so these tests run
pytest again, under ``umockdev-wrapper``, on:

* the scanner contract suite (tests/integration/test_scanner_contract.py), whose
  ``hid-kbd-libusb`` and ``hid-pos-libusb`` backends exist only there: every contract test,
  for both kinds, unchanged, with the scanner's ``/dev/bus/usb`` node answering libusb's
  usbdevfs ioctls (tests/umockdev_usb.py);
* every HID recording replayed by umockdev's own usbmon player
  (tests/umockdev/replay_recordings.py);
* one script of pyusb calls, success and failure, over the simulated bus and over the real
  path, whose outcomes must be the same (tests/umockdev/parity.py).

Each inner test must pass; the only skips allowed are the recordings the player cannot
express (``NOT_REPLAYABLE``, with its reason). Without umockdev (Debian ``umockdev``,
``gir1.2-umockdev-1.0``, ``python3-gi``) the tests skip, and fail with ``CI=true``, where
``make test`` installs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import in_ci, required_tool

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "tests" / "integration" / "test_scanner_contract.py"
REPLAY = ROOT / "tests" / "umockdev" / "replay_recordings.py"


def run_inner(tmp_path: Path, *args: str) -> dict[str, str]:
    """Run pytest under umockdev-wrapper; {test id: "passed" | "failed" | "skipped: why"}."""
    wrapper = required_tool("umockdev-wrapper", "umockdev")
    report = tmp_path / "inner.xml"
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [wrapper, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--junitxml={report}", "-o", "junit_family=xunit1", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if not report.exists():
        pytest.fail(
            f"the inner run wrote no report (exit {done.returncode}):\n"
            f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name", "")
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes[name] = "failed"
        elif (skipped := case.find("skipped")) is not None:
            outcomes[name] = "skipped: " + (skipped.get("message") or "")
        else:
            outcomes[name] = "passed"
    failed = [n for n, o in outcomes.items() if o == "failed"]
    assert not failed, f"inner failures {failed}:\n{done.stdout[-6000:]}"
    return outcomes


def inner_unavailable() -> str | None:
    """Why a process under umockdev-wrapper cannot emulate devices, or None if it can."""
    wrapper = required_tool("umockdev-wrapper", "umockdev")
    code = (
        "import sys; sys.path.insert(0, 'tests'); import umockdev_usb; "
        "print(umockdev_usb.available() or '')"
    )
    done = subprocess.run(
        [wrapper, sys.executable, "-c", code],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return f"a process under umockdev-wrapper failed: {done.stderr.strip()[-500:]}"
    return done.stdout.strip() or None


def missing(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}; CI=true, where make test installs it")
    pytest.skip(reason)


def test_the_scanner_contract_holds_over_the_real_libusb_backend(tmp_path: Path) -> None:
    from test_scanner_contract import LIBUSB_BACKENDS, TestScannerContract

    outcomes = run_inner(tmp_path, str(CONTRACT), "-k", "libusb")
    names = [n for n in dir(TestScannerContract) if n.startswith("test_")]
    want = {f"{n}[{backend}]" for n in names for backend in LIBUSB_BACKENDS}
    if not outcomes:
        # Collected nothing: the libusb backends exist only where umockdev can run. Ask a
        # process under the preload why; if it says it can, collecting nothing is a bug.
        reason = inner_unavailable()
        if reason is not None:
            missing(reason)
        pytest.fail("umockdev is usable, yet the contract suite collected no libusb backend")
    assert set(outcomes) == want, sorted(set(outcomes) ^ want)
    assert all(o == "passed" for o in outcomes.values()), outcomes


def test_every_recording_replays_through_umockdevs_own_player(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPLAY.parent))
    try:
        from replay_recordings import NOT_REPLAYABLE, RECORDINGS
    finally:
        sys.path.remove(str(REPLAY.parent))

    outcomes = run_inner(tmp_path, str(REPLAY))
    reasons = {o for o in outcomes.values() if o.startswith("skipped: ")}
    if (
        outcomes
        and all("umockdev" in r and "player" not in r for r in reasons)
        and len(reasons) == 1
        and all(o.startswith("skipped") for o in outcomes.values())
    ):
        missing(sorted(reasons)[0].removeprefix("skipped: "))
    want = {f"test_recording_replays_through_libusb[{p.name}]" for p in RECORDINGS}
    want.add("test_a_bench_capture_goes_through_extract_and_replays")
    assert set(outcomes) == want, sorted(set(outcomes) ^ want)
    for name, outcome in outcomes.items():
        recording = name.partition("[")[2].rstrip("]")
        if recording in NOT_REPLAYABLE:
            assert outcome.startswith("skipped"), (name, outcome)
        else:
            assert outcome == "passed", (name, outcome)
    assert sum(o == "passed" for o in outcomes.values()) >= 10


def test_the_simulated_bus_and_the_real_libusb_path_answer_pyusb_alike(tmp_path: Path) -> None:
    outcomes = run_inner(tmp_path, str(ROOT / "tests" / "umockdev" / "parity.py"))
    names = {
        "test_the_simulated_bus_answers_like_the_real_libusb_path",
        "test_an_open_idle_scanner_costs_little_cpu_on_the_real_path",
    }
    skipped = [o for o in outcomes.values() if o.startswith("skipped")]
    if skipped:
        missing(skipped[0].removeprefix("skipped: "))
    assert outcomes == dict.fromkeys(names, "passed"), outcomes
