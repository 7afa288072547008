"""The real OpenID provider fixture (tests/oidc_provider.py) against plain httpx, no authfsm code:
discovery, authorization code + PKCE to a loopback receiver, rotation, reuse revoking the grant,
the device flow, and access_denied from every Cancel/Abort the development pages offer."""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode, urlsplit

import httpx
import jwt
import pytest

from .oidc_provider import (
    DEVICE_CODE_GRANT,
    LOOPBACK_REDIRECT_URI,
    PUBLIC_CLIENT_ID,
    InteractionError,
    OidcProvider,
    _oidc_provider,  # noqa: F401 - fixture
    install_folder,
    installed_modules,
    pinned_version,
    running_oidc_provider,
)

TIMEOUT = 10.0


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class _Receiver(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        body = b"You can close this window."
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def one_shot_receiver() -> Iterator[tuple[str, list[str]]]:
    """A loopback redirect_uri that answers one GET: (its URL, the request paths it saw)."""
    seen: list[str] = []
    handler = type("Receiver", (_Receiver,), {"seen": seen})
    with http.server.HTTPServer(("127.0.0.1", 0), handler) as server:
        server.timeout = TIMEOUT
        thread = threading.Thread(target=server.handle_request, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}/callback", seen
        thread.join(TIMEOUT)


def authorization_request(
    provider: OidcProvider, redirect_uri: str, challenge: str, state: str, **extra: str
) -> str:
    query = {
        "client_id": PUBLIC_CLIENT_ID,
        "response_type": "code",
        "redirect_uri": redirect_uri,
        "scope": "openid offline_access",
        "prompt": "consent",  # offline_access needs it in the code flow
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    return f"{provider.authorization_url}?{urlencode(query)}"


def token_call(provider: OidcProvider, **data: str) -> httpx.Response:
    return httpx.post(
        provider.token_url, data={"client_id": PUBLIC_CLIENT_ID, **data}, timeout=TIMEOUT
    )


def refresh(provider: OidcProvider, refresh_token: str) -> httpx.Response:
    return token_call(provider, grant_type="refresh_token", refresh_token=refresh_token)


def id_token_claims(provider: OidcProvider, id_token: str) -> dict[str, object]:
    """The id_token's claims, its signature checked against the provider's JWKS."""
    key = jwt.PyJWKClient(str(provider.metadata["jwks_uri"])).get_signing_key_from_jwt(id_token)
    return dict(
        jwt.decode(
            id_token, key.key, algorithms=["RS256"], audience=PUBLIC_CLIENT_ID,
            issuer=provider.issuer,
        )
    )  # fmt: skip


def logged_in(provider: OidcProvider, login: str) -> dict[str, Any]:
    """A code + PKCE login of ``login`` through a loopback receiver; the token response."""
    verifier, challenge = pkce_pair()
    with one_shot_receiver() as (redirect_uri, _seen):
        request = authorization_request(provider, redirect_uri, challenge, state="s")
        params = provider.authorize(request, login=login).params
    response = token_call(
        provider,
        grant_type="authorization_code",
        code=params["code"],
        redirect_uri=redirect_uri,
        code_verifier=verifier,
    )
    assert 200 == response.status_code, response.text
    return dict(response.json())


def test_discovery_names_the_issuer_and_the_flows(oidc_provider: OidcProvider) -> None:
    response = httpx.get(f"{oidc_provider.url}/.well-known/openid-configuration", timeout=TIMEOUT)

    metadata = response.json()
    assert (200, oidc_provider.issuer) == (response.status_code, metadata["issuer"])
    assert f"http://127.0.0.1:{oidc_provider.port}" == oidc_provider.issuer
    assert ["S256"] == metadata["code_challenge_methods_supported"]
    assert {"authorization_code", "refresh_token", DEVICE_CODE_GRANT} <= set(
        metadata["grant_types_supported"]
    )
    assert metadata["authorization_response_iss_parameter_supported"] is True
    for name in ("token", "device_authorization", "revocation", "introspection"):
        assert oidc_provider.endpoint(name).startswith(oidc_provider.issuer + "/")
    assert 0 < oidc_provider.startup_seconds < 20


def test_code_flow_then_rotation_then_reuse_revokes_the_grant(
    oidc_provider: OidcProvider,
) -> None:
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    with one_shot_receiver() as (redirect_uri, seen):
        request = authorization_request(oidc_provider, redirect_uri, challenge, state)
        redirect = oidc_provider.authorize(request, login="carol")

    assert redirect.url.startswith(redirect_uri + "?")  # another port than the registered URI's
    params = redirect.params
    assert {"code", "state", "iss"} == set(params)
    assert (state, oidc_provider.issuer) == (params["state"], params["iss"])
    assert redirect.response is not None
    assert (200, "You can close this window.") == (
        redirect.response.status_code,
        redirect.response.text,
    )
    assert [urlsplit(redirect.url).path + "?" + urlsplit(redirect.url).query] == seen

    response = token_call(
        oidc_provider,
        grant_type="authorization_code",
        code=params["code"],
        redirect_uri=redirect_uri,
        code_verifier=verifier,
    )
    assert 200 == response.status_code, response.text
    tokens = response.json()
    assert {
        "access_token",
        "refresh_token",
        "id_token",
        "expires_in",
        "scope",
        "token_type",
    } == set(tokens)
    assert (60, "Bearer", "openid offline_access") == (
        tokens["expires_in"],
        tokens["token_type"],
        tokens["scope"],
    )
    claims = id_token_claims(oidc_provider, tokens["id_token"])
    assert ("carol", oidc_provider.issuer) == (claims["sub"], claims["iss"])

    rotated = refresh(oidc_provider, tokens["refresh_token"])
    assert 200 == rotated.status_code, rotated.text
    successor = rotated.json()
    assert successor["refresh_token"] != tokens["refresh_token"]
    assert oidc_provider.is_active(successor["refresh_token"])
    assert oidc_provider.is_active(successor["access_token"])

    revoked_before = len(oidc_provider.revoked_grants)
    replay = refresh(oidc_provider, tokens["refresh_token"])
    assert (400, "invalid_grant") == (replay.status_code, replay.json()["error"])
    oidc_provider.wait_for_revocations(revoked_before + 1)

    after = refresh(oidc_provider, successor["refresh_token"])
    assert (400, "invalid_grant") == (after.status_code, after.json()["error"])
    assert (False, False) == (
        oidc_provider.is_active(successor["refresh_token"]),
        oidc_provider.is_active(successor["access_token"]),
    )
    assert revoked_before + 1 == len(oidc_provider.revoked_grants)


def test_other_grants_survive_a_revocation(oidc_provider: OidcProvider) -> None:
    bystander = logged_in(oidc_provider, "dave")
    victim = logged_in(oidc_provider, "erin")
    assert 200 == refresh(oidc_provider, victim["refresh_token"]).status_code
    assert 400 == refresh(oidc_provider, victim["refresh_token"]).status_code  # reuse

    assert oidc_provider.is_active(bystander["refresh_token"])
    assert 200 == refresh(oidc_provider, bystander["refresh_token"]).status_code


def test_pkce_is_required(oidc_provider: OidcProvider) -> None:
    query = urlencode(
        {
            "client_id": PUBLIC_CLIENT_ID,
            "response_type": "code",
            "redirect_uri": "http://127.0.0.1:9/callback",
            "scope": "openid",
            "state": "s",
        }
    )
    redirect = oidc_provider.authorize(
        f"{oidc_provider.authorization_url}?{query}", follow_final_redirect=False
    )

    assert {
        "error": "invalid_request",
        "error_description": (
            "Authorization Server policy requires PKCE to be used for this request"
        ),
        "state": "s",
        "iss": oidc_provider.issuer,
    } == redirect.params
    assert redirect.response is None


@pytest.mark.parametrize("at", ["login", "consent"])
def test_cancel_is_access_denied(
    oidc_provider: OidcProvider, at: Literal["login", "consent"]
) -> None:
    _verifier, challenge = pkce_pair()
    request = authorization_request(oidc_provider, LOOPBACK_REDIRECT_URI, challenge, state="s1")
    if at == "consent":
        redirect = oidc_provider.authorize(request, consent=False, follow_final_redirect=False)
    else:
        redirect = oidc_provider.deny(request, at="login", follow_final_redirect=False)

    assert {
        "error": "access_denied",
        "error_description": "End-User aborted interaction",
        "state": "s1",
        "iss": oidc_provider.issuer,
    } == redirect.params


def device_authorization(provider: OidcProvider) -> dict[str, object]:
    response = httpx.post(
        provider.device_authorization_url,
        data={"client_id": PUBLIC_CLIENT_ID, "scope": "openid offline_access"},
        timeout=TIMEOUT,
    )
    assert 200 == response.status_code, response.text
    return dict(response.json())


def poll(provider: OidcProvider, device_code: object) -> httpx.Response:
    return token_call(provider, grant_type=DEVICE_CODE_GRANT, device_code=str(device_code))


@pytest.mark.parametrize("entry", ["user_code", "verification_uri_complete"])
def test_device_flow(oidc_provider: OidcProvider, entry: str) -> None:
    grant = device_authorization(oidc_provider)
    assert {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
    } == set(grant)  # no interval: a client must default to 5 s
    assert f"{oidc_provider.issuer}/device" == grant["verification_uri"]

    for _ in range(2):  # an immediate second poll is pending too, never slow_down
        pending = poll(oidc_provider, grant["device_code"])
        assert (400, "authorization_pending") == (pending.status_code, pending.json()["error"])

    page = oidc_provider.approve_device(str(grant[entry]), login="frank")
    assert 200 == page.status_code

    response = poll(oidc_provider, grant["device_code"])
    assert 200 == response.status_code, response.text
    tokens = response.json()
    assert {"access_token", "refresh_token", "id_token"} <= set(tokens)
    assert "frank" == id_token_claims(oidc_provider, tokens["id_token"])["sub"]
    assert 200 == refresh(oidc_provider, tokens["refresh_token"]).status_code


@pytest.mark.parametrize("at", ["confirm", "login", "consent"])
def test_device_abort_is_access_denied(
    oidc_provider: OidcProvider, at: Literal["confirm", "login", "consent"]
) -> None:
    grant = device_authorization(oidc_provider)

    oidc_provider.deny_device(str(grant["user_code"]), at=at)

    response = poll(oidc_provider, grant["device_code"])
    assert (400, "access_denied") == (response.status_code, response.json()["error"])


def test_unknown_user_code_is_an_interaction_error(oidc_provider: OidcProvider) -> None:
    with pytest.raises(InteractionError, match="refused the user code"):
        oidc_provider.approve_device("BCDF-GHJK")


def test_stop_ends_and_reaps_only_its_own_process() -> None:
    with running_oidc_provider(access_token_ttl=5) as provider:
        assert provider.process is not None
        pid = provider.process.pid
        assert 5 == logged_in(provider, "gina")["expires_in"]
        other = OidcProvider().start()  # a second one, to see it untouched
    try:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone and reaped (a zombie would still accept signal 0)
        assert other.process is not None
        assert other.process.poll() is None
        assert "issuer" in httpx.get(f"{other.url}/.well-known/openid-configuration").json()
    finally:
        other.stop()


def test_a_missing_install_fails_and_names_the_script(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AUTHFSM_CI_CACHE", str(tmp_path))
    assert tmp_path / f"oidc-provider-{pinned_version()}" == install_folder()

    with pytest.raises(pytest.fail.Exception, match=r"\.ci/oidc-deps"):
        installed_modules()
