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

from langgraph_valkey_cache._cachebase import CacheCore
from langgraph_valkey_cache._client import CACHE_TIMEOUT, cache_client_from_url
from langgraph_valkey_cache._failopen import Cmd, Pipe, Plan, Scan, Tally
from langgraph_valkey_cache._keys import DEFAULT_PREFIXES, LLMCacheKeys

__all__ = ["LLMCacheCodec", "ValkeyCache", "normalize_whitespace", "tally_generations"]

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


# The compact format: {"lvc":2,"g":[{"m": AIMessage.model_dump()} | {"t": text}, "i": info]}.
# Decoding builds exactly these two classes from plain JSON (nothing named by the data
# is ever imported or instantiated), ~5x faster than reviving LangChain's dumps.
_COMPACT = '{"lvc":2,'


def _compact(gens: list[Generation]) -> str | None:
    out = []
    for g in gens:
        if type(g) is ChatGeneration and type(g.message) is AIMessage:
            item: dict[str, Any] = {"m": g.message.model_dump()}
        elif type(g) is Generation:
            item = {"t": g.text}
        else:  # chunks and other subclasses: LangChain's format keeps their type
            return None
        if g.generation_info:
            item["i"] = g.generation_info
        out.append(item)
    try:
        return _COMPACT + json.dumps({"g": out}, separators=(",", ":"))[1:]
    except (TypeError, ValueError):  # a value JSON cannot hold: LangChain's format
        return None


def _from_compact(text: str) -> list[Generation]:
    gens: list[Generation] = []
    for item in json.loads(text)["g"]:
        info = item.get("i")
        if "m" in item:
            fields = item["m"]
            if not isinstance(fields, dict) or fields.get("type") != "ai":
                raise ValueError("not an AI message")
            gens.append(ChatGeneration(message=AIMessage(**fields), generation_info=info))
        else:
            gens.append(Generation(text=item["t"], generation_info=info))
    return gens


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
        """The stored form: the compact format when every generation is a plain
        ``Generation`` or a ``ChatGeneration`` of an ``AIMessage`` whose fields are JSON
        (what models return), else LangChain's ``dumps`` (revived with the allowlist)."""
        gens = list(return_val)
        for g in gens:
            if not isinstance(g, Generation):
                raise TypeError(f"LLM cache values are Generations, got {type(g).__name__}")
        compact = _compact(gens)
        return compact if compact is not None else dumps(gens)

    @staticmethod
    def decode(raw: str | bytes | None) -> list[Generation] | None:
        """Generations from a stored value; ``None`` (a miss) for absent or unreadable data."""
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            value = _from_compact(text) if text.startswith(_COMPACT) else _revive(text)
        except Exception as exc:  # a foreign or corrupt value is a miss, not a crash
            logger.warning("LLM cache entry unreadable, treated as a miss: %s", exc)
            return None
        if not isinstance(value, list) or not all(isinstance(g, Generation) for g in value):
            logger.warning("LLM cache entry is not a list of generations; treated as a miss")
            return None
        return value

    def set_args(self) -> tuple[Any, ...]:
        """The expiry arguments of the ``SET`` (TTL in the same command as the value)."""
        return () if self.ttl_ms is None else ("PX", self.ttl_ms)


class ValkeyCache(CacheCore, BaseCache):
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
        timeout: the latency budget of one cache operation in seconds (async: enforced
            by a deadline whatever the client; sync: the client's socket timeout, which
            :func:`~langgraph_valkey_cache.cache_client_from_url` sets to the budget).
        stats_flush_interval: seconds between flushes of this process's hit/miss counts
            to the ``<prefix>:stats`` hash every process adds to (see :meth:`stats`).

    Example:
        >>> from langchain_core.globals import set_llm_cache
        >>> from langgraph_valkey_cache import ValkeyCache, cache_client_from_url
        >>> set_llm_cache(ValkeyCache(cache_client_from_url("valkey://localhost:6379"), ttl=3600))
        ... # doctest: +SKIP

    Whatever goes wrong with the server (down, stalled, paused, ACL, OOM), a lookup is a
    miss and an update a no-op within the budget, and the model is simply called; the
    server's breaker (shared by every cache on it) then skips it until it answers.
    ``clear`` raises, since a silently failed invalidation would keep serving what the
    caller meant to remove.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        async_client: Any = None,
        prefix: str = DEFAULT_PREFIXES["llm"],
        ttl: float | None = None,
        normalize: bool | Callable[[str], str] = False,
        metrics: Any = True,
        cost_of: Callable[[Sequence[Generation]], float] | None = None,
        timeout: float = CACHE_TIMEOUT,
        stats_flush_interval: float = 1.0,
    ) -> None:
        self.codec = LLMCacheCodec(prefix, ttl=ttl, normalize=normalize)
        self.cost_of = cost_of
        self._init_core(
            client, async_client, tier="llm_cache", stats_key=self.codec.keys.stats(),
            metrics=metrics, timeout=timeout, stats_flush_interval=stats_flush_interval,
        )  # fmt: skip

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> ValkeyCache:
        """A cache with a sync and an async client built for ``url`` (budget as timeout)."""
        timeout = kwargs.get("timeout", CACHE_TIMEOUT)
        return cls(
            cache_client_from_url(url, timeout=timeout),
            async_client=cache_client_from_url(url, asyncio=True, timeout=timeout),
            **kwargs,
        )

    # -- plans (no I/O) ------------------------------------------------------------------

    def _plan_lookup_many(self, keys: list[str]) -> Plan:
        if len(keys) == 1:
            raws = [(yield Cmd(("GET", keys[0])))]
        else:
            raws = yield Pipe(tuple(("GET", k) for k in keys))
        found = [self.codec.decode(r) for r in raws]
        yield tally_generations(found, self.cost_of)
        return found

    def _plan_lookup(self, prompt: str, llm_string: str) -> Plan:
        """One lookup (the interface the middleware drives, shared with the semantic cache)."""
        gens = self.codec.decode((yield Cmd(("GET", self.codec.key(prompt, llm_string)))))
        yield tally_generations((gens,), self.cost_of)
        return gens

    def _plan_update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> Plan:
        value = self.codec.encode(return_val)
        yield Cmd(("SET", self.codec.key(prompt, llm_string), value, *self.codec.set_args()))
        yield Tally(stored_bytes=len(value))

    def _plan_clear(self, llm_string: str | None) -> Plan:
        keys = yield Scan(self.codec.keys.exact_pattern(llm_string))
        yield from unlink_plan(keys, self.cluster)

    @property
    def cluster(self) -> bool:
        return (self._exec or self._aexec).cluster

    # -- BaseCache ----------------------------------------------------------------------

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return self._run(self._plan_lookup(prompt, llm_string), "lookup", lookups=1)

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        self._run(self._plan_update(prompt, llm_string, return_val), "update")

    def clear(self, **kwargs: Any) -> None:
        """Delete this cache's entries; ``llm_string=...`` deletes one model's only."""
        self._run_strict(self._plan_clear(kwargs.get("llm_string")), "clear")

    def invalidate_model(self, llm_string: str) -> None:
        """Delete every entry cached for this model configuration."""
        self.clear(llm_string=llm_string)

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        return await self._arun(self._plan_lookup(prompt, llm_string), "lookup", lookups=1)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        await self._arun(self._plan_update(prompt, llm_string, return_val), "update")

    async def aclear(self, **kwargs: Any) -> None:
        await self._arun_strict(self._plan_clear(kwargs.get("llm_string")), "clear")

    async def ainvalidate_model(self, llm_string: str) -> None:
        await self.aclear(llm_string=llm_string)

    def lookup_many(self, items: Sequence[tuple[str, str]]) -> list[list[Generation] | None]:
        """Look up many ``(prompt, llm_string)`` pairs in one pipelined round trip."""
        if not items:
            return []
        plan = self._plan_lookup_many([self.codec.key(p, s) for p, s in items])
        return self._run(plan, "lookup_many", default=[None] * len(items), lookups=len(items))

    async def alookup_many(self, items: Sequence[tuple[str, str]]) -> list[list[Generation] | None]:
        """Async :meth:`lookup_many`."""
        if not items:
            return []
        plan = self._plan_lookup_many([self.codec.key(p, s) for p, s in items])
        return await self._arun(
            plan, "lookup_many", default=[None] * len(items), lookups=len(items)
        )


_MISS = Tally(misses=1)
_HIT = Tally(hits=1)


def tally_generations(
    found: Sequence[Sequence[Generation] | None],
    cost_of: Callable[[Sequence[Generation]], float] | None,
) -> Tally:
    """The :class:`Tally` of LLM-cache lookups: hits, misses and what the hits saved."""
    hits = sum(1 for g in found if g is not None)
    if len(found) == 1:
        if not hits:
            return _MISS
        if cost_of is None:
            return _HIT
    saved = 0.0
    if cost_of is not None:
        for gens in found:
            if gens is None:
                continue
            try:
                saved += float(cost_of(gens))
            except Exception as exc:  # an estimator bug must not turn a hit into a failure
                logger.warning("cost_of failed: %s", exc)
    return Tally(hits=hits, misses=len(found) - hits, saved_usd=saved)


def unlink_plan(keys: Sequence[Any], cluster: bool) -> Plan:
    """UNLINK ``keys`` in batches (per key on a cluster: they span slots); returns how
    many existed."""
    deleted = 0
    for i in range(0, len(keys), _DELETE_BATCH):
        batch = keys[i : i + _DELETE_BATCH]
        if cluster:
            deleted += sum(int(n) for n in (yield Pipe(tuple(("UNLINK", k) for k in batch))))
        else:
            deleted += int((yield Cmd(("UNLINK", *batch))))
    return deleted
