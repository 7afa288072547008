"""Stores: where a shared credential lives (memory, file; codecs for file formats)."""

from __future__ import annotations

from ._codec import Codec, CodecError, NativeCodec
from ._file import FileStore
from ._memory import MemoryStore

__all__ = ["Codec", "CodecError", "FileStore", "MemoryStore", "NativeCodec"]
