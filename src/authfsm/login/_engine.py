"""
Where a login lands: an engine built from an issuer, logins stored through the engine's guarded
path, and refresh replies whose id_tokens are verified like a login's.

:func:`issuer_setup` discovers the provider once and builds the token endpoint from its metadata.
:class:`VerifyingEndpoint` wraps that endpoint: an id_token in a refresh reply is checked against
the provider's keys; one that fails is dropped (the credential keeps the identity it had) but the
rotated tokens are kept, since the server has already spent the old refresh token.
:func:`land` stores a :class:`LoginResult` with ``engine.login`` (lease, compare-and-swap; clears
shared poison and the logged-out tombstone) so every process sharing the store adopts it, and
optionally revokes the refresh token it replaced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs
import httpx

from ..adapters import OAuthTokenEndpoint
from ..engine._credentials import Credentials
from ..engine._events import EventLog
from ..engine._ports import Refreshed, RefreshOutcome
from ._discovery import ProviderMetadata, discover, discover_async
from ._errors import IdTokenInvalid
from ._id_token import JwksCache, allowed_algorithms, verify_id_token, verify_id_token_async
from ._result import IdentityCheck, LoginResult

__all__ = ["IssuerSetup", "VerifyingEndpoint", "issuer_setup", "issuer_setup_async", "stamped"]


class VerifyingEndpoint:
    """
    A token endpoint whose refresh replies carry verified id_tokens (or none).

    An id_token that passes :func:`verify_id_token` (signature, ``iss``, ``aud``, ``exp``) comes
    back with ``id_token_verified=True``. One that fails is removed from the reply and logged
    (``authfsm.refresh.id_token_refused``): the access and refresh tokens are still adopted,
    because refusing them would lose a rotation the server has already made.
    """

    def __init__(
        self,
        inner: OAuthTokenEndpoint,
        metadata: ProviderMetadata,
        *,
        jwks: JwksCache,
        leeway: float = 60.0,
        clock: Callable[[], float] = time.time,
        logger: Any = None,
    ) -> None:
        self._inner = inner
        self._metadata = metadata
        self._jwks = jwks
        self._leeway = leeway
        self._clock = clock
        self._log = EventLog(logger)

    @property
    def inner(self) -> OAuthTokenEndpoint:
        """The wrapped endpoint (for the code and device grants)."""
        return self._inner

    def _options(self) -> dict[str, Any]:
        return {
            "issuer": self._metadata.issuer,
            "client_id": self._inner.client_id,
            "jwks": self._jwks,
            "now": self._clock(),
            "leeway": self._leeway,
            "algorithms": allowed_algorithms(self._metadata.id_token_signing_alg_values_supported),
        }

    def _judged(self, answer: Refreshed, error: IdTokenInvalid | None) -> Refreshed:
        if error is None:
            return attrs.evolve(answer, id_token_verified=True)
        self._log.emit("warning", "authfsm.refresh.id_token_refused", reason=error.reason)
        return attrs.evolve(answer, id_token=None, id_token_verified=False)

    def refresh(self, credentials: Credentials) -> RefreshOutcome:
        answer = self._inner.refresh(credentials)
        if not isinstance(answer, Refreshed) or answer.id_token is None:
            return answer
        try:
            verify_id_token(answer.id_token, **self._options())
        except IdTokenInvalid as error:
            return self._judged(answer, error)
        return self._judged(answer, None)

    async def refresh_async(self, credentials: Credentials) -> RefreshOutcome:
        answer = await self._inner.refresh_async(credentials)
        if not isinstance(answer, Refreshed) or answer.id_token is None:
            return answer
        try:
            await verify_id_token_async(answer.id_token, **self._options())
        except IdTokenInvalid as error:
            return self._judged(answer, error)
        return self._judged(answer, None)

    def revoke(self, credentials: Credentials) -> bool:
        return self._inner.revoke(credentials)

    async def revoke_async(self, credentials: Credentials) -> bool:
        return await self._inner.revoke_async(credentials)

    def close(self) -> None:
        self._inner.close()

    def __repr__(self) -> str:
        return f"VerifyingEndpoint({self._inner!r}, issuer={self._metadata.issuer!r})"


@attrs.frozen(kw_only=True)
class IssuerSetup:
    """What an engine built from an issuer knows about it (no secret in ``repr``)."""

    metadata: ProviderMetadata
    client_id: str
    client_secret: str | None = attrs.field(repr=False)
    scope: str
    endpoint: VerifyingEndpoint
    identity_check: IdentityCheck

    def login_options(self) -> dict[str, Any]:
        """The arguments ``browser_login``/``device_login`` take from this setup."""
        return {
            "client_id": self.client_id,
            "scope": self.scope,
            "client_secret": self.client_secret,
            "endpoint": self.endpoint.inner,
            "identity_check": self.identity_check,
        }


def _setup(
    metadata: ProviderMetadata,
    client_id: str,
    client_secret: str | None,
    scope: str,
    timeout: float,
    identity_check: IdentityCheck,
    clock: Callable[[], float],
    logger: Any,
) -> IssuerSetup:
    inner = OAuthTokenEndpoint(
        metadata.token_endpoint,
        client_id,
        client_secret=client_secret,
        revoke_url=metadata.revocation_endpoint,
        timeout=timeout,
    )
    if identity_check == "verify" and not metadata.jwks_uri:
        raise IdTokenInvalid(
            f"{metadata.issuer} publishes no jwks_uri, so id_tokens cannot be verified; "
            'pass identity_check="decode" to accept unverified identities.',
            reason="no_jwks_uri",
        )
    jwks = JwksCache(metadata.jwks_uri or "", timeout=timeout)
    endpoint = VerifyingEndpoint(inner, metadata, jwks=jwks, clock=clock, logger=logger)
    return IssuerSetup(
        metadata=metadata,
        client_id=client_id,
        client_secret=client_secret,
        scope=scope,
        endpoint=endpoint,
        identity_check=identity_check,
    )


def issuer_setup(
    issuer: str,
    *,
    client_id: str,
    client_secret: str | None = None,
    scope: str = "openid offline_access",
    timeout: float = 10.0,
    identity_check: IdentityCheck = "verify",
    clock: Callable[[], float] = time.time,
    logger: Any = None,
    client: httpx.Client | None = None,
) -> IssuerSetup:
    """Discover ``issuer`` (cached per process) and build its token endpoint."""
    metadata = discover(issuer, client=client, timeout=timeout)
    return _setup(metadata, client_id, client_secret, scope, timeout, identity_check, clock, logger)


async def issuer_setup_async(
    issuer: str,
    *,
    client_id: str,
    client_secret: str | None = None,
    scope: str = "openid offline_access",
    timeout: float = 10.0,
    identity_check: IdentityCheck = "verify",
    clock: Callable[[], float] = time.time,
    logger: Any = None,
    client: httpx.AsyncClient | None = None,
) -> IssuerSetup:
    """:func:`issuer_setup` with asyncio."""
    metadata = await discover_async(issuer, client=client, timeout=timeout)
    return _setup(metadata, client_id, client_secret, scope, timeout, identity_check, clock, logger)


def stamped(result: LoginResult, setup: IssuerSetup) -> Credentials:
    """The login's credentials, marked with their issuer, client and whether it was verified."""
    identity = result.identity
    return attrs.evolve(
        result.credentials,
        issuer=setup.metadata.issuer,
        client_id=setup.client_id,
        identity_verified=identity is not None and identity.verified,
    )


def superseded(previous: Credentials | None, new: Credentials) -> Credentials | None:
    """The credential a login replaced, if it had a refresh token worth revoking."""
    if previous is None or previous.refresh_token is None:
        return None
    if previous.refresh_token == new.refresh_token:
        return None
    return previous
