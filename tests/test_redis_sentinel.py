"""RedisStore.from_sentinel against a real Sentinel deployment (a primary, a replica, three
Sentinels): the store contract, following a failover, and what min_replicas changes when the
primary is SIGKILLed right after a refresh (strict reuse detection at the token server)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.sentinel
from hypothesis import HealthCheck, settings

from authfsm import AuthEngine, ReauthRequired, State
from authfsm.adapters import AsyncRedisStore, RedisStore
from authfsm.engine import (
    Credentials,
    Record,
    StorageUnavailable,
    StorageUnreplicated,
    Store,
)
from authfsm.testing import check_async_store, check_store

from .redis_server import SentinelDeployment, replicas_in_sync, running, wait_until

PASSWORD = "pw-SECRET-3b8f0e"
_serial = itertools.count()

# The kit's full run is the job of test_store_contract.py; here it checks the deployment.
QUICK = settings(
    max_examples=15,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def creds(n: int) -> Credentials:
    return Credentials(access_token=f"at-{n}", refresh_token=f"rt-{n}", account_id="acct-1")


def sentinel_store(deployment: SentinelDeployment, **options: Any) -> RedisStore:
    options.setdefault("key", "fleet")
    options.setdefault("replica_timeout", 0.5)
    return RedisStore.from_sentinel(
        deployment.addresses, deployment.service_name, timeout=1.0, **options
    )


@pytest.fixture(name="steady", scope="module")
def _steady() -> Iterator[SentinelDeployment]:
    """A deployment no test fails over (tests isolate by key)."""
    with running(SentinelDeployment) as deployment:
        yield deployment


@pytest.fixture(name="deployment")
def _deployment() -> Iterator[SentinelDeployment]:
    """A deployment of the test's own, to fail over."""
    with running(SentinelDeployment) as deployment:
        yield deployment


class TestSentinelStore:
    """A store made from Sentinels keeps the contract and shows no secret."""

    def test_contract(self, steady):
        """The store kit, with another Sentinel-made store on the same key as contender."""

        def factory() -> RedisStore:
            return sentinel_store(steady, key=f"contract-{next(_serial)}")

        def contender(store: Store) -> Store:
            assert isinstance(store, RedisStore)
            return sentinel_store(steady, key=store.key, key_prefix="")

        check_store(factory, contender=contender, settings=QUICK)

    def test_async_contract(self, steady):
        """AsyncRedisStore.from_sentinel keeps it too."""

        def factory() -> AsyncRedisStore:
            return AsyncRedisStore.from_sentinel(
                steady.addresses, steady.service_name, key=f"contract-a-{next(_serial)}"
            )

        check_async_store(factory, settings=QUICK)

    def test_location_names_sentinels_and_service_only(self, steady):
        """Passwords of the primary and of the Sentinels appear in no repr, location or error."""
        store = RedisStore.from_sentinel(
            steady.addresses,
            steady.service_name,
            key="k",
            timeout=0.5,
            username="app",
            password=PASSWORD,
            sentinel_options={"password": PASSWORD},
        )
        with pytest.raises(StorageUnavailable) as refused:  # the servers have no user "app"
            store.read()
        texts = [repr(store), store.location, str(refused.value), repr(refused.value)]
        store.close()

        expected = f"redis+sentinel://{','.join(steady.addresses)}/{steady.service_name}"
        assert f"{expected} key 'authfsm:k'" == store.location
        assert all(PASSWORD not in text for text in texts)

    def test_a_given_sentinel_client(self, steady):
        """A client from redis.sentinel.Sentinel(...).master_for(...) is described as such."""
        hosts = [
            (host, int(port)) for host, _, port in (a.partition(":") for a in steady.addresses)
        ]
        manager = redis.sentinel.Sentinel(hosts, socket_timeout=1.0)
        client = manager.master_for(steady.service_name, socket_timeout=1.0)
        with RedisStore(client=client, key=f"given-{next(_serial)}") as store:
            stored = store.write(Record(credential=creds(1)), None)
            assert stored == store.read()
            store.client.delete(store.key)
        client.ping()  # a given client stays open
        client.close()
        manager.close()

        assert store.location.startswith("redis+sentinel://127.0.0.1:")

    @pytest.mark.parametrize(
        "sentinels", [[], "127.0.0.1:26379", ["127.0.0.1:x"], [("127.0.0.1", "1")], [":1"]]
    )
    def test_refused_addresses(self, sentinels):
        with pytest.raises(ValueError, match="sentinels"):
            RedisStore.from_sentinel(sentinels, "svc")

    def test_refused_service_name(self):
        with pytest.raises(ValueError, match="service_name"):
            RedisStore.from_sentinel(["127.0.0.1:26379"], "")


class TestFailover:
    """SIGKILL the primary right after a refresh; Sentinel promotes the replica."""

    def test_acknowledged_refresh_survives(self, deployment, endpoint, clock, server):
        """min_replicas=1: the fleet goes on with the refreshed credential; no reuse, no loss."""
        first = AuthEngine(sentinel_store(deployment, min_replicas=1), endpoint, clock=clock)
        login = server.issue()
        first.login(login)
        clock.advance(3600)
        refreshed = first.access_token()  # rotates: the login's refresh token is spent

        deployment.kill_primary()
        took = deployment.wait_for_failover()
        deployment.rejoin_old_primary()  # so writes that wait for a replica find one
        second = AuthEngine(sentinel_store(deployment, min_replicas=1), endpoint, clock=clock)
        adopted = second.access_token()
        clock.advance(3600)
        next_one = second.access_token()  # a refresh on the new primary, with the new token
        followed = first.access_token()  # the first engine's store found the new primary too

        async def read_async() -> Record | None:
            async with AsyncRedisStore.from_sentinel(
                deployment.addresses, deployment.service_name, key="fleet"
            ) as store:
                return await store.read()

        record = asyncio.run(asyncio.wait_for(read_async(), timeout=30))
        print(f"failover took {took:.2f} s")
        assert took < 10
        assert refreshed == adopted
        assert next_one == followed != refreshed
        assert (2, 0) == (server.token_calls, server.reuse_rejections)
        assert server.family_alive(login)
        assert record is not None
        assert record.credential is not None
        assert next_one == record.credential.access_token

    def test_a_demoted_primary_is_left_for_the_new_one(self, deployment):
        """A switch-over with both alive: the demoted primary answers READONLY on the store's
        pooled connection; the store reconnects through the Sentinels and the write lands."""
        store = sentinel_store(deployment, min_replicas=1)
        first = store.write(Record(credential=creds(1)), None)

        deployment.switch_over()
        # What Sentinel does to the old primary at its next look at it (up to 10 s later).
        with deployment.replica.client() as old_primary:
            old_primary.replicaof("127.0.0.1", deployment.primary.port)
        wait_until(lambda: replicas_in_sync(deployment.primary, 1), "the old primary demoted")
        second = store.write(Record(credential=creds(2)), first.revision)

        with deployment.primary.client() as client:
            on_new_primary = client.get(store.key)
        assert 2 == second.revision
        assert on_new_primary is not None
        assert second == store.read()

    def test_lagging_replica_loses_the_refresh_without_a_wait(
        self, deployment, endpoint, clock, server
    ):
        """min_replicas=0 and a replica that never got the write: the promoted replica holds
        the spent refresh token, the next refresh presents it, and the token family dies."""
        first = AuthEngine(sentinel_store(deployment), endpoint, clock=clock)
        login = server.issue()
        first.login(login)
        wait_until(lambda: replicas_in_sync(deployment.primary, 1), "the login replicated")
        clock.advance(3600)
        deployment.cut_off_replica()
        first.access_token()  # the refresh: on the primary only

        deployment.kill_primary()
        deployment.replica.resume()
        deployment.wait_for_failover()
        second = AuthEngine(sentinel_store(deployment), endpoint, clock=clock)
        stored = second.store.read()
        with pytest.raises(ReauthRequired):
            second.access_token()

        assert stored is not None
        assert login == stored.credential  # the refresh is gone
        assert 1 == server.reuse_rejections
        assert not server.family_alive(login)
        assert State.POISONED == second.state

    def test_lagging_replica_makes_the_write_unreplicated(self, deployment):
        """min_replicas=1, same lag: the write says StorageUnreplicated; the promoted replica
        holds the last acknowledged record, as the error warned."""
        store = sentinel_store(deployment, min_replicas=1, replica_timeout=0.3)
        acknowledged = store.write(Record(credential=creds(1)), None)
        deployment.cut_off_replica()
        with pytest.raises(StorageUnreplicated) as caught:
            store.write(Record(credential=creds(2)), acknowledged.revision)

        deployment.kill_primary()
        deployment.replica.resume()
        deployment.wait_for_failover()

        assert (0, 1) == (caught.value.acknowledged, caught.value.required)
        assert acknowledged == store.read()

    def test_engine_starts_no_refresh_the_replica_would_not_get(
        self, deployment, endpoint, clock, server
    ):
        """min_replicas=1, same lag, engines: the lease does not reach the replica, so no
        refresh starts (the engine serves its token and says why); after the failover the
        fleet refreshes on the new primary, once, and the family lives."""
        first = AuthEngine(
            sentinel_store(deployment, min_replicas=1, replica_timeout=0.3), endpoint, clock=clock
        )
        login = server.issue()
        first.login(login)
        clock.advance(3600)
        deployment.cut_off_replica()
        served = first.access_token()
        status = first.status()

        deployment.kill_primary()
        deployment.replica.resume()
        deployment.wait_for_failover()
        deployment.rejoin_old_primary()
        clock.advance(600)  # past the engine's backoff; the token is still not expired
        refreshed = first.access_token()
        second = AuthEngine(sentinel_store(deployment, min_replicas=1), endpoint, clock=clock)
        adopted = second.access_token()

        assert login.access_token == served
        assert "unreplicated" == status.failure
        assert refreshed == adopted != login.access_token
        assert (1, 0) == (server.token_calls, server.reuse_rejections)
        assert server.family_alive(login)
