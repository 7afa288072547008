"""
What the test token server answers with: canned responses a test queues (:class:`ScriptedResponse`)
and the JSON replies every endpoint shares (OAuth errors, token responses).

It only builds :class:`~._http.Reply` values; it decides nothing and holds no state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from ._http import Reply

__all__ = ["ScriptedResponse", "dumps", "error_reply", "json_reply", "numeric", "scripted_reply"]


def _freeze_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(headers))


@attrs.frozen
class ScriptedResponse:
    """
    One canned answer for the token endpoint, given instead of normal processing.

    Attributes:
        status: the HTTP status.
        json: a JSON value to send as the body (``application/json``).
        body: raw bytes to send as the body; at most one of ``json`` and ``body``. With neither,
            the body is empty.
        headers: extra response headers (``Retry-After``, ``Content-Type``, ...).
        delay: seconds to wait before answering (or dropping), to trigger client timeouts.
        drop: close the connection without answering at all.
    """

    status: int = attrs.field(default=503)
    json: object | None = None
    body: bytes | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze_headers)
    delay: float = 0.0
    drop: bool = False

    @status.validator
    def _check_status(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
            raise ValueError(f"status must be an HTTP status code (100-599), not {value!r}")

    def __attrs_post_init__(self) -> None:
        if self.json is not None and self.body is not None:
            raise ValueError("give a ScriptedResponse json or body, not both")
        if self.delay < 0:
            raise ValueError("delay must not be negative")


def scripted_reply(scripted: ScriptedResponse) -> Reply:
    content_type = None
    if scripted.json is not None:
        body, content_type = dumps(scripted.json), "application/json"
    else:
        body = scripted.body or b""
        if body:
            content_type = "application/octet-stream"
    headers = tuple(scripted.headers.items())
    if any(name.lower() == "content-type" for name, _ in headers):
        content_type = None
    return Reply(
        status=scripted.status,
        body=body,
        content_type=content_type,
        headers=headers,
        delay=scripted.delay,
        drop=scripted.drop,
    )


def error_reply(
    status: int, error: str, description: str, headers: tuple[tuple[str, str], ...] = ()
) -> Reply:
    return Reply(
        status=status,
        body=dumps({"error": error, "error_description": description}),
        content_type="application/json",
        headers=headers,
    )


def json_reply(status: int, value: Mapping[str, object]) -> Reply:
    return Reply(status=status, body=dumps(dict(value)), content_type="application/json")


def dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def numeric(seconds: float) -> int | float:
    """A JSON number for a time or duration: an integer when it is whole, as IdPs send them."""
    return int(seconds) if float(seconds).is_integer() else seconds
