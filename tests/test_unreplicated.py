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

import pytest

from authfsm import AuthEngine, State, StorageUnreplicated
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


@pytest.mark.parametrize("acknowledged", [0, 1])
def test_the_error_says_how_many_replicas_answered(acknowledged):
    error = StorageUnreplicated("redis://h/k", acknowledged=acknowledged, required=2, timeout=0.5)
    assert "unreplicated" == error.reason
    assert (acknowledged, 2) == (error.acknowledged, error.required)
    assert f"{acknowledged} of 2" in str(error)


def test_an_unreplicated_write_is_counted_by_the_metrics(endpoint, clock, server):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from authfsm.metrics import EngineMetrics

    from .test_metrics import total

    reader = InMemoryMetricReader()
    metrics = EngineMetrics(meter_provider=MeterProvider(metric_readers=[reader]), name="api")
    store = PrimaryAndReplica()
    engine = AuthEngine(store, endpoint, POLICY, clock=clock, metrics=metrics)
    engine.login(server.issue())
    clock.advance(DUE)
    store.replica_up = False

    engine.access_token()
    clock.advance(60)
    engine.access_token()  # written again, still not acknowledged

    assert 2 == total(reader, "authfsm.write.unreplicated")
