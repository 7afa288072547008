"""What every command shares: exit codes, output helpers, option helpers, the endpoint."""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import httpx

from ..adapters import FileStore, OAuthTokenEndpoint
from ..engine import AuthStatus, Credentials, RefreshOutcome
from ..states import State

#: Success.
EXIT_OK: Final = 0
#: The user must log in again: logged out, the credential failed for good (poisoned), the store
#: holds another account's credential, or the store is corrupt (fix or remove it, then log in).
EXIT_REAUTH: Final = 1
#: Usage error: bad arguments, an unreadable tokens file, a missing tool (Graphviz for SVG/PNG).
EXIT_USAGE: Final = 2
#: A failure that may pass: network, timeout, 5xx/429, backoff, the store's lease busy or the
#: store unreachable. Try again later.
EXIT_TRANSIENT: Final = 3

EPILOG: Final = """\
exit codes:
  0  success
  1  re-login required: logged out, the credential failed for good (poisoned), the store holds
     another account's credential, or the store file is corrupt (fix or remove it, log in
     again); or a login did not happen (denied, cancelled, the code expired, a check failed)
  2  usage error: bad arguments, an unreadable tokens file, a missing tool (Graphviz's dot), a
     provider that cannot be used (discovery failed), every redirect port busy
  3  transient failure: network, timeout, 5xx/429, backing off, lease busy, store unreachable;
     the old token stays in use, try again later (a login that timed out, too)

Tokens are never printed unless asked (status --show-token). Client secrets are read from an
environment variable (--client-secret-env), never from the command line.
"""


class UsageError(Exception):
    """A problem with what the user asked for: reported, then exit 2."""


# -- output helpers ------------------------------------------------------------------------------


def print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def when(value: str | None, now: datetime) -> str:
    if value is None:
        return "-"
    moment = datetime.fromisoformat(value)
    seconds = (moment - now).total_seconds()
    span = _span(abs(seconds))
    return f"{value} ({'in ' + span if seconds >= 0 else span + ' ago'})"


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def status_dict(status: AuthStatus, store: FileStore) -> dict[str, Any]:
    from ._key_command import encryption_fields  # the key options live there

    data = {"store": store.location, **status.to_dict(), **encryption_fields(store)}
    refresh_at = status.refresh_at
    data["due"] = refresh_at is not None and refresh_at <= datetime.now(UTC)
    return data


def print_status(data: dict[str, Any], out: TextIO) -> None:
    now = datetime.now(UTC)
    rows = [
        ("store", data["store"]),
        ("state", str(data["state"]).upper()),
        ("method", data["method"] or "-"),
        ("account", data["account_id"] or "-"),
        ("user", data["user_id"] or "-"),
        ("issuer", data["issuer"] or "-"),
        ("identity", _identity_note(data)),
        ("fingerprint", data["fingerprint"] or "-"),
        (
            "encrypted",
            f"yes (key {data['key_id']})"
            if data["key_id"]
            else ("yes (on the next write)" if data["encrypted"] else "no"),
        ),
        ("expires", when(data["expires_at"], now)),
        ("refresh at", when(data["refresh_at"], now) + (" (due)" if data["due"] else "")),
        ("retry at", when(data["retry_at"], now)),
        ("last failure", data["failure"] or "-"),
        ("login needed", "yes" if data["requires_login"] else "no"),
    ]
    if "token" in data:
        rows.append(("token", data["token"]))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        out.write(f"{name:<{width}}  {value}\n")


def _identity_note(data: dict[str, Any]) -> str:
    if not (data["user_id"] or data["account_id"]):
        return "-"
    if data["identity_verified"]:
        return "verified (id_token signature and claims checked)"
    return "unverified (claims read without a signature check)"


def needs_login(status: AuthStatus) -> bool:
    return status.requires_login or status.state in (State.LOGGED_OUT, State.POISONED)


def client_secret(args: argparse.Namespace) -> str | None:
    name = getattr(args, "client_secret_env", None)
    if not name:
        return None
    secret = os.environ.get(name)
    if not secret:
        raise UsageError(f"--client-secret-env {name}: that environment variable is not set")
    return secret


class RecordingEndpoint:
    """Passes calls to an endpoint and remembers whether each revocation was accepted."""

    def __init__(self, inner: OAuthTokenEndpoint) -> None:
        self._inner = inner
        self.revocations: list[bool] = []

    def refresh(self, credentials: Credentials) -> RefreshOutcome:
        return self._inner.refresh(credentials)

    def revoke(self, credentials: Credentials) -> bool:
        accepted = self._inner.revoke(credentials)
        self.revocations.append(accepted)
        return accepted


def make_endpoint(
    args: argparse.Namespace, token_url: str, *, revoke_url: str | None = None
) -> OAuthTokenEndpoint:
    """The token endpoint the options describe (the client secret from its variable)."""
    try:
        return OAuthTokenEndpoint(
            token_url,
            args.client_id,
            client_secret=client_secret(args),
            revoke_url=revoke_url or getattr(args, "revoke_url", None),
            timeout=args.timeout,
        )
    except (ValueError, httpx.InvalidURL) as error:
        raise UsageError(str(error)) from None


# -- the parser ----------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def bounded(limit: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit}")
        return value

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", required=True, metavar="PATH", help="the credential file (authfsm format)"
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def add_client(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--client-id", required=required, metavar="ID", help="OAuth client id")
    parser.add_argument(
        "--client-secret-env",
        metavar="VAR",
        help="read the client secret from this environment variable (confidential clients)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="HTTP timeout (default: 10)",
    )
