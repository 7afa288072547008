"""
End to end against a real, certified OpenID provider (panva's oidc-provider on 127.0.0.1):
logins land verified credentials in file and Redis stores, every process on the store serves
them, refresh rotation works, and 32 OS processes make one refresh call and keep the grant alive
where 32 naive processes get it revoked. Refusals write nothing and free the port.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import httpx
import pytest

from authfsm import AuthEngine
from authfsm.adapters import FileStore, RedisStore
from authfsm.login import (
    IdTokenInvalid,
    LoginDenied,
    LoginTimeout,
    PortUnavailable,
    StateMismatch,
    clear_discovery_cache,
)

from .helpers import free_port
from .oidc_provider import PUBLIC_CLIENT_ID, OidcProvider, _oidc_provider  # noqa: F401
from .redis_server import RedisServer, _redis_server  # noqa: F401 - fixtures

FLEET = 32
WAIT = 20.0


class Visitor:
    """The user's browser as a login's ``opener``: signs in at the provider in a thread."""

    def __init__(
        self,
        provider: OidcProvider,
        *,
        login: str = "alice",
        deny: bool = False,
        tamper_state: bool = False,
    ) -> None:
        self.provider = provider
        self.login = login
        self.deny = deny
        self.tamper_state = tamper_state
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def __call__(self, url: str) -> bool:
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()
        return True

    def _run(self, url: str) -> None:
        try:
            if self.deny:
                self.provider.deny(url, login=self.login)
            elif self.tamper_state:
                left = self.provider.authorize(url, login=self.login, follow_final_redirect=False)
                parts = urlsplit(left.url)
                query = dict(parse_qsl(parts.query))
                query["state"] = "forged-" + query["state"][:8]
                with contextlib.suppress(httpx.HTTPError):
                    httpx.get(urlunsplit(parts._replace(query=urlencode(query))), timeout=WAIT)
            else:
                self.provider.authorize(url, login=self.login)
        except BaseException as error:  # noqa: BLE001 - reported by join()
            self.error = error

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join(timeout=WAIT)
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error


@pytest.fixture(autouse=True)
def _fresh_discovery() -> Iterator[None]:
    clear_discovery_cache()
    return


def engine_for(provider: OidcProvider, store: Any) -> AuthEngine:
    return AuthEngine.from_issuer(provider.issuer, client_id=PUBLIC_CLIENT_ID, store=store)


def browser_login(engine: AuthEngine, provider: OidcProvider, login: str, **options: Any) -> None:
    visitor = Visitor(provider, login=login)
    engine.login_browser(opener=visitor, stream=io.StringIO(), timeout=WAIT, **options)
    visitor.join()


def port_is_free(port: int) -> bool:
    """Another login could listen on it now (as the receiver does: TIME_WAIT is no obstacle)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def make_due(engine: AuthEngine) -> None:
    now = datetime.now(UTC)
    assert engine.credentials is not None
    engine.login(
        attrs.evolve(engine.credentials, expires_at=now, last_refresh=now - timedelta(hours=1))
    )


def userinfo(provider: OidcProvider, token: str) -> int:
    url = provider.metadata["userinfo_endpoint"]
    return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=WAIT).status_code


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_browser_login_lands_verified_in_the_store(oidc_provider, redis_server, tmp_path, kind):
    """Code + PKCE through the loopback: a verified credential every engine serves, no call."""
    if kind == "file":
        stores = [FileStore(tmp_path / "auth.json") for _ in range(2)]
    else:
        stores = [RedisStore(redis_server.url, key=f"oidc:{tmp_path.name}") for _ in range(2)]
    engine = engine_for(oidc_provider, stores[0])
    requests = len(oidc_provider.token_requests())

    browser_login(engine, oidc_provider, f"browser-{kind}")

    status = engine.status()
    assert (f"browser-{kind}", oidc_provider.issuer) == (status.identity.user_id, status.issuer)
    assert status.identity_verified
    sibling = AuthEngine(stores[1])  # shares the store, knows no endpoint
    token = sibling.access_token()
    assert token == engine.access_token()
    assert 200 == userinfo(oidc_provider, token)
    oidc_provider.wait_for_token_requests(requests + 1)
    assert [("authorization_code", "ok")] == oidc_provider.token_requests()[requests:]


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_device_login_lands_and_refresh_rotates(oidc_provider, redis_server, tmp_path, kind):
    if kind == "file":
        store: Any = FileStore(tmp_path / "auth.json")
    else:
        store = RedisStore(redis_server.url, key=f"oidc-device:{tmp_path.name}")
    engine = engine_for(oidc_provider, store)

    def approve(prompt: Any) -> None:
        threading.Thread(
            target=oidc_provider.approve_device,
            args=(prompt.user_code,),
            kwargs={"login": f"device-{kind}"},
            daemon=True,
        ).start()

    engine.login_device(on_prompt=approve, timeout=WAIT)

    assert (f"device-{kind}", True) == (
        engine.status().identity.user_id,
        engine.status().identity_verified,
    )
    first = engine.credentials
    make_due(engine)
    token = engine.access_token()
    assert token != first.access_token
    assert engine.credentials.refresh_token != first.refresh_token  # rotated
    assert 200 == userinfo(oidc_provider, token)
    assert engine.status().identity_verified


class TestRefusals:
    """Each refusal is typed, frees the port and writes nothing."""

    def check_nothing_written(self, path: Path, port: int) -> None:
        assert not path.exists()
        assert port_is_free(port)

    def test_state_mismatch(self, oidc_provider, tmp_path):
        path, port = tmp_path / "auth.json", free_port()
        engine = engine_for(oidc_provider, FileStore(path))
        visitor = Visitor(oidc_provider, tamper_state=True)
        with pytest.raises(StateMismatch):
            engine.login_browser(opener=visitor, ports=(port,), stream=io.StringIO(), timeout=WAIT)
        self.check_nothing_written(path, port)

    def test_access_denied(self, oidc_provider, tmp_path):
        path, port = tmp_path / "auth.json", free_port()
        engine = engine_for(oidc_provider, FileStore(path))
        visitor = Visitor(oidc_provider, deny=True)
        with pytest.raises(LoginDenied):
            engine.login_browser(opener=visitor, ports=(port,), stream=io.StringIO(), timeout=WAIT)
        visitor.join()
        self.check_nothing_written(path, port)

    def test_port_in_use(self, oidc_provider, tmp_path):
        path = tmp_path / "auth.json"
        engine = engine_for(oidc_provider, FileStore(path))
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            with pytest.raises(PortUnavailable):
                engine.login_browser(opener=lambda _url: True, ports=(port,), timeout=WAIT)
        self.check_nothing_written(path, port)

    def test_deadline(self, oidc_provider, tmp_path):
        path, port = tmp_path / "auth.json", free_port()
        engine = engine_for(oidc_provider, FileStore(path))
        with pytest.raises(LoginTimeout):
            engine.login_browser(opener=lambda _url: True, ports=(port,), timeout=0.5)
        self.check_nothing_written(path, port)

    @pytest.mark.parametrize("tamper", ["signature", "replayed", "other_client"])
    def test_tampered_id_token(self, oidc_provider, tmp_path, tamper):
        """A bad signature, an id_token replayed from another login (nonce), or one issued to
        another client (aud) is refused: nothing is written."""
        donor = engine_for(oidc_provider, FileStore(tmp_path / "donor.json"))
        browser_login(donor, oidc_provider, "donor")
        replayed = donor.credentials.id_token
        path, port = tmp_path / "auth.json", free_port()
        engine = engine_for(oidc_provider, FileStore(path))
        inner = engine._issuer.endpoint.inner  # the real endpoint, for the code exchange

        class Tampering:
            def request_token(self, grant_type: str, params: Any, **kw: Any) -> Any:
                answer = inner.request_token(grant_type, params, **kw)
                if tamper == "signature":
                    head, body, sig = answer.id_token.split(".")
                    forged = f"{head}.{body}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
                elif tamper == "replayed":
                    forged = replayed
                else:
                    forged = _id_token_for_another_client(oidc_provider)
                return attrs.evolve(answer, id_token=forged)

            def __getattr__(self, name: str) -> Any:
                return getattr(inner, name)

        visitor = Visitor(oidc_provider, login="victim")
        with pytest.raises(IdTokenInvalid):
            engine.login_browser(
                opener=visitor,
                ports=(port,),
                stream=io.StringIO(),
                timeout=WAIT,
                endpoint=Tampering(),
            )
        visitor.join()
        self.check_nothing_written(path, port)


def _id_token_for_another_client(provider: OidcProvider) -> str:
    """A genuine id_token of this provider, issued to the confidential client `svc`."""
    import base64
    import hashlib
    import secrets

    from .oidc_provider import CONFIDENTIAL_CLIENT_ID, CONFIDENTIAL_CLIENT_SECRET

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    redirect_uri = "http://127.0.0.1:8765/cb"
    url = (
        provider.authorization_url
        + "?"
        + urlencode(
            {
                "client_id": CONFIDENTIAL_CLIENT_ID,
                "response_type": "code",
                "scope": "openid",
                "redirect_uri": redirect_uri,
                "state": "s" * 16,
                "nonce": "n" * 16,
                "code_challenge": challenge.decode(),
                "code_challenge_method": "S256",
            }
        )
    )
    left = provider.authorize(url, login="other", follow_final_redirect=False)
    code = dict(parse_qsl(urlsplit(left.url).query))["code"]
    answer = httpx.post(
        provider.token_url,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
        auth=(CONFIDENTIAL_CLIENT_ID, CONFIDENTIAL_CLIENT_SECRET),
        timeout=WAIT,
    )
    answer.raise_for_status()
    return str(answer.json()["id_token"])


# One storm worker: waits for "go <start_at>" on stdin, then from that instant, three times, gets
# a token through authfsm (an engine built from the issuer) or does what the naive client does
# (its 5-minute leeway finds the provider's 60 s tokens always due), then calls the provider's
# userinfo with the token it ends up with. Workers are not in lockstep (a random pause before
# each unit): oidc-provider 8 with its in-memory adapter lets uses of one refresh token that
# arrive within the same instant through; a use that comes later is detected as a reuse and
# revokes the grant.
_STORM_WORKER = """
import json, random, sys, time
from pathlib import Path
import httpx
from authfsm import AuthEngine, AuthError
from authfsm.adapters import FileStore
from authfsm.demo._naive import NaiveClient

client, path, issuer, token_url, userinfo, client_id = sys.argv[1:7]
POLLS = 3
if client == "authfsm":
    engine = AuthEngine.from_issuer(issuer, client_id=client_id, store=FileStore(path))
else:
    http = httpx.Client(timeout=20)
    naive = NaiveClient(Path(path), token_url, client_id, http)
print("ready", flush=True)
start_at = float(sys.stdin.readline().split()[1])
time.sleep(max(start_at - time.time(), 0))
token = None
jitter = random.Random(int(sys.argv[7]))
for _ in range(POLLS):  # a few units of work each, as a worker does, not in lockstep
    time.sleep(jitter.uniform(0, 0.6))
    try:
        if client == "authfsm":
            token = engine.access_token()
        else:
            naive.poll(userinfo)
            token = naive.credentials.access_token if naive.credentials else None
    except AuthError:
        token = None
ok = token is not None and httpx.get(
    userinfo, headers={"Authorization": "Bearer " + token}, timeout=20).status_code == 200
print(json.dumps({"token": token, "ok": ok}), flush=True)
"""


def storm(provider: OidcProvider, path: Path, client: str, folder: Path) -> list[dict[str, Any]]:
    script = folder / "storm_worker.py"
    script.write_text(_STORM_WORKER)
    args = [
        client,
        str(path),
        provider.issuer,
        provider.token_url,
        provider.metadata["userinfo_endpoint"],
        PUBLIC_CLIENT_ID,
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *args, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(FLEET)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert "ready\n" == proc.stdout.readline(), proc.stderr.read() if proc.stderr else ""
        start_at = time.time() + 0.5
        for proc in procs:  # every worker gets its start instant before any is waited for
            assert proc.stdin is not None
            proc.stdin.write(f"go {start_at}\n")
            proc.stdin.flush()
        replies = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert 0 == proc.returncode, err
            replies.append(json.loads(out.strip().splitlines()[-1]))
        return replies
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)


def test_storm_of_32_processes_one_refresh_and_the_grant_survives(oidc_provider, tmp_path):
    """authfsm: 1 refresh call, everyone served; naive: many calls, the grant revoked."""
    results = {}
    for client in ("authfsm", "naive"):
        path = tmp_path / f"{client}.json"
        engine = engine_for(oidc_provider, FileStore(path))
        browser_login(engine, oidc_provider, f"storm-{client}")
        make_due(engine)
        before = len(oidc_provider.token_requests("refresh_token"))
        revoked = len(oidc_provider.revoked_grants)

        replies = storm(oidc_provider, path, client, tmp_path)

        time.sleep(0.3)  # the provider's event lines arrive after its answers
        calls = oidc_provider.token_requests("refresh_token")[before:]
        results[client] = (replies, calls, len(oidc_provider.revoked_grants) - revoked)

    replies, calls, revoked = results["authfsm"]
    assert [("refresh_token", "ok")] == calls
    assert 0 == revoked
    assert all(reply["ok"] for reply in replies)
    assert 1 == len({reply["token"] for reply in replies})
    survivor = AuthEngine.from_issuer(
        oidc_provider.issuer, client_id=PUBLIC_CLIENT_ID, store=FileStore(tmp_path / "authfsm.json")
    )
    make_due(survivor)
    assert 200 == userinfo(oidc_provider, survivor.access_token())  # the grant is alive

    naive_replies, naive_calls, naive_revoked = results["naive"]
    assert len(naive_calls) > 1
    assert any(outcome == "error" for _, outcome in naive_calls)
    assert naive_revoked >= 1
    assert not all(reply["ok"] for reply in naive_replies)
    print(
        f"\noidc-provider storm, {FLEET} processes: authfsm {len(calls)} refresh call(s), "
        f"{sum(r['ok'] for r in replies)}/{FLEET} working, grant alive; naive "
        f"{len(naive_calls)} calls ({sum(o == 'error' for _, o in naive_calls)} refused), "
        f"{naive_revoked} grant revocation(s), "
        f"{sum(r['ok'] for r in naive_replies)}/{FLEET} working"
    )
