"""
The two things :mod:`._perform_async` does that have no blocking spelling by mere unasync.

Each hook exists twice, ``name_async`` for asyncio and ``name`` for blocking I/O; the generator
(``scripts/unasync.py``) turns the first into the second in :mod:`._perform_sync`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["shielded", "shielded_async", "sleep", "sleep_async"]

T = TypeVar("T")


async def shielded_async(operation: Awaitable[T]) -> T:
    """Finish ``operation`` even if the awaiting task is cancelled (which still sees it)."""
    return await asyncio.shield(operation)


def shielded(value: T) -> T:
    """Blocking I/O has already finished by the time this is called: nothing to shield."""
    return value


sleep_async = asyncio.sleep
sleep = time.sleep
