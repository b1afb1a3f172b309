"""The daemon process's garbage-collection policy: no full collection walks what imports made.

CPython's cyclic collector stops every thread while it runs, and a full (generation 2)
collection walks every container object alive. In the daemon most of them are what the
imports made — modules, classes, functions, about 25,000 objects — and none of them ever
becomes garbage. In the soak benchmark those walks took 6–16 ms each, several a minute: most
of markd's own scans above 5 ms (``docs/performance.md``, "The tail").

:func:`freeze_imports`, called by the daemon's entry point once everything is imported and
before the service starts: one collection, then ``gc.freeze()`` moves every object alive into
a permanent generation the collector no longer walks. Full collections then walk only what
the running daemon made (the store, the chain, connections, scans in flight). What a start
and a reload build is left to the collector as before, so a chain retired by a reload is still
collected. Not for library use: a test process would freeze its own objects for good.
"""

from __future__ import annotations

import gc


def freeze_imports() -> int:
    """Collect once, then exempt every object alive from later collections; the number of
    objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
