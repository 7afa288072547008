"""Tests for authfsm.testing.TokenServer and FakeClock, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from datetime import UTC, datetime

import httpx
import pytest

from authfsm.engine import Credentials, decode_jwt_claims
from authfsm.testing import Call, FakeClock, ScriptedResponse, TokenServer

START = 1_800_000_000.0


@pytest.fixture
def clock():
    return FakeClock(START)


@pytest.fixture
def server(clock):
    with TokenServer(clock=clock) as running:
        yield running


@pytest.fixture
def client():
    with httpx.Client(timeout=2.0) as http:
        yield http


def refresh(client, server, refresh_token, **extra):
    """POST a form-encoded refresh_token grant with client_id in the body."""
    data = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": "test-client",
    }
    data.update(extra)
    return client.post(server.token_url, data=data)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def basic(client_id, secret):
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def raw_request(server, data):
    """Send raw bytes to the server and return everything it answers before closing."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as sock:
        sock.sendall(data)
        chunks = []
        for _ in range(100):
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


class TestIssue:
    """issue() starts a token family and returns Credentials consistent with the server clock."""

    def test_credentials_fields(self, server):
        """The credential expires one TTL after the server clock's now and names the account."""
        creds = server.issue(user_id="u-9", account_id="acct-9")

        assert isinstance(creds, Credentials)
        assert datetime.fromtimestamp(START + 3600.0, UTC) == creds.expires_at
        assert datetime.fromtimestamp(START, UTC) == creds.last_refresh
        assert creds.account_id == "acct-9"
        assert server.family_alive(creds)
        assert server.is_current(creds)
        assert server.family_id(creds) == "family-1"

    def test_id_token_claims(self, server):
        """The id_token is an unsigned three-part JWT with sub, iat and exp."""
        creds = server.issue(user_id="u-1", expires_in=60)

        header, _payload, signature = creds.id_token.split(".")
        claims = decode_jwt_claims(creds.id_token)
        assert json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))) == {
            "alg": "none",
            "typ": "JWT",
        }
        assert signature != ""
        assert {"sub": "u-1", "iat": int(START), "exp": int(START) + 60} == {
            key: claims[key] for key in ("sub", "iat", "exp")
        }
        assert "https://api.openai.com/auth" not in claims

    def test_codex_claims(self, server):
        """codex_claims adds the ChatGPT account and user claims to the id_token."""
        creds = server.issue(user_id="u-2", account_id="acct-2", codex_claims=True)

        claims = decode_jwt_claims(creds.id_token)
        assert claims["https://api.openai.com/auth"] == {
            "chatgpt_account_id": "acct-2",
            "chatgpt_user_id": "u-2",
        }

    def test_jwt_access_tokens(self, server):
        """Access tokens are JWTs with exp, sub and a fresh jti each time."""
        first, second = server.issue(), server.issue()

        claims = decode_jwt_claims(first.access_token)
        assert int(START + 3600) == claims["exp"]
        assert claims["sub"] == "user-1"
        assert decode_jwt_claims(second.access_token)["jti"] != claims["jti"]

    def test_opaque_access_tokens(self, clock):
        """With jwt_access_tokens=False the access token is opaque."""
        with TokenServer(clock=clock, jwt_access_tokens=False) as opaque:
            assert decode_jwt_claims(opaque.issue().access_token) is None

    def test_issue_json(self, server):
        """issue_json() gives the raw token response plus account_id."""
        issued = server.issue_json(account_id="acct-3", expires_in=120)

        assert {
            "access_token",
            "refresh_token",
            "id_token",
            "expires_in",
            "token_type",
            "account_id",
        } == set(issued)
        assert (
            issued["expires_in"],
            issued["token_type"],
            issued["account_id"],
        ) == (120, "Bearer", "acct-3")
        assert server.is_current(issued["refresh_token"])


class TestRotation:
    """The family's current refresh token is spent once and replaced."""

    def test_rotates(self, server, client, clock):
        """A refresh mints new tokens, makes them current and spends the old refresh token."""
        creds = server.issue()
        clock.advance(10)

        response = refresh(client, server, creds.refresh_token)

        body = response.json()
        assert response.status_code == 200
        assert {"access_token", "token_type", "expires_in", "refresh_token", "id_token"} == set(
            body
        )
        assert (body["token_type"], body["expires_in"]) == ("Bearer", 3600)
        assert response.headers["Cache-Control"] == "no-store"
        assert body["refresh_token"] != creds.refresh_token
        assert body["access_token"] != creds.access_token
        assert server.is_current(body["refresh_token"])
        assert not server.is_current(creds)
        assert (server.rotations, server.token_calls) == (1, 1)
        assert [
            Call(
                path="/oauth/token",
                method="POST",
                grant_type="refresh_token",
                status=200,
                outcome="rotated",
                family="family-1",
                at=START + 10,
            )
        ] == server.calls

    def test_chain_of_rotations(self, server, client):
        """Each rotated refresh token works exactly once, in order."""
        token = server.issue().refresh_token
        for _ in range(5):
            response = refresh(client, server, token)
            assert response.status_code == 200
            token = response.json()["refresh_token"]

        assert (server.rotations, server.reuse_rejections) == (5, 0)

    def test_json_body(self, server, client):
        """A JSON body works like a form body (Codex sends JSON)."""
        creds = server.issue()

        response = client.post(
            server.token_url,
            json={
                "client_id": "test-client",
                "grant_type": "refresh_token",
                "refresh_token": creds.refresh_token,
            },
        )

        assert response.status_code == 200
        assert server.is_current(response.json()["refresh_token"])


class TestReuse:
    """A spent refresh token presented again revokes the whole family."""

    def test_reuse_revokes_family(self, server, client):
        """The reuse is refused with reuse_error, and then the rotated tokens fail too."""
        creds = server.issue()
        rotated = refresh(client, server, creds.refresh_token).json()

        reused = refresh(client, server, creds.refresh_token)
        current = refresh(client, server, rotated["refresh_token"])
        resource = client.get(server.resource_url, headers=bearer(rotated["access_token"]))

        assert reused.status_code == 400
        assert reused.json() == {
            "error": "refresh_token_reused",
            "error_description": "refresh token reused; family revoked",
        }
        assert (current.status_code, current.json()["error"]) == (400, "invalid_grant")
        assert resource.status_code == 401
        assert not server.family_alive(creds)
        assert (server.rotations, server.reuse_rejections, server.grace_reuses) == (1, 1, 0)
        assert [call.outcome for call in server.calls] == [
            "rotated",
            "reused_family_revoked",
            "invalid_grant",
            "resource_denied",
        ]

    def test_custom_reuse_error(self, clock, client):
        """reuse_error names the error code of the refusal."""
        with TokenServer(clock=clock, reuse_error="invalid_grant") as strict:
            creds = strict.issue()
            refresh(client, strict, creds.refresh_token)

            reused = refresh(client, strict, creds.refresh_token)

        assert (reused.status_code, reused.json()["error"]) == (400, "invalid_grant")

    def test_reuse_after_revocation_still_counts(self, server, client):
        """Every later presentation of a spent token is a reuse rejection too."""
        creds = server.issue()
        refresh(client, server, creds.refresh_token)
        for _ in range(3):
            assert refresh(client, server, creds.refresh_token).status_code == 400

        assert (server.rotations, server.reuse_rejections) == (1, 3)

    def test_other_families_unaffected(self, server, client):
        """Revoking one family leaves another login alive."""
        victim, bystander = server.issue(), server.issue(user_id="user-2")
        refresh(client, server, victim.refresh_token)
        refresh(client, server, victim.refresh_token)

        assert server.family_alive(bystander)
        assert refresh(client, server, bystander.refresh_token).status_code == 200


class TestGraceReuse:
    """Within reuse_grace a spent token is answered with the tokens minted when it was spent."""

    def test_within_grace(self, clock, client):
        """A reuse inside the grace window returns the same tokens and keeps the family."""
        with TokenServer(clock=clock, reuse_grace=5.0) as lenient:
            creds = lenient.issue()
            first = refresh(client, lenient, creds.refresh_token).json()
            clock.advance(4.9)

            again = refresh(client, lenient, creds.refresh_token)

            assert again.status_code == 200
            assert first == again.json()
            assert lenient.family_alive(creds)
            assert (
                lenient.rotations,
                lenient.grace_reuses,
                lenient.reuse_rejections,
            ) == (1, 1, 0)

    def test_after_grace(self, clock, client):
        """A reuse after the grace window revokes the family."""
        with TokenServer(clock=clock, reuse_grace=5.0) as lenient:
            creds = lenient.issue()
            refresh(client, lenient, creds.refresh_token)
            clock.advance(5.0)

            again = refresh(client, lenient, creds.refresh_token)

            assert (again.status_code, again.json()["error"]) == (400, "refresh_token_reused")
            assert not lenient.family_alive(creds)
            assert (lenient.grace_reuses, lenient.reuse_rejections) == (0, 1)

    def test_no_grace_by_default(self, server, client):
        """With reuse_grace=0 a reuse at the same instant is refused."""
        creds = server.issue()
        refresh(client, server, creds.refresh_token)

        assert refresh(client, server, creds.refresh_token).status_code == 400


class TestSparse:
    """Sparse mode leaves chosen fields out of refresh responses, as RFC 6749 §6 allows."""

    def test_non_rotating(self, clock, client):
        """Without refresh_token the presented one stays current and works again and again."""
        with TokenServer(clock=clock, sparse={"refresh_token"}) as idp:
            creds = idp.issue()
            bodies = []
            for _ in range(3):
                response = refresh(client, idp, creds.refresh_token)
                assert response.status_code == 200
                bodies.append(response.json())

            assert {"access_token", "token_type", "expires_in", "id_token"} == set(bodies[-1])
            assert 3 == len({body["access_token"] for body in bodies})
            assert idp.is_current(creds.refresh_token)
            assert idp.family_alive(creds)
            assert (idp.rotations, idp.reuse_rejections, idp.token_calls) == (0, 0, 3)
            assert ["refreshed"] * 3 == [call.outcome for call in idp.calls]
            latest = client.get(idp.resource_url, headers=bearer(bodies[-1]["access_token"]))
            earlier = client.get(idp.resource_url, headers=bearer(bodies[0]["access_token"]))
            assert (200, 401) == (latest.status_code, earlier.status_code)

    def test_without_id_token_and_expires_in(self, clock, client):
        """id_token and expires_in can be left out; the access token still expires on time."""
        with TokenServer(clock=clock, sparse=["id_token", "expires_in"]) as idp:
            creds = idp.issue()
            response = refresh(client, idp, creds.refresh_token)
            body = response.json()

            assert {"access_token", "token_type", "refresh_token"} == set(body)
            assert idp.is_current(body["refresh_token"])
            assert not idp.is_current(creds)
            assert START + 3600 == decode_jwt_claims(body["access_token"])["exp"]
            assert 1 == idp.rotations
            clock.advance(3600)
            expired = client.get(idp.resource_url, headers=bearer(body["access_token"]))
            assert 401 == expired.status_code

    def test_issue_is_never_sparse(self, clock):
        """A login returns every field whatever sparse says."""
        with TokenServer(clock=clock, sparse={"refresh_token", "id_token", "expires_in"}) as idp:
            issued = idp.issue_json()
        assert {"access_token", "refresh_token", "id_token", "expires_in"} <= set(issued)

    def test_changed_at_run_time(self, server, client):
        """sparse can be switched on and off between calls."""
        creds = server.issue()
        server.sparse = {"refresh_token"}
        first = refresh(client, server, creds.refresh_token).json()
        server.sparse = ()
        second = refresh(client, server, creds.refresh_token).json()

        assert "refresh_token" not in first
        assert server.is_current(second["refresh_token"])
        assert frozenset() == server.sparse

    def test_unknown_field_refused(self):
        """Only refresh_token, id_token and expires_in can be left out."""
        with pytest.raises(ValueError, match="access_token"):
            TokenServer(sparse={"access_token"})


class TestRevocation:
    """A revoked family's tokens stop working; unknown tokens are invalid_grant."""

    def test_revoke_family_of(self, server, client):
        """revoke_family_of() makes the current refresh token invalid_grant."""
        creds = server.issue()
        server.revoke_family_of(creds)

        response = refresh(client, server, creds.refresh_token)

        assert response.json() == {
            "error": "invalid_grant",
            "error_description": "refresh token has been revoked",
        }
        assert (response.status_code, server.reuse_rejections) == (400, 0)
        assert server.is_current(creds)
        assert not server.family_alive(creds)

    def test_revoke_unknown_family_raises(self, server):
        """revoke_family_of() refuses a token the server never issued, without echoing it."""
        with pytest.raises(KeyError) as raised:
            server.revoke_family_of("not-a-token-xyz")

        assert "not-a-token-xyz" not in str(raised.value)

    def test_unknown_refresh_token(self, server, client):
        """A token the server never issued is invalid_grant."""
        response = refresh(client, server, "never-issued")

        assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")
        assert server.calls[-1].outcome == "invalid_grant"
        assert server.calls[-1].family is None

    def test_revoke_endpoint(self, server, client):
        """RFC 7009 revocation of the access token revokes the family; unknown tokens get 200."""
        creds = server.issue()

        revoked = client.post(
            server.revoke_url,
            data={"token": creds.access_token, "token_type_hint": "access_token"},
        )
        unknown = client.post(server.revoke_url, data={"token": "unknown"})

        assert (revoked.status_code, unknown.status_code) == (200, 200)
        assert not server.family_alive(creds)
        assert (
            client.get(server.resource_url, headers=bearer(creds.access_token)).status_code == 401
        )
        assert [call.outcome for call in server.calls] == ["revoked", "revoked", "resource_denied"]


class TestClientAuthentication:
    """The client is identified by client_id and, when configured, a secret (basic or post)."""

    @pytest.fixture
    def confidential(self, clock):
        with TokenServer(clock=clock, client_id="app", client_secret="s3cret") as running:
            yield running

    def grant(self, creds):
        return {"grant_type": "refresh_token", "refresh_token": creds.refresh_token}

    def test_basic(self, confidential, client):
        """HTTP Basic with the right id and secret is accepted."""
        creds = confidential.issue()

        response = client.post(
            confidential.token_url, data=self.grant(creds), headers=basic("app", "s3cret")
        )

        assert response.status_code == 200

    def test_post(self, confidential, client):
        """client_id and client_secret in the body are accepted."""
        creds = confidential.issue()

        response = client.post(
            confidential.token_url,
            data={**self.grant(creds), "client_id": "app", "client_secret": "s3cret"},
        )

        assert response.status_code == 200

    @pytest.mark.parametrize(
        ("body", "headers"),
        [
            ({"client_id": "app", "client_secret": "wrong"}, {}),
            ({"client_id": "app"}, {}),
            ({"client_id": "other", "client_secret": "s3cret"}, {}),
            ({}, {}),
            ({}, basic("app", "wrong")),
            ({}, {"Authorization": "Basic !!!not-base64"}),
        ],
    )
    def test_refused(self, confidential, client, body, headers):
        """A wrong or missing id or secret is 401 invalid_client and spends nothing."""
        creds = confidential.issue()

        response = client.post(
            confidential.token_url, data={**self.grant(creds), **body}, headers=headers
        )

        assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
        assert "WWW-Authenticate" in response.headers
        assert confidential.is_current(creds)
        assert confidential.calls[-1].outcome == "invalid_client"

    def test_wrong_public_client_id(self, server, client):
        """A public client with the wrong client_id is 401 invalid_client."""
        creds = server.issue()

        response = refresh(client, server, creds.refresh_token, client_id="intruder")

        assert (response.status_code, response.json()["error"]) == (401, "invalid_client")


class TestMalformedRequests:
    """Bad requests are answered 400 invalid_request and the server keeps serving."""

    @pytest.mark.parametrize(
        ("content_type", "body"),
        [
            ("application/json", b"{not json"),
            ("application/json", b"[1, 2]"),
            ("application/json", b'{"grant_type": 5}'),
            ("application/x-www-form-urlencoded", b"no-equals-sign"),
            ("application/x-www-form-urlencoded", b"grant_type=a&grant_type=b"),
            ("application/x-www-form-urlencoded", b"\xff\xfe"),
            ("text/plain", b"grant_type=refresh_token"),
            (None, b""),
        ],
    )
    def test_malformed_body(self, server, client, content_type, body):
        """An unparseable body is 400 invalid_request, logged as bad_request."""
        headers = {} if content_type is None else {"Content-Type": content_type}

        response = client.post(server.token_url, content=body, headers=headers)

        assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
        assert (server.calls[-1].outcome, server.token_calls) == ("bad_request", 1)
        assert refresh(client, server, server.issue().refresh_token).status_code == 200

    def test_unsupported_grant_type(self, server, client):
        """A grant other than refresh_token is unsupported_grant_type."""
        response = client.post(
            server.token_url,
            data={"grant_type": "password", "client_id": "test-client"},
        )

        assert (response.status_code, response.json()["error"]) == (400, "unsupported_grant_type")
        assert server.calls[-1].grant_type == "password"

    def test_missing_refresh_token(self, server, client):
        """A refresh_token grant without the token is invalid_request."""
        response = client.post(
            server.token_url,
            data={"grant_type": "refresh_token", "client_id": "test-client"},
        )

        assert (response.status_code, response.json()["error"]) == (400, "invalid_request")

    def test_broken_chunked_framing(self, server, client):
        """A body with broken chunked framing is answered 400 and the connection closed."""
        answer = raw_request(
            server,
            b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        )

        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b"invalid_request" in answer
        assert refresh(client, server, server.issue().refresh_token).status_code == 200

    def test_garbage_request_line(self, server, client):
        """A request that is not HTTP does not stop the server."""
        raw_request(server, b"\x00\x01garbage\r\n\r\n")

        assert refresh(client, server, server.issue().refresh_token).status_code == 200

    def test_unknown_path_and_method(self, server, client):
        """Unknown paths are 404 and a GET on the token endpoint is 405."""
        assert client.get(server.url + "/nope").status_code == 404
        assert client.get(server.token_url).status_code == 405
        assert server.token_calls == 0


class TestResource:
    """The resource accepts only the family's current, unexpired access token."""

    def test_current_token(self, server, client):
        """The current access token is accepted and the identity is echoed."""
        creds = server.issue(user_id="u-5", account_id="acct-5")

        response = client.get(server.resource_url, headers=bearer(creds.access_token))

        assert (response.json()) == {
            "ok": True,
            "user_id": "u-5",
            "account_id": "acct-5",
            "body_bytes": 0,
        }

    def test_streamed_body_is_counted(self, server, client):
        """A chunked (streamed) request body is read in full and its length reported."""
        creds = server.issue()

        def chunks():
            yield b"x" * 1000
            yield b"y" * 24

        response = client.post(
            server.resource_url, content=chunks(), headers=bearer(creds.access_token)
        )

        assert (response.status_code, response.json()["body_bytes"]) == (200, 1024)

    def test_old_token_after_rotation(self, server, client):
        """After a rotation the previous access token is refused and the new one accepted."""
        creds = server.issue()
        rotated = refresh(client, server, creds.refresh_token).json()

        old = client.get(server.resource_url, headers=bearer(creds.access_token))
        new = client.get(server.resource_url, headers=bearer(rotated["access_token"]))

        assert (old.status_code, new.status_code) == (401, 200)
        assert old.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'

    def test_expiry(self, server, client, clock):
        """An access token is refused once the server clock reaches its expiry."""
        creds = server.issue(expires_in=60)
        clock.advance(59.9)
        before = client.get(server.resource_url, headers=bearer(creds.access_token))
        clock.advance(0.1)
        after = client.get(server.resource_url, headers=bearer(creds.access_token))

        assert (before.status_code, after.status_code) == (200, 401)
        assert [call.outcome for call in server.calls] == ["resource_ok", "resource_denied"]

    def test_missing_or_foreign_token(self, server, client):
        """No Authorization header, or a token never issued, is 401."""
        assert client.get(server.resource_url).status_code == 401
        assert client.get(server.resource_url, headers=bearer("made-up")).status_code == 401


class TestScriptedResponses:
    """Scripted answers replace normal processing of the next token calls, in order."""

    def test_503_with_retry_after(self, server, client):
        """fail_next() answers 503 with Retry-After and leaves the refresh token unspent."""
        creds = server.issue()
        server.fail_next(503, retry_after=7)

        failed = refresh(client, server, creds.refresh_token)
        succeeded = refresh(client, server, creds.refresh_token)

        assert (failed.status_code, failed.headers["Retry-After"]) == (503, "7")
        assert succeeded.status_code == 200
        assert [call.outcome for call in server.calls] == ["scripted", "rotated"]
        assert (server.token_calls, server.rotations) == (2, 1)

    def test_429_with_error(self, server, client):
        """fail_next(429, error=..., times=2) answers the next two calls alike."""
        creds = server.issue()
        server.fail_next(429, error="slow_down", times=2)

        answers = [refresh(client, server, creds.refresh_token) for _ in range(3)]

        assert [answer.status_code for answer in answers] == [429, 429, 200]
        assert answers[0].json() == {"error": "slow_down"}

    def test_fifo_and_raw_body(self, server, client):
        """script() queues responses that are answered first in, first out."""
        creds = server.issue()
        server.script(
            ScriptedResponse(500, body=b"<html>oops</html>", headers={"Content-Type": "text/html"}),
            ScriptedResponse(401, json={"error": {"code": "refresh_token_expired"}}),
        )

        first = refresh(client, server, creds.refresh_token)
        second = refresh(client, server, creds.refresh_token)

        assert (
            first.status_code,
            first.content,
            first.headers["Content-Type"],
        ) == (500, b"<html>oops</html>", "text/html")
        assert second.json() == {"error": {"code": "refresh_token_expired"}}
        assert server.is_current(creds)

    def test_drop(self, server, client):
        """drop closes the connection without an answer; the next call works."""
        creds = server.issue()
        server.script(ScriptedResponse(drop=True))

        with pytest.raises(httpx.RemoteProtocolError):
            refresh(client, server, creds.refresh_token)

        assert server.calls[-1].status is None
        assert refresh(client, server, creds.refresh_token).status_code == 200

    def test_delay_times_out_client(self, server):
        """delay holds the answer long enough for a client timeout; nothing is spent."""
        creds = server.issue()
        server.fail_next(503, delay=0.5)

        with httpx.Client(timeout=0.1) as impatient, pytest.raises(httpx.ReadTimeout):
            refresh(impatient, server, creds.refresh_token)

        assert server.is_current(creds)

    def test_latency(self, server, client):
        """latency slows every token call."""
        creds = server.issue()
        server.latency = 0.2

        started = time.monotonic()
        refresh(client, server, creds.refresh_token)

        assert 0.2 <= time.monotonic() - started < 1.5

    def test_invalid_scripts(self):
        """A ScriptedResponse refuses contradictory or impossible settings."""
        with pytest.raises(ValueError, match="not both"):
            ScriptedResponse(json={}, body=b"")
        with pytest.raises(ValueError, match="status"):
            ScriptedResponse(42)
        with pytest.raises(ValueError, match="delay"):
            ScriptedResponse(delay=-1)


class TestConcurrency:
    """Many clients racing with one refresh token end as a strict IdP would end them."""

    def test_32_threads_same_token(self, server):
        """32 racing refreshes of one token: one rotation, 31 reuse rejections, family revoked."""
        creds = server.issue()
        barrier = threading.Barrier(32, timeout=5.0)
        statuses: list[int] = []
        errors: list[BaseException] = []
        record = threading.Lock()
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)

        with httpx.Client(timeout=5.0, limits=limits) as shared:

            def racer():
                try:
                    barrier.wait()
                    status = refresh(shared, server, creds.refresh_token).status_code
                except BaseException as error:  # noqa: BLE001 - reported below
                    with record:
                        errors.append(error)
                else:
                    with record:
                        statuses.append(status)

            threads = [threading.Thread(target=racer) for _ in range(32)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=10.0)

        assert errors == []
        assert sorted(statuses) == [200] + [400] * 31
        assert (server.token_calls, server.rotations, server.reuse_rejections) == (32, 1, 31)
        assert not server.family_alive(creds)


class TestLifecycle:
    """The server binds an ephemeral port on start and releases it on stop."""

    def test_explicit_start_stop(self, client):
        """start() serves, stop() closes, and the url is refused before start."""
        server = TokenServer()
        with pytest.raises(RuntimeError):
            _ = server.url
        server.start()
        try:
            assert server.url.startswith("http://127.0.0.1:")
            assert server.token_url == server.url + "/oauth/token"
            assert server.revoke_url == server.url + "/oauth/revoke"
            assert server.resource_url == server.url + "/resource"
            with pytest.raises(RuntimeError):
                server.start()
            url = server.resource_url
            assert client.get(url).status_code == 401
        finally:
            server.stop()
        server.stop()

        with pytest.raises(httpx.TransportError):
            client.get(url)

    def test_repr_has_no_tokens(self, server, client):
        """repr shows the url and counters and no token material."""
        creds = server.issue()
        rotated = refresh(client, server, creds.refresh_token).json()

        shown = repr(server) + repr(server.calls)

        assert server.url in shown
        assert "rotations=1" in shown
        for secret in (creds.access_token, creds.refresh_token, rotated["refresh_token"]):
            assert secret not in shown

    def test_reset_counters(self, server, client):
        """reset_counters() zeroes the counters and keeps the call log."""
        refresh(client, server, server.issue().refresh_token)

        server.reset_counters()

        assert (
            server.token_calls,
            server.rotations,
            server.reuse_rejections,
            server.grace_reuses,
        ) == (0, 0, 0, 0)
        assert len(server.calls) == 1


class TestFakeClock:
    """FakeClock moves only when told."""

    def test_advance_and_set(self):
        """advance() adds and returns the new time; set() jumps anywhere."""
        clock = FakeClock()

        assert clock() == START
        assert clock.advance(1.5) == START + 1.5
        clock.set(100.0)
        assert clock() == 100.0

    def test_refuses_backwards_advance_and_nonsense(self):
        """advance() refuses negative steps, and non-finite or non-numeric times are refused."""
        clock = FakeClock()

        with pytest.raises(ValueError, match="forward"):
            clock.advance(-1)
        with pytest.raises(ValueError, match="finite"):
            clock.set(float("nan"))
        with pytest.raises(TypeError):
            clock.set(True)
        assert clock() == START
