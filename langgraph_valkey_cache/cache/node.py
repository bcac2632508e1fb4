"""``ValkeyNodeCache``: LangGraph's node cache (``BaseCache``) on Valkey.

With ``single_flight=True``, a miss in ``get`` takes a lease on the entry (one script
call per missing key) that the matching ``set`` releases: concurrent runs of the same
node on the same input in other processes wait for that value instead of computing it
again (see :mod:`.singleflight`; a node that fails leaves its lease to expire, and
waiters give up after ``wait_timeout``).

Budget: ``get``/``aget`` is one ``MGET`` (one round trip per cluster node holding a key),
``set``/``aset`` one ``SET key value PX ttl`` per entry (several entries go in one
pipeline), ``clear`` SCANs this cache's prefix (per primary on a cluster) with an escaped
pattern and ``UNLINK``s in batches. Values are the injected serde's ``(type, bytes)``
packed raw (no base64, no JSON wrapper).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import Any

from langgraph.cache.base import BaseCache, FullKey, Namespace, ValueT
from langgraph.checkpoint.serde.base import SerializerProtocol
from prometheus_client import CollectorRegistry

from langgraph_valkey_cache._client import ascan_keys, is_async_client, is_cluster, scan_keys
from langgraph_valkey_cache._keys import NodeCacheKeys, lease_key
from langgraph_valkey_cache._plans import arun_plan, run_plan
from langgraph_valkey_cache._serde import default_serde, dumps_checked, pack_typed, unpack_typed
from langgraph_valkey_cache._stats import SharedStats, SharedStatsMixin
from langgraph_valkey_cache._telemetry import Telemetry
from langgraph_valkey_cache.cache._failopen import CACHE_ERRORS, Breaker
from langgraph_valkey_cache.cache.singleflight import _UNCACHEABLE, SINGLE_FLIGHT_SCRIPTS

__all__ = ["ValkeyNodeCache"]

logger = logging.getLogger("langgraph_valkey_cache.cache")

_DELETE_BATCH = 500


def _batches(keys: Iterable[Any], size: int = _DELETE_BATCH) -> Iterable[list[Any]]:
    batch: list[Any] = []
    for key in keys:
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class ValkeyNodeCache(SharedStatsMixin, BaseCache[ValueT]):
    """LangGraph node cache on Valkey (standalone or cluster, sync or async client).

    Pass it to ``compile(cache=...)`` and give nodes a ``CachePolicy``; behaves like
    LangGraph's ``InMemoryCache`` (per-entry TTL in seconds, ``graph.clear_cache()``
    by node namespace) but is shared by every process using the server.

    Args:
        client: a sync (``valkey.Valkey``/``ValkeyCluster``) or async (``valkey.asyncio``)
            client. Never reconfigured.
        aclient: an async client to use for the ``a*`` methods next to a sync ``client``.
            With no async client the ``a*`` methods run the sync ones in a worker
            thread (the event loop never blocks); with only an async client, the sync
            methods raise ``TypeError``.
        prefix: key prefix of this cache (ACL users can be confined to ``prefix*``).
        serde: serializer; default strict ``JsonPlusSerializer`` (no pickle, no
            arbitrary module revival).
        failure_cooldown: after a server error, seconds during which ``get``/``set``
            skip the server (misses, no timeouts; one warning per cooldown).
        single_flight: coordinate concurrent misses of one entry across processes:
            the first run computes, the others wait for its ``set``.
        lease_ttl: seconds a miss holds its lease (should exceed the node's run time).
        wait_timeout: seconds a waiting ``get`` waits before reporting a miss.
        metrics: ``False`` to disable Prometheus metrics, or a registry.
        stats_flush_interval: seconds between flushes of this process's hit/miss counts
            to the ``<prefix>:stats`` hash every process adds to (see :meth:`stats`).

    Server errors in ``get``/``set`` are misses (warning + error metric: the node runs);
    ``clear`` raises, since a failed invalidation must not go unnoticed.

    Example:
        ```python
        from langgraph.graph import StateGraph
        from langgraph.types import CachePolicy
        from langgraph_valkey_cache import ValkeyNodeCache, client_from_url

        builder = StateGraph(State)
        builder.add_node("expensive", expensive, cache_policy=CachePolicy(ttl=120))
        ...
        graph = builder.compile(cache=ValkeyNodeCache(client_from_url("valkey://localhost:6379")))
        graph.invoke({"x": 1})  # runs `expensive`
        graph.invoke({"x": 1})  # served from Valkey
        graph.clear_cache()
        ```
    """

    def __init__(
        self,
        client: Any,
        *,
        aclient: Any | None = None,
        prefix: str = "lgv:node",
        serde: SerializerProtocol | None = None,
        failure_cooldown: float = 5.0,
        single_flight: bool = False,
        lease_ttl: float = 30.0,
        wait_timeout: float = 10.0,
        metrics: bool | CollectorRegistry = True,
        stats_flush_interval: float = 1.0,
    ) -> None:
        super().__init__(serde=serde or default_serde())
        if is_async_client(client):
            if aclient is not None:
                raise TypeError("client is async already; pass a sync client with aclient=")
            self.client, self.aclient = None, client
        else:
            if aclient is not None and not is_async_client(aclient):
                raise TypeError("aclient must be a valkey.asyncio client")
            self.client, self.aclient = client, aclient
        self.keys = NodeCacheKeys(prefix)
        self.telemetry = Telemetry("node_cache", metrics=metrics)
        self.breaker = Breaker(failure_cooldown)
        self.shared_stats = SharedStats(
            self.client,
            self.keys.stats(),
            aclient=self.aclient,
            flush_interval=stats_flush_interval,
            breaker=self.breaker,
            telemetry=self.telemetry,
        )
        self.single_flight = single_flight
        self.lease_ttl = lease_ttl
        self.wait_timeout = wait_timeout
        # entry key -> (lease token, taken at): leases this process holds until `set`
        self._held: dict[str, tuple[str, float]] = {}
        self._held_lock = threading.Lock()

    # --- pure helpers (shared by sync and async) ---------------------------------------

    def _redis_keys(self, keys: Sequence[FullKey]) -> list[str]:
        return [self.keys.entry(tuple(ns), key) for ns, key in keys]

    def _decode(self, keys: Sequence[FullKey], raws: Sequence[Any]) -> dict[FullKey, ValueT]:
        out: dict[FullKey, ValueT] = {}
        for (ns, key), raw in zip(keys, raws, strict=True):
            if raw is None:
                continue
            try:
                out[(tuple(ns), key)] = self.serde.loads_typed(unpack_typed(raw))
            except Exception as exc:  # a foreign or stale entry is a miss, not a crash
                logger.warning("node cache: undecodable entry treated as a miss: %s", exc)
        self.telemetry.result("hit", len(out))
        self.telemetry.result("miss", len(keys) - len(out))
        self.shared_stats.record(hits=len(out), misses=len(keys) - len(out))
        return out

    def _skipped(self, n: int) -> dict[FullKey, ValueT]:
        """Misses answered without the server (the breaker is open)."""
        self.telemetry.result("miss", n)
        self.shared_stats.record(misses=n)
        return {}

    def _failed(self, operation: str, exc: BaseException, lookups: int = 0) -> None:
        self.breaker.fail(self.telemetry, operation, exc)
        self.shared_stats.record(errors=1, misses=lookups)

    def _encode(
        self, pairs: Mapping[FullKey, tuple[ValueT, int | None]]
    ) -> list[tuple[str, bytes, int | None]]:
        entries = []
        for (ns, key), (value, ttl) in pairs.items():
            data = pack_typed(dumps_checked(self.serde, value, "node cache value"))
            px = None if ttl is None else max(1, int(ttl * 1000))
            entries.append((self.keys.entry(tuple(ns), key), data, px))
        self.telemetry.stored(sum(len(d) for _, d, _ in entries))
        return entries

    def _patterns(self, namespaces: Sequence[Namespace] | None) -> list[str]:
        if namespaces is None:
            return [self.keys.all_pattern()]
        return [self.keys.namespace_pattern(tuple(ns)) for ns in namespaces]

    def _claim_flow(self, misses: list[str]) -> Generator[Any, Any, dict[str, bytes]]:
        """Single-flight for missing entries: lease them, or wait for their leader.

        Yields ``(script name, keys, args)`` or a float (seconds to sleep); returns the
        values that appeared while waiting.
        """
        now = time.monotonic()
        lease_ms = max(1, int(self.lease_ttl * 1000))
        with self._held_lock:  # forget leases of runs that never called `set` (failed)
            for rk in [k for k, (_, at) in self._held.items() if now - at > self.lease_ttl]:
                del self._held[rk]
        found: dict[str, bytes] = {}
        waiting = list(misses)
        deadline = now + self.wait_timeout
        delay = 0.01
        first = True
        while waiting:
            if not first:
                if time.monotonic() >= deadline:
                    break
                yield min(delay, max(0.0, deadline - time.monotonic()))
                delay = min(delay * 2, 0.2)
            first = False
            still = []
            for rk in waiting:
                token = uuid.uuid4().hex
                kind, raw = yield (
                    "get_or_lease",
                    [rk, lease_key(rk)],
                    [token, lease_ms, _UNCACHEABLE],
                )
                kind = int(kind)
                if kind == 1:
                    found[rk] = raw
                elif kind == 2:
                    with self._held_lock:
                        self._held[rk] = (token, time.monotonic())
                elif kind == 0:
                    still.append(rk)
            waiting = still
        return found

    def _release_args(self, key: str, data: bytes, px: int | None) -> list[Any] | None:
        with self._held_lock:
            held = self._held.pop(key, None)
        if held is None:
            return None
        return ["1", data, "" if px is None else px, held[0], _UNCACHEABLE, 1000]

    def _sync_client(self) -> Any:
        if self.client is None:
            raise TypeError(
                "this ValkeyNodeCache has only an async client: use graph.ainvoke()/astream(), "
                "or pass a sync client (ValkeyNodeCache(sync_client, aclient=async_client))"
            )
        return self.client

    # --- sync ---------------------------------------------------------------------------

    def get(self, keys: Sequence[FullKey]) -> dict[FullKey, ValueT]:
        """Cached values of ``keys`` (missing, expired or unreadable ones left out)."""
        if not keys:
            return {}
        client = self._sync_client()
        if not self.breaker.closed:
            return self._skipped(len(keys))
        with self.telemetry.operation("get"):
            rkeys = self._redis_keys(keys)
            try:
                raws = client.mget_nonatomic(rkeys) if is_cluster(client) else client.mget(rkeys)
                if self.single_flight:
                    raws = self._claim(client, rkeys, raws)
            except CACHE_ERRORS as exc:
                self._failed("get", exc, lookups=len(keys))
                return {}
            found = self._decode(keys, raws)
        self.shared_stats.maybe_flush()
        return found

    def _claim(self, client: Any, rkeys: list[str], raws: list[Any]) -> list[Any]:
        misses = [rk for rk, raw in zip(rkeys, raws, strict=True) if raw is None]
        if not misses:
            return raws
        scripts = SINGLE_FLIGHT_SCRIPTS.bind(client)

        def execute(op: Any) -> Any:  # a pause (float) or a script call
            if isinstance(op, float):
                time.sleep(op)
                return None
            name, keys, args = op
            return scripts[name](keys=keys, args=args)

        found = run_plan(self._claim_flow(misses), execute)
        return [found.get(rk, raw) for rk, raw in zip(rkeys, raws, strict=True)]

    def set(self, pairs: Mapping[FullKey, tuple[ValueT, int | None]]) -> None:
        """Store values, each with its TTL in seconds (None: no expiry)."""
        if not pairs:
            return
        client = self._sync_client()
        if not self.breaker.closed:
            return
        with self.telemetry.operation("set"):
            entries = self._encode(pairs)
            try:
                if self.single_flight:
                    entries = self._publish_held(client, entries)
                if not entries:
                    return
                if len(entries) == 1:
                    key, data, px = entries[0]
                    client.set(key, data, px=px)
                else:
                    pipe = client.pipeline(transaction=False)
                    for key, data, px in entries:
                        pipe.set(key, data, px=px)
                    pipe.execute()
            except CACHE_ERRORS as exc:
                self._failed("set", exc)

    def _publish_held(
        self, client: Any, entries: list[tuple[str, bytes, int | None]]
    ) -> list[tuple[str, bytes, int | None]]:
        """Store entries whose lease we hold (value + release in one script); return the rest."""
        rest = []
        for key, data, px in entries:
            args = self._release_args(key, data, px)
            if args is None:
                rest.append((key, data, px))
            else:
                SINGLE_FLIGHT_SCRIPTS.bind(client)["publish"](keys=[key, lease_key(key)], args=args)
        return rest

    def clear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        """Delete the entries of ``namespaces`` (exact namespaces), or all of this cache's."""
        client = self._sync_client()
        with self.telemetry.operation("clear"):
            for pattern in self._patterns(namespaces):
                for batch in _batches(scan_keys(client, pattern)):
                    client.unlink(*batch)

    # --- async --------------------------------------------------------------------------

    async def aget(self, keys: Sequence[FullKey]) -> dict[FullKey, ValueT]:
        """Async :meth:`get`."""
        if not keys:
            return {}
        if self.aclient is None:
            return await asyncio.to_thread(self.get, keys)
        if not self.breaker.closed:
            return self._skipped(len(keys))
        client = self.aclient
        with self.telemetry.operation("get"):
            rkeys = self._redis_keys(keys)
            try:
                if is_cluster(client):
                    raws = await client.mget_nonatomic(rkeys)
                else:
                    raws = await client.mget(rkeys)
                if self.single_flight:
                    raws = await self._aclaim(client, rkeys, raws)
            except CACHE_ERRORS as exc:
                self._failed("get", exc, lookups=len(keys))
                return {}
            found = self._decode(keys, raws)
        await self.shared_stats.amaybe_flush()
        return found

    async def _aclaim(self, client: Any, rkeys: list[str], raws: list[Any]) -> list[Any]:
        misses = [rk for rk, raw in zip(rkeys, raws, strict=True) if raw is None]
        if not misses:
            return raws
        scripts = SINGLE_FLIGHT_SCRIPTS.bind(client)

        async def execute(op: Any) -> Any:  # a pause (float) or a script call
            if isinstance(op, float):
                await asyncio.sleep(op)
                return None
            name, keys, args = op
            return await scripts[name](keys=keys, args=args)

        found = await arun_plan(self._claim_flow(misses), execute)
        return [found.get(rk, raw) for rk, raw in zip(rkeys, raws, strict=True)]

    async def aset(self, pairs: Mapping[FullKey, tuple[ValueT, int | None]]) -> None:
        """Async :meth:`set`."""
        if not pairs:
            return
        if self.aclient is None:
            return await asyncio.to_thread(self.set, pairs)
        if not self.breaker.closed:
            return
        client = self.aclient
        with self.telemetry.operation("set"):
            entries = self._encode(pairs)
            try:
                if self.single_flight:
                    entries = await self._apublish_held(client, entries)
                if not entries:
                    return
                if len(entries) == 1:
                    key, data, px = entries[0]
                    await client.set(key, data, px=px)
                else:
                    pipe = client.pipeline(transaction=False)
                    for key, data, px in entries:
                        pipe.set(key, data, px=px)
                    await pipe.execute()
            except CACHE_ERRORS as exc:
                self._failed("set", exc)

    async def _apublish_held(
        self, client: Any, entries: list[tuple[str, bytes, int | None]]
    ) -> list[tuple[str, bytes, int | None]]:
        rest = []
        for key, data, px in entries:
            args = self._release_args(key, data, px)
            if args is None:
                rest.append((key, data, px))
            else:
                script = SINGLE_FLIGHT_SCRIPTS.bind(client)["publish"]
                await script(keys=[key, lease_key(key)], args=args)
        return rest

    async def aclear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        """Async :meth:`clear`."""
        if self.aclient is None:
            return await asyncio.to_thread(self.clear, namespaces)
        client = self.aclient
        with self.telemetry.operation("clear"):
            for pattern in self._patterns(namespaces):
                batch: list[Any] = []
                async for key in ascan_keys(client, pattern):
                    batch.append(key)
                    if len(batch) >= _DELETE_BATCH:
                        await client.unlink(*batch)
                        batch = []
                if batch:
                    await client.unlink(*batch)
