"""The one place where markd and markctl turn an error into a message and an exit status.

Commands do not catch :class:`~markd.errors.MarkdError` to print it: they let it out, and the
program's ``main`` (``markctl``'s dispatch, ``markd``'s daemon and demo) hands it to
:func:`report`. A command still catches what is part of its own result (``markctl parse``
reports each bad code and goes on; ``markctl printer status`` lists an unreachable printer in
its report).

On stderr, for a person:

* a :class:`~markd.errors.ConfigError`: each problem on its own line,
  ``PROG: FILE:LINE: [section] key: what is wrong`` (docs/configuration.md shows them);
* any other error: ``PROG: REASON: MESSAGE``, the reason being the code the docs and the JSON
  output use (``printer-unavailable``, ``bad-index`` …).

On stdout, with ``json_output``, also ``{"error": {"reason": …, "message": …}}`` for the
commands whose ``--json`` promises a JSON answer even on failure (``markctl store``).

The exit status follows markctl's convention: 2 when the input was wrong or the failure is
permanent — an error whose ``permanent`` attribute is true (a bad configuration, a missing
secret, a store the user may not open) or whose reason is one of ``input_reasons`` (markctl
passes :data:`INPUT_REASONS`) — and 1 for any other failure. ``markd`` passes no input reasons:
for the daemon 2 means "a person must fix something", the status its unit does not restart on
(``RestartPreventExitStatus=2``).
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import TextIO

from markd.errors import UNTRUSTED_SYNC_REASONS, ConfigError, MarkdError
from markd.text import printable_json

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
#: A fleet sync refused as untrusted (markctl store sync): nothing changed, a person must look.
EXIT_UNTRUSTED = 3

#: Reasons that mean "what you gave is wrong" rather than "it failed": markctl exits 2 on them.
INPUT_REASONS = frozenset(
    {
        # markctl store: the file, key or snapshot given was refused
        "bad-rows",
        "bad-file",
        "bad-key",
        "bad-text",
        "duplicate-delta",
        "out-of-order-delta",
        "stale-snapshot",
        "bad-index",
        "bad-url",
        "bad-version",
        "empty-snapshot",
        # markctl events --kinds: the daemon knows no such kind
        "unknown-kind",
        # markctl scan-test SCANNER: neither a usable URL nor a configured scanner's name
        "bad-scanner-url",
        "unknown-scanner",
    }
)


def exit_status(exc: MarkdError, input_reasons: Collection[str] = ()) -> int:
    """2 for a permanent error or an input reason, 3 for an untrusted sync, else 1."""
    if exc.reason in UNTRUSTED_SYNC_REASONS:
        return EXIT_UNTRUSTED
    if exc.permanent or exc.reason in input_reasons:
        return EXIT_BAD_INPUT
    return EXIT_FAILED


def report(
    exc: MarkdError,
    program: str,
    *,
    input_reasons: Collection[str] = (),
    json_output: bool = False,
    stderr: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Print ``exc`` for ``program`` (``markctl``, ``markd``, ``markd demo``) as the module
    docstring says, and return the exit status."""
    err = stderr if stderr is not None else sys.stderr
    if json_output:
        out = stdout if stdout is not None else sys.stdout
        print(printable_json({"error": exc.as_dict()}, ensure_ascii=False), file=out)
    if isinstance(exc, ConfigError):
        for problem in exc.problems:
            print(f"{program}: {problem}", file=err)
    else:
        print(f"{program}: {exc.reason}: {exc.message}", file=err)
    return exit_status(exc, input_reasons)
