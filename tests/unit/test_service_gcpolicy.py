"""The daemon's garbage-collection policy (markd.service.gcpolicy): what the imports made is
out of every later collection's walk. In a process of its own: freezing would keep the test
process's objects for good."""

from __future__ import annotations

import os
import subprocess
import sys

import markd

PROBE = """
import gc
import markd.service
from markd.service.gcpolicy import freeze_imports

alive = len(gc.get_objects())
frozen = freeze_imports()
print(alive, frozen, len(gc.get_objects()))
"""


def test_after_the_freeze_a_full_collection_walks_none_of_the_imports() -> None:
    daemon_dir = os.path.dirname(os.path.dirname(markd.__file__))
    env = {**os.environ, "PYTHONPATH": daemon_dir}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True
    ).stdout
    alive, frozen, walked = (int(n) for n in out.split())

    assert frozen > 10_000 and frozen >= alive * 0.9  # the imports' objects, nearly all
    assert walked < 100  # what a full collection still walks
