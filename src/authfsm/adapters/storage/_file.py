"""
A store in one JSON file, shared by processes on one machine.

Writes are atomic (a 0600 temporary file in the same folder, fsync, rename, fsync of the folder)
and compare-and-swap on the record's revision. The lease is an OS advisory lock on a sibling
``.lock`` file (``filelock``): the OS frees it when a holder dies. A file that cannot be decoded
raises ``StorageCorrupt`` naming the path and is never overwritten; for a format that another
program rewrites in place (the codec's ``settle_time``), the file is first given that long to
change, so a write caught half-way is not mistaken for corruption.

A credential path that is a symlink is resolved once, when the store is made: the store, its
lock file and its writes are the target's, so engines that open the file through the link and
through the target share one lease, and a write replaces the target, keeping the link.

This module also owns :class:`LockFileLease`, the lease both file-locked stores (this one and
``KeyringStore``) hold; it must not know what the store keeps.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import filelock

from ...engine import LeaseTimeout, Record, StorageCorrupt, StorageUnavailable, WriteConflict
from ._codec import Codec, CodecError, NativeCodec
from ._commit import Make, bumped, unchanged
from ._encryption import bind_codec, is_encrypted
from ._lock_watch import LockFileWatch

__all__ = ["FileStore"]

# A file that fails to decode is re-read this many times within the settle time.
_SETTLE_STEPS = 4
# The random part of tempfile.mkstemp's names: 8 characters, never a dot. A neighbour whose name
# extends ours ("auth.json.work") has a dot where ours has these, so the sweep never matches it.
_TEMP_RANDOM = "[a-z0-9_]{8}"


def check_lock_timeout(value: float) -> float:
    """``value`` as a lock wait in seconds; ValueError unless a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"lock_timeout must be a number of seconds, not {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"lock_timeout must be finite and at least 0 seconds, not {value!r}")
    return float(value)


# How long taking a lease that nobody holds may wait for watchers' momentary shared locks.
_WATCHERS_GRACE = 0.05


class LockFileLease:
    """
    The lease of a store that locks a file: exclusive per holder, within and across processes.

    Two locks, taken in this order:

    - a ``threading.Lock`` of this object, which is not re-entrant: engines of one event loop
      share a thread (``AsyncAuthEngine`` polls ``lease(0)``) and often one store object, and
      must still exclude each other, or two of them spend one refresh token;
    - the OS lock on ``lock_file`` (``filelock``), which excludes other store objects and
      processes, and which the OS frees when its holder dies.

    :meth:`lease` is the lease (both locks), held by one thread: the one that took it, or the
    one that took it over (:meth:`LeaseHold.rebind`: an engine keeps the lease across calls
    while its freshly minted tokens are not written yet, and its next call may come from
    another thread). :meth:`guard` is what the store's own ``write()``/``delete()`` (and
    confirming reads) take: nothing more for the holding thread, both locks for any other, so
    they work inside a held lease and still exclude other threads and processes without it.
    """

    def __init__(self, lock_file: Path, *, poll_interval: float) -> None:
        self._lock_file = lock_file
        self._lock_name = str(lock_file)
        self._holder = threading.Lock()
        # Not thread-local: the lease may be released by another thread than the one that took
        # it (see above); this object's threading lock keeps the threads apart.
        self._os_lock = filelock.FileLock(
            lock_file, mode=0o600, poll_interval=poll_interval, thread_local=False
        )
        self._watch = LockFileWatch(lock_file)
        self._owner: int | None = None  # the thread holding the lease

    @property
    def lock_file(self) -> Path:
        return self._lock_file

    def lease(self, timeout: float, *, before: Callable[[], None] | None = None) -> LeaseHold:
        """The lease; ``LeaseTimeout`` when it stays held (by anyone) for ``timeout`` seconds."""
        return LeaseHold(self, timeout, before)

    @contextmanager
    def hold(self, timeout: float, *, before: Callable[[], None] | None = None) -> Iterator[None]:
        """
        :meth:`lease` as a plain context manager, held by the calling thread (a try that cannot
        wait has looked already: :class:`LeaseHold`). ``before`` runs before the OS lock.
        """
        deadline = time.monotonic() + timeout
        if not self._holder.acquire(timeout=timeout if timeout >= 0 else -1):
            raise self.timeout_error(timeout)
        try:
            if before is not None:
                before()
            left = max(deadline - time.monotonic(), 0.0) if timeout >= 0 else timeout
            with self._locked(left, timeout):
                self._owner = threading.get_ident()
                try:
                    yield
                finally:
                    self._owner = None
        finally:
            self._holder.release()

    def held_elsewhere(self) -> bool:
        """
        One look (a non-blocking shared lock) that answers a try that cannot wait: the lease
        is held, by another process or store object. The followers of a refresh all try once,
        at the same instant, before they sleep.
        """
        return bool(self._watch.held_exclusively())

    def rebind(self) -> None:
        """The calling thread holds the lease from now on (it must be held)."""
        self._owner = threading.get_ident()

    def wait_for_release(self, timeout: float) -> None:
        """Sleep until no one holds the OS lock (or ``timeout``): see :class:`LockFileWatch`."""
        self._watch.wait_for_release(timeout)

    async def wait_for_release_async(self, timeout: float) -> None:
        await self._watch.wait_for_release_async(timeout)

    @contextmanager
    def guard(self, timeout: float) -> Iterator[None]:
        """Exclusion for one store operation: already had by the lease's thread (see above)."""
        if self._owner == threading.get_ident():
            yield
            return
        if not self._holder.acquire(timeout=timeout if timeout >= 0 else -1):
            raise self.timeout_error(timeout)
        try:
            with self._locked(timeout, timeout):
                yield
        finally:
            self._holder.release()

    @contextmanager
    def _locked(self, wait: float, timeout: float) -> Iterator[None]:
        try:
            self._lock_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                self._os_lock.acquire(timeout=wait)
            except filelock.Timeout:
                # Waiters watching for a release (LockFileWatch) hold a shared lock for an
                # instant when one happens; they are not holders. Only when nobody holds the
                # lock exclusively, give them that instant.
                if self._watch.held_exclusively() is not False:
                    raise
                self._os_lock.acquire(timeout=_WATCHERS_GRACE)
        except filelock.Timeout:
            raise self.timeout_error(timeout) from None
        except OSError as error:
            raise StorageUnavailable(f"Cannot lock {self._lock_file}: {error.strerror}.") from None
        try:
            yield
        finally:
            self._os_lock.release()

    def timeout_error(self, timeout: float) -> LeaseTimeout:
        return LeaseTimeout(
            f"The refresh lease {self._lock_name} was held for over {timeout:g} s.",
            reason="lease_timeout",
        )


class LeaseHold(AbstractContextManager[None]):
    """
    One taking of a :class:`LockFileLease`. ``before`` runs before the OS lock is taken (it may
    raise, e.g. a folder that cannot be made); not when one look finds the lease held. Dropped
    while held (an engine that kept it, collected), it is released: the generator underneath is
    closed, which runs its ``finally``.
    """

    def __init__(
        self, lease: LockFileLease, timeout: float, before: Callable[[], None] | None
    ) -> None:
        self._lease = lease
        self._timeout = timeout
        self._before = before
        self._held: AbstractContextManager[None] | None = None

    def __enter__(self) -> None:
        lease = self._lease
        if self._timeout == 0 and lease.held_elsewhere():
            # Answered here rather than from inside hold()'s generator: every follower of a
            # storm makes this try, and raising through the generator costs more than the look.
            raise lease.timeout_error(0)
        held = lease.hold(self._timeout, before=self._before)
        held.__enter__()
        self._held = held

    def __exit__(self, *exc_info: Any) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.__exit__(*exc_info)

    def rebind(self) -> None:
        """Taken over by the calling thread (see :meth:`LockFileLease.rebind`)."""
        if self._held is not None:
            self._lease.rebind()


def resolve_link(path: Path) -> Path:
    """
    The file that ``path`` names: a symlink is followed to its end, anything else kept as is.

    Raises ``StorageUnavailable`` (reason ``symlink_loop``) for links that lead in a circle.
    """
    if not os.path.islink(path):
        return path
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # a loop: RuntimeError before Python 3.13, OSError since
        raise StorageUnavailable(
            f"Cannot use credential store {path}: its symbolic links lead in a circle.",
            reason="symlink_loop",
        ) from None


def _absolute(path: Path) -> str:
    """``path`` made absolute with every symlink resolved (as far as possible)."""
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):  # a loop among its parent folders
        return os.path.abspath(path)


class FileStore:
    """
    The credential record in a JSON file.

    Args:
        path: the credential file (``~`` is expanded); its folder is created 0700 if missing.
            A symlink is resolved now, once (a link made or changed later is not followed):
            the store is the target's, and writes replace the target, keeping the link.
        codec: the file format (default: :class:`NativeCodec`).
        lock_path: the lease's lock file (default: ``<path>.lock``, next to the target).
        lock_timeout: how long ``write()`` and ``delete()`` wait for the lock, in seconds;
            then they raise ``LeaseTimeout``.
        poll_interval: how often a waiting engine retries the OS lock, in seconds.
        settle_time: how long a file that fails to decode may take to change before it is
            called corrupt (default: the codec's ``settle_time``, else 0: at once).

    The lease is not re-entrant: while anyone holds it (another process, thread, store object,
    or an engine sharing this object on the same thread), ``lease()`` waits, then raises
    ``LeaseTimeout``. ``write()`` and ``delete()`` work inside it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        codec: Codec | None = None,
        lock_path: str | os.PathLike[str] | None = None,
        lock_timeout: float = 30.0,
        poll_interval: float = 0.002,
        settle_time: float | None = None,
    ) -> None:
        self._path = resolve_link(Path(path).expanduser())
        self._name = os.fspath(self._path)  # what open() takes without converting a Path
        # An encrypting codec is bound to this file (its fully resolved path), once.
        self._codec: Codec = bind_codec(
            codec if codec is not None else NativeCodec(),
            "file",
            _absolute(self._path),
            str(self._path),
        )
        settle = getattr(self._codec, "settle_time", 0.0) if settle_time is None else settle_time
        if not isinstance(settle, int | float) or not 0 <= settle <= 60:
            raise ValueError(f"settle_time must be between 0 and 60 seconds, not {settle!r}")
        self._settle = float(settle)
        self._lock_timeout = check_lock_timeout(lock_timeout)
        lock = (
            Path(lock_path).expanduser()
            if lock_path
            else self._path.with_name(self._path.name + ".lock")
        )
        self._lease = LockFileLease(lock, poll_interval=poll_interval)
        # Exactly the names _replace gives its temporary files, never another store's.
        self._temp_name = re.compile(rf"\.{re.escape(self._path.name)}\.{_TEMP_RANDOM}\.tmp")

    @property
    def path(self) -> Path:
        return self._path

    @property
    def location(self) -> str:
        return str(self._path)

    @property
    def codec(self) -> Codec:
        return self._codec

    @property
    def encrypted(self) -> bool:
        """Whether records are written encrypted (an ``EncryptedCodec`` that seals)."""
        return is_encrypted(self._codec)

    def read(self) -> Record | None:
        return self._load()[1]

    def _load(self) -> tuple[bytes | None, Record | None]:
        """The file's bytes and the record they hold; (None, None) when there is no file."""
        data = self._read_bytes()
        if data is None:
            return None, None
        try:
            return data, self._codec.decode(data)
        except CodecError as error:
            problem = str(error)
        if self._settle > 0:
            # Another program may be rewriting the file in place (truncate, then write): what
            # is still undecodable after the settle time is corrupt.
            for _ in range(_SETTLE_STEPS):
                time.sleep(self._settle / _SETTLE_STEPS)
                again = self._read_bytes()
                if again is None:
                    return None, None
                if again == data:
                    continue
                data = again
                try:
                    return data, self._codec.decode(data)
                except CodecError as error:
                    problem = str(error)
        raise StorageCorrupt(self.location, problem)

    def _read_bytes(self) -> bytes | None:
        try:
            with open(self._name, "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise StorageCorrupt(self.location, "it is a directory") from None
        except PermissionError:
            raise StorageUnavailable(
                f"Cannot read credential store {self.location}: permission denied.",
                reason="permission_denied",
            ) from None
        except OSError as error:
            raise StorageUnavailable(
                f"Cannot read credential store {self.location}: {error.strerror}."
            ) from None

    def write(self, record: Record, expected_revision: int | None) -> Record:
        """Compare-and-swap under the OS lock; the new file is on disk when this returns."""
        return self._commit(expected_revision, bumped(record))

    def reseal(self, expected_revision: int) -> Record:
        """
        Write the stored record again as it is, revision included, in the codec's current form
        (an ``EncryptedCodec`` seals it with its current key): what ``rotate_key`` does.
        ``WriteConflict`` unless the file holds revision ``expected_revision``.
        """
        return self._commit(expected_revision, unchanged(self.location, expected_revision))

    def _commit(self, expected_revision: int | None, make: Make) -> Record:
        with self._lease.guard(self._lock_timeout):
            # A corrupt file raises here: it is never overwritten.
            previous, current = self._load()
            found = current.revision if current is not None else None
            if found != expected_revision:
                raise WriteConflict(self.location, expected_revision, found)
            stored = make(found, current)
            data = self._codec.encode(stored, previous=previous)
            try:
                self._sweep_orphans()
                self._replace(data)
            except OSError as error:
                raise StorageUnavailable(
                    f"Cannot write credential store {self.location}: {error.strerror}."
                ) from None
            return stored

    def delete(self, expected_revision: int | None) -> None:
        with self._lease.guard(self._lock_timeout):
            current = self.read()
            found = current.revision if current is not None else None
            if found != expected_revision:
                raise WriteConflict(self.location, expected_revision, found)
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    def lease(self, timeout: float) -> AbstractContextManager[None]:
        """Exclusive to one holder at a time, in this process and across processes."""
        return self._lease.lease(timeout, before=self._lock_folder)

    def _lock_folder(self) -> None:
        try:
            self._parent()
        except OSError as error:
            raise StorageUnavailable(
                f"Cannot lock {self._lease.lock_file}: {error.strerror}."
            ) from None

    def wait_for_release(self, timeout: float) -> None:
        """
        Sleep until the lease is free, at most ``timeout`` seconds (``ReleaseWatch``).

        Every engine waiting on this file, in any process, wakes when its holder lets go.
        """
        self._lease.wait_for_release(timeout)

    async def wait_for_release_async(self, timeout: float) -> None:
        """:meth:`wait_for_release` for ``AsyncAuthEngine``: no thread is held while it waits."""
        await self._lease.wait_for_release_async(timeout)

    def _parent(self) -> Path:
        parent = self._path.parent
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return parent

    def _sweep_orphans(self) -> None:
        # Temporary files of a writer of this store that died mid-write (never renamed into
        # place). We hold the lock, so no live writer of this store is between creating and
        # renaming one; another store's temporary files never match this store's exact names.
        with os.scandir(self._path.parent) as entries:
            orphans = [entry.path for entry in entries if self._temp_name.fullmatch(entry.name)]
        for orphan in orphans:
            with contextlib.suppress(OSError):
                os.unlink(orphan)

    def _replace(self, data: bytes) -> None:
        parent = self._parent()
        fd, tmp = tempfile.mkstemp(prefix=f".{self._path.name}.", suffix=".tmp", dir=parent)
        try:
            with os.fdopen(fd, "wb") as handle:  # mkstemp creates the file 0600
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def __repr__(self) -> str:
        return f"<FileStore {self.location}>"
