"""Never lose a rotation: whatever the endpoint adopts, the engine can store and serve."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from authfsm import AuthEngine, Credentials, RefreshFailed
from authfsm.adapters import MemoryStore, OAuthTokenEndpoint
from authfsm.engine import Refreshed, RefreshOutcome
from authfsm.testing import FakeClock, ScriptedResponse, TokenServer

ABSURD_LIFETIMES = [2**63 - 1, 10**12, 1e300, "1e999", pytest.param(10**400, id="10**400")]


def due(clock: FakeClock) -> Credentials:
    """A credential whose access token expired a minute ago."""
    now = datetime.fromtimestamp(clock(), UTC)
    return Credentials(
        access_token="at-old",
        refresh_token="rt-old",
        expires_at=now - timedelta(minutes=1),
        last_refresh=now - timedelta(hours=1),
    )


class TestAbsurdLifetime:
    """A huge expires_in is kept as "no expiry known": the new tokens are stored, not lost."""

    @pytest.mark.parametrize("expires_in", ABSURD_LIFETIMES)
    def test_over_the_wire(self, server, endpoint, clock, expires_in):
        """The engine adopts and persists a rotation whose expires_in overflows a datetime."""
        answer = {"access_token": "at-new", "refresh_token": "rt-new", "expires_in": expires_in}
        server.script(ScriptedResponse(200, json=answer))
        store = MemoryStore()
        engine = AuthEngine(store, endpoint, clock=clock)
        engine.login(due(clock))

        token = engine.access_token()

        record = store.read()
        assert record is not None
        assert record.credential is not None
        assert ("at-new", "rt-new", None) == (
            token,
            record.credential.refresh_token,
            record.credential.expires_at,
        )

    def test_custom_endpoint(self, clock):
        """A custom endpoint's Refreshed(expires_in=1e300) cannot smuggle the overflow in."""

        class Generous:
            def refresh(self, credentials: Credentials) -> RefreshOutcome:
                return Refreshed(access_token="at-new", refresh_token="rt-new", expires_in=1e300)

            def revoke(self, credentials: Credentials) -> bool:
                return False

        engine = AuthEngine(MemoryStore(), Generous(), clock=clock)
        engine.login(due(clock))

        assert "at-new" == engine.access_token()


class TestUnsendableToken:
    """A reply token with CR/LF is never adopted; the engine keeps the credential it had."""

    def test_crlf_access_token(self, server, endpoint, clock):
        """refresh() fails transiently, without the token in the message, and keeps the old one."""
        answer = {"access_token": "at-LEAK\r\nX-Injected: 1", "refresh_token": "rt-new"}
        server.script(ScriptedResponse(200, json=answer))
        store = MemoryStore()
        engine = AuthEngine(store, endpoint, clock=clock)
        engine.login(due(clock))

        with pytest.raises(RefreshFailed) as caught:
            engine.refresh()

        assert "LEAK" not in str(caught.value)
        record = store.read()
        assert record is not None
        assert record.credential is not None
        assert "rt-old" == record.credential.refresh_token


class TestNonRotatingServer:
    """Against a sparse, non-rotating IdP the engine keeps its refresh token and keeps working."""

    def test_refresh_token_kept(self, clock):
        """Two refreshes an hour apart both succeed with the one refresh token."""
        with (
            TokenServer(clock=clock, sparse={"refresh_token", "id_token", "expires_in"}) as idp,
            OAuthTokenEndpoint(idp.token_url, "test-client", timeout=2.0) as endpoint,
        ):
            issued = idp.issue()
            engine = AuthEngine(MemoryStore(), endpoint, clock=clock)
            engine.login(issued)
            tokens = []
            for _ in range(2):
                clock.advance(3600)
                tokens.append(engine.access_token())

            assert 3 == len({issued.access_token, *tokens})  # two new access tokens
            assert idp.is_current(issued.refresh_token)
            assert (0, 0, 2) == (idp.rotations, idp.reuse_rejections, idp.token_calls)
            assert ["refreshed", "refreshed"] == [call.outcome for call in idp.calls]
