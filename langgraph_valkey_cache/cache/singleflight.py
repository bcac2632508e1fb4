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
5. Fail open: on a server error the caller computes without coordination, a warning
   is logged and an error metric counted. A :class:`~._failopen.Breaker` (shared with
   the owning cache) then skips the server for ``failure_cooldown`` seconds, so while
   it is down (or stalled: every command would wait for the socket timeout and the
   retries) calls run at once and the log gets one warning per cooldown, not one per call.

The lease key is derived from the value key (:func:`langgraph_valkey_cache._keys.lease_key`)
so both sit in one cluster slot and the scripts work on a cluster.

Two entry points, each in a sync (:class:`SingleFlight`, valkey-py client) and an async
(:class:`AsyncSingleFlight`, ``valkey.asyncio`` client) form with identical behaviour:

* ``run(key, compute, ttl=..., decode=...)`` for values stored as one string key (the
  fast path: hit = 1 round trip, leader miss = 2). ``compute()`` returns
  ``(value, payload)``; ``payload`` is the bytes to cache or ``None`` for "don't cache
  this one" (errors, side effects). ``decode(raw)`` turns cached bytes back into a value.
* ``call(lease_key, lookup, compute, store)`` for any other layout (a hash, several
  keys): you bring ``lookup() -> value | None`` and ``store(value)``; single-flight only
  manages the lease. ``lookup`` and ``store`` should be fail-open themselves.

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

The flows are written once as generators that yield I/O requests (a script call, a
sleep, "compute now", ...); the sync and async classes only execute those requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from langgraph_valkey_cache._client import is_async_client
from langgraph_valkey_cache._keys import lease_key as _lease_key
from langgraph_valkey_cache._scripts import ScriptRegistry
from langgraph_valkey_cache._telemetry import Telemetry
from langgraph_valkey_cache.cache._failopen import CACHE_ERRORS, Breaker

__all__ = [
    "AsyncSingleFlight",
    "Breaker",
    "Flight",
    "Outcome",
    "SingleFlight",
    "lease_key",
]

logger = logging.getLogger("langgraph_valkey_cache.cache")

T = TypeVar("T")
Outcome = Literal["hit", "leader", "follower", "fallback"]

lease_key = _lease_key

# The lease value a leader leaves for a moment when its result was not cacheable (an
# error): callers that find it run at once instead of queueing for the lease one by one.
_UNCACHEABLE = "~uncacheable"

# KEYS: value, lease. ARGV: token, lease ms, uncacheable marker.
# Reply {1, value}: hit. {2, ''}: lease taken, caller leads. {0, ''}: someone else leads.
# {3, ''}: the last leader's result was not cacheable, compute without waiting.
_GET_OR_LEASE = """
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, ''} end
if redis.call('GET', KEYS[2]) == ARGV[3] then return {3, ''} end
return {0, ''}
"""
# KEYS: value, lease. ARGV: store flag, value, ttl ms ('' = none), token, marker, marker ms.
# Stores the value (flag 1); the holder's lease is deleted, or (flag 0) replaced by the
# uncacheable marker for a short while.
_PUBLISH = """
if ARGV[1] == '1' then
  if ARGV[3] ~= '' then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  else
    redis.call('SET', KEYS[1], ARGV[2])
  end
end
if redis.call('GET', KEYS[2]) == ARGV[4] then
  if ARGV[1] == '1' then
    redis.call('DEL', KEYS[2])
  else
    redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6])
  end
end
return 1
"""
# KEYS: lease. ARGV: token, lease ms.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
# KEYS: lease. ARGV: token. Only the holder may delete its lease.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

SINGLE_FLIGHT_SCRIPTS = ScriptRegistry(
    {
        "get_or_lease": _GET_OR_LEASE,
        "publish": _PUBLISH,
        "acquire": _ACQUIRE,
        "release": _RELEASE,
    }
)


@dataclass(frozen=True)
class Flight(Generic[T]):
    """What a single-flight call produced and how."""

    value: T
    outcome: Outcome

    @property
    def computed(self) -> bool:
        """True when ``compute`` ran in this call."""
        return self.outcome in ("leader", "fallback")


# --- I/O requests yielded by the flows ----------------------------------------------


@dataclass(frozen=True)
class _Script:
    name: str
    keys: list[str]
    args: list[Any]


@dataclass(frozen=True)
class _Sleep:
    seconds: float


class _Compute:
    pass


class _Lookup:
    pass


@dataclass(frozen=True)
class _Store:
    value: Any


_COMPUTE = _Compute()
_LOOKUP = _Lookup()

Flow = Generator[Any, Any, "Flight[Any]"]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


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
        failure_cooldown: float = 5.0,
        breaker: Breaker | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        if lease_ttl <= 0 or wait_timeout < 0 or poll_interval <= 0:
            raise ValueError("lease_ttl and poll_interval must be > 0, wait_timeout >= 0")
        self.client = client
        self.lease_ttl = lease_ttl
        self.wait_timeout = wait_timeout
        self.poll_interval = poll_interval
        self.max_poll_interval = max(max_poll_interval, poll_interval)
        self._uncacheable_ms = _ms(uncacheable_hold)
        self.breaker = breaker or Breaker(failure_cooldown)
        self.telemetry = telemetry or Telemetry("single_flight", metrics=False)
        self._scripts = SINGLE_FLIGHT_SCRIPTS.bind(client)

    # The flows. Each yields requests and receives their results; a request that
    # failed is thrown back into the flow.

    def _run_flow(self, key: str, ttl: float | None, decode: Callable[[bytes], Any]) -> Flow:
        lk = _lease_key(key)
        token = uuid.uuid4().hex
        lease_ms = _ms(self.lease_ttl)
        ttl_arg = "" if ttl is None else _ms(ttl)
        deadline: float | None = None
        delay = self.poll_interval
        first = True
        if not self.breaker.closed:
            value, _ = yield _COMPUTE
            return Flight(value, "fallback")
        while True:
            try:
                kind, raw = yield _Script(
                    "get_or_lease", [key, lk], [token, lease_ms, _UNCACHEABLE]
                )
            except CACHE_ERRORS as exc:
                self.breaker.fail(self.telemetry, "lookup", exc)
                value, _ = yield _COMPUTE
                return Flight(value, "fallback")
            kind = int(kind)
            if kind == 1:
                try:
                    return Flight(decode(raw), "hit" if first else "follower")
                except Exception as exc:  # a stale or foreign entry: recompute, overwrite
                    logger.warning("undecodable cache entry, recomputing: %s", exc)
                    value, payload = yield _COMPUTE
                    yield from self._publish(key, lk, payload, ttl_arg, token)
                    return Flight(value, "fallback")
            if kind == 2:
                try:
                    value, payload = yield _COMPUTE
                except BaseException:
                    yield from self._publish(key, lk, None, ttl_arg, token)
                    raise
                yield from self._publish(key, lk, payload, ttl_arg, token)
                return Flight(value, "leader")
            if kind == 3:
                value, payload = yield _COMPUTE
                if payload is not None:
                    yield from self._publish(key, lk, payload, ttl_arg, token)
                return Flight(value, "fallback")
            first = False
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.wait_timeout
            if now >= deadline:
                logger.info("single-flight wait timed out after %.1fs", self.wait_timeout)
                value, payload = yield _COMPUTE
                yield from self._publish(key, lk, payload, ttl_arg, token)
                return Flight(value, "fallback")
            yield _Sleep(min(delay, deadline - now))
            delay = min(delay * 2, self.max_poll_interval)

    def _publish(
        self, key: str, lk: str, payload: bytes | None, ttl_arg: Any, token: str
    ) -> Generator[Any, Any, None]:
        flag = "0" if payload is None else "1"
        try:
            yield _Script(
                "publish",
                [key, lk],
                [flag, payload or b"", ttl_arg, token, _UNCACHEABLE, self._uncacheable_ms],
            )
        except CACHE_ERRORS as exc:
            self.breaker.fail(self.telemetry, "store", exc)

    def _release(self, lk: str, token: str) -> Generator[Any, Any, None]:
        try:
            yield _Script("release", [lk], [token])
        except CACHE_ERRORS as exc:
            self.breaker.fail(self.telemetry, "release", exc)

    def _call_flow(self, lk: str) -> Flow:
        token = uuid.uuid4().hex
        lease_ms = _ms(self.lease_ttl)
        if not self.breaker.closed:
            value = yield _COMPUTE
            return Flight(value, "fallback")
        found = yield _LOOKUP
        if found is not None:
            return Flight(found, "hit")
        deadline = time.monotonic() + self.wait_timeout
        delay = self.poll_interval
        while True:
            try:
                acquired = yield _Script("acquire", [lk], [token, lease_ms])
            except CACHE_ERRORS as exc:
                self.breaker.fail(self.telemetry, "lease", exc)
                value = yield _COMPUTE
                yield _Store(value)
                return Flight(value, "fallback")
            if int(acquired):
                try:
                    # the previous leader may have stored between our lookup and acquire
                    found = yield _LOOKUP
                    if found is None:
                        value = yield _COMPUTE
                        yield _Store(value)
                except BaseException:
                    yield from self._release(lk, token)
                    raise
                yield from self._release(lk, token)
                if found is not None:
                    return Flight(found, "follower")
                return Flight(value, "leader")
            now = time.monotonic()
            if now >= deadline:
                value = yield _COMPUTE
                yield _Store(value)
                return Flight(value, "fallback")
            yield _Sleep(min(delay, deadline - now))
            delay = min(delay * 2, self.max_poll_interval)
            found = yield _LOOKUP
            if found is not None:
                return Flight(found, "follower")


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
        failure_cooldown: seconds to skip the server after an error (0: never skip).
        breaker: a :class:`Breaker` shared with the owning cache (overrides
            ``failure_cooldown``).
        telemetry: where server errors are reported (the owning cache's).

    Example:
        ```python
        sf = SingleFlight(client)
        flight = sf.run("app:k", lambda: ("v", b"v"), ttl=60, decode=bytes.decode)
        ```
    """

    def _drive(
        self,
        flow: Flow,
        compute: Callable[[], Any],
        lookup: Callable[[], Any] | None = None,
        store: Callable[[Any], None] | None = None,
    ) -> Flight[Any]:
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = flow.throw(error) if error is not None else flow.send(reply)
            except StopIteration as stop:
                return stop.value
            reply, error = None, None
            try:
                if isinstance(op, _Script):
                    reply = self._scripts[op.name](keys=op.keys, args=op.args)
                elif isinstance(op, _Sleep):
                    time.sleep(op.seconds)
                elif isinstance(op, _Compute):
                    reply = compute()
                elif isinstance(op, _Lookup):
                    reply = lookup() if lookup else None
                elif isinstance(op, _Store):
                    if store:
                        store(op.value)
            except BaseException as exc:
                error = exc

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
        return self._drive(self._run_flow(key, ttl, decode), compute)

    def call(
        self,
        lease: str,
        lookup: Callable[[], T | None],
        compute: Callable[[], T],
        store: Callable[[T], None],
    ) -> Flight[T]:
        """Single-flight around your own lookup/store (any data layout).

        Args:
            lease: the lease key (e.g. ``lease_key(some_key)``).
            lookup: returns the cached value or None; should not raise on server errors.
            compute: computes the value.
            store: caches a computed value; should not raise on server errors.
        """
        return self._drive(self._call_flow(lease), compute, lookup, store)


def _threaded(script: Any) -> Callable[..., Awaitable[Any]]:
    async def call(**kwargs: Any) -> Any:
        return await asyncio.to_thread(script, **kwargs)

    return call


class AsyncSingleFlight(_SingleFlightBase):
    """Single-flight on a ``valkey.asyncio`` client; same arguments as :class:`SingleFlight`.

    ``compute``, ``lookup`` and ``store`` are async callables. Waiting uses
    ``asyncio.sleep``: nothing blocks the event loop. Given a sync client instead (a
    cache that only has one), each script call runs in a worker thread.

    Example:
        ```python
        sf = AsyncSingleFlight(async_client)

        async def compute():
            return "v", b"v"

        flight = await sf.run("app:k", compute, ttl=60, decode=bytes.decode)
        ```
    """

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        if not is_async_client(client):
            self._scripts = {name: _threaded(script) for name, script in self._scripts.items()}

    async def _drive(
        self,
        flow: Flow,
        compute: Callable[[], Awaitable[Any]],
        lookup: Callable[[], Awaitable[Any]] | None = None,
        store: Callable[[Any], Awaitable[None]] | None = None,
    ) -> Flight[Any]:
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = flow.throw(error) if error is not None else flow.send(reply)
            except StopIteration as stop:
                return stop.value
            reply, error = None, None
            try:
                if isinstance(op, _Script):
                    reply = await self._scripts[op.name](keys=op.keys, args=op.args)
                elif isinstance(op, _Sleep):
                    await asyncio.sleep(op.seconds)
                elif isinstance(op, _Compute):
                    reply = await compute()
                elif isinstance(op, _Lookup):
                    reply = await lookup() if lookup else None
                elif isinstance(op, _Store):
                    if store:
                        await store(op.value)
            except BaseException as exc:
                error = exc

    async def run(
        self,
        key: str,
        compute: Callable[[], Awaitable[tuple[T, bytes | None]]],
        *,
        ttl: float | None,
        decode: Callable[[bytes], T],
    ) -> Flight[T]:
        """Async :meth:`SingleFlight.run`."""
        return await self._drive(self._run_flow(key, ttl, decode), compute)

    async def call(
        self,
        lease: str,
        lookup: Callable[[], Awaitable[T | None]],
        compute: Callable[[], Awaitable[T]],
        store: Callable[[T], Awaitable[None]],
    ) -> Flight[T]:
        """Async :meth:`SingleFlight.call`."""
        return await self._drive(self._call_flow(lease), compute, lookup, store)
