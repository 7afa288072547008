"""
Waiting for a lock file's lease to be given back without polling (``ReleaseWatch`` for files).

The lease of a file store is an exclusive ``flock`` on its lock file. A *shared* ``flock`` on the
same file is granted by the kernel the moment no exclusive one is held, to every shared waiter
at once: followers of a refresh sleep in the kernel until the leader releases, instead of
waking every few milliseconds to look (which, with dozens of followers on two cores, starved
the leader they were waiting for).

``flock`` has no timeout, so one daemon thread per watched file blocks in it for the waiters of
this process and wakes them all (threads, and asyncio tasks of any loop, through
:class:`Wakeup`); a waiter gives up after its own timeout and leaves the thread to finish
whenever the holder lets go. The shared lock is released as soon as it is granted: it only ever
signals, it never holds anything. Where ``flock`` cannot answer (a file system without it, a
lock file this process may not read), waiters poll every 20 ms as before: never an error, never
a busy loop.

The thread is started at the first wait and then kept, idle on a lock, for the next one: a
thread started per wait cost a follower of a refresh more CPU than everything else it did (on
two cores, 32 followers starting threads at once delayed the leader's call). It ends when its
store object is collected, and a forked child starts its own.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
import time
import weakref
from pathlib import Path

from ._wakeup import Wakeup

__all__ = ["LockFileWatch"]

# How long a waiter pauses when the file system cannot tell whether the lock is held (no flock,
# as on some network file systems, where filelock falls back to a soft lock): a short poll.
_CANNOT_TELL_PAUSE = 0.02


class LockFileWatch:
    """Wakes the waiters of this process when nobody holds the exclusive lock on ``lock_file``."""

    def __init__(self, lock_file: Path) -> None:
        self._lock_file = lock_file
        self._lock_name = os.fspath(lock_file)  # os.open of a Path converts it on every call
        self._wakeup = Wakeup()
        self._watcher: _Watcher | None = None

    def wait_for_release(self, timeout: float) -> None:
        """Return once the exclusive lock is free, or after ``timeout`` seconds."""
        free = self._is_free()
        if free is None:  # this file system cannot tell: look again a little later
            time.sleep(max(min(timeout, _CANNOT_TELL_PAUSE), 0.0))
        elif not free:
            self._wakeup.wait(timeout, until_woken=self._watching)

    async def wait_for_release_async(self, timeout: float) -> None:
        """:meth:`wait_for_release` for asyncio, holding no thread while it waits."""
        free = self._is_free()
        if free is None:
            await asyncio.sleep(max(min(timeout, _CANNOT_TELL_PAUSE), 0.0))
        elif not free:
            await self._wakeup.wait_async(timeout, until_woken=self._watching)

    def held_exclusively(self) -> bool | None:
        """Whether someone holds the lease now (None: this file system cannot tell)."""
        free = self._is_free()
        return None if free is None else not free

    def _is_free(self) -> bool | None:
        """
        One non-blocking try for the shared lock: a missing lock file is free, an error (no
        ``flock`` on this file system, no permission) is "cannot tell" (None).
        """
        try:
            fd = os.open(self._lock_name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            return None
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
        finally:
            os.close(fd)

    def _watching(self) -> bool:
        """
        Have this process's watcher thread wait in the kernel for the next release (starting
        it, in this process, if there is none yet).

        Called with the wakeup's lock held: a watcher that sees the lock free after the check
        above wakes this waiter, however late it looks.
        """
        watcher = self._watcher
        if watcher is None or not watcher.alive():
            watcher = _Watcher(self._lock_file, self._wakeup)
            self._watcher = watcher
            # The thread holds the watcher, never this object: when the store is collected,
            # its thread is told to end.
            weakref.finalize(self, watcher.close)
        watcher.arm()
        return True


class _Watcher:
    """
    One process's thread waiting for the releases of one lock file, kept between waits.

    Idle, it sleeps on ``_armed`` (a lock that :meth:`arm` releases); armed, it waits in the
    kernel for a shared ``flock``, lets go of it at once and wakes every waiter. Its state
    changes under the wakeup's lock, as the waiters' do.
    """

    def __init__(self, lock_file: Path, wakeup: Wakeup) -> None:
        self._lock_file = lock_file
        self._wakeup = wakeup
        self._armed = threading.Lock()
        self._armed.acquire()  # released: a wait is wanted
        self._wanted = False
        self._closed = False
        self._pid = os.getpid()
        self._thread = threading.Thread(
            target=self._run, name=f"authfsm-watch:{lock_file.name}", daemon=True
        )
        self._thread.start()

    def alive(self) -> bool:
        return self._pid == os.getpid() and self._thread.is_alive()

    def arm(self) -> None:
        """Wait for the next release (called with the wakeup's lock held)."""
        if not self._wanted:
            self._wanted = True
            self._armed.release()

    def close(self) -> None:
        """Let the thread end (now if idle, else after the release it waits for)."""
        with self._wakeup.lock:
            self._closed = True
            if not self._wanted and self._pid == os.getpid():
                self._wanted = True
                self._armed.release()

    def _run(self) -> None:
        while True:
            self._armed.acquire()
            if self._closed:
                return
            try:
                fd = os.open(self._lock_file, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)  # sleeps until no exclusive holder is left
                    fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    os.close(fd)
            except OSError:
                pass  # gone or unlockable: the waiters look again (their timeout is the net)
            with self._wakeup.lock:
                self._wanted = False
                self._wakeup.wake()
                if self._closed:
                    return
