"""
A Python tool sharing the Codex CLI's ChatGPT login, safely.

Codex keeps its login in ``$CODEX_HOME/auth.json`` (``~/.codex/auth.json``) and refreshes it on
its own, with no lock. A Python tool that reads that file and refreshes the tokens itself risks
what Codex users meet: both programs spending the same rotating refresh token (the server then
revokes the whole login), or one program adopting a login of another account. With authfsm:

- ``FileStore(path, codec=CodexCodec())`` reads and writes Codex's format, keeps every field it
  does not own, writes atomically (0600), and refuses (``StorageCorrupt``) a file Codex itself
  could not load, leaving it untouched;
- ``Policy.codex()`` takes the identity from the id_token's ``https://api.openai.com/auth``
  claims (Codex's account and user ids), so a login of another account is never adopted;
- engines of any number of Python processes refresh once between them (a lock file beside
  ``auth.json``) and adopt what Codex or a sibling wrote instead of spending a spent token.

For the real thing, point the store at Codex's file and the endpoint at OpenAI's, with Codex's
client id and JSON body (values from the Codex sources)::

    store = FileStore(Path.home() / ".codex" / "auth.json", codec=CodexCodec())
    endpoint = OAuthTokenEndpoint(
        "https://auth.openai.com/oauth/token",
        client_id="app_EMoamEEZ73f0CkXaXp7hrann",
        body_format="json",
    )
    engine = AuthEngine(store, endpoint, Policy.codex())

This script runs offline instead: a temporary CODEX_HOME, and authfsm's loopback TokenServer
standing in for auth.openai.com (with OpenAI's claims in its id_tokens).
"""

import json
import tempfile
from pathlib import Path

from authfsm import AccountMismatch, AuthEngine, Policy, State
from authfsm.adapters import CodexCodec, FileStore, OAuthTokenEndpoint
from authfsm.testing import FakeClock, TokenServer


def codex_login(idp: TokenServer, account_id: str, user_id: str) -> str:
    """auth.json as Codex writes it after a login (account_id left null, as older Codex did)."""
    issued = idp.issue_json(account_id=account_id, user_id=user_id, codex_claims=True)
    doc = {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": issued["id_token"],
            "access_token": issued["access_token"],
            "refresh_token": issued["refresh_token"],
            "account_id": None,
        },
        "last_refresh": "2026-05-01T12:00:00.123456789Z",
        "a_newer_codex_field": {"kept": True},
    }
    return json.dumps(doc, indent=2)


clock = FakeClock(1_777_636_800.0)  # 2026-05-01T12:00:00Z; the real default is time.time
with TokenServer(clock=clock) as idp, tempfile.TemporaryDirectory() as codex_home:
    auth_json = Path(codex_home) / "auth.json"
    auth_json.write_text(codex_login(idp, account_id="acct-team", user_id="user-ada"))
    endpoint = OAuthTokenEndpoint(idp.token_url, client_id="test-client", body_format="json")

    def engine() -> AuthEngine:
        """What each process of the tool builds: the same file, Codex's identity rules."""
        return AuthEngine(
            FileStore(auth_json, codec=CodexCodec()), endpoint, Policy.codex(), clock=clock
        )

    tool_a, tool_b = engine(), engine()
    status = tool_a.status()
    print(f"shared login: account {status.identity.account_id}, user {status.identity.user_id}")

    clock.advance(3600)  # the access token is due
    assert tool_a.access_token() == tool_b.access_token()  # one refresh, the other adopts
    assert idp.token_calls == 1
    assert tool_b.state is State.RELOADED
    saved = json.loads(auth_json.read_text())
    assert saved["a_newer_codex_field"] == {"kept": True}  # Codex's other fields survive
    print(f"refreshed once for both; last_refresh is now {saved['last_refresh']}")

    # The user runs `codex login` with another account: Codex rewrites the file.
    auth_json.write_text(codex_login(idp, account_id="acct-personal", user_id="user-ada"))
    before = auth_json.read_bytes()
    clock.advance(3600)
    try:
        tool_a.access_token()
    except AccountMismatch as error:
        print(f"refused: {error.reason} (the file is untouched, no token was spent)")
    assert auth_json.read_bytes() == before
    assert idp.token_calls == 1

    # Switching on purpose is explicit.
    tool_a.reload(allow_identity_change=True)
    print(f"switched on request: account {tool_a.status().identity.account_id}")
