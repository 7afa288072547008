"""
Guard predicates of the transition table, and the facts they judge.

Each guard is a pure function of one :class:`Facts` value. The engine observes the world (the
clock, the store, the endpoint's answer), writes what it saw into ``Facts`` and fires a trigger;
the guards on the table's rows decide which row, if any, applies. Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import attrs

__all__ = [
    "GUARDS",
    "Facts",
    "can_refresh",
    "differs_from_reference",
    "is_backing_off",
    "is_compatible",
    "is_due",
    "is_poisoned_in_store",
    "matches_reference",
]


@attrs.frozen(kw_only=True)
class Facts:
    """
    What the engine observed when it fired a trigger.

    Credentials are named by fingerprint only: facts are logged and never hold a secret.

    Attributes:
        now: the engine's clock, POSIX seconds.
        reason: why the trigger fired (logged with the transition).
        reference: fingerprint of the credential being judged (the cached one, the one judged
            stale, or the one a server rejected); None when there is none.
        candidate: fingerprint of the credential that may replace it (from the store, or minted
            by the endpoint); None when there is none.
        due_at: the refresh point of the credential being judged (``inf``: never due).
        compatible: the identity rules allow the candidate to replace the reference.
        poisoned: the fingerprint the store's shared poison marker names, if any.
        backoff_until: the store's shared backoff deadline for the candidate, if any.
        refreshable: the reference is an OAuth credential with a refresh token.
    """

    now: float
    reason: str = ""
    reference: str | None = None
    candidate: str | None = None
    due_at: float = math.inf
    compatible: bool = True
    poisoned: str | None = None
    backoff_until: float | None = None
    refreshable: bool = True


def is_due(facts: Facts) -> bool:
    """The credential has reached its refresh point."""
    return facts.due_at <= facts.now


def differs_from_reference(facts: Facts) -> bool:
    """The candidate is a credential, and not the one being judged."""
    return facts.candidate is not None and facts.candidate != facts.reference


def matches_reference(facts: Facts) -> bool:
    """The candidate is the very credential being judged (nobody rotated it meanwhile)."""
    return facts.candidate is not None and facts.candidate == facts.reference


def is_compatible(facts: Facts) -> bool:
    """Nothing known about the two identities disagrees (see ``authfsm.engine.is_compatible``)."""
    return facts.compatible


def is_poisoned_in_store(facts: Facts) -> bool:
    """The store's shared poison marker names the candidate."""
    return facts.poisoned is not None and facts.poisoned == facts.candidate


def is_backing_off(facts: Facts) -> bool:
    """A shared backoff for the candidate has not run out yet."""
    return facts.backoff_until is not None and facts.now < facts.backoff_until


def can_refresh(facts: Facts) -> bool:
    """The credential can be spent at the token endpoint at all."""
    return facts.refreshable


#: Every guard by the name the table uses.
GUARDS: Mapping[str, Callable[[Facts], bool]] = {
    g.__name__: g
    for g in (
        is_due,
        differs_from_reference,
        matches_reference,
        is_compatible,
        is_poisoned_in_store,
        is_backing_off,
        can_refresh,
    )
}
