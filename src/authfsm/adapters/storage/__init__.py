"""Stores: where a shared credential lives (memory, file, OS keyring; codecs for file formats)."""

from __future__ import annotations

from ._codec import Codec, CodecError, NativeCodec
from ._codex import CodexCodec
from ._file import FileStore
from ._keyring import KeyringStore, SecretBackend
from ._memory import MemoryStore

__all__ = [
    "Codec",
    "CodecError",
    "CodexCodec",
    "FileStore",
    "KeyringStore",
    "MemoryStore",
    "NativeCodec",
    "SecretBackend",
]
