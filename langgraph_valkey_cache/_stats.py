"""Hit/miss counters shared by every process using a cache, kept in Valkey hashes.

Each process counts in memory (:meth:`SharedStats.record`); the cache's executor adds
the counts to the hash with ``HINCRBY``/``HINCRBYFLOAT``, all in one pipelined round
trip, at most once every ``flush_interval`` seconds, riding on a normal cache call. A
failed flush keeps the counts pending for the next one. Readers sum nothing: the
server holds the totals of every process; reading raises (a report must not silently
say zero).

Example:
    ```python
    stats = SharedStats("myapp:stats", flush_interval=1.0)
    stats.record(hits=1, saved_usd=0.002)
    stats.commands(stats.take(force=True))  # (("HINCRBY", "myapp:stats", "hits", 1), ...)
    ```
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from langgraph_valkey_cache._client import scan_keys
from langgraph_valkey_cache._keys import DEFAULT_PREFIXES as _ALL_PREFIXES
from langgraph_valkey_cache._keys import (
    LLMCacheKeys,
    NodeCacheKeys,
    ToolCacheKeys,
)

__all__ = [
    "DEFAULT_PREFIXES",
    "CacheStats",
    "SharedStats",
    "parse_fields",
    "read_hashes",
    "read_tiers",
]

Number = int | float
Pending = dict[str, dict[str, Number]]

#: Tier name -> default key prefix of the caches that keep shared stats.
DEFAULT_PREFIXES = {t: _ALL_PREFIXES[t] for t in ("llm", "semantic", "node", "tools")}


@dataclass(frozen=True)
class CacheStats:
    """Totals of one cache, summed over every process using it.

    Attributes:
        hits: lookups answered from the cache.
        misses: lookups that were not (including those made while the server was
            failing or skipped after a failure).
        errors: server errors the cache swallowed (fail-open).
        errors_by_reason: ``errors`` split by reason (``timeout``, ``unavailable``,
            ``acl``, ``oom``, ``routing``, ``no_search_module``, ``bug``...).
        saved_usd: estimated cost of the calls hits avoided (``cost_of=``).
        saved_ms: time hits avoided, where the cache knows it (tool run times).
    """

    hits: int = 0
    misses: int = 0
    errors: int = 0
    saved_usd: float = 0.0
    saved_ms: int = 0
    errors_by_reason: Mapping[str, int] = field(default_factory=dict)

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
            errors_by_reason={
                k.split(".", 1)[1]: int(v) for k, v in fields.items() if k.startswith("errors.")
            },
        )

    def __add__(self, other: CacheStats) -> CacheStats:
        return CacheStats(
            self.hits + other.hits,
            self.misses + other.misses,
            self.errors + other.errors,
            self.saved_usd + other.saved_usd,
            self.saved_ms + other.saved_ms,
            {
                r: self.errors_by_reason.get(r, 0) + other.errors_by_reason.get(r, 0)
                for r in {*self.errors_by_reason, *other.errors_by_reason}
            },
        )

    def as_dict(self) -> dict[str, Number]:
        """The counters plus ``calls`` and ``hit_rate`` (for JSON output)."""
        out = asdict(self)
        out["errors_by_reason"] = dict(self.errors_by_reason)
        return {**out, "calls": self.calls, "hit_rate": self.hit_rate}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_fields(raw: Mapping[Any, Any] | None) -> dict[str, Number]:
    """A stats hash from ``HGETALL`` (bytes or str, RESP2 or 3): integers stay ints."""
    out: dict[str, Number] = {}
    for name, value in (raw or {}).items():
        text = _text(value)
        try:
            out[_text(name)] = int(text)
        except ValueError:
            out[_text(name)] = float(text)
    return out


class SharedStats:
    """In-process counters of one cache, flushed to Valkey hashes shared by every process.

    No I/O here: the cache's :class:`~langgraph_valkey_cache._failopen.Executor` sends
    :meth:`commands` (one pipelined round trip) when :meth:`due`, and puts the counts
    back with :meth:`restore` when the flush fails.

    Args:
        key: the hash counts go to by default (a key from ``_keys.py``).
        flush_interval: at most one automatic flush per this many seconds (0: every call).

    Counts go to ``key``, or to ``record(key=...)`` for a cache with several hashes
    (one per tool); one flush covers them all.
    """

    def __init__(self, key: str, *, flush_interval: float = 1.0) -> None:
        if flush_interval < 0:
            raise ValueError("flush_interval must be >= 0 seconds")
        self.key = key
        self.flush_interval = flush_interval
        self._pending: Pending = {}
        self._lock = threading.Lock()
        self._flushed_at = time.monotonic()

    def record(self, key: str | None = None, **fields: Number) -> None:
        """Add to this process's pending counts (``hits=1, saved_usd=0.002, ...``).

        An ``int`` goes out with ``HINCRBY``, a ``float`` with ``HINCRBYFLOAT``: record
        a field always with the same type.
        """
        with self._lock:
            bucket = self._pending.get(key or self.key)
            if bucket is None:
                bucket = self._pending[key or self.key] = {}
            for field, n in fields.items():
                if n:
                    bucket[field] = bucket.get(field, 0) + n

    @property
    def pending(self) -> Pending:
        """A copy of the counts not flushed yet."""
        with self._lock:
            return {k: dict(v) for k, v in self._pending.items() if v}

    def due(self, force: bool = False) -> bool:
        """Is there something to flush, and has ``flush_interval`` passed (or ``force``)?"""
        return bool(self._pending) and (
            force or time.monotonic() - self._flushed_at >= self.flush_interval
        )

    def take(self, force: bool = False, allowed: bool = True) -> Pending | None:
        """Hand over the pending counts when a flush is due (and ``allowed``)."""
        with self._lock:
            if not allowed or not self.due(force):
                return None
            pending, self._pending = self._pending, {}
            self._flushed_at = time.monotonic()
            return {k: v for k, v in pending.items() if v} or None

    def restore(self, pending: Pending) -> None:
        """Put counts back after a failed flush (they go out with the next one)."""
        for key, fields in pending.items():
            self.record(key, **fields)

    @staticmethod
    def commands(pending: Pending) -> tuple[tuple[Any, ...], ...]:
        """``HINCRBY``/``HINCRBYFLOAT`` commands adding ``pending`` to the hashes."""
        return tuple(
            ("HINCRBYFLOAT" if isinstance(n, float) else "HINCRBY", key, field, n)
            for key, fields in pending.items()
            for field, n in fields.items()
        )

    @staticmethod
    def read_commands(keys: Iterable[str]) -> tuple[tuple[Any, ...], ...]:
        return tuple(("HGETALL", key) for key in keys)


def read_hashes(client: Any, keys: Iterable[str]) -> list[dict[str, Number]]:
    """The totals of several stats hashes in one pipelined round trip (sync; raises)."""
    keys = list(keys)
    if not keys:
        return []
    pipe = client.pipeline(transaction=False)
    for cmd in SharedStats.read_commands(keys):
        pipe.execute_command(*cmd)
    return [parse_fields(raw) for raw in pipe.execute()]


# -- reading every tier (the ``stats`` command) ----------------------------------------


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
    found = []
    for tier, prefix in prefixes.items():
        hashes = [h for h in read_hashes(client, tier_stats_keys(client, tier, prefix)) if h]
        if hashes:
            total = CacheStats()
            for fields in hashes:
                total += CacheStats.from_fields(fields)
            found.append((tier, prefix, total))
    return found
