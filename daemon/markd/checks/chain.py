"""Check chains: the order in which sources are asked about a parsed code.

The walking skeleton has one chain, :class:`StoreOnlyChain` (``[check] mode = "store-only"``):
it consults only markd's own LMDB blocklist. It is a development and demo mode: a code that is
not blocked locally is allowed without asking Честный ЗНАК, and the verdict text says so. The
online / Local Module / ТС ПИоТ chains replace it with the same ``decide`` signature.

Blocklist first (domain.md §6.4): a local block is a veto no remote answer can lift, and a
lookup costs microseconds, so it also spares a network call for a unit we refuse anyway.
"""

from __future__ import annotations

import time

from markd.checks.verdict import Decision, Source, Verdict
from markd.codes import REASONS, MarkingCode
from markd.errors import StoreError
from markd.store import Store

ALLOW_STORE_ONLY_RU = "Разрешено (режим разработки: проверен только локальный стоп-лист)"
DENY_BLOCKED_RU = "Продажа запрещена: код в локальном стоп-листе"
DENY_SOLD_HERE_RU = "Продажа запрещена: этот экземпляр уже продан"
#: The parser's own text, so a bare КИ reads the same whether the parser or the chain refuses it.
DENY_MISSING_CRYPTO_RU = REASONS["missing-crypto"][1]
DENY_STORE_ERROR_RU = "Проверка недоступна, продажа невозможна"


def elapsed_ms(started: float | None) -> float:
    """Milliseconds since ``started`` (a ``time.monotonic()`` value); 0 when unknown."""
    return 0.0 if started is None else max(0.0, (time.monotonic() - started) * 1000.0)


class StoreOnlyChain:
    """Decide from the local blocklist alone (development mode, no Честный ЗНАК check).

    * КИ, its series or its GTIN in the blocklist → ``deny`` / ``blocked-locally``;
    * sold at this terminal and not returned → ``deny`` / ``sold-here``;
    * a bare КИ without crypto tail (shape ``ki``) → ``deny`` / ``missing-crypto``: the law
      requires the full code to be checked and printed on the receipt;
    * otherwise → ``allow`` / ``store-only-not-blocked``.

    A store that cannot be read fails closed (``deny`` / ``store-error``).
    """

    mode = "store-only"

    def __init__(self, store: Store) -> None:
        self.store = store

    def decide(self, code: MarkingCode, scanner: str, *, started: float | None = None) -> Verdict:
        """The verdict for ``code`` scanned on ``scanner``. ``started`` is the monotonic time the
        scan arrived, so ``latency_ms`` covers parsing as well as the lookup."""

        def verdict(decision: Decision, reason: str, message: str, source: Source) -> Verdict:
            return Verdict(
                decision=decision,
                reason=reason,
                message_ru=message,
                source=source,
                scanner=scanner,
                ki=code.ki,
                shape=code.shape,
                repairs=tuple(code.repairs),
                latency_ms=elapsed_ms(started),
            )

        try:
            found = self.store.lookup(code)
        except StoreError:
            return verdict("deny", "store-error", DENY_STORE_ERROR_RU, "store")
        # A stale store still denies what it knows; it never vouches (nothing here allows
        # because of the store: the allow below is the development mode's, and says so).
        if found.blocked is not None:
            return verdict("deny", "blocked-locally", DENY_BLOCKED_RU, "store")
        if found.sold is not None:
            return verdict("deny", "sold-here", DENY_SOLD_HERE_RU, "store")
        if code.shape == "ki" or not code.crypto:
            return verdict("deny", "missing-crypto", DENY_MISSING_CRYPTO_RU, "parser")
        return verdict("allow", "store-only-not-blocked", ALLOW_STORE_ONLY_RU, "none")
