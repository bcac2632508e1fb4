"""``ValkeyCache``: an exact LLM cache for ``set_llm_cache`` / a model's ``cache=``.

One STRING per ``(llm_string, prompt)`` under ``<prefix>:x:<model digest>:<entry digest>``
(see :class:`~langgraph_valkey_cache._keys.LLMCacheKeys`); the value is every generation
serialised with ``langchain_core.load.dumps`` and read back with an explicit allowlist
(generation and AI message classes only; no pickle). The TTL goes in the same ``SET``.

The I/O-free parts (keys, encoding, decoding, normalisation) live in :class:`LLMCacheCodec`
and are shared with the semantic cache and the model-call middleware; the sync and async
methods only execute commands.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core._api import suppress_langchain_beta_warning
from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.load import dumps, loads
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk
from langchain_core.runnables import run_in_executor

from langgraph_valkey_cache._client import (
    ascan_keys,
    client_from_url,
    is_async_client,
    scan_keys,
)
from langgraph_valkey_cache._keys import LLMCacheKeys
from langgraph_valkey_cache._stats import SharedStats, SharedStatsMixin
from langgraph_valkey_cache._telemetry import Telemetry
from langgraph_valkey_cache.cache._failopen import CACHE_ERRORS, Breaker

__all__ = ["LLMCacheCodec", "ValkeyCache", "normalize_whitespace"]

logger = logging.getLogger("langgraph_valkey_cache.cache")

# What a cached value may contain: nothing else is ever instantiated on read.
_ALLOWED: list[Any] = [
    Generation,
    ChatGeneration,
    GenerationChunk,
    ChatGenerationChunk,
    AIMessage,
    AIMessageChunk,
]
_DELETE_BATCH = 500


def _make_reviver() -> Callable[[str], Any]:
    """``loads(text, allowed_objects=_ALLOWED)``, with the allowlist computed once.

    ``loads`` rebuilds its allowlist on every call (~0.3 ms, most of a cache hit), so
    when this langchain-core exposes the pieces, the reviver is built once and the same
    walk as ``load`` (escaped user dicts first, then children, then the reviver) runs.
    """
    try:
        from langchain_core.load._validation import _is_escaped_dict, _unescape_value
        from langchain_core.load.load import Reviver

        reviver = Reviver(_ALLOWED)
    except Exception:  # another langchain-core layout: the public path, slower

        def slow(text: str) -> Any:
            with suppress_langchain_beta_warning():
                return loads(text, allowed_objects=_ALLOWED)

        return slow

    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            if _is_escaped_dict(obj):
                return _unescape_value(obj)
            return reviver({k: walk(v) for k, v in obj.items()})
        if isinstance(obj, list):
            return [walk(o) for o in obj]
        return obj

    return lambda text: walk(json.loads(text))


_WS = re.compile(r"\s+")
_revive = _make_reviver()


def _collapse(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _normalize_node(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in ("content", "text") and isinstance(v, str):
                out[k] = _collapse(v)
            else:
                out[k] = _normalize_node(v)
        return out
    if isinstance(node, list):
        return [_normalize_node(v) for v in node]
    return node


def normalize_whitespace(prompt: str) -> str:
    """Collapse runs of whitespace in the prompt's text (opt-in key normalisation).

    A chat prompt (LangChain's JSON dump of the messages) is parsed and only message
    text is collapsed, so the JSON structure stays intact; any other prompt is
    collapsed as a whole.
    """
    if prompt[:1] == "[":
        try:
            parsed = json.loads(prompt)
        except ValueError:
            return _collapse(prompt)
        return json.dumps(_normalize_node(parsed), sort_keys=True, separators=(",", ":"))
    return _collapse(prompt)


class LLMCacheCodec:
    """Keys and value encoding of the LLM caches (no I/O)."""

    def __init__(
        self,
        prefix: str,
        *,
        ttl: float | None = None,
        normalize: bool | Callable[[str], str] = False,
    ) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds or None")
        self.keys = LLMCacheKeys(prefix)
        self.ttl_ms = None if ttl is None else max(1, int(ttl * 1000))
        if normalize is True:
            self._normalize: Callable[[str], str] | None = normalize_whitespace
        elif normalize is False:
            self._normalize = None
        else:
            self._normalize = normalize

    def prompt(self, prompt: str) -> str:
        return self._normalize(prompt) if self._normalize else prompt

    def key(self, prompt: str, llm_string: str) -> str:
        return self.keys.exact(llm_string, self.prompt(prompt))

    @staticmethod
    def encode(return_val: RETURN_VAL_TYPE) -> str:
        gens = list(return_val)
        for g in gens:
            if not isinstance(g, Generation):
                raise TypeError(f"LLM cache values are Generations, got {type(g).__name__}")
        return dumps(gens)

    @staticmethod
    def decode(raw: str | bytes | None) -> list[Generation] | None:
        """Generations from a stored value; ``None`` (a miss) for absent or unreadable data."""
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            value = _revive(text)
        except Exception as exc:  # a foreign or corrupt value is a miss, not a crash
            logger.warning("LLM cache entry unreadable, treated as a miss: %s", exc)
            return None
        if not isinstance(value, list) or not all(isinstance(g, Generation) for g in value):
            logger.warning("LLM cache entry is not a list of generations; treated as a miss")
            return None
        return value

    def set_args(self) -> dict[str, Any]:
        return {} if self.ttl_ms is None else {"px": self.ttl_ms}


def count_result(
    telemetry: Telemetry,
    gens: Sequence[Generation] | None,
    cost_of: Callable[[Sequence[Generation]], float] | None,
    stats: SharedStats | None = None,
) -> None:
    """Count a hit (and what it saved) or a miss, in the metrics and the shared stats."""
    if gens is None:
        telemetry.result("miss")
        if stats is not None:
            stats.record(misses=1)
        return
    telemetry.result("hit")
    saved = 0.0
    if cost_of is not None:
        try:
            saved = float(cost_of(gens))
        except Exception as exc:  # an estimator bug must not turn a hit into a failure
            logger.warning("cost_of failed: %s", exc)
        telemetry.saved(saved)
    if stats is not None:
        stats.record(hits=1, saved_usd=saved)


class _ClientPair:
    """A sync client, an async client, or both, from what the user passed."""

    def __init__(self, client: Any, async_client: Any, owner: str) -> None:
        if client is not None and is_async_client(client):
            if async_client is not None:
                raise ValueError("pass the async client as async_client, the sync one as client")
            client, async_client = None, client
        if async_client is not None and not is_async_client(async_client):
            raise TypeError("async_client must be a valkey.asyncio client")
        if client is None and async_client is None:
            raise ValueError(f"{owner} needs a client (sync, async, or both)")
        self.sync_client = client
        self.async_client = async_client
        self._owner = owner

    def shared_stats(
        self, key: str, flush_interval: float, breaker: Breaker, telemetry: Telemetry
    ) -> SharedStats:
        return SharedStats(
            self.sync_client,
            key,
            aclient=self.async_client,
            flush_interval=flush_interval,
            breaker=breaker,
            telemetry=telemetry,
        )

    def sync(self) -> Any:
        if self.sync_client is None:
            raise RuntimeError(
                f"{self._owner} was given only an async client; call the a* methods, or pass "
                "a sync client too (client=..., async_client=...)"
            )
        return self.sync_client


class ValkeyCache(SharedStatsMixin, BaseCache):
    """Exact-match LLM cache on Valkey.

    Args:
        client: a ``valkey.Valkey``/``ValkeyCluster`` client, or a ``valkey.asyncio`` one.
        async_client: an async client for the ``a*`` methods (used natively, no executor).
        prefix: key prefix of this cache; ``clear()`` touches nothing else.
        ttl: seconds each entry lives (set in the same ``SET``); ``None`` keeps entries.
        normalize: ``True`` collapses whitespace in prompts before hashing (or pass a
            callable). Off by default: it makes differently spaced prompts share answers.
        metrics: ``False`` turns Prometheus metrics off, or pass a registry.
        cost_of: ``cost_of(generations) -> USD`` estimates what a hit saved (for the
            ``cost_saved_usd`` metric), e.g. from the cached ``usage_metadata``.
        failure_cooldown: after a server error, seconds during which lookups are misses
            and updates no-ops without touching the server (one timeout and one warning
            per cooldown while it is down or stalled, not one per model call); 0: off.
        stats_flush_interval: seconds between flushes of this process's hit/miss counts
            to the ``<prefix>:stats`` hash every process adds to (see :meth:`stats`).

    Example:
        >>> from langchain_core.globals import set_llm_cache
        >>> from langgraph_valkey_cache import ValkeyCache, client_from_url
        >>> set_llm_cache(ValkeyCache(client_from_url("valkey://localhost:6379"), ttl=3600))
        ... # doctest: +SKIP

    Server errors make a lookup a miss and an update a no-op (logged, counted); the model
    is then simply called, and the server is skipped for ``failure_cooldown``. ``clear``
    raises, since a silently failed invalidation would keep serving what the caller
    meant to remove.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        async_client: Any = None,
        prefix: str = "lgv:llm",
        ttl: float | None = None,
        normalize: bool | Callable[[str], str] = False,
        metrics: Any = True,
        cost_of: Callable[[Sequence[Generation]], float] | None = None,
        failure_cooldown: float = 5.0,
        stats_flush_interval: float = 1.0,
    ) -> None:
        self._clients = _ClientPair(client, async_client, "ValkeyCache")
        self.codec = LLMCacheCodec(prefix, ttl=ttl, normalize=normalize)
        self.telemetry = Telemetry("llm_cache", metrics=metrics)
        self.cost_of = cost_of
        self.breaker = Breaker(failure_cooldown)
        self.shared_stats = self._clients.shared_stats(
            self.codec.keys.stats(), stats_flush_interval, self.breaker, self.telemetry
        )

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> ValkeyCache:
        """A cache with a sync and an async client built from ``url`` (timeouts, retries)."""
        return cls(client_from_url(url), async_client=client_from_url(url, asyncio=True), **kwargs)

    @property
    def client(self) -> Any:
        return self._clients.sync_client

    @property
    def async_client(self) -> Any:
        return self._clients.async_client

    # -- helpers shared by both flavours -------------------------------------------------

    def _hit_or_miss(self, raw: Any) -> list[Generation] | None:
        gens = self.codec.decode(raw)
        count_result(self.telemetry, gens, self.cost_of, self.shared_stats)
        return gens

    def _skipped(self, n: int = 1) -> None:
        """Lookups answered as misses without the server (the breaker is open)."""
        self.telemetry.result("miss", n)
        self.shared_stats.record(misses=n)

    def _failed(self, operation: str, exc: BaseException, lookups: int = 0) -> None:
        self.breaker.fail(self.telemetry, operation, exc)
        self.shared_stats.record(errors=1, misses=lookups)

    # -- sync ---------------------------------------------------------------------------

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        key = self.codec.key(prompt, llm_string)
        client = self._clients.sync()
        if not self.breaker.closed:
            self._skipped()
            return None
        with self.telemetry.operation("lookup"):
            try:
                raw = client.get(key)
            except CACHE_ERRORS as exc:
                self._failed("lookup", exc, lookups=1)
                return None
            gens = self._hit_or_miss(raw)
        self.shared_stats.maybe_flush()
        return gens

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        key = self.codec.key(prompt, llm_string)
        value = self.codec.encode(return_val)
        client = self._clients.sync()
        if not self.breaker.closed:
            return
        with self.telemetry.operation("update"):
            try:
                client.set(key, value, **self.codec.set_args())
            except CACHE_ERRORS as exc:
                self._failed("update", exc)
                return
            self.telemetry.stored(len(value))

    def clear(self, **kwargs: Any) -> None:
        """Delete this cache's entries; ``llm_string=...`` deletes one model's only."""
        pattern = self.codec.keys.exact_pattern(kwargs.get("llm_string"))
        client = self._clients.sync()
        with self.telemetry.operation("clear"):
            batch: list[Any] = []
            for key in scan_keys(client, pattern):
                batch.append(key)
                if len(batch) >= _DELETE_BATCH:
                    client.unlink(*batch)
                    batch = []
            if batch:
                client.unlink(*batch)

    def invalidate_model(self, llm_string: str) -> None:
        """Delete every entry cached for this model configuration."""
        self.clear(llm_string=llm_string)

    # -- async --------------------------------------------------------------------------

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        aclient = self._clients.async_client
        if aclient is None:
            return await super().alookup(prompt, llm_string)
        key = self.codec.key(prompt, llm_string)
        if not self.breaker.closed:
            self._skipped()
            return None
        with self.telemetry.operation("lookup"):
            try:
                raw = await aclient.get(key)
            except CACHE_ERRORS as exc:
                self._failed("lookup", exc, lookups=1)
                return None
            gens = self._hit_or_miss(raw)
        await self.shared_stats.amaybe_flush()
        return gens

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        aclient = self._clients.async_client
        if aclient is None:
            await super().aupdate(prompt, llm_string, return_val)
            return
        key = self.codec.key(prompt, llm_string)
        value = self.codec.encode(return_val)
        if not self.breaker.closed:
            return
        with self.telemetry.operation("update"):
            try:
                await aclient.set(key, value, **self.codec.set_args())
            except CACHE_ERRORS as exc:
                self._failed("update", exc)
                return
            self.telemetry.stored(len(value))

    async def aclear(self, **kwargs: Any) -> None:
        aclient = self._clients.async_client
        if aclient is None:
            await super().aclear(**kwargs)
            return
        pattern = self.codec.keys.exact_pattern(kwargs.get("llm_string"))
        with self.telemetry.operation("clear"):
            batch: list[Any] = []
            async for key in ascan_keys(aclient, pattern):
                batch.append(key)
                if len(batch) >= _DELETE_BATCH:
                    await aclient.unlink(*batch)
                    batch = []
            if batch:
                await aclient.unlink(*batch)

    async def ainvalidate_model(self, llm_string: str) -> None:
        await self.aclear(llm_string=llm_string)

    # -- batches ------------------------------------------------------------------------

    def lookup_many(self, items: Sequence[tuple[str, str]]) -> list[list[Generation] | None]:
        """Look up many ``(prompt, llm_string)`` pairs in one pipelined round trip."""
        keys = [self.codec.key(p, s) for p, s in items]
        if not keys:
            return []
        client = self._clients.sync()
        if not self.breaker.closed:
            self._skipped(len(keys))
            return [None] * len(keys)
        with self.telemetry.operation("lookup_many"):
            try:
                pipe = client.pipeline(transaction=False)
                for k in keys:
                    pipe.get(k)
                raws = pipe.execute()
            except CACHE_ERRORS as exc:
                self._failed("lookup_many", exc, lookups=len(keys))
                return [None] * len(keys)
            found = [self._hit_or_miss(r) for r in raws]
        self.shared_stats.maybe_flush()
        return found

    async def alookup_many(self, items: Sequence[tuple[str, str]]) -> list[list[Generation] | None]:
        aclient = self._clients.async_client
        if aclient is None:
            return await run_in_executor(None, self.lookup_many, items)
        keys = [self.codec.key(p, s) for p, s in items]
        if not keys:
            return []
        if not self.breaker.closed:
            self._skipped(len(keys))
            return [None] * len(keys)
        with self.telemetry.operation("lookup_many"):
            try:
                pipe = aclient.pipeline(transaction=False)
                for k in keys:
                    pipe.get(k)
                raws = await pipe.execute()
            except CACHE_ERRORS as exc:
                self._failed("lookup_many", exc, lookups=len(keys))
                return [None] * len(keys)
            found = [self._hit_or_miss(r) for r in raws]
        await self.shared_stats.amaybe_flush()
        return found

    def close(self) -> None:
        """Flush the pending stats and close the sync client."""
        if self._clients.sync_client is not None:
            self.shared_stats.flush()
            self._clients.sync_client.close()

    async def aclose(self) -> None:
        """Flush the pending stats and close the async client."""
        if self._clients.async_client is not None:
            await self.shared_stats.aflush()
            await self._clients.async_client.aclose()
