"""
OpenTelemetry metrics for engines, fed from the events they already emit.

:class:`EngineMetrics` turns an engine's ``authfsm.*`` events into counters and histograms on the
OpenTelemetry metrics API, and reads two observable gauges (seconds until the credential expires,
the lifecycle state) from the engines it watches. Pass it as ``metrics=`` to ``AuthEngine`` or
``AsyncAuthEngine``; ``pip install 'authfsm[otel]'``.

This module imports ``opentelemetry`` only when an :class:`EngineMetrics` is made: the core keeps
no dependency on it, and an engine without ``metrics=`` measures nothing. Nothing here raises
into an engine: the engine's event log drops an observer's errors, and the gauges' callbacks
skip an engine they cannot read. Attributes are low-cardinality and never secret: the name you
give, the store's kind, the issuer's host, an outcome and an error type. Never a token, a
fingerprint or a subject.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from .states import State

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

    from .engine._events import EventObserver, ObservedEngine

__all__ = ["METRICS", "EngineMetrics"]

#: Every instrument: name -> (kind, unit, description). The names follow OpenTelemetry's rules:
#: dotted under ``authfsm``, durations in seconds, no ``_total`` (exporters add it).
METRICS: Final[Mapping[str, tuple[str, str, str]]] = {
    "authfsm.refresh.calls": (
        "counter",
        "{call}",
        "Refresh token grants sent, by outcome (success, transient, permanent) and error type.",
    ),
    "authfsm.refresh.duration": (
        "histogram",
        "s",
        "How long a refresh token grant took, from request to answer, by outcome.",
    ),
    "authfsm.refresh.adopted": (
        "counter",
        "{refresh}",
        "Refreshes avoided: a due credential replaced by the one a sibling wrote to the store.",
    ),
    "authfsm.poisoned": (
        "counter",
        "{credential}",
        "Credentials found dead at the token endpoint, counted once, by the engine that found it.",
    ),
    "authfsm.logged_out": (
        "counter",
        "{logout}",
        "Logouts made by this process (siblings that notice them do not count them again).",
    ),
    "authfsm.lease.wait.duration": (
        "histogram",
        "s",
        "How long a refresh waited for the store's lease, by outcome (acquired, adopted, timeout).",
    ),
    "authfsm.lease.timeouts": (
        "counter",
        "{timeout}",
        "Refreshes given up because another engine held the lease for the whole lease timeout.",
    ),
    "authfsm.write.conflicts": (
        "counter",
        "{conflict}",
        "Writes the store fenced off: the lease was lost and a sibling wrote meanwhile.",
    ),
    "authfsm.write.unreplicated": (
        "counter",
        "{write}",
        "Writes fewer replicas than min_replicas acknowledged in time (kept, written again).",
    ),
    "authfsm.http.unauthorized.recovered": (
        "counter",
        "{request}",
        "Rejected tokens (401) for which recover() found a token to retry with.",
    ),
    "authfsm.http.unauthorized.failed": (
        "counter",
        "{request}",
        "Rejected tokens (401) for which recover() found none, by error type.",
    ),
    "authfsm.credential.expires_in": (
        "gauge",
        "s",
        "Seconds until the access token an engine holds expires (negative: expired).",
    ),
    "authfsm.state": (
        "gauge",
        "1",
        "1 for the lifecycle state an engine is in, 0 for the others.",
    ),
}

# Seconds: a fast loopback answer to a lease held through a slow token endpoint.
_SECONDS_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A credential name is a label, chosen by the application: short, plain, never a path.
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# What an error type may look like; anything else (a long or odd code) is "_OTHER".
_ERROR_TYPE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")
# Adopted from these states, the engine held a due or rejected credential: a refresh avoided.
_WOULD_REFRESH: Final = frozenset({State.STALE.value, State.REFRESHING.value})


def _error_type(value: object) -> str:
    """A bounded error type: ``http_400:<server's code>`` keeps only the status."""
    if not isinstance(value, str):
        return "_OTHER"
    if value.startswith("http_"):
        value = value.split(":", 1)[0]
    return value if _ERROR_TYPE.fullmatch(value) else "_OTHER"


@functools.lru_cache(maxsize=64)
def _host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname or None
    except ValueError:
        return None


def _store_kind(store: object) -> str:
    """``FileStore`` -> ``file``; a wrapper such as ``BlockingStoreInLoop`` names what it wraps."""
    inner = getattr(store, "_store", None)
    if type(store).__name__ == "BlockingStoreInLoop" and inner is not None:
        store = inner
    name = type(store).__name__
    kind = name.removesuffix("Store") or name
    return kind.lower() if _NAME.fullmatch(kind) else "custom"


class _Instruments:
    """The instruments of one meter provider, shared by every EngineMetrics made on it."""

    def __init__(self, provider: MeterProvider) -> None:
        from . import __version__

        meter = provider.get_meter("authfsm", __version__)
        self.bindings: weakref.WeakSet[_Binding] = weakref.WeakSet()
        self.lock = threading.Lock()

        def counter(name: str) -> Any:
            _, unit, description = METRICS[name]
            return meter.create_counter(name, unit=unit, description=description)

        def histogram(name: str) -> Any:
            _, unit, description = METRICS[name]
            return meter.create_histogram(
                name,
                unit=unit,
                description=description,
                explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
            )

        def gauge(name: str, callback: Callable[[CallbackOptions], Iterable[Observation]]) -> Any:
            _, unit, description = METRICS[name]
            return meter.create_observable_gauge(
                name, callbacks=[callback], unit=unit, description=description
            )

        self.refresh_calls = counter("authfsm.refresh.calls")
        self.refresh_duration = histogram("authfsm.refresh.duration")
        self.refresh_adopted = counter("authfsm.refresh.adopted")
        self.poisoned = counter("authfsm.poisoned")
        self.logged_out = counter("authfsm.logged_out")
        self.lease_wait = histogram("authfsm.lease.wait.duration")
        self.lease_timeouts = counter("authfsm.lease.timeouts")
        self.write_conflicts = counter("authfsm.write.conflicts")
        self.unreplicated = counter("authfsm.write.unreplicated")
        self.recovered = counter("authfsm.http.unauthorized.recovered")
        self.unrecovered = counter("authfsm.http.unauthorized.failed")
        gauge("authfsm.credential.expires_in", self._expires_in)
        gauge("authfsm.state", self._states)

    def _expires_in(self, _options: CallbackOptions) -> Iterable[Observation]:
        # Engines of one credential in one process share attributes: report the token that
        # lives longest (an idle engine adopts it at its next call).
        longest: dict[tuple[tuple[str, str], ...], float] = {}
        for _, expires_in, attributes in self._readings():
            if expires_in is not None:
                key = tuple(attributes.items())
                longest[key] = max(expires_in, longest.get(key, -math.inf))
        return self._observations(longest)

    def _states(self, _options: CallbackOptions) -> Iterable[Observation]:
        # How many engines are in each state (1 and 0s for a single engine).
        engines: dict[tuple[tuple[str, str], ...], float] = {}
        for current, _, attributes in self._readings():
            for state in State:
                key = tuple({**attributes, "authfsm.state": state.value}.items())
                engines[key] = engines.get(key, 0) + (state is current)
        return self._observations(engines)

    def _readings(self) -> list[tuple[State, float | None, dict[str, str]]]:
        with self.lock:
            bindings = list(self.bindings)
        return [reading for reading in (b.reading() for b in bindings) if reading is not None]

    @staticmethod
    def _observations(values: Mapping[tuple[tuple[str, str], ...], float]) -> list[Observation]:
        from opentelemetry.metrics import Observation

        return [Observation(value, dict(key)) for key, value in values.items()]


_BY_PROVIDER: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
_BY_PROVIDER_LOCK = threading.Lock()


def _instruments(provider: MeterProvider) -> _Instruments:
    # OpenTelemetry keeps the first instrument made under a name (and its gauge callbacks):
    # every EngineMetrics on one provider must share them.
    with _BY_PROVIDER_LOCK:
        found = _BY_PROVIDER.get(provider)
        if found is None:
            found = _BY_PROVIDER[provider] = _Instruments(provider)
        return found


class EngineMetrics:
    """
    OpenTelemetry metrics for the engines it is given to (``metrics=`` of an engine).

    Args:
        meter_provider: where the instruments live (default: the global provider,
            ``opentelemetry.metrics.get_meter_provider()``).
        name: a short label for the credential (``authfsm.credential.name``), such as
            ``"api"``: letters, digits, ``_.-``, at most 64. Never a path or an account.

    One object may watch several engines of a process that share one credential; give each
    credential its own ``name``. Raises ``ModuleNotFoundError`` without ``opentelemetry-api``
    and ``ValueError`` for a name that is not a short label.
    """

    def __init__(
        self, meter_provider: MeterProvider | None = None, *, name: str = "default"
    ) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                "name must be a short label (letters, digits, '_', '.', '-'; at most 64), "
                "such as 'api'; not a path or an account"
            )
        from opentelemetry import metrics

        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        self.name = name
        self._instruments = _instruments(provider)

    def attach(
        self,
        engine: ObservedEngine,
        *,
        store: object,
        endpoint: object,
        clock: Callable[[], float],
    ) -> EventObserver:
        """Start watching ``engine`` (the engine's constructor calls this); never raises."""
        token_url = getattr(endpoint, "token_url", None)
        binding = _Binding(
            self._instruments,
            engine,
            name=self.name,
            store_kind=_store_kind(store),
            endpoint_host=_host(token_url) if isinstance(token_url, str) else None,
            clock=clock,
        )
        with self._instruments.lock:
            self._instruments.bindings.add(binding)
        return binding

    def __repr__(self) -> str:
        return f"<EngineMetrics name={self.name!r}>"


class _Binding:
    """One engine watched by one EngineMetrics: receives its events."""

    __slots__ = ("__weakref__", "_base", "_endpoint_host", "_on", "clock", "engine")

    def __init__(
        self,
        instruments: _Instruments,
        engine: ObservedEngine,
        *,
        name: str,
        store_kind: str,
        endpoint_host: str | None,
        clock: Callable[[], float],
    ) -> None:
        self.engine = engine
        self.clock = clock
        self._endpoint_host = endpoint_host
        self._base = {"authfsm.credential.name": name, "authfsm.store.kind": store_kind}
        self._on: dict[str, Callable[[Mapping[str, Any]], None]] = _handlers(instruments, self)

    def reading(self) -> tuple[State, float | None, dict[str, str]] | None:
        """The engine's state, seconds until its token expires, attributes; None if unreadable."""
        try:
            cred = self.engine.credentials
            expires_at = cred.expires_at if cred is not None else None
            expires_in = None if expires_at is None else expires_at.timestamp() - self.clock()
            return self.engine.state, expires_in, self.attributes()
        except Exception:  # noqa: BLE001 - a gauge skips an engine it cannot read (mid-build)
            return None

    def attributes(self) -> dict[str, str]:
        """The attributes every measurement of this engine carries."""
        cred = self.engine.credentials
        issuer = cred.issuer if cred is not None else None
        host = (_host(issuer) if issuer else None) or self._endpoint_host
        return self._base if host is None else {**self._base, "server.address": host}

    def __call__(self, event: str, fields: Mapping[str, Any]) -> None:
        handler = self._on.get(event)
        if handler is None:
            return
        try:
            handler(fields)
        except Exception:  # noqa: BLE001 - metrics never break the engine (EventLog agrees)
            return


def _handlers(
    instruments: _Instruments, binding: _Binding
) -> dict[str, Callable[[Mapping[str, Any]], None]]:
    """What each event adds to which instrument."""
    on = instruments
    at = binding.attributes

    def refresh_answered(fields: Mapping[str, Any]) -> None:
        outcome = str(fields.get("outcome"))
        attributes = {**at(), "authfsm.outcome": outcome}
        on.refresh_duration.record(float(fields["duration"]), attributes)
        if outcome != "success":
            attributes["error.type"] = _error_type(fields.get("error"))
        on.refresh_calls.add(1, attributes)

    def refresh_adopted(fields: Mapping[str, Any]) -> None:
        if fields.get("from_state") in _WOULD_REFRESH:
            on.refresh_adopted.add(1, at())

    def poisoned(fields: Mapping[str, Any]) -> None:
        on.poisoned.add(1, {**at(), "error.type": _error_type(fields.get("code"))})

    def logged_out(_fields: Mapping[str, Any]) -> None:
        on.logged_out.add(1, at())

    def lease_waited(fields: Mapping[str, Any]) -> None:
        outcome = str(fields.get("outcome"))
        on.lease_wait.record(float(fields["duration"]), {**at(), "authfsm.outcome": outcome})

    def lease_timeout(fields: Mapping[str, Any]) -> None:
        attributes = at()
        on.lease_wait.record(
            float(fields["duration"]), {**attributes, "authfsm.outcome": "timeout"}
        )
        on.lease_timeouts.add(1, attributes)

    def fenced(_fields: Mapping[str, Any]) -> None:
        on.write_conflicts.add(1, at())

    def write_failed(fields: Mapping[str, Any]) -> None:
        if fields.get("reason") == "write_conflict":
            on.write_conflicts.add(1, at())

    def unreplicated(_fields: Mapping[str, Any]) -> None:
        on.unreplicated.add(1, at())

    def recovered(_fields: Mapping[str, Any]) -> None:
        on.recovered.add(1, at())

    def unrecovered(fields: Mapping[str, Any]) -> None:
        on.unrecovered.add(1, {**at(), "error.type": _error_type(fields.get("reason"))})

    return {
        "authfsm.refresh.answered": refresh_answered,
        "authfsm.refresh.adopted": refresh_adopted,
        "authfsm.refresh.poisoned": poisoned,
        "authfsm.logged_out": logged_out,
        "authfsm.lease.waited": lease_waited,
        "authfsm.lease.timeout": lease_timeout,
        "authfsm.store.fenced": fenced,
        "authfsm.store.write_failed": write_failed,
        "authfsm.store.unreplicated": unreplicated,
        "authfsm.recover.succeeded": recovered,
        "authfsm.recover.failed": unrecovered,
    }
