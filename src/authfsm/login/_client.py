"""
The OAuth client a login acts as: its token endpoint adapter, its key source and the rules its
id_token is checked by, assembled once from the provider metadata and the caller's arguments.

Shared by the browser and device logins so that both validate their arguments the same way,
before any port is bound or request sent.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..adapters._endpoint import ClientAuth, OAuthTokenEndpoint
from ._discovery import ProviderMetadata
from ._errors import DiscoveryError
from ._id_token import JwksCache, StaticKeys, allowed_algorithms, key_source
from ._result import Finish, IdentityCheck

__all__ = ["check_seconds", "finish_for", "keys_for", "open_endpoint", "require_endpoint"]


def check_seconds(name: str, value: float | None, *, allow_none: bool = False) -> None:
    """``ValueError`` unless ``value`` is a positive, finite number of seconds."""
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive number of seconds")


def require_endpoint(metadata: ProviderMetadata, name: str) -> str:
    """The metadata's endpoint ``name``; :class:`DiscoveryError` when the provider has none."""
    url = getattr(metadata, name)
    if url is None:
        raise DiscoveryError(
            f"The provider {metadata.issuer!r} publishes no {name}: this login flow is not "
            "available from it.",
            reason="missing_endpoint",
        )
    assert isinstance(url, str)
    return url


@contextlib.contextmanager
def open_endpoint(
    metadata: ProviderMetadata,
    *,
    client_id: str,
    client_secret: str | None,
    client_auth: ClientAuth,
    http_timeout: float,
    endpoint: OAuthTokenEndpoint | None,
) -> Iterator[OAuthTokenEndpoint]:
    """
    ``endpoint`` when given (its client id must be ``client_id``), else a new adapter for the
    metadata's token endpoint, closed on exit.
    """
    if endpoint is not None:
        if endpoint.client_id != client_id:
            raise ValueError("endpoint.client_id is not the client_id of this login")
        yield endpoint
        return
    with OAuthTokenEndpoint(
        metadata.token_endpoint,
        client_id,
        client_secret=client_secret,
        client_auth=client_auth,
        revoke_url=metadata.revocation_endpoint,
        timeout=http_timeout,
    ) as own:
        yield own


def keys_for(
    metadata: ProviderMetadata,
    jwks: JwksCache | Mapping[str, Any] | None,
    *,
    http_timeout: float,
) -> JwksCache | StaticKeys | None:
    """The key source: ``jwks`` if given, else a :class:`JwksCache` of the metadata's jwks_uri."""
    if jwks is not None:
        return key_source(jwks)
    if metadata.jwks_uri is not None:
        return JwksCache(metadata.jwks_uri, timeout=http_timeout)
    return None


def finish_for(
    metadata: ProviderMetadata,
    *,
    client_id: str,
    identity_check: IdentityCheck,
    keys: object | None,
    leeway: float,
    clock: Callable[[], float] | None,
) -> Finish:
    """How the login checks what the token endpoint answers."""
    if identity_check not in ("verify", "decode"):
        raise ValueError("identity_check must be 'verify' or 'decode'")
    if isinstance(leeway, bool) or not isinstance(leeway, int | float) or not leeway >= 0:
        raise ValueError("leeway must be a number of seconds >= 0")
    return Finish(
        issuer=metadata.issuer,
        client_id=client_id,
        algorithms=allowed_algorithms(metadata.id_token_signing_alg_values_supported),
        identity_check=identity_check,
        has_keys=keys is not None,
        leeway=float(leeway),
        clock=clock or time.time,
    )
