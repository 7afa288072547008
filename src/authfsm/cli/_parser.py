"""The ``authfsm`` argument parser."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable

from .. import __version__
from ._common import EPILOG, add_client, add_json, add_store, bounded
from ._credential_commands import cmd_login, cmd_logout, cmd_refresh, cmd_status
from ._demo_command import DEMO_DETAILS, cmd_demo
from ._diagram_command import cmd_diagram
from ._key_command import (
    ROTATE_KEY_DETAILS,
    ROTATE_KEY_SUMMARY,
    add_key_arguments,
    add_rotate_key_arguments,
    cmd_rotate_key,
)
from ._login_command import LOGIN_DETAILS, add_issuer_arguments
from ._token_command import HELPER_USAGE, add_token_arguments, cmd_token


def build_parser() -> argparse.ArgumentParser:
    """The ``authfsm`` argument parser (every command has ``--help``)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="authfsm",
        description="Inspect and manage a shared OAuth credential file; draw the lifecycle; "
        "run the demo.",
        epilog=EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"authfsm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, summary: str, handler: Callable[..., int], details: str = ""
    ) -> argparse.ArgumentParser:
        description = textwrap.fill(summary, 96) + ("\n\n" + details if details else "")
        sub = commands.add_parser(
            name, help=summary, description=description, epilog=EPILOG, formatter_class=formatter
        )
        sub.set_defaults(handler=handler)
        return sub

    demo = command(
        "demo",
        "Real worker processes share one credential file against a local token server: a "
        "naive client, then authfsm; prints token calls, reuse rejections, revoked families, "
        "working tokens and forced re-logins.",
        cmd_demo,
        DEMO_DETAILS,
    )
    demo.add_argument(
        "--workers", type=bounded(64), default=8, metavar="N", help="processes (default: 8)"
    )
    demo.add_argument(
        "--scenario",
        choices=("race", "poison", "account-switch", "all"),
        default="all",
        help="race: all workers find the token due at once; poison: the refresh token was "
        "revoked; account-switch: another user logs in mid-run (default: all)",
    )
    demo.add_argument(
        "--polls", type=bounded(100), default=5, metavar="K", help="polls per worker (default: 5)"
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the credential files, the authfsm runs' JSON event logs and trace diagrams",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    add_json(demo)

    status = command("status", "Show the state of the stored credential.", cmd_status)
    add_store(status)
    add_key_arguments(status)
    status.add_argument(
        "--show-token", action="store_true", help="also print the access token (a secret)"
    )
    add_json(status)

    login = command(
        "login",
        "Log in at an OpenID provider (browser or device code), or store a token response "
        "(JSON), for every process sharing the store.",
        cmd_login,
        LOGIN_DETAILS,
    )
    add_store(login)
    add_key_arguments(login)
    add_issuer_arguments(login)
    add_client(login, required=False)
    login.add_argument(
        "--from-file",
        metavar="FILE",
        help="JSON with access_token, refresh_token, id_token, expires_in or expires_at, "
        "account_id ('-' reads standard input)",
    )
    add_json(login)

    logout = command(
        "logout", "Remove the credential from the store; optionally revoke it.", cmd_logout
    )
    add_store(logout)
    add_key_arguments(logout)
    logout.add_argument(
        "--revoke", action="store_true", help="also revoke the refresh token (RFC 7009)"
    )
    logout.add_argument("--revoke-url", metavar="URL", help="the revocation endpoint")
    logout.add_argument("--token-url", metavar="URL", help="the token endpoint (optional)")
    add_client(logout, required=False)
    add_json(logout)

    refresh = command(
        "refresh",
        "Refresh the stored credential now (adopts instead if another process just did).",
        cmd_refresh,
    )
    add_store(refresh)
    add_key_arguments(refresh)
    refresh.add_argument("--token-url", required=True, metavar="URL", help="the token endpoint")
    add_client(refresh, required=True)
    add_json(refresh)

    token = command(
        "token",
        "Print a usable access token, refreshed through the engine when due: a credential "
        "helper for shell scripts, curl and git.",
        cmd_token,
        HELPER_USAGE,
    )
    add_store(token)
    add_key_arguments(token)
    add_token_arguments(token)
    add_client(token, required=False)

    rotate = command("rotate-key", ROTATE_KEY_SUMMARY, cmd_rotate_key, ROTATE_KEY_DETAILS)
    add_rotate_key_arguments(rotate)

    diagram = command(
        "diagram",
        "Draw the lifecycle from authfsm.TRANSITIONS (Mermaid, DOT, or SVG/PNG with Graphviz), "
        "or one recorded run from structlog JSON lines (--trace).",
        cmd_diagram,
    )
    diagram.add_argument(
        "--format",
        choices=("mermaid", "dot", "svg", "png"),
        help="default: from the --output suffix, else mermaid",
    )
    diagram.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    diagram.add_argument(
        "--trace",
        metavar="EVENTS.jsonl",
        help="draw the authfsm.* events of one run as a Mermaid sequence diagram",
    )
    return parser
