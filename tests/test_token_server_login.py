"""Tests for TokenServer's login side (discovery, /authorize, device flow, JWKS), over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import sys
from urllib.parse import parse_qsl, urlsplit

import httpx
import jwt
import pytest

from authfsm.engine import decode_jwt_claims
from authfsm.testing import (
    Call,
    DeviceAuthorization,
    FakeClock,
    ScriptedRedirect,
    ScriptedResponse,
    TokenServer,
)

START = 1_800_000_000.0
CLIENT = "test-client"
REDIRECT = "http://127.0.0.1:4567/auth/callback"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@pytest.fixture
def clock():
    return FakeClock(START)


@pytest.fixture
def server(clock):
    with TokenServer(clock=clock) as running:
        yield running


@pytest.fixture
def live():
    """A server on the real clock, for verifying id_tokens with PyJWT's own time checks."""
    with TokenServer() as running:
        yield running


@pytest.fixture
def client():
    with httpx.Client(timeout=2.0) as http:
        yield http


def pkce():
    """A fresh (verifier, S256 challenge) pair, as RFC 7636 §4.1-4.2 makes them."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize(client, server, challenge, **overrides):
    """GET /authorize with a complete, valid request; an override of None drops that parameter."""
    params = {
        "response_type": "code",
        "client_id": CLIENT,
        "redirect_uri": REDIRECT,
        "state": "state-123",
        "nonce": "nonce-456",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "scope": "openid offline_access",
    }
    params.update(overrides)
    return client.get(
        server.authorize_url, params={k: v for k, v in params.items() if v is not None}
    )


def redirected(response, base=REDIRECT):
    """The query parameters of a 302 to ``base``."""
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(base + "?")
    return dict(parse_qsl(urlsplit(location).query, keep_blank_values=True))


def exchange(client, server, code, verifier, **overrides):
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
        "client_id": CLIENT,
    }
    data.update(overrides)
    return client.post(server.token_url, data={k: v for k, v in data.items() if v is not None})


def log_in(client, server, nonce="nonce-456"):
    """A whole authorization-code login; returns the token response body."""
    verifier, challenge = pkce()
    code = redirected(authorize(client, server, challenge, nonce=nonce))["code"]
    response = exchange(client, server, code, verifier)
    assert response.status_code == 200
    return response.json()


def start_device(client, server, **extra):
    response = client.post(
        server.device_authorization_url, data={"client_id": CLIENT, "scope": "openid", **extra}
    )
    assert response.status_code == 200
    return response.json()


def poll(client, server, device_code):
    return client.post(
        server.token_url,
        data={"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": CLIENT},
    )


def error_of(response):
    return response.status_code, response.json()["error"]


class NonceMismatch(ValueError):
    pass


def verify(client, server, id_token, *, nonce=None):
    """Verify an id_token the way an RFC client does: JWKS by kid, alg, aud, iss, exp, nonce."""
    keys = jwt.PyJWKSet.from_dict(client.get(server.jwks_url).json())
    kid = jwt.get_unverified_header(id_token).get("kid")
    key = keys[kid] if kid is not None else keys.keys[0]
    claims = jwt.decode(
        id_token,
        key,
        algorithms=[server.id_token_alg],
        audience=CLIENT,
        issuer=server.issuer,
        options={"require": ["iss", "sub", "aud", "exp", "iat"]},
    )
    if nonce is not None and not secrets.compare_digest(str(claims.get("nonce")), nonce):
        raise NonceMismatch("nonce")
    return claims


class TestDiscovery:
    """Both well-known documents describe the server, and can be broken on purpose."""

    @pytest.mark.parametrize(
        "path", ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"]
    )
    def test_document(self, server, client, path):
        """The document names every endpoint, S256 only, code only, and the iss parameter."""
        response = client.get(server.url + path)

        document = response.json()
        assert (response.status_code, server.issuer) == (200, server.url)
        expected = {
            "issuer": server.url,
            "authorization_endpoint": server.url + "/authorize",
            "token_endpoint": server.token_url,
            "device_authorization_endpoint": server.url + "/oauth/device",
            "revocation_endpoint": server.revoke_url,
            "jwks_uri": server.url + "/jwks",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_GRANT],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "authorization_response_iss_parameter_supported": True,
            "token_endpoint_auth_methods_supported": ["none"],
        }
        assert expected == {key: document.get(key) for key in expected}
        assert document["subject_types_supported"] == ["public"]
        assert document == server.discovery_document()
        assert server.url + path in (server.openid_configuration_url, server.oauth_metadata_url)

    def test_confidential_client_and_rs256(self, clock, client):
        """A client secret and RS256 show in the auth methods and signing algorithms."""
        with TokenServer(clock=clock, client_secret="s3cret", id_token_alg="RS256") as idp:
            document = client.get(idp.openid_configuration_url).json()

        assert ["client_secret_basic", "client_secret_post"] == document[
            "token_endpoint_auth_methods_supported"
        ]
        assert ["RS256"] == document["id_token_signing_alg_values_supported"]

    def test_patch_and_reset(self, server, client):
        """patch_discovery() serves a wrong issuer and drops fields; reset_discovery() undoes it."""
        server.patch_discovery(issuer="https://evil.example", omit=["jwks_uri"])
        server.patch_discovery(code_challenge_methods_supported=["plain"])

        broken = client.get(server.openid_configuration_url).json()
        metadata = client.get(server.oauth_metadata_url).json()
        server.reset_discovery()
        fixed = client.get(server.openid_configuration_url).json()

        assert (broken["issuer"], broken["code_challenge_methods_supported"]) == (
            "https://evil.example",
            ["plain"],
        )
        assert "jwks_uri" not in broken
        assert broken == metadata
        assert (fixed["issuer"], fixed["jwks_uri"]) == (server.url, server.jwks_url)

    def test_post_refused(self, server, client):
        """Discovery is GET only."""
        assert 405 == client.post(server.openid_configuration_url).status_code


class TestAuthorize:
    """/authorize approves at once, by redirect, and refuses what RFC 6749 and RFC 7636 refuse."""

    def test_approves_with_code_state_iss(self, server, client):
        """A valid request is answered 302 to the redirect URI with code, state and iss."""
        _verifier, challenge = pkce()

        response = authorize(client, server, challenge)

        answer = redirected(response)
        assert {"code", "state", "iss"} == set(answer)
        assert (answer["state"], answer["iss"]) == ("state-123", server.issuer)
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", answer["code"])
        assert [
            Call(
                path="/authorize",
                method="GET",
                grant_type=None,
                status=302,
                outcome="authorized",
                family=None,
                at=START,
            )
        ] == server.calls

    @pytest.mark.parametrize(
        "redirect_uri",
        [
            "http://127.0.0.1:1/cb",
            "http://[::1]:65535/callback",
            "http://localhost:8080/",
            "http://127.0.0.1/cb",
            "http://127.0.0.1:4567/cb?keep=1",
        ],
    )
    def test_loopback_redirects(self, server, client, redirect_uri):
        """Any loopback host and port is accepted, and an existing query is kept."""
        _verifier, challenge = pkce()

        response = authorize(client, server, challenge, redirect_uri=redirect_uri)

        location = response.headers["Location"]
        assert (302, True) == (response.status_code, location.startswith(redirect_uri))
        assert "code" in dict(parse_qsl(urlsplit(location).query))
        if "keep=1" in redirect_uri:
            assert "keep=1&code=" in location

    @pytest.mark.parametrize(
        "redirect_uri",
        [
            None,
            "https://127.0.0.1:4567/cb",
            "http://example.com/cb",
            "http://10.0.0.1:80/cb",
            "http://127.0.0.1.evil.example/cb",
            "http://user@127.0.0.1:4567/cb",
            "http://127.0.0.1:4567/cb#frag",
            "http://127.0.0.1:notaport/cb",
            "urn:ietf:wg:oauth:2.0:oob",
        ],
    )
    def test_bad_redirect_is_a_page(self, server, client, redirect_uri):
        """A missing or non-loopback redirect URI gets a 400 page, never a redirect."""
        _verifier, challenge = pkce()

        response = authorize(client, server, challenge, redirect_uri=redirect_uri)

        assert (400, None) == (response.status_code, response.headers.get("Location"))
        assert response.headers["Content-Type"].startswith("text/html")
        assert "loopback" in response.text
        assert "bad_request" == server.calls[-1].outcome

    @pytest.mark.parametrize("client_id", [None, "other-client"])
    def test_bad_client_is_a_page(self, server, client, client_id):
        """A missing or unknown client gets a 400 page, never a redirect."""
        _verifier, challenge = pkce()

        response = authorize(client, server, challenge, client_id=client_id)

        assert (400, None) == (response.status_code, response.headers.get("Location"))

    @pytest.mark.parametrize(
        ("overrides", "error"),
        [
            ({"code_challenge": None}, "invalid_request"),
            ({"code_challenge_method": None}, "invalid_request"),
            ({"code_challenge_method": "plain"}, "invalid_request"),
            ({"code_challenge": "too-short"}, "invalid_request"),
            ({"response_type": None}, "invalid_request"),
            ({"response_type": "token"}, "unsupported_response_type"),
            ({"response_mode": "fragment"}, "invalid_request"),
        ],
    )
    def test_error_redirects(self, server, client, overrides, error):
        """Missing or plain PKCE and other bad requests redirect with error, state and iss."""
        _verifier, challenge = pkce()

        answer = redirected(authorize(client, server, challenge, **overrides))

        assert (error, "state-123", server.issuer) == (
            answer["error"],
            answer["state"],
            answer["iss"],
        )
        assert "code" not in answer
        assert answer["error_description"]
        assert "authorization_error" == server.calls[-1].outcome

    def test_duplicate_parameter(self, server, client):
        """A parameter sent twice is invalid_request (RFC 6749 §3.1)."""
        _verifier, challenge = pkce()
        query = (
            f"response_type=code&client_id={CLIENT}&redirect_uri={REDIRECT}"
            f"&code_challenge={challenge}&code_challenge_method=S256&scope=openid&scope=email"
        )

        answer = redirected(client.get(f"{server.authorize_url}?{query}"))

        assert "invalid_request" == answer["error"]

    def test_post_form(self, server, client):
        """The request may also be POSTed as a form (OpenID Connect Core §3.1.2.1)."""
        _verifier, challenge = pkce()

        response = client.post(
            server.authorize_url,
            data={
                "response_type": "code",
                "client_id": CLIENT,
                "redirect_uri": REDIRECT,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
        )

        answer = redirected(response)
        assert {"code", "iss"} == set(answer)

    def test_scripted_access_denied(self, server, client):
        """A scripted access_denied redirects with the description and state, and no code."""
        server.script_authorization(
            ScriptedRedirect(error="access_denied", error_description="the user said no")
        )
        _verifier, challenge = pkce()

        first = redirected(authorize(client, server, challenge))
        second = redirected(authorize(client, server, challenge))

        assert {
            "error": "access_denied",
            "error_description": "the user said no",
            "state": "state-123",
            "iss": server.issuer,
        } == first
        assert "code" in second

    def test_scripted_wrong_state_and_iss(self, server, client):
        """Scripts send a wrong state, a wrong iss or none, each with a valid code."""
        server.script_authorization(
            ScriptedRedirect(state="forged"),
            ScriptedRedirect(iss="http://mix-up.example"),
            ScriptedRedirect(omit_iss=True),
        )
        _verifier, challenge = pkce()

        answers = [redirected(authorize(client, server, challenge)) for _ in range(3)]

        assert [
            ("forged", server.issuer),
            ("state-123", "http://mix-up.example"),
            ("state-123", None),
        ] == [(answer["state"], answer.get("iss")) for answer in answers]
        assert all("code" in answer for answer in answers)

    def test_script_waits_for_a_valid_request(self, server, client):
        """An invalid request gets its own error and leaves the script for the next one."""
        server.script_authorization(ScriptedRedirect(error="access_denied"))
        _verifier, challenge = pkce()

        invalid = redirected(authorize(client, server, challenge, code_challenge_method="plain"))
        valid = redirected(authorize(client, server, challenge))

        assert ("invalid_request", "access_denied") == (invalid["error"], valid["error"])

    def test_scripted_redirect_validation(self, server):
        """ScriptedRedirect refuses contradictions; script_authorization() takes only them."""
        with pytest.raises(ValueError, match="needs an error"):
            ScriptedRedirect(error_description="why")
        with pytest.raises(ValueError, match="not both"):
            ScriptedRedirect(iss="x", omit_iss=True)
        with pytest.raises(TypeError):
            server.script_authorization("access_denied")

    def test_login_as(self, live, client):
        """login_as() picks the approved user; its claims reach the id_token."""
        live.login_as("alice", "acme", codex_claims=True)

        claims = verify(client, live, log_in(client, live)["id_token"], nonce="nonce-456")

        assert ("alice", {"chatgpt_account_id": "acme", "chatgpt_user_id": "alice"}) == (
            claims["sub"],
            claims["https://api.openai.com/auth"],
        )


class TestCodeExchange:
    """grant_type=authorization_code checks the code, the redirect URI and the PKCE verifier."""

    def test_exchange_starts_a_family(self, server, client):
        """A good exchange returns every field, starts a family, and refreshes like issue()."""
        verifier, challenge = pkce()
        code = redirected(authorize(client, server, challenge))["code"]

        response = exchange(client, server, code, verifier)

        body = response.json()
        assert {
            "access_token",
            "refresh_token",
            "id_token",
            "expires_in",
            "token_type",
            "scope",
        } == set(body)
        assert (body["token_type"], body["expires_in"], body["scope"]) == (
            "Bearer",
            3600,
            "openid offline_access",
        )
        assert "family-1" == server.family_id(body["refresh_token"])
        assert ("code_exchanged", "authorization_code") == (
            server.calls[-1].outcome,
            server.calls[-1].grant_type,
        )
        refreshed = client.post(
            server.token_url,
            data={
                "grant_type": "refresh_token",
                "refresh_token": body["refresh_token"],
                "client_id": CLIENT,
            },
        )
        assert (200, 1) == (refreshed.status_code, server.rotations)
        assert 200 == client.get(server.resource_url, headers=_bearer(refreshed)).status_code

    def test_wrong_verifier(self, server, client):
        """A verifier that does not hash to the challenge is invalid_grant; the code is spent."""
        verifier, challenge = pkce()
        other, _ = pkce()
        code = redirected(authorize(client, server, challenge))["code"]

        wrong = exchange(client, server, code, other)
        retry = exchange(client, server, code, verifier)

        assert (400, "invalid_grant") == error_of(wrong)
        assert "PKCE" in wrong.json()["error_description"]
        assert (400, "invalid_grant") == error_of(retry)

    @pytest.mark.parametrize(
        "overrides",
        [
            {"code_verifier": None},
            {"code_verifier": "short"},
            {"redirect_uri": "http://127.0.0.1:4568/auth/callback"},
            {"redirect_uri": None},
            {"code": "no-such-code"},
        ],
    )
    def test_refusals(self, server, client, overrides):
        """No verifier, a malformed one, another redirect URI or an unknown code: invalid_grant."""
        verifier, challenge = pkce()
        code = redirected(authorize(client, server, challenge))["code"]

        response = exchange(client, server, overrides.pop("code", code), verifier, **overrides)

        assert (400, "invalid_grant") == error_of(response)
        assert "invalid_grant" == server.calls[-1].outcome

    def test_reuse_revokes(self, server, client):
        """A code used twice is refused, and the family its first use started is revoked."""
        verifier, challenge = pkce()
        code = redirected(authorize(client, server, challenge))["code"]
        body = exchange(client, server, code, verifier).json()

        again = exchange(client, server, code, verifier)

        assert (400, "invalid_grant") == error_of(again)
        assert "code_reused" == server.calls[-1].outcome
        assert not server.family_alive(body["refresh_token"])

    def test_expired_code(self, server, client, clock):
        """A code is good for authorization_code_ttl seconds of the server clock."""
        verifier, challenge = pkce()
        code = redirected(authorize(client, server, challenge))["code"]
        clock.advance(60)

        assert (400, "invalid_grant") == error_of(exchange(client, server, code, verifier))

    def test_client_must_match(self, server, client):
        """Another client_id is invalid_client, as on the refresh grant."""
        verifier, challenge = pkce()
        code = redirected(authorize(client, server, challenge))["code"]

        response = exchange(client, server, code, verifier, client_id="other")

        assert (401, "invalid_client") == error_of(response)

    def test_missing_code(self, server, client):
        """An exchange without a code is invalid_request."""
        response = exchange(client, server, None, "v" * 43)

        assert (400, "invalid_request") == error_of(response)


class TestDeviceFlow:
    """RFC 8628: device authorization, polling states, scripted answers, counted polls."""

    def test_authorization_response(self, server, client):
        """The response has every RFC 8628 §3.2 field; the user code is XXXX-XXXX."""
        body = start_device(client, server)

        assert {
            "device_code",
            "user_code",
            "verification_uri",
            "verification_uri_complete",
            "expires_in",
            "interval",
        } == set(body)
        assert re.fullmatch(r"[B-DF-HJ-NP-TV-XZ]{4}-[B-DF-HJ-NP-TV-XZ]{4}", body["user_code"])
        assert (body["verification_uri"], body["expires_in"], body["interval"]) == (
            server.device_verification_url,
            600,
            5,
        )
        assert body["verification_uri_complete"] == (
            f"{server.device_verification_url}?user_code={body['user_code']}"
        )
        page = client.get(body["verification_uri_complete"])
        assert (200, True) == (page.status_code, "approve_device" in page.text)
        assert body["user_code"] not in page.text

    def test_interval_knobs(self, clock, client):
        """device_interval sets the interval, and None leaves it out (clients then use 5 s)."""
        with TokenServer(clock=clock, device_interval=2) as idp:
            assert 2 == start_device(client, idp)["interval"]
            idp.device_interval = None
            body = start_device(client, idp)
            assert "interval" not in body
            assert (None, 5.0) == (
                idp.device_authorization(body["user_code"]).interval,
                idp.device_authorization(body["user_code"]).required_interval,
            )
        with pytest.raises(ValueError, match="device_interval"):
            TokenServer(device_interval=-1)

    def test_pending_then_approved(self, server, client, clock):
        """authorization_pending until approved, then tokens once, then invalid_grant."""
        body = start_device(client, server)
        pending = poll(client, server, body["device_code"])
        clock.advance(5)
        server.approve_device(body["user_code"].lower().replace("-", ""), user_id="bob")
        clock.advance(5)

        granted = poll(client, server, body["device_code"])
        again = poll(client, server, body["device_code"])

        assert (400, "authorization_pending") == error_of(pending)
        tokens = granted.json()
        assert (200, "openid") == (granted.status_code, tokens["scope"])
        assert {"access_token", "refresh_token", "id_token", "expires_in", "token_type"} <= set(
            tokens
        )
        assert "bob" == decode_jwt_claims(tokens["id_token"])["sub"]
        assert (400, "invalid_grant") == error_of(again)
        assert DeviceAuthorization(
            user_code=body["user_code"],
            client_id=CLIENT,
            scope="openid",
            status="redeemed",
            issued_at=START,
            expires_at=START + 600,
            interval=5.0,
            required_interval=5.0,
            polls=(START, START + 10, START + 10),
        ) == server.device_authorization(body["user_code"])
        assert 3 == server.device_polls
        assert ["authorization_pending", "device_exchanged", "invalid_grant"] == [
            call.outcome for call in server.calls if call.grant_type == DEVICE_GRANT
        ]

    def test_denied(self, server, client):
        """After deny_device() every poll is access_denied, and it cannot be approved."""
        body = start_device(client, server)
        server.deny_device(body["user_code"])

        answers = [error_of(poll(client, server, body["device_code"])) for _ in range(2)]

        assert [(400, "access_denied")] * 2 == answers
        with pytest.raises(ValueError, match="denied"):
            server.approve_device(body["user_code"])

    def test_expired(self, server, client, clock):
        """After expires_in on the server clock, polls are expired_token, approved or not."""
        body = start_device(client, server)
        server.approve_device(body["user_code"])
        clock.advance(600)

        assert (400, "expired_token") == error_of(poll(client, server, body["device_code"]))
        assert "expired" == server.device_authorization(body["user_code"]).status
        other = start_device(client, server)
        clock.advance(600)
        with pytest.raises(ValueError, match="expired"):
            server.approve_device(other["user_code"])

    def test_scripted_slow_down(self, server, client):
        """Scripted answers come first, in order; each slow_down adds 5 s to the interval."""
        body = start_device(client, server)
        server.script_device(
            body["user_code"],
            "slow_down",
            "slow_down",
            ScriptedResponse(503, json={"error": "temporarily_unavailable"}),
        )
        server.approve_device(body["user_code"])

        answers = [poll(client, server, body["device_code"]) for _ in range(4)]

        assert [400, 400, 503, 200] == [answer.status_code for answer in answers]
        assert ["slow_down", "slow_down", "temporarily_unavailable"] == [
            answer.json()["error"] for answer in answers[:3]
        ]
        assert 15.0 == server.device_authorization(body["user_code"]).required_interval

    def test_enforced_interval(self, clock, client):
        """With enforce_device_interval, a poll sooner than the interval is slow_down."""
        with TokenServer(clock=clock, enforce_device_interval=True) as idp:
            body = start_device(client, idp)
            first = poll(client, idp, body["device_code"])
            clock.advance(4)
            early = poll(client, idp, body["device_code"])
            clock.advance(5)  # the interval is now 10 s
            still_early = poll(client, idp, body["device_code"])
            clock.advance(15)
            on_time = poll(client, idp, body["device_code"])

            state = idp.device_authorization(body["user_code"])

        assert [
            "authorization_pending",
            "slow_down",
            "slow_down",
            "authorization_pending",
        ] == [error_of(answer)[1] for answer in (first, early, still_early, on_time)]
        assert (15.0, (START, START + 4, START + 9, START + 24)) == (
            state.required_interval,
            state.polls,
        )

    def test_refusals(self, server, client):
        """Unknown device codes, missing ones, unknown user codes and bad clients are refused."""
        assert (400, "invalid_grant") == error_of(poll(client, server, "nope"))
        missing = client.post(
            server.token_url, data={"grant_type": DEVICE_GRANT, "client_id": CLIENT}
        )
        assert (400, "invalid_request") == error_of(missing)
        bad_client = client.post(server.device_authorization_url, data={"client_id": "other"})
        assert (401, "invalid_client") == error_of(bad_client)
        with pytest.raises(KeyError):
            server.approve_device("BCDF-GHJK")
        with pytest.raises(TypeError):
            server.script_device(start_device(client, server)["user_code"], 42)

    def test_counters_reset(self, server, client):
        """reset_counters() zeroes device_polls too; device_authorizations lists them all."""
        body = start_device(client, server)
        poll(client, server, body["device_code"])

        server.reset_counters()

        assert (0, [body["user_code"]]) == (
            server.device_polls,
            [device.user_code for device in server.device_authorizations],
        )


class TestIdTokens:
    """id_tokens of logins are signed, verify against /jwks, and can be broken on purpose."""

    def test_code_login_verifies(self, live, client):
        """The code grant's id_token verifies with PyJWT and carries the request's nonce."""
        body = log_in(client, live, nonce="n-1")

        claims = verify(client, live, body["id_token"], nonce="n-1")

        header = jwt.get_unverified_header(body["id_token"])
        assert (header["alg"], header["kid"]) == ("ES256", live.signing_kid)
        assert {"iss", "sub", "aud", "exp", "iat", "auth_time", "nonce"} <= set(claims)
        assert (claims["aud"], claims["sub"]) == (CLIENT, "user-1")
        assert decode_jwt_claims(body["id_token"]) == claims
        assert {"keys"} == set(client.get(live.jwks_url).json())
        assert all("d" not in key for key in live.jwks()["keys"])

    def test_refresh_and_device_tokens_are_signed(self, live, client):
        """Refreshes of a login family and device logins sign too; a refresh drops the nonce."""
        body = log_in(client, live)
        refreshed = client.post(
            live.token_url,
            data={
                "grant_type": "refresh_token",
                "refresh_token": body["refresh_token"],
                "client_id": CLIENT,
            },
        ).json()
        device = start_device(client, live)
        live.approve_device(device["user_code"])
        device_tokens = poll(client, live, device["device_code"]).json()

        first = verify(client, live, body["id_token"])
        second = verify(client, live, refreshed["id_token"])
        third = verify(client, live, device_tokens["id_token"])

        assert ("nonce" in first, "nonce" in second, "nonce" in third) == (True, False, False)
        assert first["auth_time"] == second["auth_time"]

    def test_rs256(self, client):
        """id_token_alg="RS256" signs with RSA and publishes an RSA key."""
        with TokenServer(id_token_alg="RS256") as idp:
            claims = verify(client, idp, log_in(client, idp)["id_token"])
            assert ["RSA"] == [key["kty"] for key in idp.jwks()["keys"]]
        assert "user-1" == claims["sub"]
        with pytest.raises(ValueError, match="ES256 or RS256"):
            TokenServer(id_token_alg="HS256")

    def test_issue_signed(self, live, client):
        """issue(signed=True) signs; plain issue() keeps its unsigned id_tokens."""
        signed = live.issue(signed=True, user_id="carol")
        unsigned = live.issue()

        assert "carol" == verify(client, live, signed.id_token)["sub"]
        assert "none" == jwt.get_unverified_header(unsigned.id_token)["alg"]
        assert "nonce" not in decode_jwt_claims(signed.id_token)

    @pytest.mark.parametrize(
        ("tamper", "error"),
        [
            ("wrong_key", jwt.InvalidSignatureError),
            ("unknown_kid", KeyError),
            ("alg_none", jwt.InvalidAlgorithmError),
            ("wrong_aud", jwt.InvalidAudienceError),
            ("wrong_iss", jwt.InvalidIssuerError),
            ("wrong_nonce", NonceMismatch),
            ("missing_nonce", NonceMismatch),
            ("expired", jwt.ExpiredSignatureError),
        ],
    )
    def test_tampered(self, live, client, tamper, error):
        """Each id_token_tamper makes verification fail; None restores good tokens."""
        live.id_token_tamper = tamper

        token = log_in(client, live, nonce="n-2")["id_token"]

        with pytest.raises(error):
            verify(client, live, token, nonce="n-2")
        assert decode_jwt_claims(token)["sub"] == "user-1"
        live.id_token_tamper = None
        verify(client, live, log_in(client, live, nonce="n-3")["id_token"], nonce="n-3")

    def test_tamper_validation(self, live):
        """An unknown tamper is refused."""
        with pytest.raises(ValueError, match="id_token_tamper"):
            live.id_token_tamper = "wrong_everything"

    def test_key_rotation(self, live, client):
        """A kept old key still verifies old tokens; a dropped one does not."""
        old = log_in(client, live)["id_token"]
        old_kid = live.signing_kid

        new_kid = live.rotate_signing_key()
        new = log_in(client, live)["id_token"]
        assert old_kid != new_kid
        assert [new_kid, old_kid] == [key["kid"] for key in live.jwks()["keys"]]
        verify(client, live, old)
        verify(client, live, new)

        live.rotate_signing_key(keep_previous=False)
        with pytest.raises(KeyError):
            verify(client, live, old)


class TestWithoutPyJWT:
    """Without PyJWT (the login extra) the refresh side works and the login grants say why not."""

    def test_degrades(self, client, monkeypatch):
        """JWKS answers 501, a login grant 500 server_error, issue(signed=True) raises."""
        monkeypatch.setitem(sys.modules, "authfsm.testing._keys", None)
        with TokenServer() as idp:
            verifier, challenge = pkce()
            code = redirected(authorize(client, idp, challenge))["code"]

            jwks = client.get(idp.jwks_url)
            grant = exchange(client, idp, code, verifier)
            with pytest.raises(RuntimeError, match="authfsm\\[login\\]"):
                idp.issue(signed=True)
            refreshed = client.post(
                idp.token_url,
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": idp.issue().refresh_token,
                    "client_id": CLIENT,
                },
            )

        assert (501, "server_error") == error_of(jwks)
        assert (500, "server_error") == error_of(grant)
        assert "pip install" in grant.json()["error_description"]
        assert 200 == refreshed.status_code


class TestSecrets:
    """No code, state, nonce, verifier or token reaches calls, reprs or error pages."""

    def test_nothing_secret_is_shown(self, server, client):
        """After a full login and a device login, calls and reprs hold none of the secrets."""
        verifier, challenge = pkce()
        answer = redirected(
            authorize(client, server, challenge, state="s-secret", nonce="n-secret")
        )
        tokens = exchange(client, server, answer["code"], verifier).json()
        device = start_device(client, server)
        server.script_authorization(ScriptedRedirect(state="forged-secret"))

        shown = " ".join(
            [
                repr(server),
                repr(server.calls),
                repr(server.device_authorizations),
                # The server's own records of codes, devices and scripts.
                repr(list(server._codes.values())),
                repr(list(server._devices.values())),
                repr(server._redirect_script),
            ]
        )

        for secret in (
            verifier,
            challenge,
            answer["code"],
            "s-secret",
            "n-secret",
            "forged-secret",
            device["device_code"],
            tokens["access_token"],
            tokens["refresh_token"],
            tokens["id_token"],
        ):
            assert secret not in shown
        assert all("?" not in call.path for call in server.calls)

    def test_loopback_only(self, server):
        """The server listens on 127.0.0.1, and its issuer says so."""
        assert server.issuer.startswith("http://127.0.0.1:")


def _bearer(response):
    return {"Authorization": f"Bearer {response.json()['access_token']}"}
