"""
Followers of a refresh sleep until the leader gives the lease back, then adopt what it wrote.

The file stores implement ``ReleaseWatch`` with a shared ``flock`` on the lease's lock file (the
kernel grants it to every waiter the moment the exclusive holder lets go); ``MemoryStore`` with a
condition variable. These tests prove the waits end at the release (long before their timeout),
never before it, across real processes, and that an engine waiting on a busy lease sleeps
instead of looking at the store every few milliseconds.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import gc
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from authfsm import AsyncAuthEngine, AuthEngine, Policy, StorageUnavailable
from authfsm.adapters import FileStore, MemoryStore, OAuthTokenEndpoint
from authfsm.engine import LeaseTimeout, Record, Refreshed, ReleaseWatch, minted
from authfsm.testing import TokenServer

from .conftest import CountingStore

# Generous bounds: a wait that the release ends returns in milliseconds; one that the release
# did not end lasts its whole timeout (10 s here).
LONG = 10.0
WOKEN_WITHIN = 5.0

# A child process that holds the lease of a file store until told to let go on stdin.
_HOLDER = """
import sys
from authfsm.adapters import FileStore

with FileStore(sys.argv[1]).lease(5.0):
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def _watchers(path: Path) -> list[threading.Thread]:
    """This process's threads waiting for the release of ``path``'s lease."""
    name = f"authfsm-watch:{path.name}.lock"
    return [thread for thread in threading.enumerate() if thread.name == name]


def _timed(call: Callable[[], None]) -> tuple[threading.Thread, list[float]]:
    """Run ``call`` in a thread; the list gets how long it took."""
    took: list[float] = []

    def run() -> None:
        started = time.monotonic()
        call()
        took.append(time.monotonic() - started)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, took


class TestFileStoreWatch:
    def test_is_a_release_watch(self, tmp_path: Path) -> None:
        assert isinstance(FileStore(tmp_path / "auth.json"), ReleaseWatch)
        assert isinstance(MemoryStore(), ReleaseWatch)

    def test_returns_at_once_when_nobody_holds_it(self, tmp_path: Path) -> None:
        store = FileStore(tmp_path / "auth.json")
        started = time.monotonic()
        store.wait_for_release(LONG)  # no lock file yet
        with store.lease(1.0):
            pass
        store.wait_for_release(LONG)  # a lock file nobody holds
        assert time.monotonic() - started < WOKEN_WITHIN

    def test_waits_its_timeout_while_the_lease_is_held(self, tmp_path: Path) -> None:
        path = tmp_path / "auth.json"
        with FileStore(path).lease(1.0):
            started = time.monotonic()
            FileStore(path).wait_for_release(0.3)
            assert time.monotonic() - started >= 0.3

    def test_every_waiter_wakes_when_another_process_releases(self, tmp_path: Path) -> None:
        path = tmp_path / "auth.json"
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdin is not None
            assert "held" == holder.stdout.readline().strip()
            # Waiters in this process: on one store object, and on store objects of their own.
            shared = FileStore(path)
            stores = [shared, shared, *(FileStore(path) for _ in range(6))]
            waiters = [_timed(lambda s=s: s.wait_for_release(LONG)) for s in stores]
            time.sleep(0.3)
            assert all(thread.is_alive() for thread, _ in waiters), "woke while still held"
            holder.stdin.write("go\n")
            holder.stdin.flush()
            for thread, _ in waiters:
                thread.join(LONG + 5)
            took = [t for _, t in waiters for t in t]
            assert 8 == len(took)
            assert max(took) < WOKEN_WITHIN  # the release woke them, not the 10 s timeout
            assert min(took) >= 0.3
        finally:
            holder.kill()
            holder.wait(10)

    def test_one_kept_thread_waits_for_every_release(self, tmp_path: Path) -> None:
        """
        The thread that waits in the kernel is started at the first wait and kept for the
        next ones (a thread per wait cost a storm's followers more CPU than anything else they
        did); it ends when its store object is collected.
        """
        path = tmp_path / "kept-thread.json"  # a name no other test's watcher threads have
        store = FileStore(path)
        seen: list[threading.Thread] = []
        for _ in range(3):
            with FileStore(path).lease(1.0):
                store.wait_for_release(0.05)  # held by another store object: times out
                seen.extend(_watchers(path))
            store.wait_for_release(LONG)  # released: at once
        assert 3 == len(seen)
        assert 1 == len(set(seen))
        kept = seen[0]
        assert kept.is_alive()  # idle between waits, not ended

        del store
        gc.collect()
        kept.join(WOKEN_WITHIN)
        assert not kept.is_alive()

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
    def test_a_forked_child_waits_with_a_thread_of_its_own(self, tmp_path: Path) -> None:
        """The parent's kept thread does not exist in a child: the child starts its own."""
        path = tmp_path / "forked-child.json"
        store = FileStore(path)
        with FileStore(path).lease(1.0):
            store.wait_for_release(0.05)  # the parent's thread is kept from here
            assert [] != _watchers(path)
            pid = os.fork()
            if pid == 0:  # the child: woken by the parent's release, not by its timeout
                started = time.monotonic()
                store.wait_for_release(LONG)
                os._exit(0 if time.monotonic() - started < WOKEN_WITHIN else 1)
            time.sleep(0.3)
        _, status = os.waitpid(pid, 0)
        assert 0 == os.waitstatus_to_exitcode(status)

    def test_asyncio_waiters_hold_no_thread_and_all_wake(self, tmp_path: Path) -> None:
        """200 tasks (as 200 engines of one process would) wait; one kernel waiter serves them."""
        path = tmp_path / "auth.json"
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

        async def wait_all() -> tuple[list[float], int]:
            store = FileStore(path)
            started = time.monotonic()

            async def one() -> float:
                await store.wait_for_release_async(LONG)
                return time.monotonic() - started

            tasks = [asyncio.ensure_future(one()) for _ in range(200)]
            await asyncio.sleep(0.3)
            threads = threading.active_count()
            assert not any(task.done() for task in tasks), "woke while still held"
            assert holder.stdin is not None
            holder.stdin.write("go\n")
            holder.stdin.flush()
            return list(await asyncio.wait_for(asyncio.gather(*tasks), LONG + 5)), threads

        try:
            assert holder.stdout is not None
            assert "held" == holder.stdout.readline().strip()
            before = threading.active_count()
            took, threads = asyncio.run(wait_all())
            assert threads <= before + 2  # one watcher thread, not one per task
            assert 200 == len(took)
            assert max(took) < WOKEN_WITHIN
        finally:
            holder.kill()
            holder.wait(10)

    def test_a_watchers_shared_lock_is_not_a_holder(self, tmp_path: Path) -> None:
        """A waiter's momentary shared lock (taken as a release happens) does not make an
        attempt to take the free lease fail; a real holder still does, at once."""
        path = tmp_path / "auth.json"
        store = FileStore(path)
        with store.lease(1.0):
            pass
        fd = os.open(tmp_path / "auth.json.lock", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # what LockFileWatch holds for an instant
            threading.Timer(0.01, fcntl.flock, (fd, fcntl.LOCK_UN)).start()
            with store.lease(0):
                pass
        finally:
            os.close(fd)
        with FileStore(path).lease(1.0):
            started = time.monotonic()
            with pytest.raises(LeaseTimeout):
                store.lease(0).__enter__()
            assert time.monotonic() - started < WOKEN_WITHIN

    def test_a_holder_that_dies_wakes_the_waiters(self, tmp_path: Path) -> None:
        path = tmp_path / "auth.json"
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            assert "held" == holder.stdout.readline().strip()
            thread, took = _timed(lambda: FileStore(path).wait_for_release(LONG))
            time.sleep(0.2)
            holder.kill()  # SIGKILL: the OS frees the lock
            thread.join(LONG + 5)
            assert took
            assert took[0] < WOKEN_WITHIN
        finally:
            holder.kill()
            holder.wait(10)

    def test_a_file_system_without_flock_is_polled_not_an_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Some network file systems answer flock with ENOLCK: wait a poll interval, no more."""
        from authfsm.adapters.storage import _lock_watch

        path = tmp_path / "auth.json"
        store = FileStore(path)
        with store.lease(1.0):
            pass

        def no_flock(fd: int, operation: int) -> None:
            raise OSError(errno.ENOLCK, "No locks available")

        monkeypatch.setattr(_lock_watch.fcntl, "flock", no_flock)
        started = time.monotonic()
        for _ in range(5):
            store.wait_for_release(LONG)
        took = time.monotonic() - started
        assert 5 * 0.02 <= took < WOKEN_WITHIN  # a short pause each time: no busy loop


class TestMemoryStoreWatch:
    def test_waiters_wake_on_release_and_not_before(self) -> None:
        store = MemoryStore()
        release = threading.Event()

        def hold() -> None:
            with store.lease(1.0):
                release.wait(LONG)

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        time.sleep(0.05)
        waiters = [_timed(lambda: store.wait_for_release(LONG)) for _ in range(4)]
        time.sleep(0.2)
        assert all(thread.is_alive() for thread, _ in waiters)
        release.set()
        for thread, _ in waiters:
            thread.join(LONG + 5)
        took = [t for _, t in waiters for t in t]
        assert 4 == len(took)
        assert max(took) < WOKEN_WITHIN

    def test_asyncio_waiters_wake_on_release(self) -> None:
        store = MemoryStore()

        async def scenario() -> list[float]:
            started = time.monotonic()

            async def one() -> float:
                await store.wait_for_release_async(LONG)
                return time.monotonic() - started

            with store.lease(1.0):
                tasks = [asyncio.ensure_future(one()) for _ in range(50)]
                await asyncio.sleep(0.2)
                assert not any(task.done() for task in tasks)
            return list(await asyncio.wait_for(asyncio.gather(*tasks), LONG + 5))

        took = asyncio.run(scenario())
        assert 50 == len(took)
        assert min(took) >= 0.2
        assert max(took) < WOKEN_WITHIN


POLICY = Policy(lease_timeout=timedelta(seconds=20))


def _rotate_under_lease(path: Path, server: TokenServer, hold_for: float) -> threading.Thread:
    """A leader in another thread: holds the lease, spends the token, writes, releases."""
    leader_ready = threading.Event()

    def lead() -> None:
        store = FileStore(path)
        with (
            OAuthTokenEndpoint(server.token_url, "test-client") as endpoint,
            store.lease(5.0),
        ):
            leader_ready.set()
            time.sleep(hold_for)
            record = store.read()
            assert record is not None
            assert record.credential is not None
            answer = endpoint.refresh(record.credential)
            assert isinstance(answer, Refreshed)
            rotated = minted(record.credential, answer, time.time(), POLICY.identity)
            store.write(Record(credential=rotated), record.revision)

    thread = threading.Thread(target=lead, daemon=True)
    thread.start()
    assert leader_ready.wait(10)
    return thread


def _due_engines_stores(path: Path, server: TokenServer, n: int) -> list[CountingStore]:
    """A credential stored due (half its 0.2 s life gone), and ``n`` counting stores of it."""
    creds = server.issue(expires_in=0.2)
    FileStore(path).write(Record(credential=creds), None)
    time.sleep(0.2)
    return [CountingStore(FileStore(path)) for _ in range(n)]


def _follow(engines: list[AuthEngine], tokens: list[str]) -> list[threading.Thread]:
    """One started thread per engine, adding its token to ``tokens`` (reads counted from now)."""
    for engine in engines:
        store = engine._store
        assert isinstance(store, CountingStore)
        store.reads = 0
    followers = [
        threading.Thread(target=lambda e=e: tokens.append(e.access_token()), daemon=True)
        for e in engines
    ]
    for thread in followers:
        thread.start()
    return followers


class TestEngineFollowers:
    def test_followers_sleep_until_the_leader_writes_then_adopt(self, tmp_path: Path) -> None:
        path = tmp_path / "auth.json"
        with (
            TokenServer(access_token_ttl=3600.0) as server,
            OAuthTokenEndpoint(server.token_url, "test-client") as endpoint,
        ):
            stores = _due_engines_stores(path, server, 4)
            engines = [AuthEngine(store, endpoint, POLICY) for store in stores]
            leader = _rotate_under_lease(path, server, hold_for=1.0)
            tokens: list[str] = []
            followers = _follow(engines, tokens)
            for thread in (leader, *followers):
                thread.join(30)

            rotated = FileStore(path).read()
            assert rotated is not None
            assert rotated.credential is not None
            assert [rotated.credential.access_token] * 4 == tokens
            assert 1 == server.token_calls  # the leader's only
            assert 0 == server.reuse_rejections
            # One second of waiting costs a few looks (a slice is at most 0.25 s), not 50.
            assert all(store.waits >= 1 for store in stores)
            assert max(store.reads for store in stores) <= 8

    def test_followers_touch_nothing_but_the_lease_watch_while_the_leader_holds_it(
        self, tmp_path: Path
    ) -> None:
        """
        At the start of a storm every follower costs the leader's cores: a follower's one look
        is its try for the lease; finding it held, it sleeps at once, without reading the
        record, then reads once and adopts (no lease held at all). Counted while the leader
        holds it.
        """
        path = tmp_path / "auth.json"
        with (
            TokenServer(access_token_ttl=3600.0) as server,
            OAuthTokenEndpoint(server.token_url, "test-client") as endpoint,
        ):
            stores = _due_engines_stores(path, server, 3)
            engines = [AuthEngine(store, endpoint, POLICY) for store in stores]
            leader = _rotate_under_lease(path, server, hold_for=0.5)
            tokens: list[str] = []
            followers = _follow(engines, tokens)
            time.sleep(0.1)  # the followers are asleep; the leader still holds the lease
            meanwhile = [(store.reads, store.leases) for store in stores]
            for thread in (leader, *followers):
                thread.join(30)

            assert [(0, 1)] * 3 == meanwhile  # one try for the lease each, no read
            # Then a look every slice (0.25 s) at most until the release, and the adoption.
            assert all(1 <= store.reads <= 4 for store in stores)
            assert 1 == len(set(tokens))
            assert (1, 0) == (server.token_calls, server.reuse_rejections)

    def test_a_watch_that_fails_only_skips_the_wait(self, tmp_path: Path) -> None:
        """A store whose release watch fails (a subscription to a server that went away) is
        looked at instead: the follower still adopts the leader's write, with no call."""

        class _BrokenWatch(FileStore):
            def wait_for_release(self, timeout: float) -> None:
                time.sleep(min(timeout, 0.02))
                raise StorageUnavailable("the release channel went away")

        path = tmp_path / "auth.json"
        with (
            TokenServer(access_token_ttl=3600.0) as server,
            OAuthTokenEndpoint(server.token_url, "test-client") as endpoint,
        ):
            creds = server.issue(expires_in=0.2)
            FileStore(path).write(Record(credential=creds), None)
            time.sleep(0.2)
            engine = AuthEngine(_BrokenWatch(path), endpoint, POLICY)
            leader = _rotate_under_lease(path, server, hold_for=0.3)

            token = engine.access_token()
            leader.join(30)

            rotated = FileStore(path).read()
            assert rotated is not None
            assert rotated.credential is not None
            assert rotated.credential.access_token == token
            assert (1, 0) == (server.token_calls, server.reuse_rejections)

    def test_an_async_engine_on_a_file_adopts_after_the_release(self, tmp_path: Path) -> None:
        path = tmp_path / "auth.json"
        with TokenServer(access_token_ttl=3600.0) as server:
            creds = server.issue(expires_in=0.2)
            FileStore(path).write(Record(credential=creds), None)
            time.sleep(0.2)

            async def follow() -> tuple[str, int]:
                with OAuthTokenEndpoint(server.token_url, "test-client") as endpoint:
                    store = CountingStore(FileStore(path))
                    engine = AsyncAuthEngine(store, endpoint, POLICY)
                    leader = _rotate_under_lease(path, server, hold_for=0.6)
                    token = await engine.access_token()
                    await asyncio.to_thread(leader.join, 30)
                    return token, store.waits

            token, waits = asyncio.run(follow())
            rotated = FileStore(path).read()
            assert rotated is not None
            assert rotated.credential is not None
            assert rotated.credential.access_token == token
            assert (1, 0) == (server.token_calls, server.reuse_rejections)
            assert waits >= 1
