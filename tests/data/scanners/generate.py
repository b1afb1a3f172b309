"""Regenerate the scanner recordings in this directory (``python generate.py``).

The recordings are synthetic: markd has no hardware in CI, so they are made by the encoders in
:mod:`markd.scanners.simulated` (keyboard_reports, pos_reports), which produce the boot
keyboard and HID-POS reports the scanners' manuals describe. Each file says in its header
what it holds and which code it must decode to; tests/unit/test_hid_recordings.py checks
that. When a real scanner's capture becomes available (``markctl scan-test --save``), add it
beside these with the same kind of header.
"""

from __future__ import annotations

from pathlib import Path

from markd.scanners.capture import write_hid_capture
from markd.scanners.hid_pos import STANDARD_REPORT_DESCRIPTOR
from markd.scanners.simulated import keyboard_reports, pos_reports

HERE = Path(__file__).parent
GS = "\x1d"
WATER = f"0104680029460908215jcmHzLmkdPML{GS}938p9E"
DAIRY = f"0104670540176099215LpGKy{GS}93dGVz"
SHOES = (
    f"0104607809596237215<(q!mLp*jIb3{GS}91FFD0{GS}92dGVzdHNpZ25hdHVyZWZvcm1hcmtkZGVtb3Rlc3Rz+/A="
)


def _write(name: str, comment: str, reports: list[tuple[bytes | None, float]], **kw: bytes) -> None:
    (HERE / name).write_text(write_hid_capture(reports, comment=comment, **kw))


def _plain(reports: list[bytes], first_delay: float = 0.0) -> list[tuple[bytes | None, float]]:
    return [(r, first_delay if i == 0 else 0.0) for i, r in enumerate(reports)]


def _usbhid_dump(descriptor: bytes, reports: list[tuple[bytes, float]]) -> str:
    """The text usbhid-dump prints: a descriptor block, then one block per report with a
    timestamp, data wrapped at 32 bytes per line, a blank line after each block."""

    def block(kind: str, stamp: float, data: bytes) -> str:
        rows = [" " + data[i : i + 32].hex(" ").upper() for i in range(0, len(data), 32)]
        return f"001:007:000:{kind:<19}{stamp:.6f}\n" + "\n".join(rows) + "\n\n"

    stamp = 1714035000.0
    out = block("DESCRIPTOR", stamp, descriptor)
    for report, delay in reports:
        stamp += delay + 0.004
        out += block("STREAM", stamp, report)
    return out


#: A vendor layout unlike the standard one: report ID 2, Byte Count, 56 data bytes, 4 reserved
#: bytes, one vendor-specific symbology byte, and no "continued" flag (each report is a whole
#: scan). Newland documents reports of this shape for its HID-POS mode (unconfirmed).
VENDOR_DESCRIPTOR = bytes.fromhex(
    "05 8c 09 02 a1 01 85 02 15 00 26 ff 00 75 08 95 01 05 01 09 3b 81 02"
    " 05 8c 09 fe 95 38 82 02 01 95 04 81 03 06 00 ff 09 01 95 01 81 02 c0"
)


def _vendor_report(data: bytes) -> bytes:
    return bytes([2, len(data)]) + data.ljust(56, b"\0") + bytes(4) + b"d"


def main() -> None:
    _write(
        "kbd-gs-ctrl.hid",
        "Keyboard mode, GS typed as Ctrl+] (left Ctrl + usage 0x30), Enter as suffix.\n"
        "expect: 0104680029460908215jcmHzLmkdPML\\u001d938p9E",
        _plain(keyboard_reports(WATER, gs="ctrl+]")),
    )
    _write(
        "kbd-gs-alt0029.hid",
        "Keyboard mode, GS typed as Alt+0029 on the keypad (two GS in this code).\n"
        "expect: " + SHOES.replace(GS, "\\u001d"),
        _plain(keyboard_reports(SHOES, gs="alt+0029")),
    )
    _write(
        "kbd-gs-f8.hid",
        "Keyboard mode, GS sent as the F8 key (usage 0x41), markd's default gs_key.\n"
        "expect: 0104670540176099215LpGKy\\u001d93dGVz",
        _plain(keyboard_reports(DAIRY, gs="f8")),
    )
    _write(
        "kbd-gs-lost.hid",
        "Keyboard mode, the scanner drops GS (no key for it): the code arrives without it.\n"
        "expect: 0104680029460908215jcmHzLmkdPML938p9E",
        _plain(keyboard_reports(WATER, gs="lost")),
    )
    _write(
        "kbd-capslock.hid",
        "Keyboard mode with Caps Lock emulation: Caps Lock pressed first, letters sent with\n"
        "inverted Shift, Caps Lock pressed again at the end. GS as Ctrl+].\n"
        "expect: 0104680029460908215jcmHzLmkdPML\\u001d938p9E",
        _plain(keyboard_reports(WATER, gs="ctrl+]", caps_lock=True)),
    )
    burst = keyboard_reports(WATER, gs="ctrl+]", rollover=True, repeat=True)
    burst += keyboard_reports(DAIRY, gs="f8", rollover=True)
    _write(
        "kbd-rollover.hid",
        "Keyboard mode, fast scanner: each key pressed before the previous is released (key\n"
        "rollover) and, in the first code, every report sent twice. Two codes in one burst.\n"
        "expect: 0104680029460908215jcmHzLmkdPML\\u001d938p9E\n"
        "expect: 0104670540176099215LpGKy\\u001d93dGVz",
        _plain(burst),
    )
    _write(
        "kbd-alt-codes.hid",
        "Keyboard mode, 'Alt code' output: every character typed as Alt + four keypad digits,\n"
        "so the OS layout cannot change it; GS is Alt+0029 like the rest.\n"
        "expect: 0104670540176099215LpGKy\\u001d93dGVz",
        _plain(keyboard_reports(DAIRY, gs="alt+0029", alt_codes=True)),
    )
    first = keyboard_reports(WATER, gs="ctrl+]")
    _write(
        "kbd-unplug.hid",
        "Keyboard mode, unplugged in the middle of a code; after the replug a whole code.\n"
        "The '# unplug' line is a simulator directive; decode drops the partial code there.\n"
        "expect: 0104670540176099215LpGKy\\u001d93dGVz",
        _plain(first[: len(first) // 2])
        + [(None, 0.0)]
        + _plain(keyboard_reports(DAIRY, gs="f8"), first_delay=0.3),
    )

    _write(
        "pos-split.hid",
        f"HID-POS, standard report layout (descriptor below): the shoes code ({len(SHOES)} "
        f"bytes) in\ntwo reports, 56 + {len(SHOES) - 56}, the first flagged 'continued'; then "
        "the water code in\n20-byte parts.\n"
        "Symbology ]d2 (GS1 DataMatrix). GS arrives as the byte 0x1D.\n"
        "expect: " + SHOES.replace(GS, "\\u001d") + "\n"
        "expect: 0104680029460908215jcmHzLmkdPML\\u001d938p9E",
        _plain(pos_reports(SHOES.encode()))
        + _plain(pos_reports(WATER.encode(), chunk=20), first_delay=0.5),
        descriptor=STANDARD_REPORT_DESCRIPTOR,
    )

    flood = keyboard_reports("Z" * 700, terminator="")
    garbage = [
        (bytes([0x00]), 0.0),  # a 1-byte report: too short to be a keyboard report
        (bytes([0, 0, 1, 1, 1, 1, 1, 1]), 0.0),  # ErrorRollOver in every slot: ignored
        (bytes.fromhex("ff ff ff ff ff ff ff ff"), 0.0),  # every modifier, reserved usages
        (bytes(8), 0.0),
    ]
    garbage += _plain(flood)
    garbage += _plain(keyboard_reports("\r" + DAIRY, gs="f8"), first_delay=0.2)
    _write(
        "garbage.hid",
        "Keyboard mode, garbage: a short report, a rollover-error report, a report with every\n"
        "modifier held, then 700 characters without Enter (a flood longer than max_length),\n"
        "Enter, and a valid code, which must still come through.\n"
        "expect: 0104670540176099215LpGKy\\u001d93dGVz",
        garbage,
    )

    dump = _usbhid_dump(
        VENDOR_DESCRIPTOR,
        [(_vendor_report(WATER.encode()), 0.0), (_vendor_report(DAIRY.encode()), 0.8)],
    )
    (HERE / "pos-vendor.usbhid-dump").write_text(dump)

    serial = (
        WATER.encode()
        + b"\r"
        + DAIRY.encode()
        + b"\r\n"
        + b"\x00\xff\xfeNOISE\r"
        + SHOES.encode()[:30]
    )
    (HERE / "serial-burst.bin").write_bytes(serial)


if __name__ == "__main__":
    main()
