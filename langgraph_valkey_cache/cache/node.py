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

Scopes and per-request control come from the run's config. LangGraph calls ``get`` and
``set`` from its loop, outside any runnable, so the config is the one bound with
:meth:`ValkeyNodeCache.for_run` (``with cache.for_run(config): graph.invoke(x, config)``),
else the config of the runnable the graph runs in (a subgraph, a graph invoked from a
node or tool: LangChain's ``var_child_runnable_config``).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from time import perf_counter
from typing import Any

from langchain_core.runnables.config import var_child_runnable_config
from langgraph.cache.base import BaseCache, FullKey, Namespace, ValueT
from langgraph.checkpoint.serde.base import SerializerProtocol
from prometheus_client import CollectorRegistry

from langgraph_valkey_cache._cachebase import CacheCore, async_client_argument
from langgraph_valkey_cache._client import CACHE_TIMEOUT, with_local_cache
from langgraph_valkey_cache._control import (
    NO_CONTROL,
    CacheControl,
    normalize_scope,
    read_control,
    scope_values,
    warn_missing_scope,
)
from langgraph_valkey_cache._failopen import (
    CacheUnavailable,
    Cmd,
    Executor,
    Pipe,
    Plan,
    Scan,
    Sleep,
    Tally,
)
from langgraph_valkey_cache._keys import DEFAULT_PREFIXES, NodeCacheKeys
from langgraph_valkey_cache._serde import default_serde, dumps_checked, pack_typed, unpack_typed
from langgraph_valkey_cache.cache.llm import unlink_plan
from langgraph_valkey_cache.cache.singleflight import (
    FlightOptions,
    lease_step,
    lease_token,
    publish_step,
)

__all__ = ["ValkeyNodeCache"]

#: The run config (and runtime context) bound by :meth:`ValkeyNodeCache.for_run`; a
#: context variable, so LangGraph's background ``set`` (run in a copied context) sees it.
_RUN: contextvars.ContextVar[tuple[Any, Any] | None] = contextvars.ContextVar(
    "langgraph_valkey_cache_node_run", default=None
)
#: Where LangGraph keeps the graph's ``Runtime`` (its ``context``) in a node's config.
_CONFIG_KEY_RUNTIME = "__pregel_runtime"
#: What a one-entry get counts (a Tally is only read, so one instance serves all).
_ONE_HIT = Tally(hits=1)
_ONE_MISS = Tally(misses=1)
#: Entry keys remembered per cache (see ``_entry_key``).
_ENTRY_KEYS_MAX = 4096


class ValkeyNodeCache(CacheCore, BaseCache[ValueT]):
    """LangGraph node cache on Valkey (standalone or cluster, sync or async client).

    Pass it to ``compile(cache=...)`` and give nodes a ``CachePolicy``; behaves like
    LangGraph's ``InMemoryCache`` (per-entry TTL in seconds, ``graph.clear_cache()``
    by node namespace) but is shared by every process using the server.

    Args:
        client: a sync (``valkey.Valkey``/``ValkeyCluster``) or async (``valkey.asyncio``)
            client. Never reconfigured.
        async_client: an async client for the ``a*`` methods next to a sync ``client``
            (``aclient=``, its former name, still works with a DeprecationWarning).
            With no async client the ``a*`` methods run the sync ones in a worker
            thread (the event loop never blocks); with only an async client, the sync
            methods raise ``TypeError``.
        prefix: key prefix of this cache (ACL users can be confined to ``prefix*``).
        serde: serializer; default strict ``JsonPlusSerializer`` (no pickle, no
            arbitrary module revival).
        timeout: latency budget per operation in seconds (see ``ValkeyCache``).
        single_flight: coordinate concurrent misses of one entry across processes:
            the first run computes, the others wait for its ``set``.
        lease_ttl: seconds a miss holds its lease (should exceed the node's run time).
        wait_timeout: seconds a waiting ``get`` waits before reporting a miss.
        metrics: ``False`` to disable Prometheus metrics, or a registry.
        stats_flush_interval: seconds between flushes of this process's hit/miss counts
            to the ``<prefix>:stats`` hash every process adds to (see :meth:`stats`).
        scope: names of run-config ``configurable`` (or runtime context) values every
            entry key includes, e.g. ``("user_id",)``: one user's entries never serve
            another. A run without a value bypasses the cache (the node runs, nothing
            is stored), warned once.
        local_cache: serve hits from a coherent in-process L1 (valkey-py client-side
            caching, invalidated by the server; standalone servers only): the cache
            talks through a client of its own to the same server.

    Per-request control, in ``configurable["cache_control"]``: ``{"skip": True}`` neither
    reads nor stores, ``{"refresh": True}`` runs the nodes and overwrites their entries,
    ``{"ttl": 60}`` stores with 60 s instead of the ``CachePolicy`` TTL. Scope values and
    control are read from the config bound by :meth:`for_run` (else the enclosing
    runnable's config, when the graph runs inside one).

    Whatever happens to the server, ``get``/``set`` fail open within the budget (a miss:
    the node runs); ``clear`` raises, since a failed invalidation must not go unnoticed.

    Example:
        ```python
        from langgraph.graph import StateGraph
        from langgraph.types import CachePolicy
        from langgraph_valkey_cache import ValkeyNodeCache, cache_client_from_url

        builder = StateGraph(State)
        builder.add_node("expensive", expensive, cache_policy=CachePolicy(ttl=120))
        ...
        graph = builder.compile(cache=ValkeyNodeCache(cache_client_from_url("valkey://localhost:6379")))
        graph.invoke({"x": 1})  # runs `expensive`
        graph.invoke({"x": 1})  # served from Valkey
        graph.clear_cache()

        scoped = ValkeyNodeCache(client, scope=("user_id",))
        config = {"configurable": {"user_id": "u1", "cache_control": {"ttl": 30}}}
        with scoped.for_run(config):
            graph.invoke({"x": 1}, config)
        ```
    """

    def __init__(
        self,
        client: Any,
        *,
        async_client: Any | None = None,
        aclient: Any | None = None,
        prefix: str = DEFAULT_PREFIXES["node"],
        serde: SerializerProtocol | None = None,
        timeout: float = CACHE_TIMEOUT,
        single_flight: bool = False,
        lease_ttl: float = 30.0,
        wait_timeout: float = 10.0,
        metrics: bool | CollectorRegistry = True,
        stats_flush_interval: float = 1.0,
        scope: Sequence[str] | str | None = None,
        local_cache: bool = False,
    ) -> None:
        aclient = async_client_argument(async_client, aclient)
        super().__init__(serde=serde or default_serde())
        self.keys = NodeCacheKeys(prefix)
        self.scope = normalize_scope(scope)
        self.local_cache = local_cache
        if local_cache:
            client, aclient = with_local_cache(client), with_local_cache(aclient)
        self._init_core(
            client, aclient, tier="node_cache", stats_key=self.keys.stats(), metrics=metrics,
            timeout=timeout, stats_flush_interval=stats_flush_interval,
        )  # fmt: skip
        # the L1 lookups (no round trip, no await) of the local fast paths of get/aget
        self._local_reply = getattr(self.client, "local_reply", None) if local_cache else None
        self._alocal_reply = (
            getattr(self.aclient, "local_reply", None) if local_cache and self.aclient else None
        )
        self.single_flight = single_flight
        self.flight = FlightOptions(lease_ttl=lease_ttl, wait_timeout=wait_timeout)
        # entry key -> (lease token, taken at): leases this process holds until `set`
        self._held: dict[str, tuple[str, float]] = {}
        self._held_lock = threading.Lock()
        self._entry_keys: dict[tuple[tuple[str, ...], str, tuple[str, ...]], str] = {}

    # --- plans (no I/O) -----------------------------------------------------------------

    def _entry_key(self, ns: tuple[str, ...], key: str, scope: tuple[str, ...]) -> str:
        """``self.keys.entry(...)``, memoised: a graph's hits ask for the same few
        entries again and again (bounded: cleared when full)."""
        memo = self._entry_keys
        k = (ns, key, scope)
        found = memo.get(k)
        if found is None:
            found = self.keys.entry(ns, key, scope)
            if len(memo) >= _ENTRY_KEYS_MAX:
                memo.clear()
            memo[k] = found
        return found

    def _plan_get(self, keys: Sequence[FullKey], scope: tuple[str, ...] = ()) -> Plan:
        if len(keys) == 1 and not self.single_flight:
            # the common case (one cached task per step), written out: a hit is one
            # GET, and every line here runs right after a round trip
            ((ns, key),) = keys
            ns = tuple(ns)
            raw = yield Cmd(("GET", self._entry_key(ns, key, scope)))
            if raw is not None:
                try:
                    value = self.serde.loads_typed(unpack_typed(raw))
                except Exception:  # a foreign or stale entry is a miss, not a crash
                    pass
                else:
                    yield _ONE_HIT
                    return {(ns, key): value}
            yield _ONE_MISS
            return {}
        rkeys = [self._entry_key(tuple(ns), key, scope) for ns, key in keys]
        if len(rkeys) == 1:
            raws = [(yield Cmd(("GET", rkeys[0])))]
        elif self._cluster:  # keys of many slots: one pipeline, grouped per node
            raws = yield Pipe(tuple(("GET", k) for k in rkeys))
        else:
            raws = yield Cmd(("MGET", *rkeys))
        if self.single_flight and None in raws:
            found = yield from self._plan_claim(
                [k for k, r in zip(rkeys, raws, strict=True) if r is None]
            )
            raws = [found.get(k, r) for k, r in zip(rkeys, raws, strict=True)]
        out: dict[FullKey, ValueT] = {}
        for (ns, key), raw in zip(keys, raws, strict=True):
            if raw is not None:
                try:
                    out[(tuple(ns), key)] = self.serde.loads_typed(unpack_typed(raw))
                except Exception:  # a foreign or stale entry is a miss, not a crash
                    continue
        yield Tally(hits=len(out), misses=len(keys) - len(out))
        return out

    def _plan_claim(self, misses: list[str]) -> Plan:
        """Single-flight for missing entries: lease them (our ``set`` publishes), or wait
        for their leader. Returns the values that appeared while waiting."""
        now = time.monotonic()
        lease_ms = max(1, int(self.flight.lease_ttl * 1000))
        with self._held_lock:  # forget leases of runs that never called `set` (failed)
            for rk in [k for k, (_, at) in self._held.items() if now - at > self.flight.lease_ttl]:
                del self._held[rk]
        found: dict[str, bytes] = {}
        waiting = misses
        deadline = now + self.flight.wait_timeout
        delays = self.flight.delays()
        try:
            while waiting:
                still = []
                for rk in waiting:
                    token = lease_token()
                    kind, raw = yield lease_step(rk, token, lease_ms)
                    kind = int(kind)
                    if kind == 1:
                        found[rk] = raw
                    elif kind == 2:
                        with self._held_lock:
                            self._held[rk] = (token, time.monotonic())
                    elif kind == 0:
                        still.append(rk)
                waiting = still
                remaining = deadline - time.monotonic()
                if not waiting or remaining <= 0:
                    break
                yield Sleep(min(next(delays), remaining))
        except CacheUnavailable:
            pass  # what we found so far; the rest are misses
        return found

    def _plan_set(
        self,
        pairs: Mapping[FullKey, tuple[ValueT, int | None]],
        scope: tuple[str, ...] = (),
        ttl_override: float | None = None,
    ) -> Plan:
        cmds: list[tuple[Any, ...]] = []
        publishes = []
        stored = 0
        for (ns, key), (value, policy_ttl) in pairs.items():
            ttl = policy_ttl if ttl_override is None else ttl_override
            rk = self._entry_key(tuple(ns), key, scope)
            data = pack_typed(dumps_checked(self.serde, value, "node cache value"))
            stored += len(data)
            px = None if ttl is None else max(1, int(ttl * 1000))
            held = None
            if self.single_flight:
                with self._held_lock:
                    held = self._held.pop(rk, None)
            if held is not None:  # value + release of our lease in one script
                publishes.append(publish_step(rk, data, px, held[0], 1000))
            else:
                cmds.append(("SET", rk, data) if px is None else ("SET", rk, data, "PX", px))
        for step in publishes:  # noqa: UP028 (`yield from` a list cannot take the replies)
            yield step
        if len(cmds) == 1:
            yield Cmd(cmds[0])
        elif cmds:
            yield Pipe(tuple(cmds))
        yield Tally(stored_bytes=stored)

    def _plan_clear(self, namespaces: Sequence[Namespace] | None) -> Plan:
        patterns = (
            [self.keys.all_pattern()]
            if namespaces is None
            else [self.keys.namespace_pattern(tuple(ns)) for ns in namespaces]
        )
        for pattern in patterns:
            keys = yield Scan(pattern)
            yield from unlink_plan(keys, self._cluster)

    @property
    def _cluster(self) -> bool:
        return self._aexec.cluster

    # --- the run's scope and control (no I/O) ---------------------------------------------

    @contextmanager
    def for_run(self, config: Any, context: Any = None) -> Iterator[None]:
        """Bind a run's config (its ``configurable`` scope values and ``cache_control``)
        and runtime ``context`` for the node cache calls made inside the block; every
        ``ValkeyNodeCache`` reads it. ``with cache.for_run(config): graph.invoke(x, config)``."""
        token = _RUN.set((config, context))
        try:
            yield
        finally:
            _RUN.reset(token)

    def _request(self) -> tuple[CacheControl, tuple[str, ...] | None]:
        """This run's control and scope values (``None``: a scope value is missing)."""
        bound = _RUN.get()
        if bound is not None:
            config, context = bound
        else:
            # what _control.current_config() returns, without its per-call import (hot path)
            config = var_child_runnable_config.get()
            runtime = ((config or {}).get("configurable") or {}).get(_CONFIG_KEY_RUNTIME)
            context = getattr(runtime, "context", None)
        control = read_control(config) if config else NO_CONTROL
        if not self.scope:
            return control, ()
        scope = scope_values(config, self.scope, context)
        if scope is None:
            warn_missing_scope(self, self.scope)
        return control, scope

    # --- BaseCache ----------------------------------------------------------------------

    def get(self, keys: Sequence[FullKey]) -> dict[FullKey, ValueT]:
        """Cached values of ``keys`` (missing, expired or unreadable ones left out)."""
        if not keys:
            return {}
        control, scope = self._request()
        if scope is None or not control.reads:
            return {}
        ex = self._exec
        if self._local_reply is not None and ex is not None:
            found = self._get_local(keys, scope, self._local_reply, ex)
            if found is not None:
                if ex.stats is not None and ex.stats.due():
                    ex.maybe_flush()
                return found
        return self._run(self._plan_get(keys, scope), "get", default={}, lookups=len(keys))

    def _get_local(
        self,
        keys: Sequence[FullKey],
        scope: tuple[str, ...],
        local: Any,
        ex: Executor,
        drain: bool = True,
    ) -> dict[FullKey, ValueT] | None:
        """``get`` served whole by the L1 (``local_cache=True``) through ``local`` (a
        client's ``local_reply``), or None: then the plan runs on ``ex``, as without an
        L1. ``drain=False`` (on an event loop): None while invalidations are pending,
        rather than read them. The caller flushes the stats when due.

        Why not a plan: the lookup is ~2 us, a plan's run through the executor ~8 us
        more (a local hit took ~25 us that way, InMemoryCache's ``get`` ~4 us; ~9 us
        this way). Why it keeps the contract: it never talks to the server (no send,
        no connect, no wait for a busy pool: ``local_reply`` says None instead), so
        there is nothing to bound or classify; it reads only the commands the plan
        sends (``GET``/``MGET`` of the same keys), after the pending invalidations, as
        the plan's own lookup would; while the server's breaker is open it stays out of
        the way (the plan refuses, a miss); anything short of every key decoding (a
        miss, a foreign entry, an error) goes to the plan. A hit is counted by the
        executor's ``tally`` and timed like a run (one span, opened after the lookup)."""
        if not ex.breaker.closed:
            return None
        start = perf_counter()
        try:
            out: dict[FullKey, ValueT] = {}
            if len(keys) == 1:
                ((ns, key),) = keys
                ns = tuple(ns)
                raw = local("GET", self._entry_key(ns, key, scope), drain=drain)
                if raw is None:
                    return None
                out[(ns, key)] = self.serde.loads_typed(unpack_typed(raw))
            else:
                full = [(tuple(ns), key) for ns, key in keys]
                raws = local(
                    "MGET", *[self._entry_key(ns, key, scope) for ns, key in full], drain=drain
                )
                if raws is None or None in raws:
                    return None
                for fk, raw in zip(full, raws, strict=True):
                    out[fk] = self.serde.loads_typed(unpack_typed(raw))
        except Exception:  # whatever it is, the plan sees it again and handles it
            return None
        tel = self.telemetry
        span = tel.start("get")
        ex.tally(_ONE_HIT if len(out) == 1 else Tally(hits=len(out)))
        tel.finish("get", start, span, outcome=(len(out), 0, 0, None))
        return out

    def set(self, pairs: Mapping[FullKey, tuple[ValueT, int | None]]) -> None:
        """Store values, each with its TTL in seconds (None: no expiry)."""
        if not pairs:
            return
        control, scope = self._request()
        if scope is not None and control.writes:
            self._run(self._plan_set(pairs, scope, control.ttl), "set")

    def clear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        """Delete the entries of ``namespaces`` (exact namespaces, every scope), or all of
        this cache's."""
        self._run_strict(self._plan_clear(namespaces), "clear")

    async def aget(self, keys: Sequence[FullKey]) -> dict[FullKey, ValueT]:
        """Async :meth:`get`."""
        if not keys:
            return {}
        control, scope = self._request()
        if scope is None or not control.reads:
            return {}
        local = self._alocal_reply if self.aclient is not None else self._local_reply
        if local is not None:
            # on the loop: only when nothing is pending (reading an invalidation could
            # block it, or needs it); else the plan
            found = self._get_local(keys, scope, local, self._aexec, drain=False)
            if found is not None:
                ex = self._aexec
                if ex.stats is not None and ex.stats.due():
                    await ex.amaybe_flush()
                return found
        return await self._arun(self._plan_get(keys, scope), "get", default={}, lookups=len(keys))

    async def aset(self, pairs: Mapping[FullKey, tuple[ValueT, int | None]]) -> None:
        """Async :meth:`set`."""
        if not pairs:
            return
        control, scope = self._request()
        if scope is not None and control.writes:
            await self._arun(self._plan_set(pairs, scope, control.ttl), "set")

    async def aclear(self, namespaces: Sequence[Namespace] | None = None) -> None:
        """Async :meth:`clear`."""
        await self._arun_strict(self._plan_clear(namespaces), "clear")
