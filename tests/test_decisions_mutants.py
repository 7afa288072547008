"""
The pure decisions under the engine (``engine/_core.py``, ``_policy.py``, ``_identity.py``):
rules a mutation run showed the rest of the suite could lose without noticing
(docs/mutation-testing.md).

Each test calls the public decision functions of :mod:`authfsm.engine` (``minted``,
``observe``, ``backoff_delay``, ``identity_of``, ``Policy``) and asserts whole values: the
credential a refresh produces, the facts the engine decides on, a delay in seconds.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from authfsm import Credentials, Policy
from authfsm.engine import (
    Backoff,
    Identity,
    IdentityClaims,
    Record,
    Refreshed,
    backoff_delay,
    identity_of,
    minted,
    observe,
    refresh_point,
)
from authfsm.states import Facts

from .test_values import jwt

T0 = datetime(2027, 1, 1, tzinfo=UTC)
NOW = T0.timestamp()
AUTH = "https://api.openai.com/auth"


def codex_id_token(*, user: str, account: str | None = None, iat: int = 0) -> str:
    claims: dict[str, object] = {"chatgpt_user_id": user}
    if account is not None:
        claims["chatgpt_account_id"] = account
    return jwt({"sub": f"sub-{user}", "iat": iat, AUTH: claims})


class TestMintedIdentity:
    """A refresh keeps who the credential belongs to, and whether that was verified."""

    def test_a_reply_without_id_token_keeps_the_verified_one(self):
        """Catches identity_verified being taken from the reply when the id_token is kept."""
        reference = Credentials(
            access_token="at-1",
            refresh_token="rt-1",
            id_token=jwt({"sub": "alice"}),
            identity_verified=True,
        )

        new = minted(reference, Refreshed(access_token="at-2"), NOW, IdentityClaims.oidc())

        assert (reference.id_token, True) == (new.id_token, new.identity_verified)

    @pytest.mark.parametrize("verified", [True, False])
    def test_a_new_id_token_is_as_verified_as_the_reply_says(self, verified):
        """Catches a new id_token inheriting the old one's verification (or losing its own)."""
        reference = Credentials(
            access_token="at-1",
            refresh_token="rt-1",
            id_token=jwt({"sub": "alice", "iat": 1}),
            identity_verified=not verified,
        )
        renewed = jwt({"sub": "alice", "iat": 2})
        answer = Refreshed(access_token="at-2", id_token=renewed, id_token_verified=verified)

        new = minted(reference, answer, NOW, IdentityClaims.oidc())

        assert (renewed, verified) == (new.id_token, new.identity_verified)

    def test_without_claims_a_new_id_token_replaces_the_old(self):
        """Catches the no-claims shortcut needing both the claims and the old id_token missing."""
        reference = Credentials(access_token="at-1", id_token=jwt({"sub": "alice", "iat": 1}))
        renewed = jwt({"sub": "bob", "iat": 2})

        new = minted(reference, Refreshed(access_token="at-2", id_token=renewed), NOW)

        assert renewed == new.id_token

    def test_an_id_token_that_adds_the_account_replaces_the_old(self):
        """Catches 'proves the identity' demanding an account the old id_token did not name."""
        reference = Credentials(access_token="at-1", id_token=codex_id_token(user="u1", iat=1))
        renewed = codex_id_token(user="u1", account="acct-1", iat=2)

        new = minted(
            reference, Refreshed(access_token="at-2", id_token=renewed), NOW, IdentityClaims.codex()
        )

        assert renewed == new.id_token
        assert Identity("acct-1", "u1") == identity_of(new, IdentityClaims.codex())

    def test_an_id_token_that_drops_the_account_is_not_taken(self):
        """Catches an id_token naming fewer of the known ids erasing the account."""
        old = codex_id_token(user="u1", account="acct-1", iat=1)
        reference = Credentials(access_token="at-1", id_token=old)
        fewer = codex_id_token(user="u1", iat=2)

        new = minted(
            reference, Refreshed(access_token="at-2", id_token=fewer), NOW, IdentityClaims.codex()
        )

        assert (old, "at-2") == (new.id_token, new.access_token)
        assert Identity("acct-1", "u1") == identity_of(new, IdentityClaims.codex())

    def test_an_id_token_of_the_same_user_replaces_the_old(self):
        """Catches the renewed id_token's identity being read from nothing (never replaced)."""
        reference = Credentials(access_token="at-1", id_token=jwt({"sub": "alice", "iat": 1}))
        renewed = jwt({"sub": "alice", "iat": 2})

        new = minted(
            reference, Refreshed(access_token="at-2", id_token=renewed), NOW, IdentityClaims.oidc()
        )

        assert renewed == new.id_token


class TestSharedBackoffPlausibility:
    """A sibling's backoff marker is obeyed up to the longest backoff any engine uses, plus skew."""

    # The default policy backs off at most an hour (Retry-After cap); hosts may be 60 s apart.
    LIMIT = NOW + 3600 + 60

    def facts_for(self, not_before: float):
        cred = Credentials(access_token="at-1", refresh_token="rt-1")
        marker = Backoff(fingerprint=cred.fingerprint, not_before=not_before, failures=3)
        return observe(
            reference=cred,
            candidate=cred,
            record=Record(credential=cred, revision=4, backoff=marker),
            policy=Policy(),
            now=NOW,
            reason="check",
        )

    @pytest.mark.parametrize(
        ("not_before", "obeyed"),
        [(LIMIT - 30, True), (LIMIT, True), (LIMIT + 1, False)],
        ids=["within-skew", "at-the-limit", "beyond"],
    )
    def test_marker_obeyed_up_to_the_limit(self, not_before, obeyed):
        """Catches the limit being exclusive, or the skew being subtracted instead of added."""
        cred = Credentials(access_token="at-1", refresh_token="rt-1")

        facts = self.facts_for(not_before)

        assert (
            Facts(
                now=NOW,
                reason="check",
                reference=cred.fingerprint,
                candidate=cred.fingerprint,
                due_at=math.inf,
                compatible=True,
                poisoned=None,
                backoff_until=not_before if obeyed else None,
                refreshable=True,
            )
            == facts
        )


class TestRefreshPointOfAShortLife:
    """A token that lived less than a second (or expired before it was minted) is due at expiry."""

    @pytest.mark.parametrize("lifetime", [0.0, 0.5, -10.0])
    def test_due_at_expiry_minus_half_its_life(self, lifetime):
        """Catches the half-life cap being floored at a second (due before the token is)."""
        creds = Credentials(
            access_token="a", expires_at=T0 + timedelta(seconds=lifetime), last_refresh=T0
        )

        expiry = NOW + lifetime
        assert expiry - max(lifetime, 0.0) / 2 == refresh_point(creds, Policy())


class TestBackoffRetryAfter:
    """A server's Retry-After of any positive length is honoured."""

    @pytest.mark.parametrize("retry_after", [0.75, 1.0])
    def test_a_short_retry_after_still_counts(self, retry_after):
        """Catches Retry-After of a second or less being ignored (0.5 s backoff floor instead)."""
        policy = Policy(jitter=lambda: 0.0)

        assert retry_after == backoff_delay(1, retry_after, policy)


class TestPresets:
    """The Codex presets: overrides are kept, and its own user id claim comes first."""

    def test_codex_policy_keeps_overrides(self):
        """Catches Policy.codex() dropping the caller's overrides."""
        policy = Policy.codex(expiry_leeway=timedelta(minutes=1))

        assert (timedelta(minutes=1), IdentityClaims.codex()) == (
            policy.expiry_leeway,
            policy.identity,
        )

    @pytest.mark.parametrize("sub", [12345, {"id": "u"}, ["u"]])
    def test_a_claim_that_is_no_string_names_nobody(self, sub):
        """Catches a number, object or list in an id claim being taken for the id."""
        creds = Credentials(access_token="a", id_token=jwt({"sub": sub}))

        assert Identity(None, None) == identity_of(creds, IdentityClaims.oidc())

    def test_chatgpt_user_id_comes_before_user_id(self):
        """Catches the chatgpt_user_id claim path being lost (user_id or sub read instead)."""
        token = jwt(
            {
                "sub": "s",
                AUTH: {"chatgpt_account_id": "c", "chatgpt_user_id": "cu", "user_id": "u"},
            }
        )

        assert Identity("c", "cu") == identity_of(
            Credentials(access_token="a", id_token=token), IdentityClaims.codex()
        )
