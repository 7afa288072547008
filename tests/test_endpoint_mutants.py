"""
Behaviours of the token endpoint adapter (``adapters/_endpoint.py``) a mutation run showed the
rest of the suite could lose without noticing (docs/mutation-testing.md).

Like tests/test_endpoint.py, the adapter talks to an ``httpx.MockTransport`` (what was sent, and
on which client) or to a raw loopback server (deadlines, and whether the exchange's connection is
closed when the caller is let go); the asserts are on outcomes, requests and reprs.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from authfsm.adapters import OAuthTokenEndpoint
from authfsm.adapters._endpoint import (
    DeadlineExceeded,
    EndpointSettings,
    Reply,
    Watchdog,
    build_get_request,
    build_refresh_request,
    classify_grant,
    classify_refresh,
    oauth_error,
    parse_retry_after,
)
from authfsm.engine import Credentials, PermanentFailure, Refreshed, TransientFailure

from .test_endpoint import ACCESS, REFRESH, REVOKE_URL, TOKEN_URL, Recorder, answering
from .test_endpoint_deadline import CREDS, DRIP_PAUSE, TIMEOUT, DripServer, endpoint_for, timed
from .test_endpoint_deadline import _dripping as _dripping  # the "dripping" fixture

NOW = datetime(2030, 1, 1, tzinfo=UTC)
OK = {"access_token": "at-new", "refresh_token": "rt-new", "expires_in": 3600}


def on_mock(respond=None, **kwargs) -> tuple[OAuthTokenEndpoint, Recorder]:
    recorder = Recorder(respond or answering(200, OK))
    client = httpx.Client(transport=httpx.MockTransport(recorder))
    return OAuthTokenEndpoint(TOKEN_URL, "my-cli", client=client, **kwargs), recorder


async def _streamed(raw: bytes):
    yield raw


def async_mock(respond=None) -> tuple[httpx.AsyncClient, Recorder]:
    """An AsyncClient on a MockTransport that streams OK (as a server would) to every request."""
    ok = json.dumps(OK).encode()
    recorder = Recorder(respond or (lambda _request: httpx.Response(200, content=_streamed(ok))))
    return httpx.AsyncClient(transport=httpx.MockTransport(recorder)), recorder


def raising(exc: BaseException):
    def respond(_request: httpx.Request) -> httpx.Response:
        raise exc

    return respond


class TestRequestValidation:
    """A grant or form request that would clash with what the adapter writes is refused."""

    def test_an_empty_grant_type_is_refused(self):
        """Catches an empty grant_type passing (the check needing a non-string too)."""
        endpoint, recorder = on_mock()

        with pytest.raises(ValueError, match=r"^grant_type must be a non-empty string$"):
            endpoint.request_token("", {"code": "c"})

        assert [] == recorder.requests

    def test_every_clashing_grant_param_is_named(self):
        """Catches the clashes being listed without their separator."""
        endpoint, _ = on_mock()

        with pytest.raises(ValueError, match=r"^params may not set client_id, grant_type$"):
            endpoint.request_token("authorization_code", {"client_id": "x", "grant_type": "y"})

    @pytest.mark.parametrize(
        ("params", "message"),
        [
            ({"client_id": "x"}, "params may not set client_id"),
            (
                {"client_secret": "x", "client_id": "y"},
                "params may not set client_id, client_secret",
            ),
        ],
    )
    def test_a_form_may_not_set_the_client(self, params, message):
        """Catches post_form() letting params override the client's id or secret."""
        endpoint, recorder = on_mock()

        with pytest.raises(ValueError, match=rf"^{message}$"):
            endpoint.post_form("https://idp.example/device", params)

        assert [] == recorder.requests


class TestGetRequest:
    """A GET of a JSON document asks for JSON, uncompressed, and keeps the caller's headers."""

    @pytest.mark.parametrize("given", [None, {"User-Agent": "my-app/1", "Accept": "text/html"}])
    def test_headers(self, given):
        """Catches the caller's headers being dropped, or the protocol headers changed."""
        request = build_get_request("https://idp.example/jwks", given)

        expected = {"accept": "application/json", "accept-encoding": "identity"}
        if given is not None:
            expected["user-agent"] = "my-app/1"
        assert (expected, "GET", b"") == (request.headers, request.method, request.content)


class TestReprs:
    """Reprs name what is configured, never a secret, a query value or a parameter's value."""

    def test_endpoint_repr(self):
        """Catches the revoke URL shown when there is none, or 'confidential' inverted."""
        public = OAuthTokenEndpoint(TOKEN_URL, "my-cli")
        confidential = OAuthTokenEndpoint(
            TOKEN_URL, "my-cli", client_secret="s3cret", revoke_url=REVOKE_URL + "?k=v"
        )
        with public, confidential:
            assert (
                f"OAuthTokenEndpoint(token_url='{TOKEN_URL}', client_id='my-cli', "
                "client_auth='client_secret_basic', body_format='form', confidential=False)"
            ) == repr(public)
            assert (
                f"OAuthTokenEndpoint(token_url='{TOKEN_URL}', "
                f"revoke_url='{REVOKE_URL}?k=[redacted]', client_id='my-cli', "
                "client_auth='client_secret_basic', body_format='form', confidential=True)"
            ) == repr(confidential)

    def test_settings_and_request_reprs(self):
        """Catches the settings' or a request's repr showing a query value, a missing URL
        wrongly, or extra parameters' and headers' values."""
        settings = EndpointSettings(
            token_url="https://idp.example/token?tenant=t-SECRET",
            client_id="my-cli",
            client_secret="cs-SECRET",
            client_auth="client_secret_post",
            body_format="form",
            scope=None,
            extra_params={"resource": "r-SECRET", "audience": "a-SECRET"},
            revoke_url=None,
            headers={"X-Api-Key": "k-SECRET"},
        )

        assert (
            "EndpointSettings(token_url='https://idp.example/token?tenant=[redacted]', "
            "client_id='my-cli', client_auth='client_secret_post', body_format='form', "
            "scope=None, extra_params=['audience', 'resource'], revoke_url=None, "
            "headers=['X-Api-Key'])"
        ) == repr(settings)
        assert (
            "PreparedRequest(url='https://idp.example/token?tenant=[redacted]', method='POST')"
        ) == repr(build_refresh_request(settings, "rt-SECRET"))


class TestErrorDetails:
    """What an error reply says is passed on only when it is readable text, secrets redacted."""

    @pytest.mark.parametrize("description", ["", 42, None])
    def test_an_empty_or_odd_description_is_none(self, description):
        """Catches an empty (or non-text) error_description becoming a description."""
        body = json.dumps({"error": "invalid_grant", "error_description": description})
        reply = Reply(status=400, body=body.encode())

        outcome = classify_refresh(reply, credentials=CREDS, now=NOW)

        assert PermanentFailure(code="invalid_grant", status=400) == outcome

    def test_oauth_error_redacts_the_description(self):
        """Catches oauth_error() losing the description or not redacting the secrets in it."""
        document = {"error": "access_denied", "error_description": "token tk-SECRET-1 refused"}

        assert ("access_denied", "token [redacted] refused") == oauth_error(
            document, secrets=["tk-SECRET-1"]
        )


class TestRetryAfterEdges:
    """Retry-After values at the edges of what the header grammar allows."""

    def test_a_date_without_zone_is_utc(self):
        """Catches an HTTP-date with a "-0000" zone (parsed naive) not being taken as UTC."""
        assert 90.0 == parse_retry_after("Tue, 01 Jan 2030 00:01:30 -0000", NOW)

    def test_too_many_digits_is_unparseable(self):
        """Catches a delay too long for a float (infinite) being passed on."""
        assert None is parse_retry_after("9" * 400, NOW)


class TestCodeMentioningASecret:
    """An error code that is a long enough piece of a token is not passed on."""

    @pytest.mark.parametrize(
        ("code", "expected"), [("rt-abcde", "unknown"), ("rt-abcd", "rt-abcd")]
    )
    def test_eight_characters_of_a_token_is_a_fragment(self, code, expected):
        """Catches the fragment rule starting at nine characters instead of eight."""
        creds = Credentials(access_token="at-1", refresh_token="rt-abcdefghijkl")
        reply = Reply(status=400, body=json.dumps({"error": code}).encode())

        outcome = classify_refresh(reply, credentials=creds, now=NOW)

        assert TransientFailure(reason=f"http_400:{expected}", status=400) == outcome


class TestReplyEdges:
    """Which replies count as success, and what a reply that cannot be read still says."""

    def test_a_300_is_not_a_success(self):
        """Catches a 300 (a redirect, never followed) with a token body being adopted."""
        reply = Reply(status=300, body=json.dumps(OK).encode())

        assert TransientFailure(reason="http_300", status=300) == classify_refresh(
            reply, credentials=CREDS, now=NOW
        )

    def test_a_2xx_with_a_token_and_an_error_is_adopted(self):
        """Catches a reply that rotated the tokens being refused for an error field beside them."""
        body = {"access_token": "at-new", "refresh_token": "rt-new", "error": "invalid_grant"}
        reply = Reply(status=200, body=json.dumps(body).encode())

        assert Refreshed(access_token="at-new", refresh_token="rt-new") == classify_refresh(
            reply, credentials=CREDS, now=NOW
        )

    def test_a_2xx_error_ignores_retry_after(self):
        """Catches Retry-After being read from a 2xx that carries an error (it is for 503/429)."""
        reply = Reply(status=200, retry_after="5", body=b'{"error": "slow_down"}')

        assert TransientFailure(reason="http_200:slow_down", status=200) == classify_refresh(
            reply, credentials=CREDS, now=NOW
        )

    def test_an_unreadable_reply_keeps_its_retry_after(self):
        """Catches the Retry-After of a reply too large to read being lost."""
        endpoint, _ = on_mock(
            answering(503, b"x" * 100, {"Retry-After": "30", "Content-Length": "100"}),
            max_response_bytes=10,
        )

        assert TransientFailure(reason="response_too_large", status=503, retry_after=30.0) == (
            endpoint.refresh(CREDS)
        )

    def test_a_declared_length_of_exactly_the_cap_is_read(self):
        """Catches a Content-Length equal to the cap being refused before reading."""
        body = json.dumps({"access_token": "at-new"}).encode()
        endpoint, _ = on_mock(
            answering(200, body, {"Content-Length": str(len(body))}),
            max_response_bytes=len(body),
        )

        assert Refreshed(access_token="at-new") == endpoint.refresh(CREDS)

    def test_a_gzip_body_inflating_to_exactly_the_cap_is_read(self):
        """Catches the bounded inflate stopping short of the cap (a valid body refused)."""
        body = json.dumps({"access_token": "at-new"}).encode()
        endpoint, _ = on_mock(
            answering(200, gzip.compress(body), {"Content-Encoding": "gzip"}),
            max_response_bytes=len(body),
        )

        assert Refreshed(access_token="at-new") == endpoint.refresh(CREDS)


class TestSecretFormsRedacted:
    """Every form of a secret a server may echo is redacted, the longest first."""

    def test_a_token_containing_another_is_redacted_whole(self):
        """Catches the secrets being redacted in another order than longest first: the shorter
        one found inside the longer would leave the rest of the longer one in the text."""
        creds = Credentials(access_token="a-zz-refresh-long", refresh_token="zz-refresh")
        body = {"error": "invalid_grant", "error_description": "a-zz-refresh-long is revoked"}
        reply = Reply(status=400, body=json.dumps(body).encode())

        outcome = classify_refresh(reply, credentials=creds, now=NOW)

        assert "[redacted] is revoked" == outcome.description

    def test_a_fully_percent_encoded_secret_is_redacted(self):
        """Catches the form with '/' percent-encoded too (quote(safe="")) not being redacted."""
        secret = "cs/SECRET value"
        body = {"error": "invalid_client", "error_description": "got cs%2FSECRET%20value"}
        reply = Reply(status=401, body=json.dumps(body).encode())

        outcome = classify_refresh(reply, credentials=CREDS, client_secret=secret, now=NOW)

        assert "got [redacted]" == outcome.description


class TestGrantClassification:
    """A grant's error code answered with a 5xx is the server failing, not an answer."""

    def test_a_500_with_a_code_is_transient(self):
        """Catches a 500 carrying an error code being taken for a deliberate answer."""
        reply = Reply(status=500, body=b'{"error": "server_error"}')

        assert TransientFailure(reason="http_500:server_error", status=500) == classify_grant(
            reply, now=NOW
        )

    def test_retry_after_date_is_honoured(self):
        """Catches the grant classification losing the time an HTTP-date Retry-After counts from."""
        reply = Reply(status=503, retry_after=format_datetime(NOW + timedelta(seconds=90), True))

        assert TransientFailure(reason="http_503", status=503, retry_after=90.0) == (
            classify_grant(reply, now=NOW)
        )

    def test_request_token_honours_a_retry_after_date(self):
        """Catches request_token() classifying without the current time (or a naive one)."""
        later = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
        endpoint, _ = on_mock(answering(503, b"", {"Retry-After": later}))

        outcome = endpoint.request_token("authorization_code", {"code": "c"})

        assert (TransientFailure, "http_503") == (type(outcome), outcome.reason)
        assert 3500 < outcome.retry_after <= 3600

    def test_request_token_redacts_the_client_secret(self):
        """Catches request_token() not redacting the client secret a server echoes back."""
        body = {"error": "invalid_client", "error_description": "bad secret cs-SECRET-9"}
        endpoint, _ = on_mock(answering(400, body), client_secret="cs-SECRET-9")

        outcome = endpoint.request_token("authorization_code", {"code": "c"})

        assert (
            PermanentFailure(code="invalid_client", status=400, description="bad secret [redacted]")
            == outcome
        )


class TestAsyncClients:
    """The *_async methods use the client passed, else the endpoint's async_client."""

    def test_refresh_without_refresh_token(self):
        """Catches refresh_async() of a credential without refresh token losing its code."""
        endpoint = OAuthTokenEndpoint(TOKEN_URL, "my-cli")

        outcome = asyncio.run(endpoint.refresh_async(Credentials(access_token=ACCESS)))

        endpoint.close()
        assert PermanentFailure(code="no_refresh_token") == outcome

    def test_the_client_passed_is_used(self):
        """Catches refresh_async(), request_token_async(), post_form_async() and revoke_async()
        ignoring the client they are given."""
        endpoint = OAuthTokenEndpoint(TOKEN_URL, "my-cli", revoke_url=REVOKE_URL)
        creds = Credentials(access_token=ACCESS, refresh_token=REFRESH)

        async def run():
            client, recorder = async_mock()
            async with client:
                outcomes = [
                    await endpoint.refresh_async(creds, client=client),
                    await endpoint.request_token_async(
                        "authorization_code", {"code": "c"}, client=client
                    ),
                    await endpoint.post_form_async(
                        "https://idp.example/device", {"scope": "s"}, client=client
                    ),
                    await endpoint.revoke_async(creds, client=client),
                ]
            return outcomes, recorder

        outcomes, recorder = asyncio.run(run())
        endpoint.close()

        minted = Refreshed(access_token="at-new", refresh_token="rt-new", expires_in=3600)
        assert [minted, minted, True] == [outcomes[0], outcomes[1], outcomes[3]]
        assert (200, "at-new") == (outcomes[2].status, json.loads(outcomes[2].body)["access_token"])
        assert [TOKEN_URL, TOKEN_URL, "https://idp.example/device", REVOKE_URL] == [
            str(r.url) for r in recorder.requests
        ]

    def test_the_endpoints_async_client_is_the_default(self):
        """Catches the *_async methods not falling back on async_client, or preferring it over
        the client passed."""
        default, on_default = async_mock()
        passed, on_passed = async_mock()
        endpoint = OAuthTokenEndpoint(
            TOKEN_URL, "my-cli", revoke_url=REVOKE_URL, async_client=default
        )
        creds = Credentials(access_token=ACCESS, refresh_token=REFRESH)

        async def run():
            async with default, passed:
                return [
                    await endpoint.refresh_async(creds),
                    await endpoint.revoke_async(creds),
                    await endpoint.refresh_async(creds, client=passed),
                    await endpoint.revoke_async(creds, client=passed),
                ]

        outcomes = asyncio.run(run())
        endpoint.close()

        minted = Refreshed(access_token="at-new", refresh_token="rt-new", expires_in=3600)
        assert [minted, True, minted, True] == outcomes
        assert [TOKEN_URL, REVOKE_URL] == [str(r.url) for r in on_default.requests]
        assert [TOKEN_URL, REVOKE_URL] == [str(r.url) for r in on_passed.requests]


class TestRevokeIsBestEffort:
    """A revoke that fails in any way is False, never an exception."""

    def test_an_os_error_is_false(self):
        """Catches revoke() letting an OSError from the transport escape."""
        endpoint, _ = on_mock(raising(ConnectionResetError("reset")), revoke_url=REVOKE_URL)

        assert endpoint.revoke(CREDS) is False

    def test_an_os_error_is_false_async(self):
        """Catches revoke_async() letting an OSError from the transport escape."""
        client, _ = async_mock(raising(ConnectionResetError("reset")))
        endpoint = OAuthTokenEndpoint(TOKEN_URL, "my-cli", revoke_url=REVOKE_URL)

        async def run():
            async with client:
                return await endpoint.revoke_async(CREDS, client=client)

        assert asyncio.run(run()) is False
        endpoint.close()


class _StallServer(DripServer):
    """A DripServer whose ``"drip"`` answers nothing at all; it notes when the client hangs up."""

    def _drip(self, conn: socket.socket, reply: bytes) -> None:
        while not self.stop.wait(0.02):
            if self._closed_by_peer(conn):
                break
        self.hung_up_at.append(time.monotonic())


@pytest.fixture(name="stalling")
def _stalling(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with _StallServer() as server:
        yield server


def hung_up_within(server: DripServer, returned: float, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05) + 1):
        if server.hung_up_at:
            return server.hung_up_at[0] - returned < seconds
        time.sleep(0.05)
    return False


class TestNoLingeringExchange:
    """When the caller is let go at the deadline, the exchange's connection is closed too."""

    def test_a_revoke_past_the_deadline_shuts_its_connection(self, dripping):
        """Catches revoke() not handing the watchdog its trace hook: the worker would linger."""
        dripping.script.put("drip")
        with endpoint_for(dripping) as endpoint:
            answer, took = timed(lambda: endpoint.revoke(CREDS))
            returned = time.monotonic()

            assert (False, True) == (answer, took < TIMEOUT + 0.5)
            assert hung_up_within(dripping, returned, 2 * DRIP_PAUSE + 0.2)

    @pytest.mark.parametrize("call", ["refresh", "revoke"])
    def test_a_stalled_pooled_connection_ends_at_the_read_timeout(self, stalling, call):
        """Catches the per-read timeout being dropped: on a connection reused from the caller's
        pool (which the watchdog cannot see) the worker would wait for the server forever."""
        stalling.script.put("ok")
        stalling.script.put("drip")
        with httpx.Client() as client, endpoint_for(stalling, client=client) as endpoint:
            assert isinstance(endpoint.refresh(CREDS), Refreshed)
            outcome, took = timed(lambda: getattr(endpoint, call)(CREDS))
            returned = time.monotonic()

            expected = (
                TransientFailure(reason="network:ReadTimeout") if call == "refresh" else False
            )
            assert (expected, True) == (outcome, took < TIMEOUT + 0.5)
            assert hung_up_within(stalling, returned, TIMEOUT)
        assert 2 == stalling.requests


class _Stream:
    """What httpcore's trace hook hands over: a network stream that knows its socket."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None


class TestWatchdog:
    """A connection that completes after the deadline is shut at once; odd trace events pass."""

    def expired(self) -> Watchdog:
        watchdog = Watchdog(0.01)
        with pytest.raises(DeadlineExceeded):
            watchdog.run(lambda _trace: time.sleep(0.2))
        return watchdog

    @pytest.mark.parametrize(
        "event", ["connection.connect_tcp.complete", "connection.start_tls.complete"]
    )
    def test_a_late_connection_is_shut_down(self, event):
        """Catches a late TCP or TLS connection being left open (the expiry forgotten, or the
        TLS event not watched)."""
        watchdog = self.expired()
        ours, theirs = socket.socketpair()
        with ours, theirs:
            theirs.settimeout(1.0)

            watchdog.trace(event, {"return_value": _Stream(ours)})

            assert b"" == theirs.recv(1)

    def test_the_worker_is_a_named_daemon(self):
        """Catches the exchange's worker thread losing its name, or keeping the process alive."""

        def whoami(_trace):
            me = threading.current_thread()
            return me.name, me.daemon

        assert ("authfsm-token-endpoint", True) == Watchdog(5.0).run(whoami)

    def test_a_connection_before_the_deadline_is_left_alone(self):
        """The other side of the above: a live exchange's socket is not shut."""
        watchdog = Watchdog(5.0)
        ours, theirs = socket.socketpair()
        with ours, theirs:
            watchdog.trace("connection.connect_tcp.complete", {"return_value": _Stream(ours)})
            ours.sendall(b"x")
            assert b"x" == theirs.recv(1)

    @pytest.mark.parametrize(
        "value",
        [None, object(), _Stream(None)],
        ids=["no-stream", "no-extra-info", "no-socket"],
    )
    def test_events_without_a_socket_are_ignored(self, value):
        """Catches a trace event whose stream has no socket (or no get_extra_info) raising."""
        watchdog = self.expired()

        watchdog.trace("connection.connect_tcp.complete", {"return_value": value})

    def test_a_socket_that_cannot_be_shut_is_ignored(self):
        """Catches the OSError of shutting an unconnected (or detached) socket escaping."""
        watchdog = self.expired()
        with socket.socket() as unconnected:
            watchdog.trace(
                "connection.connect_tcp.complete", {"return_value": _Stream(unconnected)}
            )
