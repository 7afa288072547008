"""
The contracts the engine drives: a store and a token endpoint.

Adapters implement these protocols; the engine knows nothing else about them. Outcomes of a
refresh are plain values the engine feeds to the lifecycle as triggers.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import attrs

from ._credentials import Credentials
from ._record import Record

__all__ = [
    "PERMANENT_ERROR_CODES",
    "PermanentFailure",
    "RefreshOutcome",
    "Refreshed",
    "ReleaseWatch",
    "Released",
    "Store",
    "TokenEndpoint",
    "TransientFailure",
]

#: OAuth error codes that mean the refresh token can never work again, at any HTTP status.
PERMANENT_ERROR_CODES: frozenset[str] = frozenset(
    {
        "invalid_grant",
        "refresh_token_reused",
        "refresh_token_expired",
        "refresh_token_invalidated",
        "invalid_client",
        "unauthorized_client",
    }
)


@runtime_checkable
class Store(Protocol):
    """
    Where a shared credential lives.

    Every backend gives the same guarantees; :mod:`authfsm.testing` has a differential test kit.
    """

    @property
    def location(self) -> str:
        """A human-readable name of the store (a path, a key); never a secret."""
        ...

    def read(self) -> Record | None:
        """The current record, or None when the store is empty. Raises ``StorageCorrupt``."""
        ...

    def write(self, record: Record, expected_revision: int | None) -> Record:
        """
        Store ``record`` if the current revision is ``expected_revision`` (None: empty store).

        Returns the stored record with its new revision. Raises ``WriteConflict`` otherwise.
        """
        ...

    def delete(self, expected_revision: int | None) -> None:
        """Remove the record if its revision is ``expected_revision``; ``WriteConflict`` if not."""
        ...

    def lease(self, timeout: float) -> AbstractContextManager[None]:
        """Mutual exclusion among all engines sharing the store; ``LeaseTimeout`` on timeout."""
        ...


@attrs.frozen
class Released:
    """
    What a store's release carried to its waiters (:meth:`ReleaseWatch.wait_for_release`): the
    record as it was when the lease was given back (None: the store was empty).
    """

    record: Record | None


@runtime_checkable
class ReleaseWatch(Protocol):
    """
    A store that can tell a waiting engine when its lease is given back (optional).

    Followers of a refresh call this while a sibling holds the lease, then read the store and
    adopt what the leader wrote: they sleep until woken instead of polling. A store without it
    is polled every 20 ms.
    """

    def wait_for_release(self, timeout: float) -> Released | None:
        """
        Return once the lease is free, or after ``timeout`` seconds (whichever comes first).

        Returns at once when nobody holds the lease when called, so a release just before the
        call is never missed; returning early for no reason is allowed (the caller looks
        again). Never takes the lease. Raises ``StorageUnavailable`` like ``read()``.

        Woken by a release that carried the record (``RedisStore`` publishes it with the
        release), it may return it as :class:`Released`: the engine then adopts it without
        reading the store, if its revision is newer than any the engine has seen (a release
        message may have waited, unread, since long before the wait). None: the caller reads.
        """
        ...


#: The longest access-token lifetime taken at face value: ten years, in seconds. A longer
#: ``expires_in`` means "no expiry known", so a lifetime can always be added to a datetime.
MAX_EXPIRES_IN: float = 10 * 365 * 24 * 3600.0


def _lifetime(value: float | None) -> float | None:
    """``expires_in`` as seconds in ``(0, MAX_EXPIRES_IN]``, or None for "no expiry known"."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"expires_in must be a number of seconds or None, not {type(value).__name__}"
        )
    # Exact for huge ints and false for NaN: nothing here can overflow.
    if not 0 < value <= MAX_EXPIRES_IN:
        return None
    return float(value)


@attrs.frozen(kw_only=True)
class Refreshed:
    """
    The endpoint minted new tokens. Missing fields keep the old values (RFC 6749 §6).

    ``expires_in`` is normalised at construction so that no endpoint, built in or custom, can hand
    the engine a lifetime that overflows a datetime: a zero, negative, NaN, infinite or larger
    than :data:`MAX_EXPIRES_IN` value becomes None ("no expiry known": the engine then uses the
    new token's own ``exp``, or the refresh interval). A non-number raises ``TypeError``.
    ``id_token_verified``: the endpoint checked the id_token's signature and claims against the
    issuer's keys.
    """

    access_token: str = attrs.field(repr=False)
    refresh_token: str | None = attrs.field(default=None, repr=False)
    id_token: str | None = attrs.field(default=None, repr=False)
    expires_in: float | None = attrs.field(default=None, converter=_lifetime)
    id_token_verified: bool = False


@attrs.frozen(kw_only=True)
class TransientFailure:
    """The refresh may work later: keep the old token, back off (honouring ``retry_after``)."""

    reason: str
    status: int | None = None
    retry_after: float | None = None


@attrs.frozen(kw_only=True)
class PermanentFailure:
    """The refresh token can never work again (``code`` is the OAuth error code)."""

    code: str
    status: int | None = None
    description: str | None = None


RefreshOutcome = Refreshed | TransientFailure | PermanentFailure


@runtime_checkable
class TokenEndpoint(Protocol):
    """Spends a refresh token. Must never raise for an HTTP or network failure: it classifies."""

    def refresh(self, credentials: Credentials) -> RefreshOutcome: ...

    def revoke(self, credentials: Credentials) -> bool: ...
