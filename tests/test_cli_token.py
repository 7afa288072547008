"""`authfsm token`: the credential helper for shell scripts, curl and git, run as users run it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import httpx

from authfsm import AuthEngine, Credentials
from authfsm.adapters import FileStore

from .test_cli import CLIENT, _idp, _store, run_cli  # noqa: F401 - fixtures

TOKEN_ARGS = ("--client-id", CLIENT)


def due(credentials: Credentials) -> Credentials:
    """The same tokens, due now: they expire in 10 s (the leeway is 5 min)."""
    now = datetime.now(UTC)
    return attrs.evolve(
        credentials, expires_at=now + timedelta(seconds=10), last_refresh=now - timedelta(hours=1)
    )


def stored(path: Path) -> Credentials:
    record = FileStore(path).read()
    assert record is not None
    assert record.credential is not None
    return record.credential


class TestToken:
    def test_fresh_token_is_printed_without_a_call(self, idp, store):
        creds = idp.issue()
        AuthEngine(FileStore(store)).login(creds)

        done = run_cli("token", "--store", str(store))

        assert (0, creds.access_token + "\n", "") == (done.returncode, done.stdout, done.stderr)
        assert 0 == idp.token_calls

    def test_due_token_is_refreshed_once_and_shared(self, idp, store):
        old = due(idp.issue())
        AuthEngine(FileStore(store)).login(old)

        done = run_cli("token", "--store", str(store), "--token-url", idp.token_url, *TOKEN_ARGS)

        token = done.stdout.strip()
        assert 0 == done.returncode, done.stderr
        assert token != old.access_token
        assert token == stored(store).access_token
        response = httpx.get(idp.resource_url, headers={"Authorization": f"Bearer {token}"})
        assert 200 == response.status_code
        again = run_cli("token", "--store", str(store), "--token-url", idp.token_url, *TOKEN_ARGS)
        assert (token, 1) == (again.stdout.strip(), idp.token_calls)

    def test_formats(self, idp, store):
        creds = idp.issue()
        AuthEngine(FileStore(store)).login(creds)
        token = creds.access_token

        header = run_cli("token", "--store", str(store), "--format", "header")
        as_json = json.loads(run_cli("token", "--store", str(store), "--format", "json").stdout)
        git = run_cli(
            "token",
            "--store",
            str(store),
            "--format",
            "git",
            "get",
            stdin="protocol=https\nhost=example.org\n\n",
        )

        assert f"Authorization: Bearer {token}\n" == header.stdout
        assert (token, "Bearer") == (as_json["access_token"], as_json["token_type"])
        lines = git.stdout.splitlines()
        assert ["username=oauth2", f"password={token}"] == lines[:2]
        assert lines[2].startswith("password_expiry_utc=")

    def test_git_erase_recovers_from_a_rejection(self, idp, store):
        """git sends the token a server refused: the next `get` gets a newer one, one call."""
        creds = idp.issue()
        AuthEngine(FileStore(store)).login(creds)
        args = ("token", "--store", str(store), "--format", "git", "--token-url", idp.token_url)

        erased = run_cli(*args, *TOKEN_ARGS, "erase", stdin=f"password={creds.access_token}\n\n")
        fetched = run_cli(*args, *TOKEN_ARGS, "get", stdin="\n")

        assert (0, 0) == (erased.returncode, fetched.returncode), erased.stderr
        assert f"password={creds.access_token}" not in fetched.stdout
        assert f"password={stored(store).access_token}" in fetched.stdout
        assert 1 == idp.token_calls

    def test_logged_out_exits_1_and_prints_nothing(self, store):
        done = run_cli("token", "--store", str(store))
        assert (1, "") == (done.returncode, done.stdout)
        assert "log in" in done.stderr.lower()

    def test_revoked_credential_exits_1(self, idp, store):
        creds = due(idp.issue())
        AuthEngine(FileStore(store)).login(creds)
        idp.revoke_family_of(creds)

        done = run_cli("token", "--store", str(store), "--token-url", idp.token_url, *TOKEN_ARGS)

        assert (1, "") == (done.returncode, done.stdout)

    def test_expired_token_that_cannot_be_refreshed_exits_3(self, idp, store):
        """Never print a token that has expired: a transient failure is exit 3."""
        creds = idp.issue()
        past = datetime.now(UTC) - timedelta(minutes=1)
        AuthEngine(FileStore(store)).login(
            attrs.evolve(creds, expires_at=past, last_refresh=past - timedelta(hours=1))
        )
        idp.fail_next(503)

        done = run_cli("token", "--store", str(store), "--token-url", idp.token_url, *TOKEN_ARGS)

        assert (3, "") == (done.returncode, done.stdout)
        assert "expired" in done.stderr
