"""
The OpenID-provider half of the test token server: what a client needs to *log in* offline.

:class:`LoginEndpoints` is mixed into :class:`~authfsm.testing.TokenServer` and serves, by the
standard wire protocols:

- discovery (OpenID Connect Discovery 1.0 and RFC 8414) at ``/.well-known/openid-configuration``
  and ``/.well-known/oauth-authorization-server``;
- the authorization endpoint ``/authorize`` (RFC 6749 §4.1 with PKCE S256 only, RFC 7636; the
  ``iss`` response parameter, RFC 9207; loopback redirect URIs only, RFC 8252 §7.3) and the
  ``authorization_code`` grant of the token endpoint;
- the public JWK set ``/jwks`` that verifies its signed id_tokens;
- the device flow, through :class:`~._device_flow.DeviceFlow`.

A successful login starts a token family exactly as :meth:`TokenServer.issue` does, so every
later refresh obeys the same rotation and reuse rules. This module owns authorization codes,
the signing keys and the knobs that break them on purpose; it decides nothing about refresh.

Like the rest of the server it never logs, reprs or raises a code, a verifier, a ``state``, a
``nonce`` or a token, and a malformed request is answered, never raised.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal, get_args
from urllib.parse import parse_qs, urlsplit

import attrs

from ._device_flow import DEVICE_AUTHORIZATION_PATH, DEVICE_CODE_GRANT, DEVICE_PAGE_PATH, DeviceFlow
from ._http import MalformedRequestError, Reply
from ._login_host import TOKEN_PATH, Identity, LoginOutcome, page, positive, with_query
from ._replies import error_reply, json_reply

if TYPE_CHECKING:
    from ._keys import SigningAlgorithm, SigningKeys

__all__ = [
    "ID_TOKEN_TAMPERS",
    "LOGIN_PATHS",
    "IdTokenTamper",
    "LoginEndpoints",
    "ScriptedRedirect",
    "SigningUnavailable",
]

AUTHORIZE_PATH = "/authorize"
JWKS_PATH = "/jwks"
OPENID_CONFIGURATION_PATH = "/.well-known/openid-configuration"
OAUTH_METADATA_PATH = "/.well-known/oauth-authorization-server"
LOGIN_PATHS: frozenset[str] = frozenset(
    {
        AUTHORIZE_PATH,
        DEVICE_AUTHORIZATION_PATH,
        DEVICE_PAGE_PATH,
        JWKS_PATH,
        OPENID_CONFIGURATION_PATH,
        OAUTH_METADATA_PATH,
    }
)

#: A way to break the next signed id_tokens on purpose; see :attr:`LoginEndpoints.id_token_tamper`.
IdTokenTamper = Literal[
    "wrong_key",
    "unknown_kid",
    "alg_none",
    "wrong_aud",
    "wrong_iss",
    "wrong_nonce",
    "missing_nonce",
    "expired",
]
ID_TOKEN_TAMPERS: frozenset[str] = frozenset(get_args(IdTokenTamper))

_ALGORITHMS = ("ES256", "RS256")
# RFC 7636 §4.1 and §4.2: the verifier's alphabet and length; an S256 challenge is 43 characters.
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
# How far in the past the "expired" tamper puts exp, beyond the leeway clients commonly allow.
_EXPIRED_BY = 600.0


class SigningUnavailable(RuntimeError):
    """Signed id_tokens and the JWK set need PyJWT: ``pip install 'authfsm[login]'``."""


@attrs.frozen(kw_only=True)
class ScriptedRedirect:
    """
    One scripted answer of the authorization endpoint, used by the next *valid* request.

    The request is checked first as usual (client, loopback ``redirect_uri``, PKCE, ...); one
    that fails gets its normal error and leaves the script for the next. Then, instead of the
    normal approval:

    Attributes:
        error: redirect with this ``error`` and no code, as when the user declines
            (``"access_denied"``) or the provider fails (``"server_error"``,
            ``"temporarily_unavailable"``, ``"login_required"``).
        error_description: the ``error_description`` sent with ``error``.
        state: send this ``state`` instead of the client's (a forged or crossed response, which
            the client must refuse without exchanging the code). A code is still issued.
        iss: send this ``iss`` instead of the issuer (an RFC 9207 mix-up, which the client must
            refuse). A code is still issued.
        omit_iss: send no ``iss`` at all; discovery still announces
            ``authorization_response_iss_parameter_supported``, so RFC 9207 §2.4 says refuse.
    """

    error: str | None = None
    error_description: str | None = None
    state: str | None = attrs.field(default=None, repr=False)
    iss: str | None = None
    omit_iss: bool = False

    def __attrs_post_init__(self) -> None:
        if self.error_description is not None and self.error is None:
            raise ValueError("error_description needs an error")
        if self.error == "":
            raise ValueError("error must not be empty")
        if self.iss is not None and self.omit_iss:
            raise ValueError("give a ScriptedRedirect iss or omit_iss, not both")


@attrs.define(kw_only=True, eq=False)
class _Code:
    challenge: str = attrs.field(repr=False)
    redirect_uri: str = attrs.field(repr=False)
    nonce: str | None = attrs.field(repr=False)
    scope: str | None
    identity: Identity
    issued_at: float
    expires_at: float
    spent: bool = False
    family_id: str | None = None


class LoginEndpoints(DeviceFlow):
    """
    The login side of :class:`~authfsm.testing.TokenServer` (see the module docstring).

    Its public methods and properties appear on ``TokenServer``; this class is not used alone.
    """

    def _init_login(
        self,
        *,
        id_token_alg: SigningAlgorithm,
        authorization_code_ttl: float,
        device_code_ttl: float,
        device_interval: float | None,
        enforce_device_interval: bool,
    ) -> None:
        if id_token_alg not in _ALGORITHMS:
            raise ValueError(f"id_token_alg must be ES256 or RS256, not {id_token_alg!r}")
        self._id_token_alg: SigningAlgorithm = id_token_alg
        self._keys: SigningKeys | None = None
        self._id_token_tamper: IdTokenTamper | None = None
        self._init_identity()
        self._redirect_script: collections.deque[ScriptedRedirect] = collections.deque()
        self._codes: dict[str, _Code] = {}
        self._discovery_patch: dict[str, object] = {}
        self._discovery_omit: set[str] = set()
        self._authorization_code_ttl = 1.0
        self.authorization_code_ttl = authorization_code_ttl
        self._init_device_flow(
            device_code_ttl=device_code_ttl,
            device_interval=device_interval,
            enforce_device_interval=enforce_device_interval,
        )

    # -- addresses ---------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        """The issuer identifier (``iss``): the base URL, ``http://127.0.0.1:PORT``."""
        return self.url

    @property
    def openid_configuration_url(self) -> str:
        """OpenID Connect discovery: ``{url}/.well-known/openid-configuration``."""
        return self.url + OPENID_CONFIGURATION_PATH

    @property
    def oauth_metadata_url(self) -> str:
        """RFC 8414 metadata (same document), ``{url}/.well-known/oauth-authorization-server``."""
        return self.url + OAUTH_METADATA_PATH

    @property
    def authorize_url(self) -> str:
        """The authorization endpoint, ``{url}/authorize``."""
        return self.url + AUTHORIZE_PATH

    @property
    def jwks_url(self) -> str:
        """The public JWK set that verifies signed id_tokens, ``{url}/jwks``."""
        return self.url + JWKS_PATH

    # -- settings ----------------------------------------------------------------------------

    @property
    def id_token_alg(self) -> SigningAlgorithm:
        """The JWS algorithm of signed id_tokens, ``"ES256"`` (P-256) or ``"RS256"`` (RSA 2048)."""
        return self._id_token_alg

    @property
    def authorization_code_ttl(self) -> float:
        """Seconds (server clock) an authorization code can be exchanged after it was issued."""
        return self._authorization_code_ttl

    @authorization_code_ttl.setter
    def authorization_code_ttl(self, seconds: float) -> None:
        self._authorization_code_ttl = positive(seconds, "authorization_code_ttl")

    @property
    def id_token_tamper(self) -> IdTokenTamper | None:
        """
        Break every signed id_token minted from now on, until set back to None.

        It tests a client's id_token verification; each value must make it refuse the token:

        - ``"wrong_key"``: signed by a key the JWK set does not hold, under the real ``kid``;
        - ``"unknown_kid"``: signed by that stray key, under a ``kid`` the JWK set does not list;
        - ``"alg_none"``: an unsecured JWT (``"alg": "none"``, empty signature);
        - ``"wrong_aud"``: ``aud`` names another client;
        - ``"wrong_iss"``: ``iss`` is another issuer;
        - ``"wrong_nonce"``: ``nonce`` is not the one of the authorization request;
        - ``"missing_nonce"``: no ``nonce``, although the request sent one;
        - ``"expired"``: ``exp`` is 10 minutes before the server clock's now (``iat`` moved back
          as well), beyond any usual leeway.

        It applies to signed id_tokens only: those of the authorization-code and device grants,
        of refreshes of their families, and of ``issue(signed=True)``.
        """
        return self._id_token_tamper

    @id_token_tamper.setter
    def id_token_tamper(self, tamper: IdTokenTamper | None) -> None:
        if tamper is not None and tamper not in ID_TOKEN_TAMPERS:
            raise ValueError(
                f"id_token_tamper must be None or one of {', '.join(sorted(ID_TOKEN_TAMPERS))}"
            )
        self._id_token_tamper = tamper

    # -- the test side: who logs in, and what goes wrong ---------------------------------------

    def script_authorization(self, *redirects: ScriptedRedirect) -> None:
        """
        Queue answers for the next valid authorization requests, oldest first.

        ``ScriptedRedirect(error="access_denied", error_description="...")`` declines,
        ``ScriptedRedirect(state="forged")`` sends a wrong ``state`` and
        ``ScriptedRedirect(iss="http://other")`` a wrong ``iss`` (both with a valid code).
        """
        for redirect in redirects:
            if not isinstance(redirect, ScriptedRedirect):
                raise TypeError(
                    f"script_authorization() takes ScriptedRedirect, not {type(redirect).__name__}"
                )
        with self._lock:
            self._redirect_script.extend(redirects)

    def discovery_document(self) -> dict[str, object]:
        """The discovery document as it is served now, with :meth:`patch_discovery` applied."""
        with self._lock:
            return self._discovery_document()

    def patch_discovery(self, *, omit: Iterable[str] = (), **fields: object) -> None:
        """
        Serve a broken discovery document from now on, so a client can test its refusal.

        Each keyword replaces (or adds) that member, e.g. ``patch_discovery(issuer="http://x")``
        for an issuer that does not match the URL it was fetched from, or
        ``patch_discovery(code_challenge_methods_supported=["plain"])``; ``omit`` names members
        to leave out, e.g. ``omit=["jwks_uri"]``. Patches add up; :meth:`reset_discovery` undoes
        them. Both well-known documents are patched. The endpoints themselves do not move.
        """
        names = [omit] if isinstance(omit, str) else list(omit)
        with self._lock:
            self._discovery_patch.update(fields)
            self._discovery_omit.update(names)

    def reset_discovery(self) -> None:
        """Serve the correct discovery document again."""
        with self._lock:
            self._discovery_patch.clear()
            self._discovery_omit.clear()

    def jwks(self) -> dict[str, object]:
        """The public JWK set served at :attr:`jwks_url` (for verifying without HTTP)."""
        with self._lock:
            return self._signing_keys().jwks()

    @property
    def signing_kid(self) -> str:
        """The ``kid`` (RFC 7638 thumbprint) of the key that signs id_tokens now."""
        with self._lock:
            return self._signing_keys().kid

    def rotate_signing_key(self, *, keep_previous: bool = True) -> str:
        """
        Sign with a new key from now on and return its ``kid``.

        With ``keep_previous`` the JWK set lists the old keys too (a graceful rollover); without
        it, id_tokens signed before no longer verify (an abrupt one), so a client that caches the
        JWK set must fetch it again when it meets an unknown ``kid``.
        """
        with self._lock:
            return self._signing_keys().rotate(keep_previous=keep_previous)

    # -- request handling (called from handler threads) --------------------------------------

    def _handle_login(
        self,
        method: str,
        path: str,
        query: str,
        content_type: str | None,
        authorization: str | None,
        body: bytes,
    ) -> Reply:
        if path in (OPENID_CONFIGURATION_PATH, OAUTH_METADATA_PATH):
            if method != "GET":
                return self._refuse(path, method, 405, "invalid_request", "use GET")
            with self._lock:
                document = self._discovery_document()
                self._log(path, method, None, 200, "discovery", None)
            return json_reply(200, document)
        if path == JWKS_PATH:
            if method != "GET":
                return self._refuse(path, method, 405, "invalid_request", "use GET")
            with self._lock:
                try:
                    keys = self._signing_keys().jwks()
                except SigningUnavailable as missing:
                    self._log(path, method, None, 501, "bad_request", None)
                    return error_reply(501, "server_error", str(missing))
                self._log(path, method, None, 200, "jwks", None)
            return json_reply(200, keys)
        if path == AUTHORIZE_PATH:
            if method not in ("GET", "POST"):
                return self._refuse(path, method, 405, "invalid_request", "use GET or POST")
            return self._authorize(method, query, content_type, body)
        return self._handle_device(method, path, content_type, authorization, body)

    def _authorize(self, method: str, query: str, content_type: str | None, body: bytes) -> Reply:
        try:
            if method == "POST":
                media_type = (content_type or "").split(";", 1)[0].strip().lower()
                if media_type != "application/x-www-form-urlencoded":
                    raise MalformedRequestError
                query = body.decode("utf-8")
            params = _parse_query(query)
        except (MalformedRequestError, UnicodeDecodeError):
            return self._refuse_page(method, "The authorization request is malformed.")
        # RFC 6749 §4.1.2.1: without a valid client and redirect URI, tell the user, not the URI.
        client_ids = params.get("client_id", [])
        if len(client_ids) != 1 or not hmac.compare_digest(
            client_ids[0].encode(), self._client_id.encode()
        ):
            return self._refuse_page(method, "The client_id is missing or unknown.")
        redirect_uris = params.get("redirect_uri", [])
        if len(redirect_uris) != 1 or not _is_loopback_redirect(redirect_uris[0]):
            return self._refuse_page(
                method,
                "The redirect_uri is missing or not a loopback http URI "
                "(http://127.0.0.1, http://[::1] or http://localhost, any port, no fragment).",
            )
        redirect_uri = redirect_uris[0]
        states = params.get("state", [])
        state = states[0] if len(states) == 1 else None
        with self._lock:
            now = self._clock()
            refused = _authorization_refusal(params)
            if refused is not None:
                return self._redirect(method, redirect_uri, _error_fields(*refused), state, None)
            scripted = self._redirect_script.popleft() if self._redirect_script else None
            if scripted is not None and scripted.error is not None:
                fields = _error_fields(scripted.error, scripted.error_description)
                return self._redirect(method, redirect_uri, fields, state, scripted)
            code = secrets.token_urlsafe(32)
            self._codes[code] = _Code(
                challenge=params["code_challenge"][0],
                redirect_uri=redirect_uri,
                nonce=_single(params, "nonce"),
                scope=_single(params, "scope"),
                identity=self._login_identity,
                issued_at=now,
                expires_at=now + self._authorization_code_ttl,
            )
            return self._redirect(method, redirect_uri, {"code": code}, state, scripted)

    def _redirect(
        self,
        method: str,
        redirect_uri: str,
        fields: Mapping[str, str],
        state: str | None,
        scripted: ScriptedRedirect | None,
    ) -> Reply:
        answer = dict(fields)
        sent_state = state if scripted is None or scripted.state is None else scripted.state
        if sent_state is not None:
            answer["state"] = sent_state
        if scripted is None or not scripted.omit_iss:
            answer["iss"] = self.url if scripted is None or scripted.iss is None else scripted.iss
        outcome: LoginOutcome = "authorization_error" if "error" in answer else "authorized"
        self._log(AUTHORIZE_PATH, method, None, 302, outcome, None)
        return Reply(status=302, headers=(("Location", with_query(redirect_uri, answer)),))

    def _refuse_page(self, method: str, description: str) -> Reply:
        with self._lock:
            self._log(AUTHORIZE_PATH, method, None, 400, "bad_request", None)
        return page(400, "Invalid authorization request", description)

    def _login_grant(self, grant_type: str, params: Mapping[str, str]) -> Reply | None:
        """The answer to a login grant (lock held, client authenticated); None for others."""
        if grant_type not in ("authorization_code", DEVICE_CODE_GRANT):
            return None
        try:
            self._signing_keys()
        except SigningUnavailable as missing:
            return self._grant_refused(grant_type, 500, "bad_request", "server_error", str(missing))
        if grant_type == "authorization_code":
            return self._exchange_code(params)
        return self._poll_device(params)

    def _exchange_code(self, params: Mapping[str, str]) -> Reply:
        grant = "authorization_code"
        presented = params.get("code")
        if not presented:
            return self._grant_refused(
                grant, 400, "bad_request", "invalid_request", "code is required"
            )
        now = self._clock()
        code = self._codes.get(presented)
        if code is None:
            return self._grant_refused(grant, 400, "invalid_grant", "invalid_grant", "unknown code")
        if code.spent:
            # RFC 6749 §4.1.2: a second use is refused and what the first one got is revoked.
            if code.family_id is not None:
                self._revoke_family(code.family_id)
            self._log(TOKEN_PATH, "POST", grant, 400, "code_reused", code.family_id, now)
            return error_reply(
                400, "invalid_grant", "authorization code already used; its tokens are revoked"
            )
        # Spent by its first presentation, good or bad: a failed exchange needs a new login.
        code.spent = True
        problem = None
        if now >= code.expires_at:
            problem = "authorization code expired"
        elif params.get("redirect_uri") != code.redirect_uri:
            problem = "redirect_uri does not match the authorization request"
        elif not _pkce_matches(params.get("code_verifier"), code.challenge):
            problem = "PKCE verification failed: code_verifier does not match code_challenge"
        if problem is not None:
            return self._grant_refused(grant, 400, "invalid_grant", "invalid_grant", problem)
        identity = code.identity
        family_id, response = self._start_family(
            user_id=identity.user_id,
            account_id=identity.account_id,
            codex_claims=identity.codex_claims,
            now=now,
            nonce=code.nonce,
            auth_time=code.issued_at,
        )
        code.family_id = family_id
        if code.scope is not None:
            response["scope"] = code.scope
        self._log(TOKEN_PATH, "POST", grant, 200, "code_exchanged", family_id, now)
        return json_reply(200, response)

    # -- state (call with the lock held) -----------------------------------------------------

    def _signing_keys(self) -> SigningKeys:
        if self._keys is None:
            try:
                from ._keys import SigningKeys  # imported late: PyJWT is optional
            except ImportError as error:
                raise SigningUnavailable(
                    "signed id_tokens and the JWK set need PyJWT: pip install 'authfsm[login]'"
                ) from error
            self._keys = SigningKeys(self._id_token_alg)
        return self._keys

    def _sign_id_token(self, claims: Mapping[str, object]) -> str:
        """A signed id_token of ``claims``, broken as :attr:`id_token_tamper` says."""
        keys = self._signing_keys()
        tamper = self._id_token_tamper
        claims = dict(claims)
        # Whole seconds: many verifiers read NumericDate into an integer type.
        for name in ("iat", "exp", "auth_time"):
            if name in claims:
                claims[name] = math.floor(_seconds(claims[name]))
        if tamper == "wrong_aud":
            claims["aud"] = f"not-{self._client_id}"
        elif tamper == "wrong_iss":
            claims["iss"] = "https://wrong-issuer.invalid"
        elif tamper == "wrong_nonce":
            claims["nonce"] = secrets.token_urlsafe(16)
        elif tamper == "missing_nonce":
            claims.pop("nonce", None)
        elif tamper == "expired":
            iat, exp = _seconds(claims["iat"]), _seconds(claims["exp"])
            shift = exp - iat + _EXPIRED_BY
            claims["iat"], claims["exp"] = math.floor(iat - shift), math.floor(exp - shift)
        if tamper == "wrong_key":
            return keys.sign_with_stray_key(claims, kid=keys.kid)
        if tamper == "unknown_kid":
            return keys.sign_with_stray_key(claims, kid=f"unknown-{secrets.token_hex(4)}")
        if tamper == "alg_none":
            return keys.sign_unsecured(claims)
        return keys.sign(claims)

    def _discovery_document(self) -> dict[str, object]:
        url = self.url
        auth_methods = (
            ["none"]
            if self._client_secret is None
            else ["client_secret_basic", "client_secret_post"]
        )
        document: dict[str, object] = {
            "issuer": url,
            "authorization_endpoint": url + AUTHORIZE_PATH,
            "token_endpoint": self.token_url,
            "device_authorization_endpoint": url + DEVICE_AUTHORIZATION_PATH,
            "revocation_endpoint": self.revoke_url,
            "jwks_uri": url + JWKS_PATH,
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_CODE_GRANT],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self._id_token_alg],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": ["none"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce"],
            "authorization_response_iss_parameter_supported": True,
        }
        document.update(self._discovery_patch)
        for name in self._discovery_omit:
            document.pop(name, None)
        return document


def _authorization_refusal(params: Mapping[str, list[str]]) -> tuple[str, str] | None:
    """The error to redirect with, once client and redirect URI are trusted; None if valid."""
    for name, values in params.items():
        if len(values) != 1:
            # RFC 6749 §3.1: no parameter may be sent twice.
            return "invalid_request", f"{name} was sent more than once"
    response_type = _single(params, "response_type")
    if response_type is None:
        return "invalid_request", "response_type is required"
    if response_type != "code":
        return "unsupported_response_type", "only response_type=code is supported"
    if _single(params, "response_mode") not in (None, "query"):
        return "invalid_request", "only response_mode=query is supported"
    challenge = _single(params, "code_challenge")
    if challenge is None:
        return "invalid_request", "code_challenge is required (PKCE with S256)"
    # RFC 7636 §4.3: a missing method means plain, which is refused like plain itself.
    if _single(params, "code_challenge_method") != "S256":
        return "invalid_request", "code_challenge_method must be S256; plain is not supported"
    if not _S256_CHALLENGE.fullmatch(challenge):
        return "invalid_request", "code_challenge is not a base64url SHA-256 digest"
    return None


def _error_fields(error: str, description: str | None) -> dict[str, str]:
    fields = {"error": error}
    if description is not None:
        fields["error_description"] = description
    return fields


def _pkce_matches(verifier: str | None, challenge: str) -> bool:
    if verifier is None or not _VERIFIER.fullmatch(verifier):
        return False
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=")
    return hmac.compare_digest(computed, challenge.encode("ascii"))


def _is_loopback_redirect(uri: str) -> bool:
    """RFC 8252 §7.3: ``http`` to a loopback host on any port; no credentials, no fragment."""
    if not uri.isprintable() or " " in uri or "#" in uri:
        return False
    try:
        parts = urlsplit(uri)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return False
    return (
        parts.scheme == "http"
        and "@" not in parts.netloc
        and parts.hostname is not None
        and parts.hostname in _LOOPBACK_HOSTS
    )


def _parse_query(text: str) -> dict[str, list[str]]:
    if not text:
        return {}
    try:
        return parse_qs(text, keep_blank_values=True, strict_parsing=True, errors="strict")
    except ValueError:
        raise MalformedRequestError from None


def _single(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("iat and exp must be numbers")
    return float(value)
