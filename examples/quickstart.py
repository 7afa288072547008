"""Quick start: two processes' worth of engines sharing one credential file."""

import tempfile
from pathlib import Path

from authfsm import AuthEngine, ReauthRequired, State
from authfsm.adapters import FileStore, OAuthTokenEndpoint
from authfsm.testing import FakeClock, TokenServer

clock = FakeClock()  # the real default is time.time; a fake one lets us jump an hour ahead
with TokenServer(clock=clock) as idp, tempfile.TemporaryDirectory() as home:
    path = Path(home) / "auth.json"
    endpoint = OAuthTokenEndpoint(idp.token_url, client_id="test-client")

    # Process A logs in; the credential file is created 0600 and written atomically.
    a = AuthEngine(FileStore(path), endpoint, clock=clock)
    a.login(idp.issue(user_id="alice", account_id="acme"))
    # Process B shares the same file.
    b = AuthEngine(FileStore(path), endpoint, clock=clock)
    assert a.access_token() == b.access_token()  # fresh: no lock, no I/O

    clock.advance(3600)  # both credentials are now due for refresh
    token_a = a.access_token()  # A spends the refresh token (one call) and saves the result
    token_b = b.access_token()  # B re-reads the store under the lease and adopts: no call
    assert token_a == token_b
    assert b.state is State.RELOADED
    assert idp.token_calls == 1
    assert idp.reuse_rejections == 0

    # The refresh token is revoked: one call finds out, then nobody calls again.
    idp.revoke_family_of(a.credentials)
    clock.advance(3600)
    for engine in (a, b):
        try:
            engine.access_token()
        except ReauthRequired as error:
            print(f"{engine.state.name}: {error}")
    assert idp.token_calls == 2
    print(a.status().to_dict())
