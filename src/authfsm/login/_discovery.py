"""
Provider metadata: OpenID Connect Discovery 1.0, with RFC 8414 as the fallback.

This module owns where the metadata document is looked for, what makes one trustworthy, and the
per-process cache of the documents that were. It fetches with the token endpoint adapter's
machinery (one overall deadline, a capped body, no redirects followed) and must never adopt a
document that names another issuer than the one asked for.

The issuer rule: the document's ``issuer`` must be the issuer asked for, compared as exact
strings after removing at most one trailing ``/`` from each (``https://idp.example/`` matches
``https://idp.example``; ``https://IDP.example``, ``https://idp.example//`` and
``https://idp.example/tenant`` do not match ``https://idp.example``). The metadata keeps the
document's spelling, which is what id_tokens and RFC 9207 ``iss`` parameters are compared with,
exactly.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import httpx

from ..adapters._endpoint import (
    Reply,
    build_get_request,
    new_sync_client,
    send,
    send_async,
)
from ..adapters._redact import redact_url
from ..engine._ports import TransientFailure
from ._errors import DiscoveryError

__all__ = [
    "ProviderMetadata",
    "clear_discovery_cache",
    "discover",
    "discover_async",
    "metadata_from_document",
    "metadata_urls",
]

OIDC_WELL_KNOWN = "/.well-known/openid-configuration"
OAUTH_WELL_KNOWN = "/.well-known/oauth-authorization-server"
#: A metadata document is a few KiB; a larger body is not read.
DEFAULT_MAX_BYTES = 512 * 1024
_ENDPOINT_FIELDS = (
    "authorization_endpoint",
    "token_endpoint",
    "device_authorization_endpoint",
    "revocation_endpoint",
    "jwks_uri",
)
_REQUIRED = ("issuer", "token_endpoint")
_SHOWN = 120


def _shown(text: str) -> str:
    """A value from a document, safe to put in a message: printable, short, no query values."""
    text = redact_url(text) if "://" in text else text
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return repr(text[:_SHOWN] + ("…" if len(text) > _SHOWN else ""))


def _strip_one_slash(value: str) -> str:
    return value[:-1] if value.endswith("/") else value


def _is_web_url(value: object) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in {"http", "https"} and bool(parts.hostname)


def _check_issuer(issuer: str) -> None:
    if not _is_web_url(issuer):
        raise DiscoveryError(
            f"The issuer {_shown(issuer)} is not an http(s) URL with a host.",
            reason="invalid_issuer",
        )
    parts = urlsplit(issuer)
    # RFC 8414 §2: an issuer has no query or fragment component.
    if parts.query or parts.fragment or "?" in issuer or "#" in issuer:
        raise DiscoveryError(
            f"The issuer {_shown(issuer)} has a query or fragment; an issuer URL has neither.",
            reason="invalid_issuer",
        )
    if parts.username is not None or parts.password is not None:
        raise DiscoveryError(
            "The issuer URL carries user information; an issuer URL has none.",
            reason="invalid_issuer",
        )


def metadata_urls(issuer: str) -> tuple[str, str]:
    """
    Where the metadata of ``issuer`` is looked for, in order.

    First OpenID Connect Discovery (the issuer, one trailing ``/`` removed, followed by
    ``/.well-known/openid-configuration``), then RFC 8414 §3.1 (``/.well-known/
    oauth-authorization-server`` inserted between the host and the issuer's path).
    """
    _check_issuer(issuer)
    base = _strip_one_slash(issuer)
    parts = urlsplit(base)
    oauth = urlunsplit((parts.scheme, parts.netloc, OAUTH_WELL_KNOWN + parts.path, "", ""))
    return base + OIDC_WELL_KNOWN, oauth


@attrs.frozen(kw_only=True)
class ProviderMetadata:
    """
    What a provider says about itself (the fields a login uses), plus the whole document.

    Attributes:
        issuer: the issuer, exactly as the document spells it.
        token_endpoint: where tokens are requested (required).
        authorization_endpoint: where the browser is sent (needed by :func:`browser_login`).
        device_authorization_endpoint: RFC 8628 (needed by :func:`device_login`).
        revocation_endpoint: RFC 7009, if offered.
        jwks_uri: the provider's signing keys (needed to verify id_tokens).
        code_challenge_methods_supported: the PKCE methods listed; empty when not listed.
        authorization_response_iss_parameter_supported: RFC 9207: the provider always sends
            ``iss`` with the authorization response, so its absence is refused.
        id_token_signing_alg_values_supported: the id_token ``alg`` values listed; empty when
            not listed (``RS256`` is then assumed, as OpenID Connect requires it).
        document: the whole document as received (read-only).
    """

    issuer: str
    token_endpoint: str
    authorization_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    revocation_endpoint: str | None = None
    jwks_uri: str | None = None
    code_challenge_methods_supported: tuple[str, ...] = ()
    authorization_response_iss_parameter_supported: bool = False
    id_token_signing_alg_values_supported: tuple[str, ...] = ()
    document: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


def _string_list(document: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = document.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DiscoveryError(
            f"The provider metadata's {name} is not a list of strings.",
            reason=f"invalid_field:{name}",
        )
    return tuple(value)


def metadata_from_document(document: object, *, issuer: str) -> ProviderMetadata:
    """
    Check a metadata document fetched for ``issuer`` and return its :class:`ProviderMetadata`.

    Raises :class:`DiscoveryError` when it is not a JSON object, lacks ``issuer`` or
    ``token_endpoint``, has an endpoint that is not an http(s) URL with a host, a list field
    that is not a list of strings, or an ``issuer`` other than ``issuer`` (see the module for
    the comparison rule).
    """
    if not isinstance(document, dict):
        raise DiscoveryError(
            "The provider metadata is not a JSON object.", reason="invalid_document"
        )
    for name in _REQUIRED:
        if name not in document or document[name] is None:
            raise DiscoveryError(
                f"The provider metadata has no {name}.", reason=f"missing_field:{name}"
            )
    found = document["issuer"]
    if not isinstance(found, str) or _strip_one_slash(found) != _strip_one_slash(issuer):
        shown = _shown(found) if isinstance(found, str) else type(found).__name__
        raise DiscoveryError(
            f"The provider metadata names issuer {shown}, not {_shown(issuer)}: refused "
            "(a document for another issuer must never be trusted).",
            reason="issuer_mismatch",
        )
    endpoints: dict[str, str | None] = {}
    for name in _ENDPOINT_FIELDS:
        value = document.get(name)
        if value is not None and not _is_web_url(value):
            raise DiscoveryError(
                f"The provider metadata's {name} is not an http(s) URL with a host.",
                reason=f"invalid_endpoint:{name}",
            )
        endpoints[name] = value
    iss_supported = document.get("authorization_response_iss_parameter_supported", False)
    if not isinstance(iss_supported, bool):
        raise DiscoveryError(
            "The provider metadata's authorization_response_iss_parameter_supported is not a "
            "boolean.",
            reason="invalid_field:authorization_response_iss_parameter_supported",
        )
    token_endpoint = endpoints.pop("token_endpoint")
    assert token_endpoint is not None  # required above
    return ProviderMetadata(
        issuer=found,
        token_endpoint=token_endpoint,
        **endpoints,
        code_challenge_methods_supported=_string_list(document, "code_challenge_methods_supported"),
        authorization_response_iss_parameter_supported=iss_supported,
        id_token_signing_alg_values_supported=_string_list(
            document, "id_token_signing_alg_values_supported"
        ),
        document=MappingProxyType(dict(document)),
    )


# -- fetching ------------------------------------------------------------------------------------

_cache: dict[str, ProviderMetadata] = {}
_cache_lock = threading.Lock()


def clear_discovery_cache(issuer: str | None = None) -> None:
    """Forget the cached metadata of ``issuer``, or of every issuer when None."""
    with _cache_lock:
        if issuer is None:
            _cache.clear()
        else:
            _cache.pop(issuer, None)


def _cached(issuer: str) -> ProviderMetadata | None:
    with _cache_lock:
        return _cache.get(issuer)


def _remember(issuer: str, metadata: ProviderMetadata) -> ProviderMetadata:
    with _cache_lock:
        _cache[issuer] = metadata
    return metadata


class _NonFinite:
    """Stands in for ``NaN`` and ``Infinity``, which are not JSON."""


def _non_finite(_literal: str) -> _NonFinite:
    return _NonFinite()


def _judge(reply: Reply | TransientFailure, url: str, issuer: str) -> ProviderMetadata | str:
    """The metadata in ``reply``, or why to try the next address; raises when it is refused."""
    if isinstance(reply, TransientFailure):
        raise DiscoveryError(
            f"Could not fetch the provider metadata from {redact_url(url)} ({reply.reason}).",
            reason="unreachable",
        )
    if not 200 <= reply.status < 300:
        return f"{redact_url(url)}: HTTP {reply.status}"
    if reply.problem is not None:
        raise DiscoveryError(
            f"The provider metadata at {redact_url(url)} could not be read ({reply.problem}).",
            reason=reply.problem,
        )
    try:
        document = json.loads(reply.body or b"", parse_constant=_non_finite)
    # RecursionError: a deeply nested document fits easily under the size cap.
    except (ValueError, RecursionError):
        raise DiscoveryError(
            f"The provider metadata at {redact_url(url)} is not valid JSON.",
            reason="invalid_json",
        ) from None
    return metadata_from_document(document, issuer=issuer)


def _not_found(issuer: str, misses: list[str]) -> DiscoveryError:
    return DiscoveryError(
        f"No provider metadata for {_shown(issuer)}: {'; '.join(misses)}.", reason="not_found"
    )


def _check_limits(timeout: float, max_response_bytes: int) -> None:
    if not (isinstance(timeout, int | float) and 0 < timeout < float("inf")):
        raise ValueError("timeout must be a positive number of seconds")
    if isinstance(max_response_bytes, bool) or max_response_bytes <= 0:
        raise ValueError("max_response_bytes must be a positive number of bytes")


def discover(
    issuer: str,
    *,
    client: httpx.Client | None = None,
    timeout: float = 10.0,
    max_response_bytes: int = DEFAULT_MAX_BYTES,
    refresh: bool = False,
) -> ProviderMetadata:
    """
    The metadata of ``issuer``: fetched once per process, then served from a cache.

    Tries ``{issuer}/.well-known/openid-configuration``, then (when that answers a non-2xx
    status) the RFC 8414 address (see :func:`metadata_urls`). The whole discovery, both
    requests included, is held to ``timeout`` seconds; a body over ``max_response_bytes`` is
    not read; redirects are not followed. A refused or unreachable document raises
    :class:`DiscoveryError` and is not cached.

    Args:
        issuer: the provider's issuer URL (http or https; no query or fragment).
        client: an ``httpx.Client`` to use (left open); by default a short-lived one.
        timeout: the overall deadline, in seconds.
        max_response_bytes: the body cap.
        refresh: fetch again even when cached (the cache is also cleared by
            :func:`clear_discovery_cache`).
    """
    _check_limits(timeout, max_response_bytes)
    if not refresh and (cached := _cached(issuer)) is not None:
        return cached
    deadline = time.monotonic() + timeout
    own = client is None
    http = new_sync_client(timeout) if client is None else client
    misses: list[str] = []
    try:
        for url in metadata_urls(issuer):
            remaining = max(deadline - time.monotonic(), 0.001)
            reply = send(
                build_get_request(url), client=http, timeout=remaining, cap=max_response_bytes
            )
            found = _judge(reply, url, issuer)
            if isinstance(found, ProviderMetadata):
                return _remember(issuer, found)
            misses.append(found)
    finally:
        if own:
            http.close()
    raise _not_found(issuer, misses)


async def discover_async(
    issuer: str,
    *,
    client: httpx.AsyncClient | None = None,
    timeout: float = 10.0,
    max_response_bytes: int = DEFAULT_MAX_BYTES,
    refresh: bool = False,
) -> ProviderMetadata:
    """:func:`discover` with asyncio (the same cache, rules and deadline)."""
    _check_limits(timeout, max_response_bytes)
    if not refresh and (cached := _cached(issuer)) is not None:
        return cached
    deadline = time.monotonic() + timeout
    misses: list[str] = []
    for url in metadata_urls(issuer):
        remaining = max(deadline - time.monotonic(), 0.001)
        reply = await send_async(
            build_get_request(url), client=client, timeout=remaining, cap=max_response_bytes
        )
        found = _judge(reply, url, issuer)
        if isinstance(found, ProviderMetadata):
            return _remember(issuer, found)
        misses.append(found)
    raise _not_found(issuer, misses)
