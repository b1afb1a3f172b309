"""The Mark Unit API front: Frontol tills check their marked goods through markd unchanged
(``docs/mark_unit.md``).

* :mod:`~markd.fronts.mark_unit.protocol` — documents and answers as data (no I/O);
* :mod:`~markd.fronts.mark_unit.desk` — check, begin, commit, cancel; the repeat cache;
* :mod:`~markd.fronts.mark_unit.server` — the listener (h11), its limits and allow-list.
"""

from markd.fronts.mark_unit.desk import MarkUnitDesk, TillBackend, TillCheck
from markd.fronts.mark_unit.server import MarkUnitServer

__all__ = ["MarkUnitDesk", "MarkUnitServer", "TillBackend", "TillCheck"]
