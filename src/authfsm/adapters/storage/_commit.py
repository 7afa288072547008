"""
What a compare-and-swap store writes, given what it found: shared by the stores whose writes go
through one ``_commit(expected_revision, make)`` under their lock (``FileStore``,
``KeyringStore``). ``make(found_revision, current_record)`` returns the record to store.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ...engine._errors import WriteConflict
from ...engine._record import Record

__all__ = ["Make", "bumped", "unchanged"]

Make = Callable[[int | None, Record | None], Record]


def bumped(record: Record) -> Make:
    """``write()``: ``record`` at the revision after the one found."""
    return lambda found, _current: attrs.evolve(record, revision=(found or 0) + 1)


def unchanged(location: str, expected_revision: int) -> Make:
    """
    ``reseal()``: the stored record again as it is, revision included (re-encoded in the
    codec's current form); ``WriteConflict`` when the store is empty.
    """

    def same(found: int | None, current: Record | None) -> Record:
        if current is None:
            raise WriteConflict(location, expected_revision, found)
        return current

    return same
