"""Stores: where a shared credential lives (memory, file, OS keyring, Redis) and file codecs."""

from __future__ import annotations

from ._codec import Codec, CodecError, NativeCodec
from ._codex import CodexCodec
from ._file import FileStore
from ._keyring import KeyringStore, SecretBackend
from ._memory import MemoryStore
from ._redis import AsyncRedisStore, RedisStore

__all__ = [
    "AsyncRedisStore",
    "Codec",
    "CodecError",
    "CodexCodec",
    "FileStore",
    "KeyringStore",
    "MemoryStore",
    "NativeCodec",
    "RedisStore",
    "SecretBackend",
]
