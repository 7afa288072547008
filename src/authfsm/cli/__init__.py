"""
The ``authfsm`` command line: inspect and manage a credential file, log in, print a usable
token, draw the lifecycle, run the demo.

Each command is a small function from parsed arguments to an exit code; errors of authfsm map to
the documented exit codes (see :data:`EPILOG`). Nothing here prints a token unless asked to
(``status --show-token``, ``token``), and client secrets are read from the environment, never
from the command line (where ``ps`` would show them). A module per command group.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from ..engine import AuthError, EngineMisuse, InvalidCredentials, ReauthRequired, StorageCorrupt
from ._common import EPILOG, EXIT_OK, EXIT_REAUTH, EXIT_TRANSIENT, EXIT_USAGE, UsageError
from ._parser import build_parser

__all__ = [
    "EPILOG",
    "EXIT_OK",
    "EXIT_REAUTH",
    "EXIT_TRANSIENT",
    "EXIT_USAGE",
    "build_parser",
    "main",
]


def _exit_code(error: AuthError) -> int:
    if isinstance(error, ReauthRequired | StorageCorrupt):
        return EXIT_REAUTH
    if error.reason == "not_refreshable":
        # Raised as RefreshFailed, but waiting will not help: only a new login can.
        return EXIT_REAUTH
    if isinstance(error, InvalidCredentials | EngineMisuse):
        return EXIT_USAGE
    if type(error).__module__.startswith("authfsm.login"):
        return _login_exit_code(error)
    return EXIT_TRANSIENT


def _login_exit_code(error: AuthError) -> int:
    # authfsm.login needs an optional extra: its errors are told apart without importing it.
    if isinstance(error, TimeoutError | ConnectionError):
        return EXIT_TRANSIENT  # the deadline passed, the provider was unreachable or failing
    if type(error).__name__ == "DiscoveryError":
        # The provider could not be reached (try again), or cannot be used as given.
        return EXIT_TRANSIENT if error.reason == "unreachable" else EXIT_USAGE
    if error.reason == "port_unavailable":
        return EXIT_USAGE  # every redirect port busy
    return EXIT_REAUTH  # the login did not happen: denied, cancelled, or a check failed


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``authfsm`` with ``argv`` (default: the process's arguments); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        code = exit_.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    out = sys.stdout
    try:
        handler: Callable[[argparse.Namespace, TextIO], int] = args.handler
        return handler(args, out)
    except UsageError as error:
        sys.stderr.write(f"authfsm {args.command}: {error}\n")
        return EXIT_USAGE
    except AuthError as error:
        sys.stderr.write(f"authfsm {args.command}: {error}\n")
        return _exit_code(error)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
