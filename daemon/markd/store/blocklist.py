"""The local blocklist: КИ that markd must refuse whatever the other sources say.

One LMDB named database, :data:`DB_NAME`, keyed by the КИ as UTF-8 (GTIN + serial, never the
crypto tail), with a small JSON value::

    {"reason": "recalled", "source": "manual", "since": 1763700000}

``source`` says who put the entry there (``manual`` from ``markctl``, later ``import`` and
``sync``); ``since`` is Unix seconds. JSON keeps the value readable with ``mdb_dump`` and lets
fields be added without a migration: unknown fields are ignored when reading.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

#: Name of the LMDB database that holds the blocklist.
DB_NAME = b"blocked_ki"


@dataclass(frozen=True)
class BlockEntry:
    """One blocked КИ and why."""

    ki: str
    reason: str
    source: str
    #: Unix seconds when the entry was written.
    since: int


def encode_value(entry: BlockEntry) -> bytes:
    """The stored JSON value of ``entry`` (the КИ is the key, not part of the value)."""
    value = {"reason": entry.reason, "source": entry.source, "since": entry.since}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode_value(ki: str, raw: bytes) -> BlockEntry:
    """Rebuild a :class:`BlockEntry`; raise ``ValueError`` on a value markd did not write."""
    value = json.loads(raw.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("blocklist value is not a JSON object")
    reason, source, since = value.get("reason"), value.get("source"), value.get("since")
    if not isinstance(reason, str) or not isinstance(source, str):
        raise ValueError("blocklist value lacks 'reason' or 'source'")
    if not isinstance(since, int) or isinstance(since, bool):
        raise ValueError("blocklist value lacks an integer 'since'")
    return BlockEntry(ki=ki, reason=reason, source=source, since=since)
