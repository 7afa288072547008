"""
A store in one JSON file, shared by processes on one machine.

Writes are atomic (a 0600 temporary file in the same folder, fsync, rename, fsync of the folder)
and compare-and-swap on the record's revision. The lease is an OS advisory lock on a sibling
``.lock`` file (``filelock``): the OS frees it when a holder dies. A file that cannot be decoded
raises ``StorageCorrupt`` naming the path and is never overwritten; for a format that another
program rewrites in place (the codec's ``settle_time``), the file is first given that long to
change, so a write caught half-way is not mistaken for corruption.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import filelock

from ...engine import LeaseTimeout, Record, StorageCorrupt, StorageUnavailable, WriteConflict
from ._codec import Codec, CodecError, NativeCodec

__all__ = ["FileStore"]

# A file that fails to decode is re-read this many times within the settle time.
_SETTLE_STEPS = 4


class FileStore:
    """
    The credential record in a JSON file.

    Args:
        path: the credential file (``~`` is expanded); its folder is created 0700 if missing.
        codec: the file format (default: :class:`NativeCodec`).
        lock_path: the lease's lock file (default: ``<path>.lock``).
        poll_interval: how often a waiting engine retries the OS lock, in seconds.
        settle_time: how long a file that fails to decode may take to change before it is
            called corrupt (default: the codec's ``settle_time``, else 0: at once).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        codec: Codec | None = None,
        lock_path: str | os.PathLike[str] | None = None,
        poll_interval: float = 0.002,
        settle_time: float | None = None,
    ) -> None:
        self._path = Path(path).expanduser()
        self._codec: Codec = codec if codec is not None else NativeCodec()
        settle = getattr(self._codec, "settle_time", 0.0) if settle_time is None else settle_time
        if not isinstance(settle, int | float) or not 0 <= settle <= 60:
            raise ValueError(f"settle_time must be between 0 and 60 seconds, not {settle!r}")
        self._settle = float(settle)
        lock = (
            Path(lock_path).expanduser()
            if lock_path
            else self._path.with_name(self._path.name + ".lock")
        )
        # One lock object per store: re-entrant for the thread holding the lease (so write()
        # inside a lease does not deadlock), exclusive across threads and processes.
        self._lock = filelock.FileLock(lock, mode=0o600, poll_interval=poll_interval)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def location(self) -> str:
        return str(self._path)

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
            return self._path.read_bytes()
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
        with self.lease(timeout=30.0):
            # A corrupt file raises here: it is never overwritten.
            previous, current = self._load()
            found = current.revision if current is not None else None
            if found != expected_revision:
                raise WriteConflict(self.location, expected_revision, found)
            stored = attrs.evolve(record, revision=(found or 0) + 1)
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
        with self.lease(timeout=30.0):
            current = self.read()
            found = current.revision if current is not None else None
            if found != expected_revision:
                raise WriteConflict(self.location, expected_revision, found)
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    @contextmanager
    def lease(self, timeout: float) -> Iterator[None]:
        try:
            self._parent()
            self._lock.acquire(timeout=timeout)
        except filelock.Timeout:
            raise LeaseTimeout(
                f"The refresh lease {self._lock.lock_file} was held for over {timeout:g} s.",
                reason="lease_timeout",
            ) from None
        except OSError as error:
            raise StorageUnavailable(
                f"Cannot lock {self._lock.lock_file}: {error.strerror}."
            ) from None
        try:
            yield
        finally:
            self._lock.release()

    def _parent(self) -> Path:
        parent = self._path.parent
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return parent

    def _sweep_orphans(self) -> None:
        # Temporary files of a writer that died mid-write (never renamed into place). We hold the
        # lease, so no live writer of this store is between mkstemp and rename right now.
        for orphan in self._path.parent.glob(f".{glob.escape(self._path.name)}.*.tmp"):
            with contextlib.suppress(OSError):
                orphan.unlink()

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
