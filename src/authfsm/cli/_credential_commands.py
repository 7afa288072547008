"""Commands on the stored credential: status, login, logout, refresh, token."""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from ..engine import AuthEngine, Credentials, InvalidCredentials
from ..states import State
from ._common import (
    EXIT_OK,
    EXIT_REAUTH,
    RecordingEndpoint,
    UsageError,
    make_endpoint,
    needs_login,
    print_json,
    print_status,
    status_dict,
    when,
)
from ._key_command import open_store


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    """Show what the store holds, as an engine sharing it sees it."""
    store = open_store(args)
    engine = AuthEngine(store)
    status = engine.status(include_token=args.show_token)
    data = status_dict(status, store)
    if args.json:
        print_json(data, out)
    else:
        print_status(data, out)
    return EXIT_REAUTH if needs_login(status) else EXIT_OK


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
    """Store a credential (from a token response, or a login at a provider) for every process."""
    if args.issuer:
        if args.from_file:
            raise UsageError("give either --issuer or --from-file, not both")
        from ._login_command import cmd_issuer_login

        return cmd_issuer_login(args, out)
    if not args.from_file:
        raise UsageError("give --issuer URL (with --client-id) or --from-file FILE")
    credentials = credentials_from_token_response(
        _read_tokens(args.from_file), datetime.now(UTC).timestamp()
    )
    store = open_store(args)
    engine = AuthEngine(store)
    engine.login(credentials)
    data = status_dict(engine.status(), store)
    if args.json:
        print_json(data, out)
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


def cmd_logout(args: argparse.Namespace, out: TextIO) -> int:
    """Remove the credential from the store (every sharing process sees it), optionally revoke."""
    store = open_store(args)
    recorder: RecordingEndpoint | None = None
    if args.revoke:
        if not args.revoke_url or not args.client_id:
            raise UsageError("--revoke needs --revoke-url and --client-id")
        recorder = RecordingEndpoint(make_endpoint(args, args.token_url or args.revoke_url))
    engine = AuthEngine(store, recorder)
    was = engine.state
    engine.logout(revoke=args.revoke)
    revoked = None if recorder is None else bool(recorder.revocations) and all(recorder.revocations)
    if args.json:
        print_json(
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
    store = open_store(args)
    engine = AuthEngine(store, make_endpoint(args, args.token_url))
    before = engine.credentials.fingerprint if engine.credentials else None
    engine.refresh()
    data = status_dict(engine.status(), store)
    if args.json:
        print_json({**data, "previous_fingerprint": before}, out)
    else:
        verb = "Refreshed" if engine.state is State.FRESH else "Adopted a newer credential"
        out.write(
            f"{verb}: {before} -> {data['fingerprint']}; "
            f"expires {when(data['expires_at'], datetime.now(UTC))}.\n"
        )
    return EXIT_OK
