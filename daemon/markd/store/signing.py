"""Ed25519 signatures of fleet exports: the master signs ``index.json``, kiosks verify it.

The index carries the size and sha256 of every file it names, so one signature over the index
covers the snapshot and the deltas too: a kiosk checks each downloaded file against the
*signed* size and hash before it uses it.

What is signed: the index without its ``signature`` member, as canonical JSON (keys sorted,
no spaces, UTF-8), after the context line :data:`SIGNED_CONTEXT` (so a signature made for
something else with the same key never passes for an index). The signature sits in the index
itself, so the index and its signature are always fetched together (a separate file could be
caught half-way through an export)::

    "signature": {"key": "ed25519:BASE64", "ed25519": "BASE64 of the 64-byte signature"}

Kiosks that know nothing of signatures ignore the member. Public keys are written
``ed25519:BASE64`` (the 32 raw bytes, standard base64), as in ``[store] sync_public_keys``.
Private keys are PKCS#8 PEM files, unencrypted, mode 0600 (``markctl store keygen``).

Only the public API of ``cryptography`` is used (Debian 12's 38.x and the current release).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from markd.errors import StoreError

KEY_PREFIX = "ed25519:"
SIGNATURE_MEMBER = "signature"
#: Prefixed to what is signed: domain separation from any other use of the key.
SIGNED_CONTEXT = b"markd-store-index-v1\n"


def public_key_problem(text: str) -> str | None:
    """Why ``text`` is not an ``ed25519:BASE64`` public key (None when it is one)."""
    if not isinstance(text, str) or not text.startswith(KEY_PREFIX):
        return f"expected ed25519:BASE64 (from markctl store keygen), got {text!r:.80}"
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return f"{text!r:.80} is not valid base64 after 'ed25519:'"
    if len(raw) != 32:
        return f"an Ed25519 public key is 32 bytes, {text!r:.80} holds {len(raw)}"
    return None


def _public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(key: Ed25519PublicKey) -> str:
    """``ed25519:BASE64`` of ``key``."""
    return KEY_PREFIX + base64.b64encode(_public_bytes(key)).decode("ascii")


def _canonical(text: str) -> bytes:
    return base64.b64decode(text[len(KEY_PREFIX) :])


def _load_public(text: str) -> Ed25519PublicKey:
    problem = public_key_problem(text)
    if problem is not None:
        raise StoreError(problem, "bad-key")
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text[len(KEY_PREFIX) :]))


def generate_key(out: str | os.PathLike[str]) -> str:
    """Write a new private key to ``out`` (PEM, mode 0600; an existing file is never
    overwritten); return its public key as ``ed25519:BASE64``."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # O_EXCL: refuse to overwrite (a lost fleet key means re-keying every kiosk); 0600
        # from the start, so the key is never readable by others, not even for a moment.
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise StoreError(
            f"{out} exists: refusing to overwrite a key (move it away first)", "key-exists"
        ) from None
    except OSError as exc:
        raise StoreError(f"cannot create {out}: {exc.strerror or exc}", "bad-key") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return public_key_text(key.public_key())


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path``."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}", "bad-key") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise StoreError(f"{path} is not an unencrypted PEM private key", "bad-key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise StoreError(f"{path} is not an Ed25519 key", "bad-key")
    return key


def signed_bytes(index: dict[str, Any]) -> bytes:
    """What a signature of ``index`` covers (everything but its ``signature`` member)."""
    body = {k: v for k, v in index.items() if k != SIGNATURE_MEMBER}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return SIGNED_CONTEXT + canonical.encode("utf-8")


def sign_index(index: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``index`` with its ``signature`` member."""
    signature = key.sign(signed_bytes(index))
    return {
        **{k: v for k, v in index.items() if k != SIGNATURE_MEMBER},
        SIGNATURE_MEMBER: {
            "key": public_key_text(key.public_key()),
            "ed25519": base64.b64encode(signature).decode("ascii"),
        },
    }


def verify_index(data: Any, public_keys: tuple[str, ...], where: str) -> str:
    """Check the signature of the parsed index ``data`` against ``public_keys``; return the key
    that signed it. Raises :class:`StoreError` ``unsigned-index``, ``unknown-key`` or
    ``bad-signature`` (``where`` names the index in the message)."""
    if not isinstance(data, dict) or SIGNATURE_MEMBER not in data:
        raise StoreError(
            f"{where} is not signed, and [store] sync_public_keys requires a signature; "
            "nothing changed",
            "unsigned-index",
        )
    member = data[SIGNATURE_MEMBER]
    key_text = member.get("key") if isinstance(member, dict) else None
    value = member.get("ed25519") if isinstance(member, dict) else None
    if not isinstance(key_text, str) or not isinstance(value, str):
        raise StoreError(
            f"{where}: the signature member is malformed; nothing changed", "bad-signature"
        )
    if signing_key_problem := public_key_problem(key_text):
        raise StoreError(
            f"{where}: the signature names no usable key ({signing_key_problem}); nothing changed",
            "bad-signature",
        )
    # Compared as key bytes: two spellings of one key in base64 are the same key.
    known = {_canonical(key) for key in public_keys if public_key_problem(key) is None}
    if _canonical(key_text) not in known:
        raise StoreError(
            f"{where} is signed with {key_text[:60]!r}, which is not in [store] "
            "sync_public_keys; nothing changed",
            "unknown-key",
        )
    try:
        signature = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    try:
        _load_public(key_text).verify(signature, signed_bytes(data))
    except (InvalidSignature, StoreError, ValueError):
        raise StoreError(
            f"{where}: the signature by {key_text[:60]} does not match the index (altered "
            "after signing, or forged); nothing changed",
            "bad-signature",
        ) from None
    return key_text
