"""Browser login: code + PKCE over a real loopback redirect, against a real local provider."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from structlog.testing import capture_logs

from authfsm import AuthError
from authfsm.login import (
    DiscoveryError,
    IdTokenInvalid,
    IssuerMismatch,
    LoginCancelled,
    LoginDenied,
    LoginResult,
    LoginTimeout,
    PortUnavailable,
    ProviderError,
    StateMismatch,
    TokenRequestFailed,
    VerifiedIdentity,
    browser_login,
    browser_login_async,
    clear_discovery_cache,
    discover,
)
from authfsm.login._browser import judge_callback
from authfsm.login._loopback import CallbackRequest, bind_loopback, parse_request_head

from .test_login_idp import CLIENT_ID, WAIT, Browser, FakeIdP, replace_param, s256

URL = re.compile(r"http://127\.0\.0\.1:\d+/authorize\?\S+")


@pytest.fixture(name="idp")
def _idp() -> Iterator[FakeIdP]:
    clear_discovery_cache()
    with FakeIdP() as idp:
        yield idp


def login(idp: FakeIdP, opener: Any = None, **kwargs: Any) -> LoginResult:
    kwargs.setdefault("stream", io.StringIO())
    kwargs.setdefault("timeout", WAIT)
    return browser_login(discover(idp.issuer), client_id=CLIENT_ID, opener=opener, **kwargs)


def redirect_port(idp: FakeIdP) -> int:
    port = urlsplit(idp.authorize_requests[-1]["redirect_uri"]).port
    assert port is not None
    return port


def printed_port(stream: io.StringIO) -> int:
    match = URL.search(stream.getvalue())
    assert match is not None, stream.getvalue()
    redirect = parse_qs(urlsplit(match.group()).query)["redirect_uri"][0]
    port = urlsplit(redirect).port
    assert port is not None
    return port


def wait_for_url(stream: io.StringIO) -> int:
    deadline = time.monotonic() + WAIT
    while not URL.search(stream.getvalue()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return printed_port(stream)


def assert_port_free(port: int) -> None:
    """Nothing listens on the port any more: connecting is refused and it can be bound again."""
    with socket.socket() as probe:
        assert 0 != probe.connect_ex(("127.0.0.1", port))
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


def busy_port(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen()
    return sock


class TestSuccess:
    """A whole login: the requests sent, the credentials and identity returned, the page shown."""

    def test_login(self, idp: FakeIdP) -> None:
        browser = Browser()
        before = datetime.now(UTC)
        result = login(idp, browser)
        answer = browser.join()

        authorize = idp.authorize_requests[0]
        port = redirect_port(idp)
        assert f"http://127.0.0.1:{port}/callback" == authorize["redirect_uri"]
        assert ("code", CLIENT_ID, "S256", "openid offline_access") == (
            authorize["response_type"],
            authorize["client_id"],
            authorize["code_challenge_method"],
            authorize["scope"],
        )
        assert len(authorize["state"]) >= 43
        assert len(authorize["nonce"]) >= 43
        token_request = idp.token_requests[0]
        assert {"grant_type", "code", "redirect_uri", "code_verifier", "client_id"} == set(
            token_request
        )
        assert authorize["code_challenge"] == s256(token_request["code_verifier"])
        assert authorize["redirect_uri"] == token_request["redirect_uri"]

        credentials = result.credentials
        assert "at-S3CRET-1-abcdefghijkl" == credentials.access_token
        assert "rt-S3CRET-1-abcdefghijkl" == credentials.refresh_token
        assert credentials.id_token is not None
        assert credentials.last_refresh is not None
        assert credentials.expires_at is not None
        assert before <= credentials.last_refresh <= datetime.now(UTC)
        assert timedelta(seconds=3600) == credentials.expires_at - credentials.last_refresh
        assert VerifiedIdentity(issuer=idp.issuer, subject="alice", verified=True) == (
            result.identity
        )
        assert result.identity is not None
        assert "alice@example.com" == result.identity.claims["email"]

        assert 200 == answer.status_code
        assert "close" == answer.headers["connection"]
        assert "no-referrer" == answer.headers["referrer-policy"]
        assert "You are logged in" in answer.text
        assert_port_free(port)

    def test_the_url_is_printed_only_when_no_browser_opened(self, idp: FakeIdP) -> None:
        opened, not_opened = io.StringIO(), io.StringIO()
        login(idp, Browser(opened=True), stream=opened)
        login(idp, Browser(opened=False), stream=not_opened)
        assert URL.search(opened.getvalue()) is None
        assert "state=" not in opened.getvalue()
        match = URL.search(not_opened.getvalue())
        assert match is not None
        assert idp.authorize_requests[1]["state"] in match.group()

    def test_open_browser_false_never_calls_the_opener(self, idp: FakeIdP) -> None:
        stream = io.StringIO()
        visitor = Browser()

        def opener(url: str) -> bool:
            raise AssertionError("must not be called")

        def visit() -> None:
            wait_for_url(stream)
            match = URL.search(stream.getvalue())
            assert match is not None
            visitor.visit(match.group())

        thread = threading.Thread(target=visit, daemon=True)
        thread.start()
        result = login(idp, opener, open_browser=False, stream=stream)
        thread.join(timeout=WAIT)
        assert 200 == visitor.join().status_code
        assert result.identity is not None

    def test_a_failing_opener_counts_as_no_browser(self, idp: FakeIdP) -> None:
        stream = io.StringIO()
        visitor = Browser()

        def opener(url: str) -> bool:
            visitor.visit(url)  # the user copies the printed URL
            raise RuntimeError("no browser here")

        login(idp, opener, stream=stream)
        assert URL.search(stream.getvalue()) is not None
        assert 200 == visitor.join().status_code

    def test_stray_requests_are_answered_and_ignored(self, idp: FakeIdP) -> None:
        strays: list[httpx.Response] = []

        def before(location: str) -> None:
            base = location.split("/callback")[0]
            strays.append(httpx.get(f"{base}/favicon.ico", timeout=WAIT))
            strays.append(httpx.get(f"{base}/callback", timeout=WAIT))
            strays.append(httpx.post(f"{base}/callback?code=x&state=y", timeout=WAIT))

        browser = Browser(before=before)
        result = login(idp, browser)
        assert [404, 400, 405] == [r.status_code for r in strays]
        assert 200 == browser.join().status_code
        assert result.identity is not None
        assert 1 == idp.token_calls

    def test_confidential_client_uses_basic_auth(self, idp: FakeIdP) -> None:
        browser = Browser()
        login(idp, browser, client_secret="client-S3CRET")
        browser.join()
        expected = base64.b64encode(f"{CLIENT_ID}:client-S3CRET".encode()).decode()
        assert [f"Basic {expected}"] == idp.token_auth
        assert "client_secret" not in idp.token_requests[0]

    def test_a_fixed_port_list_skips_a_busy_port(self, idp: FakeIdP) -> None:
        with busy_port() as busy:
            free = bind_loopback()
            free_port = free.getsockname()[1]
            free.close()
            browser = Browser()
            login(idp, browser, ports=(busy.getsockname()[1], free_port))
            browser.join()
        assert f"http://127.0.0.1:{free_port}/callback" == idp.authorize_requests[0]["redirect_uri"]

    def test_iss_may_be_absent_when_not_promised(self, idp: FakeIdP) -> None:
        idp.metadata["authorization_response_iss_parameter_supported"] = False
        idp.redirect_iss = None
        browser = Browser()
        assert login(idp, browser).identity is not None
        assert 200 == browser.join().status_code

    def test_decode_only_identity(self, idp: FakeIdP) -> None:
        idp.metadata["jwks_uri"] = None
        browser = Browser()
        result = login(idp, browser, identity_check="decode")
        browser.join()
        assert VerifiedIdentity(issuer=idp.issuer, subject="alice", verified=False) == (
            result.identity
        )
        assert 0 == idp.jwks_fetches


def failed_login(idp: FakeIdP, browser: Browser, error: type[AuthError], **kwargs: Any) -> Any:
    with pytest.raises(error) as caught:
        login(idp, browser, **kwargs)
    if idp.authorize_requests:  # whatever failed, the receiver's port is free again
        assert_port_free(redirect_port(idp))
    return caught.value


class TestRefusedRedirects:
    """Redirects that must never lead to a code exchange; the browser is told, the port freed."""

    @pytest.mark.parametrize("state", ["forged", "", None])
    def test_state_mismatch(self, idp: FakeIdP, state: str | None) -> None:
        browser = Browser(tamper=lambda location: replace_param(location, "state", state))
        error = failed_login(idp, browser, StateMismatch)
        answer = browser.join()
        assert "state_mismatch" == error.reason
        assert 0 == idp.token_calls
        assert 400 == answer.status_code
        assert "state does not match" in answer.text
        assert_port_free(redirect_port(idp))

    def test_repeated_state_is_a_mismatch(self, idp: FakeIdP) -> None:
        browser = Browser(tamper=lambda location: location + "&state=again")
        failed_login(idp, browser, StateMismatch)
        assert 0 == idp.token_calls

    def test_iss_mismatch(self, idp: FakeIdP) -> None:
        idp.redirect_iss = "https://evil.example"
        browser = Browser()
        error = failed_login(idp, browser, IssuerMismatch)
        assert "issuer_mismatch" == error.reason
        assert 0 == idp.token_calls
        assert 400 == browser.join().status_code
        assert_port_free(redirect_port(idp))

    def test_iss_missing_when_promised(self, idp: FakeIdP) -> None:
        idp.redirect_iss = None
        browser = Browser()
        error = failed_login(idp, browser, IssuerMismatch)
        assert "issuer_missing" == error.reason
        assert 0 == idp.token_calls

    def test_access_denied_is_shown_escaped_and_raised_typed(self, idp: FakeIdP) -> None:
        idp.authorize_error = ("access_denied", "<script>alert(1)</script> user said no")
        browser = Browser()
        error = failed_login(idp, browser, LoginDenied)
        answer = browser.join()
        assert ("login_denied", "access_denied") == (error.reason, error.error)
        assert isinstance(error, PermissionError)
        assert isinstance(error, ProviderError)
        assert "<script>" not in answer.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt; user said no" in answer.text
        assert 0 == idp.token_calls
        assert_port_free(redirect_port(idp))

    def test_other_provider_errors(self, idp: FakeIdP) -> None:
        idp.authorize_error = ("invalid_scope", None)
        error = failed_login(idp, Browser(), ProviderError)
        assert not isinstance(error, LoginDenied)
        assert ("invalid_scope", "invalid_scope") == (error.reason, error.error)

    def test_cancel_path(self, idp: FakeIdP) -> None:
        stream = io.StringIO()
        answers: list[httpx.Response] = []

        def cancel() -> None:
            port = wait_for_url(stream)
            answers.append(httpx.get(f"http://127.0.0.1:{port}/cancel", timeout=WAIT))

        thread = threading.Thread(target=cancel, daemon=True)
        thread.start()
        with pytest.raises(LoginCancelled):
            login(idp, open_browser=False, stream=stream)
        thread.join(timeout=WAIT)
        assert "Login cancelled" in answers[0].text
        assert_port_free(printed_port(stream))


class TestFailures:
    """Deadlines, ports, Ctrl-C, and failures after the redirect: typed, and the port freed."""

    def test_deadline(self, idp: FakeIdP) -> None:
        stream = io.StringIO()
        started = time.monotonic()
        with pytest.raises(LoginTimeout) as caught:
            login(idp, open_browser=False, stream=stream, timeout=0.3)
        assert time.monotonic() - started < 3
        assert isinstance(caught.value, TimeoutError)
        assert_port_free(printed_port(stream))

    def test_all_fixed_ports_busy(self, idp: FakeIdP) -> None:
        opened: list[str] = []
        with busy_port() as first, busy_port("0.0.0.0") as second:  # noqa: S104 - a squatter
            ports = (first.getsockname()[1], second.getsockname()[1])
            with pytest.raises(PortUnavailable) as caught:
                login(idp, opened.append, ports=ports)
        assert ((ports[0], "EADDRINUSE"), (ports[1], "EADDRINUSE")) == caught.value.failures
        assert isinstance(caught.value, OSError)
        assert f"{ports[0]} (EADDRINUSE), {ports[1]} (EADDRINUSE)" in str(caught.value)
        assert [] == opened

    def test_only_loopback_is_bound(self) -> None:
        sock = bind_loopback()
        with sock:
            assert "127.0.0.1" == sock.getsockname()[0]

    def test_ctrl_c_frees_the_port(self, idp: FakeIdP) -> None:
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        stream = io.StringIO()
        main = threading.main_thread().ident
        assert main is not None
        assert threading.get_ident() == main

        def interrupt() -> None:
            wait_for_url(stream)
            signal.pthread_kill(main, signal.SIGINT)

        thread = threading.Thread(target=interrupt, daemon=True)
        thread.start()
        with pytest.raises(KeyboardInterrupt):
            login(idp, open_browser=False, stream=stream)
        thread.join(timeout=WAIT)
        assert_port_free(printed_port(stream))

    def test_code_refused_at_the_token_endpoint(self, idp: FakeIdP) -> None:
        idp.token_script.append((400, {"error": "invalid_grant", "error_description": "used"}))
        browser = Browser()
        error = failed_login(idp, browser, ProviderError)
        answer = browser.join()
        assert ("invalid_grant", "used") == (error.reason, error.description)
        assert 400 == answer.status_code
        assert "invalid_grant" in answer.text
        assert_port_free(redirect_port(idp))

    def test_token_endpoint_down(self, idp: FakeIdP) -> None:
        idp.token_script.append((503, {}))
        error = failed_login(idp, Browser(), TokenRequestFailed)
        assert "http_503" == error.reason
        assert isinstance(error, ConnectionError)

    @pytest.mark.parametrize(
        ("claims", "reason"),
        [
            ({"nonce": "another-nonce"}, "nonce"),
            ({"nonce": None}, "nonce"),
            ({"aud": "someone-else"}, "audience"),
            ({"iss": "https://evil.example"}, "issuer"),
        ],
    )
    def test_a_tampered_id_token_returns_nothing(
        self, idp: FakeIdP, claims: dict[str, Any], reason: str
    ) -> None:
        idp.id_token_claims = claims
        browser = Browser()
        error = failed_login(idp, browser, IdTokenInvalid)
        assert reason == error.reason
        assert 400 == browser.join().status_code
        assert_port_free(redirect_port(idp))

    def test_no_keys_to_verify_with(self, idp: FakeIdP) -> None:
        idp.metadata["jwks_uri"] = None
        assert "no_jwks" == failed_login(idp, Browser(), IdTokenInvalid).reason

    def test_pkce_s256_must_be_listed(self, idp: FakeIdP) -> None:
        idp.metadata["code_challenge_methods_supported"] = ["plain"]
        opened: list[str] = []
        with pytest.raises(DiscoveryError) as caught:
            login(idp, opened.append)
        assert "pkce_s256_unsupported" == caught.value.reason
        assert [] == opened

    def test_no_secret_in_errors_or_logs(self, idp: FakeIdP) -> None:
        """Codes, state, nonce, verifier and tokens never reach an error or a log event."""
        errors: list[str] = []
        scenarios: list[tuple[dict[str, Any], Browser]] = [
            ({"id_token_claims": {"nonce": "x"}}, Browser()),
            ({"token_script": [(400, {"error": "invalid_grant"})]}, Browser()),
            ({}, Browser(tamper=lambda loc: replace_param(loc, "state", "forged"))),
            ({"redirect_iss": "https://evil.example"}, Browser()),
            ({}, Browser()),
        ]
        with capture_logs() as events:
            for knobs, browser in scenarios:
                idp.id_token_claims = {}
                idp.redirect_iss = idp.issuer
                for name, value in knobs.items():
                    if name == "token_script":
                        idp.token_script.extend(value)
                    else:
                        setattr(idp, name, value)
                try:
                    result = login(idp, browser)
                    errors.append(repr(result))
                except AuthError as error:
                    errors += [str(error), repr(error), repr(error.args), error.reason]
                browser.join()
        assert {"authfsm.login.failed", "authfsm.login.succeeded"} <= {e["event"] for e in events}
        text = "\n".join(errors) + "\n" + repr(events)
        assert len(idp.secrets) > 10
        for secret in idp.secrets:
            assert secret not in text


class TestJudgement:
    """judge_callback, the pure decision for each request at the receiver."""

    def judge(self, target: str, method: str = "GET") -> Any:
        request = parse_request_head(f"{method} {target} HTTP/1.1".encode())
        assert isinstance(request, CallbackRequest)
        return judge_callback(
            request,
            redirect_path="/callback",
            state="s" * 43,
            issuer="https://i",
            iss_required=False,
        )

    def test_a_code_with_the_right_state(self) -> None:
        verdict = self.judge(f"/callback?code=abc&state={'s' * 43}&iss=https%3A%2F%2Fi")
        assert ("abc", None) == (verdict.code, verdict.error)
        assert "abc" not in repr(verdict)

    def test_repeated_code_is_refused(self) -> None:
        verdict = self.judge(f"/callback?code=a&code=b&state={'s' * 43}")
        assert verdict.code is None
        assert "invalid_callback" == verdict.error.reason

    def test_malformed_heads(self) -> None:
        assert parse_request_head(b"GET") is None
        assert parse_request_head(b"GET http://x/ HTTP/1.1") is None
        assert parse_request_head(b"GET / SPDY/3") is None


class TestAsync:
    """browser_login_async: same decisions, never blocks the loop, cancellation frees the port."""

    def test_login_without_blocking_the_loop(self, idp: FakeIdP) -> None:
        metadata = discover(idp.issuer)
        browser = Browser()

        async def main() -> tuple[LoginResult, int]:
            ticks = 0
            done = asyncio.Event()

            async def tick() -> None:
                nonlocal ticks
                while not done.is_set():
                    ticks += 1
                    await asyncio.sleep(0.01)

            ticker = asyncio.create_task(tick())
            result = await browser_login_async(
                metadata, client_id=CLIENT_ID, opener=browser, stream=io.StringIO(), timeout=WAIT
            )
            done.set()
            await ticker
            return result, ticks

        result, ticks = asyncio.run(main())
        assert 200 == browser.join().status_code
        assert result.identity is not None
        assert result.identity.verified
        assert ticks >= 1
        assert_port_free(redirect_port(idp))

    def test_state_mismatch(self, idp: FakeIdP) -> None:
        metadata = discover(idp.issuer)
        browser = Browser(tamper=lambda loc: replace_param(loc, "state", "forged"))
        with pytest.raises(StateMismatch):
            asyncio.run(
                browser_login_async(
                    metadata, client_id=CLIENT_ID, opener=browser, stream=io.StringIO()
                )
            )
        assert 400 == browser.join().status_code
        assert 0 == idp.token_calls
        assert_port_free(redirect_port(idp))

    def test_deadline(self, idp: FakeIdP) -> None:
        metadata = discover(idp.issuer)
        stream = io.StringIO()
        with pytest.raises(LoginTimeout):
            asyncio.run(
                browser_login_async(
                    metadata, client_id=CLIENT_ID, open_browser=False, stream=stream, timeout=0.2
                )
            )
        assert_port_free(printed_port(stream))

    def test_cancellation_frees_the_port(self, idp: FakeIdP) -> None:
        metadata = discover(idp.issuer)
        stream = io.StringIO()

        async def main() -> None:
            task = asyncio.create_task(
                browser_login_async(
                    metadata, client_id=CLIENT_ID, open_browser=False, stream=stream
                )
            )
            for _ in range(500):
                if URL.search(stream.getvalue()):
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        assert_port_free(printed_port(stream))

    def test_a_pending_browser_connection_does_not_stop_cancellation(self, idp: FakeIdP) -> None:
        """A half-sent request held open by the browser is dropped when the login ends."""
        metadata = discover(idp.issuer)
        stream = io.StringIO()

        async def main() -> None:
            task = asyncio.create_task(
                browser_login_async(
                    metadata, client_id=CLIENT_ID, open_browser=False, stream=stream
                )
            )
            for _ in range(500):
                if URL.search(stream.getvalue()):
                    break
                await asyncio.sleep(0.01)
            port = printed_port(stream)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /callback?code=x")  # no end of head
            await writer.drain()
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert b"" == await asyncio.wait_for(reader.read(), WAIT)
            writer.close()

        asyncio.run(main())
        assert_port_free(printed_port(stream))
