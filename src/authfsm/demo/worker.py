"""
One demo worker process: ``python -m authfsm.demo.worker --client naive|authfsm ...``.

The demo runner starts N of these on one credential file and drives them in lock step over a
line protocol: the worker prints one JSON object per line on stdout (``{"ready": ...}`` once set
up, then one reply per command) and reads commands on stdin:

- ``poll``: one unit of work (get a token, call the protected resource with it);
- ``check``: call the resource with the token the worker holds now and report what it got;
- ``quit`` (or end of input): exit.

Replies never contain a token. The authfsm worker configures structlog here (JSON lines with the
pid, appended to ``--events``): the library itself never configures logging.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx
import structlog

from ..adapters import FileStore, OAuthTokenEndpoint
from ..engine import AccountMismatch, AuthEngine, AuthError, ReauthRequired
from ..logging import redact_secrets
from ..states import State
from ._naive import NaiveClient

__all__ = ["main"]


class _AppendLogger:
    """A structlog logger that appends each rendered line with one ``write`` (O_APPEND)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def msg(self, message: str) -> None:
        os.write(self._fd, (message + "\n").encode())

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def configure_event_log(path: Path, index: int) -> None:
    """Send structlog events (authfsm's among them) to ``path`` as JSON lines with our pid."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    pid = os.getpid()

    def stamp(
        _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event["pid"] = pid
        event["worker"] = index
        return event

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            stamp,
            redact_secrets,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=lambda *_args: _AppendLogger(fd),
        cache_logger_on_first_use=True,
    )


class _Worker:
    """A client of either kind, behind the three commands of the protocol."""

    def __init__(self, args: argparse.Namespace, http: httpx.Client) -> None:
        self._args = args
        self._http = http
        self._outcome = "none"
        self.naive: NaiveClient | None = None
        self.engine: AuthEngine | None = None
        store = Path(args.store)
        if args.client == "naive":
            self.naive = NaiveClient(store, args.token_url, args.client_id, http)
        else:
            if args.events:
                configure_event_log(Path(args.events), args.index)
            endpoint = OAuthTokenEndpoint(args.token_url, args.client_id, client=http)
            self.engine = AuthEngine(FileStore(store), endpoint)

    def poll(self) -> dict[str, Any]:
        if self.naive is not None:
            self._outcome = self.naive.poll(self._args.resource_url)
        else:
            self._outcome = self._poll_engine()
        return {"outcome": self._outcome}

    def _poll_engine(self) -> str:
        assert self.engine is not None
        try:
            response = self._http.get(self._args.resource_url, auth=self.engine.httpx_auth())
        except AccountMismatch:
            return "account_mismatch"
        except ReauthRequired as error:
            return f"reauth_required:{error.reason}"
        except AuthError as error:
            return f"{type(error).__name__}:{error.reason}"
        return "ok" if response.is_success else f"http_{response.status_code}"

    def check(self) -> dict[str, Any]:
        """What the token this worker holds is worth now, asked of the resource server."""
        if self.naive is not None:
            cred = self.naive.credentials
            needs_login = self.naive.needs_login
            state = None
        else:
            assert self.engine is not None
            cred = self.engine.credentials
            state = self.engine.state
            needs_login = state in (State.POISONED, State.LOGGED_OUT)
        user = None
        token_ok = False
        if cred is not None:
            response = self._http.get(
                self._args.resource_url,
                headers={"Authorization": f"Bearer {cred.access_token}"},
            )
            token_ok = response.is_success
            if token_ok:
                body = response.json()
                user = body.get("user_id") if isinstance(body, dict) else None
        return {
            "token_ok": token_ok,
            "user": user,
            "own_user": user == self._args.user,
            "needs_login": needs_login and not token_ok,
            "refused_switch": self._outcome == "account_mismatch",
            "state": state.name if state is not None else None,
            "outcome": self._outcome,
        }


def _reply(out: TextIO, payload: dict[str, Any]) -> None:
    out.write(json.dumps(payload) + "\n")
    out.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m authfsm.demo.worker",
        description="One worker process of `authfsm demo` (driven over stdin/stdout).",
    )
    parser.add_argument("--client", choices=("naive", "authfsm"), required=True)
    parser.add_argument("--index", type=int, default=0, help="the worker's number in its run")
    parser.add_argument("--store", required=True, help="the shared credential file")
    parser.add_argument("--token-url", required=True)
    parser.add_argument("--resource-url", required=True)
    parser.add_argument("--client-id", default="test-client")
    parser.add_argument("--user", required=True, help="the user this worker started as")
    parser.add_argument("--events", help="append structlog JSON lines here (authfsm only)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command loop until ``quit`` or end of input."""
    args = _parser().parse_args(argv)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    out = sys.stdout
    with httpx.Client(timeout=10.0) as http:
        worker = _Worker(args, http)
        _reply(out, {"ready": True, "pid": os.getpid()})
        for line in sys.stdin:
            command = line.strip()
            if command in ("quit", ""):
                break
            try:
                if command == "poll":
                    _reply(out, worker.poll())
                elif command == "check":
                    _reply(out, worker.check())
                else:
                    _reply(out, {"error": f"unknown command {command[:20]!r}"})
            except (httpx.HTTPError, AuthError, OSError, ValueError) as error:
                # Only the class: messages may name URLs; never a token either way.
                _reply(out, {"error": type(error).__name__})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
