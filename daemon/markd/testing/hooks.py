"""Test hooks a process installs at start, as its environment asks.

The tests put ``tests/sitehooks`` on the ``PYTHONPATH`` of the processes they start (the
daemon, ``markctl sell``); its ``sitecustomize`` calls :func:`install_from_environment` before
anything else runs, which installs

* the kill points (:mod:`markd.testing.killpoints`) when ``MARKD_FISCAL_KILL_AT`` names a step,
* the SIGUSR2 hang (:mod:`markd.testing.hang`) when ``MARKD_TEST_HOOKS=1``.

Production code never imports this package; without the ``sitecustomize`` on the path the
variables mean nothing.
"""

from __future__ import annotations

import os

from markd.testing import hang, killpoints


def install_from_environment(environ: dict[str, str] | None = None) -> list[str]:
    """Install the hooks ``environ`` (default: this process's) asks for; their names."""
    env = os.environ if environ is None else environ
    installed = []
    if env.get(killpoints.KILL_ENV):
        killpoints.install()
        installed.append("kill-points")
    if env.get(hang.TEST_HOOKS_ENV) == "1":
        hang.install()
        installed.append("hang")
    return installed
