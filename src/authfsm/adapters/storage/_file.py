"""
A store in one JSON file, shared by processes on one machine.

Writes are atomic (a 0600 temporary file in the same folder, fsync, rename, fsync of the folder)
and compare-and-swap on the record's revision. The lease is an OS advisory lock on a sibling
``.lock`` file (``filelock``): the OS frees it when a holder dies. A file that cannot be decoded
raises ``StorageCorrupt`` naming the path and is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import filelock

from ...engine import LeaseTimeout, Record, StorageCorrupt, StorageUnavailable, WriteConflict
from ._codec import Codec, CodecError, NativeCodec

__all__ = ["FileStore"]


class FileStore:
    """
    The credential record in a JSON file.

    Args:
        path: the credential file (``~`` is expanded); its folder is created 0700 if missing.
        codec: the file format (default: :class:`NativeCodec`).
        lock_path: the lease's lock file (default: ``<path>.lock``).
        poll_interval: how often a waiting engine retries the OS lock, in seconds.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        codec: Codec | None = None,
        lock_path: str | os.PathLike[str] | None = None,
        poll_interval: float = 0.002,
    ) -> None:
        self._path = Path(path).expanduser()
        self._codec: Codec = codec if codec is not None else NativeCodec()
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
        try:
            data = self._path.read_bytes()
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
        try:
            return self._codec.decode(data)
        except CodecError as error:
            raise StorageCorrupt(self.location, str(error)) from None

    def write(self, record: Record, expected_revision: int | None) -> Record:
        with self.lease(timeout=30.0):
            current = self.read()  # a corrupt file raises here: it is never overwritten
            found = current.revision if current is not None else None
            if found != expected_revision:
                raise WriteConflict(self.location, expected_revision, found)
            stored = attrs.evolve(record, revision=(found or 0) + 1)
            try:
                self._replace(self._codec.encode(stored))
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
