"""
A write the store's replicas did not acknowledge (``StorageUnreplicated``) loses no rotation.

``PrimaryAndReplica`` models a Redis primary with one asynchronously replicated replica and a
``WAIT``: a write lands on the primary; the replica gets it only while it is reachable, and the
write then raises ``StorageUnreplicated`` (as ``RedisStore(min_replicas=1)`` does). ``failover()``
promotes the replica with whatever it had. The real thing, with redis-server and redis-sentinel
processes and a SIGKILLed primary, is in ``tests/test_redis_failover.py``; these pin the engine's
side of it on the fake clock.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime

import attrs
import pytest

from authfsm import AccountMismatch, AuthEngine, State, StorageUnreplicated
from authfsm.adapters import MemoryStore
from authfsm.engine import Record

from .test_engine_teeth import DUE, POLICY


class PrimaryAndReplica:
    """One primary, one replica that copies each write while it is up; WAIT for one replica."""

    def __init__(self) -> None:
        self.primary = MemoryStore(name="primary")
        self.replica: Record | None = None
        self.replica_up = True
        self.writes = 0

    @property
    def location(self) -> str:
        return "redis://primary/credential"

    def read(self) -> Record | None:
        return self.primary.read()

    def write(self, record: Record, expected_revision: int | None) -> Record:
        self.writes += 1
        stored = self.primary.write(record, expected_revision)
        self._replicate(stored)
        return stored

    def delete(self, expected_revision: int | None) -> None:
        self.writes += 1
        self.primary.delete(expected_revision)
        self._replicate(None)

    def lease(self, timeout: float) -> AbstractContextManager[None]:
        return self.primary.lease(timeout)

    def failover(self) -> None:
        """The primary dies; the replica, with what it had, becomes the primary."""
        self.primary = MemoryStore(self.replica, name="promoted")

    def _replicate(self, record: Record | None) -> None:
        if not self.replica_up:
            raise StorageUnreplicated(self.location, acknowledged=0, required=1, timeout=0.1)
        self.replica = record


def _engine(store, endpoint, clock, server) -> AuthEngine:
    engine = AuthEngine(store, endpoint, POLICY, clock=clock)
    engine.login(server.issue())
    return engine


def _stored_token(store: PrimaryAndReplica) -> str:
    record = store.read()
    assert record is not None
    assert record.credential is not None
    return record.credential.access_token


class TestRefreshNotReplicated:
    def test_the_new_tokens_are_served_and_the_state_says_unreplicated(
        self, endpoint, clock, server
    ):
        store = PrimaryAndReplica()
        engine = _engine(store, endpoint, clock, server)
        clock.advance(DUE)
        store.replica_up = False

        token = engine.access_token()

        assert token == _stored_token(store)  # on the primary, and served
        assert 1 == server.token_calls
        status = engine.status()
        assert (True, "unreplicated") == (status.unsaved, status.failure)
        assert State.FRESH is engine.state
        # Served again without another call: nothing is spent while it waits to be replicated.
        assert token == engine.access_token()
        assert 1 == server.token_calls

    def test_a_failover_brings_back_the_spent_token_and_it_is_never_adopted(
        self, endpoint, clock, server
    ):
        store = PrimaryAndReplica()
        engine = _engine(store, endpoint, clock, server)
        clock.advance(DUE)
        store.replica_up = False
        token = engine.access_token()
        store.failover()  # the promoted replica holds the login, whose refresh token is spent
        store.replica_up = True

        assert token == engine.access_token()  # the older record is not adopted back
        assert token != _stored_token(store)
        clock.advance(60)  # past the retry: written again, on the new primary
        assert token == engine.access_token()
        assert token == _stored_token(store)
        assert not engine.status().unsaved

        clock.advance(DUE)  # the next rotation spends the new refresh token
        engine.access_token()
        assert (2, 0) == (server.token_calls, server.reuse_rejections)
        assert server.family_alive(engine.credentials)

    def test_written_again_until_the_replicas_acknowledge(self, endpoint, clock, server):
        store = PrimaryAndReplica()
        engine = _engine(store, endpoint, clock, server)
        clock.advance(DUE)
        store.replica_up = False
        token = engine.access_token()
        revision = store.read().revision

        clock.advance(60)
        engine.access_token()  # the replica is still away: written again, not acknowledged
        assert store.read().revision == revision + 1
        assert "unreplicated" == engine.status().failure

        store.replica_up = True
        clock.advance(600)
        assert token == engine.access_token()
        assert store.replica is not None
        assert store.replica.credential is not None
        assert token == store.replica.credential.access_token
        status = engine.status()
        assert (False, None) == (status.unsaved, status.failure)
        assert 1 == server.token_calls

    def test_a_sibling_adopts_the_primary_copy_and_spends_nothing(self, endpoint, clock, server):
        store = PrimaryAndReplica()
        engine = _engine(store, endpoint, clock, server)
        sibling = AuthEngine(store, endpoint, POLICY, clock=clock)
        clock.advance(DUE)
        store.replica_up = False

        token = engine.access_token()

        assert token == sibling.access_token()
        assert 1 == server.token_calls

    def test_a_sibling_that_took_the_unreplicated_write_never_goes_back(
        self, endpoint, clock, server
    ):
        """B adopts A's rotation from the primary; the failover brings back the record A
        replaced. B keeps the newer credential (the store went back, B never does), refreshes
        with it and writes; A then adopts B's. No reuse, the family lives."""
        store = PrimaryAndReplica()
        a = _engine(store, endpoint, clock, server)
        b = AuthEngine(store, endpoint, POLICY, clock=clock)
        clock.advance(DUE)
        store.replica_up = False
        rotated = a.access_token()
        assert rotated == b.access_token()  # adopted from the primary
        store.failover()
        store.replica_up = True

        clock.advance(DUE)
        token_b = b.access_token()
        token_a = a.access_token()

        assert 0 == server.reuse_rejections
        assert 2 == server.token_calls
        assert token_a == token_b == _stored_token(store)
        assert server.family_alive(b.credentials)

    def test_a_store_restored_from_an_old_backup_is_not_adopted(self, endpoint, clock, server):
        """The same rule without replicas: a record older than what the engine saw, holding a
        credential minted before its own, is written over instead of adopted."""
        store = MemoryStore()
        engine = _engine(store, endpoint, clock, server)
        backup = store.read()
        clock.advance(DUE)
        token = engine.access_token()
        store._record = backup  # the store restored from a backup taken before the rotation

        clock.advance(DUE)
        engine.access_token()

        assert (2, 0) == (server.token_calls, server.reuse_rejections)
        assert token != engine.access_token()
        assert server.family_alive(engine.credentials)

    def test_a_store_restored_to_before_a_login_is_not_adopted(self, endpoint, clock, server):
        """The same after a login: the record the login replaced (the same user's older
        credential) comes back at its old revision; the engine keeps its login and writes it
        again."""
        store = MemoryStore()
        engine = _engine(store, endpoint, clock, server)
        backup = store.read()
        clock.advance(60)
        relogin = server.issue()
        engine.login(relogin)
        store._record = backup

        engine.status()  # reads the store: it went back

        assert relogin.access_token == engine.access_token()
        assert relogin.access_token == _stored_token(store)  # written again

    def test_a_store_restored_after_a_save_retry_is_not_adopted(self, endpoint, clock, server):
        """And after a save retry: the rotation replicated at last, then the store restored to
        the login it replaced (whose refresh token is spent): kept, written again, no reuse."""
        store = PrimaryAndReplica()
        engine = _engine(store, endpoint, clock, server)
        backup = store.read()
        clock.advance(DUE)
        store.replica_up = False
        token = engine.access_token()  # on the primary, not replicated
        store.replica_up = True
        clock.advance(60)
        assert token == engine.access_token()  # written again, replicated now
        assert store.replica is not None
        assert store.replica.credential is not None
        assert token == store.replica.credential.access_token
        store.primary._record = backup

        engine.status()  # reads the store: it went back

        assert token == engine.access_token()
        assert token == _stored_token(store)  # written again
        clock.advance(DUE)
        engine.access_token()
        assert (2, 0) == (server.token_calls, server.reuse_rejections)
        assert server.family_alive(engine.credentials)

    def test_a_new_login_at_a_lower_revision_is_adopted(self, endpoint, clock, server):
        """Going back needs an older credential too: a store deleted and logged into again
        (revision 1, a credential minted after this engine's) is simply adopted."""
        store = MemoryStore()
        engine = _engine(store, endpoint, clock, server)
        clock.advance(DUE)
        engine.access_token()
        engine.access_token()
        store._record = None
        clock.advance(5)
        relogin = server.issue()
        store.write(Record(credential=relogin), None)

        assert engine.reload() is State.RELOADED
        assert relogin.access_token == engine.access_token()

    def test_an_older_record_of_another_identity_is_still_refused_not_overwritten(
        self, endpoint, clock, server
    ):
        """A lower revision holding another user's older login (a tool rewrote the file): the
        identity guard decides, as ever; nothing is written over it."""
        store = MemoryStore()
        engine = _engine(store, endpoint, clock, server)
        clock.advance(DUE)
        engine.access_token()
        engine.access_token()
        other = attrs.evolve(
            server.issue(user_id="user-2", account_id="acct-2"),
            last_refresh=datetime.fromtimestamp(clock() - 7200, UTC),
        )
        store._record = Record(credential=other)  # revision 0: written by another program

        with pytest.raises(AccountMismatch):
            engine.reload()
        assert other == store.read().credential


class TestLoginAndLogoutNotReplicated:
    def test_a_login_is_kept_and_written_again(self, endpoint, clock, server):
        store = PrimaryAndReplica()
        engine = AuthEngine(store, endpoint, POLICY, clock=clock)
        store.replica_up = False
        creds = server.issue()

        engine.login(creds)

        assert creds.access_token == engine.access_token()
        assert "unreplicated" == engine.status().failure
        store.failover()  # the replica never had it: an empty store
        store.replica_up = True
        clock.advance(60)
        assert creds.access_token == engine.access_token()
        assert creds.access_token == _stored_token(store)
        assert engine.status().failure is None

    def test_a_logout_logs_out_even_if_the_tombstone_is_not_replicated(
        self, endpoint, clock, server
    ):
        store = PrimaryAndReplica()
        engine = _engine(store, endpoint, clock, server)
        store.replica_up = False

        engine.logout()

        assert State.LOGGED_OUT is engine.state
        record = store.read()
        assert record is not None
        assert record.credential is None


def _metrics():
    """An in-memory metrics reader and the EngineMetrics that feed it."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from authfsm.metrics import EngineMetrics

    reader = InMemoryMetricReader()
    return reader, EngineMetrics(meter_provider=MeterProvider(metric_readers=[reader]), name="api")


@pytest.mark.parametrize("acknowledged", [0, 1])
def test_the_error_says_how_many_replicas_answered(acknowledged):
    error = StorageUnreplicated("redis://h/k", acknowledged=acknowledged, required=2, timeout=0.5)
    assert "unreplicated" == error.reason
    assert (acknowledged, 2) == (error.acknowledged, error.required)
    assert f"{acknowledged} of 2" in str(error)


def test_an_unreplicated_write_is_counted_by_the_metrics(endpoint, clock, server):
    reader, metrics = _metrics()
    store = PrimaryAndReplica()
    engine = AuthEngine(store, endpoint, POLICY, clock=clock, metrics=metrics)
    engine.login(server.issue())
    clock.advance(DUE)
    store.replica_up = False

    engine.access_token()
    clock.advance(60)
    engine.access_token()  # written again, still not acknowledged

    from .test_metrics import total

    assert 2 == total(reader, "authfsm.write.unreplicated")


def test_an_unreplicated_logout_is_counted_by_the_metrics(endpoint, clock, server):
    reader, metrics = _metrics()
    store = PrimaryAndReplica()
    engine = AuthEngine(store, endpoint, POLICY, clock=clock, metrics=metrics)
    engine.login(server.issue())
    store.replica_up = False

    engine.logout()

    from .test_metrics import total

    assert State.LOGGED_OUT is engine.state
    assert (1, 1) == (
        total(reader, "authfsm.write.unreplicated"),
        total(reader, "authfsm.logged_out"),
    )
