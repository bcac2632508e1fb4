"""Single-flight (stampede protection) across threads, asyncio tasks and processes.

When many workers miss on the same key at once, one of them (the *leader*) computes
the value while the others (*followers*) wait for it. Coordination lives in Valkey, so
it works across processes and machines:

1. ``GET key``; a value is a hit. Otherwise ``SET lease token NX PX lease_ttl``: whoever
   sets the lease leads. Both happen in one Lua script, so a miss costs one round trip.
2. The leader computes, then stores the value (``SET key value PX ttl``) and deletes its
   own lease (compare-and-delete on the token) in one more script call.
3. Followers poll the same script with a short exponential backoff (10 ms doubling up
   to 200 ms). They return the leader's value as soon as it appears; if the lease is
   gone without a value (the leader crashed and its lease expired) one of them takes
   the lease and computes. A leader whose result is not cacheable (an error) or whose
   compute raised leaves a short-lived marker instead of its lease, and followers then
   compute at once, in parallel, rather than queueing for the lease one by one.
4. A follower that has waited ``wait_timeout`` seconds computes on its own.
5. Fail open: on a server error the caller computes without coordination. The flows
   are plans run by the fail-open executor (``_failopen``), so the server's breaker,
   the latency budget and error accounting are the same as every cache's.

The lease key is derived from the value key (:func:`langgraph_valkey_cache._keys.lease_key`)
so both sit in one cluster slot and the scripts work on a cluster.

Two entry points, each in a sync (:class:`SingleFlight`, valkey-py client) and an async
(:class:`AsyncSingleFlight`, ``valkey.asyncio`` client) form with identical behaviour:

* ``run(key, compute, ttl=..., decode=...)`` for values stored as one string key (the
  fast path: hit = 1 round trip, leader miss = 2). ``compute()`` returns
  ``(value, payload)``; ``payload`` is the bytes to cache or ``None`` for "don't cache
  this one" (errors, side effects). ``decode(raw)`` turns cached bytes back into a value.
* ``call(lease_key, lookup, compute, store)`` for any other layout (a hash, several
  keys): you bring ``lookup()`` and ``store(value)`` as *plans* (generators yielding
  ``_failopen`` steps, e.g. ``Cmd(("HGET", key, field))``); single-flight only manages
  the lease.

Both return a :class:`Flight` with the value and an ``outcome``: ``"hit"`` (found in the
cache), ``"leader"`` (computed here and shared), ``"follower"`` (waited for another
worker's value) or ``"fallback"`` (computed without coordination: timeout, server error
or an undecodable entry).

Example:
    ```python
    from langgraph_valkey_cache._client import client_from_url
    from langgraph_valkey_cache.cache.singleflight import SingleFlight

    sf = SingleFlight(client_from_url("valkey://localhost:6379"), lease_ttl=30, wait_timeout=10)

    def compute():
        value = expensive()
        return value, value.encode()  # (value, bytes to cache)

    flight = sf.run("myapp:answer", compute, ttl=60, decode=bytes.decode)
    flight.value, flight.outcome  # "...", "leader" the first time, "hit" afterwards
    ```

    The async form is the same with ``await`` and async ``compute``::

        sf = AsyncSingleFlight(client_from_url(url, asyncio=True))
        flight = await sf.run("myapp:answer", acompute, ttl=60, decode=bytes.decode)

The flows are written once as plans (:func:`flight_plan`, :func:`guarded_plan`); the
sync and async classes only hand them to an executor. Other caches reuse the pieces
(:func:`lease_step`, :func:`publish_step`) for their own flows (the node cache).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from langgraph_valkey_cache._client import CACHE_TIMEOUT
from langgraph_valkey_cache._failopen import (
    COMPUTE,
    CacheUnavailable,
    Executor,
    Plan,
    Script,
    Sleep,
)
from langgraph_valkey_cache._keys import lease_key
from langgraph_valkey_cache._scripts import SINGLE_FLIGHT_SCRIPTS
from langgraph_valkey_cache._telemetry import Telemetry

__all__ = [
    "AsyncSingleFlight",
    "Flight",
    "FlightOptions",
    "Outcome",
    "SingleFlight",
    "flight_plan",
    "guarded_plan",
    "lease_key",
    "lease_step",
    "lease_token",
    "publish_step",
]

T = TypeVar("T")
Outcome = Literal["hit", "leader", "follower", "fallback"]

#: The lease value a leader leaves for a moment when its result was not cacheable (an
#: error): callers that find it run at once instead of queueing for the lease one by one.
UNCACHEABLE = "~uncacheable"


@dataclass(frozen=True)
class Flight(Generic[T]):
    """What a single-flight call produced and how."""

    value: T
    outcome: Outcome

    @property
    def computed(self) -> bool:
        """True when ``compute`` ran in this call."""
        return self.outcome in ("leader", "fallback")


_token_prefix = os.urandom(8).hex()
_token_counter = itertools.count()


def _new_token_prefix() -> None:
    global _token_prefix
    _token_prefix = os.urandom(8).hex()


os.register_at_fork(after_in_child=_new_token_prefix)


def lease_token() -> str:
    """A token no other lease holder has: a random per-process prefix (new after a fork)
    plus a counter (``uuid4`` costs an ``os.urandom`` call on every miss)."""
    return f"{_token_prefix}{next(_token_counter):x}"


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


@dataclass(frozen=True)
class FlightOptions:
    """How long leases live and followers wait (seconds)."""

    lease_ttl: float = 30.0
    wait_timeout: float = 10.0
    poll_interval: float = 0.01
    max_poll_interval: float = 0.2
    uncacheable_hold: float = 1.0

    def __post_init__(self) -> None:
        if self.lease_ttl <= 0 or self.wait_timeout < 0 or self.poll_interval <= 0:
            raise ValueError("lease_ttl and poll_interval must be > 0, wait_timeout >= 0")

    def delays(self) -> Any:
        """Poll delays: ``poll_interval`` doubling up to ``max_poll_interval``."""
        delay = self.poll_interval
        while True:
            yield delay
            delay = min(delay * 2, max(self.max_poll_interval, self.poll_interval))


# --- steps other flows reuse ----------------------------------------------------------


def lease_step(key: str, token: str, lease_ms: int) -> Script:
    """GET ``key``, or take its lease. Reply ``[kind, value]``: 1 hit, 2 lease taken,
    0 someone else leads, 3 the last leader's result was not cacheable."""
    return Script(
        SINGLE_FLIGHT_SCRIPTS, "get_or_lease", (key, lease_key(key)), (token, lease_ms, UNCACHEABLE)
    )


def publish_step(
    key: str, payload: bytes | None, ttl_ms: int | None, token: str, hold_ms: int
) -> Script:
    """Store ``payload`` (None: leave the uncacheable marker) and drop our lease."""
    return Script(
        SINGLE_FLIGHT_SCRIPTS,
        "publish",
        (key, lease_key(key)),
        (
            "0" if payload is None else "1",
            payload or b"",
            "" if ttl_ms is None else ttl_ms,
            token,
            UNCACHEABLE,
            hold_ms,
        ),
    )


def _publish(
    key: str, payload: bytes | None, ttl_ms: int | None, token: str, opts: FlightOptions
) -> Plan:
    try:
        yield publish_step(key, payload, ttl_ms, token, _ms(opts.uncacheable_hold))
    except CacheUnavailable:
        pass


# --- the flows ---------------------------------------------------------------------------


def flight_plan(
    key: str,
    ttl: float | None,
    decode: Callable[[bytes], Any],
    opts: FlightOptions,
    payload_of: Callable[[Any], bytes | None] | None = None,
) -> Plan:
    """Get ``key`` or compute it once across all workers. ``COMPUTE`` must reply
    ``(value, payload)`` (``payload`` None: "don't cache this one"), or just the value
    when ``payload_of(value)`` makes the payload."""

    def computed(reply: Any) -> tuple[Any, bytes | None]:
        return (reply, payload_of(reply)) if payload_of is not None else reply

    token = lease_token()
    lease_ms = _ms(opts.lease_ttl)
    ttl_ms = None if ttl is None else _ms(ttl)
    deadline: float | None = None
    delays = opts.delays()
    first = True
    while True:
        try:
            kind, raw = yield lease_step(key, token, lease_ms)
        except CacheUnavailable:
            value, _ = computed((yield COMPUTE))
            return Flight(value, "fallback")
        kind = int(kind)
        if kind == 1:
            try:
                return Flight(decode(raw), "hit" if first else "follower")
            except Exception:  # a stale or foreign entry: recompute, overwrite
                value, payload = computed((yield COMPUTE))
                yield from _publish(key, payload, ttl_ms, token, opts)
                return Flight(value, "fallback")
        if kind == 2:
            try:
                value, payload = computed((yield COMPUTE))
            except BaseException:
                yield from _publish(key, None, ttl_ms, token, opts)
                raise
            yield from _publish(key, payload, ttl_ms, token, opts)
            return Flight(value, "leader")
        if kind == 3:
            value, payload = computed((yield COMPUTE))
            if payload is not None:
                yield from _publish(key, payload, ttl_ms, token, opts)
            return Flight(value, "fallback")
        first = False
        now = time.monotonic()
        if deadline is None:
            deadline = now + opts.wait_timeout
        if now >= deadline:  # the leader is slow: compute ourselves
            value, payload = computed((yield COMPUTE))
            yield from _publish(key, payload, ttl_ms, token, opts)
            return Flight(value, "fallback")
        yield Sleep(min(next(delays), deadline - now))


def guarded_plan(
    lease: str,
    lookup: Callable[[], Plan],
    store: Callable[[Any], Plan],
    opts: FlightOptions,
) -> Plan:
    """Single-flight around your own lookup and store plans (any data layout);
    ``COMPUTE`` replies the value."""
    token = lease_token()
    lease_ms = _ms(opts.lease_ttl)
    found = yield from lookup()
    if found is not None:
        return Flight(found, "hit")
    deadline = time.monotonic() + opts.wait_timeout
    delays = opts.delays()
    while True:
        try:
            acquired = yield Script(SINGLE_FLIGHT_SCRIPTS, "acquire", (lease,), (token, lease_ms))
        except CacheUnavailable:
            value = yield COMPUTE
            yield from store(value)
            return Flight(value, "fallback")
        if int(acquired):
            try:
                # the previous leader may have stored between our lookup and acquire
                found = yield from lookup()
                if found is None:
                    value = yield COMPUTE
                    yield from store(value)
            finally:
                try:
                    yield Script(SINGLE_FLIGHT_SCRIPTS, "release", (lease,), (token,))
                except CacheUnavailable:
                    pass
            if found is not None:
                return Flight(found, "follower")
            return Flight(value, "leader")
        now = time.monotonic()
        if now >= deadline:
            value = yield COMPUTE
            yield from store(value)
            return Flight(value, "fallback")
        yield Sleep(min(next(delays), deadline - now))
        found = yield from lookup()
        if found is not None:
            return Flight(found, "follower")


def _fallback_pair(computed: Any) -> Flight[Any]:
    return Flight(computed[0], "fallback")


def _fallback(computed: Any) -> Flight[Any]:
    return Flight(computed, "fallback")


# --- standalone use ---------------------------------------------------------------------


class _SingleFlightBase:
    def __init__(
        self,
        client: Any,
        *,
        lease_ttl: float = 30.0,
        wait_timeout: float = 10.0,
        poll_interval: float = 0.01,
        max_poll_interval: float = 0.2,
        uncacheable_hold: float = 1.0,
        telemetry: Telemetry | None = None,
        timeout: float | None = None,
    ) -> None:
        self.options = FlightOptions(
            lease_ttl, wait_timeout, poll_interval, max_poll_interval, uncacheable_hold
        )
        self.client = client
        self.executor = Executor(
            client,
            telemetry or Telemetry("single_flight", metrics=False),
            timeout=CACHE_TIMEOUT if timeout is None else timeout,
        )


class SingleFlight(_SingleFlightBase):
    """Single-flight on a sync valkey-py client (standalone or cluster).

    Args:
        client: a ``valkey.Valkey`` or ``valkey.cluster.ValkeyCluster``.
        lease_ttl: seconds a leader holds the lease; should exceed the compute time
            (a crashed leader blocks followers at most this long).
        wait_timeout: seconds a follower waits before computing itself.
        poll_interval: first poll delay in seconds (doubles up to ``max_poll_interval``).
        max_poll_interval: longest delay between polls.
        uncacheable_hold: seconds after an uncacheable result (or an exception) during
            which callers of the key compute at once instead of queueing for the lease.
        telemetry: where server errors are reported (the owning cache's).
        timeout: latency budget per server step (async: a deadline).

    Example:
        ```python
        sf = SingleFlight(client)
        flight = sf.run("app:k", lambda: ("v", b"v"), ttl=60, decode=bytes.decode)
        ```
    """

    def run(
        self,
        key: str,
        compute: Callable[[], tuple[T, bytes | None]],
        *,
        ttl: float | None,
        decode: Callable[[bytes], T],
    ) -> Flight[T]:
        """Get ``key`` or compute it once across all workers.

        Args:
            key: the value key (a string key; its lease goes in the same slot).
            compute: returns ``(value, payload)``; ``payload`` None means don't cache.
            ttl: seconds the cached payload lives (None: no expiry).
            decode: cached bytes -> value.
        """
        plan = flight_plan(key, ttl, decode, self.options)
        return self.executor.run(plan, "single_flight", compute=compute, fallback=_fallback_pair)

    def call(
        self,
        lease: str,
        lookup: Callable[[], Plan],
        compute: Callable[[], T],
        store: Callable[[T], Plan],
    ) -> Flight[T]:
        """Single-flight around your own lookup/store plans (any data layout).

        Args:
            lease: the lease key (e.g. ``lease_key(some_key)``).
            lookup: returns a plan whose result is the cached value or None.
            compute: computes the value.
            store: returns a plan that caches a computed value.
        """
        plan = guarded_plan(lease, lookup, store, self.options)
        return self.executor.run(plan, "single_flight", compute=compute, fallback=_fallback)


class AsyncSingleFlight(_SingleFlightBase):
    """Single-flight with async ``compute``; same arguments as :class:`SingleFlight`.

    Waiting uses ``asyncio.sleep``: nothing blocks the event loop. Given a sync client
    instead (a cache that only has one), each server step runs in a worker thread.

    Example:
        ```python
        sf = AsyncSingleFlight(async_client)

        async def compute():
            return "v", b"v"

        flight = await sf.run("app:k", compute, ttl=60, decode=bytes.decode)
        ```
    """

    async def run(
        self,
        key: str,
        compute: Callable[[], Awaitable[tuple[T, bytes | None]]],
        *,
        ttl: float | None,
        decode: Callable[[bytes], T],
    ) -> Flight[T]:
        """Async :meth:`SingleFlight.run`."""
        plan = flight_plan(key, ttl, decode, self.options)
        return await self.executor.arun(
            plan, "single_flight", compute=compute, fallback=_fallback_pair
        )

    async def call(
        self,
        lease: str,
        lookup: Callable[[], Plan],
        compute: Callable[[], Awaitable[T]],
        store: Callable[[T], Plan],
    ) -> Flight[T]:
        """Async :meth:`SingleFlight.call`."""
        plan = guarded_plan(lease, lookup, store, self.options)
        return await self.executor.arun(plan, "single_flight", compute=compute, fallback=_fallback)
