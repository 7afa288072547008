"""
The start of a credential's life: discovering a provider and logging in.

- :func:`discover` / :func:`discover_async` read the provider's metadata (OpenID Connect
  Discovery, RFC 8414 as the fallback), refusing a document for another issuer, and cache it
  per process (:func:`clear_discovery_cache`).
- :func:`browser_login` / :func:`browser_login_async`: authorization code + PKCE S256 with a
  one-shot loopback redirect on 127.0.0.1 (RFC 7636, RFC 8252, RFC 9207 ``iss``).
- :func:`device_login` / :func:`device_login_async`: the device authorization grant (RFC 8628)
  for machines without a browser.
- :func:`verify_id_token` / :func:`verify_id_token_async`: an id_token's signature (PyJWT,
  asymmetric algorithms only) and claims, with keys from a :class:`JwksCache`.

Both logins return a :class:`LoginResult`: the :class:`~authfsm.Credentials` to hand to
``engine.login(...)`` and the :class:`VerifiedIdentity` the id_token proves. Every error is a
:class:`LoginError` (an :class:`~authfsm.AuthError`) with a ``reason``; none holds a code,
``state``, verifier or token.

Example::

    from authfsm.login import browser_login, discover

    metadata = discover("https://idp.example")
    result = browser_login(metadata, client_id="my-cli")
    engine.login(result.credentials)

Needs PyJWT with its crypto extra: ``pip install 'authfsm[login]'``.
"""

from __future__ import annotations

from ._browser import authorization_url, browser_login, browser_login_async, can_open_browser
from ._device import (
    DEVICE_CODE_GRANT,
    DeviceAuthorization,
    DevicePrompt,
    device_login,
    device_login_async,
)
from ._discovery import (
    ProviderMetadata,
    clear_discovery_cache,
    discover,
    discover_async,
    metadata_from_document,
)
from ._errors import (
    DeviceCodeExpired,
    DiscoveryError,
    IdTokenInvalid,
    IssuerMismatch,
    LoginCancelled,
    LoginDenied,
    LoginError,
    LoginTimeout,
    PortUnavailable,
    ProviderError,
    StateMismatch,
    TokenRequestFailed,
)
from ._id_token import (
    SIGNING_ALGORITHMS,
    JwksCache,
    allowed_algorithms,
    verify_id_token,
    verify_id_token_async,
)
from ._result import IdentityCheck, LoginResult, VerifiedIdentity

__all__ = [
    "DEVICE_CODE_GRANT",
    "SIGNING_ALGORITHMS",
    "DeviceAuthorization",
    "DeviceCodeExpired",
    "DevicePrompt",
    "DiscoveryError",
    "IdTokenInvalid",
    "IdentityCheck",
    "IssuerMismatch",
    "JwksCache",
    "LoginCancelled",
    "LoginDenied",
    "LoginError",
    "LoginResult",
    "LoginTimeout",
    "PortUnavailable",
    "ProviderError",
    "ProviderMetadata",
    "StateMismatch",
    "TokenRequestFailed",
    "VerifiedIdentity",
    "allowed_algorithms",
    "authorization_url",
    "browser_login",
    "browser_login_async",
    "can_open_browser",
    "clear_discovery_cache",
    "device_login",
    "device_login_async",
    "discover",
    "discover_async",
    "metadata_from_document",
    "verify_id_token",
    "verify_id_token_async",
]
