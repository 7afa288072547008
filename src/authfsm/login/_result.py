"""
What a login returns, and the last step both flows share: turning the token endpoint's answer
into a :class:`LoginResult` (credentials plus the identity its id_token proves).

A login returns nothing unless every check passed: an id_token that fails verification raises
:class:`IdTokenInvalid` and the tokens are dropped. Landing the credentials in a store is the
engine's job (``engine.login(result.credentials)``), not this module's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

import attrs

from ..engine._credentials import Credentials, decode_jwt_claims
from ..engine._ports import PermanentFailure, Refreshed, RefreshOutcome, TransientFailure
from ._effects import LoginFlow
from ._errors import (
    DeviceCodeExpired,
    IdTokenInvalid,
    LoginDenied,
    LoginError,
    ProviderError,
    TokenRequestFailed,
)
from ._id_token import id_token_flow

__all__ = [
    "IdentityCheck",
    "LoginResult",
    "VerifiedIdentity",
    "credentials_from",
    "outcome_error",
    "provider_error",
]

#: How a login treats the id_token it receives: ``"verify"`` (signature and claims against the
#: provider's keys; the default) or ``"decode"`` (claims read without verification, for
#: providers without a key set; the identity is then marked unverified).
IdentityCheck = Literal["verify", "decode"]


@attrs.frozen(kw_only=True)
class VerifiedIdentity:
    """
    Who logged in, from the id_token.

    Attributes:
        issuer: the id_token's ``iss``.
        subject: its ``sub``: the user's stable id at that issuer.
        verified: True when the signature and claims were checked (``identity_check="verify"``);
            False when the claims were only decoded.
        claims: every claim (``email``, ``name``, ...); not in ``repr``.
    """

    issuer: str
    subject: str
    verified: bool
    claims: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen(kw_only=True)
class LoginResult:
    """
    A finished login.

    Attributes:
        credentials: the tokens, ``expires_at`` from ``expires_in`` and ``last_refresh`` set
            to the time of the answer; hand them to ``engine.login``.
        identity: who logged in, or None when the provider sent no id_token.
    """

    credentials: Credentials
    identity: VerifiedIdentity | None


def credentials_from(tokens: Refreshed, now: float) -> Credentials:
    """The :class:`Credentials` a token response minted at POSIX time ``now``."""
    at = datetime.fromtimestamp(now, UTC)
    expires_at = None if tokens.expires_in is None else at + timedelta(seconds=tokens.expires_in)
    return Credentials(
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        id_token=tokens.id_token,
        expires_at=expires_at,
        last_refresh=at,
    )


def provider_error(code: str, description: str | None, *, where: str) -> ProviderError:
    """The typed error for an OAuth error ``code`` the provider answered ``where``."""
    detail = f" ({description})" if description else ""
    if code == "access_denied":
        return LoginDenied(
            f"The login was denied at the {where}{detail}; log in again and approve it.",
            error=code,
            description=description,
            reason="login_denied",
        )
    if code == "expired_token":
        return DeviceCodeExpired(
            f"The device code expired before the login was approved{detail}; start again.",
            error=code,
            description=description,
            reason="device_code_expired",
        )
    return ProviderError(
        f"The provider refused the login at the {where}: {code}{detail}.",
        error=code,
        description=description,
    )


def outcome_error(outcome: PermanentFailure | TransientFailure, *, where: str) -> LoginError:
    """The typed error for a token request that did not mint tokens."""
    if isinstance(outcome, PermanentFailure):
        return provider_error(outcome.code, outcome.description, where=where)
    return TokenRequestFailed(
        f"The request to the provider's {where} failed ({outcome.reason}); try again.",
        reason=outcome.reason,
    )


@attrs.frozen(kw_only=True)
class Finish:
    """How a flow checks the tokens it obtained (shared by the browser and device flows)."""

    issuer: str
    client_id: str
    algorithms: tuple[str, ...]
    identity_check: IdentityCheck
    has_keys: bool
    leeway: float
    clock: Callable[[], float]


def _decoded_identity(id_token: str) -> VerifiedIdentity:
    claims = decode_jwt_claims(id_token)
    if claims is None:
        raise IdTokenInvalid("The id_token was refused: it cannot be decoded.", reason="malformed")
    issuer, subject = claims.get("iss"), claims.get("sub")
    if not isinstance(issuer, str) or not isinstance(subject, str) or not subject:
        raise IdTokenInvalid(
            "The id_token was refused: it has no issuer or subject.", reason="subject"
        )
    return VerifiedIdentity(
        issuer=issuer, subject=subject, verified=False, claims=MappingProxyType(claims)
    )


def finish_flow(
    outcome: RefreshOutcome, finish: Finish, *, nonce: str | None, where: str = "token endpoint"
) -> LoginFlow[LoginResult]:
    """The :class:`LoginResult` for a token answer, or the typed error it amounts to."""
    if not isinstance(outcome, Refreshed):
        raise outcome_error(outcome, where=where)
    now = finish.clock()
    credentials = credentials_from(outcome, now)
    id_token = outcome.id_token
    if id_token is None:
        return LoginResult(credentials=credentials, identity=None)
    if finish.identity_check == "decode":
        return LoginResult(credentials=credentials, identity=_decoded_identity(id_token))
    if not finish.has_keys:
        raise IdTokenInvalid(
            "The id_token cannot be verified: the provider publishes no jwks_uri and no key set "
            "was given. Pass jwks=, or identity_check='decode' to accept it unverified.",
            reason="no_jwks",
        )
    claims = yield from id_token_flow(
        id_token,
        issuer=finish.issuer,
        client_id=finish.client_id,
        now=now,
        algorithms=finish.algorithms,
        nonce=nonce,
        leeway=finish.leeway,
    )
    identity = VerifiedIdentity(
        issuer=claims["iss"], subject=claims["sub"], verified=True, claims=MappingProxyType(claims)
    )
    return LoginResult(credentials=credentials, identity=identity)
