"""
Who a credential belongs to, and whether one credential may stand in for another.

The identity is an account id and a user id, taken from the credential's ``account_id`` field or
from unverified id_token claims at configurable paths. Compatibility is deliberately conservative:
a credential is adopted only when nothing known about the two identities disagrees.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ._credentials import Credentials, id_token_claims

__all__ = ["Identity", "IdentityClaims", "identity_of", "is_compatible"]

ClaimPath = tuple[str, ...]

_CODEX_AUTH = "https://api.openai.com/auth"


@attrs.frozen(kw_only=True)
class IdentityClaims:
    """
    Where in the id_token's claims the account id and the user id are found.

    Each is a tuple of claim paths tried in order; a path is a tuple of keys into nested objects.
    """

    account_id: tuple[ClaimPath, ...] = ()
    user_id: tuple[ClaimPath, ...] = (("sub",),)

    @classmethod
    def oidc(cls) -> IdentityClaims:
        """Plain OpenID Connect: the user is ``sub``; no account claim."""
        return cls(account_id=(), user_id=(("sub",),))

    @classmethod
    def codex(cls) -> IdentityClaims:
        """OpenAI Codex / ChatGPT: the claims under ``https://api.openai.com/auth``."""
        return cls(
            account_id=((_CODEX_AUTH, "chatgpt_account_id"),),
            user_id=((_CODEX_AUTH, "chatgpt_user_id"), (_CODEX_AUTH, "user_id"), ("sub",)),
        )


@attrs.frozen
class Identity:
    """An account id and a user id; either may be unknown (None)."""

    account_id: str | None = None
    user_id: str | None = None

    @property
    def known(self) -> bool:
        return self.account_id is not None or self.user_id is not None


def _lookup(claims: Mapping[str, Any], paths: tuple[ClaimPath, ...]) -> str | None:
    for path in paths:
        node: Any = claims
        for key in path:
            if not isinstance(node, Mapping) or key not in node:
                node = None
                break
            node = node[key]
        if isinstance(node, str) and node:
            return node
    return None


def identity_of(credentials: Credentials | None, claims: IdentityClaims) -> Identity:
    """The identity of a credential: the ``account_id`` field first, then id_token claims."""
    if credentials is None:
        return Identity()
    decoded = id_token_claims(credentials)
    account = credentials.account_id or _lookup(decoded, claims.account_id)
    return Identity(account_id=account, user_id=_lookup(decoded, claims.user_id))


def is_compatible(reference: Identity, candidate: Identity) -> bool:
    """
    May a credential of identity ``candidate`` replace one of identity ``reference``?

    - both account ids known and different: no;
    - both user ids known and different: no;
    - the account id known on one side only (a legacy credential written without one): only if
      both user ids are known and equal;
    - otherwise (nothing known disagrees, including no identity at all): yes.
    """
    both_accounts = reference.account_id and candidate.account_id
    if both_accounts and reference.account_id != candidate.account_id:
        return False
    one_account = not both_accounts and (reference.account_id or candidate.account_id)
    if one_account and (reference.user_id is None or candidate.user_id is None):
        return False
    return not (reference.user_id and candidate.user_id and reference.user_id != candidate.user_id)
