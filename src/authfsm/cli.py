"""
The ``authfsm`` command line: inspect and manage a credential file, draw the lifecycle, run the
demo.

Each command is a small function from parsed arguments to an exit code; errors of authfsm map to
the documented exit codes (see :data:`EPILOG`). Nothing here prints a token unless asked to
(``status --show-token``), and client secrets are read from the environment, never from the
command line (where ``ps`` would show them).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TextIO

import httpx

from . import __version__
from .adapters import FileStore, OAuthTokenEndpoint
from .engine import (
    AuthEngine,
    AuthError,
    AuthStatus,
    Credentials,
    InvalidCredentials,
    ReauthRequired,
    RefreshOutcome,
    StorageCorrupt,
)
from .states import State

__all__ = ["EXIT_OK", "EXIT_REAUTH", "EXIT_TRANSIENT", "EXIT_USAGE", "main"]

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
     another account's credential, or the store file is corrupt (fix or remove it, log in again)
  2  usage error: bad arguments, an unreadable tokens file, a missing tool (Graphviz's dot)
  3  transient failure: network, timeout, 5xx/429, backing off, lease busy, store unreachable;
     the old token stays in use, try again later

Tokens are never printed unless asked (status --show-token). Client secrets are read from an
environment variable (--client-secret-env), never from the command line.
"""


DEMO_DETAILS: Final = """\
scenarios:
  race            every worker finds the credential due at the same moment
  poison          the refresh token was revoked at the server before the run
  account-switch  another user logs in to the shared file while the workers hold theirs

columns:
  token calls       requests to the token endpoint
  reuse rejections  spent refresh tokens presented again (each one revokes the token family)
  family revoked    the user's token family is dead at the end
  working tokens    workers whose final token the server accepts, for their own user
  wrong user        workers whose final token works, for another user
  forced re-logins  workers whose credential is dead: only a login helps
  refused switch    workers that refused another user's credential (AccountMismatch)

The naive client keeps the credential in memory, reloads the file when it changes, refreshes
with the refresh token it holds when due or after a 401, and writes the result back: no lock,
no re-read before spending, no identity check. The demo exits 3 if a worker fails to answer.
"""


class UsageError(Exception):
    """A problem with what the user asked for: reported, then exit 2."""


# -- output helpers ------------------------------------------------------------------------------


def _print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=False) + "\n")


def _when(value: str | None, now: datetime) -> str:
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


def _status_dict(status: AuthStatus, store: FileStore) -> dict[str, Any]:
    data = {"store": store.location, **status.to_dict()}
    refresh_at = status.refresh_at
    data["due"] = refresh_at is not None and refresh_at <= datetime.now(UTC)
    return data


def _print_status(data: dict[str, Any], out: TextIO) -> None:
    now = datetime.now(UTC)
    rows = [
        ("store", data["store"]),
        ("state", str(data["state"]).upper()),
        ("method", data["method"] or "-"),
        ("account", data["account_id"] or "-"),
        ("user", data["user_id"] or "-"),
        ("fingerprint", data["fingerprint"] or "-"),
        ("expires", _when(data["expires_at"], now)),
        ("refresh at", _when(data["refresh_at"], now) + (" (due)" if data["due"] else "")),
        ("retry at", _when(data["retry_at"], now)),
        ("last failure", data["failure"] or "-"),
        ("login needed", "yes" if data["requires_login"] else "no"),
    ]
    if "token" in data:
        rows.append(("token", data["token"]))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        out.write(f"{name:<{width}}  {value}\n")


def _needs_login(status: AuthStatus) -> bool:
    return status.requires_login or status.state in (State.LOGGED_OUT, State.POISONED)


def _client_secret(args: argparse.Namespace) -> str | None:
    name = getattr(args, "client_secret_env", None)
    if not name:
        return None
    secret = os.environ.get(name)
    if not secret:
        raise UsageError(f"--client-secret-env {name}: that environment variable is not set")
    return secret


# -- commands ------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    """Show what the store holds, as an engine sharing it sees it."""
    store = FileStore(args.store)
    engine = AuthEngine(store)
    status = engine.status(include_token=args.show_token)
    data = _status_dict(status, store)
    if args.json:
        _print_json(data, out)
    else:
        _print_status(data, out)
    return EXIT_REAUTH if _needs_login(status) else EXIT_OK


def _parse_expiry(doc: dict[str, Any], now: float) -> datetime | None:
    expires_in = doc.get("expires_in")
    expires_at = doc.get("expires_at")
    if expires_in is not None:
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float | str):
            raise UsageError("expires_in must be a number of seconds")
        try:
            seconds = float(expires_in)
        except ValueError:
            raise UsageError("expires_in must be a number of seconds") from None
        if not math.isfinite(seconds) or seconds <= 0:
            raise UsageError("expires_in must be a positive number of seconds")
        try:
            return datetime.fromtimestamp(now, UTC) + timedelta(seconds=seconds)
        except (OverflowError, ValueError):
            raise UsageError("expires_in is out of range (the expiry is past year 9999)") from None
    if expires_at is None:
        return None
    if isinstance(expires_at, int | float) and not isinstance(expires_at, bool):
        if not math.isfinite(expires_at):
            raise UsageError("expires_at must be finite")
        try:
            return datetime.fromtimestamp(expires_at, UTC)
        except (OverflowError, OSError, ValueError):
            raise UsageError("expires_at is out of range (POSIX seconds up to year 9999)") from None
    if isinstance(expires_at, str):
        try:
            moment = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError("expires_at must be ISO 8601 or POSIX seconds") from None
        if moment.tzinfo is None:
            raise UsageError("expires_at needs a time zone (for example 2030-01-01T00:00:00Z)")
        return moment
    raise UsageError("expires_at must be ISO 8601 or POSIX seconds")


def credentials_from_token_response(doc: object, now: float) -> Credentials:
    """
    A credential from a token-response-like JSON object: ``access_token`` (required),
    ``refresh_token``, ``id_token``, ``expires_in`` or ``expires_at``, ``account_id``.

    Raises :class:`UsageError` naming the field at fault (never its value).
    """
    if not isinstance(doc, dict):
        raise UsageError("the tokens file must hold a JSON object")
    for name in ("access_token", "refresh_token", "id_token", "account_id"):
        value = doc.get(name)
        if value is not None and not isinstance(value, str):
            raise UsageError(f"{name} must be a string")
    access_token = doc.get("access_token")
    if not access_token:
        raise UsageError("access_token is required")
    try:
        return Credentials(
            access_token=access_token,
            refresh_token=doc.get("refresh_token") or None,
            id_token=doc.get("id_token") or None,
            expires_at=_parse_expiry(doc, now),
            account_id=doc.get("account_id") or None,
            last_refresh=datetime.fromtimestamp(now, UTC),
        )
    except InvalidCredentials as error:
        raise UsageError(str(error)) from None


def _read_tokens(source: str) -> object:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as error:
        raise UsageError(f"cannot read {source}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{source} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except ValueError:
        raise UsageError(f"{source} is not valid JSON") from None


def cmd_login(args: argparse.Namespace, out: TextIO) -> int:
    """Store a credential from a token response for every process sharing the store."""
    credentials = credentials_from_token_response(
        _read_tokens(args.from_file), datetime.now(UTC).timestamp()
    )
    store = FileStore(args.store)
    engine = AuthEngine(store)
    engine.login(credentials)
    data = _status_dict(engine.status(), store)
    if args.json:
        _print_json(data, out)
    else:
        who = ", ".join(
            f"{label} {data[key]}"
            for label, key in (("user", "user_id"), ("account", "account_id"))
            if data[key]
        )
        out.write(
            f"Logged in{' as ' + who if who else ''}; credential {data['fingerprint']} "
            f"stored in {store.location}.\n"
        )
    return EXIT_OK


class _RecordingEndpoint:
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


def _endpoint(args: argparse.Namespace, token_url: str) -> OAuthTokenEndpoint:
    try:
        return OAuthTokenEndpoint(
            token_url,
            args.client_id,
            client_secret=_client_secret(args),
            revoke_url=getattr(args, "revoke_url", None),
            timeout=args.timeout,
        )
    except (ValueError, httpx.InvalidURL) as error:
        raise UsageError(str(error)) from None


def cmd_logout(args: argparse.Namespace, out: TextIO) -> int:
    """Remove the credential from the store (every sharing process sees it), optionally revoke."""
    store = FileStore(args.store)
    recorder: _RecordingEndpoint | None = None
    if args.revoke:
        if not args.revoke_url or not args.client_id:
            raise UsageError("--revoke needs --revoke-url and --client-id")
        recorder = _RecordingEndpoint(_endpoint(args, args.token_url or args.revoke_url))
    engine = AuthEngine(store, recorder)
    was = engine.state
    engine.logout(revoke=args.revoke)
    revoked = None if recorder is None else bool(recorder.revocations) and all(recorder.revocations)
    if args.json:
        _print_json(
            {
                "store": store.location,
                "was_logged_in": was is not State.LOGGED_OUT,
                "revoked": revoked,
            },
            out,
        )
    else:
        if was is State.LOGGED_OUT:
            out.write(f"Already logged out ({store.location} holds no credential).\n")
        else:
            out.write(f"Logged out: the credential was removed from {store.location}.\n")
        if revoked is True:
            out.write("The refresh token was revoked at the server.\n")
        elif revoked is False and was is not State.LOGGED_OUT:
            sys.stderr.write(
                "warning: the server did not confirm the revocation (best effort); "
                "the local credential is gone either way.\n"
            )
    return EXIT_OK


def cmd_refresh(args: argparse.Namespace, out: TextIO) -> int:
    """Refresh now (guarded: adopts instead if another process already rotated)."""
    store = FileStore(args.store)
    engine = AuthEngine(store, _endpoint(args, args.token_url))
    before = engine.credentials.fingerprint if engine.credentials else None
    engine.refresh()
    data = _status_dict(engine.status(), store)
    if args.json:
        _print_json({**data, "previous_fingerprint": before}, out)
    else:
        verb = "Refreshed" if engine.state is State.FRESH else "Adopted a newer credential"
        out.write(
            f"{verb}: {before} -> {data['fingerprint']}; "
            f"expires {_when(data['expires_at'], datetime.now(UTC))}.\n"
        )
    return EXIT_OK


def cmd_diagram(args: argparse.Namespace, out: TextIO) -> int:
    """Draw the lifecycle (or, with --trace, one recorded run)."""
    from . import diagram

    fmt = args.format or _format_from_suffix(args.output) or "mermaid"
    if args.trace:
        if fmt != "mermaid":
            raise UsageError("--trace draws Mermaid only (use --format mermaid)")
        lines = _read_lines(args.trace)
        events, bad = diagram.parse_events(lines)
        if bad:
            sys.stderr.write(f"warning: skipped {bad} line(s) that are not JSON objects\n")
        text = diagram.trace_mermaid(events, title=f"authfsm run: {Path(args.trace).name}")
        return _emit(text.encode(), args.output, out)
    if fmt == "mermaid":
        return _emit(diagram.lifecycle_mermaid().encode(), args.output, out)
    dot_source = diagram.lifecycle_dot()
    if fmt == "dot":
        return _emit(dot_source.encode(), args.output, out)
    if fmt == "png" and not args.output and out.isatty():
        raise UsageError("PNG is binary: give --output FILE or redirect stdout")
    try:
        rendered = diagram.render_with_dot(dot_source, fmt)
    except diagram.DotNotFound as error:
        raise UsageError(str(error)) from None
    return _emit(rendered, args.output, out)


_SUFFIXES: Final = {
    ".mmd": "mermaid",
    ".mermaid": "mermaid",
    ".dot": "dot",
    ".gv": "dot",
    ".svg": "svg",
    ".png": "png",
}


def _format_from_suffix(output: str | None) -> str | None:
    return _SUFFIXES.get(Path(output).suffix.lower()) if output else None


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text(errors="replace").splitlines()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None


def _emit(data: bytes, output: str | None, out: TextIO) -> int:
    if output:
        try:
            Path(output).write_bytes(data)
        except OSError as error:
            raise UsageError(f"cannot write {output}: {error.strerror}") from None
        return EXIT_OK
    buffer = getattr(out, "buffer", None)
    if buffer is not None:
        out.flush()
        buffer.write(data)
        buffer.flush()
    else:
        out.write(data.decode())
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    """Run the naive client and authfsm side by side in real processes; print the table."""
    from .demo import SCENARIOS, DemoError, StreamProgress, format_report, run_demo

    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    try:
        report = run_demo(
            workers=args.workers,
            scenarios=scenarios,
            polls=args.polls,
            keep=args.keep,
            progress=StreamProgress(sys.stderr, quiet=args.quiet),
        )
    except DemoError as error:
        sys.stderr.write(f"authfsm demo: {error}\n")
        return EXIT_TRANSIENT
    if args.json:
        _print_json(report.to_dict(), out)
    else:
        out.write(format_report(report))
    return EXIT_OK


# -- the parser ----------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _bounded(limit: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", required=True, metavar="PATH", help="the credential file (authfsm format)"
    )


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_client(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--client-id", required=required, metavar="ID", help="OAuth client id")
    parser.add_argument(
        "--client-secret-env",
        metavar="VAR",
        help="read the client secret from this environment variable (confidential clients)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="HTTP timeout (default: 10)",
    )


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
        "--workers", type=_bounded(64), default=8, metavar="N", help="processes (default: 8)"
    )
    demo.add_argument(
        "--scenario",
        choices=("race", "poison", "account-switch", "all"),
        default="all",
        help="race: all workers find the token due at once; poison: the refresh token was "
        "revoked; account-switch: another user logs in mid-run (default: all)",
    )
    demo.add_argument(
        "--polls", type=_bounded(100), default=5, metavar="K", help="polls per worker (default: 5)"
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="keep the credential files, the authfsm runs' JSON event logs and trace diagrams",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress display on stderr")
    _add_json(demo)

    status = command("status", "Show the state of the stored credential.", cmd_status)
    _add_store(status)
    status.add_argument(
        "--show-token", action="store_true", help="also print the access token (a secret)"
    )
    _add_json(status)

    login = command(
        "login", "Store a credential from a token response (JSON) for every process.", cmd_login
    )
    _add_store(login)
    login.add_argument(
        "--from-file",
        required=True,
        metavar="FILE",
        help="JSON with access_token, refresh_token, id_token, expires_in or expires_at, "
        "account_id ('-' reads standard input)",
    )
    _add_json(login)

    logout = command(
        "logout", "Remove the credential from the store; optionally revoke it.", cmd_logout
    )
    _add_store(logout)
    logout.add_argument(
        "--revoke", action="store_true", help="also revoke the refresh token (RFC 7009)"
    )
    logout.add_argument("--revoke-url", metavar="URL", help="the revocation endpoint")
    logout.add_argument("--token-url", metavar="URL", help="the token endpoint (optional)")
    _add_client(logout, required=False)
    _add_json(logout)

    refresh = command(
        "refresh",
        "Refresh the stored credential now (adopts instead if another process just did).",
        cmd_refresh,
    )
    _add_store(refresh)
    refresh.add_argument("--token-url", required=True, metavar="URL", help="the token endpoint")
    _add_client(refresh, required=True)
    _add_json(refresh)

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


def _exit_code(error: AuthError) -> int:
    if isinstance(error, ReauthRequired | StorageCorrupt):
        return EXIT_REAUTH
    if error.reason == "not_refreshable":
        # Raised as RefreshFailed, but waiting will not help: only a new login can.
        return EXIT_REAUTH
    if isinstance(error, InvalidCredentials):
        return EXIT_USAGE
    return EXIT_TRANSIENT


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


if __name__ == "__main__":
    raise SystemExit(main())
