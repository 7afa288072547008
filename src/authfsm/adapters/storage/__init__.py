"""Stores: where a shared credential lives (memory, file, OS keyring, Redis) and file codecs."""

from __future__ import annotations

from ._codec import Codec, CodecError, NativeCodec
from ._codex import CodexCodec
from ._encryption import (
    CannotDecrypt,
    EncryptedCodec,
    Rotation,
    SealedHeader,
    arotate_key,
    read_sealed_header,
    rotate_key,
)
from ._file import FileStore
from ._keyring import KeyringStore, SecretBackend
from ._keys import DataKey, KeyConfigurationError, KeyRing, KeyUnavailable, generate_key
from ._memory import MemoryStore
from ._redis import AsyncRedisStore, RedisStore

__all__ = [
    "AsyncRedisStore",
    "CannotDecrypt",
    "Codec",
    "CodecError",
    "CodexCodec",
    "DataKey",
    "EncryptedCodec",
    "FileStore",
    "KeyConfigurationError",
    "KeyRing",
    "KeyUnavailable",
    "KeyringStore",
    "MemoryStore",
    "NativeCodec",
    "RedisStore",
    "Rotation",
    "SealedHeader",
    "SecretBackend",
    "arotate_key",
    "generate_key",
    "read_sealed_header",
    "rotate_key",
]
