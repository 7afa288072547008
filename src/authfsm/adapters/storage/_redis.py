"""
The Redis stores: :class:`RedisStore` (blocking) and :class:`AsyncRedisStore` (asyncio).

One design in several modules, each owning one part:

- ``_redis_async.py``: AsyncRedisStore, the hand-written source of both stores;
- ``_redis_sync.py``: RedisStore, generated from it by ``scripts/unasync.py`` (never edited);
- ``_redis_release_async.py`` / ``_redis_release_sync.py``: waking followers on a release
  (the second generated from the first);
- ``_redis_tasks.py`` / ``_redis_threads.py``: the hand-written part that differs (lease
  renewal by a task per lease or one thread per process, interruptions, waiting primitives);
- ``_redis_layout.py``: keys, Lua scripts, judging replies, replica counts (no I/O);
- ``_redis_clients.py``: clients made from a URL, Sentinel or Redis Cluster nodes, and their
  password-free descriptions.

redis-py is imported only when a store is made, so authfsm works without the ``redis`` extra.
"""

from __future__ import annotations

from ._redis_async import AsyncRedisStore
from ._redis_sync import RedisStore

__all__ = ["AsyncRedisStore", "RedisStore"]
