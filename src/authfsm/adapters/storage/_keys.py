"""
Data keys for encryption at rest: where they come from, what they are called, which is current.

A :class:`KeyRing` is an ordered list of 256-bit AES keys, each under a key id: the first is
*current* (every write is sealed with it), the others only open what was sealed with them, so a
new key is rolled out by putting it first and the old one stays readable until every record was
written again (``rotate_key``, or simply the next refresh).

Keys come from an environment variable, a key file that only its owner may read, a secret in the
OS keyring (the ciphertext can then live in a shared file), or a callable (a KMS or Vault
client). They are never derived from a token or a host name. The text form is one key a line (or
comma-separated in a variable): ``ID:BASE64`` with 32 bytes of base64, or the base64 alone (its
id is then a short hash of the key); ``#`` starts a comment.

A ring made from a source that can change (a file, the keyring, a callable) loads it again when a
ciphertext names a key id it does not know, at most once per ``reload_after`` seconds, so a new
key reaches running processes without a restart.

This module must never put key material into a message, a repr or a log: errors name the source
(a variable, a path) and the position of a bad entry, never its text. ``cryptography`` is imported
when the first key is made, so authfsm imports without the ``encryption`` extra.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from ...engine import AuthError, StorageUnavailable

if TYPE_CHECKING:
    from ._keyring import SecretBackend

__all__ = [
    "DataKey",
    "KeyConfigurationError",
    "KeyRing",
    "KeyUnavailable",
    "generate_key",
]

#: AES-256: every data key is this many bytes.
KEY_BYTES: Final = 32
#: The longest key file or key text read (a ring of hundreds of keys fits).
_MAX_KEY_TEXT: Final = 64 * 1024
#: The most keys one ring may hold.
_MAX_KEYS: Final = 64
_KEY_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class KeyConfigurationError(AuthError, ValueError):
    """
    The configured keys cannot be used: a variable that is not set, a key file that is missing
    or readable by others, an entry that is not a 32-byte base64 key, two keys under one id.

    The message names the source and the entry's position, never a key.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="key_configuration")


class KeyUnavailable(StorageUnavailable):
    """
    The keys could not be fetched now (a KMS or Vault callable failed, the OS keyring did not
    answer). Transient, like any unreachable store: engines keep serving their cached token.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="key_unavailable")


def _aesgcm() -> Any:
    try:
        module = importlib.import_module("cryptography.hazmat.primitives.ciphers.aead")
    except ImportError:
        raise ImportError(
            "Encryption at rest needs pyca/cryptography; install it with: "
            "pip install 'authfsm[encryption]'"
        ) from None
    return module.AESGCM


def _check_id(_instance: object, _attribute: object, value: str) -> None:
    if not isinstance(value, str) or not _KEY_ID.fullmatch(value):
        raise KeyConfigurationError(
            "A key id must be 1 to 64 letters, digits, '.', '_' or '-' (starting with a letter "
            "or digit)."
        )


def _check_secret(_instance: object, _attribute: object, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != KEY_BYTES:
        raise KeyConfigurationError(f"A data key must be exactly {KEY_BYTES} bytes (AES-256).")


@attrs.frozen
class DataKey:
    """One AES-256 key and its id (the id is written next to every ciphertext it seals)."""

    id: str = attrs.field(validator=_check_id)
    secret: bytes = attrs.field(repr=False, validator=_check_secret)
    _cipher: Any = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_cipher", _aesgcm()(self.secret))

    @property
    def cipher(self) -> Any:
        """The ``AESGCM`` object of this key (thread-safe, made once)."""
        return self._cipher

    @classmethod
    def derived_id(cls, secret: bytes) -> str:
        """The id a key written without one gets: 32 bits of a hash of it (not reversible)."""
        return "k" + hashlib.blake2b(secret, digest_size=4, person=b"authfsm-kid").hexdigest()


def generate_key(key_id: str | None = None) -> str:
    """
    A new random key as one line of key text, ``ID:BASE64`` (the id defaults to a hash of it).

    Put it first in the key file or variable to make it current, keep the old lines after it.
    """
    secret = secrets.token_bytes(KEY_BYTES)
    key = DataKey(key_id if key_id is not None else DataKey.derived_id(secret), secret)
    return f"{key.id}:{base64.b64encode(secret).decode()}"


def _decode_base64(text: str) -> bytes | None:
    """Standard or URL-safe base64 (padded), strictly: None for anything else."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return None
    for altchars in (b"+/", b"-_"):
        try:
            return base64.b64decode(raw, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
    return None


def parse_keys(text: str, *, origin: str) -> list[DataKey]:
    """The keys in ``text`` (see the module docstring); errors name ``origin``, never a key."""
    if len(text) > _MAX_KEY_TEXT:
        raise KeyConfigurationError(f"The keys in {origin} are longer than {_MAX_KEY_TEXT} bytes.")
    entries: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        entries.extend(part.strip() for part in line.split(","))
    keys: list[DataKey] = []
    for position, entry in enumerate((e for e in entries if e), start=1):
        key_id, sep, encoded = entry.rpartition(":")
        secret = _decode_base64(encoded)
        if secret is None or len(secret) != KEY_BYTES:
            raise KeyConfigurationError(
                f"Key {position} in {origin} is not {KEY_BYTES} bytes of base64 "
                "(write keys as ID:BASE64; make one with `openssl rand -base64 32`)."
            )
        try:
            keys.append(DataKey(key_id if sep else DataKey.derived_id(secret), secret))
        except KeyConfigurationError as error:
            raise KeyConfigurationError(f"Key {position} in {origin}: {error}") from None
    if not keys:
        raise KeyConfigurationError(f"{origin.capitalize()} holds no key.")
    return keys


def _check_ring(keys: list[DataKey], origin: str) -> tuple[DataKey, ...]:
    if not keys:
        raise KeyConfigurationError(f"{origin.capitalize()} holds no key.")
    if len(keys) > _MAX_KEYS:
        raise KeyConfigurationError(f"{origin.capitalize()} holds more than {_MAX_KEYS} keys.")
    seen: set[str] = set()
    for key in keys:
        if not isinstance(key, DataKey):
            raise KeyConfigurationError(
                f"{origin.capitalize()} gave a {type(key).__name__}, not a DataKey."
            )
        if key.id in seen:
            raise KeyConfigurationError(f"{origin.capitalize()} holds key id {key.id!r} twice.")
        seen.add(key.id)
    return tuple(keys)


def _read_key_file(path: Path) -> str:
    """A key file's text; refused unless a regular file that only its owner can read."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyConfigurationError(f"Key file {path} does not exist.") from None
    except OSError as error:
        raise KeyConfigurationError(f"Cannot read key file {path}: {error.strerror}.") from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyConfigurationError(f"Key file {path} is not a regular file.")
    # Windows has no POSIX mode bits (its ACLs decide); everywhere else, owner-only.
    if os.name != "nt" and info.st_mode & 0o077:
        raise KeyConfigurationError(
            f"Key file {path} can be read or written by its group or others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); refusing it. Run `chmod 600 {path}` "
            "(or 400) and check who saw it."
        )
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_KEY_TEXT + 1)
    except OSError as error:
        raise KeyConfigurationError(f"Cannot read key file {path}: {error.strerror}.") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyConfigurationError(f"Key file {path} is not UTF-8 text.") from None


class KeyRing:
    """
    The keys a codec seals and opens with: ``[current, older...]``.

    Args:
        keys: the keys, current first (or use :meth:`parse`, :meth:`from_env`,
            :meth:`from_file`, :meth:`from_keyring`, :meth:`from_callable`).
        origin: how errors name where the keys came from.

    Writes are sealed with :attr:`current`; a ciphertext is opened with the key its id names,
    whichever position it holds. The ring is safe to share between threads and stores.
    """

    _keys: tuple[DataKey, ...]

    def __init__(self, keys: Iterable[DataKey], *, origin: str = "the keys given in code") -> None:
        self._start(origin, None, 60.0)
        self._keys = _check_ring(list(keys), origin)

    def _start(
        self, origin: str, loader: Callable[[], list[DataKey]] | None, reload_after: float
    ) -> None:
        self._origin = origin
        self._loader = loader
        self._reload_after = float(reload_after)
        self._lock = threading.Lock()
        self._keys = ()
        self._loaded_at = -float("inf")
        #: Why the last reload on an unknown key id failed (an error type name), if it did.
        self.last_reload_error: str | None = None

    @classmethod
    def _sourced(
        cls,
        loader: Callable[[], list[DataKey]],
        origin: str,
        *,
        reload_after: float = 60.0,
        lazy: bool = False,
    ) -> KeyRing:
        ring = cls.__new__(cls)
        ring._start(origin, loader, reload_after)
        if not lazy:
            ring._keys = ring._load()
        return ring

    # -- constructors --------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, *, origin: str = "the key text") -> KeyRing:
        """The ring written in ``text`` (one ``ID:BASE64`` a line or comma-separated)."""
        return cls(parse_keys(text, origin=origin), origin=origin)

    @classmethod
    def from_env(cls, name: str = "AUTHFSM_KEYS") -> KeyRing:
        """
        The ring in environment variable ``name`` (``"k2:BASE64,k1:BASE64"``, current first).

        ``KeyConfigurationError`` now when it is not set or not keys.
        """
        origin = f"environment variable {name}"

        def load() -> list[DataKey]:
            text = os.environ.get(name)
            if not text:
                raise KeyConfigurationError(f"Environment variable {name} is not set.")
            return parse_keys(text, origin=origin)

        return cls._sourced(load, origin)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, reload_after: float = 60.0) -> KeyRing:
        """
        The ring in a key file (mode 0600 or 0400; refused when group or others may read it).

        ``KeyConfigurationError`` now when it is missing, readable by others, or not keys. The
        file is read again when a ciphertext names an unknown key id (a rotation), at most once
        per ``reload_after`` seconds.
        """
        resolved = Path(path).expanduser()
        origin = f"key file {resolved}"
        return cls._sourced(
            lambda: parse_keys(_read_key_file(resolved), origin=origin),
            origin,
            reload_after=reload_after,
        )

    @classmethod
    def from_keyring(
        cls,
        service: str = "authfsm-keys",
        username: str = "default",
        *,
        backend: SecretBackend | None = None,
        reload_after: float = 60.0,
    ) -> KeyRing:
        """
        The ring held as one secret in the OS keyring (key text, as in a key file), so the key
        stays in the user's keyring while the ciphertext lives in a shared file.
        """
        origin = f"keyring service {service!r}, user {username!r}"
        chosen = backend

        def load() -> list[DataKey]:
            nonlocal chosen
            if chosen is None:
                from ._keyring import _system_keyring

                chosen = _system_keyring()
            try:
                text = chosen.get_password(service, username)
            except Exception as error:  # noqa: BLE001 - every backend raises its own errors
                raise KeyUnavailable(
                    f"Cannot read the keys from {origin}: the keyring backend raised "
                    f"{type(error).__name__}."
                ) from None
            if not text:
                raise KeyConfigurationError(f"The {origin} holds no keys.")
            return parse_keys(text, origin=origin)

        return cls._sourced(load, origin, reload_after=reload_after)

    @classmethod
    def from_callable(
        cls,
        load: Callable[[], str | Iterable[DataKey]],
        *,
        name: str = "the key callable",
        reload_after: float = 60.0,
    ) -> KeyRing:
        """
        The ring a callable returns (key text, or ``DataKey`` values current first): a KMS or
        Vault client. Called on first use, not now, and again when a ciphertext names an unknown
        key id (at most once per ``reload_after`` seconds). Whatever it raises becomes
        ``KeyUnavailable``, which engines treat like an unreachable store.
        """

        def call() -> list[DataKey]:
            try:
                result = load()
            except AuthError:
                raise
            except Exception as error:  # noqa: BLE001 - a KMS client raises anything
                raise KeyUnavailable(
                    f"Cannot fetch the keys from {name}: it raised {type(error).__name__}."
                ) from None
            if isinstance(result, str):
                return parse_keys(result, origin=name)
            return list(result)

        return cls._sourced(call, name, reload_after=reload_after, lazy=True)

    # -- use -----------------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """Where the keys come from (a variable, a path, a keyring entry): never a key."""
        return self._origin

    @property
    def current(self) -> DataKey:
        """The key every write is sealed with (loads a lazy ring)."""
        return self._ensure()[0]

    @property
    def ids(self) -> tuple[str, ...]:
        """The key ids, current first."""
        return tuple(key.id for key in self._ensure())

    def find(self, key_id: str) -> DataKey | None:
        """The key named ``key_id``; an unknown id reloads a changeable source (rate-limited)."""
        for key in self._ensure():
            if key.id == key_id:
                return key
        if self._loader is None:
            return None
        with self._lock:
            if time.monotonic() - self._loaded_at >= self._reload_after:
                try:
                    self._keys = self._load()
                    self.last_reload_error = None
                except AuthError as error:
                    # The ring loaded before stays in use; the caller reports the unknown id.
                    self._loaded_at = time.monotonic()
                    self.last_reload_error = type(error).__name__
        return next((key for key in self._keys if key.id == key_id), None)

    def _ensure(self) -> tuple[DataKey, ...]:
        keys = self._keys
        if keys:
            return keys
        with self._lock:
            if not self._keys:
                self._keys = self._load()
            return self._keys

    def _load(self) -> tuple[DataKey, ...]:
        assert self._loader is not None
        self._loaded_at = time.monotonic()
        return _check_ring(self._loader(), self._origin)

    def __repr__(self) -> str:
        ids = ", ".join(repr(key.id) for key in self._keys) if self._keys else "not loaded"
        return f"<KeyRing from {self._origin}: {ids}>"
