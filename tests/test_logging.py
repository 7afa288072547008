"""Observability: events are emitted from one place, follow the table, and never hold secrets."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from authfsm import AuthEngine, AuthError, ReauthRequired
from authfsm.adapters import FileStore
from authfsm.logging import redact_secrets
from authfsm.states import TRANSITIONS
from authfsm.testing import ScriptedResponse


def declared_pairs() -> set[tuple[str, str, str]]:
    pairs = set()
    for row in TRANSITIONS:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        for source in sources:
            pairs.add((row["trigger"], source.value, row["dest"].value))
    return pairs


class TestEvents:
    """A whole life (login, refresh, adopt, transient, poison, logout) logged and checked."""

    def test_no_secret_in_events_or_errors_and_every_transition_is_a_row(
        self, tmp_path, endpoint, clock, server
    ):
        """Every captured event is free of tokens; every transition event is a table row."""
        path = tmp_path / "auth.json"
        secrets: set[str] = set()
        errors: list[str] = []

        def collect(*engines: AuthEngine) -> None:
            for engine in engines:
                if engine.credentials is not None:
                    c = engine.credentials
                    secrets.update(t for t in (c.access_token, c.refresh_token, c.id_token) if t)

        with capture_logs() as events:
            a = AuthEngine(FileStore(path), endpoint, clock=clock)
            b = AuthEngine(FileStore(path), endpoint, clock=clock)
            a.login(server.issue())
            collect(a)
            clock.advance(3600)
            a.access_token()
            b.access_token()
            collect(a, b)
            server.script(ScriptedResponse(status=503))
            clock.advance(3600)
            a.access_token()
            clock.advance(600)
            a.access_token()
            collect(a, b)
            server.revoke_family_of(a.credentials)
            clock.advance(3600)
            for engine in (a, b):
                try:
                    engine.refresh()
                except AuthError as error:
                    errors.extend((str(error), repr(error)))
            errors.append(repr(a.status(include_token=True)))
            a.logout()

        assert len(secrets) >= 9
        names = [e["event"] for e in events]
        assert "authfsm.refresh.call" in names
        assert "authfsm.refresh.adopted" in names
        assert "authfsm.refresh.transient" in names
        assert "authfsm.refresh.poisoned" in names
        text = repr(events) + "".join(errors)
        for secret in secrets:
            assert secret not in text
        for part in ("eyJ", "Bearer "):  # no JWT and no header value anywhere
            assert part not in text
        observed = {
            (e["trigger"], e["from_state"], e["to_state"])
            for e in events
            if e["event"] == "authfsm.transition"
        }
        assert observed
        assert observed <= declared_pairs()

    def test_silent_unless_configured(self, capsys, clock):
        """With structlog unconfigured, the library prints nothing."""
        import structlog

        from authfsm import Credentials
        from authfsm.adapters import MemoryStore

        structlog.reset_defaults()
        engine = AuthEngine(MemoryStore(), clock=clock)
        engine.login(Credentials(access_token="x", refresh_token="y"))
        engine.logout()
        assert ("", "") == tuple(capsys.readouterr())

    def test_explicit_logger(self, clock):
        """A logger passed to the engine receives the events."""
        from authfsm import Credentials
        from authfsm.adapters import MemoryStore

        got: list[tuple[str, dict]] = []

        class Recorder:
            def info(self, event: str, **kw: object) -> None:
                got.append((event, kw))

            warning = error = info

        engine = AuthEngine(MemoryStore(), clock=clock, logger=Recorder())
        engine.login(Credentials(access_token="x"))

        assert [("authfsm.transition", "logged_out", "fresh")] == [
            (e, kw["from_state"], kw["to_state"]) for e, kw in got
        ]


class TestRedactSecrets:
    """The shipped processor scrubs secrets from any event."""

    def test_keys_and_embedded_tokens(self):
        """Sensitive keys, nested dicts, JWTs and bearer values are masked."""
        jwt = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1In0.sig"
        event = {
            "event": "x",
            "access_token": "abc",
            "headers": {"Authorization": "Bearer abc", "ok": 1},
            "note": f"got {jwt} and Bearer zzz",
            "n": 3,
        }

        out = redact_secrets(None, "info", event)

        assert {
            "event": "x",
            "access_token": "[redacted]",
            "headers": {"Authorization": "[redacted]", "ok": 1},
            "note": "got [redacted] and Bearer [redacted]",
            "n": 3,
        } == out

    def test_with_capture_logs(self):
        """Used as a processor, it runs before capture."""
        import structlog

        with capture_logs(processors=[redact_secrets]) as logs:
            structlog.get_logger().info("authfsm.x", refresh_token="abc", expires_in=3600)

        assert [
            {
                "event": "authfsm.x",
                "refresh_token": "[redacted]",
                "expires_in": 3600,
                "log_level": "info",
            }
        ] == logs


def test_reauth_message_says_what_to_do(tmp_path, endpoint, clock, server):
    """A poisoned credential's error tells the user to log in again."""
    engine = AuthEngine(FileStore(tmp_path / "a.json"), endpoint, clock=clock)
    engine.login(server.issue())
    server.revoke_family_of(engine.credentials)
    with pytest.raises(ReauthRequired, match="log in again"):
        engine.refresh()
