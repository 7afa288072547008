"""Behaviour of AuthEngine against a real loopback token server and real files."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import attrs
import httpx
import pytest

from authfsm import (
    AccountMismatch,
    AuthEngine,
    Credentials,
    Policy,
    ReauthRequired,
    RefreshFailed,
    State,
)
from authfsm.adapters import FileStore, MemoryStore, OAuthTokenEndpoint
from authfsm.engine import PermanentFailure, Record, RefreshOutcome
from authfsm.testing import ScriptedResponse, TokenServer

from .conftest import CountingStore

LEEWAY = 300.0


def stored(store: FileStore | MemoryStore | CountingStore) -> Credentials:
    record = store.read()
    assert record is not None
    assert record.credential is not None
    return record.credential


def logged_in(store, endpoint, clock, server, **issue) -> tuple[AuthEngine, Credentials]:
    engine = AuthEngine(store, endpoint, clock=clock)
    creds = server.issue(**issue)
    engine.login(creds)
    return engine, creds


class TestProactiveRefresh:
    """A credential is refreshed when it reaches its refresh point, and not before."""

    def test_fresh_credential_costs_no_io(self, file_store, endpoint, clock, server):
        """access_token() on a fresh credential reads no store and calls no endpoint."""
        counting = CountingStore(file_store)
        engine, creds = logged_in(counting, endpoint, clock, server)
        counting.reads = counting.writes = counting.leases = 0

        tokens = {engine.access_token() for _ in range(100)}

        assert {creds.access_token} == tokens
        assert 0 == counting.io
        assert 0 == server.token_calls

    def test_refresh_by_expires_at(self, file_store, endpoint, clock, server):
        """Due at expires_at minus the leeway: one call, persisted with last_refresh advanced."""
        engine, creds = logged_in(file_store, endpoint, clock, server)
        clock.advance(3600 - LEEWAY - 1)
        assert creds.access_token == engine.access_token()
        assert 0 == server.token_calls

        clock.advance(2)
        token = engine.access_token()

        assert 1 == server.token_calls
        assert token != creds.access_token
        saved = stored(file_store)
        assert token == saved.access_token
        assert saved.last_refresh == datetime.fromtimestamp(clock(), UTC)
        assert State.FRESH == engine.state
        assert server.is_current(saved)

    def test_refresh_by_jwt_exp(self, file_store, endpoint, clock, server):
        """Without expires_at, the access token's JWT exp claim sets the refresh point."""
        engine = AuthEngine(file_store, endpoint, clock=clock)
        creds = attrs.evolve(server.issue(), expires_at=None, last_refresh=None)
        engine.login(creds)
        clock.advance(3600 - LEEWAY - 1)
        engine.access_token()
        assert 0 == server.token_calls

        clock.advance(2)
        engine.access_token()

        assert 1 == server.token_calls

    def test_leeway_capped_at_half_the_lifetime(self, file_store, endpoint, clock, server):
        """A 60-second token is refreshed after 30 s, not 5 minutes before it was issued."""
        engine, creds = logged_in(file_store, endpoint, clock, server, expires_in=60)
        assert State.FRESH == engine.state
        clock.advance(29)
        assert creds.access_token == engine.access_token()
        assert 0 == server.token_calls

        clock.advance(2)
        engine.access_token()

        assert 1 == server.token_calls

    def test_refresh_by_last_refresh_age(self, tmp_path, clock):
        """With no expiry known, a credential is due refresh_interval after last_refresh."""
        with (
            TokenServer(clock=clock, jwt_access_tokens=False) as server,
            OAuthTokenEndpoint(server.token_url, "test-client") as endpoint,
        ):
            engine = AuthEngine(FileStore(tmp_path / "a.json"), endpoint, clock=clock)
            engine.login(attrs.evolve(server.issue(), expires_at=None))
            clock.advance(timedelta(days=8).total_seconds() - 1)
            engine.access_token()
            assert 0 == server.token_calls

            clock.advance(2)
            engine.access_token()

            assert 1 == server.token_calls

    def test_unknown_expiry_and_age_is_never_due(self, clock):
        """No expiry and no last_refresh: the credential is used as it is, forever."""
        engine = AuthEngine(MemoryStore(), None, clock=clock)
        engine.login(Credentials(access_token="opaque", refresh_token="r"))
        clock.advance(10 * 365 * 86400)

        assert "opaque" == engine.access_token()
        assert State.FRESH == engine.state


class TestGuardedReload:
    """Before spending a refresh token the engine re-reads the store under the lease."""

    def test_sibling_rotation_is_adopted_without_a_call(self, file_store, endpoint, clock, server):
        """A stale engine adopts the credential a sibling already refreshed: zero calls."""
        a, _ = logged_in(file_store, endpoint, clock, server)
        b = AuthEngine(FileStore(file_store.path), endpoint, clock=clock)
        clock.advance(3600)
        new_token = a.access_token()
        assert 1 == server.token_calls

        assert new_token == b.access_token()

        assert 1 == server.token_calls
        assert State.RELOADED == b.state
        assert 0 == server.reuse_rejections

    def test_unchanged_store_means_exactly_one_call(self, file_store, endpoint, clock, server):
        """The store still holds the stale credential: one call, the result persisted."""
        engine, creds = logged_in(file_store, endpoint, clock, server)
        clock.advance(3600)

        token = engine.access_token()

        assert 1 == server.token_calls
        saved = stored(file_store)
        assert (token, datetime.fromtimestamp(clock(), UTC)) == (
            saved.access_token,
            saved.last_refresh,
        )
        assert saved.refresh_token != creds.refresh_token


class TestIdentity:
    """A credential of another account or user is never adopted nor overwritten."""

    def test_different_account_is_refused(self, file_store, endpoint, clock, server):
        """Other account in the store: AccountMismatch, zero calls, store and cache kept."""
        engine, mine = logged_in(file_store, endpoint, clock, server)
        record = file_store.read()
        other = server.issue(user_id="user-2", account_id="acct-2")
        file_store.write(Record(credential=other), record.revision)
        before = file_store.path.read_bytes()
        clock.advance(3600)

        with pytest.raises(AccountMismatch):
            engine.access_token()

        assert 0 == server.token_calls
        assert before == file_store.path.read_bytes()
        assert mine == engine.credentials
        assert engine.status().requires_login

    def test_same_account_different_user_is_refused(self, file_store, endpoint, clock, server):
        """Same account, another user: refused too."""
        engine, mine = logged_in(file_store, endpoint, clock, server)
        other = server.issue(user_id="user-2", account_id="acct-1")
        file_store.write(Record(credential=other), file_store.read().revision)
        clock.advance(3600)

        with pytest.raises(AccountMismatch):
            engine.access_token()

        assert 0 == server.token_calls
        assert mine == engine.credentials

    def test_reload_refuses_another_identity_unless_asked(
        self, file_store, endpoint, clock, server
    ):
        """reload() keeps the old identity; allow_identity_change switches on purpose."""
        engine, _ = logged_in(file_store, endpoint, clock, server)
        other = server.issue(user_id="user-2", account_id="acct-2")
        file_store.write(Record(credential=other), file_store.read().revision)

        with pytest.raises(AccountMismatch):
            engine.reload()
        assert State.RELOADED == engine.reload(allow_identity_change=True)
        assert other == engine.credentials

    def test_legacy_credential_adopts_same_user_with_account(
        self, file_store, endpoint, clock, server
    ):
        """A cached credential without account id adopts the same user's one that has it."""
        legacy = attrs.evolve(server.issue(), account_id=None)
        engine = AuthEngine(file_store, endpoint, clock=clock)
        engine.login(legacy)
        clock.advance(3600)
        newer = server.issue()  # same user, with account id, logged in by another process
        file_store.write(Record(credential=newer), file_store.read().revision)

        assert newer.access_token == engine.access_token()
        assert 0 == server.token_calls
        assert State.RELOADED == engine.state

    def test_credential_without_identity_refreshes_itself(
        self, file_store, endpoint, clock, server
    ):
        """No account id and no id_token: the engine can still refresh its own credential."""
        bare = attrs.evolve(server.issue(), account_id=None, id_token=None)
        engine = AuthEngine(file_store, endpoint, clock=clock)
        engine.login(bare)
        clock.advance(3600)

        token = engine.access_token()

        assert 1 == server.token_calls
        assert token != bare.access_token


class _SiblingRotatesDuringCall:
    """An endpoint wrapper: while our call fails permanently, a sibling logs the same user in."""

    def __init__(self, server: TokenServer, store: FileStore) -> None:
        self.server = server
        self.store = store
        self.calls = 0

    def refresh(self, credentials: Credentials) -> RefreshOutcome:
        self.calls += 1
        sibling = self.server.issue()
        self.store.write(Record(credential=sibling), self.store.read().revision)
        return PermanentFailure(code="invalid_grant", status=400)

    def revoke(self, credentials: Credentials) -> bool:
        return False


class TestPermanentFailure:
    """A permanent failure poisons the credential for every engine sharing the store."""

    def test_poisoned_makes_no_more_calls_anywhere(self, file_store, endpoint, clock, server):
        """Revoked family: one call, then none from this engine nor from a second engine."""
        engine, creds = logged_in(file_store, endpoint, clock, server)
        sibling = AuthEngine(FileStore(file_store.path), endpoint, clock=clock)
        server.revoke_family_of(creds)
        clock.advance(3600)

        with pytest.raises(ReauthRequired) as caught:
            engine.access_token()

        assert "invalid_grant" == caught.value.reason
        assert State.POISONED == engine.state
        assert 1 == server.token_calls
        record = file_store.read()
        assert record.poisoned() is not None
        with pytest.raises(ReauthRequired):
            engine.refresh()
        with pytest.raises(ReauthRequired):
            engine.access_token()
        status = engine.status(include_token=True, refresh=True)
        assert (State.POISONED, None, True) == (status.state, status.token, status.requires_login)
        with pytest.raises(ReauthRequired):
            sibling.access_token()
        late = AuthEngine(FileStore(file_store.path), endpoint, clock=clock)
        assert State.POISONED == late.state
        with pytest.raises(ReauthRequired):
            late.access_token()
        assert None is late.status(include_token=True, refresh=True).token
        assert 1 == server.token_calls

    @pytest.mark.parametrize(
        ("status", "body"),
        [
            (400, {"error": "invalid_grant"}),
            (400, {"error": "refresh_token_reused"}),
            (400, {"error": "refresh_token_expired"}),
            (403, {"error": "refresh_token_invalidated"}),
            (401, {"error": "invalid_client"}),
            (400, {"error": {"code": "unauthorized_client"}}),
            (500, {"code": "refresh_token_reused"}),
            (401, None),
        ],
    )
    def test_permanent_codes_at_any_status(self, file_store, endpoint, clock, server, status, body):
        """Every permanent code, and a bare 401, poisons after exactly one call."""
        engine, _ = logged_in(file_store, endpoint, clock, server)
        server.script(ScriptedResponse(status=status, json=body))
        clock.advance(3600)

        with pytest.raises(ReauthRequired):
            engine.access_token()
        with pytest.raises(ReauthRequired):
            engine.access_token()

        assert (State.POISONED, 1) == (engine.state, server.token_calls)

    def test_final_reread_adopts_a_sibling_rotation(self, file_store, clock, server):
        """If a sibling stored a new credential meanwhile, it is adopted, not poisoned."""
        endpoint = _SiblingRotatesDuringCall(server, file_store)
        engine = AuthEngine(file_store, endpoint, clock=clock)
        engine.login(server.issue())
        clock.advance(3600)

        token = engine.access_token()

        assert 1 == endpoint.calls
        assert State.RELOADED == engine.state
        assert stored(file_store).access_token == token
        assert file_store.read().poison is None

    def test_login_logout_or_new_store_credential_clear_poison(
        self, file_store, endpoint, clock, server
    ):
        """Poison is lifted by a login, a logout, or a different credential in the store."""
        engine, creds = logged_in(file_store, endpoint, clock, server)
        server.revoke_family_of(creds)
        clock.advance(3600)
        with pytest.raises(ReauthRequired):
            engine.access_token()

        other_process = AuthEngine(FileStore(file_store.path), endpoint, clock=clock)
        relogin = server.issue()
        other_process.login(relogin)
        assert relogin.access_token == engine.access_token()
        assert State.RELOADED == engine.state

        server.revoke_family_of(relogin)
        clock.advance(3600)
        with pytest.raises(ReauthRequired):
            engine.access_token()
        engine.logout()
        assert State.LOGGED_OUT == engine.state
        assert file_store.read().credential is None

        engine.login(server.issue())
        assert State.FRESH == engine.state
        clock.advance(3600)
        engine.access_token()
        assert State.FRESH == engine.state


def _closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/oauth/token"


class TestTransientFailure:
    """Transient failures keep the old token in service and back off, without poison."""

    @pytest.mark.parametrize(
        "script",
        [
            ScriptedResponse(status=503, json={"error": "temporarily_unavailable"}),
            ScriptedResponse(status=500, body=b"<html>oops</html>"),
            ScriptedResponse(status=200, json={"token_type": "Bearer"}),
            ScriptedResponse(status=200, body=b"not json"),
            ScriptedResponse(status=200, json={"access_token": 12345}),
            ScriptedResponse(status=200, drop=True),
        ],
        ids=["503", "500-html", "2xx-no-token", "2xx-not-json", "2xx-wrong-type", "dropped"],
    )
    def test_old_token_served_and_backoff_respected(
        self, file_store, endpoint, clock, server, script
    ):
        """One failed call, the old token served, no call again until the backoff ends."""
        engine, creds = logged_in(file_store, endpoint, clock, server)
        server.script(script)
        clock.advance(3600 - 60)

        assert creds.access_token == engine.access_token()
        assert (1, State.STALE) == (server.token_calls, engine.state)
        assert file_store.read().poison is None
        record = file_store.read()
        assert record.backoff_until() is not None
        for _ in range(5):
            assert creds.access_token == engine.access_token()
        assert 1 == server.token_calls

        clock.set(record.backoff_until() + 0.001)
        token = engine.access_token()

        assert 2 == server.token_calls
        assert token != creds.access_token
        assert State.FRESH == engine.state

    def test_retry_after_is_honoured_fleet_wide(self, file_store, endpoint, clock, server):
        """429 with Retry-After: 120 s: neither this engine nor a sibling calls before."""
        engine, creds = logged_in(file_store, endpoint, clock, server)
        sibling = AuthEngine(FileStore(file_store.path), endpoint, clock=clock)
        server.script(ScriptedResponse(status=429, headers={"Retry-After": "120"}))
        clock.advance(3600 - 60)
        assert creds.access_token == engine.access_token()

        clock.advance(119)
        assert creds.access_token == engine.access_token()
        assert creds.access_token == sibling.access_token()
        assert 1 == server.token_calls
        with pytest.raises(RefreshFailed) as caught:
            engine.refresh()
        assert caught.value.retry_at is not None

        clock.advance(2)
        assert creds.access_token != sibling.access_token()
        assert creds.access_token != engine.access_token()
        assert 2 == server.token_calls

    def test_timeout_is_transient(self, file_store, clock, server):
        """A token endpoint slower than the timeout: the old token is served."""
        with OAuthTokenEndpoint(server.token_url, "test-client", timeout=0.2) as endpoint:
            engine, creds = logged_in(file_store, endpoint, clock, server)
            server.script(ScriptedResponse(status=200, delay=1.0, json={}))
            clock.advance(3600 - 60)

            assert creds.access_token == engine.access_token()
            assert State.STALE == engine.state

    def test_connection_refused_is_transient(self, file_store, clock, server):
        """Nobody listening: the old token is served, no poison, explicit refresh says why."""
        with OAuthTokenEndpoint(_closed_port_url(), "test-client", timeout=1.0) as endpoint:
            engine, creds = logged_in(file_store, endpoint, clock, server)
            clock.advance(3600 - 60)

            assert creds.access_token == engine.access_token()
            assert file_store.read().poison is None
            clock.advance(1000)
            with pytest.raises(RefreshFailed) as caught:
                engine.refresh()
            assert caught.value.reason.startswith("network:")


class TestRecover:
    """recover() is judged against the rejected token, not whatever is cached now."""

    def test_cache_moved_on(self, file_store, endpoint, clock, server):
        """The cache already holds another token: it is returned, no call."""
        engine, creds = logged_in(file_store, endpoint, clock, server)
        clock.advance(3600)
        newer = engine.access_token()
        calls = server.token_calls

        assert newer == engine.recover(creds.access_token)
        assert calls == server.token_calls

    def test_store_moved_on(self, file_store, endpoint, clock, server):
        """A sibling rotated: the rejected token's engine adopts from the store, no call."""
        a, creds = logged_in(file_store, endpoint, clock, server)
        b = AuthEngine(FileStore(file_store.path), endpoint, clock=clock)
        rotated = b.refresh()
        assert 1 == server.token_calls

        assert rotated == a.recover(creds.access_token)
        assert 1 == server.token_calls
        assert State.RELOADED == a.state

    def test_nothing_newer_means_one_refresh(self, file_store, endpoint, clock, server):
        """The rejected token is the newest anywhere: exactly one refresh."""
        engine, creds = logged_in(file_store, endpoint, clock, server)

        token = engine.recover(creds.access_token)

        assert token != creds.access_token
        assert 1 == server.token_calls

    def test_poisoned_raises_without_a_call(self, file_store, endpoint, clock, server):
        """A poisoned credential is not retried."""
        engine, creds = logged_in(file_store, endpoint, clock, server)
        server.revoke_family_of(creds)
        with pytest.raises(ReauthRequired):
            engine.recover(creds.access_token)
        calls = server.token_calls

        with pytest.raises(ReauthRequired):
            engine.recover(creds.access_token)
        assert calls == server.token_calls == 1


class TestHttpxAuth:
    """httpx_auth() sends the bearer token and recovers once from a 401."""

    def test_retries_a_401_and_resends_a_streamed_body(self, file_store, endpoint, clock, server):
        """A sibling's rotation makes our token stale; the retry carries the whole body."""
        a, _creds = logged_in(file_store, endpoint, clock, server)
        b = AuthEngine(FileStore(file_store.path), endpoint, clock=clock)
        b.refresh()
        chunks = [b"x" * 1000, b"y" * 2000, b"z" * 3]

        with httpx.Client(auth=a.httpx_auth(), timeout=5.0) as client:
            response = client.post(server.resource_url, content=iter(chunks))

        assert 200 == response.status_code
        assert 3003 == response.json()["body_bytes"]
        assert [401] == [r.status_code for r in response.history]
        assert 1 == server.token_calls

    def test_poisoned_credential_raises(self, file_store, endpoint, clock, server):
        """A 401 that cannot be recovered surfaces as ReauthRequired."""
        engine, creds = logged_in(file_store, endpoint, clock, server)
        server.revoke_family_of(creds)

        with httpx.Client(auth=engine.httpx_auth()) as client, pytest.raises(ReauthRequired):
            client.get(server.resource_url)


class TestApiKey:
    """API keys are never refreshed."""

    def test_never_refreshes_and_status_returns_the_key(self, file_store, endpoint, clock, server):
        """100 days on, no call, and status(include_token=True, refresh=True) has the key."""
        engine = AuthEngine(file_store, endpoint, clock=clock)
        engine.login(Credentials.api_key("sk-test-key"))
        clock.advance(100 * 86400)

        status = engine.status(include_token=True, refresh=True)

        assert ("sk-test-key", "api_key", State.FRESH) == (
            status.token,
            status.method,
            status.state,
        )
        assert "sk-test-key" == engine.access_token()
        assert 0 == server.token_calls


class TestConcurrency:
    """Single flight inside one process."""

    def test_sixteen_threads_one_call(self, file_store, endpoint, clock, server):
        """16 threads on a stale credential: exactly one endpoint call, one new token."""
        engine, creds = logged_in(file_store, endpoint, clock, server)
        clock.advance(3600)
        barrier = threading.Barrier(16, timeout=10)
        tokens: list[str] = []

        def worker() -> None:
            barrier.wait()
            tokens.append(engine.access_token())

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)

        assert 16 == len(tokens)
        assert 1 == len(set(tokens))
        assert creds.access_token not in tokens
        assert 1 == server.token_calls


class TestLogout:
    """A logout is shared through the store."""

    def test_sibling_sees_logged_out_at_next_check(self, file_store, endpoint, clock, server):
        """After a logout elsewhere, status() and access_token() report LOGGED_OUT."""
        a, _ = logged_in(file_store, endpoint, clock, server)
        b = AuthEngine(FileStore(file_store.path), endpoint, clock=clock)
        a.logout(revoke=True)

        assert State.LOGGED_OUT == b.status().state
        with pytest.raises(ReauthRequired) as caught:
            b.access_token()
        assert "logged_out" == caught.value.reason
        assert "revoked" in [c.outcome for c in server.calls]
        assert json.loads(file_store.path.read_text())["credential"] is None


def test_policy_presets_read_codex_claims(server):
    """The Codex preset takes identity from the https://api.openai.com/auth claims."""
    from authfsm.engine import identity_of

    creds = attrs.evolve(
        server.issue(user_id="u-9", account_id="a-9", codex_claims=True), account_id=None
    )

    assert ("a-9", "u-9") == tuple(attrs.astuple(identity_of(creds, Policy.codex().identity)))
    assert (None, "u-9") == tuple(attrs.astuple(identity_of(creds, Policy().identity)))


class TestClientErrors:
    """A misconfigured client poisons only its own engine, never the shared credential."""

    def test_invalid_client_is_not_shared(self, file_store, endpoint, clock, server):
        """A wrong client id: this engine stops, a correctly configured sibling still refreshes."""
        with OAuthTokenEndpoint(server.token_url, "wrong-client") as wrong:
            misconfigured, _ = logged_in(file_store, wrong, clock, server)
            sibling = AuthEngine(FileStore(file_store.path), endpoint, clock=clock)
            clock.advance(3600)

            with pytest.raises(ReauthRequired) as caught:
                misconfigured.access_token()
            assert "invalid_client" == caught.value.reason
            assert None is file_store.read().poison
            with pytest.raises(ReauthRequired):
                misconfigured.access_token()
            assert 1 == server.token_calls

            token = sibling.access_token()

        assert (State.FRESH, 2) == (sibling.state, server.token_calls)
        assert token == stored(file_store).access_token


class TestRefusalCost:
    """A refused identity switch costs one lease, the first time."""

    def test_a_repeated_account_mismatch_takes_no_lease(self, file_store, endpoint, clock, server):
        """
        The first refusal is found under the lease (an engine tries the lease before it reads,
        for storms); each refused call after it reads the store once, with no lease.
        """
        counting = CountingStore(file_store)
        engine, _ = logged_in(counting, endpoint, clock, server)
        other = server.issue(user_id="user-2", account_id="acct-2")
        file_store.write(Record(credential=other), file_store.read().revision)
        clock.advance(3600)
        counting.reads = counting.writes = counting.leases = 0

        for _ in range(3):
            with pytest.raises(AccountMismatch):
                engine.access_token()

        assert (3, 1, 0) == (counting.reads, counting.leases, counting.writes)


def test_logout_reports_revocation(file_store, endpoint, clock, server):
    """logout(revoke=True) says whether the server accepted the revocation."""
    engine, creds = logged_in(file_store, endpoint, clock, server)

    assert engine.logout(revoke=True) is True
    assert not server.family_alive(creds)
    assert engine.logout() is False


class _InterruptedEndpoint:
    """An endpoint whose call is interrupted (Ctrl-C while the request is in flight)."""

    def refresh(self, credentials: Credentials) -> RefreshOutcome:
        raise KeyboardInterrupt

    def revoke(self, credentials: Credentials) -> bool:
        return False


def test_interrupt_mid_call_leaves_no_lease_and_no_refreshing(file_store, clock, server):
    """KeyboardInterrupt during the call propagates, with the lease freed and the state STALE."""
    engine = AuthEngine(file_store, _InterruptedEndpoint(), clock=clock)
    engine.login(server.issue())
    clock.advance(3600)

    with pytest.raises(KeyboardInterrupt):
        engine.access_token()

    assert State.STALE == engine.state
    with FileStore(file_store.path).lease(timeout=0):
        pass


class TestFollowers:
    """Followers of a refresh adopt the leader's write without queueing for the lease."""

    def test_adopts_while_the_lease_is_still_held(self, file_store, endpoint, clock, server):
        """The leader's write is adopted while the leader still holds the lease: no call."""
        follower, _ = logged_in(file_store, endpoint, clock, server)
        clock.advance(3600)
        leader_store = FileStore(file_store.path)
        result: list[str] = []
        with leader_store.lease(timeout=1.0):
            worker = threading.Thread(target=lambda: result.append(follower.access_token()))
            worker.start()
            newer = server.issue()  # what the leader minted
            leader_store.write(Record(credential=newer), leader_store.read().revision)
            worker.join(timeout=5)
            adopted_under_lease = list(result)

        assert [newer.access_token] == adopted_under_lease
        assert (State.RELOADED, 0) == (follower.state, server.token_calls)

    def test_lease_timeout_serves_the_old_token(self, file_store, endpoint, clock, server):
        """A lease held past the policy's timeout: the old token is served, no call."""
        policy = Policy(lease_timeout=timedelta(milliseconds=100))
        follower = AuthEngine(file_store, endpoint, policy, clock=clock)
        creds = server.issue()
        follower.login(creds)
        clock.advance(3600 - 60)

        with FileStore(file_store.path).lease(timeout=1.0):
            token = follower.access_token()
            with pytest.raises(RefreshFailed) as caught:
                follower.refresh()

        assert creds.access_token == token
        assert "lease_timeout" == caught.value.reason
        assert 0 == server.token_calls


class _FlakyStore:
    """A MemoryStore whose reads fail while `down` is set (a store outage)."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.down = False
        self.reads = 0

    @property
    def location(self) -> str:
        return self.inner.location

    def read(self):
        self.reads += 1
        if self.down:
            from authfsm import StorageUnavailable

            raise StorageUnavailable("store down", reason="storage_unavailable")
        return self.inner.read()

    def write(self, record, expected_revision):
        return self.inner.write(record, expected_revision)

    def delete(self, expected_revision):
        self.inner.delete(expected_revision)

    def lease(self, timeout):
        return self.inner.lease(timeout)


class TestStoreOutage:
    """An unreachable store is a transient failure: reported, backed off, then forgotten."""

    def test_outage_is_reported_backed_off_and_cleared(self, endpoint, clock, server):
        """Old token served, one store attempt per backoff, status says why, then recovers."""
        store = _FlakyStore()
        engine = AuthEngine(store, endpoint, clock=clock)
        creds = server.issue()
        engine.login(creds)
        clock.advance(3600 - 60)
        store.down = True

        assert creds.access_token == engine.access_token()
        reads = store.reads
        for _ in range(5):
            assert creds.access_token == engine.access_token()
        assert reads == store.reads
        assert "storage_unavailable" == engine.status(refresh=True).failure

        store.down = False
        clock.advance(600)
        status = engine.status(refresh=True)

        assert (State.FRESH, None) == (status.state, status.failure)
        assert 1 == server.token_calls


def test_credential_without_refresh_token_is_served_without_polling(clock):
    """Due with no refresh token: the token is served, and the store is not read on every call."""
    store = CountingStore(MemoryStore())
    engine = AuthEngine(store, _InterruptedEndpoint(), clock=clock)
    now = datetime.fromtimestamp(clock(), UTC)
    engine.login(
        Credentials(access_token="only", expires_at=now + timedelta(hours=1), last_refresh=now)
    )
    clock.advance(3600 - 60)
    store.reads = 0

    tokens = [engine.access_token() for _ in range(10)]
    reads = store.reads  # the first call looks (under the lease), the others do not
    with pytest.raises(RefreshFailed) as caught:
        engine.refresh()

    assert ["only"] * 10 == tokens
    assert 1 == reads
    assert "not_refreshable" == caught.value.reason
    assert "not_refreshable" == engine.status().failure
