"""Device login (RFC 8628): the prompt, the polling rules, the terminal errors, the deadline."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from authfsm import AuthError
from authfsm.adapters._endpoint import Reply
from authfsm.engine import TransientFailure
from authfsm.login import (
    DeviceCodeExpired,
    DevicePrompt,
    IdTokenInvalid,
    LoginDenied,
    LoginResult,
    LoginTimeout,
    ProviderError,
    TokenRequestFailed,
    VerifiedIdentity,
    clear_discovery_cache,
    device_login,
    device_login_async,
    discover,
)
from authfsm.login._device import parse_device_authorization
from authfsm.testing import FakeClock

from .test_login_idp import CLIENT_ID, FakeIdP

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture(name="idp")
def _idp() -> Iterator[FakeIdP]:
    clear_discovery_cache()
    with FakeIdP() as idp:
        yield idp


class Waits:
    """A sleep that only moves a fake clock, and remembers every wait."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        assert len(self.waits) < 1000, "polling must be bounded"
        self.waits.append(seconds)
        self.clock.advance(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self(seconds)
        await asyncio.sleep(0)


def run(idp: FakeIdP, **kwargs: Any) -> tuple[LoginResult, Waits, list[DevicePrompt]]:
    clock = FakeClock(time.time())
    waits = Waits(clock)
    prompts: list[DevicePrompt] = []
    kwargs.setdefault("jitter", 0.0)
    result = device_login(
        discover(idp.issuer),
        client_id=CLIENT_ID,
        on_prompt=prompts.append,
        clock=clock,
        sleep=waits,
        **kwargs,
    )
    return result, waits, prompts


def failing(idp: FakeIdP, error: type[AuthError], **kwargs: Any) -> tuple[Any, Waits]:
    clock = FakeClock(time.time())
    waits = Waits(clock)
    kwargs.setdefault("jitter", 0.0)
    with pytest.raises(error) as caught:
        device_login(
            discover(idp.issuer),
            client_id=CLIENT_ID,
            on_prompt=lambda prompt: None,
            clock=clock,
            sleep=waits,
            **kwargs,
        )
    return caught.value, waits


def polls(idp: FakeIdP) -> int:
    return sum(1 for r in idp.token_requests if r.get("grant_type") == DEVICE_GRANT)


class TestSuccess:
    """Codes asked for, prompt shown, polls at the interval, verified identity returned."""

    def test_login_after_pending(self, idp: FakeIdP) -> None:
        idp.device_script.extend(["pending", "pending"])
        result, waits, prompts = run(idp)
        assert [{"client_id": CLIENT_ID, "scope": "openid offline_access"}] == idp.device_requests
        assert [5.0, 5.0, 5.0] == waits.waits
        assert 3 == polls(idp)
        assert {
            "grant_type": DEVICE_GRANT,
            "device_code": "dev-code-S3CRET-0123456789",
            "client_id": CLIENT_ID,
        } == idp.token_requests[0]
        assert "at-S3CRET-1-abcdefghijkl" == result.credentials.access_token
        assert VerifiedIdentity(issuer=idp.issuer, subject="alice", verified=True) == (
            result.identity
        )
        [prompt] = prompts
        assert "WDJB-MJHT" == prompt.user_code
        assert idp.device_answer["verification_uri_complete"] in prompt.message
        assert idp.device_answer["verification_uri"] in prompt.message
        assert "WDJB-MJHT" in prompt.message
        assert "Never share this code" in prompt.message
        assert "WDJB" not in repr(prompt)

    def test_default_prompt_goes_to_the_stream(self, idp: FakeIdP) -> None:
        del idp.device_answer["verification_uri_complete"]
        stream = io.StringIO()
        clock = FakeClock(time.time())
        device_login(
            discover(idp.issuer),
            client_id=CLIENT_ID,
            stream=stream,
            clock=clock,
            sleep=Waits(clock),
            jitter=0,
        )
        text = stream.getvalue()
        assert "enter the code WDJB-MJHT" in text
        assert "Never share this code" in text

    def test_missing_interval_means_five_seconds(self, idp: FakeIdP) -> None:
        del idp.device_answer["interval"]
        idp.device_script.extend(["pending"] * 3)
        _, waits, _ = run(idp)
        assert [5.0] * 4 == waits.waits

    def test_the_providers_interval_is_used(self, idp: FakeIdP) -> None:
        idp.device_answer["interval"] = 2
        idp.device_script.append("pending")
        _, waits, _ = run(idp)
        assert [2.0, 2.0] == waits.waits

    def test_slow_down_adds_five_seconds_to_this_and_every_later_poll(self, idp: FakeIdP) -> None:
        idp.device_script.extend(["pending", "slow_down", "pending", "slow_down", "pending"])
        _, waits, _ = run(idp)
        assert [5.0, 5.0, 10.0, 10.0, 15.0, 15.0] == waits.waits

    def test_jitter_is_small_and_never_shortens_a_wait(self, idp: FakeIdP) -> None:
        idp.device_script.extend(["pending"] * 9)
        _, waits, _ = run(idp, jitter=1.0)
        assert 10 == len(waits.waits)
        assert all(5.0 <= wait < 6.0 for wait in waits.waits)
        assert len(set(waits.waits)) > 1

    def test_a_server_error_doubles_the_interval_and_polling_goes_on(self, idp: FakeIdP) -> None:
        idp.device_script.extend([(503, {}), (500, {"oops": 1}), "pending"])
        _, waits, _ = run(idp)
        assert [5.0, 10.0, 20.0, 20.0] == waits.waits

    def test_github_style_pending_at_200(self, idp: FakeIdP) -> None:
        idp.device_script.append((200, {"error": "authorization_pending"}))
        _, waits, _ = run(idp)
        assert 2 == len(waits.waits)

    def test_no_scope(self, idp: FakeIdP) -> None:
        run(idp, scope=None)
        assert [{"client_id": CLIENT_ID}] == idp.device_requests


class TestEnds:
    """Terminal answers and the deadline end the login with a typed error."""

    def test_access_denied(self, idp: FakeIdP) -> None:
        idp.device_script.extend(["pending", (400, {"error": "access_denied"})])
        error, _ = failing(idp, LoginDenied)
        assert ("login_denied", "access_denied") == (error.reason, error.error)
        assert 2 == polls(idp)

    def test_expired_token(self, idp: FakeIdP) -> None:
        idp.device_script.append((400, {"error": "expired_token"}))
        error, _ = failing(idp, DeviceCodeExpired)
        assert "device_code_expired" == error.reason

    def test_other_error_codes(self, idp: FakeIdP) -> None:
        idp.device_script.append((401, {"error": "invalid_client"}))
        error, _ = failing(idp, ProviderError)
        assert "invalid_client" == error.reason

    def test_deadline_is_expires_in(self, idp: FakeIdP) -> None:
        idp.device_answer["expires_in"] = 22
        idp.device_script.extend(["pending"] * 50)
        error, waits = failing(idp, LoginTimeout)
        # Polls at 5, 10, 15, 20; the next would land at 25, past the deadline: no poll.
        assert [5.0, 5.0, 5.0, 5.0] == waits.waits
        assert 4 == polls(idp)
        assert isinstance(error, TimeoutError)

    def test_timeout_shortens_the_deadline(self, idp: FakeIdP) -> None:
        idp.device_script.extend(["pending"] * 50)
        _, waits = failing(idp, LoginTimeout, timeout=12)
        assert [5.0, 5.0] == waits.waits

    def test_a_clock_that_never_moves_still_ends(self, idp: FakeIdP) -> None:
        idp.device_answer["expires_in"] = 30
        idp.device_script.extend(["pending"] * 100)
        clock = FakeClock(1e9)
        with pytest.raises(LoginTimeout):
            device_login(
                discover(idp.issuer),
                client_id=CLIENT_ID,
                on_prompt=lambda prompt: None,
                clock=clock,
                sleep=lambda seconds: None,
            )
        assert polls(idp) <= 31

    def test_tampered_id_token(self, idp: FakeIdP) -> None:
        idp.id_token_claims = {"aud": "someone-else"}
        error, _ = failing(idp, IdTokenInvalid)
        assert "audience" == error.reason

    def test_no_device_endpoint(self, idp: FakeIdP) -> None:
        idp.metadata["device_authorization_endpoint"] = None
        error, _ = failing(idp, AuthError)
        assert "missing_endpoint" == error.reason
        assert [] == idp.device_requests

    def test_no_secret_in_errors_or_logs(self, idp: FakeIdP) -> None:
        texts: list[str] = []
        with capture_logs() as events:
            for step in ((400, {"error": "access_denied"}), (503, {}), "ok"):
                idp.device_script.clear()
                idp.device_script.append(step)
                idp.device_script.extend([(400, {"error": "expired_token"})])
                try:
                    result, _, prompts = run(idp)
                    texts += [repr(result), repr(prompts)]
                except AuthError as error:
                    texts += [str(error), repr(error), error.reason]
        text = "\n".join(texts) + repr(events)
        assert {"authfsm.login.started", "authfsm.login.failed"} <= {e["event"] for e in events}
        for secret in (*idp.secrets, idp.device_answer["device_code"]):
            assert secret not in text


def reply(status: int, body: bytes) -> Reply:
    return Reply(status=status, body=body)


class TestDeviceAuthorizationAnswer:
    """parse_device_authorization: what the provider's first answer must look like (pure)."""

    GOOD = (
        b'{"device_code": "d", "user_code": "ABCD", "verification_uri": "https://x/device", '
        b'"expires_in": 600}'
    )

    def test_defaults(self) -> None:
        authorization = parse_device_authorization(reply(200, self.GOOD))
        assert (5.0, 600.0, None) == (
            authorization.interval,
            authorization.expires_in,
            authorization.verification_uri_complete,
        )

    def test_googles_older_field_name(self) -> None:
        body = b'{"device_code": "d", "user_code": "A", "verification_url": "https://x/d"}'
        authorization = parse_device_authorization(reply(200, body))
        assert ("https://x/d", 1800.0) == (
            authorization.verification_uri,
            authorization.expires_in,
        )

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (b"[]", "invalid_response:JSON object"),
            (
                b'{"user_code": "A", "verification_uri": "https://x"}',
                "invalid_response:device_code",
            ),
            (
                b'{"device_code": "d", "user_code": "\\u001b[31mA", "verification_uri": "https://x"}',
                "invalid_response:user_code",
            ),
            (
                b'{"device_code": "d", "user_code": "A", "verification_uri": "javascript:x"}',
                "invalid_response:verification_uri",
            ),
            (
                b'{"device_code": "d", "user_code": "A", "verification_uri": "https://x", '
                b'"interval": -1}',
                "invalid_response:interval",
            ),
        ],
    )
    def test_malformed(self, body: bytes, reason: str) -> None:
        with pytest.raises(TokenRequestFailed) as caught:
            parse_device_authorization(reply(200, body))
        assert reason == caught.value.reason

    def test_errors(self) -> None:
        with pytest.raises(ProviderError) as caught:
            parse_device_authorization(reply(400, b'{"error": "invalid_scope"}'))
        assert "invalid_scope" == caught.value.reason
        with pytest.raises(TokenRequestFailed) as failed:
            parse_device_authorization(reply(502, b"bad gateway"))
        assert "http_502" == failed.value.reason
        with pytest.raises(TokenRequestFailed) as network:
            parse_device_authorization(TransientFailure(reason="network:ConnectError"))
        assert "network:ConnectError" == network.value.reason


class TestAsync:
    """device_login_async: the same rules, asyncio.sleep by default, cancellation stops polling."""

    def test_slow_down_with_an_async_sleep(self, idp: FakeIdP) -> None:
        idp.device_script.extend(["slow_down", "pending"])
        clock = FakeClock(time.time())
        waits = Waits(clock)
        result = asyncio.run(
            device_login_async(
                discover(idp.issuer),
                client_id=CLIENT_ID,
                on_prompt=lambda prompt: None,
                clock=clock,
                sleep=waits.async_sleep,
                jitter=0,
            )
        )
        assert [5.0, 10.0, 10.0] == waits.waits
        assert result.identity is not None
        assert result.identity.verified

    def test_cancellation_stops_polling(self, idp: FakeIdP) -> None:
        idp.device_answer["interval"] = 1
        idp.device_script.extend(["pending"] * 100)
        metadata = discover(idp.issuer)

        async def main() -> None:
            task = asyncio.create_task(
                device_login_async(
                    metadata, client_id=CLIENT_ID, on_prompt=lambda prompt: None, jitter=0
                )
            )
            for _ in range(300):
                if polls(idp) >= 1:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        settled = polls(idp)
        assert 1 <= settled <= 2
