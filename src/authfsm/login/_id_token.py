"""
Verifying an OpenID Connect id_token (OpenID Connect Core 1.0 §3.1.3.7).

This module owns which keys and algorithms an id_token may be checked with, the signature check
(done by PyJWT, never by hand) and the claim checks (``iss``, ``aud``, ``azp``, ``exp``,
``iat``, ``nbf``, ``nonce``, ``sub``) against an explicit ``now``. It must never accept ``alg:
none`` or an HMAC (``HS*``) signature (a public key used as an HMAC secret is the classic
confusion attack, and this client holds no secret a provider would sign with), and never put the
token, or a claim value taken from it, into an error.

:func:`check_id_token` is pure; :func:`id_token_flow` adds one re-fetch of the key set when the
token names a key the set does not hold (the provider rotated its keys), and
:func:`verify_id_token` / :func:`verify_id_token_async` drive that flow.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import httpx

try:
    import jwt
    from jwt.algorithms import has_crypto
except ModuleNotFoundError as missing:  # pragma: no cover - the login extra is not installed
    raise ModuleNotFoundError(
        "authfsm.login verifies id_tokens with PyJWT: pip install 'authfsm[login]'"
    ) from missing
if not has_crypto:  # pragma: no cover
    raise ModuleNotFoundError(
        "authfsm.login needs PyJWT's crypto extra (pyca/cryptography): pip install 'authfsm[login]'"
    )

from ..adapters._endpoint import (
    Reply,
    build_get_request,
    new_sync_client,
    send,
    send_async,
)
from ..adapters._redact import redact_url
from ..engine._events import EventLog
from ..engine._ports import TransientFailure
from ._effects import AsyncIO, Jwk, LoadKeys, LoginFlow, SyncIO, drive, drive_async
from ._errors import IdTokenInvalid
from ._pkce import same_secret

if TYPE_CHECKING:
    from jwt.types import Options

__all__ = [
    "SIGNING_ALGORITHMS",
    "JwksCache",
    "StaticKeys",
    "allowed_algorithms",
    "check_id_token",
    "id_token_flow",
    "verify_id_token",
    "verify_id_token_async",
]

#: The id_token algorithms ever accepted: asymmetric signatures only.
SIGNING_ALGORITHMS: frozenset[str] = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_KEY_TYPE = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_EC_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})
#: Signature only: the claims are checked below, against the caller's ``now``. Short keys
#: (RSA under 2048 bits, HMAC secrets) are refused rather than warned about.
_SIGNATURE_ONLY: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "enforce_minimum_key_length": True,
}
DEFAULT_JWKS_BYTES = 256 * 1024


def allowed_algorithms(listed: Sequence[str]) -> tuple[str, ...]:
    """
    The algorithms an id_token may use: those ``listed`` (the provider's
    ``id_token_signing_alg_values_supported``) that are asymmetric signatures; ``RS256`` when
    the list is empty (OpenID Connect requires every provider to support it). ``none`` and
    ``HS*`` are always dropped.
    """
    return tuple(alg for alg in (listed or ("RS256",)) if alg in SIGNING_ALGORITHMS)


def _invalid(reason: str, what: str) -> IdTokenInvalid:
    return IdTokenInvalid(f"The id_token was refused: {what}.", reason=reason)


def _fits(jwk: Jwk, alg: str, kid: str | None) -> bool:
    """Whether ``jwk`` may check a signature made with ``alg`` by the key named ``kid``."""
    if not isinstance(jwk, Mapping):
        return False
    if kid is not None and jwk.get("kid") != kid:
        return False
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", alg) != alg:
        return False
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return False
    kty = jwk.get("kty")
    if kty != _KEY_TYPE.get(alg[:2]):
        return False
    if kty == "EC":
        return jwk.get("crv") == _EC_CURVE.get(alg)
    if kty == "OKP":
        return jwk.get("crv") in _OKP_CURVES
    return True


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _signed_claims(token: str, keys: Sequence[Jwk], algorithms: Sequence[str]) -> dict[str, Any]:
    if not isinstance(token, str) or token.count(".") != 2:
        raise _invalid("malformed", "it is not a compact JWS")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _invalid("malformed", "its header cannot be read") from None
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or alg not in allowed_algorithms(algorithms):
        raise _invalid("algorithm", "its algorithm is not an allowed asymmetric signature")
    if kid is not None and not isinstance(kid, str):
        raise _invalid("malformed", "its key id is not a string")
    candidates: list[jwt.PyJWK] = []
    for jwk in keys:
        if _fits(jwk, alg, kid):
            try:
                candidates.append(jwt.PyJWK(dict(jwk), algorithm=alg))
            except jwt.PyJWTError:
                continue  # an unusable key in the set: skip it, as PyJWKSet does
    if not candidates:
        raise _invalid("unknown_kid", "no key of the provider's key set matches its key id")
    for key in candidates:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key=key, algorithms=[alg], options=_SIGNATURE_ONLY
            )
        except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
            continue
        except jwt.PyJWTError:
            raise _invalid("malformed", "it cannot be decoded") from None
        return claims
    raise _invalid("signature", "its signature does not verify with the provider's keys")


def check_id_token(
    id_token: str,
    *,
    keys: Sequence[Jwk],
    issuer: str,
    client_id: str,
    now: float,
    algorithms: Sequence[str] = ("RS256",),
    nonce: str | None = None,
    leeway: float = 60.0,
) -> dict[str, Any]:
    """
    The claims of ``id_token`` once every check passed; :class:`IdTokenInvalid` otherwise.

    Checks, in order: the JWS shape; ``alg`` among :func:`allowed_algorithms` of
    ``algorithms``; a key of ``keys`` (JWK dicts) fitting its ``kid``, ``alg`` and key type;
    the signature; ``iss`` exactly ``issuer``; ``aud`` holding ``client_id``; ``azp`` equal to
    ``client_id`` when there are several audiences or an ``azp``; ``exp`` present and not
    passed; ``iat`` present and not in the future; ``nbf`` not in the future; ``nonce`` equal
    (in constant time) when ``nonce`` is given; ``sub`` a non-empty string. Times are POSIX
    seconds compared with ``now`` give or take ``leeway`` seconds.
    """
    claims = _signed_claims(id_token, keys, algorithms)
    if claims.get("iss") != issuer:
        raise _invalid("issuer", f"it was not issued by {issuer!r}")
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience
    if not isinstance(audiences, list) or client_id not in audiences:
        raise _invalid("audience", f"its audience does not include the client {client_id!r}")
    if (len(audiences) > 1 or "azp" in claims) and claims.get("azp") != client_id:
        raise _invalid("azp", f"it was not issued to the client {client_id!r} (azp)")
    expires = _number(claims, "exp")
    if expires is None or now > expires + leeway:
        raise _invalid("expired", "it has expired (or has no exp)")
    issued = _number(claims, "iat")
    if issued is None or issued > now + leeway:
        raise _invalid("issued_at", "it has no iat, or was issued in the future")
    if "nbf" in claims:
        not_before = _number(claims, "nbf")
        if not_before is None or not_before > now + leeway:
            raise _invalid("not_yet_valid", "it is not valid yet (nbf)")
    if nonce is not None:
        found = claims.get("nonce")
        if not isinstance(found, str) or not same_secret(nonce, found):
            raise _invalid("nonce", "its nonce is not the one this login sent")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise _invalid("subject", "it has no subject (sub)")
    return claims


def id_token_flow(
    id_token: str,
    *,
    issuer: str,
    client_id: str,
    now: float,
    algorithms: Sequence[str],
    nonce: str | None,
    leeway: float,
) -> LoginFlow[dict[str, Any]]:
    """:func:`check_id_token` with the keys loaded, and loaded once more on an unknown key id."""
    checks: dict[str, Any] = {
        "issuer": issuer,
        "client_id": client_id,
        "now": now,
        "algorithms": algorithms,
        "nonce": nonce,
        "leeway": leeway,
    }
    keys = yield LoadKeys(refresh=False)
    try:
        return check_id_token(id_token, keys=keys, **checks)
    except IdTokenInvalid as error:
        if error.reason != "unknown_kid":
            raise
    keys = yield LoadKeys(refresh=True)
    return check_id_token(id_token, keys=keys, **checks)


# -- key sets ------------------------------------------------------------------------------------


def _parse_jwks(reply: Reply | TransientFailure, url: str) -> tuple[Jwk, ...]:
    shown = redact_url(url)
    if isinstance(reply, TransientFailure):
        what = reply.reason
    elif not 200 <= reply.status < 300:
        what = f"HTTP {reply.status}"
    elif reply.problem is not None:
        what = reply.problem
    else:
        try:
            document = json.loads(reply.body or b"")
        except (ValueError, RecursionError):
            document = None
        keys = document.get("keys") if isinstance(document, dict) else None
        if isinstance(keys, list):
            return tuple(MappingProxyType(key) for key in keys if isinstance(key, dict))
        what = "not a JWK set"
    raise IdTokenInvalid(
        f"The provider's signing keys could not be loaded from {shown} ({what}), so the "
        "id_token cannot be verified; try again later.",
        reason="jwks_unavailable",
    )


class JwksCache:
    """
    The provider's signing keys (its ``jwks_uri``), fetched with httpx on first use and kept.

    :func:`verify_id_token` asks for a fresh copy once when a token names a key id the cached
    set does not hold (the provider rotated its keys). A fetch is held to ``timeout`` seconds
    overall and ``max_response_bytes``; a failed fetch raises :class:`IdTokenInvalid` with
    ``reason="jwks_unavailable"`` and keeps the old set.

    Args:
        jwks_uri: the key set's URL (from the provider metadata).
        client: an ``httpx.Client`` for sync fetches (left open); by default a short-lived one.
        timeout: the deadline of one fetch, in seconds.
        max_response_bytes: the body cap.
    """

    def __init__(
        self,
        jwks_uri: str,
        *,
        client: httpx.Client | None = None,
        timeout: float = 10.0,
        max_response_bytes: int = DEFAULT_JWKS_BYTES,
    ) -> None:
        if httpx.URL(jwks_uri).scheme not in {"http", "https"}:
            raise ValueError("jwks_uri must be an http or https URL")
        self._url = jwks_uri
        self._client = client
        self._timeout = float(timeout)
        self._cap = max_response_bytes
        self._lock = threading.Lock()
        self._keys: tuple[Jwk, ...] | None = None
        #: How many times the set was fetched (for tests and diagnostics).
        self.fetches = 0

    def __repr__(self) -> str:
        return f"JwksCache({redact_url(self._url)!r}, cached={self._keys is not None})"

    def keys(self, *, refresh: bool = False) -> tuple[Jwk, ...]:
        """The cached key set (JWK dicts), fetched first when there is none or ``refresh``."""
        with self._lock:
            if self._keys is None or refresh:
                request = build_get_request(self._url)
                if self._client is not None:
                    reply = send(request, client=self._client, timeout=self._timeout, cap=self._cap)
                else:
                    with new_sync_client(self._timeout) as own:
                        reply = send(request, client=own, timeout=self._timeout, cap=self._cap)
                self.fetches += 1
                self._keys = _parse_jwks(reply, self._url)
            return self._keys

    async def keys_async(
        self, *, refresh: bool = False, client: httpx.AsyncClient | None = None
    ) -> tuple[Jwk, ...]:
        """:meth:`keys` with asyncio, on ``client`` or a short-lived ``AsyncClient``."""
        if self._keys is None or refresh:
            request = build_get_request(self._url)
            reply = await send_async(request, client=client, timeout=self._timeout, cap=self._cap)
            self.fetches += 1
            self._keys = _parse_jwks(reply, self._url)
        return self._keys


class StaticKeys:
    """A fixed key set (a JWKS document ``{"keys": [...]}``): never fetched, never refreshed."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
        if not isinstance(keys, list):
            raise ValueError('jwks must be a JWK set: a mapping with a "keys" list')
        self._keys = tuple(MappingProxyType(dict(k)) for k in keys if isinstance(k, Mapping))

    def keys(self, *, refresh: bool = False) -> tuple[Jwk, ...]:
        return self._keys

    async def keys_async(
        self, *, refresh: bool = False, client: httpx.AsyncClient | None = None
    ) -> tuple[Jwk, ...]:
        return self._keys


def key_source(jwks: JwksCache | StaticKeys | Mapping[str, Any]) -> JwksCache | StaticKeys:
    """``jwks`` as something keys can be loaded from."""
    if isinstance(jwks, JwksCache | StaticKeys):
        return jwks
    return StaticKeys(jwks)


def verify_id_token(
    id_token: str,
    *,
    issuer: str,
    client_id: str,
    jwks: JwksCache | Mapping[str, Any],
    nonce: str | None = None,
    now: float | None = None,
    leeway: float = 60.0,
    algorithms: Sequence[str] = ("RS256",),
) -> dict[str, Any]:
    """
    The claims of a verified id_token; :class:`IdTokenInvalid` (whose ``reason`` names the
    failed check, and whose message never holds the token) otherwise.

    Args:
        id_token: the compact JWS.
        issuer: the provider's issuer, exactly as its metadata spells it.
        client_id: this client: must be an audience (and the ``azp``, if any).
        jwks: a :class:`JwksCache` (re-fetched once when the token names an unknown key id)
            or a JWK set document ``{"keys": [...]}``.
        nonce: the nonce the login sent, if any.
        now: POSIX seconds to check ``exp``/``iat``/``nbf`` against (default: ``time.time()``).
        leeway: seconds of clock skew tolerated.
        algorithms: the provider's ``id_token_signing_alg_values_supported``; only asymmetric
            signatures among them are accepted (``RS256`` when empty), never ``none``/``HS*``.

    For a store without a key set, ``authfsm.engine.decode_jwt_claims`` reads the claims
    **without** verification; such an identity is never "verified".
    """
    flow = id_token_flow(
        id_token,
        issuer=issuer,
        client_id=client_id,
        now=time.time() if now is None else now,
        algorithms=algorithms,
        nonce=nonce,
        leeway=leeway,
    )
    return drive(flow, SyncIO(keys=key_source(jwks)), events=EventLog(), name="id_token")


async def verify_id_token_async(
    id_token: str,
    *,
    issuer: str,
    client_id: str,
    jwks: JwksCache | Mapping[str, Any],
    nonce: str | None = None,
    now: float | None = None,
    leeway: float = 60.0,
    algorithms: Sequence[str] = ("RS256",),
    client: httpx.AsyncClient | None = None,
) -> dict[str, Any]:
    """:func:`verify_id_token` with asyncio (a :class:`JwksCache` fetches on ``client``)."""
    flow = id_token_flow(
        id_token,
        issuer=issuer,
        client_id=client_id,
        now=time.time() if now is None else now,
        algorithms=algorithms,
        nonce=nonce,
        leeway=leeway,
    )
    io = AsyncIO(keys=key_source(jwks), client=client)
    return await drive_async(flow, io, events=EventLog(), name="id_token")
