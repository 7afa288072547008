"""
``httpx`` integration: an ``httpx.Auth`` driven by an engine.

It sends the bearer token, and on a 401 asks the engine to ``recover`` the rejected token and
retries once. The request body is read before the first send so that a streamed body is re-sent
intact on the retry (httpx's own ``requires_request_body`` does this only when the flow is not
overridden).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from ._sync import AuthEngine

__all__ = ["EngineAuth"]


class EngineAuth(httpx.Auth):
    """Bearer auth from an :class:`AuthEngine`, with one recovery and retry on 401."""

    requires_request_body = True

    def __init__(self, engine: AuthEngine) -> None:
        self._engine = engine

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        request.read()
        token = self._engine.access_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != httpx.codes.UNAUTHORIZED:
            return
        retry_token = self._engine.recover(token)
        request.headers["Authorization"] = f"Bearer {retry_token}"
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        raise RuntimeError(
            "AuthEngine.httpx_auth() blocks on I/O and cannot drive an httpx.AsyncClient; "
            "use AsyncAuthEngine.httpx_auth() there."
        )
        yield request  # pragma: no cover - makes this an async generator
