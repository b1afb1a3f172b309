"""The store's lookup in C, when it can be used safely.

:meth:`markd.store.Store.lookup` spends most of its budget in Python around py-lmdb: a
transaction object per call, several method calls, attribute lookups. The C module
``markd.store._lookup`` (built from ``_lookup.c`` at install time) does one lookup's LMDB
work in one call and keeps its read transaction between calls (reset and renewed, the cheap
reuse LMDB offers).

LMDB must not be opened twice in one process, so the C reader borrows the ``MDB_env`` of
the py-lmdb :class:`lmdb.Environment` the store already holds. That needs py-lmdb's private
object layout, so :func:`attach` returns a reader only when

* the C module was built (a machine without a compiler gets the Python path);
* py-lmdb is the CPython build of a version whose layout was checked
  (:data:`CHECKED_PYLMDB`);
* the C side recognises the Environment (see ``_lookup.c``: the engine-table pointer must
  equal one of the tables py-lmdb exports), before it touches anything;
* ``MARKD_STORE_FASTPATH`` is not ``0`` (an escape hatch for a technician, and for the
  tests that compare both paths).

Otherwise it returns ``None`` and the store uses the Python path, which gives the same
answers (``tests/unit/test_store_fastpath.py`` checks that on random stores).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import lmdb

#: py-lmdb versions whose object layout ``_lookup.c`` was checked against.
CHECKED_PYLMDB = ("3.0.",)

_loaded: bool | None = None


def _module() -> Any | None:
    global _loaded
    try:
        from markd.store import _lookup
    except ImportError:
        return None
    if _loaded is None:
        cpython = sys.modules.get("lmdb.cpython")
        _loaded = False
        if cpython is not None and getattr(cpython, "Environment", None) is lmdb.Environment:
            try:
                _loaded = _lookup.load_engines(cpython.__file__) > 0
            except ImportError:
                _loaded = False
    return _lookup if _loaded else None


def why_not() -> str | None:
    """Why :func:`attach` would return ``None`` (``None``: it would not)."""
    if os.environ.get("MARKD_STORE_FASTPATH", "1") == "0":
        return "disabled by MARKD_STORE_FASTPATH=0"
    if not lmdb.__version__.startswith(CHECKED_PYLMDB):
        return f"py-lmdb {lmdb.__version__} is not a checked version ({', '.join(CHECKED_PYLMDB)})"
    try:
        from markd.store import _lookup  # noqa: F401
    except ImportError:
        return "the C module markd.store._lookup was not built"
    if _module() is None:
        return "py-lmdb is not its CPython build, or exports no LMDB engine"
    return None


def attach(env: lmdb.Environment) -> Any | None:
    """A C reader on ``env``, or ``None`` when the Python path must be used (see above)."""
    if why_not() is not None:
        return None
    module = _module()
    try:
        return module.attach(env, lmdb.Environment)  # type: ignore[union-attr]
    except (TypeError, RuntimeError):
        return None
