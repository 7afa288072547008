"""
Logins landing in the store through the engine (issue 8, part 5), against the loopback
TokenServer: an engine built from an issuer alone, browser and device logins stored with the
engine's guarded login, verified identities, refresh replies verified like a login's.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from authfsm import AsyncAuthEngine, AuthEngine, EngineMisuse, ReauthRequired, State
from authfsm.adapters import FileStore, MemoryStore
from authfsm.login import DevicePrompt, IdTokenInvalid, clear_discovery_cache
from authfsm.testing import TokenServer

from .test_login_idp import WAIT, Browser

CLIENT = "test-client"


@pytest.fixture(name="server")
def _server() -> Iterator[TokenServer]:
    clear_discovery_cache()
    with TokenServer(client_id=CLIENT) as server:
        server.login_as("alice", "acct-1")
        yield server


def engine_on(server: TokenServer, store) -> AuthEngine:
    return AuthEngine.from_issuer(server.issuer, client_id=CLIENT, store=store)


def browser_login(engine: AuthEngine, **options) -> None:
    visitor = Browser()
    engine.login_browser(opener=visitor, stream=io.StringIO(), timeout=WAIT, **options)
    assert 200 == visitor.join().status_code


def stored(path) -> object:
    record = FileStore(path).read()
    assert record is not None
    return record.credential


class TestBrowserLoginLands:
    def test_every_engine_on_the_store_serves_it_without_a_call(self, server, tmp_path):
        path = tmp_path / "auth.json"
        engine = engine_on(server, FileStore(path))

        browser_login(engine)

        status = engine.status()
        assert (State.FRESH, "alice", server.issuer) == (
            status.state,
            status.identity.user_id,
            status.issuer,
        )
        assert status.identity_verified
        credential = stored(path)
        assert (server.issuer, CLIENT, True) == (
            credential.issuer,
            credential.client_id,
            credential.identity_verified,
        )
        calls = server.token_calls
        sibling = AuthEngine(FileStore(path))  # no endpoint at all: it can only adopt
        assert engine.access_token() == sibling.access_token()
        assert calls == server.token_calls

    def test_a_login_clears_shared_poison(self, server, tmp_path):
        path = tmp_path / "auth.json"
        engine = engine_on(server, FileStore(path))
        browser_login(engine)
        sibling = engine_on(server, FileStore(path))
        server.revoke_family_of(engine.credentials)
        with pytest.raises(ReauthRequired):
            engine.refresh()
        assert State.POISONED == sibling.status().state

        browser_login(engine)

        assert State.FRESH == engine.state
        assert engine.access_token() == sibling.access_token()
        assert State.RELOADED == sibling.state

    def test_a_login_after_a_logout_is_adopted(self, server, tmp_path):
        path = tmp_path / "auth.json"
        engine = engine_on(server, FileStore(path))
        sibling = AuthEngine(FileStore(path))
        browser_login(engine)
        sibling.logout()
        assert State.LOGGED_OUT == engine.status().state

        browser_login(engine)

        assert engine.access_token() == sibling.access_token()

    def test_revoke_previous_revokes_the_replaced_refresh_token(self, server, tmp_path):
        engine = engine_on(server, FileStore(tmp_path / "auth.json"))
        browser_login(engine)
        first = engine.credentials

        browser_login(engine, revoke_previous=True)

        assert not server.family_alive(first)
        assert server.family_alive(engine.credentials)

    def test_a_tampered_id_token_writes_nothing(self, server, tmp_path):
        path = tmp_path / "auth.json"
        engine = engine_on(server, FileStore(path))
        server.id_token_tamper = "wrong_aud"

        with pytest.raises(IdTokenInvalid):
            engine.login_browser(opener=Browser(), stream=io.StringIO(), timeout=WAIT)

        assert not path.exists()
        assert State.LOGGED_OUT == engine.state


def test_device_login_lands_in_the_store(server, tmp_path):
    path = tmp_path / "auth.json"
    engine = engine_on(server, FileStore(path))
    prompts: list[DevicePrompt] = []

    def approve(prompt: DevicePrompt) -> None:
        prompts.append(prompt)
        server.approve_device(prompt.user_code)

    engine.login_device(on_prompt=approve, sleep=lambda _seconds: None)

    assert "alice" == engine.status().identity.user_id
    assert engine.status().identity_verified
    assert engine.access_token() == stored(path).access_token
    assert "Never share" in prompts[0].message


class TestRefreshReplies:
    """id_tokens in refresh replies are verified like a login's; a bad one is dropped."""

    def make_due(self, engine: AuthEngine, path) -> None:
        now = datetime.now(UTC)
        due = attrs.evolve(
            engine.credentials, expires_at=now, last_refresh=now - timedelta(hours=1)
        )
        engine.login(due)
        assert stored(path) == due

    def test_a_verified_refresh_keeps_the_identity_verified(self, server, tmp_path):
        path = tmp_path / "auth.json"
        engine = engine_on(server, FileStore(path))
        browser_login(engine)
        self.make_due(engine, path)

        old = engine.credentials.access_token
        token = engine.access_token()

        assert token != old
        assert stored(path).identity_verified
        assert engine.status().identity_verified

    def test_a_refused_id_token_is_dropped_and_the_rotation_kept(self, server, tmp_path):
        path = tmp_path / "auth.json"
        engine = engine_on(server, FileStore(path))
        browser_login(engine)
        login_id_token = engine.credentials.id_token
        self.make_due(engine, path)
        server.id_token_tamper = "wrong_key"

        token = engine.access_token()

        assert server.is_current(engine.credentials)  # the rotation was adopted and stored
        assert token == stored(path).access_token
        assert login_id_token == stored(path).id_token  # the verified one is kept
        assert (0, "alice") == (server.reuse_rejections, engine.status().identity.user_id)


def test_login_needs_an_engine_built_from_an_issuer():
    with pytest.raises(EngineMisuse):
        AuthEngine(MemoryStore()).login_browser()


def test_async_engine_from_issuer_logs_in_without_blocking(server):
    async def scenario() -> tuple[str, int]:
        engine = await AsyncAuthEngine.from_issuer(
            server.issuer, client_id=CLIENT, store=MemoryStore()
        )
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            for _ in range(1000):
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        visitor = Browser()
        await engine.login_browser(opener=visitor, stream=io.StringIO(), timeout=WAIT)
        task.cancel()
        return await engine.access_token(), ticks

    token, ticks = asyncio.run(scenario())

    assert token
    assert ticks > 0  # the event loop kept running while the login waited
