"""Replication-safe writes: with min_replicas, a write is done only once replicas acknowledged it
(WAIT after the compare-and-swap), else StorageUnreplicated, the write kept. A real primary and
replica; a SIGSTOPped replica acknowledges nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from authfsm.adapters import AsyncRedisStore, RedisStore
from authfsm.adapters.storage._redis_layout import CAS, digest
from authfsm.engine import (
    Credentials,
    Record,
    StorageUnavailable,
    StorageUnreplicated,
    WriteConflict,
)

from .redis_server import (
    RedisServer,
    Replicated,
    _redis_key,  # noqa: F401 - a fixture
    _redis_server,  # noqa: F401 - a fixture
    running,
)

SECRET = "rt-SECRET-5d2c9a41"


def creds(n: int) -> Credentials:
    return Credentials(access_token=f"at-{n}", refresh_token=f"{SECRET}-{n}", account_id="a-1")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


@pytest.fixture(name="pair", scope="module")
def _pair() -> Iterator[Replicated]:
    """A primary with one replica, shared by the module (tests isolate by key)."""
    with running(Replicated) as pair:
        yield pair


@pytest.fixture(name="store")
def _store(pair: Replicated, redis_key: str) -> Iterator[RedisStore]:
    with RedisStore(
        pair.primary.url, key=redis_key, min_replicas=1, replica_timeout=0.2, timeout=1.0
    ) as store:
        yield store
        store.client.delete(store.key)


def on(server: RedisServer, key: str) -> bytes | None:
    with server.client() as client:
        value: bytes | None = client.get(key)
        return value


class TestArguments:
    """min_replicas and replica_timeout are checked when the store is made."""

    @pytest.mark.parametrize(
        "options",
        [
            {"min_replicas": -1},
            {"min_replicas": 1.5},
            {"min_replicas": True},
            {"min_replicas": "1"},
            {"replica_timeout": 0},
            {"replica_timeout": -1.0},
            {"replica_timeout": float("nan")},
            {"replica_timeout": float("inf")},
            {"replica_timeout": True},
            # WAIT's reply would come after the socket gave up on it.
            {"min_replicas": 1, "replica_timeout": 2.0, "timeout": 2.0},
        ],
        ids=str,
    )
    @pytest.mark.parametrize("store_type", [RedisStore, AsyncRedisStore])
    def test_refused(self, store_type, options):
        with pytest.raises(ValueError, match=r"min_replicas|replica_timeout"):
            store_type("redis://127.0.0.1:1/0", **options)

    def test_refused_for_sentinel_stores_too(self):
        with pytest.raises(ValueError, match="min_replicas"):
            RedisStore.from_sentinel(["127.0.0.1:1"], "svc", min_replicas=-1)


class TestWaitForReplicas:
    """A write that swapped is followed by WAIT on its connection."""

    def test_every_kind_of_write_reaches_the_replica(self, pair, store):
        """write, reseal and delete return only once the replica holds what the primary does."""
        first = store.write(Record(credential=creds(1)), None)
        after_write = on(pair.replica, store.key)
        resealed = store.reseal(first.revision)
        after_reseal = on(pair.replica, store.key)
        store.delete(resealed.revision)
        after_delete = on(pair.replica, store.key)

        assert on(pair.primary, store.key) is None
        assert after_write is not None
        assert first == resealed
        assert after_reseal is not None
        assert None is after_delete

    def test_unacknowledged_write_raises_and_is_kept(self, pair, store):
        """Replica paused: StorageUnreplicated after replica_timeout; the primary has the write."""
        base = store.write(Record(credential=creds(1)), None)
        with pair.replica_paused():
            started = time.monotonic()
            with pytest.raises(StorageUnreplicated) as caught:
                store.write(Record(credential=creds(2)), base.revision)
            waited = time.monotonic() - started
            kept = store.read()

        error = caught.value
        assert isinstance(error, StorageUnavailable)
        assert ("unreplicated", 0, 1) == (error.reason, error.acknowledged, error.required)
        assert store.location in str(error)
        assert SECRET not in str(error) + repr(error)
        assert 0.2 <= waited < 1.0
        assert Record(credential=creds(2), revision=2) == kept

    def test_writing_again_is_a_new_revision_and_a_new_wait(self, pair, store):
        """What the engine does: write again on top of the kept write until it is acknowledged."""
        store.write(Record(credential=creds(1)), None)
        outcomes = []
        with pair.replica_paused():
            for revision in (1, 2):
                with pytest.raises(StorageUnreplicated):
                    store.write(Record(credential=creds(2)), revision)
                outcomes.append(store.read())
        final = store.write(Record(credential=creds(2)), 3)  # the replica is back: acknowledged

        assert [2, 3] == [record.revision for record in outcomes if record is not None]
        assert 4 == final.revision
        assert on(pair.primary, store.key) == on(pair.replica, store.key)

    def test_delete_and_reseal_wait_too(self, pair, store):
        """An unacknowledged reseal keeps its revision; an unacknowledged delete stays done."""
        store.write(Record(credential=creds(1)), None)
        with pair.replica_paused():
            with pytest.raises(StorageUnreplicated):
                store.reseal(1)
            resealed = store.read()
            with pytest.raises(StorageUnreplicated):
                store.delete(1)
            deleted = store.read()

        assert Record(credential=creds(1), revision=1) == resealed
        assert None is deleted

    def test_a_conflict_stays_a_conflict(self, pair, store):
        """A refused swap waits for nothing of its own: WriteConflict, the value unchanged."""
        store.write(Record(credential=creds(1)), None)
        before = on(pair.primary, store.key)
        with pytest.raises(WriteConflict):
            store.write(Record(credential=creds(2)), 7)
        assert before == on(pair.primary, store.key)

    def test_more_replicas_than_there_are(self, pair, redis_key):
        """min_replicas=2 with one replica: acknowledged 1 of 2."""
        with RedisStore(
            pair.primary.url, key=redis_key, min_replicas=2, replica_timeout=0.1
        ) as store:
            with pytest.raises(StorageUnreplicated) as caught:
                store.write(Record(credential=creds(1)), None)
            store.client.delete(store.key)

        assert (1, 2) == (caught.value.acknowledged, caught.value.required)

    def test_a_server_without_replicas(self, redis_server, redis_key):
        """A lone server never acknowledges: every write raises, and is kept."""
        with RedisStore(
            redis_server.url, key=redis_key, min_replicas=1, replica_timeout=0.05
        ) as store:
            with pytest.raises(StorageUnreplicated) as caught:
                store.write(Record(credential=creds(1)), None)
            kept = store.read()
            store.client.delete(store.key)

        assert 0 == caught.value.acknowledged
        assert kept is not None

    def test_without_min_replicas_nothing_waits(self, pair, redis_key):
        """The default (0) sends no WAIT: a write with a paused replica returns at once."""
        with RedisStore(pair.primary.url, key=redis_key) as store, pair.replica_paused():
            started = time.monotonic()
            store.write(Record(credential=creds(1)), None)
            took = time.monotonic() - started
            store.client.delete(store.key)

        assert took < 0.5  # replica_timeout defaults to 1.0 s

    def test_async_store(self, pair, redis_key):
        """AsyncRedisStore waits the same way."""

        async def scenario() -> tuple[bytes | None, int]:
            async with AsyncRedisStore(
                pair.primary.url, key=redis_key, min_replicas=1, replica_timeout=0.2, timeout=1.0
            ) as store:
                stored = await store.write(Record(credential=creds(1)), None)
                replicated = on(pair.replica, store.key)
                with pair.replica_paused(), pytest.raises(StorageUnreplicated) as caught:
                    await store.write(Record(credential=creds(2)), stored.revision)
                await store.client.delete(store.key)
                return replicated, caught.value.acknowledged

        replicated, acknowledged = run(scenario())
        assert replicated is not None
        assert 0 == acknowledged


class TestReplicatedLease:
    """With min_replicas, a lease is on the replicas before its holder spends a refresh token."""

    def test_the_lease_is_on_the_replica_when_taken(self, pair, store):
        with store.lease(1.0):
            assert on(pair.replica, store.lease_key) is not None

    def test_a_lease_the_replica_does_not_get_is_given_back(self, pair, store):
        """Replica paused: taking the lease waits replica_timeout, then gives it back and
        raises StorageUnreplicated: no refresh starts that a failover could cut off."""
        with pair.replica_paused():
            started = time.monotonic()
            with pytest.raises(StorageUnreplicated) as caught:
                store.lease(1.0).__enter__()
            waited = time.monotonic() - started
            held = on(pair.primary, store.lease_key)

        assert None is held
        assert (0, 1) == (caught.value.acknowledged, caught.value.required)
        assert 0.2 <= waited < 1.0
        with store.lease(1.0):  # the replica is back: taken at once
            pass

    def test_async_lease_too(self, pair, redis_key):
        async def scenario() -> float:
            async with AsyncRedisStore(
                pair.primary.url, key=redis_key, min_replicas=1, replica_timeout=0.2, timeout=1.0
            ) as store:
                with pair.replica_paused():
                    started = time.monotonic()
                    with pytest.raises(StorageUnreplicated):
                        async with store.lease(1.0):
                            pass
                    assert on(pair.primary, store.lease_key) is None
                    return time.monotonic() - started

        assert 0.2 <= run(scenario()) < 1.0


class TestResentSwap:
    """A swap sent again after a lost reply writes its value once more, so WAIT covers it."""

    def test_the_script_sets_its_own_value_again(self, pair, redis_key):
        """Flag "1" and the key holding exactly the new value: {1}, and a write is replicated."""
        value = b"the-new-record"
        with pair.primary.client() as client:
            client.set(redis_key, value)
            offset = client.info("replication")["master_repl_offset"]
            first_attempt_lost = client.eval(CAS, 1, redis_key, "stale-digest", value, "")
            resent = client.eval(CAS, 1, redis_key, "stale-digest", value, "1")
            moved = client.info("replication")["master_repl_offset"] > offset
            other = client.eval(CAS, 1, redis_key, digest(b"x"), b"other", "1")
            client.delete(redis_key)

        assert [0, value] == first_attempt_lost
        assert [1] == resent
        assert moved
        assert [0, value] == other  # a different value is not ours: no swap
