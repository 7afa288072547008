"""
The two HTTP client families authfsm speaks, and what their integrations share.

``httpx`` is a core dependency and the default; ``httpx2`` (its maintained continuation, under a
new import name) is optional. Their classes are distinct: ``httpx2.Client(auth=...)`` refuses an
``httpx.Auth`` with ``TypeError``, and an ``httpx2.ConnectError`` is not an
``httpx.RequestError``. So this module owns the answers to "which family is this client" and
"which exceptions can an exchange raise", and the bearer flows both families' ``Auth`` classes
run, written once over the few request and response members the two share.

It must never import ``httpx2``: a client of that family exists only once its user has imported
it, so ``sys.modules`` is where to look. (An application that called ``httpx2.alias_httpx()``
before importing authfsm has one family under two names; everything here still holds.)
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator, Generator, MutableMapping
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias, TypeVar

import httpx

if TYPE_CHECKING:
    import httpx2

    from ._async import AsyncAuthEngine
    from ._sync import AuthEngine

    #: A blocking client of either family.
    SyncClient: TypeAlias = httpx.Client | httpx2.Client
    #: An asyncio client of either family.
    AsyncClient: TypeAlias = httpx.AsyncClient | httpx2.AsyncClient
    #: A streamed response of either family.
    AnyResponse: TypeAlias = httpx.Response | httpx2.Response

__all__ = [
    "Family",
    "bearer_flow",
    "bearer_flow_async",
    "family_of",
    "http_errors",
    "request_errors",
    "sync_client_family",
    "wrong_client",
]

Family = Literal["httpx", "httpx2"]

_UNAUTHORIZED = 401


def _loaded() -> dict[Family, object]:
    families: dict[Family, object] = {"httpx": httpx}
    module = sys.modules.get("httpx2")
    if module is not None and module is not httpx:
        families["httpx2"] = module
    return families


def _family_class(module: object, name: str) -> type | None:
    cls = getattr(module, name, None)
    return cls if isinstance(cls, type) else None


def family_of(
    client: object, *, kind: Literal["Client", "AsyncClient"] = "Client"
) -> Family | None:
    """``"httpx"`` or ``"httpx2"`` for a ``kind`` (``Client`` or ``AsyncClient``) of that family."""
    for family, module in _loaded().items():
        cls = _family_class(module, kind)
        if cls is not None and isinstance(client, cls):
            return family
    return None


def sync_client_family(client: object) -> Family:
    """The family of a blocking client; ``TypeError`` naming what to pass for anything else."""
    family = family_of(client)
    if family is None:
        raise TypeError(
            f"client must be an httpx.Client or httpx2.Client, not {type(client).__name__}"
            + (
                "; an AsyncClient goes to the *_async methods' client= argument"
                if family_of(client, kind="AsyncClient") is not None
                else ""
            )
        )
    return family


def _errors(name: str, also: tuple[type[BaseException], ...]) -> tuple[type[BaseException], ...]:
    # httpx's always (the body deadline raises httpx.ReadTimeout whatever the client), httpx2's
    # once loaded: an exchange on an httpx2 client raises those.
    errors: list[type[BaseException]] = []
    for module in _loaded().values():
        cls = _family_class(module, name)
        if cls is not None and issubclass(cls, Exception):
            errors.append(cls)
    return (*errors, *also)


def request_errors(*also: type[BaseException]) -> tuple[type[BaseException], ...]:
    """``RequestError`` of each loaded family (what a failed exchange raises), then ``also``."""
    return _errors("RequestError", also)


def http_errors(*also: type[BaseException]) -> tuple[type[BaseException], ...]:
    """``HTTPError`` of each loaded family (request and status errors), then ``also``."""
    return _errors("HTTPError", also)


# -- the bearer flows both families' Auth classes run -----------------------------------------


class _Request(Protocol):
    @property
    def headers(self) -> MutableMapping[str, str]: ...

    def read(self) -> bytes: ...

    async def aread(self) -> bytes: ...


class _Response(Protocol):
    @property
    def status_code(self) -> int: ...


RequestT = TypeVar("RequestT", bound=_Request)


def bearer_flow(engine: AuthEngine, request: RequestT) -> Generator[RequestT, _Response, None]:
    """
    Send ``request`` with the engine's token; on a 401, ``recover`` that token and send once more.

    The body is read before the first send so that a streamed one is re-sent intact on the
    retry: the family's own ``requires_request_body`` does this only when ``auth_flow`` is not
    overridden, and ``sync_auth_flow`` must be, because the engine does I/O and takes locks.
    """
    request.read()
    token = engine.access_token()
    request.headers["Authorization"] = f"Bearer {token}"
    response = yield request
    if response.status_code != _UNAUTHORIZED:
        return
    request.headers["Authorization"] = f"Bearer {engine.recover(token)}"
    yield request


async def bearer_flow_async(
    engine: AsyncAuthEngine, request: RequestT
) -> AsyncGenerator[RequestT, _Response]:
    """:func:`bearer_flow` for an :class:`AsyncAuthEngine` and an ``AsyncClient``."""
    await request.aread()
    token = await engine.access_token()
    request.headers["Authorization"] = f"Bearer {token}"
    response = yield request
    if response.status_code != _UNAUTHORIZED:
        return
    request.headers["Authorization"] = f"Bearer {await engine.recover(token)}"
    yield request


def wrong_client(engine: Literal["sync", "async"], family: Family) -> RuntimeError:
    """The error an engine's auth raises when driven by the other kind of client."""
    method = f"{family}_auth"
    if engine == "sync":
        return RuntimeError(
            f"AuthEngine.{method}() blocks on I/O and cannot drive an {family}.AsyncClient; "
            f"use AsyncAuthEngine.{method}() there."
        )
    return RuntimeError(
        f"AsyncAuthEngine.{method}() needs an {family}.AsyncClient; "
        f"use AuthEngine.{method}() with {family}.Client."
    )
