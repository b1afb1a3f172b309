"""``make demo`` ends with the emulated receipt of the allowed units of both phases: mode
``direct`` and, after a reload, mode ``tspiot``."""

from __future__ import annotations

import io
import re

from markd.demo import ALL_SCANS, TSPIOT_SCRIPT, run_demo


def test_demo_sells_the_allowed_units_through_the_emulated_kkt() -> None:
    out = io.StringIO()

    assert run_demo(out) == 0

    text = out.getvalue()
    sale = text[text.index("── 3. sale") :]
    verdicts = re.findall(r"^    (ALLOW|DENY|RESCAN) +by (\S+) in [\d.]+ ms  (\S+)", text, re.M)
    assert len(verdicts) == len(ALL_SCANS)
    allowed_kis = {ki for decision, _, ki in verdicts if decision == "ALLOW"}
    added = re.findall(r"^  (\S+)  ККТ: accepted", sale, re.M)
    assert len(added) == len(set(added)) == len(allowed_kis) == 6  # each unit once
    # The units the ТС ПИоТ allowed are on the receipt too.
    tspiot_allowed = {
        ki for decision, source, ki in verdicts[-len(TSPIOT_SCRIPT) :] if decision == "ALLOW"
    }
    assert len(tspiot_allowed) == 2 and tspiot_allowed <= set(added)
    assert "receipt: sell document 3" in sale
    positions = re.findall(r"^  \d\. .*$", sale, re.M)
    assert len(positions) == 6
    for line in positions:
        assert "2003=1" in line and "2102=0" in line and "1262=030" in line
        assert "1263=26.03.2022" in line and "1264=477" in line and "1265=UUID=" in line
    # The ТС ПИоТ's offline answer carries the Local Module's instance and version to 1265.
    assert sum("&Inst=" in line for line in positions) == 1
    assert "store: every КИ recorded as sold" in sale
    assert "Local Module /cis/sell: 6 КИ accepted" in sale
    assert text.index("── 3. sale") > text.index(f"{len(TSPIOT_SCRIPT)} scans:")


def test_demo_can_sell_through_the_shtrih_emulator() -> None:
    """``make demo PRINTER=shtrih``: the same sale, spoken over protocol 1 to the Shtrih
    emulator on a pty."""
    out = io.StringIO()

    assert run_demo(out, printer="shtrih") == 0

    sale = out.getvalue()[out.getvalue().index("── 3. sale") :]
    assert re.search(r"^ККТ shtrih:///dev/pts/\d+$", sale, re.M)
    assert len(re.findall(r"^  (\S+)  ККТ: accepted", sale, re.M)) == 6
    assert "receipt: sell document 3 (shift 1), fiscal sign" in sale
    positions = re.findall(r"^  \d\. .*$", sale, re.M)
    assert len(positions) == 6 and all("1265=UUID=" in line for line in positions)
    assert "store: every КИ recorded as sold" in sale
