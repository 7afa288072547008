"""CodexCodec: Codex's auth.json shared through FileStore, on real files and a real server."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from authfsm import AccountMismatch, AuthEngine, Credentials, Policy, State
from authfsm.adapters import CodexCodec, FileStore
from authfsm.engine import (
    Backoff,
    IdentityClaims,
    InvalidCredentials,
    Kind,
    Poison,
    Record,
    StorageCorrupt,
    WriteConflict,
    identity_of,
)
from authfsm.testing import TokenServer

from .helpers import sample_credentials

# Any token Credentials accepts: no control characters or lone surrogates, not only whitespace.
TOKENS = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), min_size=1, max_size=40
).filter(str.strip)

ROOT = Path(__file__).resolve().parent.parent
SUBPROCESS_TIMEOUT = 60.0
OPENAI_AUTH = "https://api.openai.com/auth"


def jwt(claims: object, *, payload: str | None = None) -> str:
    """An unsigned JWT with these claims (or this raw payload part)."""
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    if payload is None:
        raw = json.dumps(claims).encode()
        payload = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return f"{header}.{payload}.sig"


ID_TOKEN = jwt({"sub": "user-1", OPENAI_AUTH: {"chatgpt_account_id": "acct-1"}})
ACCESS = "at-SECRET-5d0c2b9e71"
REFRESH = "rt-SECRET-c3e8a41f06"
SECRETS = (ACCESS, REFRESH, ID_TOKEN)
CREDS = sample_credentials(ACCESS, REFRESH, id_token=ID_TOKEN)


def codex_document(**changes: Any) -> dict[str, Any]:
    """A ChatGPT login as Codex writes it, with fields of newer versions and other tools."""
    tokens = {
        "id_token": ID_TOKEN,
        "access_token": ACCESS,
        "refresh_token": REFRESH,
        "account_id": "acct-1",
        "future_token_field": {"kept": [1, 2.5, None, "é"]},
    }
    doc: dict[str, Any] = {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": tokens,
        "last_refresh": "2029-12-31T23:00:00.123456789Z",
        "future_codex_field": {"nested": {"a": [True, False]}},
        "zz_other_tool": "unchanged ✓",
    }
    for key, value in changes.items():
        target = tokens if key in tokens else doc
        if value is _DROP:
            target.pop(key, None)
        else:
            target[key] = value
    return doc


_DROP = object()


def as_codex_writes(doc: dict[str, Any]) -> bytes:
    """serde_json's to_string_pretty: two-space indent, UTF-8 as is, no final newline."""
    return json.dumps(doc, indent=2, ensure_ascii=False).encode()


def codex_rewrite(path: Path, doc: dict[str, Any]) -> None:
    """What Codex does on login and refresh: truncate, write, no lock, no rename."""
    with path.open("r+b" if path.exists() else "wb") as handle:
        handle.truncate(0)
        handle.write(as_codex_writes(doc))


def codex_view(path: Path) -> dict[str, Any]:
    """The fields Codex's AuthDotJson reads (what survives Codex rewriting the file)."""
    doc = json.loads(path.read_bytes())
    known = ("auth_mode", "OPENAI_API_KEY", "tokens", "last_refresh")
    view = {key: doc[key] for key in known if key in doc}
    if "tokens" in view:
        view["tokens"] = {
            k: view["tokens"][k]
            for k in ("id_token", "access_token", "refresh_token", "account_id")
            if k in view["tokens"]
        }
    return view


def issued_login(server: TokenServer, **issue: Any) -> dict[str, Any]:
    """A Codex document holding a fresh login at the loopback server (Codex's claims)."""
    issued = server.issue_json(codex_claims=True, **issue)
    return codex_document(
        id_token=issued["id_token"],
        access_token=issued["access_token"],
        refresh_token=issued["refresh_token"],
        account_id=None,  # legacy: the account is only in the id_token's claims
        last_refresh="2027-01-15T08:00:00.123456789Z",  # the fake clock's start, as Codex writes
    )


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


@pytest.fixture(name="path")
def _path(tmp_path: Path) -> Path:
    return tmp_path / "codex" / "auth.json"


@pytest.fixture(name="store")
def _store(path: Path) -> FileStore:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    return FileStore(path, codec=CodexCodec())


class TestRoundTrip:
    """decode(encode(record)) is the record; timestamps are written the way Codex writes them."""

    @pytest.mark.parametrize(
        "record",
        [
            Record(credential=CREDS, revision=1),
            Record(
                credential=CREDS,
                revision=7,
                poison=Poison(fingerprint=CREDS.fingerprint, reason="invalid_grant", at=1.5),
                backoff=Backoff(fingerprint=CREDS.fingerprint, not_before=2.25, failures=3),
            ),
            Record(
                credential=Credentials(
                    access_token=ACCESS,
                    refresh_token=REFRESH,
                    id_token=ID_TOKEN,
                    last_refresh=datetime(
                        2029, 1, 1, 13, 5, 6, 120000, timezone(timedelta(hours=2))
                    ),
                ),
                revision=2,
            ),
            Record(credential=Credentials.api_key("sk-SECRET-0123"), revision=3),
            Record(credential=None, revision=9),
        ],
        ids=["oauth", "markers", "offset_no_account", "api_key", "logged_out"],
    )
    def test_records_round_trip(self, record):
        """Every kind of record comes back equal, from a fresh file and over a Codex one."""
        codec = CodexCodec()
        for previous in (None, as_codex_writes(codex_document())):
            data = codec.encode(record, previous)

            assert record == codec.decode(data)

    @pytest.mark.parametrize(
        ("instant", "text"),
        [
            (datetime(2026, 5, 1, 12, 34, 56, tzinfo=UTC), "2026-05-01T12:34:56Z"),
            (datetime(2026, 5, 1, 12, 34, 56, 123000, tzinfo=UTC), "2026-05-01T12:34:56.123Z"),
            (datetime(2026, 5, 1, 12, 34, 56, 123456, tzinfo=UTC), "2026-05-01T12:34:56.123456Z"),
            (
                datetime(2026, 5, 1, 14, 34, 56, tzinfo=timezone(timedelta(hours=2))),
                "2026-05-01T12:34:56Z",
            ),
        ],
    )
    def test_last_refresh_is_written_as_codex_writes_it(self, instant, text):
        """RFC 3339 in UTC with Z and only the fraction digits needed (chrono's AutoSi)."""
        record = Record(credential=attrs.evolve(CREDS, last_refresh=instant))

        doc = json.loads(CodexCodec().encode(record))

        assert text == doc["last_refresh"]

    def test_codex_nanoseconds_are_read_and_kept(self):
        """Codex's 9-digit fraction reads to the microsecond; the same instant keeps its text."""
        codec = CodexCodec()
        previous = as_codex_writes(codex_document())
        record = codec.decode(previous)

        expected = datetime(2029, 12, 31, 23, 0, 0, 123456, tzinfo=UTC)
        assert expected == record.credential.last_refresh
        again = json.loads(codec.encode(record, previous))
        assert "2029-12-31T23:00:00.123456789Z" == again["last_refresh"]

    @given(
        access=TOKENS,
        refresh=TOKENS,
        account=st.none() | st.text(st.characters(codec="utf-8"), min_size=1, max_size=20),
        last_refresh=st.none()
        | st.datetimes(
            min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
        ),
        extra=st.dictionaries(
            st.text(st.characters(codec="utf-8"), max_size=8).filter(
                lambda k: (
                    k not in ("auth_mode", "OPENAI_API_KEY", "tokens", "last_refresh")
                    and k not in ("authfsm", "agent_identity", "personal_access_token")
                    and k != "bedrock_api_key"
                )
            ),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(st.characters(codec="utf-8")),
                lambda inner: (
                    st.lists(inner, max_size=3)
                    | st.dictionaries(
                        st.text(st.characters(codec="utf-8"), max_size=5), inner, max_size=3
                    )
                ),
                max_leaves=8,
            ),
            max_size=4,
        ),
        revision=st.integers(min_value=1, max_value=2**53 - 1),
    )
    def test_any_credential_and_unknown_fields_round_trip(
        self, access, refresh, account, last_refresh, extra, revision
    ):
        """Property: the record round-trips, unknown fields survive, the revision is the count."""
        cred = Credentials(
            access_token=access,
            refresh_token=refresh,
            id_token=ID_TOKEN,
            account_id=account,
            last_refresh=last_refresh,
        )
        previous = as_codex_writes({**codex_document(), **extra})
        codec = CodexCodec()

        data = codec.encode(Record(credential=cred, revision=revision), previous)

        assert Record(credential=cred, revision=revision) == codec.decode(data)
        doc = json.loads(data)
        for key, value in extra.items():
            assert value == doc[key]
        assert {"kept": [1, 2.5, None, "é"]} == doc["tokens"]["future_token_field"]


class TestSharedLogin:
    """A Codex login with fields authfsm does not know survives a refresh by AuthEngine."""

    def test_unknown_fields_survive_a_refresh(self, store, path, endpoint, clock, server):
        """One call; tokens and last_refresh change, every other field is as Codex left it."""
        doc = issued_login(server)
        codex_rewrite(path, doc)
        path.chmod(0o644)
        inode = path.stat().st_ino
        engine = AuthEngine(store, endpoint, Policy.codex(), clock=clock)
        old = engine.credentials
        assert "acct-1" == engine.status().identity.account_id  # from the id_token's claims
        assert "user-1" == engine.status().identity.user_id

        clock.advance(3600)
        token = engine.access_token()

        assert 1 == server.token_calls
        assert State.FRESH == engine.state
        after = json.loads(path.read_bytes())
        assert token == after["tokens"]["access_token"] != old.access_token
        assert server.is_current(after["tokens"]["refresh_token"])
        assert after["tokens"]["id_token"] != doc["tokens"]["id_token"]
        assert None is after["tokens"]["account_id"]
        assert "2027-01-15T09:00:00Z" == after["last_refresh"]
        for key in ("auth_mode", "OPENAI_API_KEY", "future_codex_field", "zz_other_tool"):
            assert doc[key] == after[key]
        assert doc["tokens"]["future_token_field"] == after["tokens"]["future_token_field"]
        assert [*doc, "authfsm"] == list(after)  # Codex's fields keep their places
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        assert inode != path.stat().st_ino  # replaced atomically, not rewritten in place
        assert [] == temp_files(path.parent)

    def test_a_second_engine_adopts_without_a_call(self, store, path, endpoint, clock, server):
        """Two engines on the Codex file: one refresh, the other adopts from the file."""
        codex_rewrite(path, issued_login(server))
        a = AuthEngine(store, endpoint, Policy.codex(), clock=clock)
        b = AuthEngine(FileStore(path, codec=CodexCodec()), endpoint, Policy.codex(), clock=clock)
        clock.advance(3600)

        assert a.access_token() == b.access_token()
        assert 1 == server.token_calls
        assert State.RELOADED == b.state

    def test_codex_refreshing_is_adopted_without_a_call(self, store, path, endpoint, clock, server):
        """Codex refreshes and rewrites the file without authfsm's field: engines adopt it."""
        codex_rewrite(path, issued_login(server))
        engine = AuthEngine(store, endpoint, Policy.codex(), clock=clock)
        engine.login(engine.credentials)  # authfsm has written the file once
        clock.advance(3600)
        outcome = endpoint.refresh(engine.credentials)  # Codex spends the refresh token
        doc = codex_view(path)
        doc["tokens"].update(
            access_token=outcome.access_token,
            refresh_token=outcome.refresh_token,
            id_token=outcome.id_token,
        )
        doc["last_refresh"] = "2027-01-15T09:00:00.000000001Z"
        codex_rewrite(path, doc)
        calls = server.token_calls

        token = engine.access_token()

        assert outcome.access_token == token
        assert calls == server.token_calls
        assert 0 == server.reuse_rejections
        assert State.RELOADED == engine.state

    def test_another_accounts_login_is_refused(self, store, path, endpoint, clock, server):
        """Codex logs in to another account: the engine refuses it and leaves the file alone."""
        codex_rewrite(path, issued_login(server, account_id="acct-1"))
        engine = AuthEngine(store, endpoint, Policy.codex(), clock=clock)
        ours = engine.credentials
        codex_rewrite(path, issued_login(server, account_id="acct-2", user_id="user-2"))
        before = path.read_bytes()
        clock.advance(3600)

        with pytest.raises(AccountMismatch):
            engine.access_token()

        assert 0 == server.token_calls
        assert before == path.read_bytes()
        assert ours == engine.credentials
        assert "acct-2" == identity_of(store.read().credential, IdentityClaims.codex()).account_id

    def test_api_key_login(self, store, path, endpoint, clock, server):
        """OPENAI_API_KEY without tokens is an API key: served, never refreshed, kept as is."""
        codex_rewrite(path, {"OPENAI_API_KEY": "sk-SECRET-7777", "other": 1})
        before = path.read_bytes()
        engine = AuthEngine(store, endpoint, Policy.codex(), clock=clock)
        clock.advance(365 * 86400)

        assert "sk-SECRET-7777" == engine.access_token()
        assert "api_key" == engine.status().method
        assert 0 == server.token_calls
        assert before == path.read_bytes()

    def test_api_key_written_by_login(self, store, path):
        """A login with an API key writes Codex's API-key document and drops the old tokens."""
        codex_rewrite(path, codex_document())
        engine = AuthEngine(store, None, Policy.codex())

        engine.login(Credentials.api_key("sk-SECRET-8888"))

        doc = json.loads(path.read_bytes())
        assert "apikey" == doc["auth_mode"]
        assert "sk-SECRET-8888" == doc["OPENAI_API_KEY"]
        assert "tokens" not in doc
        assert "last_refresh" not in doc
        assert "unchanged ✓" == doc["zz_other_tool"]
        assert Credentials.api_key("sk-SECRET-8888") == store.read().credential

    def test_chatgpt_login_with_a_legacy_api_key(self, store, path):
        """auth_mode chatgpt with an exchanged OPENAI_API_KEY is OAuth; the key is kept."""
        codex_rewrite(path, codex_document(OPENAI_API_KEY="sk-legacy"))

        record = store.read()
        store.write(Record(credential=CREDS), record.revision)

        assert record.credential.kind.value == "oauth"
        assert "sk-legacy" == json.loads(path.read_bytes())["OPENAI_API_KEY"]

    def test_oauth_login_over_an_api_key_sets_the_mode(self, store, path):
        """Without auth_mode, Codex would read OPENAI_API_KEY as the login: chatgpt is set."""
        codex_rewrite(path, {"OPENAI_API_KEY": "sk-SECRET-7777"})
        record = store.read()

        store.write(Record(credential=CREDS), record.revision)

        doc = json.loads(path.read_bytes())
        assert "chatgpt" == doc["auth_mode"]
        assert CREDS == store.read().credential

    def test_logout_leaves_no_login_and_keeps_counting(self, store, path):
        """A logout removes every login field, keeps the others, and reads as logged out."""
        codex_rewrite(path, codex_document(personal_access_token=None, agent_identity=None))
        engine = AuthEngine(store, None, Policy.codex())

        engine.logout()

        doc = json.loads(path.read_bytes())
        assert {"OPENAI_API_KEY", "future_codex_field", "zz_other_tool", "authfsm"} == set(doc)
        assert None is doc["OPENAI_API_KEY"]
        tomb = store.read()
        assert (None, State.LOGGED_OUT) == (tomb.credential, engine.state)
        with pytest.raises(WriteConflict):
            store.write(Record(credential=CREDS), None)
        assert tomb.revision + 1 == store.write(Record(credential=CREDS), tomb.revision).revision

    @pytest.mark.parametrize(
        ("cred", "problem"),
        [
            (Credentials(access_token=ACCESS, refresh_token=REFRESH), "id_token"),
            (Credentials(access_token=ACCESS, id_token=ID_TOKEN), "refresh_token"),
            (Credentials(access_token=ACCESS, refresh_token=REFRESH, id_token="a.b"), "JWT"),
            (
                Credentials(access_token=ACCESS, kind=Kind.API_KEY, account_id="a"),
                "API key alone",
            ),
        ],
    )
    def test_a_credential_codex_cannot_read_is_refused(self, store, path, cred, problem):
        """login() raises InvalidCredentials naming the problem; the file is untouched."""
        codex_rewrite(path, codex_document())
        before = path.read_bytes()
        engine = AuthEngine(store, None, Policy.codex())

        with pytest.raises(InvalidCredentials) as caught:
            engine.login(cred)

        assert problem in str(caught.value)
        assert_no_secret(str(caught.value))
        assert before == path.read_bytes()


class TestRevision:
    """Compare-and-swap refuses to overwrite a file someone else changed, field or no field."""

    def test_counts_up_by_one(self, store):
        """authfsm's writes give revisions 1, 2, 3, ... as with the native format."""
        revisions = []
        record = None
        for _ in range(4):
            record = store.write(
                Record(credential=CREDS, revision=99), None if record is None else record.revision
            )
            revisions.append(record.revision)
            assert record == store.read()

        assert [1, 2, 3, 4] == revisions

    @pytest.mark.parametrize(
        "change",
        ["codex_rewrites_same_tokens", "codex_rewrites_new_tokens", "tool_keeps_our_field"],
    )
    def test_foreign_change_is_not_overwritten(self, store, path, change):
        """After any change by another program, a write expecting the old revision is refused."""
        written = store.write(Record(credential=CREDS), None)
        doc = json.loads(path.read_bytes())
        if change == "codex_rewrites_same_tokens":
            codex_rewrite(path, codex_view(path))
        elif change == "codex_rewrites_new_tokens":
            view = codex_view(path)
            view["tokens"]["access_token"] = "at-from-codex"
            codex_rewrite(path, view)
        else:
            doc["tokens"]["access_token"] = "at-from-a-tool"
            path.write_text(json.dumps(doc))
        before = path.read_bytes()

        foreign = store.read()

        assert foreign.revision != written.revision
        assert foreign.revision >= 2**52
        with pytest.raises(WriteConflict):
            store.write(Record(credential=CREDS), written.revision)
        with pytest.raises(WriteConflict):
            store.delete(written.revision)
        assert before == path.read_bytes()
        # Against the revision it read, the write goes through, and counting goes on from there.
        again = store.write(Record(credential=CREDS), foreign.revision)
        assert foreign.revision + 1 == again.revision == store.read().revision

    def test_different_content_different_revision(self, store, path):
        """Two foreign files that differ in any field read as different revisions."""
        revisions = set()
        for n in range(20):
            codex_rewrite(path, codex_document(zz_other_tool=f"v{n}"))
            revisions.add(store.read().revision)

        assert 20 == len(revisions)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


_PAYLOAD = ID_TOKEN.split(".")[1]
_VALID = as_codex_writes(codex_document())

CORRUPT: dict[str, bytes] = {
    "empty": b"",
    "truncated": _VALID[: len(_VALID) // 2],
    "not_json": b"{auth_mode: chatgpt}",
    "not_an_object": b"[]",
    "json_null": b"null",
    "nan": _VALID.replace(b'"zz_other_tool": "unchanged \xe2\x9c\x93"', b'"zz_other_tool": NaN'),
    "lone_surrogate": _VALID.replace("unchanged ✓".encode(), b"\\ud800"),
    "not_utf8": _VALID.replace("✓".encode(), b"\xff"),
    "duplicate_key": b'{"tokens": null, "tokens": null}',
    "deeply_nested": b'{"x": ' + b"[" * 100_000 + b"}",
    "tokens_not_object": as_codex_writes(codex_document(tokens="abc")),
    "id_token_missing": as_codex_writes(codex_document(id_token=_DROP)),
    "id_token_not_jwt": as_codex_writes(codex_document(id_token="not-a-jwt")),
    "id_token_two_parts": as_codex_writes(codex_document(id_token=f"h.{_PAYLOAD}")),
    "id_token_no_signature": as_codex_writes(codex_document(id_token=f"h.{_PAYLOAD}.")),
    "id_token_padded": as_codex_writes(codex_document(id_token=jwt(None, payload=_PAYLOAD + "="))),
    "id_token_not_base64url": as_codex_writes(codex_document(id_token=jwt(None, payload="a+b/"))),
    "id_token_payload_not_json": as_codex_writes(
        codex_document(id_token=jwt(None, payload=_b64(b"hello")))
    ),
    "id_token_claims_array": as_codex_writes(codex_document(id_token=jwt([1]))),
    "id_token_email_number": as_codex_writes(codex_document(id_token=jwt({"email": 5}))),
    "id_token_auth_not_object": as_codex_writes(codex_document(id_token=jwt({OPENAI_AUTH: "x"}))),
    "id_token_account_number": as_codex_writes(
        codex_document(id_token=jwt({OPENAI_AUTH: {"chatgpt_account_id": 7}}))
    ),
    "access_token_missing": as_codex_writes(codex_document(access_token=_DROP)),
    "access_token_empty": as_codex_writes(codex_document(access_token="")),
    "refresh_token_number": as_codex_writes(codex_document(refresh_token=12345)),
    "account_id_number": as_codex_writes(codex_document(account_id=7)),
    "last_refresh_garbage": as_codex_writes(codex_document(last_refresh="yesterday")),
    "last_refresh_number": as_codex_writes(codex_document(last_refresh=1_800_000_000)),
    "last_refresh_no_zone": as_codex_writes(codex_document(last_refresh="2026-05-01T12:00:00")),
    "last_refresh_month_13": as_codex_writes(codex_document(last_refresh="2026-13-01T12:00:00Z")),
    "openai_api_key_number": as_codex_writes(codex_document(OPENAI_API_KEY=5)),
    "auth_mode_unknown": as_codex_writes(codex_document(auth_mode="password")),
    "auth_mode_number": as_codex_writes(codex_document(auth_mode=1)),
    "auth_mode_agent_identity": as_codex_writes(codex_document(auth_mode="agentIdentity")),
    "auth_mode_host_tokens": as_codex_writes(codex_document(auth_mode="chatgptAuthTokens")),
    "api_key_mode_without_key": as_codex_writes(codex_document(auth_mode="apikey")),
    "personal_access_token": as_codex_writes(
        codex_document(auth_mode=_DROP, personal_access_token="pat-SECRET")
    ),
    "authfsm_not_object": as_codex_writes(codex_document(authfsm="x")),
    "authfsm_other_format": as_codex_writes(
        codex_document(authfsm={"format": "authfsm-codex/99", "revision": 1, "digest": "d"})
    ),
    "authfsm_revision_negative": as_codex_writes(
        codex_document(authfsm={"format": "authfsm-codex/1", "revision": -1, "digest": "d"})
    ),
    "authfsm_poison_malformed": as_codex_writes(
        codex_document(
            authfsm={"format": "authfsm-codex/1", "revision": 1, "digest": "d", "poison": [1]}
        )
    ),
}


@pytest.fixture(name="corrupt", params=sorted(CORRUPT))
def _corrupt(request, path) -> Path:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.write_bytes(CORRUPT[request.param])
    return path


class TestCorrupt:
    """What Codex cannot load (or authfsm cannot share) is StorageCorrupt and never overwritten."""

    def test_read_write_delete_raise_and_change_nothing(self, corrupt):
        """read(), write() and delete() raise StorageCorrupt naming the file; it stays as it was."""
        before = corrupt.read_bytes()
        store = FileStore(corrupt, codec=CodexCodec(settle_time=0.0))

        with pytest.raises(StorageCorrupt) as caught:
            store.read()
        with pytest.raises(StorageCorrupt):
            store.write(Record(credential=CREDS), None)
        with pytest.raises(StorageCorrupt):
            store.delete(None)

        assert str(corrupt) == caught.value.location
        assert_no_secret(str(caught.value), repr(caught.value))
        assert "pat-SECRET" not in str(caught.value)
        assert before == corrupt.read_bytes()
        assert [] == temp_files(corrupt.parent)

    def test_corruption_is_reported_after_the_settle_time(self, path):
        """With the default settle time, a file that stays corrupt raises after about 50 ms."""
        path.parent.mkdir(mode=0o700)
        path.write_bytes(CORRUPT["truncated"])
        store = FileStore(path, codec=CodexCodec())
        started = time.monotonic()

        with pytest.raises(StorageCorrupt):
            store.read()

        assert 0.04 <= time.monotonic() - started < 1.0

    def test_a_write_caught_half_way_is_not_corruption(self, path):
        """Codex truncates, then writes: a reader in between waits for the whole file."""
        path.parent.mkdir(mode=0o700)
        whole = as_codex_writes(codex_document())
        path.write_bytes(whole[:100])

        def finish() -> None:
            time.sleep(0.015)
            path.write_bytes(whole)

        writer = threading.Thread(target=finish)
        writer.start()
        try:
            record = FileStore(path, codec=CodexCodec()).read()
        finally:
            writer.join(timeout=5)

        assert ACCESS == record.credential.access_token


class TestExample:
    """examples/codex_share.py runs as documented."""

    def test_it_runs(self, tmp_path):
        """The example exits 0 and shows the refusal of another account."""
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "codex_share.py")],
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
            cwd=tmp_path,
        )

        assert 0 == done.returncode, done.stderr
        assert "account_mismatch" in done.stdout
