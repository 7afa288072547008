"""
Adapters: the I/O the engine drives. Stores (memory, file, OS keyring, Redis; codecs for the
native and Codex file formats) and the OAuth token endpoint (httpx).
"""

from __future__ import annotations

from ._endpoint import OAuthTokenEndpoint
from .storage import (
    AsyncRedisStore,
    Codec,
    CodecError,
    CodexCodec,
    FileStore,
    KeyringStore,
    MemoryStore,
    NativeCodec,
    RedisStore,
)

__all__ = [
    "AsyncRedisStore",
    "Codec",
    "CodecError",
    "CodexCodec",
    "FileStore",
    "KeyringStore",
    "MemoryStore",
    "NativeCodec",
    "OAuthTokenEndpoint",
    "RedisStore",
]
