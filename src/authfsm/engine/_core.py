"""
The decision core's pure functions: turn observations into :class:`~authfsm.states.Facts`, and an
endpoint's answer into the next credential.

No I/O, no clock reads, no locks: the engine passes ``now`` and whatever it read.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import attrs

from ..states import Facts
from ._credentials import Credentials, Kind
from ._identity import IdentityClaims, identity_of, is_compatible
from ._policy import Policy, refresh_point
from ._ports import Refreshed
from ._record import Record

__all__ = ["minted", "observe"]


def observe(
    *,
    reference: Credentials | None,
    candidate: Credentials | None,
    record: Record | None,
    policy: Policy,
    now: float,
    reason: str,
    due_at: float | None = None,
) -> Facts:
    """
    The facts for judging ``candidate`` (from the store, or minted) against ``reference``.

    Identity compatibility applies the policy's claim paths; a missing side is compatible with
    anything (nothing to disagree with). ``due_at``: the reference's refresh point, when the
    caller computed it already (an engine does, once per credential it holds).
    """
    compatible = (
        reference is None
        or candidate is None
        or is_compatible(
            identity_of(reference, policy.identity), identity_of(candidate, policy.identity)
        )
    )
    poison = record.poisoned() if record is not None else None
    backoff_until = record.backoff_until() if record is not None else None
    if backoff_until is not None and not _plausible_backoff(backoff_until, policy, now):
        # Another process's advice, ignored when no engine could have written it: a hostile or
        # broken marker cannot stop the fleet for longer than any engine backs off on its own.
        backoff_until = None
    if due_at is None:
        due_at = refresh_point(reference, policy) if reference is not None else math.inf
    return Facts(
        now=now,
        reason=reason,
        reference=reference.fingerprint if reference is not None else None,
        candidate=candidate.fingerprint if candidate is not None else None,
        due_at=due_at,
        compatible=compatible,
        poisoned=poison.fingerprint if poison is not None else None,
        backoff_until=backoff_until,
        refreshable=(
            reference is not None
            and reference.kind is Kind.OAUTH
            and reference.refresh_token is not None
        ),
    )


# Clock skew allowed between the hosts that share a store, for markers they write.
_SKEW = 60.0


def _plausible_backoff(not_before: float, policy: Policy, now: float) -> bool:
    longest = max(policy.backoff_max, policy.retry_after_max).total_seconds()
    return not math.isnan(not_before) and not_before <= now + longest + _SKEW


def minted(
    reference: Credentials,
    answer: Refreshed,
    now: float,
    claims: IdentityClaims | None = None,
) -> Credentials:
    """
    The credential after a successful refresh of ``reference``.

    Fields the endpoint did not send keep their old values (RFC 6749 §6), except the expiry,
    which is recomputed: ``expires_in`` if given, else the new token's own ``exp`` (or unknown);
    an expiry beyond what a date can hold counts as unknown. A new id_token replaces the old one
    only if it proves the identity known before (with ``claims``): one naming nobody, or fewer
    of the known ids, is dropped, so a refresh can never erase who the credential belongs to.
    """
    issued = datetime.fromtimestamp(now, UTC)
    id_token = _kept_id_token(reference, answer.id_token, claims)
    kept = id_token == reference.id_token
    return attrs.evolve(
        reference,
        access_token=answer.access_token,
        refresh_token=answer.refresh_token or reference.refresh_token,
        id_token=id_token,
        expires_at=_expiry(issued, answer.expires_in),
        last_refresh=issued,
        identity_verified=reference.identity_verified if kept else answer.id_token_verified,
    )


def _expiry(issued: datetime, expires_in: float | None) -> datetime | None:
    if expires_in is None or not math.isfinite(expires_in):
        return None
    try:
        return issued + timedelta(seconds=expires_in)
    except (OverflowError, ValueError):  # beyond year 9999: no expiry known
        return None


def _kept_id_token(
    reference: Credentials, id_token: str | None, claims: IdentityClaims | None
) -> str | None:
    if not id_token:
        return reference.id_token
    if claims is None or reference.id_token is None:
        return id_token
    before = identity_of(reference, claims)
    after = identity_of(attrs.evolve(reference, id_token=id_token), claims)
    if not is_compatible(before, after):
        return id_token  # another identity: the engine refuses the whole response
    proves = (before.account_id is None or after.account_id == before.account_id) and (
        before.user_id is None or after.user_id == before.user_id
    )
    return id_token if proves else reference.id_token
