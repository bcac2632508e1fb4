"""Hit/miss counters shared by every process using a cache, kept in Valkey hashes.

Each process counts in memory (:meth:`SharedStats.record`) and adds its counts to the
hash with ``HINCRBY``/``HINCRBYFLOAT``, all in one pipelined round trip, at most once
every ``flush_interval`` seconds. The flush rides on a normal cache call
(:meth:`SharedStats.maybe_flush` after the lookup), so a hit costs its one round trip
plus, once per interval, one more; readers sum nothing themselves, the server holds
the totals of every process.

Flushing fails open: on a server error the counts stay pending (and go out with the
next flush), a warning is logged and an error metric counted through the owning
cache's :class:`~langgraph_valkey_cache.cache._failopen.Breaker`, and no flush is tried
while that breaker is open. Reading (:meth:`SharedStats.read`) raises: a report must
not silently say zero.

Example:
    ```python
    stats = SharedStats(client, "myapp:stats", flush_interval=1.0)
    stats.record(hits=1, saved_usd=0.002)
    stats.maybe_flush()  # a no-op until a second has passed since the last flush
    stats.flush()
    CacheStats.from_fields(stats.read())  # CacheStats(hits=1, ..., saved_usd=0.002)
    ```
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from langgraph_valkey_cache._client import is_async_client, scan_keys
from langgraph_valkey_cache._keys import LLMCacheKeys, NodeCacheKeys, ToolCacheKeys
from langgraph_valkey_cache._telemetry import Telemetry
from langgraph_valkey_cache.cache._failopen import CACHE_ERRORS, Breaker

__all__ = ["DEFAULT_PREFIXES", "CacheStats", "SharedStats", "parse_fields", "read_tiers"]

Number = int | float
Pending = dict[str, dict[str, Number]]


@dataclass(frozen=True)
class CacheStats:
    """Totals of one cache, summed over every process using it.

    Attributes:
        hits: lookups answered from the cache.
        misses: lookups that were not (including those made while the server was
            failing or skipped after a failure).
        errors: server errors the cache swallowed (fail-open).
        saved_usd: estimated cost of the calls hits avoided (``cost_of=``).
        saved_ms: time hits avoided, where the cache knows it (tool run times).
    """

    hits: int = 0
    misses: int = 0
    errors: int = 0
    saved_usd: float = 0.0
    saved_ms: int = 0

    @property
    def calls(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.calls if self.calls else 0.0

    @classmethod
    def from_fields(cls, fields: Mapping[str, Number]) -> CacheStats:
        """Totals from a stats hash (unknown fields ignored, missing ones zero)."""
        return cls(
            hits=int(fields.get("hits", 0)),
            misses=int(fields.get("misses", 0)),
            errors=int(fields.get("errors", 0)),
            saved_usd=float(fields.get("saved_usd", 0.0)),
            saved_ms=int(fields.get("saved_ms", 0)),
        )

    def __add__(self, other: CacheStats) -> CacheStats:
        return CacheStats(
            self.hits + other.hits,
            self.misses + other.misses,
            self.errors + other.errors,
            self.saved_usd + other.saved_usd,
            self.saved_ms + other.saved_ms,
        )

    def as_dict(self) -> dict[str, Number]:
        """The counters plus ``calls`` and ``hit_rate`` (for JSON output)."""
        return {**asdict(self), "calls": self.calls, "hit_rate": self.hit_rate}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_fields(raw: Mapping[Any, Any] | None) -> dict[str, Number]:
    """A stats hash from ``HGETALL`` (bytes or str, RESP2 or 3): integers stay ints."""
    out: dict[str, Number] = {}
    for field, value in (raw or {}).items():
        text = _text(value)
        try:
            out[_text(field)] = int(text)
        except ValueError:
            out[_text(field)] = float(text)
    return out


class SharedStats:
    """In-process counters flushed to Valkey hashes, shared by every process.

    Args:
        client: a sync or async (``valkey.asyncio``) client, standalone or cluster.
        key: the hash counts go to by default (a key from ``_keys.py``).
        aclient: an async client next to a sync ``client``. Without one, the async
            methods run the sync client in a worker thread.
        flush_interval: at most one flush per this many seconds from
            :meth:`maybe_flush` (0: every call flushes).
        breaker: the owning cache's breaker: flush errors open it, and no flush is
            tried while it is open.
        telemetry: where flush errors are reported (the owning cache's).

    Counts go to ``key``, or to ``record(key=...)`` for a cache with several hashes
    (one per tool); one flush covers them all.
    """

    def __init__(
        self,
        client: Any,
        key: str,
        *,
        aclient: Any = None,
        flush_interval: float = 1.0,
        breaker: Breaker | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        if flush_interval < 0:
            raise ValueError("flush_interval must be >= 0 seconds")
        if client is not None and is_async_client(client):
            client, aclient = None, aclient or client
        self.client = client
        self.aclient = aclient
        self.key = key
        self.flush_interval = flush_interval
        self.breaker = breaker or Breaker()
        self.telemetry = telemetry or Telemetry("stats", metrics=False)
        self._pending: Pending = {}
        self._lock = threading.Lock()
        self._flushed_at = time.monotonic()

    # -- counting (no I/O) -----------------------------------------------------------

    def record(self, key: str | None = None, **fields: Number) -> None:
        """Add to this process's pending counts (``hits=1, saved_usd=0.002, ...``).

        An ``int`` goes out with ``HINCRBY``, a ``float`` with ``HINCRBYFLOAT``: record
        a field always with the same type.
        """
        with self._lock:
            bucket = self._pending.setdefault(key or self.key, {})
            for field, n in fields.items():
                if n:
                    bucket[field] = bucket.get(field, 0) + n

    @property
    def pending(self) -> Pending:
        """A copy of the counts not flushed yet."""
        with self._lock:
            return {k: dict(v) for k, v in self._pending.items()}

    def _take(self, force: bool) -> Pending | None:
        with self._lock:
            if not self._pending:
                return None
            now = time.monotonic()
            if not self.breaker.closed or (
                not force and now - self._flushed_at < self.flush_interval
            ):
                return None
            pending, self._pending = self._pending, {}
            self._flushed_at = now
            return pending

    def _restore(self, pending: Pending) -> None:
        for key, fields in pending.items():
            self.record(key, **fields)

    @staticmethod
    def _queue(pipe: Any, pending: Pending) -> None:
        for key, fields in pending.items():
            for field, n in fields.items():
                if isinstance(n, float):
                    pipe.hincrbyfloat(key, field, n)
                else:
                    pipe.hincrby(key, field, n)

    def _failed(self, pending: Pending, exc: BaseException) -> None:
        self._restore(pending)
        self.breaker.fail(self.telemetry, "stats", exc)

    # -- sync ------------------------------------------------------------------------

    def _send(self, pending: Pending) -> None:
        if self.client is None:  # only an async client: the async methods flush
            self._restore(pending)
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            self._queue(pipe, pending)
            pipe.execute()
        except CACHE_ERRORS as exc:
            self._failed(pending, exc)

    def maybe_flush(self) -> None:
        """Flush if ``flush_interval`` has passed since the last flush (fail-open)."""
        pending = self._take(force=False)
        if pending:
            self._send(pending)

    def flush(self) -> None:
        """Flush now (fail-open: on an error, or while the breaker is open after one,
        the counts stay pending)."""
        pending = self._take(force=True)
        if pending:
            self._send(pending)

    def read(self, key: str | None = None) -> dict[str, Number]:
        """The totals in ``key`` (default this instance's), as stored; raises on errors."""
        return self.read_many([key or self.key])[0]

    def read_many(self, keys: Iterable[str]) -> list[dict[str, Number]]:
        """The totals of several hashes in one pipelined round trip; raises on errors."""
        keys = list(keys)
        if not keys:
            return []
        if self.client is None:
            raise TypeError("these stats have only an async client: use the async methods (astats)")
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [parse_fields(raw) for raw in pipe.execute()]

    # -- async -----------------------------------------------------------------------

    async def _asend(self, pending: Pending) -> None:
        if self.aclient is None:
            await asyncio.to_thread(self._send, pending)
            return
        try:
            pipe = self.aclient.pipeline(transaction=False)
            self._queue(pipe, pending)
            await pipe.execute()
        except CACHE_ERRORS as exc:
            self._failed(pending, exc)

    async def amaybe_flush(self) -> None:
        """Async :meth:`maybe_flush`."""
        pending = self._take(force=False)
        if pending:
            await self._asend(pending)

    async def aflush(self) -> None:
        """Async :meth:`flush`."""
        pending = self._take(force=True)
        if pending:
            await self._asend(pending)

    async def aread(self, key: str | None = None) -> dict[str, Number]:
        """Async :meth:`read`."""
        return (await self.aread_many([key or self.key]))[0]

    async def aread_many(self, keys: Iterable[str]) -> list[dict[str, Number]]:
        """Async :meth:`read_many`."""
        keys = list(keys)
        if self.aclient is None:
            return await asyncio.to_thread(self.read_many, keys)
        if not keys:
            return []
        pipe = self.aclient.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [parse_fields(raw) for raw in await pipe.execute()]


# -- reading every tier (the ``stats`` command) ----------------------------------------

#: Tier name -> default key prefix of the cache classes.
DEFAULT_PREFIXES: dict[str, str] = {
    "llm": "lgv:llm",
    "semantic": "lgv:llmsem",
    "node": "lgv:node",
    "tools": "lgv:tools",
}


def tier_stats_keys(client: Any, tier: str, prefix: str) -> list[str]:
    """The stats hashes of one tier under ``prefix`` (SCAN per primary for the tool
    cache's per-tool hashes, never KEYS)."""
    if tier in ("llm", "semantic"):
        return [LLMCacheKeys(prefix).stats()]
    if tier == "node":
        return [NodeCacheKeys(prefix).stats()]
    if tier == "tools":
        keys = ToolCacheKeys(prefix)
        return sorted({_text(k) for k in scan_keys(client, keys.stats_pattern())})
    raise ValueError(f"unknown tier {tier!r}; one of {', '.join(DEFAULT_PREFIXES)}")


def read_tiers(client: Any, prefixes: Mapping[str, str]) -> list[tuple[str, str, CacheStats]]:
    """``(tier, prefix, totals)`` of every tier that has stats under its prefix.

    Args:
        client: a sync client (standalone or cluster).
        prefixes: tier name (``llm``, ``semantic``, ``node``, ``tools``) -> key prefix.
    """
    reader = SharedStats(client, "")
    found = []
    for tier, prefix in prefixes.items():
        hashes = [h for h in reader.read_many(tier_stats_keys(client, tier, prefix)) if h]
        if hashes:
            total = CacheStats()
            for fields in hashes:
                total += CacheStats.from_fields(fields)
            found.append((tier, prefix, total))
    return found


class SharedStatsMixin:
    """``stats``/``flush_stats`` (and async twins) for a cache holding ``shared_stats``."""

    shared_stats: SharedStats

    def stats(self) -> CacheStats:
        """Hits, misses, hit rate and cost saved, summed over every process using this
        prefix (this process's pending counts are flushed first)."""
        self.shared_stats.flush()
        return CacheStats.from_fields(self.shared_stats.read())

    async def astats(self) -> CacheStats:
        """Async :meth:`stats`."""
        await self.shared_stats.aflush()
        return CacheStats.from_fields(await self.shared_stats.aread())

    def flush_stats(self) -> None:
        """Write this process's pending counts to Valkey now (e.g. before exiting)."""
        self.shared_stats.flush()

    async def aflush_stats(self) -> None:
        """Async :meth:`flush_stats`."""
        await self.shared_stats.aflush()
