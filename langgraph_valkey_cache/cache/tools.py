"""``ToolCache``: cache tool results in Valkey through LangGraph's and LangChain's hooks.

One object plugs into both ``ToolNode(tools, wrap_tool_call=cache.wrap,
awrap_tool_call=cache.awrap)`` and ``create_agent(..., middleware=[cache.middleware()])``.

Key: tool name + canonical JSON of the arguments the model chose, normalised through the
tool's schema (defaults filled, types coerced: ``{"city": "Lima"}`` and ``{"city":
"Lima", "units": "metric"}`` are one entry; keys sorted recursively; injected arguments
such as state, store, runtime and tool_call_id left out), plus, for a scoped cache, the
``scope`` values from the run's ``configurable`` and the ``key_injected`` values from
the graph state; hashed with :meth:`~langgraph_valkey_cache._keys.ToolCacheKeys.call_digest`.
A hit is one plain ``GET`` (with ``local_cache=True`` served in process on a repeat); a
miss then takes the single-flight lease (a Lua ``GET``-or-lease) and, as the leader,
stores and releases in one more round trip, so concurrent misses on one key run the
tool once across processes (:mod:`.singleflight`).

Per-tool statistics (hits, misses, time saved) are counted locally and flushed to a
Valkey hash per tool with ``HINCRBY`` at most every ``stats_flush_interval`` seconds
(and before every report), so the hit path stays at one round trip while every process
adds to the same totals (:class:`~langgraph_valkey_cache._stats.SharedStats`).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from typing import Any, Literal
from uuid import UUID

from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from langchain_core.tools.base import _is_injected_arg_type, get_all_basemodel_annotations
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import Command
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
    BYPASS,
    COMPUTE,
    CacheUnavailable,
    Cmd,
    Pipe,
    Plan,
    Scan,
    Tally,
)
from langgraph_valkey_cache._keys import DEFAULT_PREFIXES, ToolCacheKeys, lease_key
from langgraph_valkey_cache._serde import default_serde, pack_typed, unpack_typed
from langgraph_valkey_cache._stats import CacheStats, SharedStats, parse_fields
from langgraph_valkey_cache.cache.llm import unlink_plan
from langgraph_valkey_cache.cache.singleflight import Flight, FlightOptions, flight_plan

__all__ = [
    "ToolCache",
    "ToolCacheMiddleware",
    "ToolEffectiveness",
    "ToolPolicy",
    "ToolStats",
    "canonical_args",
    "injected_arg_names",
    "normalized_args",
]

logger = logging.getLogger("langgraph_valkey_cache.cache")

_STAT_FIELDS = ("hits", "misses", "saved_ms", "run_ms", "uncacheable")
# Names LangGraph injects without an annotation (ToolNode treats "runtime" as injected).
_ALWAYS_INJECTED = frozenset({"runtime"})
_NO_CACHE: Literal["no-cache"] = "no-cache"
_SEEN_KEYS = 4096  # memoised call keys per ToolCache


# --- canonical arguments ------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (UUID, Decimal)):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"argument of type {type(value).__name__} has no canonical JSON form")


def canonical_args(args: Mapping[str, Any], exclude: Iterable[str] = ()) -> str:
    """Canonical JSON of call arguments: keys sorted at every depth, no whitespace.

    ``{"city": "Sofia", "units": "metric"}`` and the reverse order give the same text.
    Raises ``TypeError`` for values without a stable JSON form (those calls are not
    cached).
    """
    skip = set(exclude)
    kept = {k: v for k, v in args.items() if k not in skip}
    return json.dumps(
        kept,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    )


class _NoMemoForm(Exception):
    pass


def _memo_form(value: Any) -> Any:
    """A hashable form of JSON-like ``value``, equal only for values of the same types
    and the same canonical JSON (str keys only; ``1``, ``1.0``, ``True`` and ``0.0``,
    ``-0.0`` stay apart). Key order is kept, not sorted: two orders of one mapping are
    two memo entries holding the same key. Raises ``_NoMemoForm`` for anything else
    (the canonical JSON is the memo key then)."""
    t = type(value)
    if t is str:
        return value
    if t is dict:
        form: list[Any] = [dict]
        for k, v in value.items():
            if type(k) is not str:
                raise _NoMemoForm
            form.append(k)
            form.append(v if type(v) is str else _memo_form(v))
        return tuple(form)
    if t is int or t is bool or value is None:
        return (t, value)
    if t is float:
        return (float, repr(value))
    if t is list or t is tuple:
        return (t, *[_memo_form(v) for v in value])
    raise _NoMemoForm


def _call_memo_form(args: Mapping[str, Any], exclude: frozenset[str]) -> tuple[Any, ...]:
    """:func:`_memo_form` of a call's arguments, ``exclude`` (injected ones) left out:
    ~0.5 us for a few flat arguments, against ~4 us for their canonical JSON."""
    if type(args) is not dict:
        raise _NoMemoForm
    form: list[Any] = []
    for k, v in args.items():
        if k in exclude:
            continue
        if type(k) is not str:
            raise _NoMemoForm
        form.append(k)
        form.append(v if type(v) is str else _memo_form(v))
    return tuple(form)


def injected_arg_names(tool: BaseTool | None) -> frozenset[str]:
    """Arguments of ``tool`` that LangGraph injects (state, store, runtime, tool_call_id)."""
    if tool is None:
        return _ALWAYS_INJECTED
    names = set(_ALWAYS_INJECTED)
    try:
        schema = tool.get_input_schema()
        for name, type_ in get_all_basemodel_annotations(schema).items():
            if _is_injected_arg_type(type_):
                names.add(name)
    except Exception:  # a tool with an exotic schema: fall back to the signature scan
        logger.debug("could not read the input schema of tool %r", tool.name, exc_info=True)
    names.update(getattr(tool, "_injected_args_keys", ()) or ())
    return frozenset(names)


def _call_schema(tool: BaseTool | None) -> Any:
    """The schema the model fills in (injected arguments left out), or ``None``."""
    if tool is None:
        return None
    try:
        return tool.tool_call_schema
    except Exception:  # an exotic tool: its args are keyed as the model wrote them
        logger.debug("could not read the call schema of tool %r", tool.name, exc_info=True)
        return None


def normalized_args(schema: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    """``args`` as the tool will see them: validated by ``schema`` (a pydantic model, or a
    JSON schema dict) with defaults filled and types coerced, so equivalent calls share
    one key. Arguments the schema rejects are returned as given (the tool will fail on
    them, and failures are never cached)."""
    if schema is None:
        return dict(args)
    if isinstance(schema, Mapping):  # a JSON schema: fill top-level defaults only
        out = dict(args)
        for name, prop in (schema.get("properties") or {}).items():
            if name not in out and isinstance(prop, Mapping) and "default" in prop:
                out[name] = prop["default"]
        return out
    try:
        if hasattr(schema, "model_validate"):
            dumped = schema.model_validate(dict(args)).model_dump(mode="json")
        else:  # a pydantic.v1 model
            dumped = json.loads(schema.parse_obj(dict(args)).json())
    except Exception:  # invalid arguments: key them as given
        return dict(args)
    return dumped if isinstance(dumped, dict) else dict(args)


def _field(source: Any, name: str) -> Any:
    if source is None:
        return None
    if isinstance(source, Mapping):
        return source.get(name)
    return getattr(source, name, None)


# --- policies and reports -------------------------------------------------------------


@dataclass(frozen=True)
class ToolPolicy:
    """Caching policy of one tool.

    Args:
        ttl: seconds an entry lives (``None``: no expiry).
        enabled: ``False`` never caches the tool (side effects, fresh data).
        cost_usd: what one call of the tool costs (a paid API): each hit adds it to
            ``saved_usd``.
    """

    ttl: float | None = None
    enabled: bool = True
    cost_usd: float = 0.0

    def to_json(self) -> str:
        return json.dumps({"ttl": self.ttl, "enabled": self.enabled, "cost_usd": self.cost_usd})

    @classmethod
    def from_json(cls, text: str | bytes) -> ToolPolicy:
        data = json.loads(text)
        ttl = data.get("ttl")
        return cls(
            ttl=None if ttl is None else float(ttl),
            enabled=bool(data.get("enabled", True)),
            cost_usd=float(data.get("cost_usd") or 0.0),
        )


@dataclass(frozen=True)
class ToolStats:
    """Counters of one tool, summed over every process using the cache."""

    tool: str
    hits: int = 0
    misses: int = 0
    saved_ms: int = 0
    run_ms: int = 0
    uncacheable: int = 0
    saved_usd: float = 0.0  # hits x the policy's cost_usd

    @property
    def calls(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.calls if self.calls else 0.0

    @property
    def avg_run_ms(self) -> float:
        return self.run_ms / self.misses if self.misses else 0.0


Recommendation = Literal["longer_ttl", "keep", "disable", "not_enough_data"]


@dataclass(frozen=True)
class ToolEffectiveness:
    """One line of :meth:`ToolCache.tool_effectiveness`."""

    tool: str
    stats: ToolStats
    ttl: float | None
    cached: bool
    recommendation: Recommendation
    suggested_ttl: float | None
    reason: str


@dataclass(slots=True)  # built on every call: slots, not frozen (half the cost)
class _Decision:
    name: str
    key: str
    ttl: float | None
    read: bool = True  # False: cache_control refresh (run the tool, overwrite the entry)


@dataclass(frozen=True)
class _ToolInfo:
    tool: BaseTool  # kept so its id() stays unique while it is cached here
    injected: frozenset[str]
    schema: Any


# The message a hit returns, built as a copy of one validated message (what pydantic's
# __copy__ does, without its three copy.copy() calls): what validation would check
# (content a str, a str id) is checked by the caller, and the copy costs a fifth of
# ToolMessage(...). The template's mutable defaults are copied per message.
_MESSAGE_TEMPLATE = ToolMessage(content="", artifact=None, name="", tool_call_id="")
_FRESH_DEFAULTS = tuple(
    (field, value)
    for field, value in _MESSAGE_TEMPLATE.__dict__.items()
    if isinstance(value, (dict, list, set))
)
_TEMPLATE_EXTRA = _MESSAGE_TEMPLATE.__pydantic_extra__
_TEMPLATE_FIELDS_SET = _MESSAGE_TEMPLATE.__pydantic_fields_set__
_COPY_BY_HAND = getattr(_MESSAGE_TEMPLATE, "__pydantic_private__", None) is None
_new_message = ToolMessage.__new__
_set = object.__setattr__


def _tool_message(content: str, artifact: Any, name: str, tool_call_id: str) -> ToolMessage:
    """``ToolMessage(content=..., artifact=..., name=..., tool_call_id=...)``, faster."""
    if _COPY_BY_HAND:
        msg = _new_message(ToolMessage)
        fields = _MESSAGE_TEMPLATE.__dict__.copy()
        _set(msg, "__dict__", fields)
        _set(msg, "__pydantic_extra__", None if _TEMPLATE_EXTRA is None else _TEMPLATE_EXTRA.copy())
        _set(msg, "__pydantic_fields_set__", _TEMPLATE_FIELDS_SET.copy())
        _set(msg, "__pydantic_private__", None)
    else:  # pragma: no cover - a ToolMessage with private attributes
        msg = _MESSAGE_TEMPLATE.__copy__()
        fields = msg.__dict__
    fields["content"] = content
    fields["artifact"] = artifact
    fields["name"] = name
    fields["tool_call_id"] = tool_call_id
    for field, default in _FRESH_DEFAULTS:
        fields[field] = default.copy()
    return msg


# --- the cache ---------------------------------------------------------------------------


class ToolCache(CacheCore):
    """Cache tool results in Valkey, for ``ToolNode`` and ``create_agent``.

    A cached result comes back as a ``ToolMessage`` with the *current* call's
    ``tool_call_id`` and the original content, name and artifact. Error results
    (``status="error"``) and ``Command`` results are never cached.

    Per-request control, in the run config's ``configurable`` (the same keys as every
    cache): ``{"cache_control": {"skip": True}}`` runs the tool without reading or
    storing, ``{"refresh": True}`` runs it and overwrites the entry, ``{"ttl": 60}``
    gives the entry it writes 60 s. The tool cache's own per-call override still works:
    ``{"tool_cache_ttl": 60}`` (all tools) or ``{"tool_cache_ttl": {"get_weather": 60}}``,
    ``0``/``False`` skips the cache for that call (a tool: ``{"get_weather": 0}``).

    TTL resolution for a call: ``cache_control`` ``ttl`` > ``tool_cache_ttl`` > tool
    policy > ``ttl``. Tool policies come from ``policies`` and, when ``remote_policies``
    is on, from a Valkey hash set with :meth:`set_policy` (refreshed every
    ``policy_refresh`` seconds; remote wins) so operators change TTLs without a deploy.
    ``never_cache`` tools are never cached (not even by an override); with ``only``
    set, only those tools (and tools with a policy) are cached.

    Scopes: with ``scope=("user_id",)`` each name is looked up in the run's
    ``configurable``, then in the runtime context; the values are part of every key, so
    one user never gets another's result. ``key_injected=("user_id",)`` adds values the
    tool reads from the graph state (``InjectedState``) or the runtime context (a
    sequence: for every tool; a mapping: tool name -> names). A missing scope or
    injected value bypasses the cache for that call (the tool runs, nothing is
    stored) with one warning per cache.

    Arguments go through the tool's call schema before hashing (defaults filled, types
    coerced). :meth:`invalidate` does the same with the tool it is given, or the schema
    of the tool of that name seen last (``tools=`` registers them up front).

    Fail open: whatever happens to the server, the tool just runs within the latency
    budget (``timeout``); errors are logged once and counted by reason.

    Args:
        client: sync or async (``valkey.asyncio``) client, standalone or cluster.
        async_client: async client next to a sync ``client`` (for ``awrap``; ``aclient=``,
            its former name, still works with a DeprecationWarning). Without one,
            ``awrap`` runs each Valkey command in a worker thread; with only an async
            client, ``wrap`` raises ``TypeError``.
        prefix: key prefix of this cache.
        ttl: default TTL in seconds (``None``: no expiry).
        policies: tool name -> ``ToolPolicy`` or TTL seconds (``None`` = no expiry).
        never_cache: tools never cached.
        only: if given, cache only these tools (plus those with a policy).
        serde: serializer for results; default strict ``JsonPlusSerializer``.
        single_flight: coordinate concurrent misses (one run per key across processes).
        lease_ttl: single-flight lease, should exceed the slowest tool's run time.
        wait_timeout: how long a concurrent caller waits before running the tool itself.
        remote_policies: read policies from Valkey as well.
        policy_refresh: seconds between remote policy reads.
        stats_flush_interval: seconds between stats flushes (0: flush on every call).
        timeout: latency budget per cache operation in seconds (see ``ValkeyCache``).
        metrics: ``False`` to disable Prometheus metrics, or a registry.
        scope: names of ``configurable`` (or runtime context) values every key includes.
        key_injected: names of graph-state (or runtime context) values keys include,
            for every tool or per tool name.
        tools: tools whose schemas :meth:`invalidate` and :meth:`key_for` use by name.
        local_cache: serve hits from a coherent in-process L1 (valkey-py client-side
            caching, invalidated by the server; standalone servers only). The cache
            then talks through a client of its own to the same server (see
            ``cache_client_from_url(url, local_cache=True)``); a lookup is a ``GET``
            (local on a repeat), as it is without the L1.

    Example:
        ```python
        from langchain.agents import create_agent
        from langgraph.prebuilt import ToolNode
        from langgraph_valkey_cache import ToolCache, cache_client_from_url

        cache = ToolCache(cache_client_from_url("valkey://localhost:6379"), ttl=600,
                          policies={"get_weather": 300}, never_cache=["send_email"])
        node = ToolNode(tools, wrap_tool_call=cache.wrap, awrap_tool_call=cache.awrap)
        agent = create_agent(model, tools, middleware=[cache.middleware()])
        cache.tool_effectiveness()  # hit rates, time saved, TTL recommendations
        ```
    """

    def __init__(
        self,
        client: Any,
        *,
        async_client: Any | None = None,
        aclient: Any | None = None,
        prefix: str = DEFAULT_PREFIXES["tools"],
        ttl: float | None = 3600.0,
        policies: Mapping[str, ToolPolicy | float | None] | None = None,
        never_cache: Iterable[str] = (),
        only: Iterable[str] | None = None,
        serde: SerializerProtocol | None = None,
        single_flight: bool = True,
        lease_ttl: float = 30.0,
        wait_timeout: float = 10.0,
        remote_policies: bool = True,
        policy_refresh: float = 5.0,
        stats_flush_interval: float = 1.0,
        timeout: float = CACHE_TIMEOUT,
        metrics: bool | CollectorRegistry = True,
        scope: Sequence[str] | str | None = None,
        key_injected: Sequence[str] | Mapping[str, Sequence[str]] = (),
        tools: Iterable[BaseTool] = (),
        local_cache: bool = False,
    ) -> None:
        aclient = async_client_argument(async_client, aclient)
        self.keys = ToolCacheKeys(prefix)
        self.local_cache = local_cache
        if local_cache:
            client, aclient = with_local_cache(client), with_local_cache(aclient)
        # per-tool hashes; the default key is only a placeholder, every count names its tool
        self._init_core(
            client, aclient, tier="tool_cache", stats_key=self.keys.stats(""), metrics=metrics,
            timeout=timeout, stats_flush_interval=stats_flush_interval,
        )  # fmt: skip
        self.ttl = ttl
        self.policies: dict[str, ToolPolicy] = {
            name: p if isinstance(p, ToolPolicy) else ToolPolicy(ttl=p)
            for name, p in (policies or {}).items()
        }
        self.never_cache = frozenset(never_cache)
        self.only = None if only is None else frozenset(only)
        self.serde = serde or default_serde()
        self.single_flight = single_flight
        self.flight = FlightOptions(lease_ttl=lease_ttl, wait_timeout=wait_timeout)
        self.remote_policies = remote_policies
        self.policy_refresh = policy_refresh
        self.stats_flush_interval = stats_flush_interval
        self._remote: dict[str, ToolPolicy] = {}
        self._remote_read_at = -math.inf
        self.scope = normalize_scope(scope)
        self.key_injected: dict[str, tuple[str, ...]] | tuple[str, ...] = (
            {name: normalize_scope(names) for name, names in key_injected.items()}
            if isinstance(key_injected, Mapping)
            else normalize_scope(key_injected)
        )
        self._tools: dict[int, _ToolInfo] = {}
        self._seen_keys: dict[tuple[Any, ...], str] = {}  # (call) -> key, bounded
        self._stats_keys: dict[str, str] = {}  # tool name -> its stats hash
        self._hit_tallies: dict[tuple[str, int, float, str], Tally] = {}
        self._by_name: dict[str, BaseTool] = {}
        self._warned_injected: set[tuple[str, ...]] = set()
        for t in tools:
            self._remember(t)

    # --- decisions (pure) -----------------------------------------------------------------

    def _policy(self, name: str) -> ToolPolicy | None:
        return self._remote.get(name) or self.policies.get(name)

    def effective_ttl(self, name: str, override: Any = None) -> float | None | Literal["no-cache"]:
        """The TTL a call of ``name`` gets, or ``"no-cache"``."""
        if name in self.never_cache:
            return _NO_CACHE
        if override is not None and isinstance(override, Mapping):  # (an ABC check: slow)
            override = override.get(name)
        if override is not None:
            if override is False or override == 0:
                return _NO_CACHE
            return None if override is True else float(override)
        policy = self._policy(name)
        if policy is not None:
            return policy.ttl if policy.enabled else _NO_CACHE
        if self.only is not None and name not in self.only:
            return _NO_CACHE
        default = self._remote.get("*")
        if default is not None:
            return default.ttl if default.enabled else _NO_CACHE
        return self.ttl

    def key_for(
        self,
        name: str,
        args: Mapping[str, Any],
        tool: BaseTool | None = None,
        *,
        scope: Mapping[str, Any] | None = None,
    ) -> str:
        """The cache key of a call: ``args`` normalised through ``tool``'s schema (or that
        of the tool of this name seen last), injected arguments left out. A scoped cache
        needs ``scope``: the values of its ``scope`` and ``key_injected`` names."""
        scope_parts: tuple[str, ...] = ()
        injected: str | None = None
        names = self._injected_names(name)
        if self.scope or names:
            values = dict(scope or {})
            missing = [n for n in (*self.scope, *names) if values.get(n) is None]
            if missing:
                raise ValueError(f"this ToolCache is scoped: pass scope={{...}} with {missing}")
            scope_parts = scope_values({"configurable": values}, self.scope) or ()
            if names:
                injected = canonical_args({n: values[n] for n in names})
        return self._key(name, args, tool or self._by_name.get(name), scope_parts, injected)

    def _key(
        self,
        name: str,
        args: Mapping[str, Any],
        tool: BaseTool | None,
        scope: tuple[str, ...],
        injected: str | None,
    ) -> str:
        info = self._remember(tool)
        skip = _ALWAYS_INJECTED if info is None else info.injected
        # normalising through the schema and hashing cost ~20 us: once per distinct call,
        # memoised by a cheap structural form of the arguments (their canonical JSON for
        # values without one: dates, enums, models...)
        try:
            form: Any = _call_memo_form(args, skip)
        except _NoMemoForm:
            form = canonical_args(args, skip)
        memo = (name, id(info), form, scope, injected)
        found = self._seen_keys.get(memo)
        if found is None:
            text = canonical_args(args, skip)  # raises for values without a JSON form
            if info is not None:
                text = canonical_args(normalized_args(info.schema, args), info.injected)
            found = self.keys.entry(name, self.keys.call_digest(name, text, scope, injected))
            if len(self._seen_keys) >= _SEEN_KEYS:
                self._seen_keys.clear()
            self._seen_keys[memo] = found
        return found

    def _remember(self, tool: BaseTool | None) -> _ToolInfo | None:
        if tool is None:
            return None
        # keyed by id() (tools are not hashable); the entry keeps the tool alive
        info = self._tools.get(id(tool))
        if info is None:
            info = self._tools[id(tool)] = _ToolInfo(
                tool, injected_arg_names(tool), _call_schema(tool)
            )
            self._by_name[tool.name] = tool
        return info

    def _injected_names(self, name: str) -> tuple[str, ...]:
        if isinstance(self.key_injected, dict):
            return self.key_injected.get(name, ())
        return self.key_injected

    def _injected_json(self, request: ToolCallRequest, names: tuple[str, ...]) -> str | None:
        """Canonical JSON of the named values from the state, else the runtime context
        (``None``: one is missing)."""
        context = getattr(request.runtime, "context", None)
        values = {}
        for n in names:
            value = _field(request.state, n)
            if value is None:
                value = _field(context, n)
            if value is None:
                if names not in self._warned_injected:
                    self._warned_injected.add(names)
                    logger.warning(
                        "ToolCache keys tool calls by %s but this call's state and "
                        "context have no %r: the cache is bypassed (nothing read or stored)",
                        ", ".join(names), n,
                    )  # fmt: skip
                return None
            values[n] = value
        return canonical_args(values)

    def _decide(self, request: ToolCallRequest, control: CacheControl) -> _Decision | None:
        if control.skip:
            return None
        call = request.tool_call
        name = call["name"]
        config = getattr(request.runtime, "config", None) or {}
        override = (config.get("configurable") or {}).get("tool_cache_ttl")
        ttl = self.effective_ttl(name, override)
        if isinstance(ttl, str):  # "no-cache"
            return None
        if control.ttl is not None:
            ttl = control.ttl
        scope: tuple[str, ...] | None = ()
        if self.scope:
            scope = scope_values(config, self.scope, getattr(request.runtime, "context", None))
            if scope is None:
                warn_missing_scope(self, self.scope)
                return None
        names = self._injected_names(name)
        injected = None
        try:
            if names:
                injected = self._injected_json(request, names)
                if injected is None:
                    return None
            tool = request.tool or self._by_name.get(name)
            key = self._key(name, call.get("args") or {}, tool, scope or (), injected)
        except (TypeError, ValueError) as exc:
            logger.info("tool %r: arguments not cacheable (%s); running uncached", name, exc)
            return None
        return _Decision(name, key, ttl, read=not control.refresh)

    def _payload(self, result: Any, run_ms: int) -> bytes | None:
        if not isinstance(result, ToolMessage) or result.status == "error":
            return None  # Command results update state; errors should be retried
        body = {
            "content": result.content,
            "artifact": result.artifact,
            "name": result.name,
            "run_ms": run_ms,
        }
        try:
            return pack_typed(self.serde.dumps_typed(body))
        except Exception as exc:
            logger.info("tool %r: result not serialisable (%s); not cached", result.name, exc)
            return None

    def _load(self, raw: bytes) -> dict[str, Any]:
        body = self.serde.loads_typed(unpack_typed(raw))
        if not isinstance(body, dict) or "content" not in body:
            raise ValueError("not a tool cache entry")
        return body

    @staticmethod
    def _message(body: dict[str, Any], request: ToolCallRequest) -> ToolMessage:
        content = body["content"]
        name = body.get("name") or request.tool_call["name"]
        call_id = request.tool_call["id"]
        if type(content) is str and type(name) is str and type(call_id) is str:
            return _tool_message(content, body.get("artifact"), name, call_id)
        return ToolMessage(
            content=content, artifact=body.get("artifact"), name=name, tool_call_id=call_id
        )

    def _ran(self, box: dict[str, Any], result: Any, start: float) -> tuple[Any, bytes | None]:
        """What ``compute`` replies once the tool ran: ``(summary, payload)``."""
        run_ms = int((time.perf_counter() - start) * 1000)
        box["result"] = result
        payload = self._payload(result, run_ms)
        return {"run_ms": run_ms, "cacheable": payload is not None}, payload

    def _parse_policies(self, raw: Mapping[Any, Any]) -> None:
        remote: dict[str, ToolPolicy] = {}
        for field, value in raw.items():
            name = field.decode() if isinstance(field, bytes) else str(field)
            try:
                remote[name] = ToolPolicy.from_json(value)
            except (ValueError, TypeError, AttributeError):
                logger.warning("ignoring malformed tool cache policy for %r", name)
        self._remote = remote

    # --- plans (no I/O) ----------------------------------------------------------------------

    def _plan_policies(self) -> Plan:
        """Re-read the remote policies when ``policy_refresh`` has passed."""
        if (
            not self.remote_policies
            or time.monotonic() - self._remote_read_at < self.policy_refresh
        ):
            return
        self._remote_read_at = time.monotonic()  # also on failure: retry after the interval
        try:
            raw = yield Cmd(("HGETALL", self.keys.policies()))
        except CacheUnavailable:
            return
        self._parse_policies(raw or {})

    def _plan_tool_call(self, request: ToolCallRequest, control: CacheControl) -> Plan:
        """Serve the call from the cache or run it (``COMPUTE``) and store the result.
        Returns a :class:`Flight` (``None``: the call was not cacheable, it just ran)."""
        yield from self._plan_policies()
        decision = self._decide(request, control)
        if decision is None:  # not cacheable (never_cache, disabled, unscoped...)
            yield BYPASS
            yield COMPUTE
            return None
        return (
            yield from self._plan_entry(
                decision.name, decision.key, decision.ttl, self._load, read=decision.read
            )
        )

    def _plan_entry(
        self,
        name: str,
        key: str,
        ttl: float | None,
        load: Callable[[bytes], Any],
        *,
        read: bool = True,
    ) -> Plan:
        """Get ``key`` or run ``COMPUTE`` (which replies ``(summary, payload)``, the
        summary holding ``run_ms`` and ``cacheable``) and store it; count per ``name``.
        ``read=False`` (a refresh) runs ``COMPUTE`` and overwrites the entry."""
        flight: Flight[Any] | None = None
        if not read:
            flight = yield from self._plan_refresh(key, ttl)
        else:
            # a plain GET first, not the lease script: a hit is then the cheapest command
            # there is (and the one an L1 client answers locally); a miss pays one more
            # round trip, next to a tool run that costs far more
            try:
                raw = yield Cmd(("GET", key))
            except CacheUnavailable:
                summary, _ = yield COMPUTE
                flight = Flight(summary, "fallback")
            else:
                if raw is not None:
                    try:
                        flight = Flight(load(raw), "hit")
                    except Exception as exc:  # recomputed below, the entry overwritten
                        logger.warning("undecodable tool cache entry, recomputing: %s", exc)
        if flight is None:
            if self.single_flight:
                flight = yield from flight_plan(key, ttl, load, self.flight)
            else:
                flight = yield from self._plan_refresh(key, ttl)
        stats_key = self._stats_keys.get(name)
        if stats_key is None:  # formatted once per name (bounded like the call keys)
            if len(self._stats_keys) >= _SEEN_KEYS:
                self._stats_keys.clear()
            stats_key = self._stats_keys[name] = self.keys.stats(name)
        if flight.computed:
            summary = flight.value
            uncacheable = 0 if summary["cacheable"] else 1
            fields = {"run_ms": summary["run_ms"], "uncacheable": uncacheable}
            yield Tally(misses=1, stats_key=stats_key, fields=fields, tool=name)
        else:
            saved_ms = int(flight.value.get("run_ms", 0))
            policy = self._policy(name)
            cost = float(policy.cost_usd) if policy is not None else 0.0
            # one Tally per (tool, time saved, price): the executor only reads it
            memo = (stats_key, saved_ms, cost, name)
            tally = self._hit_tallies.get(memo)
            if tally is None:
                if len(self._hit_tallies) >= _SEEN_KEYS:
                    self._hit_tallies.clear()
                tally = self._hit_tallies[memo] = Tally(
                    hits=1, saved_ms=saved_ms, saved_usd=cost, stats_key=stats_key, tool=name
                )
            yield tally
        return flight

    def _plan_refresh(self, key: str, ttl: float | None) -> Plan:
        summary, payload = yield COMPUTE
        if payload is not None:
            px = () if ttl is None else ("PX", max(1, int(ttl * 1000)))
            try:
                yield Cmd(("SET", key, payload, *px))
            except CacheUnavailable:
                pass
        return Flight(summary, "leader")

    def _plan_invalidate(
        self,
        tool: str | BaseTool,
        args: Mapping[str, Any] | None,
        scope: Mapping[str, Any] | None,
    ) -> Plan:
        name, obj = (tool, None) if isinstance(tool, str) else (tool.name, tool)
        if args is not None:
            if obj is None and name not in self._by_name:
                logger.warning(
                    "invalidate(%r, args): no schema of this tool seen yet, so args are "
                    "keyed as given (defaults not filled); pass the tool object or "
                    "ToolCache(tools=...) to match entries its calls wrote",
                    name,
                )
            key = self.key_for(name, args, obj, scope=scope)
            return int((yield Cmd(("DEL", key, lease_key(key)))))
        keys = yield Scan(self.keys.tool_pattern(name))
        return (yield from unlink_plan(keys, self._aexec.cluster))

    def _plan_policy(self, tool: str, policy: ToolPolicy | None) -> Plan:
        if policy is None:
            yield Cmd(("HDEL", self.keys.policies(), tool))
        else:
            yield Cmd(("HSET", self.keys.policies(), tool, policy.to_json()))
        self._remote_read_at = -math.inf

    def _plan_stats(self) -> Plan:
        found = yield Scan(self.keys.stats_pattern())
        names = sorted({self.keys.stats_name(k) for k in found})
        raws = yield Pipe(SharedStats.read_commands(self.keys.stats(n) for n in names))
        if not names:
            return {}
        return {n: _stats(n, parse_fields(raw)) for n, raw in zip(names, raws, strict=True)}

    # --- sync -----------------------------------------------------------------------------

    def wrap(
        self,
        request: ToolCallRequest,
        execute: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
    ) -> ToolMessage | Command[Any]:
        """``ToolNode(wrap_tool_call=...)`` hook: serve from the cache or run and store."""
        box: dict[str, Any] = {}
        control = _control_of(request)

        def compute() -> tuple[Any, bytes | None]:
            start = time.perf_counter()
            return self._ran(box, execute(request), start)

        flight = self._run(
            self._plan_tool_call(request, control),
            "tool_call",
            compute=compute,
            fallback=fallback_pair,
        )
        return self._answer(flight, box, request)

    def _answer(self, flight: Flight[Any] | None, box: dict[str, Any], request: Any) -> Any:
        if flight is None or flight.computed:
            return box["result"]
        return self._message(flight.value, request)

    def invalidate(
        self,
        tool: str | BaseTool,
        args: Mapping[str, Any] | None = None,
        *,
        scope: Mapping[str, Any] | None = None,
    ) -> int:
        """Drop one call's entry (``args`` given, normalised like calls are: pass the tool
        or call it through this cache first) or every entry of ``tool`` in every scope;
        returns the count. A scoped cache's one-call form needs ``scope`` (see
        :meth:`key_for`)."""
        return self._run_strict(self._plan_invalidate(tool, args, scope), "invalidate")

    def set_policy(self, tool: str, ttl: float | None = None, *, enabled: bool = True) -> None:
        """Store a policy in Valkey for every process (``tool="*"`` sets the default)."""
        self._run_strict(self._plan_policy(tool, ToolPolicy(ttl, enabled)), "set_policy")

    def delete_policy(self, tool: str) -> None:
        """Remove a tool's policy from Valkey."""
        self._run_strict(self._plan_policy(tool, None), "delete_policy")

    def stats(self) -> dict[str, ToolStats]:  # type: ignore[override]
        """Per-tool counters from Valkey (after flushing this process's)."""
        self.flush_stats()
        return self._run_strict(self._plan_stats(), "stats")

    def totals(self) -> CacheStats:
        """Hits, misses, hit rate and time saved over all tools and every process."""
        return _totals(self.stats().values())

    def tool_effectiveness(
        self, *, min_calls: int = 10, low_hit_rate: float = 0.05, high_hit_rate: float = 0.3
    ) -> list[ToolEffectiveness]:
        """Per-tool report: hit rate, time saved, and a TTL recommendation.

        Heuristic: fewer than ``min_calls`` calls -> ``not_enough_data``; hit rate below
        ``low_hit_rate`` -> ``disable`` (the lookup costs more than it saves); at or above
        ``high_hit_rate`` -> ``longer_ttl`` (double the TTL: repeats are common, and
        entries expiring sooner than they are reused turn into misses); else ``keep``.
        """
        self._run(self._plan_policies(), "policies")
        return self._report(self.stats(), min_calls, low_hit_rate, high_hit_rate)

    def middleware(self) -> ToolCacheMiddleware:
        """An ``AgentMiddleware`` for ``create_agent(..., middleware=[...])``."""
        return ToolCacheMiddleware(self)

    # --- async ----------------------------------------------------------------------------

    async def awrap(
        self,
        request: ToolCallRequest,
        execute: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
    ) -> ToolMessage | Command[Any]:
        """``ToolNode(awrap_tool_call=...)`` hook: the async form of :meth:`wrap`."""
        box: dict[str, Any] = {}
        control = _control_of(request)

        async def compute() -> tuple[Any, bytes | None]:
            start = time.perf_counter()
            return self._ran(box, await execute(request), start)

        flight = await self._arun(
            self._plan_tool_call(request, control),
            "tool_call",
            compute=compute,
            fallback=fallback_pair,
        )
        return self._answer(flight, box, request)

    async def ainvalidate(
        self,
        tool: str | BaseTool,
        args: Mapping[str, Any] | None = None,
        *,
        scope: Mapping[str, Any] | None = None,
    ) -> int:
        """Async :meth:`invalidate`."""
        return await self._arun_strict(self._plan_invalidate(tool, args, scope), "invalidate")

    async def aset_policy(
        self, tool: str, ttl: float | None = None, *, enabled: bool = True
    ) -> None:
        """Async :meth:`set_policy`."""
        await self._arun_strict(self._plan_policy(tool, ToolPolicy(ttl, enabled)), "set_policy")

    async def adelete_policy(self, tool: str) -> None:
        """Async :meth:`delete_policy`."""
        await self._arun_strict(self._plan_policy(tool, None), "delete_policy")

    async def astats(self) -> dict[str, ToolStats]:  # type: ignore[override]
        """Async :meth:`stats`."""
        await self.aflush_stats()
        return await self._arun_strict(self._plan_stats(), "stats")

    async def atotals(self) -> CacheStats:
        """Async :meth:`totals`."""
        return _totals((await self.astats()).values())

    async def atool_effectiveness(
        self, *, min_calls: int = 10, low_hit_rate: float = 0.05, high_hit_rate: float = 0.3
    ) -> list[ToolEffectiveness]:
        """Async :meth:`tool_effectiveness`."""
        await self._arun(self._plan_policies(), "policies")
        return self._report(await self.astats(), min_calls, low_hit_rate, high_hit_rate)

    # --- report (pure) ---------------------------------------------------------------------

    def _report(
        self,
        stats: Mapping[str, ToolStats],
        min_calls: int,
        low_hit_rate: float,
        high_hit_rate: float,
    ) -> list[ToolEffectiveness]:
        out = []
        for name, st in sorted(stats.items()):
            ttl = self.effective_ttl(name)
            cached = not isinstance(ttl, str)
            ttl_value = None if isinstance(ttl, str) else ttl
            suggested = ttl_value
            if st.calls < min_calls:
                rec: Recommendation = "not_enough_data"
                reason = f"{st.calls} calls (< {min_calls})"
            elif st.hit_rate < low_hit_rate:
                rec, suggested = "disable", None
                reason = f"hit rate {st.hit_rate:.0%} < {low_hit_rate:.0%}: lookups cost more"
            elif st.hit_rate >= high_hit_rate and ttl_value is not None:
                rec = "longer_ttl"
                suggested = ttl_value * 2
                reason = (
                    f"hit rate {st.hit_rate:.0%}, {st.saved_ms / 1000:.1f}s saved: "
                    "repeats are common, keep entries longer"
                )
            else:
                rec = "keep"
                reason = f"hit rate {st.hit_rate:.0%}, {st.saved_ms / 1000:.1f}s saved"
            out.append(
                ToolEffectiveness(
                    tool=name,
                    stats=st,
                    ttl=ttl_value,
                    cached=cached,
                    recommendation=rec,
                    suggested_ttl=suggested,
                    reason=reason,
                )
            )
        return out


def _stats(name: str, fields: Mapping[str, float]) -> ToolStats:
    return ToolStats(
        tool=name,
        saved_usd=float(fields.get("saved_usd", 0.0)),
        **{f: int(fields.get(f, 0)) for f in _STAT_FIELDS},
    )


def _totals(per_tool: Iterable[ToolStats]) -> CacheStats:
    total = CacheStats()
    for st in per_tool:
        total += CacheStats(
            hits=st.hits, misses=st.misses, saved_ms=st.saved_ms, saved_usd=st.saved_usd
        )
    return total


def _control_of(request: ToolCallRequest) -> CacheControl:
    """The request's ``cache_control`` (read before the plan runs: a malformed one raises
    ``ValueError`` to the caller instead of failing open)."""
    config = getattr(request.runtime, "config", None)
    return read_control(config) if config else NO_CONTROL


def fallback_pair(computed: Any) -> Flight[Any]:
    """The executor's fallback for a plan whose ``COMPUTE`` replies ``(value, payload)``."""
    return Flight(computed[0], "fallback")


# --- middleware ----------------------------------------------------------------------------

try:
    from langchain.agents.middleware.types import AgentMiddleware
except ImportError:  # langchain is optional: ToolNode users don't need it
    AgentMiddleware = None  # type: ignore[assignment,misc]


if AgentMiddleware is not None:

    class ToolCacheMiddleware(AgentMiddleware):
        """``create_agent`` middleware serving tool calls from a :class:`ToolCache`.

        Example:
            ```python
            agent = create_agent(model, tools, middleware=[ToolCache(client).middleware()])
            ```
        """

        def __init__(self, cache: ToolCache) -> None:
            super().__init__()
            self.cache = cache

        def wrap_tool_call(
            self,
            request: ToolCallRequest,
            handler: Callable[[ToolCallRequest], ToolMessage | Command[Any]],
        ) -> ToolMessage | Command[Any]:
            return self.cache.wrap(request, handler)

        async def awrap_tool_call(
            self,
            request: ToolCallRequest,
            handler: Callable[[ToolCallRequest], Awaitable[ToolMessage | Command[Any]]],
        ) -> ToolMessage | Command[Any]:
            return await self.cache.awrap(request, handler)

else:  # pragma: no cover

    class ToolCacheMiddleware:  # type: ignore[no-redef]
        def __init__(self, cache: ToolCache) -> None:
            raise ImportError(
                "ToolCache.middleware() needs langchain: pip install 'langchain>=1,<2'"
            )
