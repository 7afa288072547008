"""What an engine tells the application about its credential (``AuthEngine.status()``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from ..states import State
from ._identity import Identity

__all__ = ["AuthStatus"]


@attrs.frozen(kw_only=True)
class AuthStatus:
    """
    A snapshot of one engine's view of the credential.

    Attributes:
        state: the lifecycle state.
        method: ``"oauth"``, ``"api_key"`` or None when logged out.
        token: the access token (or API key), only when asked for and never while POISONED or
            LOGGED_OUT. Excluded from ``repr``.
        identity: the account and user the credential belongs to, as far as known.
        issuer: the provider that issued the credential, if known.
        identity_verified: the identity comes from an id_token whose signature and claims were
            verified against the issuer's keys (False: from unverified claims, or unknown).
        fingerprint: a non-secret name of the credential.
        expires_at: when the access token expires, if known.
        refresh_at: when the engine will next refresh it, if ever.
        retry_at: while backing off after a transient failure, when the next call may happen.
        failure: the reason of the last failure (an OAuth error code, ``"account_mismatch"``, a
            transient reason), or None.
        requires_login: the user must log in again for this application to get a token.
        unsaved: the engine holds a credential the store does not (a write failed after a
            refresh, or the store lost its record); it keeps serving it and writes it again
            on later calls. Until then, another process sharing the store may spend the
            older refresh token.
    """

    state: State
    method: str | None = None
    token: str | None = attrs.field(default=None, repr=False)
    identity: Identity = attrs.field(factory=Identity)
    issuer: str | None = None
    identity_verified: bool = False
    fingerprint: str | None = None
    expires_at: datetime | None = None
    refresh_at: datetime | None = None
    retry_at: datetime | None = None
    failure: str | None = None
    requires_login: bool = False
    unsaved: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO 8601; the token only if present)."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        out: dict[str, Any] = {
            "state": self.state.value,
            "method": self.method,
            "account_id": self.identity.account_id,
            "user_id": self.identity.user_id,
            "issuer": self.issuer,
            "identity_verified": self.identity_verified,
            "fingerprint": self.fingerprint,
            "expires_at": iso(self.expires_at),
            "refresh_at": iso(self.refresh_at),
            "retry_at": iso(self.retry_at),
            "failure": self.failure,
            "requires_login": self.requires_login,
            "unsaved": self.unsaved,
        }
        if self.token is not None:
            out["token"] = self.token
        return out
