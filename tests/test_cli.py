"""The `authfsm` command line, run as a user runs it: in a subprocess, against a real server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from authfsm.adapters import FileStore
from authfsm.testing import TokenServer

COMMANDS = ("demo", "status", "login", "logout", "refresh", "token", "rotate-key", "diagram")
CLIENT = "cli-test"


def run_cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authfsm.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


@pytest.fixture(name="idp")
def _idp() -> Iterator[TokenServer]:
    """A token server on the real clock: the CLI runs in another process with time.time."""
    with TokenServer(client_id=CLIENT, client_secret=None) as server:
        yield server


@pytest.fixture(name="store")
def _store(tmp_path: Path) -> Path:
    return tmp_path / "home" / "auth.json"


def write_tokens(idp: TokenServer, path: Path, **issue: object) -> dict[str, object]:
    tokens = idp.issue_json(**issue)  # type: ignore[arg-type]
    path.write_text(json.dumps(tokens))
    return tokens


def logged_in(idp: TokenServer, store: Path, tmp_path: Path) -> dict[str, object]:
    tokens = write_tokens(idp, tmp_path / "tokens.json", user_id="alice", account_id="acme")
    done = run_cli("login", "--store", str(store), "--from-file", str(tmp_path / "tokens.json"))
    assert 0 == done.returncode, done.stderr
    return tokens


def secrets_of(tokens: dict[str, object]) -> list[str]:
    return [str(tokens[k]) for k in ("access_token", "refresh_token", "id_token") if k in tokens]


def assert_no_secret(done: subprocess.CompletedProcess[str], tokens: dict[str, object]) -> None:
    for secret in secrets_of(tokens):
        assert secret not in done.stdout
        assert secret not in done.stderr


class TestHelp:
    """Every command explains itself and the exit codes."""

    @pytest.mark.parametrize("command", [None, *COMMANDS])
    def test_help(self, command):
        """--help exits 0 and documents the exit codes."""
        done = run_cli(*([command] if command else []), "--help")

        assert 0 == done.returncode, done.stderr
        assert "usage: authfsm" in done.stdout
        assert "exit codes:" in done.stdout
        assert "re-login required" in done.stdout

    def test_usage_errors_exit_2(self):
        """No command, an unknown command or a missing required option: exit 2."""
        assert 2 == run_cli().returncode
        assert 2 == run_cli("bogus").returncode
        assert 2 == run_cli("status").returncode
        assert 2 == run_cli("demo", "--workers", "0").returncode

    def test_installed_script(self):
        """The `authfsm` console script is installed and runs main()."""
        script = shutil.which("authfsm", path=str(Path(sys.executable).parent))
        assert script is not None, "pip install -e . puts the authfsm script next to python"
        done = subprocess.run(
            [script, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
        assert 0 == done.returncode
        assert done.stdout.startswith("authfsm ")


class TestLoginStatusLogout:
    """A credential's life through the command line, with a temporary file store."""

    def test_status_when_logged_out(self, store):
        """An empty store: LOGGED_OUT, login needed, exit 1."""
        done = run_cli("status", "--store", str(store), "--json")

        assert 1 == done.returncode
        data = json.loads(done.stdout)
        assert ("logged_out", True) == (data["state"], data["requires_login"])

    def test_login_then_status(self, idp, store, tmp_path):
        """login stores the credential; status shows its identity and never the token."""
        tokens = logged_in(idp, store, tmp_path)

        done = run_cli("status", "--store", str(store), "--json")
        text = run_cli("status", "--store", str(store))

        assert 0 == done.returncode, done.stderr
        data = json.loads(done.stdout)
        assert ("acme", "alice", False, False) == (
            data["account_id"],
            data["user_id"],
            data["requires_login"],
            data["due"],
        )
        assert "token" not in data
        assert 0 == text.returncode
        assert "alice" in text.stdout
        assert_no_secret(done, tokens)
        assert_no_secret(text, tokens)
        assert 0o600 == store.stat().st_mode & 0o777

    def test_show_token_only_when_asked(self, idp, store, tmp_path):
        """status --show-token prints the access token, and only the access token."""
        tokens = logged_in(idp, store, tmp_path)

        done = run_cli("status", "--store", str(store), "--show-token", "--json")

        assert 0 == done.returncode
        assert tokens["access_token"] == json.loads(done.stdout)["token"]
        assert str(tokens["refresh_token"]) not in done.stdout

    def test_login_from_stdin_with_expires_at(self, idp, store):
        """--from-file - reads standard input; expires_at may be ISO 8601 with a zone."""
        tokens = idp.issue_json(user_id="bob", account_id=None)
        tokens.pop("expires_in")
        tokens["expires_at"] = "2099-01-01T00:00:00Z"

        done = run_cli(
            "login", "--store", str(store), "--from-file", "-", "--json", stdin=json.dumps(tokens)
        )

        assert 0 == done.returncode, done.stderr
        data = json.loads(done.stdout)
        assert ("bob", "2099-01-01T00:00:00+00:00") == (data["user_id"], data["expires_at"])
        assert_no_secret(done, tokens)

    @pytest.mark.parametrize(
        ("content", "complaint"),
        [
            ("not json", "not valid JSON"),
            ("[1, 2]", "JSON object"),
            ('{"refresh_token": "r"}', "access_token is required"),
            ('{"access_token": 5}', "access_token must be a string"),
            ('{"access_token": "a", "expires_in": "soon"}', "expires_in"),
            ('{"access_token": "a", "expires_at": "2030-01-01T00:00:00"}', "time zone"),
            ('{"access_token": "a", "expires_in": 1e300}', "expires_in is out of range"),
            ('{"access_token": "a", "expires_at": 1e300}', "expires_at is out of range"),
            ('{"access_token": "a\\r\\nX-Evil: 1"}', "control character"),
            ('{"access_token": "a", "kind": "oauth", "refresh_token": " "}', "refresh_token"),
        ],
    )
    def test_login_refuses_bad_files(self, store, tmp_path, content, complaint):
        """A tokens file that is not a token response: exit 2, the store is not created."""
        source = tmp_path / "tokens.json"
        source.write_text(content)

        done = run_cli("login", "--store", str(store), "--from-file", str(source))

        assert 2 == done.returncode
        assert complaint in done.stderr
        assert not store.exists()

    def test_login_with_a_missing_file(self, store, tmp_path):
        """A tokens file that does not exist: exit 2."""
        done = run_cli("login", "--store", str(store), "--from-file", str(tmp_path / "nope"))

        assert 2 == done.returncode
        assert "cannot read" in done.stderr

    def test_logout_with_revoke(self, idp, store, tmp_path):
        """logout --revoke empties the store and kills the token family at the server."""
        tokens = logged_in(idp, store, tmp_path)

        done = run_cli(
            "logout", "--store", str(store), "--revoke",
            "--revoke-url", idp.revoke_url, "--client-id", CLIENT, "--json",
        )  # fmt: skip

        assert 0 == done.returncode, done.stderr
        assert {"store": str(store), "was_logged_in": True, "revoked": True} == json.loads(
            done.stdout
        )
        assert not idp.family_alive(str(tokens["refresh_token"]))
        assert 1 == run_cli("status", "--store", str(store)).returncode

    def test_logout_when_logged_out_and_revoke_needs_its_url(self, store):
        """Logging out twice is fine; --revoke without --revoke-url is a usage error."""
        done = run_cli("logout", "--store", str(store))

        assert 0 == done.returncode
        assert "Already logged out" in done.stdout
        assert 2 == run_cli("logout", "--store", str(store), "--revoke").returncode

    def test_corrupt_store(self, store):
        """A corrupt file: exit 1 with what to do; the file is left exactly as it was."""
        store.parent.mkdir(parents=True)
        store.write_bytes(b"{not json")

        done = run_cli("status", "--store", str(store))

        assert 1 == done.returncode
        assert "corrupt" in done.stderr
        assert b"{not json" == store.read_bytes()


class TestRefresh:
    """`authfsm refresh` spends the refresh token once and maps outcomes to exit codes."""

    def args(self, idp: TokenServer, store: Path, *extra: str) -> list[str]:
        return ["refresh", "--store", str(store), "--token-url", idp.token_url, *extra]

    def test_refresh_rotates(self, idp, store, tmp_path):
        """One token call; the store holds the new credential; no token is printed."""
        tokens = logged_in(idp, store, tmp_path)

        done = run_cli(*self.args(idp, store, "--client-id", CLIENT, "--json"))

        assert 0 == done.returncode, done.stderr
        assert (1, 1) == (idp.token_calls, idp.rotations)
        data = json.loads(done.stdout)
        assert data["fingerprint"] != data["previous_fingerprint"]
        record = FileStore(store).read()
        assert record is not None
        assert record.credential is not None
        assert data["fingerprint"] == record.credential.fingerprint
        assert_no_secret(done, tokens)
        assert record.credential.access_token not in done.stdout

    def test_transient_failure_exits_3(self, idp, store, tmp_path):
        """A 503: exit 3, the old credential stays, a retry later works."""
        logged_in(idp, store, tmp_path)
        idp.fail_next(503)

        done = run_cli(*self.args(idp, store, "--client-id", CLIENT))

        assert 3 == done.returncode
        assert "503" in done.stderr

    def test_revoked_refresh_token_exits_1_and_poisons(self, idp, store, tmp_path):
        """A dead refresh token: exit 1; status then says login needed without calling."""
        tokens = logged_in(idp, store, tmp_path)
        idp.revoke_family_of(str(tokens["refresh_token"]))

        done = run_cli(*self.args(idp, store, "--client-id", CLIENT))
        again = run_cli(*self.args(idp, store, "--client-id", CLIENT))
        status = run_cli("status", "--store", str(store), "--json")

        assert (1, 1) == (done.returncode, again.returncode)
        assert "log in again" in done.stderr
        assert 1 == idp.token_calls
        assert 1 == status.returncode
        assert ("poisoned", "invalid_grant") == (
            json.loads(status.stdout)["state"],
            json.loads(status.stdout)["failure"],
        )

    def test_refresh_when_logged_out_exits_1(self, idp, store):
        """Nothing stored: exit 1 and no call."""
        done = run_cli(*self.args(idp, store, "--client-id", CLIENT))

        assert 1 == done.returncode
        assert 0 == idp.token_calls

    def test_client_secret_comes_from_the_environment(self, store, tmp_path):
        """--client-secret-env reads the secret; a confidential server accepts it."""
        with TokenServer(client_id=CLIENT, client_secret="s3cret-value") as idp:
            logged_in(idp, store, tmp_path)
            missing = run_cli(
                *self.args(idp, store, "--client-id", CLIENT, "--client-secret-env", "NOPE_X")
            )
            env = {**os.environ, "DEMO_SECRET": "s3cret-value"}
            done = run_cli(
                *self.args(idp, store, "--client-id", CLIENT, "--client-secret-env", "DEMO_SECRET"),
                env=env,
            )

            assert 2 == missing.returncode
            assert "NOPE_X" in missing.stderr
            assert 0 == done.returncode, done.stderr
            assert 1 == idp.rotations
            assert "s3cret-value" not in done.stdout + done.stderr

    def test_credential_without_refresh_token_exits_1(self, idp, store, tmp_path):
        """Nothing to spend: exit 1 (waiting will not help), and no call."""
        source = tmp_path / "tokens.json"
        source.write_text(json.dumps({"access_token": "only-an-access-token", "expires_in": 60}))
        assert 0 == run_cli("login", "--store", str(store), "--from-file", str(source)).returncode

        done = run_cli(*self.args(idp, store, "--client-id", CLIENT))

        assert 1 == done.returncode
        assert "no refresh token" in done.stderr
        assert 0 == idp.token_calls

    def test_bad_token_url_is_a_usage_error(self, store, tmp_path, idp):
        """A token URL that is not http(s): exit 2."""
        logged_in(idp, store, tmp_path)

        done = run_cli(
            "refresh", "--store", str(store), "--token-url", "ftp://x", "--client-id", CLIENT
        )

        assert 2 == done.returncode


def runs_by(report: dict[str, object]) -> dict[tuple[str, str], dict[str, object]]:
    runs = report["runs"]
    assert isinstance(runs, list)
    return {(r["scenario"], r["client"]): r for r in runs}


class TestDemo:
    """`authfsm demo` shows the naive client's failures and authfsm's fixes, in real processes."""

    def test_all_scenarios_with_four_workers(self):
        """race: authfsm 1 call, 0 reuse, every worker served; naive: more calls, reuse, a dead
        family. poison: authfsm 1 call, naive every poll. account-switch: authfsm refuses."""
        done = run_cli("demo", "--workers", "4", "--json", timeout=120)

        assert 0 == done.returncode, done.stderr
        report = json.loads(done.stdout)
        runs = runs_by(report)
        race, naive_race = runs["race", "authfsm"], runs["race", "naive"]
        assert (1, 0, False, 4, 0) == (
            race["token_calls"],
            race["reuse_rejections"],
            race["family_revoked"],
            race["working"],
            race["relogins"],
        )
        assert naive_race["token_calls"] > 1
        assert naive_race["reuse_rejections"] > 0
        assert naive_race["family_revoked"] is True
        assert 0 == naive_race["working"]

        poison, naive_poison = runs["poison", "authfsm"], runs["poison", "naive"]
        assert 1 == poison["token_calls"]
        assert 4 * report["polls"] == naive_poison["token_calls"]
        assert 4 == poison["relogins"]

        switch, naive_switch = runs["account-switch", "authfsm"], runs["account-switch", "naive"]
        assert (0, 4, 0, 4) == (
            switch["token_calls"],
            switch["working"],
            switch["wrong_user"],
            switch["refused_switch"],
        )
        assert 4 == naive_switch["wrong_user"]
        assert report["seconds"] < 30

    def test_keep_leaves_the_logs_and_a_trace(self):
        """--keep: a table, then the store, a JSON event log with pids and a trace diagram."""
        done = run_cli(
            "demo", "--workers", "2", "--polls", "2", "--scenario", "race", "--keep", timeout=120
        )

        assert 0 == done.returncode, done.stderr
        kept = Path(done.stdout.split("Kept in ", 1)[1].split(":", 1)[0])
        try:
            assert "token calls" in done.stdout
            assert "race" in done.stderr  # the progress display
            folder = kept / "race" / "authfsm"
            events = [
                json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()
            ]
            assert events
            assert all(isinstance(e["pid"], int) for e in events)
            assert {"authfsm.transition", "authfsm.refresh.call"} <= {e["event"] for e in events}
            assert (folder / "auth.json").exists()
            trace = (folder / "trace.mmd").read_text()
            assert trace.count("participant P") == 2
            redrawn = run_cli("diagram", "--trace", str(folder / "events.jsonl"))
            assert 0 == redrawn.returncode
            assert "sequenceDiagram" in redrawn.stdout
            assert "access_token" not in (folder / "events.jsonl").read_text()
        finally:
            shutil.rmtree(kept, ignore_errors=True)
