"""
A small OpenID provider on 127.0.0.1 for the login tests, and a scripted "browser".

:class:`FakeIdP` serves discovery documents, ``/authorize`` (auto-approves and redirects with
``code``, ``state`` and ``iss``), ``/oauth/token`` (authorization code with PKCE S256 checked,
and the device code grant from a script), ``/oauth/device`` and ``/jwks``, over real HTTP. It
records what it saw (every secret too, so tests can check none leaks) and can be told to
misbehave. :class:`Browser` plays the user's browser in a thread.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

CLIENT_ID = "test-cli"
#: Bound on every wait in these tests.
WAIT = 10.0

_RSA_KEYS: list[rsa.RSAPrivateKey] = []


def rsa_key(index: int = 0) -> rsa.RSAPrivateKey:
    """A 2048-bit RSA key, made once per index per test session (they take a while)."""
    while len(_RSA_KEYS) <= index:
        _RSA_KEYS.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _RSA_KEYS[index]


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    """The public JWK of ``key`` with ``kid``."""
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", **extra}


def sign(claims: dict[str, Any], key: Any, *, kid: str | None = "k1", alg: str = "RS256") -> str:
    headers = {} if kid is None else {"kid": kid}
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class FakeIdP:
    """
    An OpenID provider on 127.0.0.1 (see the module). Use as a context manager.

    Knobs (set before the flow runs): ``discovery`` (path -> (status, body bytes) overrides),
    ``metadata`` (extra/overridden metadata fields), ``authorize_error`` ((code, description)
    to redirect with), ``redirect_iss`` (the ``iss`` sent; None leaves it out), ``token_script``
    (answers given instead of a code exchange), ``device_script`` (answers to device polls,
    each ``"pending"``, ``"slow_down"``, ``"ok"`` or a (status, json) pair), ``device_answer``
    (the device authorization response), ``id_token_claims`` (claims to override; None removes),
    ``id_token_key`` / ``id_token_kid`` / ``id_token_alg`` (how id_tokens are signed),
    ``jwks_keys`` (the published JWK set).
    """

    def __init__(self, *, issuer_path: str = "") -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.idp = self  # type: ignore[attr-defined]
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}{issuer_path}"
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self.token_auth: list[str | None] = []
        self.device_requests: list[dict[str, str]] = []
        self.jwks_fetches = 0
        self.secrets: set[str] = set()
        self.codes: dict[str, dict[str, str]] = {}
        self.discovery: dict[str, tuple[int, bytes]] = {}
        self.metadata: dict[str, Any] = {}
        self.authorize_error: tuple[str, str | None] | None = None
        self.redirect_iss: str | None = self.issuer
        self.token_script: collections.deque[tuple[int, Any]] = collections.deque()
        self.device_script: collections.deque[Any] = collections.deque()
        self.device_answer: dict[str, Any] = {
            "device_code": "dev-code-S3CRET-0123456789",
            "user_code": "WDJB-MJHT",
            "verification_uri": f"{self.base}/device",
            "verification_uri_complete": f"{self.base}/device?user_code=WDJB-MJHT",
            "expires_in": 600,
            "interval": 5,
        }
        self.id_token_claims: dict[str, Any] = {}
        self.id_token_key: Any = rsa_key(0)
        self.id_token_kid: str | None = "k1"
        self.id_token_alg = "RS256"
        self.jwks_keys: list[dict[str, Any]] = [public_jwk(rsa_key(0), "k1")]
        self.minted = 0
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FakeIdP:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=WAIT)

    # -- what it serves ------------------------------------------------------------------------

    def document(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.base}/authorize",
            "token_endpoint": f"{self.base}/oauth/token",
            "device_authorization_endpoint": f"{self.base}/oauth/device",
            "revocation_endpoint": f"{self.base}/oauth/revoke",
            "jwks_uri": f"{self.base}/jwks",
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "response_types_supported": ["code"],
            **self.metadata,
        }

    def id_token(self, nonce: str | None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "alice",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 3600,
            "email": "alice@example.com",
        }
        if nonce is not None:
            claims["nonce"] = nonce
        for name, value in self.id_token_claims.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return sign(claims, self.id_token_key, kid=self.id_token_kid, alg=self.id_token_alg)

    def tokens(self, nonce: str | None) -> dict[str, Any]:
        with self.lock:
            self.minted += 1
            n = self.minted
        answer = {
            "access_token": f"at-S3CRET-{n}-abcdefghijkl",
            "refresh_token": f"rt-S3CRET-{n}-abcdefghijkl",
            "id_token": self.id_token(nonce),
            "token_type": "Bearer",
            "expires_in": 3600,
        }
        self.secrets.update(str(answer[k]) for k in ("access_token", "refresh_token", "id_token"))
        return answer

    def handle(
        self, method: str, target: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(target)
        path = parts.path
        with self.lock:
            self.requests.append((method, path))
        if path in self.discovery:
            status, raw = self.discovery[path]
            return status, {"Content-Type": "application/json"}, raw
        issuer_path = urlsplit(self.issuer).path
        well_known = (
            issuer_path + "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server" + issuer_path,
        )
        if method == "GET" and path in well_known:
            return _json(200, self.document())
        if method == "GET" and path == "/authorize":
            return self._authorize(parse_qs(parts.query))
        if method == "POST" and path == "/oauth/token":
            return self._token(parse_qs(body.decode()), headers.get("Authorization"))
        if method == "POST" and path == "/oauth/device":
            with self.lock:
                self.device_requests.append({k: v[0] for k, v in parse_qs(body.decode()).items()})
            return _json(200, self.device_answer)
        if method == "GET" and path == "/jwks":
            with self.lock:
                self.jwks_fetches += 1
            return _json(200, {"keys": self.jwks_keys})
        return 404, {}, b""

    def _authorize(self, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        params = {k: v[0] for k, v in query.items()}
        with self.lock:
            self.authorize_requests.append(params)
        self.secrets.update(params[k] for k in ("state", "nonce", "code_challenge") if k in params)
        answer: dict[str, str] = {}
        if self.authorize_error is not None:
            answer["error"] = self.authorize_error[0]
            if self.authorize_error[1] is not None:
                answer["error_description"] = self.authorize_error[1]
        else:
            code = f"code-S3CRET-{len(self.authorize_requests)}-{time.monotonic_ns()}"
            self.secrets.add(code)
            with self.lock:
                self.codes[code] = params
            answer["code"] = code
        if "state" in params:
            answer["state"] = params["state"]
        if self.redirect_iss is not None:
            answer["iss"] = self.redirect_iss
        location = params["redirect_uri"] + "?" + urlencode(answer)
        return 302, {"Location": location}, b""

    def _token(
        self, form: dict[str, list[str]], auth: str | None
    ) -> tuple[int, dict[str, str], bytes]:
        params = {k: v[0] for k, v in form.items()}
        with self.lock:
            self.token_requests.append(params)
            self.token_auth.append(auth)
        if "code_verifier" in params:
            self.secrets.add(params["code_verifier"])
        if self.token_script:
            status, answer = self.token_script.popleft()
            return _json(status, answer)
        grant = params.get("grant_type")
        if grant == "authorization_code":
            with self.lock:
                issued = self.codes.pop(params.get("code", ""), None)
            if (
                issued is None
                or issued.get("redirect_uri") != params.get("redirect_uri")
                or issued.get("client_id") != params.get("client_id")
                or issued.get("code_challenge_method") != "S256"
                or s256(params.get("code_verifier", "")) != issued.get("code_challenge")
            ):
                return _json(400, {"error": "invalid_grant"})
            return _json(200, self.tokens(issued.get("nonce")))
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            if params.get("device_code") != self.device_answer.get("device_code"):
                return _json(400, {"error": "invalid_grant"})
            step: Any = self.device_script.popleft() if self.device_script else "ok"
            if step == "ok":
                return _json(200, self.tokens(None))
            if step in ("pending", "slow_down"):
                code = "authorization_pending" if step == "pending" else "slow_down"
                return _json(400, {"error": code})
            status, answer = step
            return _json(status, answer)
        return _json(400, {"error": "unsupported_grant_type"})

    @property
    def token_calls(self) -> int:
        return len(self.token_requests)


def _json(status: int, value: Any) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(value).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        idp: FakeIdP = self.server.idp  # type: ignore[attr-defined]
        status, headers, payload = idp.handle(self.command, self.path, self.headers, body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)


class Browser:
    """
    Plays the user's browser, as the ``opener`` of a browser login: in a thread, follows the
    authorization URL to the provider, then the provider's redirect (after ``tamper``, which may
    rewrite it) to the loopback receiver, and keeps what the receiver answered.
    """

    def __init__(
        self,
        *,
        tamper: Callable[[str], str] | None = None,
        before: Callable[[str], None] | None = None,
        opened: bool = True,
    ) -> None:
        self.tamper = tamper
        self.before = before
        self.opened = opened
        self.urls: list[str] = []
        self.answer: httpx.Response | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def __call__(self, url: str) -> bool:
        self.urls.append(url)
        self.visit(url)
        return self.opened

    def visit(self, url: str) -> None:
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        try:
            with httpx.Client(timeout=WAIT) as client:
                redirect = client.get(url)
                location = redirect.headers["location"]
                if self.before is not None:
                    self.before(location)
                if self.tamper is not None:
                    location = self.tamper(location)
                self.answer = client.get(location)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc

    def join(self) -> httpx.Response:
        assert self._thread is not None
        self._thread.join(timeout=WAIT)
        assert not self._thread.is_alive()
        assert self.error is None, self.error
        assert self.answer is not None
        return self.answer


def replace_param(url: str, name: str, value: str | None) -> str:
    """``url`` with query parameter ``name`` set to ``value`` (removed when None)."""
    parts = urlsplit(url)
    params = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    if value is None:
        params.pop(name, None)
    else:
        params[name] = value
    return parts._replace(query=urlencode(params)).geturl()


class TestFakeIdP:
    """The test provider itself answers as the RFCs say (so the login tests test the client)."""

    def test_discovery_document_names_its_issuer(self) -> None:
        with FakeIdP() as idp:
            document = httpx.get(f"{idp.base}/.well-known/openid-configuration").json()
            assert idp.issuer == document["issuer"]

    def test_code_is_single_use_and_pkce_checked(self) -> None:
        with FakeIdP() as idp:
            verifier = "v" * 43
            url = f"{idp.base}/authorize?" + urlencode(
                {
                    "client_id": CLIENT_ID,
                    "redirect_uri": "http://127.0.0.1:1/callback",
                    "state": "s",
                    "code_challenge": s256(verifier),
                    "code_challenge_method": "S256",
                }
            )
            location = httpx.get(url).headers["location"]
            code = parse_qs(urlsplit(location).query)["code"][0]
            form = {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": "http://127.0.0.1:1/callback",
                "client_id": CLIENT_ID,
                "code_verifier": "w" * 43,
            }
            assert 400 == httpx.post(f"{idp.base}/oauth/token", data=form).status_code
