"""
``authfsm token``: a credential helper that prints a usable access token.

Shell scripts, ``curl`` and git share the login through it: the token is refreshed through the
engine when due (one refresh fleet-wide, like any other process on the store), and the exit
codes are the command line's. ``--format git`` speaks git's credential-helper protocol; git's
``erase`` (it sends the token a server rejected) recovers from that 401 for the next ``get``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Final, TextIO

from ..adapters import OAuthTokenEndpoint
from ..engine import AuthEngine, Credentials, RefreshFailed
from ._common import EXIT_OK, UsageError, make_endpoint, print_json
from ._key_command import open_store

HELPER_USAGE: Final = """\
examples:
  curl -H "$(authfsm token --store ~/.myapp/auth.json --format header)" https://api.example/me
  git config credential.helper '!authfsm token --store ~/.myapp/auth.json --format git'

The stored credential knows its issuer and client id when it was stored by
`authfsm login --issuer`; otherwise pass --token-url and --client-id to let it refresh.
"""

#: What ``--format`` accepts.
FORMATS: Final = ("plain", "header", "json", "git")


def resolve_endpoint(
    args: argparse.Namespace, credentials: Credentials | None
) -> OAuthTokenEndpoint | None:
    """
    The token endpoint to refresh with: ``--token-url``/``--client-id`` when given, else the
    stored credential's issuer (found by discovery) and client id, else None (serve only).
    """
    if args.token_url:
        if not args.client_id:
            raise UsageError("--token-url needs --client-id")
        return make_endpoint(args, args.token_url, revoke_url=getattr(args, "revoke_url", None))
    if credentials is None or not credentials.issuer or not credentials.client_id:
        return None
    from ..login import discover

    metadata = discover(credentials.issuer, timeout=args.timeout)
    if args.client_id is None:
        args.client_id = credentials.client_id
    return make_endpoint(args, metadata.token_endpoint, revoke_url=metadata.revocation_endpoint)


def _git_fields(source: TextIO) -> dict[str, str]:
    """git's credential-helper input: ``key=value`` lines up to a blank line or the end."""
    fields: dict[str, str] = {}
    for _ in range(256):  # bounded: git sends a handful of attributes
        line = source.readline()
        if not line or not line.strip():
            break
        key, _sep, value = line.rstrip("\n").partition("=")
        fields[key] = value
    return fields


def cmd_token(args: argparse.Namespace, out: TextIO) -> int:
    """Print a usable access token (refreshed through the engine when due)."""
    store = open_store(args)
    stored = store.read()
    endpoint = resolve_endpoint(args, stored.credential if stored is not None else None)
    engine = AuthEngine(store, endpoint)
    if args.format == "git" and args.action in ("store", "erase"):
        fields = _git_fields(sys.stdin)
        rejected = fields.get("password")
        if args.action == "erase" and rejected:
            engine.recover(rejected)  # the server refused it: the next `get` gets a newer one
        return EXIT_OK
    token = engine.access_token()
    expires_at = engine.credentials.expires_at if engine.credentials else None
    if expires_at is not None and expires_at <= datetime.now(UTC):
        failure = engine.status().failure or "no token endpoint known"
        raise RefreshFailed(
            f"The access token has expired and could not be refreshed ({failure}); "
            "try again later, or pass --token-url and --client-id.",
            reason=failure,
        )
    if args.format == "plain":
        out.write(token + "\n")
    elif args.format == "header":
        out.write(f"Authorization: Bearer {token}\n")
    elif args.format == "json":
        print_json(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
            out,
        )
    else:
        _git_fields(sys.stdin)
        out.write(f"username={args.git_username}\npassword={token}\n")
        if expires_at is not None:
            out.write(f"password_expiry_utc={int(expires_at.astimezone(UTC).timestamp())}\n")
    return EXIT_OK


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``authfsm token`` (besides ``--store`` and the client options)."""
    parser.add_argument(
        "--token-url",
        metavar="URL",
        help="the token endpoint (default: the stored credential's issuer, by discovery)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="plain",
        help="plain: the token; header: an Authorization header line; json: token and expiry; "
        "git: git's credential-helper protocol (default: plain)",
    )
    parser.add_argument(
        "--git-username",
        default="oauth2",
        metavar="NAME",
        help="the username git is given with --format git (default: oauth2)",
    )
    parser.add_argument(
        "action",
        nargs="?",
        choices=("get", "store", "erase"),
        default="get",
        help="git's credential-helper action (git passes it); erase recovers from a rejection",
    )
