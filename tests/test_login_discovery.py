"""Discovery: where metadata is looked for, which documents are refused, and the cache."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from authfsm import AuthError
from authfsm.login import (
    DiscoveryError,
    ProviderMetadata,
    clear_discovery_cache,
    discover,
    discover_async,
    metadata_from_document,
)
from authfsm.login._discovery import metadata_urls

from .test_login_idp import FakeIdP

OIDC = "/.well-known/openid-configuration"
OAUTH = "/.well-known/oauth-authorization-server"


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    clear_discovery_cache()
    yield
    clear_discovery_cache()


@pytest.fixture(name="idp")
def _idp() -> Iterator[FakeIdP]:
    with FakeIdP() as idp:
        yield idp


def doc(issuer: str, **fields: object) -> dict[str, object]:
    return {"issuer": issuer, "token_endpoint": f"{issuer}/token", **fields}


class TestAddresses:
    """The OpenID address first, then RFC 8414's path-insertion form."""

    def test_issuer_without_path(self) -> None:
        assert (
            "https://idp.example/.well-known/openid-configuration",
            "https://idp.example/.well-known/oauth-authorization-server",
        ) == metadata_urls("https://idp.example")

    def test_issuer_with_path_and_one_trailing_slash(self) -> None:
        assert (
            "https://idp.example/tenant/.well-known/openid-configuration",
            "https://idp.example/.well-known/oauth-authorization-server/tenant",
        ) == metadata_urls("https://idp.example/tenant/")

    @pytest.mark.parametrize(
        "issuer",
        ["ftp://idp.example", "idp.example", "https://idp.example?x=1", "https://u:p@idp.example"],
    )
    def test_bad_issuers_are_refused_before_any_request(self, issuer: str) -> None:
        with pytest.raises(DiscoveryError) as caught:
            metadata_urls(issuer)
        assert "invalid_issuer" == caught.value.reason
        assert "p@" not in str(caught.value)


class TestDocument:
    """What makes a document trustworthy (pure)."""

    def test_fields_are_read(self) -> None:
        issuer = "https://idp.example"
        metadata = metadata_from_document(
            doc(
                issuer,
                authorization_endpoint=f"{issuer}/authorize",
                device_authorization_endpoint=f"{issuer}/device",
                revocation_endpoint=f"{issuer}/revoke",
                jwks_uri=f"{issuer}/jwks",
                code_challenge_methods_supported=["S256"],
                authorization_response_iss_parameter_supported=True,
                id_token_signing_alg_values_supported=["RS256", "ES256"],
                extra="kept",
            ),
            issuer=issuer,
        )
        assert (
            ProviderMetadata(
                issuer=issuer,
                token_endpoint=f"{issuer}/token",
                authorization_endpoint=f"{issuer}/authorize",
                device_authorization_endpoint=f"{issuer}/device",
                revocation_endpoint=f"{issuer}/revoke",
                jwks_uri=f"{issuer}/jwks",
                code_challenge_methods_supported=("S256",),
                authorization_response_iss_parameter_supported=True,
                id_token_signing_alg_values_supported=("RS256", "ES256"),
            )
            == metadata
        )
        assert "kept" == metadata.document["extra"]

    @pytest.mark.parametrize(
        ("asked", "found", "ok"),
        [
            ("https://idp.example", "https://idp.example", True),
            ("https://idp.example", "https://idp.example/", True),
            ("https://idp.example/", "https://idp.example", True),
            ("https://idp.example", "https://idp.example//", False),
            ("https://idp.example", "https://IDP.example", False),
            ("https://idp.example", "https://idp.example/tenant", False),
            ("https://idp.example", "https://evil.example", False),
            ("https://idp.example", "http://idp.example", False),
        ],
    )
    def test_issuer_rule(self, asked: str, found: str, ok: bool) -> None:
        """Exact string comparison after removing at most one trailing slash from each."""
        if ok:
            assert found == metadata_from_document(doc(found), issuer=asked).issuer
        else:
            with pytest.raises(DiscoveryError) as caught:
                metadata_from_document(doc(found), issuer=asked)
            assert "issuer_mismatch" == caught.value.reason

    @pytest.mark.parametrize(
        ("document", "reason"),
        [
            ([], "invalid_document"),
            ("text", "invalid_document"),
            ({"token_endpoint": "https://idp.example/t"}, "missing_field:issuer"),
            ({"issuer": "https://idp.example"}, "missing_field:token_endpoint"),
            (
                doc("https://idp.example", token_endpoint="javascript:alert(1)"),
                "invalid_endpoint:token_endpoint",
            ),
            (
                doc("https://idp.example", authorization_endpoint="ftp://idp.example/a"),
                "invalid_endpoint:authorization_endpoint",
            ),
            (doc("https://idp.example", jwks_uri=42), "invalid_endpoint:jwks_uri"),
            (
                doc("https://idp.example", code_challenge_methods_supported="S256"),
                "invalid_field:code_challenge_methods_supported",
            ),
            (
                doc("https://idp.example", authorization_response_iss_parameter_supported="yes"),
                "invalid_field:authorization_response_iss_parameter_supported",
            ),
        ],
    )
    def test_refusals(self, document: object, reason: str) -> None:
        with pytest.raises(DiscoveryError) as caught:
            metadata_from_document(document, issuer="https://idp.example")
        assert reason == caught.value.reason
        assert isinstance(caught.value, AuthError)
        assert isinstance(caught.value, ValueError)


class TestFetch:
    """discover() over real HTTP: fallbacks, refusals, cap, deadline, cache."""

    def test_openid_configuration(self, idp: FakeIdP) -> None:
        metadata = discover(idp.issuer)
        assert idp.issuer == metadata.issuer
        assert f"{idp.base}/jwks" == metadata.jwks_uri
        assert [("GET", OIDC)] == idp.requests

    def test_cached_per_process_until_cleared(self, idp: FakeIdP) -> None:
        first = discover(idp.issuer)
        assert first is discover(idp.issuer)
        assert 1 == len(idp.requests)
        discover(idp.issuer, refresh=True)
        assert 2 == len(idp.requests)
        clear_discovery_cache(idp.issuer)
        discover(idp.issuer)
        assert 3 == len(idp.requests)

    def test_falls_back_to_rfc8414_with_path_insertion(self) -> None:
        with FakeIdP(issuer_path="/tenant") as idp:
            idp.discovery["/tenant" + OIDC] = (404, b"")
            metadata = discover(idp.issuer)
            assert idp.issuer == metadata.issuer
            assert [("GET", "/tenant" + OIDC), ("GET", OAUTH + "/tenant")] == idp.requests

    def test_falls_back_on_a_server_error_too(self, idp: FakeIdP) -> None:
        idp.discovery[OIDC] = (500, b"oops")
        assert idp.issuer == discover(idp.issuer).issuer
        assert [("GET", OIDC), ("GET", OAUTH)] == idp.requests

    def test_neither_address(self, idp: FakeIdP) -> None:
        idp.discovery[OIDC] = (404, b"")
        idp.discovery[OAUTH] = (403, b"")
        with pytest.raises(DiscoveryError) as caught:
            discover(idp.issuer)
        assert "not_found" == caught.value.reason
        assert "HTTP 404" in str(caught.value)
        assert "HTTP 403" in str(caught.value)

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (b"{not json", "invalid_json"),
            (b"[1, 2]", "invalid_document"),
            (b'{"issuer": NaN}', "missing_field:token_endpoint"),
        ],
    )
    def test_a_bad_first_document_is_refused_not_skipped(
        self, idp: FakeIdP, body: bytes, reason: str
    ) -> None:
        """A server that answers 2xx with junk is broken or hostile: no fallback masks it."""
        idp.discovery[OIDC] = (200, body)
        with pytest.raises(DiscoveryError) as caught:
            discover(idp.issuer)
        assert reason == caught.value.reason
        assert [("GET", OIDC)] == idp.requests

    def test_another_issuers_document_is_refused_and_not_cached(self, idp: FakeIdP) -> None:
        idp.discovery[OIDC] = (200, json.dumps(doc("https://evil.example")).encode())
        with pytest.raises(DiscoveryError) as caught:
            discover(idp.issuer)
        assert "issuer_mismatch" == caught.value.reason
        del idp.discovery[OIDC]
        assert idp.issuer == discover(idp.issuer).issuer

    def test_body_is_capped(self, idp: FakeIdP) -> None:
        big = json.dumps(doc(idp.issuer, padding="x" * 5000)).encode()
        idp.discovery[OIDC] = (200, big)
        with pytest.raises(DiscoveryError) as caught:
            discover(idp.issuer, max_response_bytes=4096)
        assert "response_too_large" == caught.value.reason

    def test_unreachable(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with pytest.raises(DiscoveryError) as caught:
            discover(f"http://127.0.0.1:{port}", timeout=2)
        assert "unreachable" == caught.value.reason
        assert "network:ConnectError" in str(caught.value)

    def test_total_deadline(self) -> None:
        """A server that accepts and never answers costs the deadline, not more."""
        with socket.create_server(("127.0.0.1", 0)) as listener:
            stop = threading.Event()
            held: list[socket.socket] = []

            def accept() -> None:
                listener.settimeout(0.05)
                end = time.monotonic() + 10
                while not stop.is_set() and time.monotonic() < end:
                    try:
                        held.append(listener.accept()[0])
                    except TimeoutError:
                        continue

            thread = threading.Thread(target=accept, daemon=True)
            thread.start()
            started = time.monotonic()
            try:
                with pytest.raises(DiscoveryError) as caught:
                    discover(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.5)
            finally:
                stop.set()
                thread.join(timeout=5)
                for sock in held:
                    sock.close()
            assert time.monotonic() - started < 2.0
            assert "unreachable" == caught.value.reason

    def test_async_shares_rules_and_cache(self) -> None:
        async def main(idp: FakeIdP) -> tuple[ProviderMetadata, ProviderMetadata]:
            first = await discover_async(idp.issuer)
            return first, await discover_async(idp.issuer)

        with FakeIdP(issuer_path="/t") as idp:
            idp.discovery["/t" + OIDC] = (404, b"")
            first, second = asyncio.run(main(idp))
            assert first is second is discover(idp.issuer)
            assert 2 == len(idp.requests)

    def test_async_refusal(self, idp: FakeIdP) -> None:
        idp.discovery[OIDC] = (200, b'{"issuer": 1, "token_endpoint": "https://x/t"}')
        with pytest.raises(DiscoveryError) as caught:
            asyncio.run(discover_async(idp.issuer))
        assert "issuer_mismatch" == caught.value.reason
