"""Credentials, identity and policy: the values the core decides on."""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime, timedelta

import pytest

from authfsm import Credentials, InvalidCredentials, Kind, Policy
from authfsm.engine import (
    Identity,
    IdentityClaims,
    backoff_delay,
    decode_jwt_claims,
    fingerprint,
    identity_of,
    is_compatible,
    refresh_point,
)

T0 = datetime(2027, 1, 1, tzinfo=UTC)


def jwt(claims: dict) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


class TestCredentials:
    """Credentials are validated values that never show their secrets."""

    def test_repr_hides_secrets(self):
        """No token appears in repr or str."""
        creds = Credentials(access_token="AT-secret", refresh_token="RT-secret", id_token="ID-x")

        text = repr(creds) + str(creds)

        assert "AT-secret" not in text
        assert "RT-secret" not in text
        assert "ID-x" not in text

    def test_naive_datetime_is_refused(self):
        """A naive expires_at raises InvalidCredentials, which is a ValueError."""
        with pytest.raises(InvalidCredentials, match="naive") as caught:
            Credentials(access_token="a", expires_at=datetime(2027, 1, 1))
        assert isinstance(caught.value, ValueError)

    @pytest.mark.parametrize("bad", ["", 5, None])
    def test_access_token_required(self, bad):
        """An empty or non-string access token is refused."""
        with pytest.raises(InvalidCredentials):
            Credentials(access_token=bad)

    def test_api_key(self):
        """Credentials.api_key builds an API-key credential."""
        assert Kind.API_KEY == Credentials.api_key("sk-1").kind

    def test_fingerprint_tracks_material_fields_only(self):
        """Tokens and account change the fingerprint; last_refresh does not."""
        a = Credentials(access_token="a", refresh_token="r", last_refresh=T0)
        same = Credentials(access_token="a", refresh_token="r", last_refresh=T0 + timedelta(1))
        rotated = Credentials(access_token="a", refresh_token="r2")

        assert fingerprint(a) == fingerprint(same)
        assert fingerprint(a) != fingerprint(rotated)
        assert 16 == len(fingerprint(a))
        int(fingerprint(a), 16)


class TestJwt:
    """Unverified JWT claims are read defensively."""

    @pytest.mark.parametrize(
        "token", ["", "abc", "a.b", "a..c", "a.!!!.c", f"a.{base64.b64encode(b'[1]').decode()}.c"]
    )
    def test_garbage_is_none(self, token):
        """Anything that is not a JWT with an object payload decodes to None."""
        assert None is decode_jwt_claims(token)

    def test_claims(self):
        """A JWT's payload is returned as a dict."""
        assert {"sub": "u", "exp": 5} == decode_jwt_claims(jwt({"sub": "u", "exp": 5}))


class TestIdentity:
    """Identity comes from the account_id field or id_token claims; adoption is conservative."""

    def test_field_wins_over_claims(self):
        """The credential's account_id field is used before id_token claims."""
        creds = Credentials(
            access_token="a",
            account_id="field",
            id_token=jwt({"sub": "u", "https://api.openai.com/auth": {"chatgpt_account_id": "c"}}),
        )
        assert Identity("field", "u") == identity_of(creds, IdentityClaims.codex())

    def test_codex_preset(self):
        """Codex claims give account and user; user_id is a fallback for chatgpt_user_id."""
        token = jwt(
            {"sub": "s", "https://api.openai.com/auth": {"chatgpt_account_id": "c", "user_id": "u"}}
        )
        creds = Credentials(access_token="a", id_token=token)

        assert Identity("c", "u") == identity_of(creds, IdentityClaims.codex())
        assert Identity(None, "s") == identity_of(creds, IdentityClaims.oidc())

    @pytest.mark.parametrize(
        ("reference", "candidate", "expected"),
        [
            (Identity("a", "u"), Identity("a", "u"), True),
            (Identity("a", "u"), Identity("b", "u"), False),
            (Identity("a", "u"), Identity("a", "v"), False),
            (Identity(None, "u"), Identity("a", "u"), True),  # legacy adopts same user
            (Identity(None, "u"), Identity("a", "v"), False),
            (Identity(None, None), Identity("a", "u"), False),  # legacy, user unknown
            (Identity("a", None), Identity(None, None), False),
            (Identity(None, None), Identity(None, None), True),  # opaque tokens
            (Identity("a", None), Identity("a", None), True),
            (Identity(None, "u"), Identity(None, "u"), True),
        ],
    )
    def test_compatibility(self, reference, candidate, expected):
        """The compatibility rules of DESIGN §3."""
        assert expected == is_compatible(reference, candidate)


class TestRefreshPoint:
    """When a credential becomes due."""

    def test_expires_at_minus_leeway(self):
        """One-hour token: due five minutes before it expires."""
        creds = Credentials(access_token="a", expires_at=T0 + timedelta(hours=1), last_refresh=T0)
        assert (T0 + timedelta(minutes=55)).timestamp() == refresh_point(creds, Policy())

    def test_leeway_is_at_most_half_the_lifetime(self):
        """Sixty-second token: due after thirty seconds."""
        creds = Credentials(
            access_token="a", expires_at=T0 + timedelta(seconds=60), last_refresh=T0
        )
        assert (T0 + timedelta(seconds=30)).timestamp() == refresh_point(creds, Policy())

    def test_jwt_exp_when_no_expires_at(self):
        """The access token's exp claim stands in for expires_at."""
        exp = (T0 + timedelta(hours=2)).timestamp()
        creds = Credentials(access_token=jwt({"exp": int(exp)}))
        assert exp - 300 == refresh_point(creds, Policy())

    def test_last_refresh_interval(self):
        """No expiry: last_refresh plus eight days."""
        creds = Credentials(access_token="opaque", last_refresh=T0)
        assert (T0 + timedelta(days=8)).timestamp() == refresh_point(creds, Policy())

    def test_never(self):
        """No expiry, no last_refresh, or an API key: never due."""
        assert math.inf == refresh_point(Credentials(access_token="opaque"), Policy())
        assert math.inf == refresh_point(Credentials.api_key("k"), Policy())


class TestBackoff:
    """Exponential backoff with full jitter, floored, honouring Retry-After."""

    def test_grows_and_caps(self):
        """With jitter at its top the delay doubles up to backoff_max."""
        policy = Policy(jitter=lambda: 0.999999)
        delays = [round(backoff_delay(n, None, policy)) for n in range(1, 12)]
        assert [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300] == delays

    def test_floor(self):
        """Full jitter never retries at once: at least backoff_min."""
        assert 0.5 == backoff_delay(1, None, Policy(jitter=lambda: 0.0))

    def test_retry_after(self):
        """Retry-After wins when longer, capped at retry_after_max."""
        policy = Policy(jitter=lambda: 0.0)
        assert 120 == backoff_delay(1, 120, policy)
        assert 3600 == backoff_delay(1, 10**9, policy)

    def test_policy_validates(self):
        """A non-positive interval is refused at construction."""
        with pytest.raises(ValueError, match="expiry_leeway"):
            Policy(expiry_leeway=timedelta(0))
