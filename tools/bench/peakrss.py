"""A child's own peak RSS: run ``python -m MODULE`` so that, as it exits, it writes its
``VmHWM`` (the high-water mark of resident memory of the process after its exec) to a file.

``ru_maxrss`` from ``wait4`` is no good for this: it also counts the pages the child shared
with its parent between the fork and the exec, so a child of a large process (a benchmark, a
test run) looks as large as its parent. Used by ``tools/bench/store.py`` and the memory-bound
tests (tests/integration/test_store_bounds.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: The child's program: ``-c WRAPPER MODULE ARGS…``; ``$MARKD_PEAK_FILE`` names the output.
WRAPPER = """
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                with open(os.environ["MARKD_PEAK_FILE"], "w") as out:
                    out.write(line.split()[1])
atexit.register(_peak)
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def peak_command(
    module: str, arguments: list[str], peak_file: Path
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run ``python -m module arguments…`` and leave
    its peak RSS in ``peak_file``."""
    peak_file.unlink(missing_ok=True)
    command = [sys.executable, "-c", WRAPPER, module, *arguments]
    return command, {**os.environ, "MARKD_PEAK_FILE": str(peak_file)}


def read_peak_kib(peak_file: Path) -> int:
    """The peak RSS the child wrote, in KiB (0 if it wrote none: it died before exiting)."""
    try:
        return int(peak_file.read_text() or 0)
    except (OSError, ValueError):
        return 0
