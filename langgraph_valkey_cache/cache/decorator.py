"""``cached(...)``: the tool cache's machinery for any sync or async function.

Use it for the retrieval layer of layered caching (a retriever or vector search call),
an HTTP lookup, or a node's expensive helper: the same canonical-argument keys, TTL,
cross-process single-flight, fail-open policy and per-function stats (reported by
:meth:`ToolCache.tool_effectiveness` under the function's name) as :class:`ToolCache`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from langchain_core.runnables.config import var_child_runnable_config

from langgraph_valkey_cache._control import (
    NO_CONTROL,
    CacheControl,
    read_control,
    scope_values,
    warn_missing_scope,
)
from langgraph_valkey_cache._failopen import BYPASS, COMPUTE, Plan
from langgraph_valkey_cache._serde import dumps_checked, pack_typed, unpack_typed
from langgraph_valkey_cache.cache.singleflight import Flight
from langgraph_valkey_cache.cache.tools import ToolCache, canonical_args, fallback_pair

__all__ = ["cached"]

logger = logging.getLogger("langgraph_valkey_cache.cache")

F = TypeVar("F", bound=Callable[..., Any])

#: Where LangGraph keeps the graph's ``Runtime`` (its ``context``) in a node's config.
_CONFIG_KEY_RUNTIME = "__pregel_runtime"


def _run_request(cache: ToolCache) -> tuple[CacheControl, tuple[str, ...] | None]:
    """The enclosing run's ``cache_control`` and the cache's scope values (``None``: one
    is missing), from the config of the runnable calling the function (a node, a tool)."""
    config = var_child_runnable_config.get()
    control = read_control(config) if config else NO_CONTROL
    if not cache.scope:
        return control, ()
    runtime = ((config or {}).get("configurable") or {}).get(_CONFIG_KEY_RUNTIME)
    scope = scope_values(config, cache.scope, getattr(runtime, "context", None))
    if scope is None:
        warn_missing_scope(cache, cache.scope)
    return control, scope


def cached(
    cache: ToolCache | Any,
    *,
    name: str | None = None,
    ttl: float | None | Any = ...,
    ignore: Iterable[str] = ("self", "cls"),
) -> Callable[[F], F]:
    """Cache a sync or async function's results in Valkey.

    The key is ``name`` (default ``module.qualname``) plus the canonical JSON of the
    bound arguments (defaults applied, ``ignore`` left out), so ``f(1, b=2)`` and
    ``f(b=2, a=1)`` share an entry. Concurrent misses run the function once across
    processes; server errors just run it. Results go through the cache's serde, so
    they must be serialisable by it (LangChain ``Document``s, messages, JSON types...).
    A call whose arguments have no canonical JSON form runs uncached.

    Called inside a graph node or tool, the function follows the run's config like the
    tool cache: the ``ToolCache``'s ``scope`` values are part of the key (a run without
    them runs the function uncached), and ``configurable["cache_control"]`` skips,
    refreshes or sets the entry's TTL.

    Args:
        cache: a :class:`ToolCache` (its client, prefix, serde, single-flight settings
            and stats), or a client to build one with default settings.
        name: the stats and key name of the function.
        ttl: seconds entries live; default the cache's policy for ``name`` (a
            ``ToolCache`` policy, remote policy or default TTL applies, like for tools).
        ignore: parameter names left out of the key.

    Example:
        ```python
        from langgraph_valkey_cache import ToolCache, cached

        tools = ToolCache(client, ttl=600)

        @cached(tools, ttl=300)
        def search_docs(query: str, k: int = 4) -> list[Document]:
            return retriever.invoke(query)[:k]

        @cached(tools)
        async def fetch(url: str) -> str: ...
        ```
    """
    tool_cache = cache if isinstance(cache, ToolCache) else ToolCache(cache)
    skip = frozenset(ignore)

    def decorate(func: F) -> F:
        fname = name or f"{func.__module__}.{func.__qualname__}"
        signature = inspect.signature(func)

        def decode(raw: bytes) -> dict[str, Any]:
            body = tool_cache.serde.loads_typed(unpack_typed(raw))
            if not isinstance(body, dict) or "v" not in body:
                raise ValueError("not a cached() entry")
            return cast(dict[str, Any], body)

        def plan(
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            control: CacheControl,
            scope: tuple[str, ...] | None,
        ) -> Plan:
            yield from tool_cache._plan_policies()
            effective = tool_cache.effective_ttl(fname) if ttl is ... else ttl
            if isinstance(effective, str) or scope is None or control.skip:
                yield BYPASS  # "no-cache", no scope value, or skipped by the request
                yield COMPUTE
                return None
            if control.ttl is not None:
                effective = control.ttl
            try:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                text = canonical_args(bound.arguments, skip)
                key = tool_cache.keys.entry(fname, tool_cache.keys.call_digest(fname, text, scope))
            except (TypeError, ValueError) as exc:
                logger.info("%s: arguments not cacheable (%s); running uncached", fname, exc)
                yield BYPASS
                yield COMPUTE
                return None
            return (
                yield from tool_cache._plan_entry(
                    fname, key, effective, decode, read=not control.refresh
                )
            )

        def ran(box: dict[str, Any], value: Any, start: float) -> tuple[Any, bytes | None]:
            run_ms = int((time.perf_counter() - start) * 1000)
            box["value"] = value
            try:
                typed = dumps_checked(tool_cache.serde, {"v": value, "run_ms": run_ms}, fname)
                payload: bytes | None = pack_typed(typed)
            except TypeError as exc:
                logger.info("%s: result not cached: %s", fname, exc)
                payload = None
            return {"v": value, "run_ms": run_ms, "cacheable": payload is not None}, payload

        def answer(flight: Flight[dict[str, Any]] | None, box: dict[str, Any]) -> Any:
            return box["value"] if flight is None else flight.value["v"]

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                box: dict[str, Any] = {}

                async def compute() -> tuple[Any, bytes | None]:
                    start = time.perf_counter()
                    return ran(box, await func(*args, **kwargs), start)

                flight = await tool_cache._arun(
                    plan(args, kwargs, *_run_request(tool_cache)),
                    "cached_call",
                    compute=compute,
                    fallback=fallback_pair,
                )
                return answer(flight, box)

            return cast(F, awrapper)

        if tool_cache.client is None:
            raise TypeError(
                f"cached({fname}): a sync function needs a ToolCache with a sync client"
            )

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            box: dict[str, Any] = {}

            def compute() -> tuple[Any, bytes | None]:
                start = time.perf_counter()
                return ran(box, func(*args, **kwargs), start)

            flight = tool_cache._run(
                plan(args, kwargs, *_run_request(tool_cache)),
                "cached_call",
                compute=compute,
                fallback=fallback_pair,
            )
            return answer(flight, box)

        return cast(F, wrapper)

    return decorate
