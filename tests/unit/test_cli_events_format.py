"""``markctl events`` lines: the gap example of docs/operations.md is what markctl prints."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from markd.cli.cmd_events import format_event
from markd.events import EventHub

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


async def test_cli_events_prints_a_gap_as_the_guide_shows() -> None:
    lines = GUIDE.read_text(encoding="utf-8").splitlines()
    command = lines.index("$ markctl events --since 7f3a9c21-219")
    shown = lines[command + 1]
    stamp = datetime.fromisoformat(shown.split(" ")[0].replace("Z", "+00:00")).timestamp()
    hub = EventHub(run="5be01f7d", clock=lambda: stamp)
    for _ in range(14):
        hub.publish("scan", {"scanner": "front", "length": 38})

    gap = await hub.subscribe(since="7f3a9c21-219").next(0.1)

    assert format_event(gap.to_json()) == shown
