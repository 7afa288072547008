"""
``httpx`` integration: ``httpx.Auth`` classes driven by an engine.

They send the bearer token, and on a 401 ask the engine to ``recover`` the rejected token and
retry once. The request body is read before the first send so that a streamed body is re-sent
intact on the retry (httpx's own ``requires_request_body`` does this only when the flow is not
overridden, and both flows are overridden here because the engines do I/O and take locks).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from ._async import AsyncAuthEngine
    from ._sync import AuthEngine

__all__ = ["AsyncEngineAuth", "EngineAuth"]


class EngineAuth(httpx.Auth):
    """Bearer auth from an :class:`AuthEngine` (``httpx.Client``), one recovery on 401."""

    def __init__(self, engine: AuthEngine) -> None:
        self._engine = engine

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        request.read()
        token = self._engine.access_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != httpx.codes.UNAUTHORIZED:
            return
        request.headers["Authorization"] = f"Bearer {self._engine.recover(token)}"
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        raise RuntimeError(
            "AuthEngine.httpx_auth() blocks on I/O and cannot drive an httpx.AsyncClient; "
            "use AsyncAuthEngine.httpx_auth() there."
        )
        yield request  # pragma: no cover - makes this an async generator


class AsyncEngineAuth(httpx.Auth):
    """Bearer auth from an :class:`AsyncAuthEngine` (``httpx.AsyncClient``), one recovery."""

    def __init__(self, engine: AsyncAuthEngine) -> None:
        self._engine = engine

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError(
            "AsyncAuthEngine.httpx_auth() needs an httpx.AsyncClient; "
            "use AuthEngine.httpx_auth() with httpx.Client."
        )
        yield request  # pragma: no cover - makes this a generator

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        token = await self._engine.access_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != httpx.codes.UNAUTHORIZED:
            return
        request.headers["Authorization"] = f"Bearer {await self._engine.recover(token)}"
        yield request
