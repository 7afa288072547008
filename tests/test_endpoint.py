"""Tests for the httpx token endpoint: request shape, classification, and a real loopback server."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import attrs
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from authfsm.adapters._endpoint import (
    CappedBody,
    OAuthTokenEndpoint,
    Reply,
    classify_refresh,
    parse_retry_after,
)
from authfsm.adapters._redact import redact_url
from authfsm.engine._credentials import Credentials
from authfsm.engine._ports import (
    MAX_EXPIRES_IN,
    PermanentFailure,
    Refreshed,
    TokenEndpoint,
    TransientFailure,
)
from authfsm.testing import TokenServer

TOKEN_URL = "https://idp.example/oauth/token"
REVOKE_URL = "https://idp.example/oauth/revoke"
ACCESS = "at-SECRET-access-0123456789"
REFRESH = "rt-SECRET-refresh-0123456789"
ID_TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1c2VyIn0.sig-SECRET"
CLIENT_SECRET = "cs-SECRET client/secret:42"
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
OK_BODY = {"access_token": "at-new", "refresh_token": "rt-new", "expires_in": 3600}


@pytest.fixture(name="creds")
def _creds() -> Credentials:
    return Credentials(access_token=ACCESS, refresh_token=REFRESH, id_token=ID_TOKEN)


@attrs.define
class Recorder:
    """A MockTransport handler that answers with a fixed response and remembers the requests."""

    respond: Callable[[httpx.Request], httpx.Response]
    requests: list[httpx.Request] = attrs.Factory(list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.respond(request)


def answering(status: int = 200, body: Any = OK_BODY, headers: dict[str, str] | None = None):
    """A responder with a JSON body (or raw bytes), streamed so the adapter must read it."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return lambda _request: httpx.Response(status, headers=headers, content=iter([raw]))


def mocked(respond=None, **kwargs) -> tuple[OAuthTokenEndpoint, Recorder]:
    recorder = Recorder(respond or answering())
    client = httpx.Client(transport=httpx.MockTransport(recorder))
    return OAuthTokenEndpoint(TOKEN_URL, "my-cli", client=client, **kwargs), recorder


def refresh_with(creds, status: int = 200, body: Any = OK_BODY, headers=None, **kwargs):
    endpoint, _ = mocked(answering(status, body, headers), **kwargs)
    return endpoint.refresh(creds)


def form(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.content.decode(), keep_blank_values=True, strict_parsing=True)


class TestRefreshRequest:
    """The refresh request follows RFC 6749 §6 in form or JSON, with the chosen client auth."""

    def test_public_client_form(self, creds):
        """Without a secret the body is a form with grant, refresh token and client id only."""
        endpoint, rec = mocked()

        endpoint.refresh(creds)

        (request,) = rec.requests
        assert request.method == "POST"
        assert str(request.url) == TOKEN_URL
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        assert request.headers["accept"] == "application/json"
        assert "authorization" not in request.headers
        assert form(request) == {
            "grant_type": ["refresh_token"],
            "refresh_token": [REFRESH],
            "client_id": ["my-cli"],
        }

    def test_json_body(self, creds):
        """body_format="json" sends the same fields as a JSON object."""
        endpoint, rec = mocked(body_format="json")

        endpoint.refresh(creds)

        (request,) = rec.requests
        assert request.headers["content-type"] == "application/json"
        assert json.loads(request.content) == {
            "grant_type": "refresh_token",
            "refresh_token": REFRESH,
            "client_id": "my-cli",
        }

    def test_client_secret_basic(self, creds):
        """Basic auth form-urlencodes id and secret before base64; no secret in the body."""
        endpoint, rec = mocked(client_secret=CLIENT_SECRET)

        endpoint.refresh(creds)

        (request,) = rec.requests
        scheme, _, encoded = request.headers["authorization"].partition(" ")
        assert scheme == "Basic"
        assert base64.b64decode(encoded).decode() == "my-cli:cs-SECRET+client%2Fsecret%3A42"
        assert {"grant_type", "refresh_token", "client_id"} == set(form(request))
        assert b"SECRET+client" not in request.content

    def test_client_secret_post(self, creds):
        """client_secret_post puts id and secret in the body and sends no Authorization."""
        endpoint, rec = mocked(client_secret=CLIENT_SECRET, client_auth="client_secret_post")

        endpoint.refresh(creds)

        (request,) = rec.requests
        assert "authorization" not in request.headers
        assert form(request)["client_id"] == ["my-cli"]
        assert form(request)["client_secret"] == [CLIENT_SECRET]

    def test_scope_extra_params_and_headers(self, creds):
        """Scope, extra parameters and extra headers are sent; protocol headers win."""
        endpoint, rec = mocked(
            scope="openid offline_access",
            extra_params={"audience": "api"},
            headers={"User-Agent": "tool/1", "content-type": "text/plain"},
            body_format="json",
        )

        endpoint.refresh(creds)

        (request,) = rec.requests
        body = json.loads(request.content)
        assert body["scope"] == "openid offline_access"
        assert body["audience"] == "api"
        assert request.headers["user-agent"] == "tool/1"
        assert request.headers.get_list("content-type") == ["application/json"]

    def test_no_refresh_token_makes_no_call(self):
        """A credential without a refresh token fails permanently without a request."""
        endpoint, rec = mocked()

        outcome = endpoint.refresh(Credentials(access_token=ACCESS))

        assert PermanentFailure(code="no_refresh_token") == outcome
        assert rec.requests == []

    def test_redirects_not_followed(self, creds):
        """A redirect is not followed: the refresh token is sent once, to the configured URL."""
        endpoint, rec = mocked(answering(302, b"", {"Location": "https://evil.example/"}))

        outcome = endpoint.refresh(creds)

        assert TransientFailure(reason="http_302", status=302) == outcome
        assert len(rec.requests) == 1

    def test_reserved_extra_params_rejected(self):
        """extra_params may not override the parameters the adapter writes."""
        with pytest.raises(ValueError, match="refresh_token"):
            OAuthTokenEndpoint(TOKEN_URL, "c", extra_params={"refresh_token": "x"})

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"token_url": "ftp://idp.example/token"},
            {"client_id": ""},
            {"client_secret": ""},
            {"timeout": 0},
            {"timeout": float("inf")},
            {"max_response_bytes": 0},
            {"client_auth": "private_key_jwt"},
            {"body_format": "xml"},
        ],
    )
    def test_bad_configuration_rejected(self, kwargs):
        """Impossible settings fail at construction, not at the first refresh."""
        arguments = {"token_url": TOKEN_URL, "client_id": "c", **kwargs}
        with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
            OAuthTokenEndpoint(**arguments)


class TestClassifySuccess:
    """A 2xx is adopted only when it is a JSON object with well-typed tokens."""

    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            (
                {"access_token": "a", "refresh_token": "r", "id_token": "i", "expires_in": 60},
                Refreshed(access_token="a", refresh_token="r", id_token="i", expires_in=60.0),
            ),
            ({"access_token": "a"}, Refreshed(access_token="a")),
            (
                {"access_token": "a", "expires_in": "3600"},
                Refreshed(access_token="a", expires_in=3600.0),
            ),
            ({"access_token": "a", "expires_in": 1.5}, Refreshed(access_token="a", expires_in=1.5)),
            ({"access_token": "a", "refresh_token": None}, Refreshed(access_token="a")),
            ({"access_token": "a", "token_type": "Bearer", "x": [1]}, Refreshed(access_token="a")),
            (
                {"access_token": "a", "expires_in": MAX_EXPIRES_IN},
                Refreshed(access_token="a", expires_in=MAX_EXPIRES_IN),
            ),
        ],
    )
    def test_adopted(self, creds, body, expected):
        """Well-formed bodies become Refreshed, with missing fields left None."""
        assert expected == refresh_with(creds, 200, body)

    @pytest.mark.parametrize(
        ("body", "what"),
        [
            (b"", "not_json"),
            (b"<html>hello</html>", "not_json"),
            (b"\xff\xfe\x00garbage", "not_json"),
            (b"[" * 5000 + b"]" * 5000, "not_json"),
            ([{"access_token": "a"}], "not_object"),
            ("a-token", "not_object"),
            ({}, "access_token"),
            ({"access_token": ""}, "access_token"),
            ({"access_token": 123}, "access_token"),
            ({"access_token": ["a"]}, "access_token"),
            ({"access_token": "   "}, "access_token"),
            ({"access_token": "\t\n"}, "access_token"),
            ({"access_token": "at-CRLF\r\nX-Injected: 1"}, "access_token"),
            ({"access_token": "at-NUL\x00tail"}, "access_token"),
            ({"access_token": "at-LF\n"}, "access_token"),
            ({"access_token": "a", "refresh_token": "rt-CR\rtail"}, "refresh_token"),
            ({"access_token": "a", "refresh_token": " "}, "refresh_token"),
            ({"access_token": "a", "id_token": "id-NUL\x00"}, "id_token"),
            ({"access_token": "a", "refresh_token": ""}, "refresh_token"),
            ({"access_token": "a", "refresh_token": 5}, "refresh_token"),
            ({"access_token": "a", "id_token": {"jwt": 1}}, "id_token"),
            ({"access_token": "a", "expires_in": True}, "expires_in"),
            ({"access_token": "a", "expires_in": 0}, "expires_in"),
            ({"access_token": "a", "expires_in": -5}, "expires_in"),
            ({"access_token": "a", "expires_in": "soon"}, "expires_in"),
            ({"access_token": "a", "expires_in": "nan"}, "expires_in"),
            ({"access_token": "a", "expires_in": [60]}, "expires_in"),
            (b'{"access_token": "a", "expires_in": NaN}', "expires_in"),
            (b'{"access_token": "a", "expires_in": Infinity}', "expires_in"),
        ],
    )
    def test_rejected(self, creds, body, what):
        """Malformed 2xx bodies are transient invalid_response failures, never adopted."""
        expected = TransientFailure(reason=f"invalid_response:{what}", status=200)
        assert expected == refresh_with(creds, 200, body)

    @pytest.mark.parametrize(
        "expires_in",
        [
            2**63 - 1,
            10**12,
            1e12,
            1e300,
            pytest.param(10**400, id="10**400"),
            "1e999",
            pytest.param("9" * 400, id="400 nines"),
            MAX_EXPIRES_IN + 1,
        ],
    )
    def test_absurd_lifetime_is_unknown(self, creds, expires_in):
        """A lifetime beyond ten years is adopted as "no expiry known": the rotation is kept."""
        body = {"access_token": "a", "refresh_token": "r", "expires_in": expires_in}
        outcome = refresh_with(creds, 200, body)
        assert Refreshed(access_token="a", refresh_token="r", expires_in=None) == outcome

    @given(
        expires_in=st.one_of(
            st.integers(min_value=1),
            st.floats(min_value=0, exclude_min=True, allow_infinity=False),
        )
    )
    def test_adopted_lifetime_fits_a_datetime(self, expires_in):
        """Any positive JSON number is adopted with a lifetime that can be added to a datetime."""
        creds = Credentials(access_token=ACCESS, refresh_token=REFRESH)
        outcome = refresh_with(creds, 200, {"access_token": "a", "expires_in": expires_in})

        assert isinstance(outcome, Refreshed)
        if outcome.expires_in is not None:
            datetime.now(UTC) + timedelta(seconds=outcome.expires_in)

    def test_bad_token_never_in_reason(self, creds):
        """A reply token with CR/LF is refused without the token reaching the outcome."""
        body = {"access_token": "at-LEAK\r\nX-Injected: 1", "refresh_token": "rt-LEAK\x00"}
        outcome = refresh_with(creds, 200, body)
        assert TransientFailure(reason="invalid_response:access_token", status=200) == outcome
        assert "LEAK" not in repr(outcome)

    def test_any_2xx_counts(self, creds):
        """A 201 with a good body is a success too."""
        assert Refreshed(access_token="a") == refresh_with(creds, 201, {"access_token": "a"})

    def test_error_body_with_200(self, creds):
        """A 200 carrying an OAuth error and no access_token is classified as that error."""
        assert PermanentFailure(code="invalid_grant", status=200) == refresh_with(
            creds, 200, {"error": "invalid_grant"}
        )
        assert TransientFailure(reason="http_200:bad_refresh_token", status=200) == refresh_with(
            creds, 200, {"error": "bad_refresh_token"}
        )


class TestClassifyErrors:
    """Non-2xx replies are permanent iff 401 or a permanent code, else transient."""

    @pytest.mark.parametrize(
        ("status", "body", "expected"),
        [
            (401, b"", PermanentFailure(code="http_401", status=401)),
            (401, b"<html/>", PermanentFailure(code="http_401", status=401)),
            (401, {"error": "whatever"}, PermanentFailure(code="whatever", status=401)),
            (400, {"error": "invalid_grant"}, PermanentFailure(code="invalid_grant", status=400)),
            (
                400,
                {"error": {"code": "REFRESH_TOKEN_REUSED", "message": "Already used."}},
                PermanentFailure(
                    code="refresh_token_reused", status=400, description="Already used."
                ),
            ),
            (
                403,
                {"code": "refresh_token_expired"},
                PermanentFailure(code="refresh_token_expired", status=403),
            ),
            (
                500,
                {"error": "refresh_token_invalidated"},
                PermanentFailure(code="refresh_token_invalidated", status=500),
            ),
            (
                400,
                {"error": "invalid_client", "error_description": "Bad client."},
                PermanentFailure(code="invalid_client", status=400, description="Bad client."),
            ),
            (
                400,
                {"error": "unauthorized_client"},
                PermanentFailure(code="unauthorized_client", status=400),
            ),
            (
                400,
                {"error": "app_session_expired"},
                TransientFailure(reason="http_400:app_session_expired", status=400),
            ),
            (
                500,
                {"error": "temporary-failure"},
                TransientFailure(reason="http_500:temporary-failure", status=500),
            ),
            (429, b"slow down", TransientFailure(reason="http_429", status=429)),
            (503, b"", TransientFailure(reason="http_503", status=503)),
            (400, {"error": 42}, TransientFailure(reason="http_400", status=400)),
            (400, {"error": ""}, TransientFailure(reason="http_400", status=400)),
            (400, ["invalid_grant"], TransientFailure(reason="http_400", status=400)),
            (
                400,
                {"error": {"message": "no code"}, "code": "x"},
                TransientFailure(reason="http_400:x", status=400),
            ),
            (400, {"error": {"code": 7}}, TransientFailure(reason="http_400", status=400)),
            (400, {"error": "bad code!"}, TransientFailure(reason="http_400:unknown", status=400)),
            (400, {"error": "é"}, TransientFailure(reason="http_400:unknown", status=400)),
            (
                400,
                {"error": "x" * 100},
                TransientFailure(reason="http_400:" + "x" * 64, status=400),
            ),
            (302, b"", TransientFailure(reason="http_302", status=302)),
        ],
    )
    def test_table(self, creds, status, body, expected):
        """Each status and body maps to exactly one outcome."""
        assert expected == refresh_with(creds, status, body)

    def test_custom_permanent_codes(self, creds):
        """permanent_codes replaces the default set."""
        body = {"error": "app_session_expired"}
        outcome = refresh_with(creds, 400, body, permanent_codes=frozenset({"app_session_expired"}))
        assert PermanentFailure(code="app_session_expired", status=400) == outcome
        outcome = refresh_with(creds, 400, {"error": "invalid_grant"}, permanent_codes=frozenset())
        assert TransientFailure(reason="http_400:invalid_grant", status=400) == outcome

    @pytest.mark.parametrize(
        "exc",
        [
            httpx.ConnectError,
            httpx.ConnectTimeout,
            httpx.ReadTimeout,
            httpx.WriteError,
            httpx.PoolTimeout,
            httpx.RemoteProtocolError,
            httpx.ReadError,
            httpx.ProxyError,
        ],
    )
    def test_transport_errors(self, creds, exc):
        """Every transport error is transient and named by its class, not its message."""

        def fail(request):
            raise exc(f"boom {REFRESH}", request=request)

        endpoint, _ = mocked(fail)
        assert TransientFailure(reason=f"network:{exc.__name__}") == endpoint.refresh(creds)


class TestRetryAfter:
    """Retry-After is honoured as delta-seconds or an HTTP-date, never negative."""

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("120", 120.0),
            (" 0 ", 0.0),
            (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
            ("Thu, 01 Jan 2026 12:00:30 GMT", 30.0),
            ("Thursday, 01-Jan-26 12:00:30 GMT", 30.0),
            (format_datetime(NOW - timedelta(hours=1), usegmt=True), 0.0),
            ("-5", None),
            ("1.5", None),
            ("soon", None),
            ("", None),
            (None, None),
        ],
    )
    def test_parse(self, value, expected):
        """Both forms parse relative to now; anything else is None."""
        assert expected == parse_retry_after(value, NOW)

    def test_delta_through_endpoint(self, creds):
        """A 429 with delta-seconds carries retry_after."""
        outcome = refresh_with(creds, 429, b"", {"Retry-After": "7"})
        assert TransientFailure(reason="http_429", status=429, retry_after=7.0) == outcome

    def test_date_through_endpoint(self, creds):
        """A 503 with an HTTP-date carries the seconds until that date."""
        when = datetime.now(UTC) + timedelta(seconds=100)
        outcome = refresh_with(creds, 503, b"", {"Retry-After": format_datetime(when, usegmt=True)})
        assert isinstance(outcome, TransientFailure)
        assert outcome.retry_after is not None
        assert 95 <= outcome.retry_after <= 100

    def test_ignored_on_success(self, creds):
        """A 2xx never carries a retry_after."""
        assert Refreshed(access_token="a") == refresh_with(
            creds, 200, {"access_token": "a"}, {"Retry-After": "5"}
        )


class TestSecrets:
    """No token or client secret escapes through a description, code, reason or repr."""

    def test_echoed_tokens_redacted(self, creds):
        """Every token and the client secret in error_description become [redacted]."""
        description = f"bad {REFRESH} for {ACCESS}, id {ID_TOKEN}, client {CLIENT_SECRET}"
        outcome = refresh_with(
            creds,
            400,
            {"error": "invalid_grant", "error_description": description},
            client_secret=CLIENT_SECRET,
        )
        assert (
            PermanentFailure(
                code="invalid_grant",
                status=400,
                description="bad [redacted] for [redacted], id [redacted], client [redacted]",
            )
            == outcome
        )

    def test_form_encoded_echo_redacted(self, creds):
        """The form-encoded client secret, as the server received it, is redacted too."""
        echo = "got cs-SECRET+client%2Fsecret%3A42"
        outcome = refresh_with(
            creds,
            401,
            {"error_description": echo},
            client_secret=CLIENT_SECRET,
        )
        assert (
            PermanentFailure(code="http_401", status=401, description="got [redacted]") == outcome
        )

    def test_redacted_before_truncation(self, creds):
        """A token straddling the 200-character limit is not cut into a leaking fragment."""
        description = "x" * 190 + REFRESH
        outcome = refresh_with(creds, 401, {"error_description": description})
        assert isinstance(outcome, PermanentFailure)
        assert outcome.description == "x" * 190 + "[redacted]"
        assert "rt-SECRET" not in (outcome.description or "")

    def test_long_description_truncated(self, creds):
        """Descriptions are cut to 200 characters and lose control characters."""
        outcome = refresh_with(creds, 401, {"error_description": "a\nb\x1b" + "c" * 500})
        assert isinstance(outcome, PermanentFailure)
        assert outcome.description == "a b " + "c" * 196

    @pytest.mark.parametrize(
        "code",
        [REFRESH, REFRESH.lower(), REFRESH.upper(), "rt-secret-refresh-01234567", "x_" + REFRESH],
    )
    def test_token_as_code(self, creds, code):
        """A code that is, contains or is a fragment of a token becomes "unknown"."""
        assert TransientFailure(reason="http_400:unknown", status=400) == refresh_with(
            creds, 400, {"error": code}
        )

    def test_network_reason_has_no_message(self, creds):
        """Exception messages (which may hold URLs or tokens) never reach the reason."""

        def fail(request):
            raise httpx.ConnectError(REFRESH, request=request)

        endpoint, _ = mocked(fail)
        assert REFRESH not in repr(endpoint.refresh(creds))

    def test_repr_hides_secret(self):
        """repr names the endpoint but not the client secret."""
        endpoint = OAuthTokenEndpoint(TOKEN_URL, "my-cli", client_secret=CLIENT_SECRET)
        with endpoint:
            text = repr(endpoint)
        assert "my-cli" in text
        assert "SECRET" not in text

    def test_repr_hides_url_credentials(self):
        """repr shows neither a password in a URL's userinfo nor its query values."""
        with OAuthTokenEndpoint(
            "https://alice:pa55word@idp.example/oauth/token?tenant=t1&key=k3y-SECRET",
            "my-cli",
            revoke_url="https://bob:hunter2@idp.example:8443/revoke?sig=SIGNED",
        ) as endpoint:
            text = repr(endpoint)

        assert "https://idp.example/oauth/token?tenant=[redacted]&key=[redacted]" in text
        assert "https://idp.example:8443/revoke?sig=[redacted]" in text
        for secret in ("alice", "pa55word", "k3y-SECRET", "t1", "bob", "hunter2", "SIGNED"):
            assert secret not in text

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("https://idp.example/token", "https://idp.example/token"),
            (
                "https://u:p@IDP.example:8443/t?a=1&b&c=#frag",
                "https://idp.example:8443/t?a=[redacted]&[redacted]&c=[redacted]",
            ),
            ("http://[::1]:9/t", "http://[::1]:9/t"),
            ("http://u@h:99999/", "[redacted]"),
        ],
    )
    def test_redact_url(self, url, expected):
        """redact_url keeps scheme, host, port, path and query names; bad URLs are hidden whole."""
        assert expected == redact_url(url)

    def test_protocol(self):
        """The adapter satisfies the engine's TokenEndpoint protocol."""
        with OAuthTokenEndpoint(TOKEN_URL, "c") as endpoint:
            assert isinstance(endpoint, TokenEndpoint)


class TestCappedBody:
    """The body reader keeps at most the cap plus one chunk and stops asking for more."""

    def test_stops_pulling_chunks(self, creds):
        """An endless body is abandoned just past the cap: response_too_large."""
        pulled = 0

        def endless() -> Iterator[bytes]:
            nonlocal pulled
            for _ in range(100_000):
                pulled += 1
                yield b"x" * 1024

        endpoint, _ = mocked(
            lambda _r: httpx.Response(200, content=endless()), max_response_bytes=4096
        )

        outcome = endpoint.refresh(creds)

        assert TransientFailure(reason="response_too_large", status=200) == outcome
        assert pulled == 5

    def test_declared_length_not_read(self, creds):
        """A Content-Length over the cap is refused before any body chunk is pulled."""
        pulled = 0

        def body() -> Iterator[bytes]:
            nonlocal pulled
            pulled += 1
            yield b"x" * 10

        def respond(_request):
            return httpx.Response(500, headers={"Content-Length": "999999"}, content=body())

        endpoint, _ = mocked(respond, max_response_bytes=1000)

        assert TransientFailure(reason="response_too_large", status=500) == endpoint.refresh(creds)
        assert pulled == 0

    def test_too_large_401_still_permanent(self, creds):
        """A 401 is permanent whatever its body, even one too large to read."""
        outcome = refresh_with(creds, 401, b"x" * 2000, max_response_bytes=1000)
        assert PermanentFailure(code="http_401", status=401) == outcome

    def test_exactly_cap_is_read(self, creds):
        """A body of exactly the cap is accepted."""
        body = json.dumps({"access_token": "a"}).encode()
        outcome = refresh_with(creds, 200, body, max_response_bytes=len(body))
        assert Refreshed(access_token="a") == outcome

    def test_gzip_decoded_within_cap(self):
        """A gzip body is decoded, and a gzip bomb stops at the cap without inflating it all."""
        good = CappedBody(100, "gzip")
        good.feed(gzip.compress(b'{"access_token": "a"}'))
        bomb = CappedBody(100, "gzip")
        bomb.feed(gzip.compress(b"0" * 10_000_000))

        assert Reply(status=200, body=b'{"access_token": "a"}') == good.reply(200, None)
        assert Reply(status=200, problem="response_too_large") == bomb.reply(200, None)

    def test_unknown_encoding(self, creds):
        """An encoding the reader cannot bound is refused, as is a corrupt gzip body."""
        br = CappedBody(100, "br")
        corrupt = CappedBody(100, "gzip")
        corrupt.feed(b"not gzip at all")

        assert br.problem == "invalid_response:content_encoding"
        assert corrupt.problem == "invalid_response:content_encoding"

    def test_classify_is_pure(self, creds):
        """classify_refresh needs only the reply, the credential and the time."""
        reply = Reply(status=429, retry_after="3", body=b'{"error": "slow_down"}')
        outcome = classify_refresh(reply, credentials=creds, now=NOW)
        assert TransientFailure(reason="http_429:slow_down", status=429, retry_after=3.0) == outcome


class TestRevoke:
    """Revocation (RFC 7009) is best effort: True on a 2xx, False on anything else."""

    def test_refresh_token_preferred(self, creds):
        """The refresh token is revoked when there is one, with client auth as for refresh."""
        endpoint, rec = mocked(answering(200, b""), revoke_url=REVOKE_URL, client_secret="s3")

        assert endpoint.revoke(creds) is True
        (request,) = rec.requests
        assert str(request.url) == REVOKE_URL
        assert request.headers["authorization"].startswith("Basic ")
        assert form(request) == {
            "token": [REFRESH],
            "token_type_hint": ["refresh_token"],
            "client_id": ["my-cli"],
        }

    def test_access_token_fallback(self):
        """Without a refresh token the access token is revoked."""
        endpoint, rec = mocked(answering(200, b""), revoke_url=REVOKE_URL, body_format="json")

        assert endpoint.revoke(Credentials(access_token=ACCESS)) is True
        (request,) = rec.requests
        assert json.loads(request.content) == {
            "token": ACCESS,
            "token_type_hint": "access_token",
            "client_id": "my-cli",
        }

    def test_no_revoke_url(self, creds):
        """Without a revoke_url nothing is sent and the answer is False."""
        endpoint, rec = mocked()
        assert endpoint.revoke(creds) is False
        assert rec.requests == []

    def test_failures_are_false(self, creds):
        """An error status or a network error gives False, never an exception."""

        def fail(request):
            raise httpx.ConnectError("refused", request=request)

        rejecting, _ = mocked(answering(503, b""), revoke_url=REVOKE_URL)
        broken, _ = mocked(fail, revoke_url=REVOKE_URL)

        assert rejecting.revoke(creds) is False
        assert broken.revoke(creds) is False


# -- a real loopback token server -------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a sleeping handler must not hold up teardown

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour: Callable[[_Handler], None] = send(200, OK_BODY)
        self.requests: list[tuple[str, Message, bytes]] = []
        self.release = threading.Event()
        self.finished = threading.Event()
        self.written = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/oauth/token"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append((self.path, self.headers, body))
        try:
            self.server.behaviour(self)
        except OSError:
            self.close_connection = True
        finally:
            self.server.finished.set()

    def log_message(self, format: str, *args: object) -> None:
        pass


def send(status: int, body: Any, headers: dict[str, str] | None = None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()

    def behaviour(handler: _Handler) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)

    return behaviour


def send_chunked(chunks: list[bytes], *, pause: float = 0.0, status: int = 200):
    def behaviour(handler: _Handler) -> None:
        handler.send_response(status)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for chunk in chunks:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            handler.wfile.flush()
            handler.server.written += len(chunk)
            if pause:
                time.sleep(pause)
        handler.wfile.write(b"0\r\n\r\n")

    return behaviour


def send_huge(*, declare_length: bool):
    """10 MB of body in 64 KiB pieces through a small send buffer, counting what got out."""
    piece = b"x" * 65536
    total = 10 * 1024 * 1024

    def behaviour(handler: _Handler) -> None:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        handler.close_connection = True
        handler.send_response(200)
        if declare_length:
            handler.send_header("Content-Length", str(total))
        handler.end_headers()
        for _ in range(total // len(piece)):
            handler.wfile.write(piece)
            handler.server.written += len(piece)

    return behaviour


def gzip_bomb(inflated: int = 100 * 1024 * 1024) -> bytes:
    """A gzip stream of ``inflated`` zero bytes, built a megabyte at a time."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1024 * 1024)
    parts = [compressor.compress(block) for _ in range(inflated // len(block))]
    parts.append(compressor.flush())
    return b"".join(parts)


def stall(handler: _Handler) -> None:
    handler.server.release.wait(1.5)


def drip(handler: _Handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    for _ in range(1000):
        if handler.server.release.wait(0.02):
            return
        handler.wfile.write(b" ")
        handler.wfile.flush()


def hang_up(handler: _Handler) -> None:
    handler.close_connection = True


def hang_up_mid_body(handler: _Handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "100")
    handler.end_headers()
    handler.wfile.write(b'{"access_to')
    handler.close_connection = True


@pytest.fixture(name="hostile")
def _hostile(monkeypatch) -> Iterator[_Server]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)


@pytest.fixture(name="closed_port_url")
def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/oauth/token"


def loopback(hostile: _Server, **kwargs) -> OAuthTokenEndpoint:
    return OAuthTokenEndpoint(hostile.url, "my-cli", timeout=kwargs.pop("timeout", 1.0), **kwargs)


class TestLoopback:
    """Against a real HTTP hostile on 127.0.0.1 every hostile reply is classified, never raised."""

    def test_success_over_the_wire(self, hostile, creds):
        """A good reply is adopted and the hostile saw a well-formed form request."""
        with loopback(hostile, client_secret=CLIENT_SECRET) as endpoint:
            outcome = endpoint.refresh(creds)

        assert (
            Refreshed(access_token="at-new", refresh_token="rt-new", expires_in=3600.0) == outcome
        )
        ((path, headers, body),) = hostile.requests
        assert path == "/oauth/token"
        assert headers["Authorization"].startswith("Basic ")
        assert (
            body.decode()
            == "grant_type=refresh_token&refresh_token=" + REFRESH + "&client_id=my-cli"
        )

    def test_non_json_200(self, hostile, creds):
        """An HTML page with status 200 is not adopted."""
        hostile.behaviour = send(200, b"<html><body>Welcome to the captive portal</body></html>")
        with loopback(hostile) as endpoint:
            assert TransientFailure(
                reason="invalid_response:not_json", status=200
            ) == endpoint.refresh(creds)

    def test_wrong_types(self, hostile, creds):
        """A JSON object with a numeric access_token is not adopted."""
        hostile.behaviour = send(200, {"access_token": 123, "refresh_token": "r"})
        with loopback(hostile) as endpoint:
            assert TransientFailure(
                reason="invalid_response:access_token", status=200
            ) == endpoint.refresh(creds)

    def test_chunked_json(self, hostile, creds):
        """A JSON body streamed in small chunks is reassembled and adopted."""
        raw = json.dumps({"access_token": "at-chunked", "expires_in": "60"}).encode()
        hostile.behaviour = send_chunked(
            [raw[i : i + 5] for i in range(0, len(raw), 5)], pause=0.005
        )
        with loopback(hostile) as endpoint:
            assert Refreshed(access_token="at-chunked", expires_in=60.0) == endpoint.refresh(creds)

    def test_error_with_retry_after(self, hostile, creds):
        """A real 429 with Retry-After is transient with the delay."""
        hostile.behaviour = send(429, {"error": "rate_limited"}, {"Retry-After": "30"})
        with loopback(hostile) as endpoint:
            outcome = endpoint.refresh(creds)
        assert (
            TransientFailure(reason="http_429:rate_limited", status=429, retry_after=30.0)
            == outcome
        )

    @pytest.mark.parametrize("declare_length", [True, False])
    def test_ten_megabytes(self, hostile, creds, declare_length):
        """A 10 MB body is refused after at most the cap plus a chunk, without reading it all."""
        hostile.behaviour = send_huge(declare_length=declare_length)
        started = time.monotonic()
        with loopback(hostile) as endpoint:
            outcome = endpoint.refresh(creds)

        assert TransientFailure(reason="response_too_large", status=200) == outcome
        assert hostile.finished.wait(2)
        assert hostile.written < 1024 * 1024  # of 10 MB: the rest was never sent
        assert time.monotonic() - started < 1.5

    def test_slow_server(self, hostile, creds):
        """A hostile that never answers within timeout=0.2 gives a transient ReadTimeout."""
        hostile.behaviour = stall
        started = time.monotonic()
        with loopback(hostile, timeout=0.2) as endpoint:
            outcome = endpoint.refresh(creds)
        assert TransientFailure(reason="network:ReadTimeout") == outcome
        assert time.monotonic() - started < 1.0

    def test_dripping_body(self, hostile, creds):
        """A body dribbled a byte at a time cannot hold the caller past the timeout."""
        hostile.behaviour = drip
        started = time.monotonic()
        with loopback(hostile, timeout=0.2) as endpoint:
            outcome = endpoint.refresh(creds)
        assert TransientFailure(reason="network:ReadTimeout") == outcome
        assert time.monotonic() - started < 1.0

    def test_connection_refused(self, closed_port_url, creds):
        """Nobody listening is a transient ConnectError."""
        with OAuthTokenEndpoint(closed_port_url, "c", timeout=1.0) as endpoint:
            assert TransientFailure(reason="network:ConnectError") == endpoint.refresh(creds)

    @pytest.mark.parametrize("behaviour", [hang_up, hang_up_mid_body])
    def test_dropped_connection(self, hostile, creds, behaviour):
        """A connection closed before or during the reply is a transient protocol error."""
        hostile.behaviour = behaviour
        with loopback(hostile) as endpoint:
            assert TransientFailure(reason="network:RemoteProtocolError") == endpoint.refresh(creds)

    def test_gzip_reply_inflated(self, hostile, creds):
        """A gzip body sent despite Accept-Encoding: identity is inflated and adopted."""
        raw = gzip.compress(json.dumps(OK_BODY).encode())
        hostile.behaviour = send(200, raw, {"Content-Encoding": "gzip"})
        with loopback(hostile) as endpoint:
            outcome = endpoint.refresh(creds)
        assert (
            Refreshed(access_token="at-new", refresh_token="rt-new", expires_in=3600.0) == outcome
        )

    def test_gzip_bomb(self, hostile, creds):
        """A gzip bomb (100 MB from 100 KB) is refused with no more than a few MB allocated."""
        hostile.behaviour = send(200, gzip_bomb(), {"Content-Encoding": "gzip"})
        with loopback(hostile, timeout=5.0) as endpoint:
            tracemalloc.start()
            try:
                outcome = endpoint.refresh(creds)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()

        assert TransientFailure(reason="response_too_large", status=200) == outcome
        assert peak < 8 * 1024 * 1024

    def test_control_characters_in_reply(self, hostile, creds):
        """A token with CR/LF from a real server is not adopted, and not repeated."""
        hostile.behaviour = send(200, {"access_token": "at-LEAK\r\nSet-Cookie: x=1"})
        with loopback(hostile) as endpoint:
            outcome = endpoint.refresh(creds)
        assert TransientFailure(reason="invalid_response:access_token", status=200) == outcome
        assert "LEAK" not in repr(outcome)

    def test_revoke(self, hostile, creds):
        """Revocation reaches the hostile and a 200 means True."""
        hostile.behaviour = send(200, b"")
        with loopback(hostile, revoke_url=hostile.url.replace("token", "revoke")) as endpoint:
            assert endpoint.revoke(creds) is True
        assert hostile.requests[0][0] == "/oauth/revoke"


class TestLoopbackAsync:
    """The async path shares the rules and meets the same hostile with the same results."""

    def test_success(self, hostile, creds):
        """refresh_async adopts a good reply, on its own short-lived client."""
        endpoint = loopback(hostile, body_format="json")
        outcome = asyncio.run(endpoint.refresh_async(creds))
        endpoint.close()
        assert (
            Refreshed(access_token="at-new", refresh_token="rt-new", expires_in=3600.0) == outcome
        )
        assert json.loads(hostile.requests[0][2])["grant_type"] == "refresh_token"

    def test_hostile_replies(self, hostile, creds):
        """A caller's AsyncClient gets the same classification for errors and hostile bodies."""
        endpoint = loopback(hostile, timeout=0.2)

        async def run(behaviour):
            hostile.behaviour = behaviour
            async with httpx.AsyncClient() as client:
                return await endpoint.refresh_async(creds, client=client)

        assert PermanentFailure(code="invalid_grant", status=400) == asyncio.run(
            run(send(400, {"error": "invalid_grant"}))
        )
        assert TransientFailure(reason="response_too_large", status=200) == asyncio.run(
            run(send_huge(declare_length=False))
        )
        assert TransientFailure(reason="network:RemoteProtocolError") == asyncio.run(run(hang_up))
        assert TransientFailure(reason="network:ReadTimeout") == asyncio.run(run(stall))
        endpoint.close()

    def test_retry_after_seconds(self, hostile, creds):
        """refresh_async honours a delta-seconds Retry-After like refresh()."""
        hostile.behaviour = send(429, {"error": "slow_down"}, {"Retry-After": "42"})
        endpoint = loopback(hostile)
        outcome = asyncio.run(endpoint.refresh_async(creds))
        endpoint.close()
        assert (
            TransientFailure(reason="http_429:slow_down", status=429, retry_after=42.0) == outcome
        )

    def test_retry_after_http_date(self, hostile, creds):
        """refresh_async honours an HTTP-date Retry-After: the seconds until that date."""
        when = datetime.now(UTC) + timedelta(seconds=100)
        hostile.behaviour = send(503, b"", {"Retry-After": format_datetime(when, usegmt=True)})
        endpoint = loopback(hostile)
        outcome = asyncio.run(endpoint.refresh_async(creds))
        endpoint.close()

        assert isinstance(outcome, TransientFailure)
        assert (outcome.reason, outcome.status) == ("http_503", 503)
        assert outcome.retry_after is not None
        assert 95 <= outcome.retry_after <= 100

    def test_connection_refused(self, closed_port_url, creds):
        """Nobody listening is transient on the async path too."""
        endpoint = OAuthTokenEndpoint(closed_port_url, "c", timeout=1.0)
        outcome = asyncio.run(endpoint.refresh_async(creds))
        endpoint.close()
        assert TransientFailure(reason="network:ConnectError") == outcome

    def test_revoke(self, hostile, creds):
        """revoke_async is True on a 2xx and False when the hostile fails."""
        endpoint = loopback(hostile, revoke_url=hostile.url)
        hostile.behaviour = send(200, b"")
        assert asyncio.run(endpoint.revoke_async(creds)) is True
        hostile.behaviour = send(500, b"")
        assert asyncio.run(endpoint.revoke_async(creds)) is False
        assert asyncio.run(loopback(hostile).revoke_async(creds)) is False
        endpoint.close()


class TestAgainstTokenServer:
    """Against authfsm.testing.TokenServer the adapter rotates, detects reuse and revokes."""

    def test_rotation_then_reuse(self, server, endpoint):
        """A refresh rotates the token; spending the old one again is a permanent reuse."""
        creds = server.issue()

        first = endpoint.refresh(creds)
        again = endpoint.refresh(creds)

        assert isinstance(first, Refreshed)
        assert server.is_current(first.refresh_token)
        assert (
            PermanentFailure(
                code="refresh_token_reused",
                status=400,
                description="refresh token reused; family revoked",
            )
            == again
        )

    @pytest.mark.parametrize("client_auth", ["client_secret_basic", "client_secret_post"])
    @pytest.mark.parametrize("body_format", ["form", "json"])
    def test_confidential_client(self, client_auth, body_format):
        """Both client authentications and both body formats are accepted by a strict server."""
        with TokenServer(client_secret=CLIENT_SECRET) as strict:
            creds = strict.issue()
            with OAuthTokenEndpoint(
                strict.token_url,
                "test-client",
                client_secret=CLIENT_SECRET,
                client_auth=client_auth,
                body_format=body_format,
                timeout=2.0,
            ) as endpoint:
                outcome = endpoint.refresh(creds)
        assert isinstance(outcome, Refreshed)

    def test_wrong_secret_is_permanent(self):
        """A rejected client (401 invalid_client) is permanent."""
        with TokenServer(client_secret=CLIENT_SECRET) as strict:
            creds = strict.issue()
            with OAuthTokenEndpoint(
                strict.token_url, "test-client", client_secret="wrong", timeout=2.0
            ) as endpoint:
                outcome = endpoint.refresh(creds)
        assert isinstance(outcome, PermanentFailure)
        assert (outcome.code, outcome.status) == ("invalid_client", 401)

    def test_revoke_kills_family(self, server, endpoint):
        """revoke() ends the token family on the server."""
        creds = server.issue()

        assert endpoint.revoke(creds) is True
        assert not server.family_alive(creds)
