"""What every fail-open cache tier shares: its clients, executors, telemetry and stats.

A cache describes each operation as a plan (see ``_failopen``) and hands it to
:meth:`CacheCore._run` (sync) or :meth:`CacheCore._arun` (async); nothing else in a
cache talks to the server, catches a server error or counts a hit.
"""

from __future__ import annotations

import warnings
from typing import Any

from langgraph_valkey_cache._client import CACHE_TIMEOUT, cache_client_from_url, is_async_client
from langgraph_valkey_cache._failopen import Executor, Pipe, Plan
from langgraph_valkey_cache._stats import CacheStats, SharedStats, parse_fields, registry_entry
from langgraph_valkey_cache._telemetry import Telemetry

__all__ = ["CacheCore"]


class CacheCore:
    """Mixin: ``_init_core(...)`` in ``__init__``, then ``_run``/``_arun`` for every plan.

    With only an async client, the sync methods raise a ``TypeError`` that says so; with
    only a sync client, the async methods run its I/O steps in a worker thread (still
    under the latency budget: the caller stops waiting at the deadline).
    """

    telemetry: Telemetry
    shared_stats: SharedStats
    _exec: Executor | None
    _aexec: Executor

    def _init_core(
        self,
        client: Any,
        aclient: Any,
        *,
        tier: str,
        stats_key: str,
        metrics: Any = True,
        timeout: float = CACHE_TIMEOUT,
        stats_flush_interval: float = 1.0,
    ) -> None:
        if client is not None and is_async_client(client):
            if aclient is not None:
                raise TypeError("client is async already; pass a sync client with async_client=")
            client, aclient = None, client
        if aclient is not None and not is_async_client(aclient):
            raise TypeError("the async client must be a valkey.asyncio client")
        if client is None and aclient is None:
            raise ValueError(f"{type(self).__name__} needs a client (sync, async, or both)")
        self.client = client
        self.aclient = aclient
        self.timeout = timeout
        self.telemetry = Telemetry(tier, metrics=metrics)
        self.shared_stats = SharedStats(
            stats_key,
            flush_interval=stats_flush_interval,
            registry=registry_entry(tier, stats_key),
        )
        self._exec = (
            Executor(client, self.telemetry, self.shared_stats, timeout=timeout)
            if client is not None
            else None
        )
        self._aexec = (
            Executor(aclient, self.telemetry, self.shared_stats, timeout=timeout)
            if aclient is not None
            else self._exec  # type: ignore[assignment]
        )
        self.breaker = self._aexec.breaker

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Any:
        """A cache with a sync and an async client built for ``url`` by
        :func:`~langgraph_valkey_cache.cache_client_from_url` (the budget as timeout)."""
        timeout = kwargs.get("timeout", CACHE_TIMEOUT)
        aclient = cache_client_from_url(url, asyncio=True, timeout=timeout)
        make: Any = cls  # each cache's own __init__ (the mixin has none)
        return make(cache_client_from_url(url, timeout=timeout), async_client=aclient, **kwargs)

    @property
    def async_client(self) -> Any:
        return self.aclient

    def _sync_exec(self) -> Executor:
        if self._exec is None:
            raise TypeError(
                f"this {type(self).__name__} has only an async client: call the async "
                "methods (ainvoke, alookup, ...), or pass a sync client too "
                "(client=sync_client, async_client=async_client)"
            )
        return self._exec

    def _run(self, plan: Plan, op: str, **kwargs: Any) -> Any:
        """Run a plan fail-open (see :meth:`Executor.run`), then flush stats if due."""
        ex = self._sync_exec()
        result = ex.run(plan, op, **kwargs)
        if ex.stats is not None and ex.stats.due():
            ex.maybe_flush()
        return result

    async def _arun(self, plan: Plan, op: str, **kwargs: Any) -> Any:
        """Async :meth:`_run`."""
        ex = self._aexec
        result = await ex.arun(plan, op, **kwargs)
        if ex.stats is not None and ex.stats.due():
            await ex.amaybe_flush()
        return result

    def _run_strict(self, plan: Plan, op: str) -> Any:
        """Run a plan that must not fail silently (clear, invalidate, stats): raises."""
        return self._sync_exec().run(plan, op, strict=True)

    async def _arun_strict(self, plan: Plan, op: str) -> Any:
        return await self._aexec.arun(plan, op, strict=True)

    # -- stats -------------------------------------------------------------------------

    def _read_stats_plan(self, keys: list[str]) -> Plan:
        replies = yield Pipe(SharedStats.read_commands(keys))
        return [parse_fields(r) for r in replies]

    def stats(self) -> CacheStats:
        """Hits, misses, errors, hit rate and cost saved, summed over every process using
        this prefix (this process's pending counts are flushed first). Raises on errors."""
        self.flush_stats()
        (fields,) = self._run_strict(self._read_stats_plan([self.shared_stats.key]), "stats")
        return CacheStats.from_fields(fields)

    async def astats(self) -> CacheStats:
        """Async :meth:`stats`."""
        await self.aflush_stats()
        plan = self._read_stats_plan([self.shared_stats.key])
        (fields,) = await self._arun_strict(plan, "stats")
        return CacheStats.from_fields(fields)

    def flush_stats(self) -> None:
        """Write this process's pending counts to Valkey now (fail-open: on an error they
        stay pending)."""
        if self._exec is not None:
            self._exec.maybe_flush(force=True)

    async def aflush_stats(self) -> None:
        """Async :meth:`flush_stats`."""
        await self._aexec.amaybe_flush(force=True)

    # -- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        """Flush the pending stats and close the sync client."""
        if self.client is not None:
            self.flush_stats()
            self.client.close()

    async def aclose(self) -> None:
        """Flush the pending stats and close the async client."""
        if self.aclient is not None:
            await self.aflush_stats()
            await self.aclient.aclose()


def async_client_argument(async_client: Any, aclient: Any) -> Any:
    """``async_client=``, the keyword every cache takes; ``aclient=`` (the node and tool
    caches' first name for it) still works, with a DeprecationWarning."""
    if aclient is None:
        return async_client
    if async_client is not None:
        raise TypeError("pass the async client once: async_client=")
    warnings.warn(
        "aclient= is deprecated: pass async_client= (the keyword every cache takes)",
        DeprecationWarning,
        stacklevel=3,
    )
    return aclient
