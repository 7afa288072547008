"""
The tunable rules of the lifecycle: when a credential is due, how long to back off, whose
identity counts. A :class:`Policy` is a frozen value; the functions here are pure (the clock is a
parameter).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import timedelta

import attrs

from ._credentials import Credentials, Kind, jwt_expiry
from ._identity import IdentityClaims

__all__ = ["Policy", "backoff_delay", "refresh_point"]

_MAX_EXPONENT = 62


def _positive(_instance: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise ValueError(f"{attribute.name} must be a positive timedelta, got {value!r}")


@attrs.frozen(kw_only=True)
class Policy:
    """
    How an engine decides.

    Attributes:
        expiry_leeway: refresh this long before the access token expires (capped at half the
            token's lifetime, so short-lived tokens still work).
        refresh_interval: when the expiry is unknown, refresh this long after ``last_refresh``.
        backoff_initial: the first backoff cap after a transient failure.
        backoff_max: the largest backoff cap.
        backoff_min: the smallest delay drawn (full jitter never retries at once).
        retry_after_max: a server's ``Retry-After`` is honoured up to this long.
        lease_timeout: how long to wait for another engine's refresh lease.
        identity: where the id_token carries the account and user ids.
        jitter: a source of uniform floats in [0, 1); tests pass a fixed one.
    """

    expiry_leeway: timedelta = attrs.field(default=timedelta(minutes=5), validator=_positive)
    refresh_interval: timedelta = attrs.field(default=timedelta(days=8), validator=_positive)
    backoff_initial: timedelta = attrs.field(default=timedelta(seconds=2), validator=_positive)
    backoff_max: timedelta = attrs.field(default=timedelta(minutes=5), validator=_positive)
    backoff_min: timedelta = attrs.field(default=timedelta(milliseconds=500), validator=_positive)
    retry_after_max: timedelta = attrs.field(default=timedelta(hours=1), validator=_positive)
    lease_timeout: timedelta = attrs.field(default=timedelta(seconds=30), validator=_positive)
    identity: IdentityClaims = attrs.field(factory=IdentityClaims.oidc)
    jitter: Callable[[], float] = attrs.field(default=random.random, repr=False, eq=False)

    @classmethod
    def codex(cls, **overrides: object) -> Policy:
        """The policy OpenAI Codex uses: 5-minute leeway, 8-day interval, its identity claims."""
        return cls(identity=IdentityClaims.codex(), **overrides)  # type: ignore[arg-type]


def refresh_point(credentials: Credentials, policy: Policy) -> float:
    """
    POSIX seconds at which ``credentials`` becomes due for refresh (``inf``: never).

    Expiry known (``expires_at``, else the JWT ``exp`` of the access token): expiry minus the
    leeway, the leeway capped at half the lifetime (lifetime from ``last_refresh``). Expiry
    unknown: ``last_refresh`` plus the refresh interval. Neither known, or an API key: never.
    """
    if credentials.kind is Kind.API_KEY:
        return math.inf
    expires = credentials.expires_at or jwt_expiry(credentials.access_token)
    if expires is not None:
        leeway = policy.expiry_leeway.total_seconds()
        expiry = expires.timestamp()
        if credentials.last_refresh is not None:
            lifetime = expiry - credentials.last_refresh.timestamp()
            leeway = min(leeway, max(lifetime, 0.0) / 2)
        return expiry - leeway
    if credentials.last_refresh is not None:
        return credentials.last_refresh.timestamp() + policy.refresh_interval.total_seconds()
    return math.inf


def backoff_delay(failures: int, retry_after: float | None, policy: Policy) -> float:
    """
    Seconds to wait after ``failures`` consecutive transient failures: exponential with full
    jitter (floored at ``backoff_min``), never less than the server's ``Retry-After``.
    """
    # Cap the exponent before exponentiating: 2.0 ** 1024 overflows, and the count can come
    # from another process's marker. 2 ** 62 times any sane initial delay is beyond any cap.
    exponent = min(max(failures - 1, 0), _MAX_EXPONENT)
    cap = min(
        policy.backoff_max.total_seconds(),
        policy.backoff_initial.total_seconds() * 2.0**exponent,
    )
    delay = max(policy.backoff_min.total_seconds(), cap * float(policy.jitter()))
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, policy.retry_after_max.total_seconds()))
    return delay
