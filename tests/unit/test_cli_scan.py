"""``markctl decode`` and ``markctl scan-test`` (markd.cli.cmd_scan), run in-process: decode on
the recordings, scan-test against scanners on the simulated USB bus and on a pty."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DAIRY, WATER, PtyPair
from markd.cli import markctl
from markd.scanners.simulated import (
    SimulatedDevice,
    SimulatedInterface,
    SimulatedUsb,
    keyboard_reports,
    pos_reports,
)
from markd.scanners.usb_common import use_backend

DATA = Path(__file__).resolve().parents[1] / "data" / "scanners"
MARKCTL = [sys.executable, "-m", "markd.cli.markctl"]


def run_markctl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*MARKCTL, *args], input=stdin, capture_output=True, timeout=60)


# -- decode -----------------------------------------------------------------------------------


def test_decode_prints_only_the_codes_with_raw_gs() -> None:
    result = run_markctl("decode", "--hid-kbd", str(DATA / "kbd-gs-ctrl.hid"))
    assert result.returncode == 0
    assert result.stdout == WATER.encode() + b"\n"
    assert result.stderr == b""


def test_decode_escape_and_several_codes() -> None:
    result = run_markctl("decode", "--escape", "--hid-kbd", str(DATA / "kbd-rollover.hid"))
    assert result.stdout.decode().splitlines() == [
        WATER.replace("\x1d", "\\u001d"),
        DAIRY.replace("\x1d", "\\u001d"),
    ]


def test_decode_output_goes_straight_into_markctl_parse() -> None:
    decoded = run_markctl("decode", "--escape", "--hid-pos", str(DATA / "pos-split.hid"))
    parsed = run_markctl("parse", "-", "--json", stdin=decoded.stdout)
    assert parsed.returncode == 0
    assert parsed.stdout.count(b'"ki"') == 2


def test_decode_gs_key_option() -> None:
    result = run_markctl("decode", "--gs-key", "none", "--hid-kbd", str(DATA / "kbd-gs-f8.hid"))
    assert result.stdout == DAIRY.replace("\x1d", "").encode() + b"\n"


def test_decode_reports_problems_on_stderr_only() -> None:
    result = run_markctl("decode", "--hid-kbd", str(DATA / "garbage.hid"))
    assert result.returncode == 0
    assert result.stdout == DAIRY.encode() + b"\n"
    err = result.stderr.decode()
    # The capture's flood is 700 characters before its Enter: all of them are counted, not
    # only the 513 held when max_length (512) was crossed.
    assert "line 5: unreadable report" in err and "dropped 700 bytes" in err


def test_decode_serial_and_stdin() -> None:
    data = (DATA / "serial-burst.bin").read_bytes()
    result = run_markctl("decode", "--serial", "-", stdin=data)
    assert result.stdout.splitlines()[:2] == [WATER.encode(), DAIRY.encode()]
    assert b"30 bytes at the end without a terminator" in result.stderr
    result = run_markctl("decode", "--serial", "-", "--terminator", "none", stdin=b"abc")
    assert result.stdout == b"abc\n"


def test_decode_usbhid_dump_output() -> None:
    result = run_markctl("decode", "--hid-pos", str(DATA / "pos-vendor.usbhid-dump"))
    assert result.stdout.splitlines() == [WATER.encode(), DAIRY.encode()]


def test_decode_bad_input_exit_statuses(tmp_path: Path) -> None:
    bad = tmp_path / "bad.hid"
    bad.write_text("00 00 zz\n")
    result = run_markctl("decode", "--hid-kbd", str(bad))
    assert result.returncode == 2 and b"line 1: not hex" in result.stderr
    assert result.stdout == b""
    result = run_markctl("decode", "--hid-kbd", str(tmp_path / "missing.hid"))
    assert result.returncode == 1
    binary = tmp_path / "binary.hid"
    binary.write_bytes(b"\xff\xfe\x00")
    assert run_markctl("decode", "--hid-pos", str(binary)).returncode == 2
    baddesc = tmp_path / "desc.hid"
    baddesc.write_text("# descriptor: 05 01 09 06\n02 00\n")
    result = run_markctl("decode", "--hid-pos", str(baddesc))
    assert result.returncode == 2 and b"Decoded Data" in result.stderr


def test_decode_needs_exactly_one_source() -> None:
    assert run_markctl("decode").returncode == 2
    both = run_markctl("decode", "--serial", "a", "--hid-kbd", "b")
    assert both.returncode == 2


# -- scan-test --------------------------------------------------------------------------------


@pytest.fixture
def bus() -> Iterator[SimulatedUsb]:
    sim = SimulatedUsb()
    with use_backend(sim):
        yield sim


def scan_test(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = markctl.main(["scan-test", *args])
    return status, capsys.readouterr().out


def test_scan_test_keyboard_with_ctrl_gs(
    bus: SimulatedUsb, capsys: pytest.CaptureFixture[str]
) -> None:
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61, serial="K1"))
    device.type_text(WATER, gs="ctrl+]")
    status, out = scan_test("hid-kbd://0c2e:0b61", "--timeout", "10", capsys=capsys)
    assert status == 0
    assert "mode      USB HID keyboard" in out
    assert "device    present: opened USB 0c2e:0b61 serial K1" in out
    assert "00 00 27 00 00 00 00 00" in out  # the raw reports are shown
    assert "text      0104680029460908215jcmHzLmkdPML<GS>938p9E" in out
    assert "GS        1, typed as Ctrl+] ×1" in out
    assert "КИ 0104680029460908215jcmHzLmkdPML" in out
    assert "keyboard mode works" in out
    # The kernel driver is given back when scan-test ends.
    assert device.kernel_driver == {0: True}


def test_scan_test_says_when_gs_is_missing(
    bus: SimulatedUsb, capsys: pytest.CaptureFixture[str]
) -> None:
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    device.type_text(WATER, gs="lost")
    device.type_text("0104650117240408211234593abcd93Zjqw", gs="lost")
    status, out = scan_test("hid-kbd://0c2e:0b61", "--count", "2", capsys=capsys)
    assert status == 0
    assert out.count("GS        none arrived") == 2
    assert out.count("GS missing: switch the scanner to HID-POS or serial mode") == 2
    assert "lost-gs-recovered" in out and "ambiguous-lost-gs" in out


def test_scan_test_hid_pos_save_then_decode(
    bus: SimulatedUsb, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    device = bus.add(SimulatedDevice(0x1EAB, 0x0010, kind="hid-pos"))
    device.queue(*pos_reports(WATER.encode() * 2, chunk=30))
    device.queue(*pos_reports(DAIRY.encode()), delay=0.2)
    capture = tmp_path / "pos.hid"
    status, out = scan_test(
        "hid-pos://1eab:0010", "--count", "2", "--save", str(capture), capsys=capsys
    )
    assert status == 0
    assert "symbology ]d2" in out and "as the byte 0x1D" in out
    assert "raw       3 reports:" in out
    assert f"saved     4 reads to {capture}" in out
    text = capture.read_text()
    assert "# descriptor: 05 8c" in text and "# delay 0.2" in text
    decoded = run_markctl("decode", "--hid-pos", str(capture))
    assert decoded.stdout.splitlines() == [WATER.encode() * 2, DAIRY.encode()]


def test_scan_test_keyboard_save_round_trip(
    bus: SimulatedUsb, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    device.queue(*keyboard_reports(DAIRY, gs="alt+0029", rollover=True))
    capture = tmp_path / "kbd.hid"
    status, _ = scan_test("hid-kbd://0c2e:0b61", "--save", str(capture), capsys=capsys)
    assert status == 0
    decoded = run_markctl("decode", "--hid-kbd", str(capture))
    assert decoded.stdout == DAIRY.encode() + b"\n"


def test_scan_test_times_out_and_reports_absence(
    bus: SimulatedUsb, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    status, out = scan_test("hid-kbd://0c2e:0b61", "--timeout", "0.5", capsys=capsys)
    assert status == 1
    assert "device    absent: cannot open 0c2e:0b61: no USB device 0c2e:0b61" in out
    assert "result    0 of 1 scan(s) within 0.5 s" in out
    assert time.monotonic() - started < 5


def test_scan_test_busy_device_says_to_stop_markd(
    bus: SimulatedUsb, capsys: pytest.CaptureFixture[str]
) -> None:
    from markd.scanners import open_scanner

    bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    import asyncio

    async def hold_and_test() -> tuple[int, str]:
        queue: asyncio.Queue = asyncio.Queue()
        with open_scanner("daemon", "hid-kbd://0c2e:0b61") as daemon:
            daemon.start(asyncio.get_running_loop(), queue)
            await asyncio.wait_for(queue.get(), 5)
            return await asyncio.to_thread(
                markctl.main, ["scan-test", "hid-kbd://0c2e:0b61", "--timeout", "0.5"]
            ), ""

    status, _ = asyncio.run(hold_and_test())
    out = capsys.readouterr().out
    assert status == 1
    assert "busy" in out and "stop it before markctl scan-test" in out


def test_scan_test_serial_on_a_pty(pty_pair: PtyPair, capsys: pytest.CaptureFixture[str]) -> None:
    done = threading.Event()

    def type_codes() -> None:
        # pyserial flushes input on open, so keep sending until scan-test has what it needs.
        while not done.wait(0.2):
            os.write(pty_pair.master, DAIRY.encode() + b"\r")

    writer = threading.Thread(target=type_codes, daemon=True)
    writer.start()
    try:
        status, out = scan_test(f"serial://{pty_pair.path}", "--timeout", "10", capsys=capsys)
    finally:
        done.set()
        writer.join()
    assert status == 0
    assert "mode      serial" in out
    assert "GS        1, as the byte 0x1D" in out
    assert "advice    none: this scanner is set up well" in out


def test_scan_test_by_configured_name(
    tmp_path: Path, bus: SimulatedUsb, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "markd.toml"
    config.write_text(
        '[scanners.front]\nurl = "hid-kbd://0c2e:0b61?gs_key=f2"\n'
        '[scanners.side]\nurl = "virtual://side"\n'
    )
    device = bus.add(SimulatedDevice(0x0C2E, 0x0B61))
    device.type_text(DAIRY, gs="f2")
    status, out = scan_test("front", "--config", str(config), capsys=capsys)
    assert status == 0 and "scanner   front: hid-kbd://0c2e:0b61?gs_key=f2" in out
    assert "typed as F2 ×1" in out

    status = markctl.main(["scan-test", "--config", str(config)])
    err = capsys.readouterr().err
    assert status == 2 and "2 scanners are configured (front, side)" in err
    status = markctl.main(["scan-test", "nope", "--config", str(config)])
    assert status == 2 and "no scanner 'nope'" in capsys.readouterr().err


def test_scan_test_rejects_a_bad_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert markctl.main(["scan-test", "hid-kbd://0c2e:0b61?gs_key=f99"]) == 2
    assert "gs_key" in capsys.readouterr().err


def test_escape_helper() -> None:
    from markd.cli.cmd_scan import escape, show_text

    assert escape(b"a\x1db\r") == b"a\\u001db\\u000d"
    assert show_text(b"a\x1db\x00\xff") == "a<GS>b\\x00\\xff"
    # parse() reads the escaped form back into the same code.
    from markd.codes import parse

    assert parse(escape(WATER.encode()).decode()).km == WATER


def test_decode_in_process_stdout_is_bytes_only() -> None:
    out = io.BytesIO()
    err = io.StringIO()
    from markd.cli import cmd_scan

    parser = markctl.build_parser()
    args = parser.parse_args(["decode", "--hid-kbd", str(DATA / "kbd-gs-alt0029.hid")])
    assert cmd_scan.run_decode(args, stdout=out, stderr=err) == 0
    assert out.getvalue().count(b"\x1d") == 2 and err.getvalue() == ""


def test_decode_examples_in_the_operations_guide_are_true() -> None:
    """Every ``$ markctl decode`` line in docs/operations.md prints what the guide says."""
    root = Path(__file__).resolve().parents[2]
    lines = (root / "docs" / "operations.md").read_text().splitlines()
    start = lines.index(
        '<!-- examples: each "$ markctl decode" line runs in tests/unit/test_cli_scan.py -->'
    )
    block = lines[start + 2 : lines.index("```", start + 2)]
    examples: list[tuple[list[str], list[str]]] = []
    for line in block:
        if line.startswith("$ markctl "):
            examples.append((line[len("$ markctl ") :].split(), []))
        else:
            examples[-1][1].append(line)
    assert len(examples) >= 3
    for args, want in examples:
        result = subprocess.run(
            [*MARKCTL, *args], cwd=root, capture_output=True, timeout=60, text=True
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == want, args


def test_scan_test_keyboard_with_a_report_id_saves_its_descriptor_for_decode(
    bus: SimulatedUsb, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A keyboard interface that is not a boot interface: report ID 1 ahead of the keys, a
    # consumer-control report 2 beside them. The capture keeps the descriptor, so markctl
    # decode strips the ID as the daemon does.
    descriptor = bytes.fromhex(
        "05 01 09 06 a1 01 85 01 05 07 19 e0 29 e7 15 00 25 01 75 01 95 08 81 02"
        " 95 01 75 08 81 01 95 06 75 08 15 00 25 65 05 07 19 00 29 65 81 00 c0"
        " 05 0c 09 01 a1 01 85 02 15 00 26 ff 03 19 00 2a ff 03 75 10 95 01 81 00 c0"
    )
    device = bus.add(
        SimulatedDevice(
            0x0C2E, 0x0B61, interfaces=[SimulatedInterface("keyboard", descriptor, boot=False)]
        )
    )
    device.queue(b"\x02\xe9\x00", *(b"\x01" + r for r in keyboard_reports(DAIRY, gs="f8")))
    capture = tmp_path / "kbd-id.hid"
    status, out = scan_test("hid-kbd://0c2e:0b61", "--save", str(capture), capsys=capsys)
    assert status == 0 and "text      0104670540176099215LpGKy<GS>93dGVz" in out
    assert "# descriptor: 05 01 09 06 a1 01 85 01" in capture.read_text()
    decoded = run_markctl("decode", "--hid-kbd", str(capture))
    assert decoded.stdout == DAIRY.encode() + b"\n", decoded.stderr
