"""
What the login mixins of the test token server share: the host they are mixed into, who logs in,
and small wire helpers.

:class:`LoginHost` declares what :class:`~authfsm.testing.TokenServer` provides to them (its lock,
clock, client, call log and token families) and owns the identity that logins approve. It serves
no endpoint and holds no secret.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import attrs

from ._http import Reply
from ._replies import error_reply

__all__ = [
    "TOKEN_PATH",
    "Identity",
    "LoginHost",
    "LoginOutcome",
    "SharedOutcome",
    "page",
    "positive",
    "with_query",
]

TOKEN_PATH = "/oauth/token"  # noqa: S105  (a URL path, not a password)

#: What the login endpoints did with one request (see :class:`~authfsm.testing.Call`).
LoginOutcome = Literal[
    "discovery",
    "jwks",
    "device_page",
    "authorized",
    "authorization_error",
    "code_exchanged",
    "code_reused",
    "device_code_issued",
    "authorization_pending",
    "slow_down",
    "access_denied",
    "expired_token",
    "device_exchanged",
]
# Outcomes the login endpoints share with the refresh side.
SharedOutcome = Literal["invalid_grant", "invalid_client", "bad_request", "scripted"]


@attrs.frozen(kw_only=True)
class Identity:
    """Who a login approves: ``sub``, the account, and whether to add the Codex claims."""

    user_id: str
    account_id: str | None
    codex_claims: bool


class LoginHost:
    """
    The base of the login mixins: what they use of the server, and :meth:`login_as`.

    Its public methods appear on ``TokenServer``; this class is not used alone.
    """

    # Provided by TokenServer.
    _lock: threading.Lock
    _clock: Callable[[], float]
    _client_id: str
    _client_secret: str | None

    if TYPE_CHECKING:

        @property
        def url(self) -> str: ...

        @property
        def token_url(self) -> str: ...

        @property
        def revoke_url(self) -> str: ...

        def _log(
            self,
            path: str,
            method: str,
            grant_type: str | None,
            status: int | None,
            outcome: LoginOutcome | SharedOutcome,
            family: str | None,
            at: float | None = None,
        ) -> None: ...

        def _refuse(
            self, path: str, method: str, status: int, error: str, description: str
        ) -> Reply: ...

        def _authenticate(
            self, params: Mapping[str, str], authorization: str | None
        ) -> str | None: ...

        def _start_family(
            self,
            *,
            user_id: str,
            account_id: str | None,
            codex_claims: bool,
            now: float,
            nonce: str | None,
            auth_time: float,
        ) -> tuple[str, dict[str, object]]: ...

        def _revoke_family(self, family_id: str) -> None: ...

    def _init_identity(self) -> None:
        self._login_identity = Identity(user_id="user-1", account_id="acct-1", codex_claims=False)

    def login_as(
        self,
        user_id: str = "user-1",
        account_id: str | None = "acct-1",
        *,
        codex_claims: bool = False,
    ) -> None:
        """
        Choose the user the authorization endpoint approves, with no page and no click.

        Every later authorization request is approved as this user (``sub`` = ``user_id``), and
        so are device codes approved without naming one. ``account_id`` and ``codex_claims``
        mean what they mean for :meth:`issue`. The default is ``user-1`` / ``acct-1``.
        """
        if not user_id:
            raise ValueError("user_id must not be empty")
        with self._lock:
            self._login_identity = Identity(
                user_id=user_id, account_id=account_id, codex_claims=codex_claims
            )

    def _grant_refused(
        self,
        grant_type: str,
        status: int,
        outcome: SharedOutcome,
        error: str,
        description: str,
    ) -> Reply:
        self._log(TOKEN_PATH, "POST", grant_type, status, outcome, None)
        return error_reply(status, error, description)


def with_query(uri: str, fields: Mapping[str, str]) -> str:
    """``uri`` with ``fields`` appended to its query, keeping what it already had."""
    parts = urlsplit(uri)
    extra = urlencode(fields)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


def page(status: int, title: str, text: str) -> Reply:
    """A small HTML page for a browser, every text escaped."""
    body = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"</head><body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>"
    )
    return Reply(status=status, body=body.encode(), content_type="text/html; charset=utf-8")


def positive(seconds: float, name: str) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError(f"{name} must be a positive number of seconds")
    return float(seconds)
