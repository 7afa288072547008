"""
``httpx2`` integration: the ``httpx2.Auth`` twins of ``_httpx_auth``, driven by an engine.

``httpx2`` is optional, so only ``AuthEngine.httpx2_auth()`` and ``AsyncAuthEngine.httpx2_auth()``
import this module, when called. The flow (bearer token, one ``recover`` and retry on 401, the
body read first so a streamed one is re-sent intact) is :func:`~._http_family.bearer_flow`,
the one the ``httpx`` classes run.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING

try:
    import httpx2
except ModuleNotFoundError as exc:  # pragma: no cover - the test extra installs httpx2
    if exc.name != "httpx2":
        raise
    raise ModuleNotFoundError(
        "httpx2_auth() needs httpx2: pip install 'authfsm[httpx2]' "
        "(or use httpx_auth() with httpx.Client)",
        name="httpx2",
    ) from exc

from ._http_family import bearer_flow, bearer_flow_async, wrong_client

if TYPE_CHECKING:
    from ._async import AsyncAuthEngine
    from ._sync import AuthEngine

__all__ = ["AsyncEngineAuth2", "EngineAuth2"]


class EngineAuth2(httpx2.Auth):
    """Bearer auth from an :class:`AuthEngine` (``httpx2.Client``), one recovery on 401."""

    def __init__(self, engine: AuthEngine) -> None:
        self._engine = engine

    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response]:
        return bearer_flow(self._engine, request)

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        raise wrong_client("sync", "httpx2")
        yield request  # pragma: no cover - makes this an async generator


class AsyncEngineAuth2(httpx2.Auth):
    """Bearer auth from an :class:`AsyncAuthEngine` (``httpx2.AsyncClient``), one recovery."""

    def __init__(self, engine: AsyncAuthEngine) -> None:
        self._engine = engine

    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response]:
        raise wrong_client("async", "httpx2")
        yield request  # pragma: no cover - makes this a generator

    def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        return bearer_flow_async(self._engine, request)
