"""``make demo`` ends with the emulated receipt of the allowed units."""

from __future__ import annotations

import io
import re

from markd.demo import SCRIPT, run_demo


def test_demo_sells_the_allowed_units_through_the_emulated_kkt() -> None:
    out = io.StringIO()

    assert run_demo(out) == 0

    text = out.getvalue()
    sale = text[text.index("sale of the allowed units") :]
    allowed_kis = {line.split()[2] for line in text.splitlines() if line.startswith("    ALLOW")}
    added = re.findall(r"^  (\S+)  ККТ: accepted", sale, re.M)
    assert len(added) == len(set(added)) == len(allowed_kis) == 4  # each unit once
    assert "receipt: sell document 3" in sale
    positions = re.findall(r"^  \d\. .*$", sale, re.M)
    assert len(positions) == 4
    for line in positions:
        assert "2003=1" in line and "2102=0" in line and "1262=030" in line
        assert "1263=26.03.2022" in line and "1264=477" in line and "1265=UUID=" in line
    assert "store: every КИ recorded as sold" in sale
    assert "Local Module /cis/sell: 4 КИ accepted" in sale
    assert text.index("sale of the allowed units") > text.index(f"{len(SCRIPT)} scans:")
