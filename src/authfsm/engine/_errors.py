"""
The public error hierarchy.

Every error authfsm raises is an :class:`AuthError`. Each concrete error carries a machine-readable
``reason`` and a message that tells a person what to do. Messages never contain a secret: they name
states, triggers, paths, HTTP statuses and OAuth error codes, never token material.
"""

from __future__ import annotations

__all__ = [
    "AccountMismatch",
    "AuthError",
    "EngineMisuse",
    "IllegalTransition",
    "InvalidCredentials",
    "LeaseTimeout",
    "ReauthRequired",
    "RefreshFailed",
    "StorageCorrupt",
    "StorageUnavailable",
    "StorageUnreplicated",
    "WriteConflict",
]


class AuthError(Exception):
    """
    Base of every error raised by authfsm.

    Attributes:
        reason: a short machine-readable word (``"poisoned"``, ``"logged_out"``,
            ``"account_mismatch"``, an OAuth error code, ...).
    """

    reason: str

    def __init__(self, message: str, *, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


class ReauthRequired(AuthError, PermissionError):
    """
    The credential cannot be used or refreshed any more: the user must log in again.

    Raised when the engine is logged out, or its credential was poisoned by a permanent refresh
    failure (revoked, expired or reused refresh token). No network call is made to raise it.
    """


class AccountMismatch(ReauthRequired):
    """
    The store holds a credential of another account or user: it was not adopted.

    The engine keeps its own credential and does not write to the store. Log in again (or call
    ``reload(allow_identity_change=True)``) to switch identities on purpose.
    """

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "The stored credential belongs to another account or user and was not adopted; "
            "log in again (or reload with allow_identity_change=True) to switch.",
            reason="account_mismatch",
        )


class RefreshFailed(AuthError, ConnectionError):
    """
    A refresh failed for a reason that may go away (network error, 5xx, 429, invalid response).

    Attributes:
        retry_at: POSIX seconds before which the engine will not call the endpoint again, or None.
    """

    retry_at: float | None

    def __init__(
        self, message: str, *, reason: str = "transient", retry_at: float | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_at = retry_at


class LeaseTimeout(RefreshFailed):
    """Another engine held the store's refresh lease for longer than the lease timeout."""


class StorageCorrupt(AuthError, ValueError):
    """
    The store holds data that cannot be read as a credential record.

    The data is left exactly as it is (never overwritten); fix or remove it, then log in again.

    Attributes:
        location: the path or key of the store that holds the bad data.
    """

    location: str

    def __init__(self, location: str, problem: str) -> None:
        super().__init__(
            f"Credential store {location} is corrupt ({problem}); it was left untouched. "
            "Fix or remove it, then log in again.",
            reason="storage_corrupt",
        )
        self.location = location


class StorageUnavailable(AuthError, OSError):
    """The store could not be reached or read (permissions, I/O error, server down)."""

    def __init__(self, message: str, *, reason: str = "storage_unavailable") -> None:
        super().__init__(message, reason=reason)


class StorageUnreplicated(StorageUnavailable):
    """
    A write reached the store's primary, but fewer replicas than required acknowledged it in time.

    The write is not undone (nothing can take it back), but a failover now could bring back the
    record it replaced. The engine keeps the credential it wrote, serves it, never adopts the
    older record back, and writes it again until the replicas acknowledge it
    (``AuthStatus.unsaved`` stays true meanwhile; its failure reason is ``"unreplicated"``).

    Attributes:
        acknowledged: how many replicas acknowledged the write.
        required: how many the store was told to wait for (``min_replicas``).
    """

    acknowledged: int
    required: int

    def __init__(self, location: str, *, acknowledged: int, required: int, timeout: float) -> None:
        super().__init__(
            f"The write to {location} reached the primary, but {acknowledged} of {required} "
            f"required replicas acknowledged it within {timeout:g} s; it is kept and written "
            "again until they do.",
            reason="unreplicated",
        )
        self.acknowledged = acknowledged
        self.required = required


class WriteConflict(AuthError, RuntimeError):
    """
    A compare-and-swap write was refused: the store holds a newer revision than expected.

    This also fences a lease holder whose lease expired while another engine wrote.
    """

    def __init__(self, location: str, expected: int | None, found: int | None) -> None:
        super().__init__(
            f"Refused to overwrite {location}: expected revision {expected}, found {found}.",
            reason="write_conflict",
        )


class IllegalTransition(AuthError, RuntimeError):
    """A trigger was fired in a state that does not accept it; the state did not change."""

    def __init__(self, trigger: str, state: str) -> None:
        super().__init__(
            f"Trigger {trigger!r} is not allowed in state {state}; the state is unchanged.",
            reason="illegal_transition",
        )
        self.trigger = trigger
        self.state = state


class InvalidCredentials(AuthError, ValueError):
    """A credential was built from values that cannot be right (naive datetime, empty token)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="invalid_credentials")


class EngineMisuse(AuthError, RuntimeError):
    """
    The engine was used in a way that cannot work: a wrong type of store or endpoint passed to
    it, or one asyncio engine driven from two event loops at once. Raised at once, before any
    I/O, with a message that says what to do instead.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="engine_misuse")
