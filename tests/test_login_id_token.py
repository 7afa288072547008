"""id_token verification: every check refuses a tampered token, and names which check failed."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from authfsm.login import (
    IdTokenInvalid,
    JwksCache,
    allowed_algorithms,
    verify_id_token,
    verify_id_token_async,
)

from .test_login_idp import CLIENT_ID, FakeIdP, ec_key, public_jwk, rsa_key, sign

ISSUER = "https://idp.example"
NOW = 1_800_000_000
NONCE = "n" * 43


def claims(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": CLIENT_ID,
        "iat": NOW - 10,
        "exp": NOW + 3600,
        "nonce": NONCE,
    }
    for name, value in changes.items():
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
    return values


JWKS = {"keys": [public_jwk(rsa_key(0), "k1")]}


def verify(token: str, jwks: Any = None, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("nonce", NONCE)
    kwargs.setdefault("now", NOW)
    return verify_id_token(token, issuer=ISSUER, client_id=CLIENT_ID, jwks=jwks or JWKS, **kwargs)


def refused(token: str, jwks: Any = None, **kwargs: Any) -> str:
    with pytest.raises(IdTokenInvalid) as caught:
        verify(token, jwks, **kwargs)
    message = str(caught.value)
    for part in (token, *token.split(".")):
        assert len(part) < 4 or part not in message
    return caught.value.reason


def b64(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).rstrip(b"=").decode()


class TestChecks:
    """Each check on its own: the good token passes, one change at a time fails."""

    def test_valid(self) -> None:
        assert "alice" == verify(sign(claims(), rsa_key(0)))["sub"]

    def test_bad_signature(self) -> None:
        assert "signature" == refused(sign(claims(), rsa_key(1)))

    def test_payload_swapped_under_a_valid_signature(self) -> None:
        header, _payload, signature = sign(claims(), rsa_key(0)).split(".")
        forged = b64(json.dumps(claims(sub="mallory")).encode())
        assert "signature" == refused(f"{header}.{forged}.{signature}")

    @pytest.mark.parametrize(
        ("changes", "reason"),
        [
            ({"iss": "https://evil.example"}, "issuer"),
            ({"iss": ISSUER + "/"}, "issuer"),
            ({"aud": "another-client"}, "audience"),
            ({"aud": None}, "audience"),
            ({"aud": [CLIENT_ID, "other"]}, "azp"),
            ({"aud": [CLIENT_ID, "other"], "azp": "other"}, "azp"),
            ({"azp": "other"}, "azp"),
            ({"exp": NOW - 61}, "expired"),
            ({"exp": None}, "expired"),
            ({"iat": NOW + 61}, "issued_at"),
            ({"iat": None}, "issued_at"),
            ({"nbf": NOW + 61}, "not_yet_valid"),
            ({"nonce": "m" * 43}, "nonce"),
            ({"nonce": None}, "nonce"),
            ({"sub": None}, "subject"),
            ({"sub": ""}, "subject"),
        ],
    )
    def test_claims(self, changes: dict[str, Any], reason: str) -> None:
        assert reason == refused(sign(claims(**changes), rsa_key(0)))

    def test_several_audiences_with_our_azp(self) -> None:
        token = sign(claims(aud=[CLIENT_ID, "api"], azp=CLIENT_ID), rsa_key(0))
        assert "alice" == verify(token)["sub"]

    def test_leeway(self) -> None:
        token = sign(claims(exp=NOW - 30, iat=NOW + 30, nbf=NOW + 30), rsa_key(0))
        assert "alice" == verify(token)["sub"]
        assert "expired" == refused(token, leeway=10)

    def test_nonce_not_checked_when_not_given(self) -> None:
        assert "alice" == verify(sign(claims(nonce=None), rsa_key(0)), nonce=None)["sub"]


class TestAlgorithms:
    """Only asymmetric signatures the provider lists; never none, never HS* with a public key."""

    def test_alg_none(self) -> None:
        token = jwt.encode(claims(), "", algorithm="none")
        assert "algorithm" == refused(token)
        assert "algorithm" == refused(token, algorithms=["none", "RS256"])

    def test_hs256_signed_with_the_public_key(self) -> None:
        """The classic confusion: the RSA public key (PEM) used as an HMAC secret."""
        pem = (
            rsa_key(0)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        header = b64(json.dumps({"alg": "HS256", "kid": "k1", "typ": "JWT"}).encode())
        payload = b64(json.dumps(claims()).encode())
        import hashlib
        import hmac

        mac = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        token = f"{header}.{payload}.{b64(mac)}"
        assert "algorithm" == refused(token, algorithms=["HS256", "RS256"])
        oct_jwks = {"keys": [{"kty": "oct", "k": b64(pem), "kid": "k1"}]}
        assert "algorithm" == refused(token, oct_jwks, algorithms=["HS256"])

    def test_an_algorithm_the_provider_does_not_list(self) -> None:
        key = ec_key()
        token = sign(claims(), key, kid="e1", alg="ES256")
        jwks = {"keys": [public_jwk(key, "e1")]}
        assert "algorithm" == refused(token, jwks, algorithms=["RS256"])
        assert "alice" == verify(token, jwks, algorithms=["RS256", "ES256"])["sub"]

    def test_key_type_must_fit_the_algorithm(self) -> None:
        key = ec_key()
        token = sign(claims(), key, kid="k1", alg="ES256")  # same kid as the RSA key
        assert "unknown_kid" == refused(token, algorithms=["ES256"])

    def test_a_key_pinned_to_another_alg_is_not_used(self) -> None:
        jwks = {"keys": [public_jwk(rsa_key(0), "k1", alg="PS256")]}
        assert "unknown_kid" == refused(sign(claims(), rsa_key(0)), jwks)

    def test_an_encryption_key_is_not_used(self) -> None:
        jwks = {"keys": [{**public_jwk(rsa_key(0), "k1"), "use": "enc"}]}
        assert "unknown_kid" == refused(sign(claims(), rsa_key(0)), jwks)

    def test_allowed_algorithms(self) -> None:
        assert ("RS256",) == allowed_algorithms(())
        assert ("ES256", "RS256") == allowed_algorithms(["none", "HS256", "ES256", "RS256"])

    def test_a_token_without_kid_tries_the_keys_that_fit(self) -> None:
        jwks = {"keys": [public_jwk(rsa_key(1), "k2"), public_jwk(rsa_key(0), "k1")]}
        assert "alice" == verify(sign(claims(), rsa_key(0), kid=None), jwks)["sub"]

    @pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c", "!.e30.x", "x" * 50])
    def test_malformed(self, token: str) -> None:
        assert "malformed" == refused(token)

    def test_a_header_without_alg(self) -> None:
        assert "algorithm" == refused("e30.e30.")


@pytest.fixture(name="idp")
def _idp() -> Iterator[FakeIdP]:
    with FakeIdP() as idp:
        yield idp


def idp_token(idp: FakeIdP, key: Any, kid: str) -> str:
    now = int(time.time())
    return sign(
        {"iss": ISSUER, "sub": "alice", "aud": CLIENT_ID, "iat": now, "exp": now + 60}, key, kid=kid
    )


class TestJwksCache:
    """Keys fetched once, fetched again once for an unknown kid, never more."""

    def test_fetched_once_and_reused(self, idp: FakeIdP) -> None:
        cache = JwksCache(f"{idp.base}/jwks")
        token = idp_token(idp, rsa_key(0), "k1")
        for _ in range(3):
            verify_id_token(token, issuer=ISSUER, client_id=CLIENT_ID, jwks=cache)
        assert 1 == idp.jwks_fetches == cache.fetches

    def test_rotated_keys_are_fetched_again_once(self, idp: FakeIdP) -> None:
        cache = JwksCache(f"{idp.base}/jwks")
        verify_id_token(
            idp_token(idp, rsa_key(0), "k1"), issuer=ISSUER, client_id=CLIENT_ID, jwks=cache
        )
        idp.jwks_keys = [public_jwk(rsa_key(1), "k2")]
        token = idp_token(idp, rsa_key(1), "k2")
        assert (
            "alice" == verify_id_token(token, issuer=ISSUER, client_id=CLIENT_ID, jwks=cache)["sub"]
        )
        assert 2 == idp.jwks_fetches

    def test_an_unknown_kid_costs_one_fetch_then_fails(self, idp: FakeIdP) -> None:
        cache = JwksCache(f"{idp.base}/jwks")
        token = idp_token(idp, rsa_key(1), "nobody")
        with pytest.raises(IdTokenInvalid) as caught:
            verify_id_token(token, issuer=ISSUER, client_id=CLIENT_ID, jwks=cache)
        assert "unknown_kid" == caught.value.reason
        assert 2 == idp.jwks_fetches

    def test_unavailable(self, idp: FakeIdP) -> None:
        cache = JwksCache(f"{idp.base}/missing?key=S3CRET")
        with pytest.raises(IdTokenInvalid) as caught:
            verify_id_token(
                idp_token(idp, rsa_key(0), "k1"), issuer=ISSUER, client_id=CLIENT_ID, jwks=cache
            )
        assert "jwks_unavailable" == caught.value.reason
        assert "HTTP 404" in str(caught.value)
        assert "S3CRET" not in str(caught.value)

    def test_async(self, idp: FakeIdP) -> None:
        cache = JwksCache(f"{idp.base}/jwks")
        idp.jwks_keys = [public_jwk(rsa_key(1), "k2")]
        cache.keys()
        idp.jwks_keys = [public_jwk(rsa_key(0), "k1")]
        claims_ = asyncio.run(
            verify_id_token_async(
                idp_token(idp, rsa_key(0), "k1"), issuer=ISSUER, client_id=CLIENT_ID, jwks=cache
            )
        )
        assert "alice" == claims_["sub"]
        assert 2 == idp.jwks_fetches
