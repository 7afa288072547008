"""
Safe-to-print forms of configuration that may carry secrets.

Adapters name their endpoints in ``repr`` and messages; a URL may carry a password in its userinfo
(``https://user:pass@host/``) or a key in its query string (``?api_key=...``). This module only
formats: it must never log, raise with, or keep the values it hides.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["REDACTED", "redact_url"]

#: What stands in for a hidden value.
REDACTED = "[redacted]"


def redact_url(url: str) -> str:
    """
    ``url`` without userinfo, query values or fragment: scheme, host, port, path, query names.

    ``https://user:pass@idp.example:8443/token?key=s3cret#x`` becomes
    ``https://idp.example:8443/token?key=[redacted]``. A query item without ``=`` is hidden
    whole; a URL that cannot be parsed is hidden whole.
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return REDACTED
    netloc = host or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, _redact_query(parts.query), ""))


def _redact_query(query: str) -> str:
    items = []
    for item in query.split("&") if query else ():
        name, equals, _value = item.partition("=")
        items.append(f"{name}={REDACTED}" if equals else REDACTED)
    return "&".join(items)
