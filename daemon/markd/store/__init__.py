"""markd's own LMDB store: blocklist, sold journal, verdict cache and metadata.

One LMDB environment (a directory, ``[store] path``, default ``/var/lib/markd/store``):
memory-mapped, one writer and many readers across processes. The daemon looks units up in
microseconds; ``markctl store …`` imports snapshots, applies deltas, exports and syncs from
another process while the daemon keeps reading.

* :mod:`markd.store.core` — :class:`Store`: open, lookup, sold journal, verdict cache, metadata;
* :mod:`markd.store.keys` — key and value encodings;
* :mod:`markd.store.importer` — snapshot import (atomic switch) and deltas;
* :mod:`markd.store.fleet` — export for a file server and sync from one.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp, Store.open(tmp + "/store") as store:
...     store.block("0104650117240408215Qbag!", "recalled")
...     store.lookup("0104650117240408215Qbag!").blocked.reason
'recalled'

Every lmdb error is wrapped in :class:`~markd.errors.StoreError` naming the store path.
"""

from markd.store.core import (
    DEFAULT_PATH,
    BlockEntry,
    CachedVerdict,
    Lookup,
    SoldEntry,
    Store,
    StoreInfo,
)

__all__ = [
    "DEFAULT_PATH",
    "BlockEntry",
    "CachedVerdict",
    "Lookup",
    "SoldEntry",
    "Store",
    "StoreInfo",
]
