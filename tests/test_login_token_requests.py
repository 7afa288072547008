"""The endpoint adapter's grant requests: built like refreshes, held to the same deadline and cap,
classified without leaking the secrets of the grant."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from datetime import UTC, datetime
from urllib.parse import parse_qs

import httpx
import pytest

from authfsm.adapters import OAuthTokenEndpoint
from authfsm.adapters._endpoint import Reply, classify_grant
from authfsm.engine import PermanentFailure, Refreshed, TransientFailure

from .test_login_idp import CLIENT_ID, FakeIdP

NOW = datetime(2030, 1, 1, tzinfo=UTC)
CODE = "code-S3CRET-abcdefgh"


def classify(status: int, body: object, **kwargs: object) -> object:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return classify_grant(Reply(status=status, body=raw), now=NOW, **kwargs)  # type: ignore[arg-type]


class TestClassifyGrant:
    """Every error code the server answers on purpose comes back; the rest is transient."""

    @pytest.mark.parametrize(
        ("status", "body", "expected"),
        [
            (
                400,
                {"error": "authorization_pending"},
                PermanentFailure(code="authorization_pending", status=400),
            ),
            (400, {"error": "slow_down"}, PermanentFailure(code="slow_down", status=400)),
            (
                200,
                {"error": "authorization_pending"},
                PermanentFailure(code="authorization_pending", status=200),
            ),
            (401, b"", PermanentFailure(code="http_401", status=401)),
            (429, {"error": "slow_down"}, PermanentFailure(code="slow_down", status=429)),
            (
                503,
                {"error": "temporarily_unavailable"},
                TransientFailure(reason="http_503:temporarily_unavailable", status=503),
            ),
            (500, b"<html>", TransientFailure(reason="http_500", status=500)),
            (
                200,
                {"access_token": "at", "expires_in": 60},
                Refreshed(access_token="at", expires_in=60),
            ),
            (
                200,
                {"token_type": "Bearer"},
                TransientFailure(reason="invalid_response:access_token", status=200),
            ),
        ],
    )
    def test_outcomes(self, status: int, body: object, expected: object) -> None:
        assert expected == classify(status, body)

    def test_grant_secrets_are_redacted(self) -> None:
        body = {"error": "invalid_grant", "error_description": f"code {CODE} was used"}
        outcome = classify(400, body, secrets=(CODE,))
        assert (
            PermanentFailure(
                code="invalid_grant", status=400, description="code [redacted] was used"
            )
            == outcome
        )

    def test_a_code_echoing_a_secret_is_unknown(self) -> None:
        outcome = classify(400, {"error": CODE.lower()}, secrets=(CODE.lower(),))
        assert isinstance(outcome, PermanentFailure)
        assert "unknown" == outcome.code


class Recorder:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        # Streamed, so the adapter must read it as it reads a real body.
        return httpx.Response(400, content=iter([b'{"error": "authorization_pending"}']))


class TestRequestBuilding:
    """A unit test of the adapter on httpx's MockTransport: what goes on the wire."""

    def test_form_with_basic_auth(self) -> None:
        recorder = Recorder()
        client = httpx.Client(transport=httpx.MockTransport(recorder))
        endpoint = OAuthTokenEndpoint(
            "https://idp.example/token",
            CLIENT_ID,
            client_secret="client-S3CRET",
            scope="refresh-only",
            extra_params={"audience": "refresh-only"},
            client=client,
        )
        outcome = endpoint.request_token("urn:x", {"device_code": "dc"}, secrets=("dc",))
        assert PermanentFailure(code="authorization_pending", status=400) == outcome
        request = recorder.requests[0]
        assert {"grant_type": ["urn:x"], "device_code": ["dc"], "client_id": [CLIENT_ID]} == (
            parse_qs(request.content.decode())
        )
        assert request.headers["authorization"].startswith("Basic ")

    def test_json_with_post_auth(self) -> None:
        recorder = Recorder()
        client = httpx.Client(transport=httpx.MockTransport(recorder))
        endpoint = OAuthTokenEndpoint(
            "https://idp.example/token",
            CLIENT_ID,
            client_secret="client-S3CRET",
            client_auth="client_secret_post",
            body_format="json",
            client=client,
        )
        endpoint.post_form("https://idp.example/device", {"scope": "openid"})
        assert {"scope": "openid", "client_id": CLIENT_ID, "client_secret": "client-S3CRET"} == (
            json.loads(recorder.requests[0].content)
        )
        assert "https://idp.example/device" == str(recorder.requests[0].url)

    @pytest.mark.parametrize("name", ["grant_type", "client_id", "client_secret"])
    def test_reserved_params(self, name: str) -> None:
        endpoint = OAuthTokenEndpoint("https://idp.example/token", CLIENT_ID)
        with pytest.raises(ValueError, match=name):
            endpoint.request_token("authorization_code", {name: "x"})

    def test_properties(self) -> None:
        endpoint = OAuthTokenEndpoint("https://idp.example/token", CLIENT_ID)
        assert (CLIENT_ID, "https://idp.example/token") == (
            endpoint.client_id,
            endpoint.token_url,
        )


class TestOverTheWire:
    """Real loopback HTTP: deadline and cap as for a refresh, sync and async."""

    def test_against_a_provider(self) -> None:
        with FakeIdP() as idp, OAuthTokenEndpoint(f"{idp.base}/oauth/token", CLIENT_ID) as ep:
            reply = ep.post_form(f"{idp.base}/oauth/device", {"scope": "openid"})
            assert isinstance(reply, Reply)
            assert 200 == reply.status
            outcome = ep.request_token(
                "urn:ietf:params:oauth:grant-type:device_code",
                {"device_code": idp.device_answer["device_code"]},
            )
            assert isinstance(outcome, Refreshed)
            assert outcome.id_token is not None
            async_outcome = asyncio.run(
                ep.request_token_async("authorization_code", {"code": "nope"})
            )
            assert PermanentFailure(code="invalid_grant", status=400) == async_outcome

    def test_deadline(self) -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            held: list[socket.socket] = []
            stop = threading.Event()

            def accept() -> None:
                listener.settimeout(0.05)
                end = time.monotonic() + 10
                while not stop.is_set() and time.monotonic() < end:
                    try:
                        held.append(listener.accept()[0])
                    except TimeoutError:
                        continue

            thread = threading.Thread(target=accept, daemon=True)
            thread.start()
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/token"
            try:
                with OAuthTokenEndpoint(url, CLIENT_ID, timeout=0.3) as endpoint:
                    started = time.monotonic()
                    outcome = endpoint.request_token("authorization_code", {"code": CODE})
                    async_outcome = asyncio.run(
                        endpoint.request_token_async("authorization_code", {"code": CODE})
                    )
                    assert time.monotonic() - started < 2.0
            finally:
                stop.set()
                thread.join(timeout=5)
                for sock in held:
                    sock.close()
        expected = TransientFailure(reason="network:ReadTimeout")
        assert expected == outcome == async_outcome

    def test_cap(self) -> None:
        with FakeIdP() as idp:
            idp.token_script.append((200, {"access_token": "a" * 5000}))
            with OAuthTokenEndpoint(
                f"{idp.base}/oauth/token", CLIENT_ID, max_response_bytes=1024
            ) as endpoint:
                outcome = endpoint.request_token("authorization_code", {"code": CODE})
        assert TransientFailure(reason="response_too_large", status=200) == outcome
