"""
A store in the OS secret service (Secret Service, KWallet, macOS Keychain, Windows Credential
Locker) through the ``keyring`` package.

The record is one secret, the codec's text (native JSON by default), under a service name and a
user name; above ``max_secret_size`` (Windows Credential Manager's 2560 bytes by default on
Windows) it is split into chunks with a manifest written last (:mod:`._chunked`).

A keyring offers neither a lock nor a compare-and-swap, so the lease is an OS lock on a lock
file (``FileStore``'s :class:`LockFileLease`: the OS frees it when a holder dies; it is not
re-entrant, even for engines sharing one store object on one thread), and ``write()`` and
``delete()`` compare the revision while holding the OS lock. Every engine that shares the secret
must therefore share the lock file too: same user, same ``lock_path``.

Secret services answer a read atomically, but file-based backends (``keyrings.alt``) rewrite
their file in place; so a read that finds nothing, or something unreadable, is repeated under
the lock, where no authfsm writer can be, before it counts as an empty store or a corrupt one.

A backend error is ``StorageUnavailable`` (the backend's message is not repeated: it could
quote the secret). A secret that cannot be decoded is ``StorageCorrupt`` naming the service and
user, and is never overwritten. ``keyring`` is imported only when a store is made without an
explicit backend, so authfsm imports without it (``pip install 'authfsm[keyring]'``).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from ...engine import LeaseTimeout, Record, StorageCorrupt, StorageUnavailable, WriteConflict
from ._chunked import ChunkedSecret, SecretTooLarge, TornSecret, default_max_size
from ._codec import Codec, CodecError, NativeCodec
from ._commit import Make, bumped, unchanged
from ._encryption import bind_codec, is_encrypted
from ._file import LockFileLease

__all__ = ["KeyringStore", "SecretBackend"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class _PlatformLimit:
    """The default of ``max_secret_size``: the platform's (2560 bytes on Windows, else none)."""

    def __repr__(self) -> str:
        return "PLATFORM_LIMIT"


#: ``max_secret_size``'s default: Windows Credential Manager's limit on Windows, none elsewhere.
PLATFORM_LIMIT: Final = _PlatformLimit()


@runtime_checkable
class SecretBackend(Protocol):
    """The part of ``keyring.backend.KeyringBackend`` a :class:`KeyringStore` uses."""

    def get_password(self, service: str, username: str) -> str | None: ...

    def set_password(self, service: str, username: str, password: str) -> None: ...

    def delete_password(self, service: str, username: str) -> None: ...


def default_lock_path(service: str, username: str) -> Path:
    """
    Where the lease's lock file lives unless told: the user's state folder.

    ``$XDG_STATE_HOME/authfsm`` (else ``~/.local/state/authfsm``); ``%LOCALAPPDATA%\\authfsm`` on
    Windows. The name shows the service and user and ends in a hash of both, so distinct
    secrets never share a lock.
    """
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    digest = hashlib.blake2b(f"{service}\0{username}".encode(), digest_size=4).hexdigest()
    readable = _UNSAFE.sub("_", f"{service}-{username}")[:60]
    return base / "authfsm" / f"keyring-{readable}-{digest}.lock"


class KeyringStore:
    """
    The credential record as one secret in the OS keyring.

    Args:
        service: the keyring's service name.
        username: the keyring's user (account) name under that service.
        backend: a ``keyring.backend.KeyringBackend`` (or anything with its three methods);
            default: ``keyring.get_keyring()``, the backend ``keyring`` chose for this machine.
        lock_path: the lease's lock file (default: :func:`default_lock_path`).
        codec: the secret's format (default: :class:`NativeCodec`); an ``EncryptedCodec`` is
            bound to the service and user.
        lock_timeout: how long ``write()``, ``delete()`` and a confirming read wait for the lock.
        poll_interval: how often a waiting engine retries the OS lock, in seconds.
        max_secret_size: the largest secret the backend takes, in bytes of UTF-16 (how Windows
            Credential Manager counts: 2560, the default on Windows; None elsewhere: no limit).
            A longer record is split into chunks under the same service, with a manifest
            written last (see :mod:`._chunked`); every reader understands chunks.

    The lease is not re-entrant: while anyone holds it (another process, thread, store object,
    or an engine sharing this object on the same thread), ``lease()`` waits, then raises
    ``LeaseTimeout``. ``write()``, ``delete()`` and ``read()`` work inside it.
    """

    def __init__(
        self,
        service: str = "authfsm",
        username: str = "default",
        *,
        backend: SecretBackend | None = None,
        lock_path: str | os.PathLike[str] | None = None,
        codec: Codec | None = None,
        lock_timeout: float = 30.0,
        poll_interval: float = 0.002,
        max_secret_size: int | _PlatformLimit | None = PLATFORM_LIMIT,
    ) -> None:
        for name, value in (("service", service), ("username", username)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        self._service = service
        self._username = username
        self._backend = backend if backend is not None else _system_keyring()
        self._secret = ChunkedSecret(
            self._backend,
            service,
            username,
            default_max_size() if isinstance(max_secret_size, _PlatformLimit) else max_secret_size,
        )
        self._codec: Codec = bind_codec(
            codec if codec is not None else NativeCodec(),
            "keyring",
            f"{service}\0{username}",
            self.location,
        )
        self._lock_timeout = lock_timeout
        self._lock_path = (
            Path(lock_path).expanduser()
            if lock_path is not None
            else default_lock_path(service, username)
        )
        self._lease = LockFileLease(self._lock_path, poll_interval=poll_interval)

    @property
    def service(self) -> str:
        return self._service

    @property
    def username(self) -> str:
        return self._username

    @property
    def lock_path(self) -> Path:
        return self._lock_path

    @property
    def location(self) -> str:
        return f"keyring service {self._service!r}, user {self._username!r}"

    @property
    def codec(self) -> Codec:
        return self._codec

    @property
    def encrypted(self) -> bool:
        """Whether records are written encrypted (an ``EncryptedCodec`` that seals)."""
        return is_encrypted(self._codec)

    @property
    def max_secret_size(self) -> int | None:
        """Records longer than this (bytes of UTF-16) are stored in chunks; None: never."""
        return self._secret.max_size

    def read(self) -> Record | None:
        try:
            value = self._fetch()
            if value is not None:
                return self._decode(value)
        except (StorageUnavailable, StorageCorrupt):
            pass
        # Nothing, or nothing readable: a backend rewriting its file may be caught mid-write.
        # Under the OS lock no authfsm writer is: what is seen there counts. (The OS lock, not
        # the lease: it is re-entrant, so a read inside the caller's own lease does not wait.)
        try:
            with self._lease.guard(self._lock_timeout):
                return self._load()[1]
        except LeaseTimeout:
            raise StorageUnavailable(
                f"Cannot confirm what {self.location} holds: its lock {self._lock_path} was "
                f"held for over {self._lock_timeout:g} s.",
                reason="lease_timeout",
            ) from None

    def write(self, record: Record, expected_revision: int | None) -> Record:
        return self._commit(expected_revision, bumped(record))

    def reseal(self, expected_revision: int) -> Record:
        """
        Write the stored record again as it is, revision included, in the codec's current form
        (an ``EncryptedCodec`` seals it with its current key): what ``rotate_key`` does.
        ``WriteConflict`` unless the secret holds revision ``expected_revision``.
        """
        return self._commit(expected_revision, unchanged(self.location, expected_revision))

    def _commit(self, expected_revision: int | None, make: Make) -> Record:
        with self._lease.guard(self._lock_timeout):
            previous, current = self._load()  # a corrupt secret raises: it is never overwritten
            found = current.revision if current is not None else None
            if found != expected_revision:
                raise WriteConflict(self.location, expected_revision, found)
            stored = make(found, current)
            data = self._codec.encode(
                stored, previous=previous.encode() if previous is not None else None
            )
            try:
                self._secret.put(data.decode())
            except SecretTooLarge as error:
                raise StorageUnavailable(
                    f"Cannot write credential store {self.location}: {error}; raise "
                    "max_secret_size or use another store.",
                    reason="secret_too_large",
                ) from None
            except Exception as error:  # noqa: BLE001 - every backend raises its own errors
                raise self._unavailable("write", error) from None
            return stored

    def delete(self, expected_revision: int | None) -> None:
        with self._lease.guard(self._lock_timeout):
            previous, current = self._load()
            found = current.revision if current is not None else None
            if found != expected_revision:
                raise WriteConflict(self.location, expected_revision, found)
            if previous is None:
                return
            try:
                self._secret.remove()
            except Exception as error:  # noqa: BLE001 - every backend raises its own errors
                # Gone anyway (another program removed it) is what was asked for.
                if self._fetch() is not None:
                    raise self._unavailable("delete", error) from None

    def lease(self, timeout: float) -> AbstractContextManager[None]:
        """Exclusive to one holder at a time, in this process and across processes."""
        return self._lease.lease(timeout)

    def wait_for_release(self, timeout: float) -> None:
        """Sleep until the lease is free, at most ``timeout`` seconds (``ReleaseWatch``)."""
        self._lease.wait_for_release(timeout)

    async def wait_for_release_async(self, timeout: float) -> None:
        """:meth:`wait_for_release` for ``AsyncAuthEngine``: no thread is held while it waits."""
        await self._lease.wait_for_release_async(timeout)

    def _load(self) -> tuple[str | None, Record | None]:
        """The secret and the record it holds (call with the lock held)."""
        value = self._fetch()
        if value is None:
            return None, None
        return value, self._decode(value)

    def _fetch(self) -> str | None:
        try:
            value = self._secret.get()
        except TornSecret as error:
            # Outside the lock a write may be under way: read() tries again under it.
            raise StorageCorrupt(self.location, str(error)) from None
        except Exception as error:  # noqa: BLE001 - every backend raises its own errors
            raise self._unavailable("read", error) from None
        if value is not None and not isinstance(value, str):
            raise StorageCorrupt(self.location, f"the backend returned {type(value).__name__}")
        return value

    def _decode(self, value: str) -> Record:
        try:
            data = value.encode()
        except UnicodeEncodeError:
            raise StorageCorrupt(self.location, "the secret is not valid Unicode text") from None
        try:
            return self._codec.decode(data)
        except CodecError as error:
            raise StorageCorrupt(self.location, str(error)) from None

    def _unavailable(self, action: str, error: Exception) -> StorageUnavailable:
        return StorageUnavailable(
            f"Cannot {action} credential store {self.location}: the keyring backend "
            f"{type(self._backend).__name__} raised {type(error).__name__}.",
            reason="keyring_error",
        )

    def __repr__(self) -> str:
        return (
            f"<KeyringStore service={self._service!r} username={self._username!r} "
            f"backend={type(self._backend).__name__}>"
        )


def _system_keyring() -> SecretBackend:
    try:
        keyring = importlib.import_module("keyring")
    except ImportError:
        raise StorageUnavailable(
            "KeyringStore needs the keyring package: pip install 'authfsm[keyring]'.",
            reason="keyring_not_installed",
        ) from None
    backend: SecretBackend = keyring.get_keyring()
    return backend
