"""
``httpx`` integration: ``httpx.Auth`` classes driven by an engine.

They send the bearer token, and on a 401 ask the engine to ``recover`` the rejected token and
retry once; the request body, even a streamed one, is re-sent intact (see
:func:`~._http_family.bearer_flow`, which the ``httpx2`` twins in ``_httpx2_auth`` run too).
``httpx2.Client`` refuses these classes (``TypeError: Invalid "auth" argument``): it takes
``engine.httpx2_auth()``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING

import httpx

from ._http_family import bearer_flow, bearer_flow_async, wrong_client

if TYPE_CHECKING:
    from ._async import AsyncAuthEngine
    from ._sync import AuthEngine

__all__ = ["AsyncEngineAuth", "EngineAuth"]


class EngineAuth(httpx.Auth):
    """Bearer auth from an :class:`AuthEngine` (``httpx.Client``), one recovery on 401."""

    def __init__(self, engine: AuthEngine) -> None:
        self._engine = engine

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        return bearer_flow(self._engine, request)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        raise wrong_client("sync", "httpx")
        yield request  # pragma: no cover - makes this an async generator


class AsyncEngineAuth(httpx.Auth):
    """Bearer auth from an :class:`AsyncAuthEngine` (``httpx.AsyncClient``), one recovery."""

    def __init__(self, engine: AsyncAuthEngine) -> None:
        self._engine = engine

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise wrong_client("async", "httpx")
        yield request  # pragma: no cover - makes this a generator

    def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        return bearer_flow_async(self._engine, request)
