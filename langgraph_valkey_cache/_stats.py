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
from collections.abc import Iterable, Mapping, Sequence
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
    "REGISTRY_KEY",
    "TIERS",
    "CacheStats",
    "SharedStats",
    "discover",
    "parse_fields",
    "read_hashes",
    "read_tiers",
    "registered_caches",
    "registry_entry",
    "report",
]

Number = int | float
Pending = dict[str, dict[str, Number]]

#: Tier name -> default key prefix of the caches that keep shared stats.
DEFAULT_PREFIXES = {t: _ALL_PREFIXES[t] for t in ("llm", "semantic", "node", "tools", "embeddings")}


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
        saved_usd: the price of the calls hits avoided: the cached responses' tokens
            priced by genai-prices (or ``prices=``), or what ``cost_of=`` says.
        saved_ms: time hits avoided, where the cache knows it (tool run times).
        tokens_saved: input plus output tokens of the cached responses hits served.
        calls_saved: embedding calls (texts) the embedding cache's hits avoided.
        provider_input_tokens: input tokens of the fresh responses the cache stored.
        provider_read_tokens: how many of them the provider read from its prompt cache.
        provider_write_tokens: how many it wrote to its prompt cache.
        provider_saved_usd: what provider prompt caching saved on them (reads at the
            cached rate against the input rate, minus the write premium; apart from
            ``saved_usd``, which is this cache's own hits).
        by_model: ``model -> {hits, tokens_saved, saved_usd, provider.read_tokens,
            provider.saved_usd}`` (each process labels at most 50 models per tier).
    """

    hits: int = 0
    misses: int = 0
    errors: int = 0
    saved_usd: float = 0.0
    saved_ms: int = 0
    errors_by_reason: Mapping[str, int] = field(default_factory=dict)
    tokens_saved: int = 0
    calls_saved: int = 0
    provider_input_tokens: int = 0
    provider_read_tokens: int = 0
    provider_write_tokens: int = 0
    provider_saved_usd: float = 0.0
    by_model: Mapping[str, Mapping[str, Number]] = field(default_factory=dict)

    @property
    def calls(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.calls if self.calls else 0.0

    @classmethod
    def from_fields(cls, fields: Mapping[str, Number]) -> CacheStats:
        """Totals from a stats hash (unknown fields ignored, missing ones zero)."""
        by_model: dict[str, dict[str, Number]] = {}
        for k, v in fields.items():
            if k.startswith("model."):
                # model.<name>.<counter> or model.<name>.provider.<counter>; names may
                # hold dots, counters never do
                name, _, counter = k[6:].rpartition(".")
                if name.endswith(".provider"):
                    name, counter = name[: -len(".provider")], "provider." + counter
                if name:
                    by_model.setdefault(name, {})[counter] = v
        return cls(
            hits=int(fields.get("hits", 0)),
            misses=int(fields.get("misses", 0)),
            errors=int(fields.get("errors", 0)),
            saved_usd=float(fields.get("saved_usd", 0.0)),
            saved_ms=int(fields.get("saved_ms", 0)),
            errors_by_reason={
                k.split(".", 1)[1]: int(v) for k, v in fields.items() if k.startswith("errors.")
            },
            tokens_saved=int(fields.get("tokens_saved", 0)),
            calls_saved=int(fields.get("calls_saved", 0)),
            provider_input_tokens=int(fields.get("provider.input_tokens", 0)),
            provider_read_tokens=int(fields.get("provider.read_tokens", 0)),
            provider_write_tokens=int(fields.get("provider.write_tokens", 0)),
            provider_saved_usd=float(fields.get("provider.saved_usd", 0.0)),
            by_model=by_model,
        )

    def __add__(self, other: CacheStats) -> CacheStats:
        return CacheStats(
            self.hits + other.hits,
            self.misses + other.misses,
            self.errors + other.errors,
            self.saved_usd + other.saved_usd,
            self.saved_ms + other.saved_ms,
            _add_maps(self.errors_by_reason, other.errors_by_reason),  # type: ignore[arg-type]
            self.tokens_saved + other.tokens_saved,
            self.calls_saved + other.calls_saved,
            self.provider_input_tokens + other.provider_input_tokens,
            self.provider_read_tokens + other.provider_read_tokens,
            self.provider_write_tokens + other.provider_write_tokens,
            self.provider_saved_usd + other.provider_saved_usd,
            {
                m: _add_maps(self.by_model.get(m, {}), other.by_model.get(m, {}))
                for m in {*self.by_model, *other.by_model}
            },
        )

    @property
    def provider_prompt_cache(self) -> dict[str, Number]:
        """The provider-side figures (``read_tokens``, ``write_tokens``, ``saved_usd``,
        ``input_tokens`` and ``read_share``: read tokens per input token)."""
        return {
            "input_tokens": self.provider_input_tokens,
            "read_tokens": self.provider_read_tokens,
            "write_tokens": self.provider_write_tokens,
            "saved_usd": self.provider_saved_usd,
            "read_share": (
                self.provider_read_tokens / self.provider_input_tokens
                if self.provider_input_tokens
                else 0.0
            ),
        }

    def as_dict(self) -> dict[str, Any]:
        """The counters plus ``calls``, ``hit_rate`` and ``provider_prompt_cache``
        (for JSON output)."""
        out = asdict(self)
        out["errors_by_reason"] = dict(self.errors_by_reason)
        out["by_model"] = {m: dict(v) for m, v in sorted(self.by_model.items())}
        for name in ("input_tokens", "read_tokens", "write_tokens", "saved_usd"):
            del out["provider_" + name]
        return {
            **out,
            "calls": self.calls,
            "hit_rate": self.hit_rate,
            "provider_prompt_cache": self.provider_prompt_cache,
        }


def _add_maps(a: Mapping[str, Number], b: Mapping[str, Number]) -> dict[str, Number]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}}


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

    def __init__(
        self,
        key: str,
        *,
        flush_interval: float = 1.0,
        registry: tuple[str, str] | None = None,
    ) -> None:
        if flush_interval < 0:
            raise ValueError("flush_interval must be >= 0 seconds")
        self.key = key
        self.flush_interval = flush_interval
        # (tier, prefix): named in the registry by this process's first flush
        self.registry = registry
        self.registered = registry is None
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

    def flush_commands(self, pending: Pending) -> tuple[tuple[Any, ...], ...]:
        """:meth:`commands`, plus the registry entry until a flush has carried it
        (call :meth:`flushed` after a successful flush)."""
        cmds = self.commands(pending)
        if not self.registered and self.registry is not None:
            tier, prefix = self.registry
            cmds += (("HSET", REGISTRY_KEY, f"{tier}:{prefix}", self.key),)
        return cmds

    def flushed(self) -> None:
        self.registered = True

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


# -- the registry: every cache on a server ----------------------------------------------

#: The well-known HASH naming every cache that has flushed stats: field
#: ``<tier>:<prefix>``, value its stats key. One key for the whole server (on a cluster it
#: lives on one slot); written by each process's first stats flush of each cache.
REGISTRY_KEY = "lgv:caches"

# telemetry tier name -> registry / CLI tier name
_TIER_NAMES = {
    "llm_cache": "llm",
    "semantic_cache": "semantic",
    "node_cache": "node",
    "tool_cache": "tools",
    "embedding_cache": "embeddings",
}


def registry_entry(tier: str, stats_key: str) -> tuple[str, str] | None:
    """``(tier, prefix)`` of a cache from its telemetry tier and stats key (``None`` for
    a component the ``stats`` command does not read)."""
    name = _TIER_NAMES.get(tier)
    if name is None:
        return None
    if name == "tools":
        prefix = stats_key[: -len(":s:")] if stats_key.endswith(":s:") else None
        ok = prefix is not None and ToolCacheKeys(prefix).stats("") == stats_key
    else:
        prefix = stats_key[: -len(":stats")] if stats_key.endswith(":stats") else None
        ok = prefix is not None and LLMCacheKeys(prefix).stats() == stats_key
    return (name, prefix) if ok and prefix else None


def registered_caches(client: Any) -> dict[str, list[str]]:
    """Tier -> prefixes of every cache in the registry (sync; raises)."""
    found: dict[str, set[str]] = {}
    for entry in (client.hgetall(REGISTRY_KEY) or {}).keys():
        tier, _, prefix = _text(entry).partition(":")
        if tier in TIERS and prefix:
            found.setdefault(tier, set()).add(prefix)
    return {t: sorted(p) for t, p in found.items()}


# -- reading every tier (the ``stats`` command) ----------------------------------------

#: Every tier the ``stats`` command reads, in its output order.
TIERS = ("llm", "semantic", "node", "tools", "embeddings")


def tier_stats_keys(client: Any, tier: str, prefix: str) -> list[str]:
    """The stats hashes of one tier under ``prefix`` (SCAN per primary for the tool
    cache's per-tool hashes, never KEYS)."""
    if tier in ("llm", "semantic", "embeddings"):
        return [LLMCacheKeys(prefix).stats()]
    if tier == "node":
        return [NodeCacheKeys(prefix).stats()]
    if tier == "tools":
        keys = ToolCacheKeys(prefix)
        return sorted({_text(k) for k in scan_keys(client, keys.stats_pattern())})
    raise ValueError(f"unknown tier {tier!r}; one of {', '.join(TIERS)}")


def read_tiers(
    client: Any, prefixes: Mapping[str, str | Sequence[str]]
) -> list[tuple[str, str, CacheStats]]:
    """``(tier, prefix, totals)`` of every cache that has stats under its prefix.

    Args:
        client: a sync client (standalone or cluster).
        prefixes: tier name (``llm``, ``semantic``, ``node``, ``tools``, ``embeddings``)
            -> key prefix, or several.
    """
    found = []
    for tier, some in prefixes.items():
        for prefix in [some] if isinstance(some, str) else some:
            keys = tier_stats_keys(client, tier, prefix)
            hashes = [h for h in read_hashes(client, keys) if h]
            if hashes:
                total = CacheStats()
                for fields in hashes:
                    total += CacheStats.from_fields(fields)
                found.append((tier, prefix, total))
    return found


def discover(client: Any) -> dict[str, list[str]]:
    """Every cache to report: the registry's plus the default prefixes (caches that
    flushed before the registry existed)."""
    out = registered_caches(client)
    for tier, prefix in DEFAULT_PREFIXES.items():
        if prefix not in out.get(tier, []):
            out.setdefault(tier, []).append(prefix)
    return {t: out[t] for t in TIERS if t in out}


def report(found: Sequence[tuple[str, str, CacheStats]]) -> dict[str, Any]:
    """The ``stats --json`` object: a key per tier (totals over its caches, each cache
    under ``caches``) and ``provider_prompt_cache`` (over every tier)."""
    out: dict[str, Any] = {}
    provider = CacheStats()
    for tier in TIERS:
        rows = [(p, st) for t, p, st in found if t == tier]
        if not rows:
            continue
        total = CacheStats()
        for _, st in rows:
            total += st
        provider += total
        entry = total.as_dict()
        entry["prefixes"] = [p for p, _ in rows]
        entry["caches"] = {p: st.as_dict() for p, st in rows}
        out[tier] = entry
    out["provider_prompt_cache"] = provider.provider_prompt_cache
    return out
