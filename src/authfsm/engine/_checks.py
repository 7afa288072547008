"""
Checks of what an engine is built from, done once at construction.

A path string where a store belongs, a URL where an endpoint belongs, an async store in the sync
engine: each would otherwise fail deep inside the first refresh as an ``AttributeError``. Here
it fails at once with an :class:`EngineMisuse` that says what to pass instead.
"""

from __future__ import annotations

import inspect

from ._errors import EngineMisuse
from ._policy import Policy

__all__ = ["check_endpoint", "check_policy", "check_store"]

_STORE_METHODS = ("read", "write", "delete", "lease")


def _kind(value: object) -> str:
    return type(value).__name__


def _is_async(value: object, name: str) -> bool:
    return inspect.iscoroutinefunction(getattr(value, name, None))


def check_store(store: object, *, asynchronous: bool) -> None:
    """Refuse anything that is not a store the engine can drive."""
    if isinstance(store, str | bytes) or hasattr(store, "__fspath__"):
        raise EngineMisuse(
            f"store must be a store object, not a path ({_kind(store)}); wrap it: FileStore(path)."
        )
    missing = [name for name in _STORE_METHODS if not callable(getattr(store, name, None))]
    if missing or not hasattr(store, "location"):
        raise EngineMisuse(
            f"store must be a store (FileStore, MemoryStore, KeyringStore, RedisStore, ...); "
            f"{_kind(store)} has no {', '.join(missing) or 'location'}."
        )
    if not asynchronous and _is_async(store, "read"):
        raise EngineMisuse(
            f"{_kind(store)} is an asyncio store; use it with AsyncAuthEngine, or pass the "
            "blocking store to AuthEngine."
        )


def check_endpoint(endpoint: object, *, asynchronous: bool) -> None:
    """Refuse anything that is not a token endpoint of the engine's kind (None is allowed)."""
    if endpoint is None:
        return
    if isinstance(endpoint, str | bytes):
        raise EngineMisuse(
            "endpoint must be a token endpoint, not a URL string; "
            "use OAuthTokenEndpoint(url, client_id=...)."
        )
    if asynchronous:
        if not (_is_async(endpoint, "refresh_async") and _is_async(endpoint, "revoke_async")):
            raise EngineMisuse(
                f"{_kind(endpoint)} has no coroutine refresh_async/revoke_async; AsyncAuthEngine "
                "needs an asyncio endpoint such as OAuthTokenEndpoint."
            )
        return
    refresh, revoke = getattr(endpoint, "refresh", None), getattr(endpoint, "revoke", None)
    if not (callable(refresh) and callable(revoke)):
        raise EngineMisuse(
            f"{_kind(endpoint)} has no refresh/revoke methods; AuthEngine needs a token "
            "endpoint such as OAuthTokenEndpoint."
        )
    if _is_async(endpoint, "refresh"):
        raise EngineMisuse(
            f"{_kind(endpoint)}.refresh is a coroutine; use it with AsyncAuthEngine."
        )


def check_policy(policy: object) -> None:
    """Refuse anything but a :class:`Policy` (or None for the default)."""
    if policy is not None and not isinstance(policy, Policy):
        raise EngineMisuse(f"policy must be a Policy, not {_kind(policy)}.")
