"""
A rotation is never lost: failed saves, a store that lost its record, cancelled and interrupted
callers, 401 loops, hostile shared markers, and the Codex-parity rules of recover() and refresh().

Each test here reproduces a way the landed engine lost a rotated refresh token (or hung, or
failed unclearly) against real files, a real Redis, real processes and the loopback TokenServer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import attrs
import httpx
import pytest

from authfsm import (
    AccountMismatch,
    AsyncAuthEngine,
    AuthEngine,
    Credentials,
    EngineMisuse,
    LeaseTimeout,
    Policy,
    ReauthRequired,
    RefreshFailed,
    State,
)
from authfsm.adapters import FileStore, MemoryStore, OAuthTokenEndpoint
from authfsm.adapters.storage._redis import RedisStore
from authfsm.engine import Backoff, Record, StorageUnavailable
from authfsm.engine._ports import Refreshed
from authfsm.testing import ScriptedResponse

from .helpers import SUBPROCESS_TIMEOUT
from .redis_server import running_redis


def half() -> float:
    return 0.5


POLICY = Policy(jitter=half)


class FlakyStore:
    """A real store whose writes (or leases) can be made to fail, like a full disk would."""

    def __init__(self, inner: FileStore | MemoryStore) -> None:
        self.inner = inner
        self.fail_writes = False
        self.fail_leases = False
        self.writes = 0
        self.leases = 0

    @property
    def location(self) -> str:
        return self.inner.location

    def read(self) -> Record | None:
        return self.inner.read()

    def write(self, record: Record, expected_revision: int | None) -> Record:
        self.writes += 1
        if self.fail_writes:
            raise StorageUnavailable("No space left on device", reason="storage_unavailable")
        return self.inner.write(record, expected_revision)

    def delete(self, expected_revision: int | None) -> None:
        self.inner.delete(expected_revision)

    def lease(self, timeout: float) -> AbstractContextManager[None]:
        self.leases += 1
        if self.fail_leases:
            raise StorageUnavailable("lock file not writable", reason="permission_denied")
        return self.inner.lease(timeout)


def stored(store: FileStore | MemoryStore | FlakyStore) -> Credentials | None:
    record = store.read()
    return record.credential if record is not None else None


class TestFailedSave:
    """Issue 12.1: a write that fails after the server rotated keeps the new tokens."""

    def test_new_tokens_are_served_never_the_older_stored_copy(
        self, file_store, endpoint, clock, server
    ):
        """Before the fix, status() adopted the older record back and the next refresh reused it."""
        flaky = FlakyStore(file_store)
        engine = AuthEngine(flaky, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        old = stored(file_store)
        clock.advance(3600)
        flaky.fail_writes = True

        new = engine.access_token()
        status = engine.status()
        again = engine.access_token()

        assert new != old.access_token
        assert server.is_current(engine.credentials)
        assert (True, "unsaved", State.FRESH) == (status.unsaved, status.failure, status.state)
        assert new == again == engine.credentials.access_token
        assert old == stored(file_store)  # the store still holds the spent one
        assert 1 == server.token_calls

    def test_the_write_is_retried_until_it_lands(self, file_store, endpoint, clock, server):
        """Once the store heals, a later call writes the minted credential; nothing is reused."""
        flaky = FlakyStore(file_store)
        engine = AuthEngine(flaky, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        clock.advance(3600)
        flaky.fail_writes = True
        new = engine.access_token()
        clock.advance(30)
        assert new == engine.access_token()  # still failing: served all the same
        flaky.fail_writes = False
        clock.advance(30)

        assert new == engine.access_token()
        assert new == stored(file_store).access_token
        assert (False, None) == (engine.status().unsaved, engine.status().failure)
        sibling = AuthEngine(FileStore(file_store.path), endpoint, POLICY, clock=clock)
        clock.advance(3600)
        sibling.access_token()
        assert (2, 0) == (server.token_calls, server.reuse_rejections)

    def test_the_next_due_refresh_spends_the_new_token(self, file_store, endpoint, clock, server):
        """A store that never heals: the next rotation spends the unsaved token, not the old one."""
        flaky = FlakyStore(file_store)
        engine = AuthEngine(flaky, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        clock.advance(3600)
        flaky.fail_writes = True
        engine.access_token()
        clock.advance(3600)

        third = engine.access_token()

        assert third == engine.credentials.access_token
        assert server.is_current(engine.credentials)
        assert (2, 0) == (server.token_calls, server.reuse_rejections)

    def test_a_newer_write_by_a_sibling_wins(self, file_store, endpoint, clock, server):
        """A login after the failed save (a newer revision) is adopted, not overwritten: it
        waits for the lease the unsaved engine keeps, and lands once its write did."""
        flaky = FlakyStore(file_store)
        engine = AuthEngine(flaky, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        clock.advance(3600)
        flaky.fail_writes = True
        engine.access_token()
        fresh_login = server.issue()
        quick = attrs.evolve(POLICY, lease_timeout=timedelta(milliseconds=50))
        sibling = AuthEngine(FileStore(file_store.path), endpoint, quick, clock=clock)
        with pytest.raises(LeaseTimeout):
            sibling.login(fresh_login)
        flaky.fail_writes = False
        clock.advance(30)
        assert not engine.status().unsaved
        sibling.login(fresh_login)

        assert not engine.status().unsaved  # reads the store: the login's newer revision
        assert fresh_login.access_token == engine.access_token()
        assert (1, 0) == (server.token_calls, server.reuse_rejections)

    def test_the_async_engine_keeps_the_lease_too(self, file_store, endpoint, clock, server):
        """Across its calls, and across event loops (a second asyncio.run): the lease kept
        under the first loop is let go of, and the next write takes it anew."""
        flaky = FlakyStore(file_store)
        engine = AsyncAuthEngine(flaky, endpoint, POLICY, clock=clock)
        sibling = FileStore(file_store.path)

        async def refresh_unsaved() -> str:
            await engine.login(server.issue())
            clock.advance(3600)
            flaky.fail_writes = True
            new = await engine.access_token()
            assert (await engine.status()).unsaved
            with pytest.raises(LeaseTimeout), sibling.lease(0.05):
                pass
            return new

        async def heal() -> str:
            flaky.fail_writes = False
            clock.advance(30)
            return await engine.access_token()

        new = asyncio.run(refresh_unsaved())
        with pytest.raises(LeaseTimeout), sibling.lease(0.05):
            pass  # kept between the loops too
        assert new == asyncio.run(heal())

        assert new == stored(file_store).access_token
        with sibling.lease(0.05):
            pass
        assert (1, 0) == (server.token_calls, server.reuse_rejections)


class TestRecordMissing:
    """Issue 12.9: no record at all while holding a credential is not a logout."""

    def test_deleted_file_is_written_back(self, file_store, endpoint, clock, server):
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        token = engine.access_token()
        file_store.path.unlink()

        status = engine.status()
        status = engine.status() if status.unsaved else status

        assert (State.FRESH, False) == (status.state, status.requires_login)
        assert token == engine.access_token() == stored(file_store).access_token

    def test_redis_restart_without_persistence_logs_nobody_out(self, endpoint, clock, server):
        """The fleet keeps its credential and the key is seeded again from the cache."""
        with running_redis() as redis_server:
            a_store = RedisStore(redis_server.url, key="fleet")
            b_store = RedisStore(redis_server.url, key="fleet")
            a = AuthEngine(a_store, endpoint, POLICY, clock=clock)
            a.login(server.issue())
            b = AuthEngine(b_store, endpoint, POLICY, clock=clock)
            redis_server.stop(kill=True)
            redis_server.start()  # no persistence: the key is gone

            clock.advance(3600)
            token = b.access_token()  # due: re-seeds, then refreshes once
            assert a.access_token() == token  # adopts B's rotation
            assert a_store.read().credential.access_token == token
            assert (1, 0) == (server.token_calls, server.reuse_rejections)
            assert State.LOGGED_OUT not in (a.state, b.state)
            a_store.close()
            b_store.close()

    def test_a_logout_still_logs_out(self, file_store, endpoint, clock, server):
        """A logout leaves a tombstone: siblings are logged out as before."""
        a = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        a.login(server.issue())
        b = AuthEngine(FileStore(file_store.path), endpoint, POLICY, clock=clock)
        a.logout()
        with pytest.raises(ReauthRequired):
            b.refresh()
        assert State.LOGGED_OUT == b.status().state


class TestAsyncCancellation:
    """Issue 12.2: a cancelled caller does not drop an answer the server already gave."""

    def test_timed_out_caller_still_gets_the_rotation_saved(
        self, file_store, endpoint, clock, server
    ):
        async def scenario() -> tuple[AsyncAuthEngine, bool]:
            engine = await AsyncAuthEngine.open(file_store, endpoint, POLICY, clock=clock)
            await engine.login(server.issue())
            clock.advance(3600)
            server.latency = 0.4
            timed_out = False
            try:
                await asyncio.wait_for(engine.access_token(), timeout=0.1)
            except TimeoutError:
                timed_out = True
            for _ in range(100):  # bounded: the background write lands within the latency
                if engine.state is State.FRESH:
                    break
                await asyncio.sleep(0.02)
            server.latency = 0.0
            return engine, timed_out

        engine, timed_out = asyncio.run(scenario())

        assert timed_out
        token = engine.credentials.access_token
        assert server.is_current(engine.credentials)
        assert token == stored(file_store).access_token
        with FileStore(file_store.path).lease(timeout=0):
            pass  # the lease is free
        assert (1, 0) == (server.token_calls, server.reuse_rejections)

    def test_cancelled_while_waiting_for_the_lease_makes_no_call(
        self, file_store, endpoint, clock, server
    ):
        """Before the token call, a cancellation cancels the operation: nothing is spent."""

        stored_before = None

        async def scenario() -> AsyncAuthEngine:
            nonlocal stored_before
            engine = await AsyncAuthEngine.open(file_store, endpoint, POLICY, clock=clock)
            stored_before = server.issue()
            await engine.login(stored_before)
            clock.advance(3600)
            with FileStore(file_store.path).lease(timeout=1.0):  # a sibling is refreshing
                task = asyncio.create_task(engine.refresh())
                await asyncio.sleep(0.1)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            return engine

        engine = asyncio.run(scenario())

        assert 0 == server.token_calls
        assert State.REFRESHING != engine.state
        with FileStore(file_store.path).lease(timeout=0):
            pass
        assert asyncio.run(engine.refresh()) != stored_before.access_token
        assert (1, 0) == (server.token_calls, server.reuse_rejections)


_INTERRUPTED_CHILD = textwrap.dedent(
    """
    import signal
    import sys
    from authfsm import AuthEngine
    from authfsm.adapters import FileStore, OAuthTokenEndpoint

    class Announcing(OAuthTokenEndpoint):
        def refresh(self, credentials):
            print("calling", flush=True)
            return super().refresh(credentials)

    # Ctrl-C as in a terminal, even when started by a runner that ignores SIGINT (mutmut does,
    # and an ignored SIGINT is inherited by the children it starts).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    store, url = sys.argv[1], sys.argv[2]
    engine = AuthEngine(FileStore(store), Announcing(url, "test-client", timeout=10.0))
    print("ready", flush=True)
    engine.refresh()
    print("refreshed", flush=True)
    """
)


def test_ctrl_c_during_the_call_still_saves_the_rotation(file_store, server, tmp_path):
    """Issue 12.2, sync: SIGINT mid-call is delivered after the answer is written."""
    first = server.issue()
    AuthEngine(file_store).login(first)
    server.latency = 1.0
    script = tmp_path / "child.py"
    script.write_text(_INTERRUPTED_CHILD)
    process = subprocess.Popen(
        [sys.executable, str(script), str(file_store.path), server.token_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert b"ready\n" == process.stdout.readline()
        assert b"calling\n" == process.stdout.readline()
        time.sleep(0.3)  # the call is in flight: the server answers after 1 s
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)

    assert process.returncode != 0
    assert b"KeyboardInterrupt" in err
    saved = stored(file_store)
    assert saved.access_token != first.access_token
    assert server.is_current(saved)
    with FileStore(file_store.path).lease(timeout=0):
        pass
    assert (1, 0) == (server.token_calls, server.reuse_rejections)


class _Answering:
    """An endpoint that answers what the test says (for replies the TokenServer never sends)."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.calls = 0

    def refresh(self, credentials: Credentials) -> object:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def revoke(self, credentials: Credentials) -> bool:
        return False


def _jwt(claims: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


class TestHostileReplies:
    """Issues 12.3 and 12.10: what a refresh reply can never do to the engine."""

    @pytest.mark.parametrize("expires_in", [2**63 - 1, 1e12, 1e300])
    def test_absurd_expires_in_keeps_the_rotation(self, clock, expires_in):
        """Before the fix, OverflowError escaped after the rotation and the tokens were lost."""
        store = MemoryStore()
        endpoint = _Answering(_refreshed_with_expiry(expires_in))
        engine = AuthEngine(store, endpoint, POLICY, clock=clock)
        engine.login(due_credentials(clock, "a0", "r0"))
        clock.advance(3600)

        assert "a1" == engine.access_token()
        assert "r1" == stored(store).refresh_token
        assert 1 == endpoint.calls

    def test_an_endpoint_that_raises_is_a_transient_failure(self, clock):
        """Nothing but AuthError leaves the engine, whatever a custom endpoint does."""
        store = MemoryStore()
        endpoint = _Answering(ValueError("boom"))
        engine = AuthEngine(store, endpoint, POLICY, clock=clock)
        engine.login(due_credentials(clock, "a0", "r0"))
        clock.advance(3600)

        with pytest.raises(RefreshFailed) as caught:
            engine.refresh()
        assert "endpoint_error:ValueError" == caught.value.reason
        assert "a0" == engine.access_token()

    @pytest.mark.parametrize("id_token", [_jwt({"name": "nobody"}), "not-a-jwt"])
    def test_a_reply_naming_nobody_keeps_the_identity(self, clock, id_token):
        """Before the fix, the identity was erased and another user's login was then adopted."""
        store = MemoryStore()
        endpoint = _Answering(Refreshed(access_token="a1", refresh_token="r1", id_token=id_token))
        engine = AuthEngine(store, endpoint, POLICY, clock=clock)
        engine.login(due_credentials(clock, "a0", "r0", id_token=_jwt({"sub": "alice"})))
        clock.advance(3600)
        assert "a1" == engine.access_token()
        assert "alice" == engine.status().identity.user_id

        other = Credentials(access_token="b0", refresh_token="rb", id_token=_jwt({"sub": "bob"}))
        AuthEngine(store, clock=clock).login(other)
        clock.advance(9 * 86400)
        with pytest.raises(AccountMismatch):
            engine.access_token()
        assert "a1" == engine.credentials.access_token


def due_credentials(clock, access: str, refresh: str, **fields: object) -> Credentials:
    """A credential that expires an hour from now."""
    expires = datetime.fromtimestamp(clock() + 3600, UTC)
    return Credentials(access_token=access, refresh_token=refresh, expires_at=expires, **fields)


def _refreshed_with_expiry(expires_in: float) -> Refreshed:
    try:
        return Refreshed(access_token="a1", refresh_token="r1", expires_in=expires_in)
    except (TypeError, ValueError):  # a value that refuses absurd numbers itself is fine too
        return Refreshed(access_token="a1", refresh_token="r1")


class _AlwaysUnauthorized(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def rejecting_resource() -> Iterator[str]:
    """A resource server on 127.0.0.1 that answers 401 to every token (wrong audience)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysUnauthorized)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


class TestRejectionLoop:
    """Issue 12.8: a server that rejects every token does not turn requests into refreshes."""

    def test_sync(self, file_store, endpoint, clock, server):
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        reasons = []
        with rejecting_resource() as url, httpx.Client(auth=engine.httpx_auth()) as client:
            for _ in range(10):
                try:
                    client.get(url)
                except RefreshFailed as error:
                    reasons.append(error.reason)
                clock.advance(1)

        assert 1 == server.token_calls
        assert ["rejected_after_refresh"] * 9 == reasons
        assert "rejected_after_refresh" == engine.status().failure

    def test_refreshes_at_most_once_a_minute(self, file_store, endpoint, clock, server):
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        with rejecting_resource() as url, httpx.Client(auth=engine.httpx_auth()) as client:
            for _ in range(60):
                with suppress(RefreshFailed):
                    client.get(url)
                clock.advance(5)

        assert 1 < server.token_calls <= 6  # 300 s of 401s
        assert 0 == server.reuse_rejections

    def test_async(self, file_store, endpoint, clock, server):
        async def scenario() -> list[str]:
            engine = await AsyncAuthEngine.open(file_store, endpoint, POLICY, clock=clock)
            await engine.login(server.issue())
            reasons = []
            with rejecting_resource() as url:
                async with httpx.AsyncClient(auth=engine.httpx_auth()) as client:
                    for _ in range(10):
                        try:
                            await client.get(url)
                        except RefreshFailed as error:
                            reasons.append(error.reason)
            return reasons

        assert ["rejected_after_refresh"] * 9 == asyncio.run(scenario())
        assert 1 == server.token_calls


class TestLeaseTrouble:
    """Issues 12.6 and 12.15: a lease that cannot be had backs off and stays reported."""

    def test_hung_holder_costs_one_wait_not_one_per_call(self, file_store, endpoint, clock, server):
        counting = FlakyStore(file_store)
        policy = Policy(jitter=half, lease_timeout=timedelta(milliseconds=200))
        engine = AuthEngine(counting, endpoint, policy, clock=clock)
        engine.login(server.issue())
        old = engine.access_token()
        clock.advance(3600)
        with FileStore(file_store.path).lease(timeout=1.0):  # a stopped holder, for the engine
            assert old == engine.access_token()
            leases = counting.leases
            assert [old] * 5 == [engine.access_token() for _ in range(5)]
            status = engine.status()

        assert leases == counting.leases
        assert ("lease_timeout", State.STALE) == (status.failure, status.state)
        assert status.retry_at is not None
        assert 0 == server.token_calls

    def test_unwritable_lock_stays_reported(self, file_store, endpoint, clock, server):
        flaky = FlakyStore(file_store)
        engine = AuthEngine(flaky, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        clock.advance(3600)
        flaky.fail_leases = True
        engine.access_token()

        assert "permission_denied" == engine.status().failure  # the read works; the lease not
        flaky.fail_leases = False
        clock.advance(600)
        engine.access_token()
        assert engine.status().failure is None


class TestHostileMarkers:
    """Issue 12.7: a shared backoff marker from another process is bounded."""

    def test_a_deadline_no_engine_could_write_is_ignored(self, file_store, endpoint, clock, server):
        """Before the fix, a marker far in the future stopped the whole fleet for good."""
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        record = file_store.read()
        marker = Backoff(fingerprint=record.credential.fingerprint, not_before=1e300, failures=3)
        file_store.write(Record(credential=record.credential, backoff=marker), record.revision)
        clock.advance(3600)

        engine.access_token()

        assert (1, State.FRESH) == (server.token_calls, engine.state)

    def test_a_huge_failure_count_does_not_overflow(self, file_store, endpoint, clock, server):
        """Before the fix, 2.0 ** count raised OverflowError out of the engine."""
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        record = file_store.read()
        marker = Backoff(
            fingerprint=record.credential.fingerprint, not_before=clock() - 1, failures=10**9
        )
        file_store.write(Record(credential=record.credential, backoff=marker), record.revision)
        clock.advance(3600)
        server.fail_next(503)

        with pytest.raises(RefreshFailed) as caught:
            engine.refresh()

        assert caught.value.retry_at <= clock() + POLICY.backoff_max.total_seconds()
        assert file_store.read().backoff.failures <= 10_001


class TestCodexParity:
    """The two rules of Codex's AuthManager the engine did not follow."""

    def test_refresh_after_poison_adopts_a_sibling_login_without_spending_it(
        self, file_store, endpoint, clock, server
    ):
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        first = server.issue(user_id="alice")
        engine.login(first)
        server.revoke_family_of(first)
        with pytest.raises(ReauthRequired):
            engine.refresh()
        again = server.issue(user_id="alice")
        AuthEngine(FileStore(file_store.path), clock=clock).login(again)
        calls = server.token_calls

        assert again.access_token == engine.refresh()
        assert calls == server.token_calls
        assert server.is_current(again)

    def test_refresh_after_logout_adopts_without_spending(
        self, file_store, endpoint, clock, server
    ):
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        login = server.issue()
        AuthEngine(FileStore(file_store.path), clock=clock).login(login)
        assert login.access_token == engine.refresh()
        assert 0 == server.token_calls

    def test_recover_judges_against_the_rejected_credential(
        self, file_store, endpoint, clock, server
    ):
        """A request made for alice is never retried with bob's token, even after a switch."""
        engine = AuthEngine(file_store, endpoint, Policy.codex(jitter=half), clock=clock)
        alice = server.issue(user_id="alice", account_id="acct", codex_claims=True)
        engine.login(alice)
        bob = server.issue(user_id="bob", account_id="acct", codex_claims=True)
        engine.login(bob)  # another user of the same account, between a request and its 401
        revision = file_store.read().revision

        with pytest.raises(AccountMismatch):
            engine.recover(alice.access_token)
        assert (0, revision) == (server.token_calls, file_store.read().revision)


class TestMisuse:
    """Issues 12.12 and 12.17: mistakes fail at once, with a clear typed error."""

    @pytest.mark.parametrize(
        ("store", "endpoint"),
        [
            ("~/.myapp/auth.json", None),
            (Path("auth.json"), None),
            (MemoryStore(), "https://idp.example/token"),
            (object(), None),
        ],
    )
    def test_sync_engine_refuses_wrong_types(self, store, endpoint):
        with pytest.raises(EngineMisuse) as caught:
            AuthEngine(store, endpoint)
        assert "engine_misuse" == caught.value.reason

    def test_async_parts_are_refused_by_the_sync_engine(self, redis_url_store_async):
        with pytest.raises(EngineMisuse):
            AuthEngine(redis_url_store_async)

    def test_sync_endpoint_is_refused_by_the_async_engine(self):
        with pytest.raises(EngineMisuse):
            AsyncAuthEngine(MemoryStore(), _Answering())

    def test_one_async_engine_in_two_loops_at_once(self, file_store, endpoint, clock, server):
        """One caller gets EngineMisuse; nobody hangs."""
        engine = AsyncAuthEngine(FileStore(file_store.path), endpoint, POLICY, clock=clock)
        AuthEngine(file_store).login(server.issue())
        clock.advance(3600)
        server.latency = 0.5
        outcomes: list[object] = []

        def in_own_loop() -> None:
            try:
                outcomes.append(asyncio.run(engine.access_token()))
            except EngineMisuse as error:
                outcomes.append(error)

        threads = [threading.Thread(target=in_own_loop) for _ in range(2)]
        threads[0].start()
        time.sleep(0.2)
        threads[1].start()
        for thread in threads:
            thread.join(timeout=10)

        assert not any(thread.is_alive() for thread in threads)
        assert 1 == sum(isinstance(o, EngineMisuse) for o in outcomes)
        assert 1 == sum(isinstance(o, str) for o in outcomes)

    def test_one_loop_after_another_is_fine(self, file_store, endpoint, clock, server):
        engine = AsyncAuthEngine(file_store, endpoint, POLICY, clock=clock)
        AuthEngine(FileStore(file_store.path)).login(server.issue())
        first = asyncio.run(engine.access_token())
        clock.advance(3600)
        second = asyncio.run(engine.access_token())
        assert first != second
        assert 1 == server.token_calls


@pytest.fixture(name="redis_url_store_async")
def _redis_url_store_async() -> Iterator[object]:
    from authfsm.adapters.storage._redis import AsyncRedisStore

    return AsyncRedisStore("redis://127.0.0.1:1/0", key="never-used")


_ = ScriptedResponse, OAuthTokenEndpoint


class TestErrorFields:
    """What callers read off the errors and the status in the corners above."""

    def test_a_lease_timeout_says_when_to_try_again(self, file_store, endpoint, clock, server):
        policy = Policy(jitter=half, lease_timeout=timedelta(milliseconds=100))
        engine = AuthEngine(file_store, endpoint, policy, clock=clock)
        engine.login(server.issue())
        clock.advance(3600)
        with FileStore(file_store.path).lease(timeout=1.0):
            engine.access_token()  # waits once, then serves the old token while backing off
            clock.advance(60)  # past that backoff
            with pytest.raises(RefreshFailed) as caught:
                engine.refresh()

        status = engine.status()
        assert "lease_timeout" == caught.value.reason
        assert caught.value.retry_at is not None
        assert caught.value.retry_at > clock()
        assert status.retry_at is not None
        assert caught.value.retry_at == status.retry_at.timestamp()

    def test_a_failed_recovery_names_its_cause_and_retry_time(
        self, file_store, endpoint, clock, server
    ):
        engine = AuthEngine(file_store, endpoint, POLICY, clock=clock)
        creds = server.issue()
        engine.login(creds)
        server.fail_next(503)

        with pytest.raises(RefreshFailed) as caught:
            engine.recover(creds.access_token)

        assert "http_503" == caught.value.reason
        assert caught.value.retry_at == clock() + 1.0  # the first backoff, jitter fixed at 1/2

    def test_a_refresh_that_lands_clears_an_unsaved_state(
        self, file_store, endpoint, clock, server
    ):
        """The store heals between a failed save retry and the next refresh's write."""

        class FailsSome(FlakyStore):
            failures = 0

            def write(self, record: Record, expected_revision: int | None) -> Record:
                if self.failures:
                    self.failures -= 1
                    raise StorageUnavailable("No space left on device")
                return self.inner.write(record, expected_revision)

        store = FailsSome(file_store)
        engine = AuthEngine(store, endpoint, POLICY, clock=clock)
        engine.login(server.issue())
        clock.advance(3600)
        store.failures = 2  # both attempts of the refresh's save
        engine.access_token()
        assert engine.status().unsaved
        store.failures = 1  # the next save retry fails; the refresh after it writes
        clock.advance(3600)

        token = engine.access_token()

        status = engine.status()
        assert (False, None) == (status.unsaved, status.failure)
        assert token == stored(file_store).access_token
        assert (2, 0) == (server.token_calls, server.reuse_rejections)
