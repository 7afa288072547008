"""
The errors a login raises.

Every one is a :class:`LoginError`, itself an :class:`~authfsm.AuthError` with a machine-readable
``reason``, and also the builtin a caller would catch (``LoginTimeout`` is a ``TimeoutError``,
``PortUnavailable`` an ``OSError``, ...). Messages say what happened and what to do; they never
hold an authorization code, ``state``, ``nonce``, PKCE verifier, device code or token. A
provider's ``error_description`` appears only with control characters removed, any secret of the
login redacted and cut to 200 characters.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..engine._errors import AuthError

__all__ = [
    "DeviceCodeExpired",
    "DiscoveryError",
    "IdTokenInvalid",
    "IssuerMismatch",
    "LoginCancelled",
    "LoginDenied",
    "LoginError",
    "LoginTimeout",
    "PortUnavailable",
    "ProviderError",
    "StateMismatch",
    "TokenRequestFailed",
]


class LoginError(AuthError):
    """Base of every error a login (discovery, browser, device, id_token check) raises."""


class DiscoveryError(LoginError, ValueError):
    """
    The provider's metadata could not be fetched or cannot be trusted: no document at either
    well-known address, malformed JSON, not an object, a required field missing, an endpoint
    that is not an http(s) URL, or an ``issuer`` other than the one asked for. Also raised when a
    flow needs an endpoint the metadata lacks (``reason="missing_endpoint"``).
    """


class LoginTimeout(LoginError, TimeoutError):
    """No answer came before the login's deadline (the browser redirect, or a device approval)."""

    def __init__(self, message: str, *, reason: str = "login_timeout") -> None:
        super().__init__(message, reason=reason)


class LoginCancelled(LoginError):
    """The login was cancelled through the loopback receiver's ``/cancel`` path."""

    def __init__(self, message: str = "The login was cancelled (a request to /cancel).") -> None:
        super().__init__(message, reason="login_cancelled")


class ProviderError(LoginError):
    """
    The provider answered with an OAuth error (at the authorization or the token endpoint).

    Attributes:
        error: the OAuth error code (``invalid_scope``, ``invalid_grant``, ...), lower case and
            limited to ``[a-z0-9_.-]``; ``"unknown"`` when the provider sent something else.
        description: the provider's ``error_description``, sanitised (see the module), or None.
    """

    error: str
    description: str | None

    def __init__(
        self,
        message: str,
        *,
        error: str,
        description: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason or error)
        self.error = error
        self.description = description


class LoginDenied(ProviderError, PermissionError):
    """The user (or the provider's policy) refused the authorization: ``access_denied``."""


class DeviceCodeExpired(ProviderError):
    """The device code expired before the user approved it (``expired_token``); start again."""


class StateMismatch(LoginError):
    """
    A redirect reached the loopback receiver whose ``state`` is missing or not the one this login
    sent: it may be forged (login CSRF) or come from an older login's tab. Its code was never
    exchanged.
    """

    def __init__(self) -> None:
        super().__init__(
            "The browser redirect carried a missing or wrong 'state': it was not issued for this "
            "login, so its code was not used. Start the login again, in one browser tab.",
            reason="state_mismatch",
        )


class IssuerMismatch(LoginError):
    """
    The redirect's RFC 9207 ``iss`` parameter names another issuer than the provider's metadata
    (``reason="issuer_mismatch"``: a mix-up attack, or a misconfigured client), or it is missing
    although the metadata says the provider always sends it (``reason="issuer_missing"``).
    """


class PortUnavailable(LoginError, OSError):
    """
    None of the loopback ports could be bound.

    Attributes:
        failures: ``(port, why)`` for every port tried, in order (``why`` is the OS's short
            error name, such as ``"EADDRINUSE"``).
    """

    failures: tuple[tuple[int, str], ...]

    def __init__(self, failures: Sequence[tuple[int, str]]) -> None:
        listed = ", ".join(f"{port} ({why})" for port, why in failures)
        super().__init__(
            f"Could not listen on 127.0.0.1 for the login redirect: {listed}. Close the program "
            "using the port (an earlier login?) or configure another registered port.",
            reason="port_unavailable",
        )
        self.failures = tuple(failures)


class IdTokenInvalid(LoginError, ValueError):
    """
    The id_token failed verification; nothing from the login was returned.

    ``reason`` names the check: ``malformed``, ``algorithm`` (``none``, ``HS*`` or one the
    provider does not list), ``unknown_kid``, ``signature``, ``issuer``, ``audience``, ``azp``,
    ``expired``, ``issued_at``, ``not_yet_valid``, ``nonce``, ``subject``, ``no_jwks`` (no keys
    to check it with) or ``jwks_unavailable`` (the key set could not be fetched or read).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, reason=reason)


class TokenRequestFailed(LoginError, ConnectionError):
    """
    A request to the provider's token or device authorization endpoint failed for a reason that
    may go away (network error, timeout, 5xx, 429, malformed answer). ``reason`` is the
    adapter's (``network:ConnectError``, ``http_503``, ``invalid_response:access_token``, ...).
    """
