"""RedisStore in Redis Cluster (three primaries with a replica each, made by redis-cli): one hash
slot for all of a store's keys, the store contract, the lease and its wake-ups, sharded release
messages, and WAIT on the slot's own shard."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.cluster
from hypothesis import HealthCheck, settings
from redis.crc import key_slot

from authfsm import AuthEngine, State
from authfsm.adapters import AsyncRedisStore, RedisStore
from authfsm.adapters.storage._redis_layout import Layout
from authfsm.engine import Credentials, LeaseTimeout, Record, StorageUnreplicated, Store
from authfsm.testing import check_async_store, check_store

from .redis_server import ClusterDeployment, running_cluster, wait_until

_serial = itertools.count()

QUICK = settings(
    max_examples=15,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def creds(n: int) -> Credentials:
    return Credentials(access_token=f"at-{n}", refresh_token=f"rt-{n}", account_id="acct-1")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


@pytest.fixture(name="cluster", scope="module")
def _cluster() -> Iterator[ClusterDeployment]:
    with running_cluster() as cluster:
        yield cluster


def cluster_store(cluster: ClusterDeployment, **options: Any) -> RedisStore:
    options.setdefault("key", f"k-{next(_serial)}")
    return RedisStore.from_cluster(cluster.addresses[:2], timeout=1.0, **options)


def layout(key: str, key_prefix: str = "authfsm:") -> Layout:
    return Layout(
        key=key, key_prefix=key_prefix, lease_ttl=1.0, poll_interval=0.1, codec=None,
        server="s", cluster=True,
    )  # fmt: skip


class TestOneSlot:
    """Every key and the channel of a store share one hash slot."""

    @pytest.mark.parametrize(
        ("key", "key_prefix", "record_key"),
        [
            ("credential", "authfsm:", "authfsm:{credential}"),  # wrapped
            ("{myapp}:credential", "authfsm:", "authfsm:{myapp}:credential"),  # kept
            ("credential", "{tenant-7}:", "{tenant-7}:credential"),  # the prefix's tag
            ("a{b", "", "{a{b}"),  # no tag (unclosed): wrapped; its tag is "a{b"
        ],
    )
    def test_names(self, key, key_prefix, record_key):
        names = layout(key, key_prefix)
        slots = {
            key_slot(name.encode())
            for name in (names.record_key, names.lease_key, names.wake_key, names.release_channel)
        }

        assert record_key == names.record_key
        assert 1 == len(slots)

    def test_a_key_that_cannot_be_tagged_is_refused(self):
        """Key "}x" in braces is "{}x}", whose tag is empty: the whole key would be hashed."""
        with pytest.raises(ValueError, match="hash tag"):
            layout("}x", "")

    def test_outside_a_cluster_keys_are_unchanged(self):
        names = Layout(
            key="credential", key_prefix="authfsm:", lease_ttl=1.0, poll_interval=0.1,
            codec=None, server="s",
        )  # fmt: skip
        assert "authfsm:credential" == names.record_key


class TestClusterStore:
    """from_cluster stores keep the contract and the lease's behaviour."""

    def test_contract(self, cluster):
        """Stores on one given cluster client (a client learns the slot map once)."""
        host, _, port = cluster.addresses[0].partition(":")
        client = redis.cluster.RedisCluster(host=host, port=int(port))

        def factory() -> RedisStore:
            return RedisStore(client=client, key=f"contract-{next(_serial)}")

        def contender(store: Store) -> Store:
            assert isinstance(store, RedisStore)
            return RedisStore(client=client, key=store.key, key_prefix="")

        try:
            check_store(factory, contender=contender, settings=QUICK)
        finally:
            client.close()

    def test_async_contract(self, cluster):
        """AsyncRedisStore.from_cluster, a client per example (each on its own event loop)."""

        def factory() -> AsyncRedisStore:
            return AsyncRedisStore.from_cluster(cluster.addresses[:1], key=f"a-{next(_serial)}")

        check_async_store(factory, settings=settings(QUICK, max_examples=8))

    def test_lease_excludes_and_a_release_wakes_the_waiter(self, cluster):
        """Another store times out while the lease is held, and gets it at once on release."""
        holder = cluster_store(cluster)
        other = cluster_store(cluster, key=holder.key, key_prefix="", poll_interval=5.0)
        taken: list[float] = []

        def waiter() -> None:
            with other.lease(timeout=10):
                taken.append(time.monotonic())

        with holder.lease(1.0):
            with pytest.raises(LeaseTimeout), other.lease(timeout=0):
                pass
            thread = threading.Thread(target=waiter)
            thread.start()
            time.sleep(0.2)
            released = time.monotonic()
        thread.join(timeout=10)

        assert 1 == len(taken)
        assert taken[0] - released < 0.1  # BLPOP on the slot's wake-up list, not a poll

    def test_a_given_cluster_client(self, cluster):
        """A redis.cluster.RedisCluster passed in is used as is and left open."""
        host, _, port = cluster.addresses[0].partition(":")
        client = redis.cluster.RedisCluster(host=host, port=int(port))
        with RedisStore(client=client, key="given") as store:
            stored = store.write(Record(credential=creds(1)), None)
            assert stored == store.read()
            assert "authfsm:{given}" == store.key
            store.client.delete(store.key)
        client.ping()
        client.close()

        assert store.location.startswith("redis+cluster://127.0.0.1:")

    def test_engines_share_one_refresh(self, cluster, endpoint, clock, server):
        """Two "hosts" on the cluster: one refreshes, the other adopts without a call."""
        key = f"fleet-{next(_serial)}"
        first = AuthEngine(cluster_store(cluster, key=key), endpoint, clock=clock)
        first.login(server.issue())
        second = AuthEngine(cluster_store(cluster, key=key), endpoint, clock=clock)
        clock.advance(3600)

        assert first.access_token() == second.access_token()
        assert (State.FRESH, State.RELOADED) == (first.state, second.state)
        assert (1, 0) == (server.token_calls, server.reuse_rejections)


class TestShardedRelease:
    """Followers subscribe with SSUBSCRIBE on the slot's shard; one release wakes them all."""

    def test_threads_woken_by_one_release(self, cluster):
        holder = cluster_store(cluster)
        follower = cluster_store(cluster, key=holder.key, key_prefix="")
        woken: list[float] = []

        def follow() -> None:
            follower.wait_for_release(5.0)
            woken.append(time.monotonic())

        with holder.lease(1.0):
            threads = [threading.Thread(target=follow) for _ in range(8)]
            for thread in threads:
                thread.start()
            time.sleep(0.3)
            early = len(woken)
            node = holder.client.get_node_from_key(holder.key)
            subscribed = holder.client.execute_command(
                "PUBSUB SHARDNUMSUB", holder.release_channel, target_nodes=node
            )
            released = time.monotonic()
        for thread in threads:
            thread.join(timeout=10)
        follower.close()

        assert 0 == early
        assert [(holder.release_channel.encode(), 1)] == list(subscribed)
        assert 8 == len(woken)
        assert max(woken) - released < 0.5

    def test_tasks_woken_by_one_release(self, cluster):
        holder = cluster_store(cluster)

        async def scenario() -> tuple[int, list[float], float]:
            woken: list[float] = []
            async with AsyncRedisStore.from_cluster(
                cluster.addresses[:1], key=holder.key, key_prefix=""
            ) as follower:

                async def follow() -> None:
                    await follower.wait_for_release(5.0)
                    woken.append(time.monotonic())

                with holder.lease(1.0):
                    tasks = [asyncio.ensure_future(follow()) for _ in range(8)]
                    await asyncio.sleep(0.3)
                    early = len(woken)
                    released = time.monotonic()
                await asyncio.gather(*tasks)
            return early, woken, released

        early, woken, released = run(scenario())
        assert 0 == early
        assert 8 == len(woken)
        assert max(woken) - released < 0.5


def keys_on_two_shards(client: redis.cluster.RedisCluster) -> tuple[str, str]:
    """Two store keys whose slots are on different primaries."""
    by_node: dict[str, str] = {}
    for n in range(100):
        key = f"{{shard-{n}}}"
        by_node.setdefault(client.get_node_from_key(f"authfsm:{key}").name, key)
        if len(by_node) >= 2:
            break
    first, second = list(by_node.values())[:2]
    return first, second


class TestReplicasPerShard:
    """WAIT goes to the slot's primary and counts that shard's replica only."""

    def test_a_paused_replica_fails_only_its_shard(self, cluster):
        probe = cluster_store(cluster)
        here, elsewhere = keys_on_two_shards(probe.client)
        near = cluster_store(cluster, key=here, min_replicas=1, replica_timeout=0.3)
        far = cluster_store(cluster, key=elsewhere, min_replicas=1, replica_timeout=0.3)
        acknowledged = near.write(Record(credential=creds(1)), None)
        primary = near.client.get_node_from_key(near.key)
        replica = cluster.replica_of(primary.port)

        replica.pause()
        try:
            with pytest.raises(StorageUnreplicated) as caught:
                near.write(Record(credential=creds(2)), acknowledged.revision)
            unaffected = far.write(Record(credential=creds(3)), None)
        finally:
            replica.resume()
        wait_until(lambda: replica_caught_up(cluster, primary.port), "the replica back in sync")
        near.client.delete(near.key, far.key)

        assert (0, 1) == (caught.value.acknowledged, caught.value.required)
        assert 1 == unaffected.revision


def replica_caught_up(cluster: ClusterDeployment, primary_port: int) -> bool:
    with cluster.node(primary_port).client() as client:
        replication = client.info("replication")
    replica = replication.get("slave0", {})
    return bool(
        replica.get("state") == "online"
        and replica.get("offset") == replication["master_repl_offset"]
    )
