"""
The one-time secrets of a browser login: the PKCE pair (RFC 7636, S256 only), ``state`` and
``nonce``, and how they are compared.

Everything here comes from :mod:`secrets` (a CSPRNG); nothing is ever logged, shown in a
``repr`` or put in a message. ``plain`` PKCE is not offered: S256 is the only method.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

import attrs

__all__ = ["Pkce", "new_pkce", "random_value", "s256_challenge", "same_secret"]

# RFC 7636 §4.1: 43 to 128 characters of [A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~".
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
#: Bytes of randomness in ``state``, ``nonce`` and the verifier: 256 bits, twice the minimum.
_RANDOM_BYTES = 32


def random_value() -> str:
    """A fresh 256-bit random value, base64url without padding (43 characters)."""
    return secrets.token_urlsafe(_RANDOM_BYTES)


def s256_challenge(verifier: str) -> str:
    """``BASE64URL(SHA256(verifier))`` without padding; ``ValueError`` for a bad verifier."""
    if not _VERIFIER.fullmatch(verifier):
        raise ValueError("a PKCE verifier is 43-128 characters of A-Z a-z 0-9 - . _ ~")
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@attrs.frozen(kw_only=True)
class Pkce:
    """
    A PKCE verifier and its S256 challenge.

    Attributes:
        verifier: sent only to the token endpoint, with the code; never shown.
        challenge: sent in the authorization URL.
        method: always ``"S256"``.
    """

    verifier: str = attrs.field(repr=False)
    challenge: str
    method: str = "S256"


def new_pkce() -> Pkce:
    """A fresh verifier (256 random bits, 43 characters) and its challenge."""
    verifier = random_value()
    return Pkce(verifier=verifier, challenge=s256_challenge(verifier))


def same_secret(expected: str, received: str | None) -> bool:
    """Whether ``received`` is ``expected``, compared in constant time (None never is)."""
    if received is None:
        return False
    return hmac.compare_digest(
        expected.encode("utf-8", "surrogatepass"), received.encode("utf-8", "surrogatepass")
    )
