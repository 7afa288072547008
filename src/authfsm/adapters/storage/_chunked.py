"""
One logical keyring secret stored as several entries when a backend limits a secret's size.

Windows Credential Manager refuses a secret over 2560 bytes, counted in UTF-16 (1280 characters
of JSON), less than one id_token, and far less than an encrypted record. Above ``max_size`` the
text is split into chunks and the store's own entry (service, user) holds a small manifest::

    {"format": "authfsm-chunked/1", "generation": "<16 hex>", "slot": "a", "count": 3}

The chunks live under the same service as users ``<user>/authfsm-chunk/<slot><index>``; each
begins with ``<generation>.<index>:``. A write goes to the slot the current manifest does not
use, writes every chunk, then the manifest (the commit point), then removes the other slot's
chunks and any left over past its own count. So:

- a reader that finds the manifest finds every chunk it names, of that generation, until a
  later write commits; a chunk of another generation (a later write reusing the slot) or a
  missing one is :class:`TornSecret`, never a mix of two writes: ``KeyringStore`` then reads
  again under its lock, where no writer is;
- a writer that dies before the manifest leaves the previous record whole; its chunks are
  stale (their generation is named by no manifest) and the next write removes them.

Reading understands manifests whatever ``max_size`` is, so processes with and without a limit
share one secret. A secret that fits is stored as one entry, as before. This module knows
nothing of records or codecs, and never puts a secret into a message.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    from ._keyring import SecretBackend

__all__ = ["WINDOWS_SECRET_LIMIT", "ChunkedSecret", "SecretTooLarge", "TornSecret", "secret_size"]

MANIFEST_FORMAT: Final = "authfsm-chunked/1"
#: Windows Credential Manager's limit on a secret (CRED_MAX_CREDENTIAL_BLOB_SIZE), in bytes.
WINDOWS_SECRET_LIMIT: Final = 2560
#: The smallest limit accepted: a manifest and a useful chunk must fit.
MIN_SECRET_SIZE: Final = 256
#: The most chunks one secret may take (and the bound of every clean-up loop).
MAX_CHUNKS: Final = 128
_SLOTS: Final = ("a", "b")
_GENERATION: Final = re.compile(r"[0-9a-f]{16}")


class TornSecret(Exception):
    """The chunks do not match their manifest: a write in progress, or damage."""


class SecretTooLarge(Exception):
    """The text needs more than :data:`MAX_CHUNKS` chunks at this size limit."""


def secret_size(text: str) -> int:
    """The size of ``text`` as Windows counts it: bytes of UTF-16."""
    return len(text.encode("utf-16-le", "surrogatepass"))


def default_max_size() -> int | None:
    """The platform's limit: Windows Credential Manager's on Windows, none elsewhere."""
    return WINDOWS_SECRET_LIMIT if os.name == "nt" else None


@attrs.frozen
class _Manifest:
    generation: str
    slot: str
    count: int

    def text(self) -> str:
        return json.dumps(
            {
                "format": MANIFEST_FORMAT,
                "generation": self.generation,
                "slot": self.slot,
                "count": self.count,
            }
        )


def _manifest(text: str) -> _Manifest | None:
    """The manifest ``text`` holds, or None when it is a plain secret."""
    if MANIFEST_FORMAT not in text[:64]:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        return None
    generation, slot, count = doc.get("generation"), doc.get("slot"), doc.get("count")
    if (
        set(doc) != {"format", "generation", "slot", "count"}
        or not isinstance(generation, str)
        or not _GENERATION.fullmatch(generation)
        or slot not in _SLOTS
        or isinstance(count, bool)
        or not isinstance(count, int)
        or not 1 <= count <= MAX_CHUNKS
    ):
        raise TornSecret("the manifest is malformed")
    return _Manifest(generation, slot, count)


class ChunkedSecret:
    """
    The secret of one (service, user), split into chunks above ``max_size`` bytes (UTF-16).

    :meth:`get` may run anywhere; :meth:`put` and :meth:`remove` must run under the store's OS
    lock (one writer at a time). Backend errors propagate as they are.
    """

    def __init__(
        self, backend: SecretBackend, service: str, username: str, max_size: int | None
    ) -> None:
        if max_size is not None and (
            isinstance(max_size, bool)
            or not isinstance(max_size, int)
            or max_size < MIN_SECRET_SIZE
        ):
            raise ValueError(
                f"max_secret_size must be None or a whole number of bytes >= {MIN_SECRET_SIZE}"
            )
        self._backend = backend
        self._service = service
        self._username = username
        self._max_size = max_size

    @property
    def max_size(self) -> int | None:
        return self._max_size

    def chunk_name(self, slot: str, index: int) -> str:
        return f"{self._username}/authfsm-chunk/{slot}{index}"

    def get(self) -> str | None:
        """The whole secret, or None; ``TornSecret`` when chunks and manifest disagree."""
        main = self._backend.get_password(self._service, self._username)
        if main is None or not isinstance(main, str):
            return main
        manifest = _manifest(main)
        if manifest is None:
            return main
        parts = []
        for index in range(manifest.count):
            chunk = self._backend.get_password(self._service, self.chunk_name(manifest.slot, index))
            prefix = f"{manifest.generation}.{index}:"
            if not isinstance(chunk, str) or not chunk.startswith(prefix):
                raise TornSecret(f"chunk {index} of {manifest.count} is missing or stale")
            parts.append(chunk[len(prefix) :])
        return "".join(parts)

    def put(self, text: str) -> None:
        """Store ``text`` (under the lock): one entry if it fits, else chunks then a manifest."""
        old = self._current_manifest()
        if self._max_size is None or secret_size(text) <= self._max_size:
            self._backend.set_password(self._service, self._username, text)
            if old is not None or self._max_size is not None:
                # The old record's chunks, and those of a write that died before its manifest.
                self._tidy(*_SLOTS)
            return
        slot = "b" if old is not None and old.slot == "a" else "a"
        generation = secrets.token_hex(8)
        pieces = self._split(text, generation)
        for index, piece in enumerate(pieces):
            self._backend.set_password(
                self._service, self.chunk_name(slot, index), f"{generation}.{index}:{piece}"
            )
        manifest = _Manifest(generation, slot, len(pieces))
        self._backend.set_password(self._service, self._username, manifest.text())
        # Committed. What is left of older writes is stale: remove it.
        self._tidy(slot, start=len(pieces))
        self._tidy("b" if slot == "a" else "a")

    def remove(self) -> None:
        """Delete the secret (the manifest first: the commit point), then every chunk."""
        chunked = self._max_size is not None or self._current_manifest() is not None
        self._backend.delete_password(self._service, self._username)
        if chunked:
            self._tidy(*_SLOTS)

    def _tidy(self, *slots: str, start: int = 0) -> None:
        """Remove stale chunks after a commit; a failure leaves them for the next write (they
        are named by no manifest, so nobody reads them) and never fails the committed write."""
        try:
            for slot in slots:
                self._sweep(slot, start)
        except Exception:  # noqa: BLE001, S110 - every backend raises its own errors
            pass

    def _current_manifest(self) -> _Manifest | None:
        main = self._backend.get_password(self._service, self._username)
        if not isinstance(main, str):
            return None
        try:
            return _manifest(main)
        except TornSecret:
            return None  # a damaged manifest: its chunks are swept as leftovers

    def _split(self, text: str, generation: str) -> list[str]:
        assert self._max_size is not None
        # The largest header is the one with the largest index; sizes are UTF-16 bytes.
        header = secret_size(f"{generation}.{MAX_CHUNKS}:")
        room = self._max_size - header
        pieces: list[str] = []
        start = 0
        while start < len(text):
            if len(pieces) == MAX_CHUNKS:
                raise SecretTooLarge(
                    f"the record needs more than {MAX_CHUNKS} chunks of {self._max_size} bytes"
                )
            # Two UTF-16 bytes per character at least: a first guess that is never too short.
            end = min(start + room // 2, len(text))
            while end > start + 1 and secret_size(text[start:end]) > room:
                end -= 1
            pieces.append(text[start:end])
            start = end
        return pieces

    def _sweep(self, slot: str, start: int) -> None:
        """Delete chunks ``start, start+1, ...`` of ``slot`` up to the first missing one."""
        for index in range(start, MAX_CHUNKS):
            name = self.chunk_name(slot, index)
            if self._backend.get_password(self._service, name) is None:
                return
            self._backend.delete_password(self._service, name)
