"""Compatibility fronts: listeners that speak the protocols existing tills already speak, so a
till checks its marked goods through markd without a change on its side.

* :mod:`markd.fronts.mark_unit` — the Mark Unit API that Frontol tills call
  (``docs/mark_unit.md``).
"""
