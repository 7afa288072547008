"""``authfsm login --issuer``: log in at an OpenID provider (browser or device) into the store."""

from __future__ import annotations

import argparse
import sys
from typing import Final, TextIO

from ..engine import AuthEngine
from ._common import EXIT_OK, UsageError, client_secret, print_json, status_dict
from ._key_command import open_store

LOGIN_DETAILS: Final = """\
examples:
  authfsm login --issuer https://idp.example --client-id my-cli --store ~/.myapp/auth.json
  authfsm login --issuer https://idp.example --client-id my-cli --device --store ...
  authfsm login --from-file tokens.json --store ~/.myapp/auth.json

With --issuer the provider is found by discovery; the browser flow (authorization code + PKCE,
redirect to http://127.0.0.1:PORT/callback) opens the browser, or prints the URL when it
cannot (--no-browser); --device shows a code to enter on another device. The login lands in
the store for every process sharing it, and `authfsm token` then refreshes it on its own.
"""


def cmd_issuer_login(args: argparse.Namespace, out: TextIO) -> int:
    """Log in at the provider ``args.issuer`` and store the result."""
    if not args.client_id:
        raise UsageError("--issuer needs --client-id")
    store = open_store(args)
    engine = AuthEngine.from_issuer(
        args.issuer,
        client_id=args.client_id,
        store=store,
        client_secret=client_secret(args),
        scope=args.scope,
        timeout=args.timeout,
    )
    if args.device:
        result = engine.login_device(
            stream=sys.stderr, timeout=args.login_timeout, revoke_previous=args.revoke_previous
        )
    else:
        result = engine.login_browser(
            ports=tuple(args.port) or (0,),
            open_browser=not args.no_browser,
            stream=sys.stderr,
            timeout=args.login_timeout or 300.0,
            revoke_previous=args.revoke_previous,
        )
    data = status_dict(engine.status(), store)
    if args.json:
        print_json(data, out)
        return EXIT_OK
    identity = result.identity
    who = f" as {identity.subject}" if identity is not None else ""
    checked = "verified" if identity is not None and identity.verified else "not verified"
    out.write(
        f"Logged in{who} at {data['issuer']} (identity {checked}); credential "
        f"{data['fingerprint']} stored in {store.location}.\n"
    )
    return EXIT_OK


def add_issuer_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``authfsm login --issuer`` (the client options come separately)."""
    parser.add_argument("--issuer", metavar="URL", help="log in at this OpenID provider")
    parser.add_argument(
        "--scope",
        default="openid offline_access",
        help="scopes to ask for (default: 'openid offline_access')",
    )
    parser.add_argument("--device", action="store_true", help="use the device code flow (RFC 8628)")
    parser.add_argument(
        "--no-browser",
        action="store_true",
        help="do not open a browser: print the URL to open (on stderr) and wait",
    )
    parser.add_argument(
        "--port",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="a loopback port registered for the redirect (repeat to try several in order; "
        "default: one the OS picks)",
    )
    parser.add_argument(
        "--login-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up after this long (default: 300 for the browser, the code's lifetime for "
        "--device)",
    )
    parser.add_argument(
        "--revoke-previous",
        action="store_true",
        help="revoke the refresh token this login replaces (best effort)",
    )
