"""The store contract kit run against every store authfsm ships (Redis: a real server)."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from authfsm.adapters import AsyncRedisStore, FileStore, MemoryStore, RedisStore
from authfsm.engine import Credentials, LeaseTimeout, Record, Store
from authfsm.testing import (
    AsyncStoreInThread,
    ContractViolation,
    ReferenceStore,
    StoreContract,
    check_async_store,
    check_store,
)

from .redis_server import (
    RedisServer,
    _redis_server,  # noqa: F401 - a fixture
)

_serial = itertools.count()


class TestMemoryStore(StoreContract):
    """MemoryStore keeps the contract (through the subclassable test class)."""

    def make_store(self) -> Store:
        return MemoryStore()


class TestFileStore:
    """FileStore keeps the contract, with a second FileStore on the same path as contender."""

    def test_contract(self, tmp_path: Path):
        """The differential state machine finds no difference from the reference model."""

        def factory() -> FileStore:
            return FileStore(tmp_path / f"auth-{next(_serial)}.json")

        check_store(factory, contender=lambda store: FileStore(store.path))

    def test_contract_contended_from_a_thread(self, tmp_path: Path):
        """The same FileStore object used from another thread is excluded too."""
        check_store(lambda: FileStore(tmp_path / f"auth-{next(_serial)}.json"))


class TestRedisStore:
    """RedisStore (sync) keeps the contract on a real redis-server."""

    def test_contract(self, redis_server: RedisServer):
        """With another RedisStore on the same key as the lease contender."""

        def factory() -> RedisStore:
            return RedisStore(redis_server.url, key=f"contract-{next(_serial)}")

        def contender(store: Store) -> Store:
            assert isinstance(store, RedisStore)
            return RedisStore(redis_server.url, key=store.key, key_prefix="")

        def forget(store: Store) -> None:
            assert isinstance(store, RedisStore)
            store.client.delete(store.key, store.lease_key, store.lease_key + ":wake")

        check_store(factory, contender=contender, teardown=forget)

    def test_contract_contended_from_a_thread(self, redis_server: RedisServer):
        """The same RedisStore object used from another thread is excluded too."""
        check_store(lambda: RedisStore(redis_server.url, key=f"contract-{next(_serial)}"))


class TestAsyncRedisStore:
    """AsyncRedisStore keeps the contract, driven through a blocking wrapper."""

    def test_contract(self, redis_server: RedisServer):
        """Each example's store runs on its own event loop thread."""

        def factory() -> AsyncRedisStore:
            return AsyncRedisStore(redis_server.url, key=f"contract-async-{next(_serial)}")

        def contender(store: object) -> AsyncRedisStore:
            assert isinstance(store, AsyncRedisStore)
            return AsyncRedisStore(redis_server.url, key=store.key, key_prefix="")

        check_async_store(factory, contender=contender)


class _LosesRevisions(MemoryStore):
    """A broken store: a write with a stale expected revision is accepted (no CAS)."""

    def write(self, record: Record, expected_revision: int | None) -> Record:
        current = self.read()
        return super().write(record, current.revision if current is not None else None)


class _LeakyLease(MemoryStore):
    """A broken store: its lease excludes nobody."""

    def lease(self, timeout: float):
        return contextlib.nullcontext()


class _ReentrantLease(MemoryStore):
    """A broken store: its lease excludes other threads but lets the holder's thread in again."""

    def __init__(self) -> None:
        super().__init__()
        self._reentrant = threading.RLock()

    @contextlib.contextmanager
    def lease(self, timeout: float) -> Iterator[None]:
        if not self._reentrant.acquire(timeout=timeout):
            raise LeaseTimeout("held", reason="lease_timeout")
        try:
            yield
        finally:
            self._reentrant.release()


class TestTheKitCatchesBrokenStores:
    """The kit is not vacuous: stores that break the contract fail it."""

    @pytest.mark.parametrize("broken", [_LosesRevisions, _LeakyLease, _ReentrantLease])
    def test_broken_store_fails(self, broken):
        """A store without CAS, with a lease that excludes nobody, or with a lease its holder's
        thread can take twice (two engines of one event loop) raises ContractViolation."""
        # Finding it is the point; shrinking it (and saving it) is not.
        quick = settings(
            max_examples=200, stateful_step_count=30, deadline=None, database=None,
            phases=[Phase.generate], suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        with pytest.raises(ContractViolation):
            check_store(broken, settings=quick)

    def test_reference_store_is_the_contract(self):
        """The model: revisions count from 1, wrong revisions are refused, delete restarts."""
        model = ReferenceStore()
        first = model.write(Record(credential=Credentials(access_token="a")), None)
        assert 1 == first.revision
        assert 2 == model.write(Record(credential=None), 1).revision
        with pytest.raises(Exception, match="expected revision 1, found 2"):
            model.write(Record(credential=None), 1)
        model.delete(2)
        assert None is model.record
        assert 1 == model.write(Record(credential=None), None).revision

    def test_async_wrapper_round_trip(self, redis_server: RedisServer):
        """AsyncStoreInThread gives blocking access to an async store, lease included."""
        store = AsyncStoreInThread(AsyncRedisStore(redis_server.url, key=f"w-{next(_serial)}"))
        try:
            stored = store.write(Record(credential=Credentials(access_token="a")), None)
            with store.lease(1.0):
                assert stored == store.read()
        finally:
            store.close()
