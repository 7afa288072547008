"""
Encryption at rest for any store: a codec that seals the credential with AES-256-GCM.

:class:`EncryptedCodec` wraps a record codec (``NativeCodec`` by default) and stores one JSON
document, ``authfsm-sealed/1``::

    {"algorithm": "A256GCM", "backoff": null | {...}, "ciphertext": "<base64>",
     "format": "authfsm-sealed/1", "key_id": "k2", "logged_out": false,
     "nonce": "<base64, 12 bytes>", "poison": null | {...}, "revision": 7}

What stays in the clear, and why
    The revision, the shared poison and backoff markers and whether the record is a logout's
    tombstone (``logged_out``): they hold fingerprints, timestamps, counts and OAuth error codes,
    no secret, and an operator (or ``authfsm status`` without the key) can read them with
    :func:`read_sealed_header`. Everything else, the whole record as the inner codec writes it
    (tokens, id_token, account, expiry, issuer), is only in the ciphertext. The clear fields are
    not trusted on their own: they are part of the associated data, and the decrypted record
    must repeat them exactly.

Associated data
    The canonical JSON of ``{"binding": [store kind, name], "header": <every field above but
    nonce and ciphertext>}``: the format version, key id, revision and markers, and the store
    the record belongs to. The store binds the codec when it is made (``FileStore``: its resolved
    path; ``RedisStore``: its key with the prefix; ``KeyringStore``: service and user), so a
    ciphertext copied to another file, key or credential, or another kind of store, does not
    open. ``context=`` replaces the name (not the kind) for a file that processes reach by
    different paths (containers).

Strictness
    A sealed document is accepted only in the exact bytes :meth:`EncryptedCodec.encode` writes
    (canonical JSON, canonical base64), so any change to the stored bytes, one bit anywhere, is
    an error: a malformed document is ``CodecError`` (the store's ``StorageCorrupt``), a key id
    not in the ring, a failed authentication or an unencrypted record where an encrypted one is
    required is :class:`CannotDecrypt` (also a ``StorageCorrupt``, naming the store, never the
    key). Stores never overwrite what they cannot decode, so the bytes stay as they were, and
    nothing falls back to plaintext.

Migration
    By default only encrypted records are read. ``accept_plaintext=True`` also reads an
    unencrypted record (the first write seals it); ``write_plaintext=True`` reads both and writes
    plaintext: the first phase of a rolling migration (every process learns to read ciphertext
    before any writes it) and the way back. ``encrypted`` says which is written.

This module owns the sealed format and :func:`rotate_key`; keys live in :mod:`._keys`. It logs
nothing, and no message holds a token, a plaintext record or a key.
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import json
import os
from typing import Any, Final

import attrs

from ...engine import (
    AsyncStore,
    AuthError,
    Backoff,
    EngineMisuse,
    Poison,
    Record,
    StorageCorrupt,
    Store,
    WriteConflict,
)
from ._codec import (
    Codec,
    CodecError,
    NativeCodec,
    _get,
    backoff_from_json,
    backoff_to_json,
    poison_from_json,
    poison_to_json,
)
from ._keys import _KEY_ID, DataKey, KeyConfigurationError, KeyRing, KeyUnavailable

__all__ = [
    "CannotDecrypt",
    "EncryptedCodec",
    "Rotation",
    "SealedHeader",
    "arotate_key",
    "bind_codec",
    "is_encrypted",
    "read_sealed_header",
    "rotate_key",
]

SEALED_FORMAT: Final = "authfsm-sealed/1"
ALGORITHM: Final = "A256GCM"
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
_FIELDS: Final = frozenset(
    {
        "algorithm",
        "backoff",
        "ciphertext",
        "format",
        "key_id",
        "logged_out",
        "nonce",
        "poison",
        "revision",
    }
)
# Re-sealing retried when a write without the lease (a marker) slipped in between.
_ROTATE_ATTEMPTS: Final = 5


class CannotDecrypt(StorageCorrupt):
    """
    The store holds a record this process may not or cannot open: a key id its ring does not
    have, a wrong key, bytes changed or moved from another store, or an unencrypted record where
    only encrypted ones are accepted. The stored bytes are left exactly as they were.

    ``reason``: ``"unknown_key_id"``, ``"decryption_failed"`` or ``"plaintext_refused"``.
    """

    def __init__(self, location: str, problem: str, advice: str, *, reason: str) -> None:
        # Not StorageCorrupt's message: "remove it" is the wrong advice for a missing key.
        AuthError.__init__(
            self,
            f"Credential store {location} cannot be opened: {problem}. It was left untouched; "
            f"{advice}",
            reason=reason,
        )
        self.location = location


@attrs.frozen(kw_only=True)
class SealedHeader:
    """What an encrypted record shows without its key (nothing secret)."""

    revision: int
    logged_out: bool
    poison: Poison | None
    backoff: Backoff | None
    key_id: str
    algorithm: str


@attrs.frozen
class _Envelope:
    header: SealedHeader
    header_doc: dict[str, Any]
    nonce: bytes
    ciphertext: bytes = attrs.field(repr=False)


def _canonical(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def _aad(binding: tuple[str, ...], header_doc: dict[str, Any]) -> bytes:
    return json.dumps(
        {"binding": list(binding), "header": header_doc}, sort_keys=True, separators=(",", ":")
    ).encode()


def _b64(doc: dict[str, Any], name: str) -> bytes:
    text = _get(doc, name, str, optional=False)
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise CodecError(f"field {name!r} is not base64") from None
    if base64.b64encode(raw).decode() != text:
        raise CodecError(f"field {name!r} is not canonical base64")
    return raw


def _envelope(data: bytes) -> _Envelope | None:
    """The sealed document in ``data``; None when ``data`` is not one (CodecError if malformed)."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != SEALED_FORMAT:
        return None
    if set(doc) != _FIELDS:
        raise CodecError(
            f"an {SEALED_FORMAT} record must have exactly the fields {sorted(_FIELDS)}"
        )
    if _canonical(doc) != data:
        raise CodecError("the encrypted record is not in its canonical form (edited or damaged)")
    revision = _get(doc, "revision", int, optional=False)
    if revision < 0:
        raise CodecError("'revision' must not be negative")
    logged_out = doc["logged_out"]
    if not isinstance(logged_out, bool):
        raise CodecError("field 'logged_out' must be bool")
    key_id = _get(doc, "key_id", str, optional=False)
    if not _KEY_ID.fullmatch(key_id):
        raise CodecError("field 'key_id' is not a key id")
    if doc["algorithm"] != ALGORITHM:
        raise CodecError(f"field 'algorithm' must be {ALGORITHM!r}")
    nonce = _b64(doc, "nonce")
    if len(nonce) != NONCE_BYTES:
        raise CodecError(f"field 'nonce' must be {NONCE_BYTES} bytes")
    ciphertext = _b64(doc, "ciphertext")
    if len(ciphertext) < TAG_BYTES:
        raise CodecError("field 'ciphertext' is too short")
    header = SealedHeader(
        revision=revision,
        logged_out=logged_out,
        poison=poison_from_json(doc["poison"]),
        backoff=backoff_from_json(doc["backoff"]),
        key_id=key_id,
        algorithm=ALGORITHM,
    )
    header_doc = {name: value for name, value in doc.items() if name not in ("nonce", "ciphertext")}
    return _Envelope(header, header_doc, nonce, ciphertext)


def read_sealed_header(data: bytes) -> SealedHeader | None:
    """
    The clear part of an encrypted record, read without any key (revision, markers, tombstone,
    key id); None when ``data`` is not an encrypted record. ``CodecError`` when it is a damaged
    one. Nothing here is authenticated: only a decryption proves the header was not changed.
    """
    envelope = _envelope(data)
    return envelope.header if envelope is not None else None


@functools.cache
def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag


class EncryptedCodec:
    """
    A codec that seals each record with AES-256-GCM (a random 96-bit nonce per write).

    Args:
        keys: the :class:`KeyRing`; writes use its current key, reads whichever key the record
            names.
        inner: the record format inside the ciphertext (default :class:`NativeCodec`).
            ``CodexCodec`` is refused: the Codex CLI must read its file as it is.
        context: the name the ciphertext is bound to instead of the store's own (its path, key,
            or service and user); the store's kind is still bound.
        accept_plaintext: also read an unencrypted record (to migrate a store: the first write
            seals it). Off by default: an unencrypted record is refused, so nobody can slip one
            in where an encrypted one was.
        write_plaintext: read both, write unencrypted records: the first phase of a rolling
            migration, and the way back. ``encrypted`` is then False.

    A store binds the codec to itself when it is made (the object passed in is left unbound
    and can configure several stores); an unbound codec refuses to encode or decode.
    """

    def __init__(
        self,
        keys: KeyRing,
        *,
        inner: Codec | None = None,
        context: str | None = None,
        accept_plaintext: bool = False,
        write_plaintext: bool = False,
    ) -> None:
        from ._codex import CodexCodec

        if not isinstance(keys, KeyRing):
            raise EngineMisuse(
                f"EncryptedCodec takes a KeyRing (KeyRing.from_file, from_env, ...), not "
                f"{type(keys).__name__}."
            )
        if isinstance(inner, CodexCodec):
            raise EngineMisuse(
                "EncryptedCodec cannot wrap CodexCodec: the Codex CLI reads its auth.json as "
                "plain JSON and would lose its login. Leave Codex's file unencrypted (it is "
                "0600), or encrypt a store of your own."
            )
        if isinstance(inner, EncryptedCodec):
            raise EngineMisuse("EncryptedCodec cannot wrap another EncryptedCodec.")
        if context is not None and (not isinstance(context, str) or not context):
            raise ValueError("context must be a non-empty string or None")
        self._keys = keys
        self._inner: Codec = inner if inner is not None else NativeCodec()
        self._context = context
        self._write_plaintext = bool(write_plaintext)
        self._accept_plaintext = bool(accept_plaintext) or self._write_plaintext
        self._binding: tuple[str, ...] | None = None
        self._location = "<unbound EncryptedCodec>"

    # -- configuration -------------------------------------------------------------------------

    @property
    def encrypted(self) -> bool:
        """True when records are written encrypted (False only with ``write_plaintext``)."""
        return not self._write_plaintext

    @property
    def keys(self) -> KeyRing:
        return self._keys

    @property
    def accepts_plaintext(self) -> bool:
        return self._accept_plaintext

    @property
    def binding(self) -> tuple[str, ...] | None:
        """(store kind, name) the ciphertext is bound to; None until a store binds the codec."""
        return self._binding

    def bind(self, kind: str, name: str, location: str) -> EncryptedCodec:
        """A copy bound to one store: ``kind`` ("file", ...), its ``name``, its ``location``."""
        bound = copy.copy(self)
        bound._binding = (kind, self._context if self._context is not None else name)
        bound._location = location
        return bound

    # -- the codec -----------------------------------------------------------------------------

    def encode(self, record: Record, previous: bytes | None = None) -> bytes:
        binding = self._bound()
        # The whole document is ours: nothing of ``previous`` is kept.
        plaintext = self._inner.encode(record, None)
        if self._write_plaintext:
            return plaintext
        key = self._current_key()
        header_doc: dict[str, Any] = {
            "algorithm": ALGORITHM,
            "backoff": backoff_to_json(record.backoff) if record.backoff is not None else None,
            "format": SEALED_FORMAT,
            "key_id": key.id,
            "logged_out": record.credential is None,
            "poison": poison_to_json(record.poison) if record.poison is not None else None,
            "revision": record.revision,
        }
        # Through JSON once, so the associated data is computed from exactly what a reader
        # parses (an int-valued float, say, reads back as what was written).
        header_doc = json.loads(json.dumps(header_doc))
        nonce = os.urandom(NONCE_BYTES)
        sealed = key.cipher.encrypt(nonce, plaintext, _aad(binding, header_doc))
        return _canonical(
            {
                **header_doc,
                "nonce": base64.b64encode(nonce).decode(),
                "ciphertext": base64.b64encode(sealed).decode(),
            }
        )

    def decode(self, data: bytes) -> Record:
        binding = self._bound()
        envelope = _envelope(data)
        if envelope is None:
            return self._decode_plaintext(data)
        header = envelope.header
        key = self._key_named(header.key_id)
        try:
            plaintext = key.cipher.decrypt(
                envelope.nonce, envelope.ciphertext, _aad(binding, envelope.header_doc)
            )
        except _invalid_tag():
            raise CannotDecrypt(
                self._location,
                f"authentication with key {key.id!r} failed (a different key under that id, or "
                "bytes changed or copied from another store)",
                "check this process's key; if it is right, restore the store from a copy or log "
                "in again.",
                reason="decryption_failed",
            ) from None
        record = self._inner.decode(plaintext)
        expected = Record(
            credential=record.credential,
            revision=header.revision,
            poison=header.poison,
            backoff=header.backoff,
        )
        if record != expected or header.logged_out != (record.credential is None):
            raise CodecError("the decrypted record does not match its clear header")
        return record

    # -- helpers -------------------------------------------------------------------------------

    def _bound(self) -> tuple[str, ...]:
        if self._binding is None:
            raise EngineMisuse(
                "This EncryptedCodec is not bound to a store: pass it as a store's codec= "
                "(FileStore, RedisStore, KeyringStore), or call bind() first."
            )
        return self._binding

    def _decode_plaintext(self, data: bytes) -> Record:
        record = self._inner.decode(data)  # CodecError: not a record at all (corrupt)
        if self._accept_plaintext:
            return record
        raise CannotDecrypt(
            self._location,
            "it holds an unencrypted record and this codec reads only encrypted ones",
            "to encrypt it, open it once with EncryptedCodec(..., accept_plaintext=True) (or run "
            "`authfsm rotate-key --migrate`); if it should be encrypted, someone replaced it.",
            reason="plaintext_refused",
        )

    def _current_key(self) -> DataKey:
        try:
            return self._keys.current
        except (KeyUnavailable, KeyConfigurationError) as error:
            raise KeyUnavailable(
                f"Cannot seal credential store {self._location}: {error}"
            ) from None

    def _key_named(self, key_id: str) -> DataKey:
        try:
            key = self._keys.find(key_id)
        except (KeyUnavailable, KeyConfigurationError) as error:
            raise KeyUnavailable(
                f"Cannot open credential store {self._location}: {error}"
            ) from None
        if key is None:
            reloaded = self._keys.last_reload_error
            raise CannotDecrypt(
                self._location,
                f"it is sealed with key id {key_id!r}, which is not in this process's key ring "
                f"from {self._keys.origin}"
                + (f" (reloading it failed: {reloaded})" if reloaded else ""),
                "add that key to the ring (after the current one) and try again.",
                reason="unknown_key_id",
            )
        return key

    def __repr__(self) -> str:
        mode = "plaintext writes" if self._write_plaintext else "sealed writes"
        return f"<EncryptedCodec {self._location} {mode}, keys from {self._keys.origin}>"


def bind_codec(codec: Codec, kind: str, name: str, location: str) -> Codec:
    """``codec`` bound to the store ``kind``/``name`` if it binds (EncryptedCodec), else itself."""
    if isinstance(codec, EncryptedCodec):
        return codec.bind(kind, name, location)
    return codec


def is_encrypted(codec: Codec) -> bool:
    """Whether ``codec`` writes encrypted records (what ``store.encrypted`` reports)."""
    return bool(getattr(codec, "encrypted", False))


# -- re-sealing a store now ------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Rotation:
    """What :func:`rotate_key` did."""

    #: The store (its location: a path, a key; never a secret).
    location: str
    #: The record's revision, unchanged by the rotation; None when the store was empty.
    revision: int | None
    #: The key the record is sealed with now; None when written unencrypted or when empty.
    key_id: str | None
    #: The record is a logout's tombstone.
    logged_out: bool = False


def _rotation(store: Store | AsyncStore, record: Record | None) -> Rotation:
    codec = getattr(store, "codec", None)
    key_id = None
    if record is not None and isinstance(codec, EncryptedCodec) and codec.encrypted:
        key_id = codec.keys.current.id
    return Rotation(
        location=store.location,
        revision=record.revision if record is not None else None,
        key_id=key_id,
        logged_out=record is not None and record.credential is None,
    )


def _resealer(store: object) -> Any:
    reseal = getattr(store, "reseal", None)
    if not callable(reseal):
        raise EngineMisuse(
            f"{store!r} cannot re-encrypt its record: rotate_key needs a store with a codec "
            "(FileStore, RedisStore, AsyncRedisStore, KeyringStore)."
        )
    return reseal


def rotate_key(store: Store, *, lease_timeout: float = 30.0) -> Rotation:
    """
    Re-encrypt the stored record now with the codec's current key (or as the codec writes it:
    unencrypted with ``write_plaintext``, sealed from plaintext with ``accept_plaintext``).

    Under the store's lease, so no refresh is in flight, and compare-and-swap on the revision.
    The record and its revision are unchanged: engines see nothing new, and an engine holding a
    rotation it has not saved yet still knows the store's copy is older. Waiting for the lease
    longer than ``lease_timeout`` raises ``LeaseTimeout``; a record that cannot be opened raises
    ``CannotDecrypt`` and is left as it is.
    """
    reseal = _resealer(store)
    for _ in range(_ROTATE_ATTEMPTS):
        with store.lease(lease_timeout):
            record = store.read()
            if record is None:
                return _rotation(store, None)
            try:
                reseal(record.revision)
            except WriteConflict:
                continue  # a write without the lease (a marker) landed in between: read again
            return _rotation(store, record)
    raise WriteConflict(store.location, None, None)


async def arotate_key(store: AsyncStore, *, lease_timeout: float = 30.0) -> Rotation:
    """:func:`rotate_key` for an asyncio store (``AsyncRedisStore``)."""
    reseal = _resealer(store)
    for _ in range(_ROTATE_ATTEMPTS):
        async with store.lease(lease_timeout):
            record = await store.read()
            if record is None:
                return _rotation(store, None)
            try:
                await reseal(record.revision)
            except WriteConflict:
                continue
            return _rotation(store, record)
    raise WriteConflict(store.location, None, None)
