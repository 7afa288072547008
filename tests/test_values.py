"""Credentials, identity and policy: the values the core decides on."""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authfsm import Credentials, InvalidCredentials, Kind, Policy
from authfsm.engine import (
    Identity,
    IdentityClaims,
    Refreshed,
    backoff_delay,
    decode_jwt_claims,
    fingerprint,
    identity_of,
    is_compatible,
    refresh_point,
)
from authfsm.engine._credentials import jwt_expiry
from authfsm.engine._ports import MAX_EXPIRES_IN

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

    @pytest.mark.parametrize("field", ["access_token", "refresh_token", "id_token"])
    @pytest.mark.parametrize(
        "bad",
        [" ", "\t \n", "tok-LEAK\r\nX-Injected: 1", "tok-LEAK\n", "tok-LEAK\x00", "tok-LEAK\x7f"],
    )
    def test_unsendable_token_refused(self, field, bad):
        """Whitespace-only tokens and tokens with control characters are refused, unquoted."""
        fields = {"access_token": "a", field: bad}
        with pytest.raises(InvalidCredentials, match=field) as caught:
            Credentials(**fields)
        assert "LEAK" not in str(caught.value)
        assert "invalid_credentials" == caught.value.reason

    @pytest.mark.parametrize(("bad", "type_name"), [(b"at-bytes", "bytes"), (5, "int")])
    def test_access_token_must_be_str(self, bad, type_name):
        """A non-str access token is refused with a message naming its type."""
        with pytest.raises(
            InvalidCredentials, match=f"access_token must be a str, not {type_name}"
        ):
            Credentials(access_token=bad)

    @pytest.mark.parametrize(
        ("given_kind", "expected"), [("oauth", Kind.OAUTH), ("api_key", Kind.API_KEY)]
    )
    def test_kind_as_string(self, given_kind, expected):
        """The string value of a Kind is converted to the Kind."""
        assert expected == Credentials(access_token="a", kind=given_kind).kind

    @pytest.mark.parametrize("bad", ["OAuth-secret-LEAK", "", 1, None])
    def test_unknown_kind_refused(self, bad):
        """Anything else is InvalidCredentials naming the allowed values, not the value given."""
        with pytest.raises(
            InvalidCredentials, match="kind must be a Kind or 'oauth' or 'api_key'"
        ) as caught:
            Credentials(access_token="a", kind=bad)
        assert "LEAK" not in str(caught.value)

    def test_far_future_expiry(self):
        """An expires_at at the end of the calendar is kept and gives a refresh point."""
        for offset in (timedelta(0), timedelta(hours=-5)):
            end = datetime.max.replace(tzinfo=timezone(offset))
            creds = Credentials(access_token="a", expires_at=end, last_refresh=T0)
            assert end.timestamp() - 300 == refresh_point(creds, Policy())

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

    @pytest.mark.parametrize(
        "exp", [1e300, 2**63 - 1, pytest.param(10**400, id="10**400"), -1e300, 1e12]
    )
    def test_absurd_exp_is_unknown(self, exp):
        """An exp no datetime can hold is no expiry at all; the interval applies."""
        creds = Credentials(access_token=jwt({"exp": exp}), last_refresh=T0)
        assert None is jwt_expiry(creds.access_token)
        assert (T0 + timedelta(days=8)).timestamp() == refresh_point(creds, Policy())


class TestRefreshed:
    """A Refreshed value never carries a lifetime that overflows a datetime."""

    @pytest.mark.parametrize(
        ("given_seconds", "expected"),
        [
            (3600, 3600.0),
            (0.5, 0.5),
            (MAX_EXPIRES_IN, MAX_EXPIRES_IN),
            (None, None),
            (MAX_EXPIRES_IN + 1, None),
            (2**63 - 1, None),
            pytest.param(10**400, None, id="10**400"),
            (1e300, None),
            (math.inf, None),
            (math.nan, None),
            (0, None),
            (-60, None),
        ],
    )
    def test_expires_in_normalised(self, given_seconds, expected):
        """Beyond ten years, non-finite or not positive: "no expiry known"."""
        assert expected == Refreshed(access_token="a", expires_in=given_seconds).expires_in

    @pytest.mark.parametrize("bad", ["3600", True])
    def test_expires_in_must_be_a_number(self, bad):
        """A string or a bool is a programming error, refused at construction."""
        with pytest.raises(TypeError, match="expires_in"):
            Refreshed(access_token="a", expires_in=bad)

    @given(st.one_of(st.integers(), st.floats()))
    def test_lifetime_fits_a_datetime(self, seconds):
        """Whatever number a custom endpoint passes, the lifetime can be added to a datetime."""
        expires_in = Refreshed(access_token="a", expires_in=seconds).expires_in
        if expires_in is not None:
            assert 0 < expires_in <= MAX_EXPIRES_IN
            datetime.now(UTC) + timedelta(seconds=expires_in)


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
