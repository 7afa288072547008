"""RedisStore and AsyncRedisStore against a real redis-server: layout, CAS, corruption, the lease,
outages, TLS, secrets, and the engines on top (shared logout and poison across "hosts")."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import attrs
import pytest

from authfsm import AsyncAuthEngine, AuthEngine, Credentials, ReauthRequired, RefreshFailed, State
from authfsm.adapters import CodexCodec, NativeCodec
from authfsm.adapters.storage._redis import AsyncRedisStore, RedisStore
from authfsm.adapters.storage._redis_layout import Layout
from authfsm.engine import (
    Backoff,
    LeaseTimeout,
    Poison,
    Record,
    StorageCorrupt,
    StorageUnavailable,
    WriteConflict,
)

from .helpers import SUBPROCESS_TIMEOUT, child, sample_credentials, wait_for_file
from .redis_server import RedisServer, _redis_key, _redis_server, free_port, running_redis  # noqa: F401 - fixtures

ACCESS = "at-SECRET-7c1e94d2aa"
REFRESH = "rt-SECRET-0b5f3e8c71"
PASSWORD = "pw-SECRET-d41d8cd98f"
SECRETS = (ACCESS, REFRESH, PASSWORD)
CREDS = sample_credentials(ACCESS, REFRESH)


def creds(n: int) -> Credentials:
    return Credentials(access_token=f"at-{n}", refresh_token=f"rt-{n}", account_id="acct-1")


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


@pytest.fixture(name="store")
def _store(redis_server: RedisServer, redis_key: str):
    with RedisStore(redis_server.url, key=redis_key, lease_ttl=1.0) as store:
        yield store
        store.client.delete(store.key, store.lease_key, store.lease_key + ":wake")


def sibling(store: RedisStore, **options) -> RedisStore:
    """Another process's (or host's) store on the same key."""
    url = store.location.split(" key ")[0]
    return RedisStore(url, key=store.key, key_prefix="", **options)


class TestLayout:
    """One string key holds the NativeCodec JSON; only three keys are ever touched."""

    def test_one_key_native_json(self, store):
        """The value is exactly NativeCodec's encoding of the stored record, revision inside."""
        stored = store.write(Record(credential=CREDS, poison=None), None)

        raw = store.client.get(store.key)

        assert NativeCodec().encode(stored) == raw
        assert 1 == json.loads(raw)["revision"]
        assert stored == store.read()

    def test_keys_and_prefix(self, redis_server, redis_key):
        """Record, lease and wake-up keys all start with key_prefix + key."""
        with RedisStore(redis_server.url, key=redis_key, key_prefix="myapp:") as store:
            store.write(Record(credential=CREDS), None)
            with store.lease(1.0):
                held = set(store.client.scan_iter(match=f"myapp:{redis_key}*"))
            after = set(store.client.scan_iter(match=f"myapp:{redis_key}*"))
            store.client.delete(*after)

        key = f"myapp:{redis_key}".encode()
        assert {key, key + b":lease"} == held
        assert {key, key + b":lease:wake"} == after

    def test_markers_and_tombstone_round_trip(self, store):
        """Poison, backoff and a tombstone (credential None) survive; revisions keep counting."""
        poison = Poison(fingerprint=CREDS.fingerprint, reason="invalid_grant", at=1.5)
        backoff = Backoff(fingerprint=CREDS.fingerprint, not_before=2.5, failures=3)
        first = store.write(Record(credential=CREDS, poison=poison, backoff=backoff), None)
        tomb = store.write(Record(credential=None), first.revision)

        assert first.poisoned() == poison
        assert Record(credential=None, revision=2) == tomb == store.read()

    def test_missing_key_reads_none(self, store):
        assert None is store.read()

    def test_a_shared_format_keeps_foreign_fields(self, redis_server, redis_key):
        """With CodexCodec, a CAS write replaces the tokens and keeps another program's fields."""
        claims = {"sub": "user-1", "https://api.openai.com/auth": {"chatgpt_account_id": "a-1"}}
        id_token = "e30." + base64.urlsafe_b64encode(json.dumps(claims).encode()).decode() + ".s"
        doc = {
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": None,
            "tokens": {
                "id_token": id_token.replace("=", ""),
                "access_token": "at-1",
                "refresh_token": "rt-1",
                "account_id": "a-1",
                "future_token_field": [1, "é"],
            },
            "last_refresh": "2029-12-31T23:00:00Z",
            "zz_other_tool": "kept ✓",
        }
        with RedisStore(redis_server.url, key=redis_key, codec=CodexCodec()) as store:
            store.client.set(store.key, json.dumps(doc).encode())
            record = store.read()
            assert record is not None
            assert record.credential is not None
            rotated = attrs.evolve(record.credential, access_token="at-2", refresh_token="rt-2")
            written = store.write(attrs.evolve(record, credential=rotated), record.revision)
            after = json.loads(store.client.get(store.key))
            assert written == store.read()
            store.client.delete(store.key)

        assert "rt-2" == after["tokens"]["refresh_token"]
        assert [1, "é"] == after["tokens"]["future_token_field"]
        assert "kept ✓" == after["zz_other_tool"]
        assert [*doc, "authfsm"] == list(after)


class TestCompareAndSwap:
    """write() and delete() succeed only against the revision they expect."""

    def test_wrong_revisions_are_refused_byte_for_byte(self, store):
        """Stale, future or None expected revisions raise WriteConflict; the value is unchanged."""
        record = store.write(Record(credential=CREDS), None)
        record = store.write(Record(credential=creds(1)), record.revision)
        before = store.client.get(store.key)

        for expected in (None, 0, 1, 3, 99):
            with pytest.raises(WriteConflict) as caught:
                store.write(Record(credential=creds(2)), expected)
            assert "write_conflict" == caught.value.reason
            with pytest.raises(WriteConflict):
                store.delete(expected)

        assert before == store.client.get(store.key)

    def test_writer_that_never_read_still_swaps(self, store):
        """A store that did not read first (no cached digest) swaps correctly after a probe."""
        store.write(Record(credential=CREDS), None)
        blind = sibling(store)

        stored = blind.write(Record(credential=creds(1)), 1)

        assert 2 == stored.revision
        assert stored == store.read()

    def test_delete_and_recreate(self, store):
        """Delete empties the key; the next write expects None and starts at revision 1."""
        record = store.write(Record(credential=CREDS), None)
        store.delete(record.revision)
        assert None is store.read()
        assert 0 == store.client.exists(store.key)
        assert 1 == store.write(Record(credential=creds(1)), None).revision

    def test_racing_writers_one_wins(self, store):
        """16 threads (each its own store) CAS against the same revision: exactly one wins."""
        base = store.write(Record(credential=CREDS), None)
        stores = [sibling(store) for _ in range(16)]
        for other in stores:
            other.read()
        wins: list[int] = []
        conflicts: list[int] = []
        barrier = threading.Barrier(16)

        def attempt(n: int) -> None:
            barrier.wait(timeout=10)
            try:
                stores[n].write(Record(credential=creds(n)), base.revision)
                wins.append(n)
            except WriteConflict:
                conflicts.append(n)

        threads = [threading.Thread(target=attempt, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)

        assert 1 == len(wins)
        assert 15 == len(conflicts)
        final = store.read()
        assert final is not None
        assert creds(wins[0]) == final.credential
        assert 2 == final.revision

    def test_retried_swap_is_recognised(self):
        """A reply showing our own value (the command ran, its reply was lost) is a success."""
        layout = Layout(
            key="k", key_prefix="", lease_ttl=1.0, poll_interval=0.1, codec=None, server="s"
        )
        value = NativeCodec().encode(Record(credential=CREDS, revision=5))

        assert None is layout.judge([0, value], 4, value, retried=True)
        with pytest.raises(WriteConflict):  # not retried: an identical record of another writer
            layout.judge([0, value], 4, value, retried=False)


_VALID = NativeCodec().encode(Record(credential=CREDS, revision=3))
CORRUPT = {
    "not_json": b"{not json",
    "empty": b"",
    "wrong_format": _VALID.replace(b"authfsm/1", b"authfsm/9"),
    "negative_revision": _VALID.replace(b'"revision": 3', b'"revision": -1'),
    "revision_string": _VALID.replace(b'"revision": 3', b'"revision": "3"'),
    "credential_not_object": _VALID.replace(b'"credential": {', b'"credential": [{').replace(
        b'\n  },\n  "format"', b'\n  }],\n  "format"'
    ),
    "binary": bytes(range(256)),
    "deeply_nested": b"[" * 100_000,
}


class TestCorruptValue:
    """A value that is not a record raises StorageCorrupt naming the key and is never replaced."""

    @pytest.mark.parametrize("name", sorted(CORRUPT))
    def test_read_write_delete_refuse(self, store, name):
        """read, write and delete with any expected revision raise; the bytes stay as they were."""
        store.client.set(store.key, CORRUPT[name])

        with pytest.raises(StorageCorrupt) as caught:
            store.read()
        for expected in (None, 0, 3, 4):
            with pytest.raises(StorageCorrupt):
                store.write(Record(credential=creds(1)), expected)
            with pytest.raises(StorageCorrupt):
                store.delete(expected)

        error = caught.value
        assert store.location == error.location
        assert store.key in str(error)
        assert "storage_corrupt" == error.reason
        assert CORRUPT[name] == store.client.get(store.key)
        with pytest.raises(StorageCorrupt):
            AuthEngine(store)

    def test_wrong_type_is_corrupt(self, store):
        """A hash where the string should be is corrupt too (and left alone)."""
        store.client.hset(store.key, "field", "value")

        with pytest.raises(StorageCorrupt):
            store.read()
        with pytest.raises(StorageCorrupt):
            store.write(Record(credential=CREDS), None)

        assert {b"field": b"value"} == store.client.hgetall(store.key)


_HOLDER = """
import sys, time
from pathlib import Path
from authfsm.adapters import RedisStore

url, key, marker = sys.argv[1:4]
with RedisStore(url, key=key, key_prefix="", lease_ttl=0.5).lease(timeout=10):
    Path(marker).touch()
    time.sleep(60)
"""


class TestLease:
    """The lease excludes every other holder, lives while held, and dies with its holder."""

    def test_another_store_times_out(self, store):
        """A second store gets LeaseTimeout while the first holds it, and the lease once free."""
        other = sibling(store)
        with store.lease(1.0):
            started = time.monotonic()
            with pytest.raises(LeaseTimeout) as caught, other.lease(timeout=0.2):
                pass
            waited = time.monotonic() - started
        assert "lease_timeout" == caught.value.reason
        assert 0.15 <= waited < 1.0
        with other.lease(timeout=0):
            pass

    def test_renewed_while_held(self, store):
        """Held for 4x its 0.3 s TTL, the lease is still exclusive: the holder renews it."""
        short = sibling(store, lease_ttl=0.3)
        with short.lease(1.0):
            time.sleep(1.2)
            ttl_ms = store.client.pttl(store.lease_key)
            with pytest.raises(LeaseTimeout), store.lease(timeout=0):
                pass
        assert 0 < ttl_ms <= 300
        assert 0 == store.client.exists(store.lease_key)

    def test_release_wakes_a_waiter_at_once(self, store):
        """A waiter gets the lease within a few ms of its release, not a polling interval later."""
        other = sibling(store, poll_interval=5.0)
        waited: list[float] = []

        def waiter() -> None:
            with other.lease(timeout=10):
                waited.append(time.monotonic())

        with store.lease(1.0):
            thread = threading.Thread(target=waiter)
            thread.start()
            time.sleep(0.3)
            released = time.monotonic()
        thread.join(timeout=10)

        assert 1 == len(waited)
        assert waited[0] - released < 0.05

    def test_only_the_owner_releases(self, store):
        """A holder whose lease lapsed and was taken over does not release the successor's."""
        other = sibling(store)
        lapsed = store.lease(1.0)
        lapsed.__enter__()
        store.client.delete(store.lease_key)  # as if its TTL had run out
        successor = other.lease(timeout=0)
        successor.__enter__()
        try:
            lapsed.__exit__(None, None, None)

            assert store.client.exists(store.lease_key)
            with pytest.raises(LeaseTimeout), store.lease(timeout=0):
                pass
        finally:
            successor.__exit__(None, None, None)
        assert 0 == store.client.exists(store.lease_key)

    def test_expired_holder_is_fenced(self, store):
        """After its lease lapsed and a successor wrote, the old holder's CAS write is refused."""
        store.write(Record(credential=CREDS), None)
        successor = sibling(store)
        with store.lease(1.0):
            read = store.read()
            assert read is not None
            store.client.delete(store.lease_key)  # the lease lapsed (a paused holder)
            with successor.lease(timeout=0):
                current = successor.read()
                assert current is not None
                successor.write(Record(credential=creds(1)), current.revision)
            with pytest.raises(WriteConflict):
                store.write(Record(credential=creds(2)), read.revision)

        final = store.read()
        assert final is not None
        assert creds(1) == final.credential
        assert 2 == final.revision

    def test_killed_holder_frees_the_lease_by_ttl(self, store, tmp_path):
        """A holder SIGKILLed with a 0.5 s TTL: another store gets the lease within ~TTL."""
        script = tmp_path / "holder.py"
        script.write_text(_HOLDER)
        marker = tmp_path / "held"
        url = store.location.split(" key ")[0]
        with child([sys.executable, str(script), url, store.key, str(marker)]) as holder:
            wait_for_file(marker, holder)
            time.sleep(0.7)  # past the TTL: only renewals keep it
            with pytest.raises(LeaseTimeout), store.lease(timeout=0):
                pass
            holder.send_signal(signal.SIGKILL)
            assert -signal.SIGKILL == holder.wait(timeout=5)
            started = time.monotonic()
            with store.lease(timeout=5.0):
                acquired_after = time.monotonic() - started
        assert acquired_after < 0.5 + 0.3

    def test_async_lease_excludes_sync_and_tasks(self, store):
        """AsyncRedisStore's lease excludes a sync store on the same key and other tasks."""

        async def scenario() -> list[str]:
            events: list[str] = []
            async with AsyncRedisStore(
                store.location.split(" key ")[0], key=store.key, key_prefix="", lease_ttl=1.0
            ) as astore:

                async def holder(name: str) -> None:
                    async with astore.lease(5.0):
                        events.append(f"{name} in")
                        with pytest.raises(LeaseTimeout), store.lease(timeout=0):
                            pass
                        await asyncio.sleep(0.05)
                        events.append(f"{name} out")

                await asyncio.gather(holder("a"), holder("b"))
            return events

        events = run(scenario())
        assert events in (
            ["a in", "a out", "b in", "b out"],
            ["b in", "b out", "a in", "a out"],
        )

    def test_cancelled_async_waiter_holds_nothing(self, store):
        """A task cancelled while waiting for the lease never ends up holding it."""

        async def scenario() -> bool:
            async with AsyncRedisStore(
                store.location.split(" key ")[0], key=store.key, key_prefix="", lease_ttl=1.0
            ) as astore:
                with store.lease(1.0):

                    async def wait() -> None:
                        async with astore.lease(10.0):
                            pass

                    task = asyncio.ensure_future(wait())
                    await asyncio.sleep(0.2)
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                await asyncio.sleep(0.1)
                return bool(store.client.exists(store.lease_key))

        assert False is run(scenario())


def counting_gets(store: RedisStore) -> list[str]:
    """The keys ``store`` sends GET for from now on (its client's ``get``, counted)."""
    keys: list[str] = []
    get = store.client.get

    def counted(key, *args, **kwargs):
        keys.append(key)
        return get(key, *args, **kwargs)

    store.client.get = counted  # type: ignore[method-assign]
    return keys


class TestTheLeaseAnswersWithTheRecord:
    """
    Taking the lease answers with the record as it is under the new lease: the holder's first
    read (what an engine does at once) costs no second round trip. Any other read reads.
    """

    def test_the_first_read_under_a_lease_just_taken_sends_no_get(self, store):
        written = store.write(Record(credential=creds(1)), None)
        gets = counting_gets(store)
        with store.lease(1.0):
            first = store.read()
            sent_for_the_first = len(gets)
            second = store.read()
        assert (written, written, 0, 1) == (first, second, sent_for_the_first, len(gets))

    def test_a_store_left_empty_is_answered_as_no_record(self, store):
        gets = counting_gets(store)
        with store.lease(1.0):
            assert store.read() is None
        assert [] == gets

    def test_what_a_sibling_wrote_before_the_lease_is_what_the_holder_reads(self, store):
        first = store.write(Record(credential=creds(1)), None)
        other = sibling(store)
        newer = other.write(Record(credential=creds(2)), first.revision)
        with store.lease(1.0):
            assert newer == store.read()

    def test_a_read_after_a_write_under_the_lease_reads_the_write(self, store):
        """A write between taking the lease and reading makes the answer old: it is dropped."""
        first = store.write(Record(credential=creds(1)), None)
        with store.lease(1.0):
            second = store.write(Record(credential=creds(2)), first.revision)
            assert second == store.read()

    def test_the_answer_is_not_read_after_the_lease_is_given_back(self, store):
        first = store.write(Record(credential=creds(1)), None)
        with store.lease(1.0):
            pass  # taken and given back, nothing read under it
        newer = sibling(store).write(Record(credential=creds(2)), first.revision)
        assert newer == store.read()

    def test_another_store_object_reads_for_itself(self, store):
        store.write(Record(credential=creds(1)), None)
        other = sibling(store)
        gets = counting_gets(other)
        with store.lease(1.0):
            other.read()
        assert 1 == len(gets)

    def test_asyncio_the_first_read_under_a_lease_just_taken_sends_no_get(self, store):
        written = store.write(Record(credential=creds(1)), None)

        async def scenario() -> tuple[Record | None, int]:
            url = store.location.split(" key ")[0]
            async with AsyncRedisStore(url, key=store.key, key_prefix="") as mine:
                gets: list[str] = []
                get = mine.client.get

                async def counted(key, *args, **kwargs):
                    gets.append(key)
                    return await get(key, *args, **kwargs)

                mine.client.get = counted  # type: ignore[method-assign]
                async with mine.lease(1.0):
                    record = await mine.read()
                return record, len(gets)

        assert (written, 0) == run(scenario())


@pytest.fixture(name="doomed_server")
def _doomed_server():
    """A server of its own, for tests that stop or pause it."""
    with running_redis() as server:
        yield server


class TestServerTrouble:
    """Connection errors and timeouts are StorageUnavailable, quickly; nothing is lost."""

    def test_nothing_listening(self):
        """Every operation raises StorageUnavailable within a second when the port is closed."""
        store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", key="k", timeout=0.5)
        started = time.monotonic()
        for operation in (
            store.read,
            lambda: store.write(Record(credential=CREDS), None),
            lambda: store.delete(None),
        ):
            with pytest.raises(StorageUnavailable) as caught:
                operation()
            assert "storage_unavailable" == caught.value.reason
        with pytest.raises(StorageUnavailable), store.lease(timeout=1.0):
            pass
        assert time.monotonic() - started < 2.0

    def test_paused_server_times_out(self, doomed_server):
        """A server that stops answering (SIGSTOP): storage_timeout after the socket timeout."""
        store = RedisStore(doomed_server.url, key="k", timeout=0.3)
        store.write(Record(credential=CREDS), None)
        assert doomed_server.process is not None
        doomed_server.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StorageUnavailable) as caught:
                store.read()
            waited = time.monotonic() - started
        finally:
            doomed_server.process.send_signal(signal.SIGCONT)
        assert "storage_timeout" == caught.value.reason
        assert waited < 1.5
        assert CREDS == store.read().credential  # type: ignore[union-attr]

    def test_engine_keeps_serving_while_down(self, doomed_server, endpoint, clock, server):
        """Server gone: a due credential is still served (transient), status says why, no call."""
        store = RedisStore(doomed_server.url, key="k", timeout=0.3)
        engine = AuthEngine(store, endpoint, clock=clock)
        engine.login(server.issue())
        token = engine.access_token()
        doomed_server.stop(kill=True)

        fresh = engine.access_token()
        clock.advance(3600 - 200)  # due (5 min leeway) but not expired
        due = engine.access_token()
        status = engine.status()
        with pytest.raises(RefreshFailed) as caught:  # backing off from the outage: no attempt
            engine.refresh()
        assert "storage_unavailable" == caught.value.reason

        assert token == fresh == due
        assert State.STALE == status.state
        assert "storage_unavailable" == status.failure
        assert 0 == server.token_calls

    def test_async_store_unavailable(self):
        """AsyncRedisStore raises the same StorageUnavailable."""

        async def scenario() -> str:
            async with AsyncRedisStore(
                f"redis://127.0.0.1:{free_port()}/0", key="k", timeout=0.5
            ) as store:
                with pytest.raises(StorageUnavailable) as caught:
                    await store.read()
                with pytest.raises(StorageUnavailable):
                    async with store.lease(1.0):
                        pass
                return caught.value.reason

        assert "storage_unavailable" == run(scenario())


class TestManyTasks:
    """One AsyncRedisStore shared by many engines of one event loop (an engine per task)."""

    def test_a_burst_beyond_the_pool_waits_instead_of_failing(self, redis_server, redis_key):
        """300 concurrent reads on a 100-connection pool all succeed: a task waits for a free
        connection (redis.asyncio's default pool raised "Too many connections", which the
        engines took for a store outage in a storm of 250 engines per process)."""

        async def scenario() -> list[Record | None]:
            async with AsyncRedisStore(redis_server.url, key=redis_key) as store:
                await store.write(Record(credential=creds(1)), None)
                return list(await asyncio.gather(*(store.read() for _ in range(300))))

        records = run(scenario())
        assert 300 == len(records)
        assert all(record is not None and record.revision == 1 for record in records)


class TestConnectionOptions:
    """URLs (TCP, unix socket, TLS), a given client, and refused combinations."""

    def test_unix_socket(self, tmp_path):
        """A unix:// URL works and names the socket in the location."""
        with running_redis(unix_socket=True) as server, RedisStore(server.url, key="k") as store:
            stored = store.write(Record(credential=CREDS), None)
            assert stored == store.read()
            assert store.location.startswith(f"unix://{server.socket_path}")

    def test_tls(self, tmp_path):
        """rediss:// with ssl_ca_certs talks TLS to a server that accepts nothing else."""
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.fail("openssl is needed for the TLS test: run .ci/redis-deps", pytrace=False)
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True, timeout=SUBPROCESS_TIMEOUT,
        )  # fmt: skip
        with running_redis(tls=(cert, key)) as server:
            assert server.url.startswith("rediss://")
            with RedisStore(server.url, key="k", ssl_ca_certs=str(cert)) as store:
                stored = store.write(Record(credential=CREDS), None)
                assert stored == store.read()
                assert store.location.startswith("rediss://127.0.0.1:")
            plain = RedisStore(server.url.replace("rediss", "redis"), key="k", timeout=0.5)
            with pytest.raises(StorageUnavailable):
                plain.read()
            untrusted = RedisStore(server.url, key="k", timeout=0.5)
            with pytest.raises(StorageUnavailable):
                untrusted.read()

    def test_given_client(self, redis_server, redis_key):
        """A redis.Redis passed in is used as is and left open on close()."""
        client = redis_server.client()
        store = RedisStore(client=client, key=redis_key)
        store.write(Record(credential=CREDS), None)
        store.close()
        assert client.exists(f"authfsm:{redis_key}")
        assert store.location.startswith("redis://127.0.0.1:")
        client.delete(f"authfsm:{redis_key}")
        client.close()

    def test_a_client_of_the_other_kind_is_refused(self, redis_server):
        """RedisStore needs a blocking client, AsyncRedisStore an asyncio one."""
        import redis
        import redis.asyncio

        with pytest.raises(TypeError, match="blocking"):
            RedisStore(client=redis.asyncio.Redis.from_url(redis_server.url))
        with pytest.raises(TypeError, match="asyncio"):
            AsyncRedisStore(client=redis.Redis.from_url(redis_server.url))

    @pytest.mark.parametrize(
        "kwargs",
        [
            {},
            {"url": "redis://127.0.0.1:1/0", "client": object()},
            {"url": "redis://127.0.0.1:1/0", "key": ""},
            {"url": "redis://127.0.0.1:1/0", "lease_ttl": 0},
            {"url": "redis://127.0.0.1:1/0", "lease_ttl": float("nan")},
            {"url": "redis://127.0.0.1:1/0", "poll_interval": -1},
            {"url": "redis://127.0.0.1:1/0", "decode_responses": True},
        ],
    )
    def test_refused_arguments(self, kwargs):
        with pytest.raises((TypeError, ValueError)):
            RedisStore(**kwargs)

    @pytest.mark.parametrize("store_type", [RedisStore, AsyncRedisStore])
    @pytest.mark.parametrize(
        "make",
        [
            lambda cls: cls("redis://127.0.0.1:1/0", sokcet_timeout=1.0),
            lambda cls: cls.from_sentinel(["127.0.0.1:1"], "svc", sokcet_timeout=1.0),
            lambda cls: cls.from_sentinel(
                ["127.0.0.1:1"], "svc", sentinel_options={"sokcet_timeout": 1.0}
            ),
        ],
        ids=["url", "sentinel", "sentinel_options"],
    )
    def test_a_misspelt_connection_option_is_refused_when_the_store_is_made(self, store_type, make):
        """
        redis-py takes unknown options silently until it connects: without this check the
        TypeError surfaced at the engine's first store call, past its AuthError contract.
        """
        with pytest.raises(TypeError, match="sokcet_timeout"):
            make(store_type)

    def test_an_unreachable_cluster_is_a_typed_error_when_made(self):
        """The blocking Cluster client reads the slot map when made: a cluster that cannot be
        reached is StorageUnavailable (naming the nodes), not redis-py's own exception."""
        port = free_port()
        with pytest.raises(StorageUnavailable, match=f"127.0.0.1:{port}"):
            RedisStore.from_cluster([f"127.0.0.1:{port}"], timeout=0.5)

    @pytest.mark.parametrize("store_type", [RedisStore, AsyncRedisStore])
    def test_known_connection_options_are_taken(self, store_type):
        store_type("redis://127.0.0.1:1/0", socket_keepalive=True, client_name="fleet")
        store_type.from_sentinel(
            ["127.0.0.1:1"],
            "svc",
            socket_keepalive=True,
            sentinel_options={"socket_keepalive": True},
        )


class TestNoSecrets:
    """No repr, location or error text carries a token or the URL's password."""

    def test_password_and_tokens_never_shown(self, redis_server, redis_key):
        url = redis_server.url.replace("redis://", f"redis://user:{PASSWORD}@")
        store = RedisStore(url, key=redis_key, timeout=0.5)
        texts = [repr(store), store.location]
        with pytest.raises(StorageUnavailable) as refused:  # the server has no such user
            store.read()
        good = RedisStore(redis_server.url, key=redis_key)
        good.write(Record(credential=CREDS), None)
        with pytest.raises(WriteConflict) as conflict:
            good.write(Record(credential=CREDS), 7)
        with good.lease(1.0), pytest.raises(LeaseTimeout) as busy, sibling(good).lease(0):
            pass
        good.client.set(good.key, _VALID.replace(b'"revision": 3', b'"revision": "3"'))
        with pytest.raises(StorageCorrupt) as corrupt:
            good.read()
        for caught in (refused, conflict, busy, corrupt):
            texts += [str(caught.value), repr(caught.value)]
        texts.append(repr(good))
        good.client.delete(good.key)

        assert_no_secret(*texts)
        assert "@" not in store.location


class TestEnginesOnRedis:
    """AuthEngine and AsyncAuthEngine on Redis: one refresh, shared logout and poison."""

    def test_sibling_adopts_without_a_call(self, redis_server, redis_key, endpoint, clock, server):
        """Two "hosts" (two stores): A refreshes once, B adopts from Redis with no call."""
        a = AuthEngine(RedisStore(redis_server.url, key=redis_key), endpoint, clock=clock)
        a.login(server.issue())
        b = AuthEngine(RedisStore(redis_server.url, key=redis_key), endpoint, clock=clock)
        clock.advance(3600)

        token_a = a.access_token()
        token_b = b.access_token()

        assert token_a == token_b
        assert State.FRESH == a.state
        assert State.RELOADED == b.state
        assert 1 == server.token_calls
        assert 0 == server.reuse_rejections

    def test_shared_logout(self, redis_server, redis_key, endpoint, clock, server):
        """A logout on one host: every other engine reports LOGGED_OUT at its next check."""
        engines = [
            AuthEngine(RedisStore(redis_server.url, key=redis_key), endpoint, clock=clock)
            for _ in range(3)
        ]
        engines[0].login(server.issue())
        for engine in engines[1:]:
            engine.reload()

        engines[1].logout()

        statuses = [engine.status() for engine in engines]
        assert [State.LOGGED_OUT] * 3 == [s.state for s in statuses]
        assert all(s.requires_login for s in statuses)
        record = engines[0].store.read()
        assert record is not None
        assert None is record.credential  # a tombstone: the revision keeps counting
        assert 2 == record.revision

    def test_shared_poison(self, redis_server, redis_key, endpoint, clock, server):
        """A permanent failure on one host stops all hosts: one call in total."""
        engines = [
            AuthEngine(RedisStore(redis_server.url, key=redis_key), endpoint, clock=clock)
            for _ in range(3)
        ]
        creds = server.issue()
        engines[0].login(creds)
        for engine in engines[1:]:
            engine.reload()
        server.revoke_family_of(creds)
        clock.advance(3600)

        for engine in engines:
            with pytest.raises(ReauthRequired):
                engine.access_token()
        statuses = [engine.status(refresh=True) for engine in engines]

        assert 1 == server.token_calls
        assert [State.POISONED] * 3 == [s.state for s in statuses]
        assert ["invalid_grant"] * 3 == [s.failure for s in statuses]

    def test_async_engines_one_call(self, redis_server, redis_key, endpoint, clock, server):
        """Ten AsyncAuthEngines, each on its own AsyncRedisStore, refresh once between them."""

        async def scenario() -> tuple[set[str], list[State]]:
            stores = [AsyncRedisStore(redis_server.url, key=redis_key) for _ in range(10)]
            try:
                first = await AsyncAuthEngine.open(stores[0], endpoint, clock=clock)
                await first.login(server.issue())
                engines = [first] + [
                    await AsyncAuthEngine.open(store, endpoint, clock=clock) for store in stores[1:]
                ]
                clock.advance(3600)
                tokens = await asyncio.gather(*(engine.access_token() for engine in engines))
                return set(tokens), [engine.state for engine in engines]
            finally:
                for store in stores:
                    await store.aclose()

        tokens, states = run(scenario())

        assert 1 == len(tokens)
        assert 1 == server.token_calls
        assert 1 == states.count(State.FRESH)
        assert 9 == states.count(State.RELOADED)

    def test_async_engine_on_the_sync_store(self, redis_server, redis_key, endpoint, clock, server):
        """AsyncAuthEngine also drives the blocking RedisStore (its lease polled)."""

        async def scenario() -> tuple[str, str]:
            store = RedisStore(redis_server.url, key=redis_key)
            engine = await AsyncAuthEngine.open(store, endpoint, clock=clock)
            await engine.login(server.issue())
            before = await engine.access_token()
            clock.advance(3600)
            return before, await engine.access_token()

        before, after = run(scenario())
        assert before != after
        assert 1 == server.token_calls


_WITHOUT_REDIS = """
import sys
sys.modules["redis"] = None  # as if the redis extra were not installed
import authfsm, authfsm.adapters
from authfsm.adapters.storage import _redis
try:
    _redis.RedisStore("redis://127.0.0.1:1/0")
except ImportError as error:
    print(error)
"""


def test_works_without_redis_py():
    """authfsm imports without redis-py; making a RedisStore says which extra to install."""
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_REDIS],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert 0 == done.returncode, done.stderr
    assert "pip install 'authfsm[redis]'" in done.stdout


def test_location_of_a_store_on_a_path(tmp_path: Path):
    """The location never shows credentials of the URL, and names the key."""
    store = RedisStore(f"redis://:{PASSWORD}@127.0.0.1:6390/2", key="k", key_prefix="p:")
    assert "redis://127.0.0.1:6390/2 key 'p:k'" == store.location
    assert "<RedisStore redis://127.0.0.1:6390/2 key 'p:k'>" == repr(store)


class TestLeaseRenewal:
    """The one renewer thread of a process keeps renewing, whatever one store's renewal does."""

    def test_a_renewal_that_raises_anything_stops_no_other_renewal(self):
        from authfsm.adapters.storage._redis_threads import _LeaseRenewer

        class _Lessee:
            renew_every = 0.01

            def __init__(self, fails_with: BaseException | None) -> None:
                self.fails_with = fails_with
                self.renewals = 0

            def _renew(self, token: str) -> None:
                self.renewals += 1
                if self.fails_with is not None:
                    raise self.fails_with

            def _release(self, token: str) -> None:
                pass

        renewer = _LeaseRenewer()
        # What CI once saw: redis-py reading a connection that the store's close() took away.
        broken = _Lessee(AttributeError("'NoneType' object has no attribute 'readline'"))
        healthy = _Lessee(None)
        for store, token in ((broken, "a"), (healthy, "b")):
            renewer.watch(store)
            renewer.hold(store, token)
        deadline = time.monotonic() + 5
        while healthy.renewals < 5 and time.monotonic() < deadline:
            time.sleep(0.01)

        assert healthy.renewals >= 5
        assert broken.renewals >= 5  # tried again at every tick
        assert renewer._thread is not None
        assert renewer._thread.is_alive()
        renewer.drop("a")
        renewer.drop("b")
