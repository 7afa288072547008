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
from ._identity import identity_of, is_compatible
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
) -> Facts:
    """
    The facts for judging ``candidate`` (from the store, or minted) against ``reference``.

    Identity compatibility applies the policy's claim paths; a missing side is compatible with
    anything (nothing to disagree with).
    """
    compatible = (
        reference is None
        or candidate is None
        or is_compatible(
            identity_of(reference, policy.identity), identity_of(candidate, policy.identity)
        )
    )
    poison = record.poisoned() if record is not None else None
    return Facts(
        now=now,
        reason=reason,
        reference=reference.fingerprint if reference is not None else None,
        candidate=candidate.fingerprint if candidate is not None else None,
        due_at=refresh_point(reference, policy) if reference is not None else math.inf,
        compatible=compatible,
        poisoned=poison.fingerprint if poison is not None else None,
        backoff_until=record.backoff_until() if record is not None else None,
        refreshable=(
            reference is not None
            and reference.kind is Kind.OAUTH
            and reference.refresh_token is not None
        ),
    )


def minted(reference: Credentials, answer: Refreshed, now: float) -> Credentials:
    """
    The credential after a successful refresh of ``reference``.

    Fields the endpoint did not send keep their old values (RFC 6749 §6), except the expiry,
    which is recomputed: ``expires_in`` if given, else the new token's own ``exp`` (or unknown).
    """
    issued = datetime.fromtimestamp(now, UTC)
    expires_at = (
        issued + timedelta(seconds=answer.expires_in) if answer.expires_in is not None else None
    )
    return attrs.evolve(
        reference,
        access_token=answer.access_token,
        refresh_token=answer.refresh_token or reference.refresh_token,
        id_token=answer.id_token or reference.id_token,
        expires_at=expires_at,
        last_refresh=issued,
    )
