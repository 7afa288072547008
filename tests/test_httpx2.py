"""
Both HTTP client families, httpx and httpx2, against real loopback servers: the engine's auth
(bearer header, one recovery on 401, a streamed body replayed) and the token endpoint on an
injected client (refresh, revoke, deadline, body cap, secret-free classification).

httpx2 is optional for users but not here: without it these tests fail, they never skip.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from authfsm import AsyncAuthEngine, AuthEngine, ReauthRequired
from authfsm.adapters import FileStore, OAuthTokenEndpoint
from authfsm.engine import Credentials, PermanentFailure, Refreshed, TransientFailure
from authfsm.engine._http_family import family_of
from authfsm.testing import ScriptedResponse, TokenServer
from tests.test_endpoint_deadline import DRIP_PAUSE, LATEST, DripServer, endpoint_for

FAMILIES = ("httpx", "httpx2")


def load(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        pytest.fail(
            f"{name} is not installed: these tests run against both HTTP client families and "
            "must not be skipped; install the test extra (pip install -e '.[test]'), which "
            "brings httpx2",
            pytrace=False,
        )


@pytest.fixture(name="http", params=FAMILIES)
def _http(request: pytest.FixtureRequest) -> ModuleType:
    """The client family under test, as its module (``httpx`` or ``httpx2``)."""
    return load(request.param)


def sync_auth(http: ModuleType, engine: AuthEngine) -> Any:
    return engine.httpx_auth() if http.__name__ == "httpx" else engine.httpx2_auth()


def async_auth(http: ModuleType, engine: AsyncAuthEngine) -> Any:
    return engine.httpx_auth() if http.__name__ == "httpx" else engine.httpx2_auth()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


@pytest.fixture(name="family_endpoint")
def _family_endpoint(server: TokenServer, http: ModuleType) -> Iterator[OAuthTokenEndpoint]:
    """The loopback server's endpoint on an injected client of the family under test."""
    with (
        http.Client(timeout=5.0) as client,
        OAuthTokenEndpoint(
            server.token_url,
            "test-client",
            revoke_url=server.revoke_url,
            timeout=2.0,
            client=client,
        ) as endpoint,
    ):
        yield endpoint


def logged_in(store, endpoint, clock, server) -> tuple[AuthEngine, Credentials]:
    engine = AuthEngine(store, endpoint, clock=clock)
    creds = server.issue()
    engine.login(creds)
    return engine, creds


def free_port_url() -> str:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    return f"http://127.0.0.1:{port}/oauth/token"


class TestFamilies:
    """What each family accepts, and that httpx2 stays optional."""

    def test_httpx2_refuses_an_httpx_auth(self, file_store, endpoint, clock):
        """httpx2.Client takes only an httpx2.Auth: hence a separate auth class for it."""
        httpx2 = load("httpx2")
        engine = AuthEngine(file_store, endpoint, clock=clock)

        with pytest.raises(TypeError, match='Invalid "auth" argument'):
            httpx2.Client(auth=engine.httpx_auth())

    def test_family_of_clients(self, http):
        """Each family's Client and AsyncClient are recognised; nothing else is."""
        name = http.__name__
        with http.Client() as client:
            assert name == family_of(client)
            assert None is family_of(client, kind="AsyncClient")
        assert name == family_of(http.AsyncClient(), kind="AsyncClient")
        assert None is family_of(object())

    def test_endpoint_refuses_a_client_of_neither_family(self, http):
        """An AsyncClient or a stranger as client= fails at once, saying what to pass."""
        with pytest.raises(TypeError, match=r"AsyncClient goes to the \*_async methods"):
            OAuthTokenEndpoint("http://127.0.0.1/token", "c", client=http.AsyncClient())
        with pytest.raises(TypeError, match=r"httpx.Client or httpx2.Client, not object"):
            OAuthTokenEndpoint("http://127.0.0.1/token", "c", client=object())  # type: ignore[arg-type]

    def test_httpx_paths_do_not_import_httpx2(self):
        """httpx_auth(), the endpoint and an exchange on httpx leave httpx2 unimported."""
        script = (
            "import sys\n"
            "from authfsm import AuthEngine\n"
            "from authfsm.adapters import MemoryStore, OAuthTokenEndpoint\n"
            "from authfsm.testing import TokenServer\n"
            "with TokenServer() as idp:\n"
            "    endpoint = OAuthTokenEndpoint(idp.token_url, 'test-client')\n"
            "    engine = AuthEngine(MemoryStore(), endpoint)\n"
            "    engine.login(idp.issue())\n"
            "    engine.httpx_auth()\n"
            "    engine.refresh()\n"
            "assert 'httpx2' not in sys.modules, 'httpx2 was imported'\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert 0 == done.returncode, done.stderr


class TestAuth:
    """The engine's auth on a client of each family: bearer, recovery, body replay."""

    def test_sends_the_bearer_token(self, http, file_store, endpoint, clock, server):
        """A fresh token is sent as is: one request, no token call."""
        engine, _ = logged_in(file_store, endpoint, clock, server)

        with http.Client(auth=sync_auth(http, engine), timeout=5.0) as client:
            response = client.get(server.resource_url)

        assert (200, [], 0) == (response.status_code, response.history, server.token_calls)

    def test_retries_a_401_once_and_resends_a_streamed_body(
        self, http, file_store, endpoint, clock, server
    ):
        """A sibling rotated: 401, recover() adopts its token, one retry carries the whole body."""
        engine, _ = logged_in(file_store, endpoint, clock, server)
        AuthEngine(FileStore(file_store.path), endpoint, clock=clock).refresh()
        chunks = [b"x" * 1000, b"y" * 2000, b"z" * 3]

        with http.Client(auth=sync_auth(http, engine), timeout=5.0) as client:
            response = client.post(server.resource_url, content=iter(chunks))

        assert (200, 3003, [401], 1) == (
            response.status_code,
            response.json()["body_bytes"],
            [r.status_code for r in response.history],
            server.token_calls,
        )
        assert engine.access_token() == response.request.headers["Authorization"][7:]

    def test_unrecoverable_401_raises(self, http, file_store, endpoint, clock, server):
        """A revoked family: the 401 surfaces as ReauthRequired, not as a second retry."""
        engine, creds = logged_in(file_store, endpoint, clock, server)
        server.revoke_family_of(creds)

        with (
            http.Client(auth=sync_auth(http, engine), timeout=5.0) as client,
            pytest.raises(ReauthRequired),
        ):
            client.get(server.resource_url)

    def test_async_client_retries_and_resends_a_streamed_body(
        self, http, file_store, endpoint, clock, server
    ):
        """AsyncAuthEngine on the family's AsyncClient: 401, adopt, one retry, body intact."""

        async def body():
            for chunk in (b"a" * 500, b"b" * 500):
                yield chunk

        async def scenario():
            engine = await AsyncAuthEngine.open(file_store, endpoint, clock=clock)
            await engine.login(server.issue())
            AuthEngine(FileStore(file_store.path), endpoint, clock=clock).refresh()
            async with http.AsyncClient(auth=async_auth(http, engine), timeout=5) as client:
                return await client.post(server.resource_url, content=body())

        response = run(scenario())

        assert (200, 1000, [401], 1) == (
            response.status_code,
            response.json()["body_bytes"],
            [r.status_code for r in response.history],
            server.token_calls,
        )

    def test_sync_auth_refuses_an_async_client(self, http, file_store, endpoint, clock, server):
        """The blocking engine's auth on an AsyncClient says to use AsyncAuthEngine."""
        engine, _ = logged_in(file_store, endpoint, clock, server)

        async def scenario():
            async with http.AsyncClient(auth=sync_auth(http, engine)) as client:
                await client.get(server.resource_url)

        with pytest.raises(RuntimeError, match=rf"AsyncAuthEngine\.{http.__name__}_auth\(\)"):
            run(scenario())


class TestEndpoint:
    """The token endpoint on an injected client of each family, against real servers."""

    def test_engine_refreshes_through_the_injected_client(
        self, http, file_store, family_endpoint, clock, server
    ):
        """A due credential is refreshed over the family's client, once, and the token works."""
        engine, creds = logged_in(file_store, family_endpoint, clock, server)
        clock.advance(3600)

        token = engine.access_token()

        assert (1, True) == (server.token_calls, token != creds.access_token)
        with http.Client(auth=sync_auth(http, engine), timeout=5.0) as client:
            assert 200 == client.get(server.resource_url).status_code

    def test_refresh_and_revoke(self, family_endpoint, server):
        """refresh() adopts the rotation; revoke() is True, and the revoked token is refused."""
        creds = server.issue()

        outcome = family_endpoint.refresh(creds)
        assert isinstance(outcome, Refreshed)
        rotated = Credentials(
            access_token=outcome.access_token, refresh_token=outcome.refresh_token
        )
        revoked = family_endpoint.revoke(rotated)

        assert (True, 1) == (revoked, server.token_calls)
        assert isinstance(family_endpoint.refresh(rotated), PermanentFailure)

    def test_async_refresh_and_revoke_on_an_injected_async_client(self, http, endpoint, server):
        """refresh_async()/revoke_async() with client= of the family."""
        creds = server.issue()

        async def scenario():
            async with http.AsyncClient(timeout=5) as client:
                outcome = await endpoint.refresh_async(creds, client=client)
                revoked = await endpoint.revoke_async(creds, client=client)
                return outcome, revoked

        outcome, revoked = run(scenario())

        assert (True, True, 1) == (isinstance(outcome, Refreshed), revoked, server.token_calls)

    def test_body_cap(self, http, server):
        """A body over max_response_bytes is not adopted, sync and async."""
        server.script(
            ScriptedResponse(200, body=b"x" * 5000), ScriptedResponse(200, body=b"x" * 5000)
        )
        capped = TransientFailure(reason="response_too_large", status=200)
        creds = server.issue()
        with (
            http.Client() as client,
            OAuthTokenEndpoint(
                server.token_url, "c", client=client, max_response_bytes=1024
            ) as endpoint,
        ):
            assert capped == endpoint.refresh(creds)

            async def scenario():
                async with http.AsyncClient() as aclient:
                    return await endpoint.refresh_async(creds, client=aclient)

            assert capped == run(scenario())

    def test_classification_is_secret_free(self, family_endpoint, server):
        """An error description quoting the refresh token comes back with it redacted."""
        creds = server.issue()
        assert creds.refresh_token is not None
        server.script(
            ScriptedResponse(
                400,
                json={
                    "error": "invalid_grant",
                    "error_description": f"token {creds.refresh_token} was reused",
                },
            )
        )

        outcome = family_endpoint.refresh(creds)

        assert isinstance(outcome, PermanentFailure)
        assert "invalid_grant" == outcome.code
        assert creds.refresh_token not in repr(outcome)
        assert "was reused" in (outcome.description or "")

    def test_network_failure_is_classified(self, http):
        """A refused connection is network:ConnectError on either family, never an exception."""
        url = free_port_url()
        creds = Credentials(access_token="at", refresh_token="rt")
        refused = TransientFailure(reason="network:ConnectError")
        with (
            http.Client() as client,
            OAuthTokenEndpoint(url, "c", revoke_url=url, client=client) as endpoint,
        ):
            assert (refused, False) == (endpoint.refresh(creds), endpoint.revoke(creds))

            async def scenario():
                async with http.AsyncClient() as aclient:
                    return (
                        await endpoint.refresh_async(creds, client=aclient),
                        await endpoint.revoke_async(creds, client=aclient),
                    )

            assert (refused, False) == run(scenario())


class TestDeadline:
    """The whole-exchange deadline holds on either family: dripping headers cannot hold a call."""

    @pytest.fixture(name="dripping")
    def _dripping(self, monkeypatch) -> Iterator[DripServer]:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        with DripServer() as server:
            yield server

    def test_sync_watchdog_lets_go_and_shuts_the_socket(self, http, dripping):
        """On the family's Client: the deadline failure on time, and its socket shut down."""
        dripping.script.put("drip")
        creds = Credentials(access_token="at-old", refresh_token="rt-old")
        with http.Client() as client, endpoint_for(dripping, client=client) as endpoint:
            started = time.monotonic()
            outcome = endpoint.refresh(creds)
            returned = time.monotonic()
            for _ in range(40):
                if dripping.hung_up_at:
                    break
                time.sleep(0.05)

        assert (TransientFailure(reason="network:ReadTimeout"), True) == (
            outcome,
            returned - started < LATEST,
        )
        # The trace hook saw the family's socket: the watchdog shut it, not the drip's end.
        assert dripping.hung_up_at
        assert dripping.hung_up_at[0] - returned < 2 * DRIP_PAUSE + 0.2

    def test_async_timeout_lets_go(self, http, dripping):
        """On the family's AsyncClient: the deadline failure on time."""
        dripping.script.put("drip")
        creds = Credentials(access_token="at-old", refresh_token="rt-old")
        endpoint = endpoint_for(dripping)

        async def scenario():
            async with http.AsyncClient() as client:
                return await endpoint.refresh_async(creds, client=client)

        started = time.monotonic()
        outcome = run(scenario())
        took = time.monotonic() - started
        endpoint.close()

        assert (TransientFailure(reason="network:ReadTimeout"), True) == (outcome, took < LATEST)


def test_async_engine_refreshes_through_the_endpoints_async_client(http, server, clock, tmp_path):
    """OAuthTokenEndpoint(async_client=...) is what an AsyncAuthEngine refreshes with."""
    sent: list[str] = []

    async def count(request: Any) -> None:
        sent.append(str(request.url))

    async def scenario() -> tuple[str, str]:
        async with http.AsyncClient(event_hooks={"request": [count]}) as client:
            endpoint = OAuthTokenEndpoint(server.token_url, "test-client", async_client=client)
            engine = await AsyncAuthEngine.open(
                FileStore(tmp_path / "auth.json"), endpoint, clock=clock
            )
            creds = server.issue()
            await engine.login(creds)
            clock.advance(3600)
            return creds.access_token, await engine.access_token()

    old, new = run(scenario())

    assert old != new
    assert [server.token_url] == sent
    assert 1 == server.token_calls


def test_async_client_of_another_kind_is_refused():
    with pytest.raises(TypeError, match="async_client"):
        OAuthTokenEndpoint("http://127.0.0.1:9/token", "c", async_client=object())  # type: ignore[arg-type]
