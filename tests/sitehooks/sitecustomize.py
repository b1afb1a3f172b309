"""Installs markd's test hooks in a process the tests start, at interpreter start.

A test puts this directory on the child's ``PYTHONPATH`` (``process_helpers.with_test_hooks``)
together with the variable naming the hook (``MARKD_FISCAL_KILL_AT``, ``MARKD_TEST_HOOKS=1``);
:func:`markd.testing.hooks.install_from_environment` does the rest. markd's own code holds no
test hook, so nothing happens without this file.

Another ``sitecustomize`` further down the path (a distribution's) is shadowed by this one, so
it is run here too.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _run_the_shadowed_one() -> None:
    here = Path(__file__).resolve().parent
    for entry in sys.path:
        if not entry or Path(entry).resolve() == here:
            continue
        candidate = Path(entry, "sitecustomize.py")
        if candidate.is_file():
            spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", candidate)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


_run_the_shadowed_one()

from markd.testing.hooks import install_from_environment  # noqa: E402

install_from_environment()
