"""
The store contract kit: one differential state machine that every store must pass.

:func:`check_store` drives a store and an in-memory reference model with the same random
sequence of ``read``, compare-and-swap ``write`` (with the right expected revision, with wrong
ones, with revisions remembered from earlier writes as a fenced lease holder would send them,
with tombstones and poison/backoff markers), ``delete`` and ``lease``, and compares the two
after every step. The lease must exclude every other holder: another handle, another thread,
and the same object from the holder's own thread (it is not re-entrant; ``write()`` and
``delete()`` inside it must still work). :class:`StoreContract` does the same as a test class
to subclass; :func:`check_async_store` runs an asyncio store through it.

This module owns the contract as executable checks; it must not need pytest (it is imported by
``authfsm.testing``), and Hypothesis is imported only when a check runs.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ..engine import (
    AsyncStore,
    Backoff,
    Credentials,
    Kind,
    LeaseTimeout,
    Poison,
    Record,
    Store,
    WriteConflict,
)

if TYPE_CHECKING:
    from hypothesis import settings as Settings  # noqa: N812 - the class, named as a type
    from hypothesis.stateful import RuleBasedStateMachine

__all__ = [
    "AsyncStoreInThread",
    "ContractViolation",
    "ReferenceStore",
    "StoreContract",
    "check_async_store",
    "check_store",
    "store_machine",
]

T = TypeVar("T")

#: How long a contender waits for a lease it must not get, and for one it must get.
_CONTENDER_JOIN = 10.0
_LEASE_TIMEOUT = 5.0


class ContractViolation(AssertionError):
    """A store answered differently from the reference model (the message says how)."""


def _expect(condition: bool, message: str) -> None:
    # Not ``assert``: the kit must keep checking under ``python -O``.
    if not condition:
        raise ContractViolation(message)


@attrs.define
class ReferenceStore:
    """
    The contract as a model: what every store must answer, with no I/O and no lease.

    A write succeeds only when the current revision is the expected one (None: empty) and
    stores the record with revision ``current + 1`` (1 when empty); a delete empties it, after
    which revisions start again at 1.
    """

    record: Record | None = None

    @property
    def revision(self) -> int | None:
        return self.record.revision if self.record is not None else None

    def write(self, record: Record, expected_revision: int | None) -> Record:
        if self.revision != expected_revision:
            raise WriteConflict("<reference>", expected_revision, self.revision)
        self.record = attrs.evolve(record, revision=(self.revision or 0) + 1)
        return self.record

    def delete(self, expected_revision: int | None) -> None:
        if self.revision != expected_revision:
            raise WriteConflict("<reference>", expected_revision, self.revision)
        self.record = None


class _Boom(Exception):
    """Raised inside a lease to check that an error releases it."""


def _attempt_lease(store: Store) -> bool:
    """One non-blocking attempt at the lease: True when it was free (and is given back)."""
    try:
        with store.lease(0):
            return True
    except LeaseTimeout:
        return False


def _attempt_from_another_thread(store: Store) -> bool:
    outcome: list[bool | BaseException] = []

    def attempt() -> None:
        try:
            outcome.append(_attempt_lease(store))
        except BaseException as error:  # noqa: BLE001 - reported by the checking thread
            outcome.append(error)

    thread = threading.Thread(target=attempt, name="authfsm-store-kit-contender", daemon=True)
    thread.start()
    thread.join(_CONTENDER_JOIN)
    _expect(not thread.is_alive(), f"lease(0) did not return within {_CONTENDER_JOIN:g} s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _close(store: object) -> None:
    close = getattr(store, "close", None)
    if callable(close):
        close()


def _require_hypothesis() -> None:
    try:
        import hypothesis  # noqa: F401 - only checking that it is there
    except ImportError:
        raise ImportError(
            "the store contract kit needs Hypothesis: pip install hypothesis"
        ) from None


def _strategies() -> Any:
    """The Hypothesis strategies for records (built on first use: Hypothesis is optional)."""
    from hypothesis import strategies as st

    # Any text that can be stored: no lone surrogates (Credentials refuses them).
    text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=24)
    # Any token Credentials accepts: no control characters, not only whitespace.
    tokens = st.text(
        st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=24
    ).filter(str.strip)
    zones = st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    )
    moments = st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=zones
    )
    finite = st.floats(allow_nan=False, allow_infinity=False)
    credentials = st.builds(
        Credentials,
        access_token=tokens,
        refresh_token=st.none() | tokens,
        id_token=st.none() | tokens,
        expires_at=st.none() | moments,
        account_id=st.none() | text,
        last_refresh=st.none() | moments,
        kind=st.sampled_from(Kind),
    )
    poison = st.builds(Poison, fingerprint=text, reason=text, at=finite)
    backoff = st.builds(
        Backoff,
        fingerprint=text,
        not_before=finite,
        failures=st.integers(min_value=-(2**63), max_value=2**63),
    )
    # credential=None is a tombstone (what logout writes): it must keep the revision counting.
    return st.builds(
        Record,
        credential=st.none() | credentials,
        poison=st.none() | poison,
        backoff=st.none() | backoff,
    )


def store_machine(
    factory: Callable[[], Store],
    *,
    contender: Callable[[Store], Store] | None = None,
    teardown: Callable[[Store], None] | None = None,
) -> type[RuleBasedStateMachine]:
    """
    The differential state machine for stores made by ``factory`` (each call: a new empty one).

    Args:
        factory: makes a new, empty store for each Hypothesis example.
        contender: makes a second handle on the same store (another ``FileStore`` on the same
            path, another ``RedisStore`` on the same key) to contend for the lease; by default
            the same object is tried from another thread.
        teardown: called with each store after its example (``close()`` is called if present).

    Run it with ``hypothesis.stateful.run_state_machine_as_test`` or through :func:`check_store`.
    """
    _require_hypothesis()
    from hypothesis import note
    from hypothesis import strategies as st
    from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

    records = _strategies()

    class StoreMachine(RuleBasedStateMachine):
        """Apply the same operations to the store and to the reference model; compare."""

        written = Bundle("written")

        def __init__(self) -> None:
            super().__init__()
            self.store = factory()
            self.other = contender(self.store) if contender is not None else None
            self.model = ReferenceStore()
            note(f"store: {self.store!r}")

        # -- reads -------------------------------------------------------------------------

        @invariant()
        def agrees_with_the_model(self) -> None:
            found = self.store.read()
            _expect(
                self.model.record == found,
                f"read() gave {found!r}, the model holds {self.model.record!r}",
            )

        # -- compare-and-swap --------------------------------------------------------------

        @rule(target=written, record=records)
        def write_expected(self, record: Record) -> Record:
            expected = self.model.revision
            stored = self.store.write(record, expected)
            model = self.model.write(record, expected)
            _expect(model == stored, f"write() returned {stored!r}, expected {model!r}")
            return stored

        @rule(record=records, data=st.data())
        def write_unexpected(self, record: Record, data: st.DataObject) -> None:
            current = self.model.revision
            wrong = data.draw(
                (st.none() | st.integers(min_value=-2, max_value=(current or 0) + 3)).filter(
                    lambda revision: revision != current
                ),
                label="wrong expected revision",
            )
            self._refused(lambda: self.store.write(record, wrong), f"write(..., {wrong!r})")

        @rule(old=written, record=records)
        def write_as_fenced_holder(self, old: Record, record: Record) -> None:
            """Write against a revision read earlier: refused unless nobody wrote since."""
            if old.revision == self.model.revision:
                self.write_expected(record)
            else:
                self._refused(
                    lambda: self.store.write(record, old.revision),
                    f"write(..., {old.revision}) after revision {self.model.revision}",
                )

        @rule(old=written)
        def replay_a_write(self, old: Record) -> None:
            """Send an earlier write again (a writer that never saw its reply): refused unless
            the store is back at the revision that write expected, even when the record it would
            store is byte for byte the one stored now."""
            expected = old.revision - 1 if old.revision > 1 else None
            again = attrs.evolve(old, revision=0)
            if expected == self.model.revision:
                self.write_expected(again)
            else:
                self._refused(
                    lambda: self.store.write(again, expected),
                    f"replayed write(..., {expected!r}) at revision {self.model.revision}",
                )

        @rule()
        def delete_expected(self) -> None:
            self.store.delete(self.model.revision)
            self.model.delete(self.model.revision)

        @rule(data=st.data())
        def delete_unexpected(self, data: st.DataObject) -> None:
            current = self.model.revision
            wrong = data.draw(
                (st.none() | st.integers(min_value=-2, max_value=(current or 0) + 3)).filter(
                    lambda revision: revision != current
                ),
                label="wrong expected revision",
            )
            self._refused(lambda: self.store.delete(wrong), f"delete({wrong!r})")

        # -- the lease ---------------------------------------------------------------------

        @rule(record=st.none() | records)
        def lease_excludes_others(self, record: Record | None) -> None:
            """
            Nobody else gets the lease while it is held, not even the holder's own object from
            the holder's own thread; a CAS write works inside it.

            Engines of one event loop share a thread and may share a store object: a lease
            that lets the same thread in twice lets two of them spend one refresh token.
            """
            with self.store.lease(_LEASE_TIMEOUT):
                _expect(not self._contend(), "a contender got the lease while it was held")
                _expect(
                    not _attempt_lease(self.store),
                    "lease(0) on the same store from the holder's thread got the lease while it "
                    "was held (a re-entrant lease lets two engines of one thread both refresh)",
                )
                if record is not None:
                    self.write_expected(record)
            _expect(self._contend(), "the lease was not free after it was released")

        @rule()
        def lease_released_by_an_error(self) -> None:
            with contextlib.suppress(_Boom), self.store.lease(_LEASE_TIMEOUT):
                raise _Boom
            _expect(self._contend(), "the lease stayed held after an error inside it")

        # -- helpers -----------------------------------------------------------------------

        def _refused(self, operation: Callable[[], object], what: str) -> None:
            try:
                operation()
            except WriteConflict:
                return
            raise ContractViolation(f"{what} was not refused with WriteConflict")

        def _contend(self) -> bool:
            if self.other is not None:
                return _attempt_lease(self.other)
            return _attempt_from_another_thread(self.store)

        def teardown(self) -> None:
            for store in {id(s): s for s in (self.store, self.other) if s is not None}.values():
                if teardown is not None:
                    teardown(store)
                _close(store)

    StoreMachine.__name__ = StoreMachine.__qualname__ = "StoreMachine"
    return StoreMachine


def _settings(settings: Settings | None) -> Settings:
    from hypothesis import HealthCheck
    from hypothesis import settings as make_settings

    if settings is not None:
        return settings
    # The loaded profile decides max_examples; stores are slow next to pure functions.
    return make_settings(
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def check_store(
    factory: Callable[[], Store],
    *,
    contender: Callable[[Store], Store] | None = None,
    teardown: Callable[[Store], None] | None = None,
    settings: Settings | None = None,
) -> None:
    """
    Check that the stores ``factory`` makes keep the Store contract; raise if one does not.

    ``factory`` must return a new, empty store on each call (a new file path, a new key). See
    :func:`store_machine` for ``contender`` and ``teardown``; ``settings`` are Hypothesis
    settings (default: the loaded profile, 30 steps, no deadline).
    """
    _require_hypothesis()
    from hypothesis.stateful import run_state_machine_as_test

    machine = store_machine(factory, contender=contender, teardown=teardown)
    run_state_machine_as_test(machine, settings=_settings(settings))


class AsyncStoreInThread:
    """
    A blocking facade over an asyncio store: its coroutines run on a private event loop thread.

    For checking an async store with :func:`check_store`, and for blocking code that must share
    an async store's client. The lease's async context (and any renewal task) lives on that
    loop. Call :meth:`close` when done; it closes the store too (``aclose()``) if it can.
    """

    def __init__(self, store: AsyncStore, *, timeout: float = 30.0) -> None:
        self._store = store
        self._timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="authfsm-async-store", daemon=True
        )
        self._thread.start()

    @property
    def inner(self) -> AsyncStore:
        return self._store

    @property
    def location(self) -> str:
        return self._store.location

    def read(self) -> Record | None:
        return self.run(self._store.read())

    def write(self, record: Record, expected_revision: int | None) -> Record:
        return self.run(self._store.write(record, expected_revision))

    def delete(self, expected_revision: int | None) -> None:
        self.run(self._store.delete(expected_revision))

    @contextlib.contextmanager
    def lease(self, timeout: float) -> Iterator[None]:
        manager = self._store.lease(timeout)
        self.run(manager.__aenter__())
        try:
            yield
        except BaseException as error:
            if not self.run(manager.__aexit__(type(error), error, error.__traceback__)):
                raise
        else:
            self.run(manager.__aexit__(None, None, None))

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        aclose = getattr(self._store, "aclose", None)
        if callable(aclose):
            with contextlib.suppress(Exception):
                self.run(aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=self._timeout)
        if not self._thread.is_alive():
            self._loop.close()

    def run(self, coroutine: Awaitable[T]) -> T:
        """Await ``coroutine`` on the store's loop and return its result (or raise its error)."""

        async def wrapped() -> T:
            return await coroutine

        future = asyncio.run_coroutine_threadsafe(wrapped(), self._loop)
        return future.result(timeout=self._timeout)

    def __repr__(self) -> str:
        return f"<AsyncStoreInThread {self._store!r}>"


def check_async_store(
    factory: Callable[[], AsyncStore],
    *,
    contender: Callable[[AsyncStore], AsyncStore] | None = None,
    teardown: Callable[[AsyncStore], Awaitable[None]] | None = None,
    settings: Settings | None = None,
) -> None:
    """
    :func:`check_store` for an asyncio store (``AsyncRedisStore``, your own).

    Each store runs on its own event loop thread (:class:`AsyncStoreInThread`); ``contender``
    and ``teardown`` take and return asyncio stores, ``teardown`` is awaited on that loop.
    """

    def make() -> Store:
        return AsyncStoreInThread(factory())

    def other(store: Store) -> Store:
        assert contender is not None
        assert isinstance(store, AsyncStoreInThread)
        return AsyncStoreInThread(contender(store.inner))

    def finish(store: Store) -> None:
        if teardown is not None and isinstance(store, AsyncStoreInThread):
            store.run(teardown(store.inner))

    check_store(
        make,
        contender=other if contender is not None else None,
        teardown=finish,
        settings=settings,
    )


class StoreContract(abc.ABC):
    """
    The store contract as a test class: subclass it, name it ``Test...``, define ``make_store``.

    pytest (or unittest-style runners that collect ``test_*`` methods) then runs the
    differential state machine against your store::

        class TestMyStore(StoreContract):
            def make_store(self) -> Store:
                return MyStore(...)  # a new, empty store each call
    """

    #: Hypothesis settings for the check (None: the loaded profile, 30 steps, no deadline).
    contract_settings: Settings | None = None

    @abc.abstractmethod
    def make_store(self) -> Store:
        """A new, empty store (each call)."""

    def make_contender(self, store: Store) -> Store | None:
        """
        Another handle on ``store`` to contend for its lease (override to use one; by default
        the same store is tried from another thread).
        """
        return None

    def test_store_contract(self) -> None:
        """The store agrees with the reference model after every step of random operations."""
        has_contender = type(self).make_contender is not StoreContract.make_contender

        def contender(store: Store) -> Store:
            other = self.make_contender(store)
            assert other is not None
            return other

        check_store(
            self.make_store,
            contender=contender if has_contender else None,
            settings=self.contract_settings,
        )
