"""
What a store holds: one credential plus the markers every engine sharing the store obeys.

A :class:`Record` carries a revision that only goes up; stores refuse a write whose expected
revision is not the current one (compare-and-swap). The poison and backoff markers are keyed to a
credential's fingerprint, so they lapse by themselves when a different credential is stored.
"""

from __future__ import annotations

import attrs

from ._credentials import Credentials

__all__ = ["Backoff", "Poison", "Record"]


@attrs.frozen(kw_only=True)
class Poison:
    """The credential with this fingerprint failed permanently: nobody may spend it again."""

    fingerprint: str
    reason: str
    at: float


@attrs.frozen(kw_only=True)
class Backoff:
    """No engine calls the endpoint for this fingerprint before ``not_before`` (POSIX seconds)."""

    fingerprint: str
    not_before: float
    failures: int = 1


@attrs.frozen(kw_only=True)
class Record:
    """
    One store entry.

    Attributes:
        credential: the shared credential, or None after a logout (a tombstone keeps the revision
            counting up so a fenced writer can never match it again).
        revision: 1 for the first write, +1 for every write after it.
        poison: the shared poison marker, if any.
        backoff: the shared backoff marker, if any.
    """

    credential: Credentials | None
    revision: int = 0
    poison: Poison | None = None
    backoff: Backoff | None = None

    def poisoned(self) -> Poison | None:
        """The poison marker if it applies to the stored credential."""
        if self.poison is None or self.credential is None:
            return None
        return self.poison if self.poison.fingerprint == self.credential.fingerprint else None

    def backoff_until(self) -> float | None:
        """``not_before`` of the backoff marker if it applies to the stored credential."""
        if self.backoff is None or self.credential is None:
            return None
        if self.backoff.fingerprint != self.credential.fingerprint:
            return None
        return self.backoff.not_before
