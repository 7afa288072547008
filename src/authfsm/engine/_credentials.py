"""
The credential value: what a store holds and what an engine caches.

A :class:`Credentials` is immutable; a refresh makes a new one with :func:`attrs.evolve`. Secrets
(access, refresh and id tokens) are excluded from ``repr`` and from every log event; the
:func:`fingerprint` stands in for them wherever a credential must be named.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import attrs

from ._errors import InvalidCredentials

__all__ = ["Credentials", "Kind", "decode_jwt_claims", "fingerprint", "token_problem"]

# C0 controls, DEL and C1 controls: never part of a real token, and CR/LF/NUL break HTTP headers.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


class Kind(enum.Enum):
    """What sort of secret a credential holds."""

    #: An OAuth access token, usually with a rotating refresh token.
    OAUTH = "oauth"
    #: A static API key: never refreshed, never due.
    API_KEY = "api_key"


def _aware(_instance: object, attribute: attrs.Attribute[Any], value: datetime | None) -> None:
    if value is None:
        return
    if not isinstance(value, datetime):
        raise InvalidCredentials(f"{attribute.name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidCredentials(
            f"{attribute.name} is a naive datetime; pass a timezone-aware one "
            "(for example datetime.now(UTC))"
        )


def token_problem(value: object) -> str | None:
    """
    Why ``value`` cannot be used as a token, or None when it can.

    A token is a non-empty ``str`` of valid Unicode text that is not only whitespace and holds no
    control character (CR, LF, NUL, ...): such a value could never be sent in an HTTP header or
    form. The answer describes the problem without quoting the value, so it is safe to show.
    """
    if not isinstance(value, str):
        return f"must be a str, not {type(value).__name__}"
    if not value.strip():
        return "is empty or only whitespace"
    if _CONTROL.search(value):
        return "contains a control character (such as CR, LF or NUL)"
    # A lone surrogate survives JSON decoding but can be neither hashed nor sent.
    try:
        value.encode()
    except UnicodeEncodeError:
        return "is not valid Unicode text"
    return None


def _token(_instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        if attribute.name == "access_token":
            raise InvalidCredentials("access_token is required")
        return
    problem = token_problem(value)
    if problem is not None:
        raise InvalidCredentials(f"{attribute.name} {problem}")


def _optional_str(_instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidCredentials(f"{attribute.name} must be a non-empty string or None")
    if value is not None:
        _encodable(attribute.name, value)


def _encodable(name: str, value: str) -> None:
    # A lone surrogate survives JSON decoding but can be neither hashed nor sent.
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidCredentials(f"{name} is not valid Unicode text") from None


def _kind(value: Kind | str) -> Kind:
    """A :class:`Kind`, or its string value (``"oauth"``, ``"api_key"``) converted to one."""
    if isinstance(value, Kind):
        return value
    allowed = " or ".join(repr(kind.value) for kind in Kind)
    if isinstance(value, str):
        try:
            return Kind(value)
        except ValueError:
            # The value is not echoed: a misplaced argument could be a secret.
            raise InvalidCredentials(f"kind must be a Kind or {allowed}") from None
    raise InvalidCredentials(f"kind must be a Kind or {allowed}, not {type(value).__name__}")


@attrs.frozen(kw_only=True)
class Credentials:
    """
    One OAuth credential (or API key) as a frozen value.

    Attributes:
        access_token: the bearer token (or the API key when ``kind`` is ``Kind.API_KEY``).
        refresh_token: the refresh token, rotated by most servers on every use.
        id_token: an OpenID Connect id_token (a JWT); its claims give the identity.
        expires_at: when the access token expires (timezone-aware), if known.
        account_id: the account/workspace/tenant the credential belongs to, if known.
        last_refresh: when the credential was last minted or refreshed (timezone-aware).
        kind: OAuth or API key; its string value (``"oauth"``, ``"api_key"``) is converted.
        issuer: the OpenID provider (or authorization server) that issued it, if known.
        client_id: the OAuth client it was issued to, if known: with ``issuer``, what a
            process that only has the store needs to refresh it (``authfsm token``).
        identity_verified: the id_token's signature and claims were verified against the
            issuer's published keys when it was obtained (``authfsm.login``); False when the
            identity comes from unverified claims (or there is no id_token).

    ``issuer``, ``client_id`` and ``identity_verified`` describe the credential; they are not
    part of its :attr:`fingerprint`.

    Every token must pass :func:`token_problem` (non-empty, not only whitespace, no control
    characters); anything else raises :class:`~authfsm.InvalidCredentials`, whose message never
    contains the token.
    """

    access_token: str = attrs.field(repr=False, validator=_token)
    refresh_token: str | None = attrs.field(default=None, repr=False, validator=_token)
    id_token: str | None = attrs.field(default=None, repr=False, validator=_token)
    expires_at: datetime | None = attrs.field(default=None, validator=_aware)
    account_id: str | None = attrs.field(default=None, validator=_optional_str)
    last_refresh: datetime | None = attrs.field(default=None, validator=_aware)
    kind: Kind = attrs.field(default=Kind.OAUTH, converter=_kind)
    issuer: str | None = attrs.field(default=None, validator=_optional_str)
    client_id: str | None = attrs.field(default=None, validator=_optional_str)
    identity_verified: bool = attrs.field(
        default=False, validator=attrs.validators.instance_of(bool)
    )

    @classmethod
    def api_key(cls, key: str) -> Credentials:
        """A static API key credential: never refreshed."""
        return cls(access_token=key, kind=Kind.API_KEY)

    @functools.cached_property
    def fingerprint(self) -> str:
        """A stable, non-reversible name for this credential (see :func:`fingerprint`)."""
        return fingerprint(self)

    @functools.cached_property
    def _id_token_claims(self) -> Mapping[str, Any]:
        # Decoded once per credential: an engine judges the identity of the same few
        # credentials at every store read.
        return MappingProxyType(decode_jwt_claims(self.id_token) or {})


def id_token_claims(credentials: Credentials) -> Mapping[str, Any]:
    """The claims of the credential's id_token, decoded without verification (empty if none)."""
    return credentials._id_token_claims


def fingerprint(credentials: Credentials) -> str:
    """
    A short keyed hash over the credential's material fields.

    Two credentials with the same tokens, account and kind have the same fingerprint; a rotation,
    a login or a switch of account changes it. ``last_refresh`` is left out on purpose: rewriting
    the same tokens is not a material change. The raw tokens cannot be recovered from it.
    """
    h = hashlib.blake2b(digest_size=8, person=b"authfsm-fp-v1")
    for part in (
        credentials.kind.value,
        credentials.access_token,
        credentials.refresh_token or "",
        credentials.id_token or "",
        credentials.account_id or "",
    ):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()


def decode_jwt_claims(token: str | None) -> dict[str, Any] | None:
    """
    The claims of a JWT, decoded **without** verifying its signature, or None.

    Used only to read hints the client needs anyway (``exp``, identity claims) from tokens it
    already trusts enough to send; never for authorization decisions.
    """
    if not token or token.count(".") != 2:
        return None
    _header, payload, _signature = token.split(".")
    if not payload:
        return None
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def jwt_expiry(token: str | None) -> datetime | None:
    """The ``exp`` claim of a JWT as an aware datetime, or None when absent or malformed."""
    claims = decode_jwt_claims(token)
    if claims is None:
        return None
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    try:
        return datetime.fromtimestamp(exp, UTC)
    except (OverflowError, OSError, ValueError):
        return None
