"""End to end against authfsm.testing.TokenServer: both logins, then the engine takes over."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any

import pytest

from authfsm import AuthEngine
from authfsm.adapters import MemoryStore, OAuthTokenEndpoint
from authfsm.login import (
    DevicePrompt,
    IdTokenInvalid,
    IssuerMismatch,
    JwksCache,
    LoginDenied,
    LoginResult,
    LoginTimeout,
    StateMismatch,
    VerifiedIdentity,
    browser_login,
    browser_login_async,
    clear_discovery_cache,
    device_login,
    device_login_async,
    discover,
)
from authfsm.testing import FakeClock, ScriptedRedirect, TokenServer

from .test_login_idp import WAIT, Browser

CLIENT = "test-client"


@pytest.fixture(name="server")
def _server() -> Iterator[TokenServer]:
    clear_discovery_cache()
    with TokenServer(client_id=CLIENT) as server:
        server.login_as("user-7", "acct-7")
        yield server


def browser(server: TokenServer, opener: Browser | None = None, **kwargs: Any) -> LoginResult:
    visitor = opener or Browser()
    result = browser_login(
        discover(server.issuer),
        client_id=CLIENT,
        opener=visitor,
        stream=io.StringIO(),
        timeout=WAIT,
        **kwargs,
    )
    assert 200 == visitor.join().status_code
    return result


class TestBrowserLogin:
    """Code + PKCE against the TokenServer, then the engine refreshes what the login minted."""

    def test_login_then_the_engine_refreshes(self, server: TokenServer) -> None:
        result = browser(server)
        assert VerifiedIdentity(issuer=server.issuer, subject="user-7", verified=True) == (
            result.identity
        )
        endpoint = OAuthTokenEndpoint(server.token_url, CLIENT)
        engine = AuthEngine(MemoryStore(), endpoint)
        engine.login(result.credentials)
        fresh = engine.refresh()
        assert result.credentials.access_token != fresh
        assert 1 == server.rotations
        assert 0 == server.reuse_rejections

    @pytest.mark.parametrize(
        ("tamper", "reason"),
        [
            ("wrong_key", "signature"),
            ("unknown_kid", "unknown_kid"),
            ("alg_none", "algorithm"),
            ("wrong_aud", "audience"),
            ("wrong_iss", "issuer"),
            ("wrong_nonce", "nonce"),
            ("missing_nonce", "nonce"),
            ("expired", "expired"),
        ],
    )
    def test_tampered_id_tokens(self, server: TokenServer, tamper: Any, reason: str) -> None:
        server.id_token_tamper = tamper
        visitor = Browser()
        with pytest.raises(IdTokenInvalid) as caught:
            browser_login(
                discover(server.issuer),
                client_id=CLIENT,
                opener=visitor,
                stream=io.StringIO(),
                timeout=WAIT,
            )
        assert reason == caught.value.reason
        assert 400 == visitor.join().status_code

    @pytest.mark.parametrize(
        ("redirect", "error", "reason"),
        [
            (ScriptedRedirect(state="forged"), StateMismatch, "state_mismatch"),
            (ScriptedRedirect(iss="https://evil.example"), IssuerMismatch, "issuer_mismatch"),
            (ScriptedRedirect(omit_iss=True), IssuerMismatch, "issuer_missing"),
            (ScriptedRedirect(error="access_denied"), LoginDenied, "login_denied"),
        ],
    )
    def test_refused_redirects(
        self, server: TokenServer, redirect: ScriptedRedirect, error: type[Exception], reason: str
    ) -> None:
        server.script_authorization(redirect)
        visitor = Browser()
        with pytest.raises(error) as caught:
            browser_login(
                discover(server.issuer),
                client_id=CLIENT,
                opener=visitor,
                stream=io.StringIO(),
                timeout=WAIT,
            )
        assert reason == getattr(caught.value, "reason", None)
        assert 400 == visitor.join().status_code
        assert 0 == server.rotations

    def test_rotated_signing_key_is_fetched_again(self, server: TokenServer) -> None:
        metadata = discover(server.issuer)
        assert metadata.jwks_uri is not None
        cache = JwksCache(metadata.jwks_uri)
        browser(server, jwks=cache)
        server.rotate_signing_key(keep_previous=False)
        assert browser(server, jwks=cache).identity is not None
        assert 2 == cache.fetches

    def test_async(self, server: TokenServer) -> None:
        metadata = discover(server.issuer)
        visitor = Browser()
        result = asyncio.run(
            browser_login_async(
                metadata, client_id=CLIENT, opener=visitor, stream=io.StringIO(), timeout=WAIT
            )
        )
        assert 200 == visitor.join().status_code
        assert result.identity is not None
        assert "user-7" == result.identity.subject


class Approver:
    """A fake sleep on the server's clock that approves (or denies) the code after some polls."""

    def __init__(self, server: TokenServer, clock: FakeClock, *, after: int, deny: bool = False):
        self.server, self.clock, self.after, self.deny = server, clock, after, deny
        self.user_code: str | None = None
        self.waits: list[float] = []

    def prompt(self, prompt: DevicePrompt) -> None:
        self.user_code = prompt.user_code

    def __call__(self, seconds: float) -> None:
        assert len(self.waits) < 200
        self.waits.append(seconds)
        self.clock.advance(seconds)
        if len(self.waits) == self.after + 1:
            assert self.user_code is not None
            if self.deny:
                self.server.deny_device(self.user_code)
            else:
                self.server.approve_device(self.user_code)

    async def async_sleep(self, seconds: float) -> None:
        self(seconds)
        await asyncio.sleep(0)


@pytest.fixture(name="device_server")
def _device_server() -> Iterator[tuple[TokenServer, FakeClock]]:
    clear_discovery_cache()
    clock = FakeClock(1_800_000_000.0)
    with TokenServer(client_id=CLIENT, clock=clock, enforce_device_interval=True) as server:
        server.login_as("user-9", "acct-9")
        yield server, clock


def device(server: TokenServer, clock: FakeClock, approver: Approver, **kwargs: Any) -> Any:
    kwargs.setdefault("jitter", 0.0)
    return device_login(
        discover(server.issuer),
        client_id=CLIENT,
        on_prompt=approver.prompt,
        clock=clock,
        sleep=approver,
        **kwargs,
    )


class TestDeviceLogin:
    """RFC 8628 against the TokenServer, which answers slow_down to any poll that comes too soon."""

    def test_approved_after_pending_polls(
        self, device_server: tuple[TokenServer, FakeClock]
    ) -> None:
        server, clock = device_server
        approver = Approver(server, clock, after=2)
        result = device(server, clock, approver)
        assert [5.0, 5.0, 5.0] == approver.waits
        assert 3 == server.device_polls
        assert result.identity is not None
        assert ("user-9", True) == (result.identity.subject, result.identity.verified)

    def test_missing_interval_is_five_seconds_and_never_too_soon(
        self, device_server: tuple[TokenServer, FakeClock]
    ) -> None:
        server, clock = device_server
        server.device_interval = None
        approver = Approver(server, clock, after=3)
        device(server, clock, approver)
        assert [5.0] * 4 == approver.waits

    def test_slow_down(self, device_server: tuple[TokenServer, FakeClock]) -> None:
        server, clock = device_server
        approver = Approver(server, clock, after=3)

        def prompt(shown: DevicePrompt) -> None:
            approver.prompt(shown)
            server.script_device(shown.user_code, "slow_down")

        device_login(
            discover(server.issuer),
            client_id=CLIENT,
            on_prompt=prompt,
            clock=clock,
            sleep=approver,
            jitter=0.0,
        )
        assert [5.0, 10.0, 10.0, 10.0] == approver.waits

    def test_denied(self, device_server: tuple[TokenServer, FakeClock]) -> None:
        server, clock = device_server
        with pytest.raises(LoginDenied):
            device(server, clock, Approver(server, clock, after=1, deny=True))

    def test_never_approved(self, device_server: tuple[TokenServer, FakeClock]) -> None:
        server, clock = device_server
        server.device_code_ttl = 30
        approver = Approver(server, clock, after=10_000)
        with pytest.raises(LoginTimeout):
            device(server, clock, approver)
        assert [5.0] * 5 == approver.waits

    def test_async(self, device_server: tuple[TokenServer, FakeClock]) -> None:
        server, clock = device_server
        approver = Approver(server, clock, after=1)
        result = asyncio.run(
            device_login_async(
                discover(server.issuer),
                client_id=CLIENT,
                on_prompt=approver.prompt,
                clock=clock,
                sleep=approver.async_sleep,
                jitter=0.0,
            )
        )
        assert result.identity is not None
        assert [5.0, 5.0] == approver.waits
