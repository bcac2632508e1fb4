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

import functools
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core._api import suppress_langchain_beta_warning
from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.load import dumps, loads
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk

from langgraph_valkey_cache._cachebase import CacheCore
from langgraph_valkey_cache._client import CACHE_TIMEOUT, with_local_cache
from langgraph_valkey_cache._control import (
    NO_CONTROL,
    CacheControl,
    cache_config,
    current_config,
    normalize_scope,
    read_control,
    scope_values,
    warn_missing_scope,
)
from langgraph_valkey_cache._failopen import BYPASS, Cmd, Pipe, Plan, Scan, Tally
from langgraph_valkey_cache._keys import DEFAULT_PREFIXES, LLMCacheKeys
from langgraph_valkey_cache._prices import (
    DEFAULT_PRICER,
    Pricer,
    PriceTable,
    fresh_tally,
    lookup_tally,
)

__all__ = [
    "LLMCacheCodec",
    "LLMRequest",
    "ValkeyCache",
    "cache_config",
    "canonical_prompt",
    "normalize_whitespace",
    "project_messages",
    "tally_generations",
]

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


_AI_FIELDS = frozenset(AIMessage.model_fields)
_DICT_FIELDS = ("additional_kwargs", "response_metadata")
_LIST_FIELDS = ("tool_calls", "invalid_tool_calls")


def _dumped_shape(fields: dict[str, Any]) -> bool:
    """``fields`` has the shape ``AIMessage.model_dump()`` gives this langchain-core."""
    if not fields.keys() <= _AI_FIELDS or type(fields.get("content")) is not str:
        return False
    if any(type(fields.get(k, {})) is not dict for k in _DICT_FIELDS):
        return False
    if any(type(fields.get(k, [])) is not list for k in _LIST_FIELDS):
        return False
    for call in fields.get("tool_calls", ()):
        if type(call) is not dict or type(call.get("name")) is not str:
            return False
        if type(call.get("args")) is not dict or type(call.get("id", "")) not in (str, type(None)):
            return False
    usage = fields.get("usage_metadata")
    return (usage is None or type(usage) is dict) and all(
        type(fields.get(k)) in (str, type(None)) for k in ("id", "name")
    )


def _generation(fields: Any, info: Any) -> ChatGeneration:
    if type(fields) is not dict or fields.get("type") != "ai":
        raise ValueError("not an AI message")
    if not _dumped_shape(fields):  # another version's dump, or damaged: validate it
        return ChatGeneration(message=AIMessage(**fields), generation_info=info)
    # what model_dump() gave, in the shape checked above: rebuilt without running
    # pydantic's validators again (~2.5x faster; the same message, field for field)
    msg = AIMessage.model_construct(**fields)
    if info is not None and type(info) is not dict:
        raise ValueError("generation_info is not a mapping")
    return ChatGeneration.model_construct(message=msg, text=msg.content, generation_info=info)


def _from_compact(text: str) -> list[Generation]:
    gens: list[Generation] = []
    for item in json.loads(text)["g"]:
        info = item.get("i")
        if "m" in item:
            gens.append(_generation(item["m"], info))
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


# -- what the key holds: the provider's view of the messages (pure) ------------------------

_KINDS = {
    "HumanMessage": "human",
    "AIMessage": "ai",
    "SystemMessage": "system",
    "ToolMessage": "tool",
    "ChatMessage": "chat",
    "FunctionMessage": "function",
}
_CALL_FIELDS = ("name", "args", "id")
#: Marks a projected prompt, so no raw prompt string can produce the same key.
CANONICAL_PREFIX = "lvc-messages:1:"


def _project_calls(calls: Any) -> list[Any]:
    if not isinstance(calls, list):
        return []
    return [{f: c.get(f) for f in _CALL_FIELDS} if isinstance(c, dict) else c for c in calls]


def _project_message(node: Any) -> dict[str, Any] | None:
    """One message of LangChain's dump as the provider sees it, or None (not a message)."""
    if not isinstance(node, dict) or node.get("lc") != 1 or node.get("type") != "constructor":
        return None
    ident = node.get("id")
    kwargs = node.get("kwargs")
    if not isinstance(ident, list) or not ident or not isinstance(kwargs, dict):
        return None
    cls = ident[-1]
    kind = _KINDS.get(cls.removesuffix("Chunk")) if isinstance(cls, str) else None
    if kind is None:
        return None
    out: dict[str, Any] = {"type": kind, "content": kwargs.get("content", "")}
    for field in ("role", "name", "tool_call_id"):
        if kwargs.get(field) is not None:
            out[field] = kwargs[field]
    if kind == "tool" and kwargs.get("status", "success") != "success":
        out["status"] = kwargs["status"]  # providers send a failed tool call as an error
    if kind == "ai":
        for field in ("tool_calls", "invalid_tool_calls"):
            calls = _project_calls(kwargs.get(field))
            if calls:
                out[field] = calls
        extra = kwargs.get("additional_kwargs")
        if isinstance(extra, dict) and extra.get("function_call") is not None:
            out["function_call"] = extra["function_call"]  # legacy function calling
    return out


def project_messages(prompt: str) -> list[dict[str, Any]] | None:
    """The messages of a chat prompt (LangChain's JSON dump of them, what it hands
    ``BaseCache.lookup``) as the provider sees them, or ``None`` for any other prompt.

    Each message keeps its type (``human``, ``ai``, ``system``, ``tool``, ``chat``,
    ``function``; a chunk is its message), ``content`` (text or blocks, as is),
    ``role``, ``name``, ``tool_call_id``, a tool message's non-success ``status``,
    and an AI message's ``tool_calls``/``invalid_tool_calls`` (name, args, id each)
    and legacy ``function_call``. Left out: ids, ``usage_metadata``,
    ``response_metadata``, other ``additional_kwargs``, tool artifacts: what differs
    between a model's answer and the same answer served from the cache.
    """
    if prompt[:1] != "[":
        return None
    try:
        nodes = json.loads(prompt)
    except ValueError:
        return None
    if not isinstance(nodes, list) or not nodes:
        return None
    out = []
    for node in nodes:
        msg = _project_message(node)
        if msg is None:
            return None
        out.append(msg)
    return out


@functools.lru_cache(maxsize=32)
def canonical_prompt(prompt: str) -> str:
    """The text a cache key is built from: a chat prompt's :func:`project_messages` as
    canonical JSON (marked with :data:`CANONICAL_PREFIX`); any other prompt as is.

    Memoised, a few entries only (agent prompts can be large): one model call builds
    the same key several times (lookup, single-flight lease, store).
    """
    messages = project_messages(prompt)
    if messages is None:
        return prompt
    return CANONICAL_PREFIX + json.dumps(messages, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """What one request asks of an LLM cache: its control and scope values
    (``scope is None``: a scope value is missing, the cache is bypassed)."""

    control: CacheControl = NO_CONTROL
    scope: tuple[tuple[str, str], ...] | None = ()

    @property
    def reads(self) -> bool:
        return self.scope is not None and self.control.reads

    @property
    def writes(self) -> bool:
        return self.scope is not None and self.control.writes


UNSCOPED = LLMRequest()


def llm_request(
    owner: object, scope: tuple[str, ...], config: Any = None, context: Any = None
) -> LLMRequest:
    """The :class:`LLMRequest` of the current run (``config``, else the config LangChain
    set for the running runnable; ``context``: an agent's runtime context)."""
    if config is None:
        config = current_config()
    control = read_control(config)
    if not scope:
        return UNSCOPED if control is NO_CONTROL else LLMRequest(control)
    values = scope_values(config, scope, context)
    if values is None:
        warn_missing_scope(owner, scope)
        return LLMRequest(control, None)
    return LLMRequest(control, tuple(zip(scope, values, strict=True)))


class LLMCacheCodec:
    """Keys and value encoding of the LLM caches (no I/O)."""

    def __init__(
        self,
        prefix: str,
        *,
        ttl: float | None = None,
        normalize: bool | Callable[[str], str] = False,
        scope: Sequence[str] | str | None = None,
    ) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds or None")
        self.keys = LLMCacheKeys(prefix)
        self.ttl_ms = None if ttl is None else max(1, int(ttl * 1000))
        self.scope = normalize_scope(scope)
        if normalize is True:
            self._normalize: Callable[[str], str] | None = normalize_whitespace
        elif normalize is False:
            self._normalize = None
        else:
            self._normalize = normalize

    def prompt(self, prompt: str) -> str:
        """What the key holds of ``prompt``: normalised (if asked), then projected
        (:func:`canonical_prompt`)."""
        return canonical_prompt(self._normalize(prompt) if self._normalize else prompt)

    def key(
        self, prompt: str, llm_string: str, scope: Sequence[tuple[str, str]] | None = ()
    ) -> str:
        return self.keys.exact(llm_string, self.prompt(prompt), scope or ())

    def request(self, owner: object, config: Any = None, context: Any = None) -> LLMRequest:
        """This cache's :class:`LLMRequest` for the current run (see :func:`llm_request`)."""
        return llm_request(owner, self.scope, config, context)

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

    def entry_ttl_ms(self, req: LLMRequest = UNSCOPED) -> int | None:
        """The TTL of an entry this request writes: its ``cache_control`` ttl, else the
        cache's."""
        return req.control.ttl_ms(self.ttl_ms)

    def set_args(self, req: LLMRequest = UNSCOPED) -> tuple[Any, ...]:
        """The expiry arguments of the ``SET`` (TTL in the same command as the value)."""
        ms = self.entry_ttl_ms(req)
        return () if ms is None else ("PX", ms)


class ValkeyCache(CacheCore, BaseCache):
    """Exact-match LLM cache on Valkey.

    Args:
        client: a ``valkey.Valkey``/``ValkeyCluster`` client, or a ``valkey.asyncio`` one.
        async_client: an async client for the ``a*`` methods (used natively, no executor).
        prefix: key prefix of this cache; ``clear()`` touches nothing else.
        ttl: seconds each entry lives (set in the same ``SET``); ``None`` keeps entries.
        normalize: ``True`` collapses whitespace in prompts before hashing (or pass a
            callable). Off by default: it makes differently spaced prompts share answers.
        scope: names looked up in the run's ``configurable`` (e.g. ``("user_id",)``)
            whose values become part of every key: the cache never answers across
            scopes, and a run without a value bypasses it (model called, nothing stored,
            one warning). See the README, "What is in the key".
        metrics: ``False`` turns Prometheus metrics off, or pass a registry.
        cost_of: ``cost_of(generations) -> USD``: what a hit saved, instead of the
            price of the cached response's tokens (``prices=`` / genai-prices).
        prices: per-model token prices overriding genai-prices' (model name ->
            ``{"input": ..., "output": ..., "cache_read": ..., "cache_write": ...}`` in
            USD per million tokens; ``"*"``: any model genai-prices does not know).
        timeout: the latency budget of one cache operation in seconds (async: enforced
            by a deadline whatever the client; sync: the client's socket timeout, which
            :func:`~langgraph_valkey_cache.cache_client_from_url` sets to the budget).
        stats_flush_interval: seconds between flushes of this process's hit/miss counts
            to the ``<prefix>:stats`` hash every process adds to (see :meth:`stats`).
        local_cache: serve repeated hits from a coherent in-process L1 (valkey-py
            client-side caching, invalidated by the server; standalone servers only):
            the cache then talks through clients of its own to the same server (see
            ``cache_client_from_url(url, local_cache=True)``).

    Example:
        >>> from langchain_core.globals import set_llm_cache
        >>> from langgraph_valkey_cache import ValkeyCache, cache_client_from_url
        >>> set_llm_cache(ValkeyCache(cache_client_from_url("valkey://localhost:6379"), ttl=3600))
        ... # doctest: +SKIP

    Per request, ``config["configurable"]["cache_control"] = {"skip": True}`` bypasses
    the cache, ``{"refresh": True}`` calls the model and overwrites the entry, and
    ``{"ttl": seconds}`` sets the lifetime of the entry written. LangChain hands the
    cache no config: it is read from the running runnable's (a graph node, a chain, an
    agent); around a bare ``model.invoke`` use :func:`cache_config`.

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
        scope: Sequence[str] | str | None = None,
        metrics: Any = True,
        cost_of: Callable[[Sequence[Generation]], float] | None = None,
        timeout: float = CACHE_TIMEOUT,
        stats_flush_interval: float = 1.0,
        prices: PriceTable | None = None,
        local_cache: bool = False,
    ) -> None:
        if local_cache:
            client, async_client = with_local_cache(client), with_local_cache(async_client)
        self.pricer = Pricer(prices) if prices else DEFAULT_PRICER
        self.codec = LLMCacheCodec(prefix, ttl=ttl, normalize=normalize, scope=scope)
        self.cost_of = cost_of
        self._init_core(
            client, async_client, tier="llm_cache", stats_key=self.codec.keys.stats(),
            metrics=metrics, timeout=timeout, stats_flush_interval=stats_flush_interval,
        )  # fmt: skip

    # -- plans (no I/O) ------------------------------------------------------------------

    def _plan_lookup_many(self, items: Sequence[tuple[str, str]], req: LLMRequest) -> Plan:
        if not req.reads:
            yield Tally(bypassed=len(items))
            return [None] * len(items)
        keys = [self.codec.key(p, s, req.scope) for p, s in items]
        if len(keys) == 1:
            raws = [(yield Cmd(("GET", keys[0])))]
        else:
            raws = yield Pipe(tuple(("GET", k) for k in keys))
        found = [self.codec.decode(r) for r in raws]
        yield tally_generations(found, self.cost_of, self.pricer, [s for _, s in items])
        return found

    def _plan_lookup(self, prompt: str, llm_string: str, req: LLMRequest | None = None) -> Plan:
        """One lookup (the interface the middleware drives, shared with the semantic
        cache); ``req`` defaults to the current run's (:meth:`LLMCacheCodec.request`)."""
        if req is None:
            req = self.codec.request(self)
        if not req.reads:  # skipped, refreshed or unscoped: not a lookup
            yield BYPASS
            return None
        gens = self.codec.decode(
            (yield Cmd(("GET", self.codec.key(prompt, llm_string, req.scope))))
        )
        yield tally_generations((gens,), self.cost_of, self.pricer, llm_string)
        return gens

    def _plan_update(
        self,
        prompt: str,
        llm_string: str,
        return_val: RETURN_VAL_TYPE,
        req: LLMRequest | None = None,
    ) -> Plan:
        if req is None:
            req = self.codec.request(self)
        if not req.writes:
            return
        value = self.codec.encode(return_val)
        key = self.codec.key(prompt, llm_string, req.scope)
        yield Cmd(("SET", key, value, *self.codec.set_args(req)))
        # the miss path sees the fresh response: what the provider's prompt cache did
        yield fresh_tally(return_val, llm_string, self.pricer, stored_bytes=len(value))

    def _plan_clear(self, llm_string: str | None) -> Plan:
        keys = yield Scan(self.codec.keys.exact_pattern(llm_string))
        yield from unlink_plan(keys, self.cluster)

    @property
    def cluster(self) -> bool:
        return (self._exec or self._aexec).cluster

    # -- BaseCache ----------------------------------------------------------------------

    # the request (scope, cache_control) is read before the plan runs: a malformed
    # cache_control raises to the caller instead of failing open as a bug of ours

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        plan = self._plan_lookup(prompt, llm_string, self.codec.request(self))
        return self._run(plan, "lookup", lookups=1)

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        plan = self._plan_update(prompt, llm_string, return_val, self.codec.request(self))
        self._run(plan, "update")

    def clear(self, **kwargs: Any) -> None:
        """Delete this cache's entries; ``llm_string=...`` deletes one model's only."""
        self._run_strict(self._plan_clear(kwargs.get("llm_string")), "clear")

    def invalidate_model(self, llm_string: str) -> None:
        """Delete every entry cached for this model configuration."""
        self.clear(llm_string=llm_string)

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        plan = self._plan_lookup(prompt, llm_string, self.codec.request(self))
        return await self._arun(plan, "lookup", lookups=1)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        plan = self._plan_update(prompt, llm_string, return_val, self.codec.request(self))
        await self._arun(plan, "update")

    async def aclear(self, **kwargs: Any) -> None:
        await self._arun_strict(self._plan_clear(kwargs.get("llm_string")), "clear")

    async def ainvalidate_model(self, llm_string: str) -> None:
        await self.aclear(llm_string=llm_string)

    def lookup_many(self, items: Sequence[tuple[str, str]]) -> list[list[Generation] | None]:
        """Look up many ``(prompt, llm_string)`` pairs in one pipelined round trip."""
        if not items:
            return []
        plan = self._plan_lookup_many(items, self.codec.request(self))
        return self._run(plan, "lookup_many", default=[None] * len(items), lookups=len(items))

    async def alookup_many(self, items: Sequence[tuple[str, str]]) -> list[list[Generation] | None]:
        """Async :meth:`lookup_many`."""
        if not items:
            return []
        plan = self._plan_lookup_many(items, self.codec.request(self))
        return await self._arun(
            plan, "lookup_many", default=[None] * len(items), lookups=len(items)
        )


def tally_generations(
    found: Sequence[Sequence[Generation] | None],
    cost_of: Callable[[Sequence[Generation]], float] | None,
    pricer: Pricer | None = None,
    llm_strings: Sequence[str] | str | None = None,
) -> Tally:
    """The :class:`Tally` of LLM-cache lookups: hits, misses and what the hits saved
    (the cached responses' tokens, their price or ``cost_of``; see ``_prices``)."""
    return lookup_tally(found, cost_of, pricer, llm_strings)


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
