"""
The test token server's signing keys: a key ring that signs id_tokens and publishes its JWK set.

Every signature is made by PyJWT over keys generated with pyca/cryptography; nothing here does
cryptography by hand. Private keys never leave this module: no repr, no log, no JWK export of a
private part. The module imports PyJWT, which is optional (``pip install 'authfsm[login]'``), so
the token server imports it only when it first needs a key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Literal, TypeAlias

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = ["SigningAlgorithm", "SigningKeys"]

#: The JWS algorithms the server can sign id_tokens with.
SigningAlgorithm = Literal["ES256", "RS256"]

_PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# RFC 7638 §3.2: the members that make up a key's thumbprint, by key type.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}


class SigningKeys:
    """
    A ring of signing keys: the newest signs, every key in the ring is published.

    The ``kid`` of each key is its RFC 7638 JWK thumbprint. A stray key, never published, signs the
    forged tokens a client must refuse.
    """

    def __init__(self, alg: SigningAlgorithm) -> None:
        if alg not in ("ES256", "RS256"):
            raise ValueError(f"id_token_alg must be ES256 or RS256, not {alg!r}")
        self.alg: SigningAlgorithm = alg
        self._ring: list[tuple[str, _PrivateKey]] = []
        self.rotate(keep_previous=False)
        # Made on first use: an RSA key takes a noticeable moment, and most tests never forge.
        self._stray: _PrivateKey | None = None

    @property
    def kid(self) -> str:
        """The ``kid`` of the key that signs now."""
        return self._ring[0][0]

    @property
    def kids(self) -> tuple[str, ...]:
        """Every published ``kid``, the signing one first."""
        return tuple(kid for kid, _ in self._ring)

    def rotate(self, *, keep_previous: bool) -> str:
        """Make a new key the signing one and return its kid; keep the old ones if asked."""
        key = self._generate()
        kid = _thumbprint(self._public_jwk(key))
        self._ring = [(kid, key), *(self._ring if keep_previous else [])]
        return kid

    def jwks(self) -> dict[str, object]:
        """The public JWK set (RFC 7517 §5) of every key in the ring."""
        keys = []
        for kid, key in self._ring:
            jwk = self._public_jwk(key)
            jwk.update({"kid": kid, "use": "sig", "alg": self.alg})
            keys.append(jwk)
        return {"keys": keys}

    def sign(self, claims: Mapping[str, object]) -> str:
        """A compact JWS of ``claims`` signed by the current key, with its kid in the header."""
        kid, key = self._ring[0]
        return jwt.encode(dict(claims), key, algorithm=self.alg, headers={"kid": kid})

    def sign_with_stray_key(self, claims: Mapping[str, object], *, kid: str) -> str:
        """A JWS that names ``kid`` but is signed by a key no JWK set publishes: a forgery."""
        if self._stray is None:
            self._stray = self._generate()
        return jwt.encode(dict(claims), self._stray, algorithm=self.alg, headers={"kid": kid})

    @staticmethod
    def sign_unsecured(claims: Mapping[str, object]) -> str:
        """An unsecured JWT (RFC 7519 §6: ``alg: none``, empty signature)."""
        # PyJWT takes "" as "no key" for alg none.
        return jwt.encode(dict(claims), "", algorithm="none")

    def __repr__(self) -> str:
        return f"SigningKeys(alg={self.alg!r}, kids={list(self.kids)!r})"

    def _generate(self) -> _PrivateKey:
        if self.alg == "ES256":
            return ec.generate_private_key(ec.SECP256R1())
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def _public_jwk(self, key: _PrivateKey) -> dict[str, object]:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return dict(ECAlgorithm.to_jwk(key.public_key(), as_dict=True))
        return dict(RSAAlgorithm.to_jwk(key.public_key(), as_dict=True))


def _thumbprint(jwk: Mapping[str, object]) -> str:
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[str(jwk["kty"])]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    digest = hashlib.sha256(canonical).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
