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

from langgraph_valkey_cache._keys import digest
from langgraph_valkey_cache._serde import dumps_checked, pack_typed, unpack_typed
from langgraph_valkey_cache.cache.singleflight import Flight
from langgraph_valkey_cache.cache.tools import ToolCache, canonical_args

__all__ = ["cached"]

logger = logging.getLogger("langgraph_valkey_cache.cache")

F = TypeVar("F", bound=Callable[..., Any])


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

        def plan(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, float | None] | None:
            effective = tool_cache.effective_ttl(fname) if ttl is ... else ttl
            if isinstance(effective, str):  # "no-cache"
                return None
            try:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                key = tool_cache.keys.entry(
                    fname, digest(fname, canonical_args(bound.arguments, skip))
                )
            except (TypeError, ValueError) as exc:
                logger.info("%s: arguments not cacheable (%s); running uncached", fname, exc)
                return None
            return key, effective

        def encode(value: Any, run_ms: int) -> bytes | None:
            try:
                typed = dumps_checked(tool_cache.serde, {"v": value, "run_ms": run_ms}, fname)
            except TypeError as exc:
                logger.info("%s: result not cached: %s", fname, exc)
                return None
            return pack_typed(typed)

        def decode(raw: bytes) -> dict[str, Any]:
            body = tool_cache.serde.loads_typed(unpack_typed(raw))
            if not isinstance(body, dict) or "v" not in body:
                raise ValueError("not a cached() entry")
            return cast(dict[str, Any], body)

        def account(flight: Flight[dict[str, Any]], run_ms: int, cacheable: bool) -> None:
            tool_cache._account(fname, flight, run_ms, cacheable)

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                await tool_cache._arefresh_policies()
                planned = plan(args, kwargs)
                if planned is None:
                    return await func(*args, **kwargs)
                key, key_ttl = planned
                box: dict[str, Any] = {}

                async def compute() -> tuple[dict[str, Any], bytes | None]:
                    start = time.perf_counter()
                    value = await func(*args, **kwargs)
                    run_ms = int((time.perf_counter() - start) * 1000)
                    box.update(value=value, run_ms=run_ms)
                    payload = encode(value, run_ms)
                    box["cacheable"] = payload is not None
                    return {"v": value, "run_ms": run_ms}, payload

                with tool_cache.telemetry.operation("cached_call"):
                    flight = await tool_cache._aflight.run(key, compute, ttl=key_ttl, decode=decode)
                    account(flight, box.get("run_ms", 0), box.get("cacheable", False))
                    await tool_cache._aflush()
                return flight.value["v"]

            return cast(F, awrapper)

        if tool_cache.client is None:
            raise TypeError(
                f"cached({fname}): a sync function needs a ToolCache with a sync client"
            )

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            tool_cache._refresh_policies()
            planned = plan(args, kwargs)
            if planned is None or tool_cache._flight is None:
                return func(*args, **kwargs)
            key, key_ttl = planned
            box: dict[str, Any] = {}

            def compute() -> tuple[dict[str, Any], bytes | None]:
                start = time.perf_counter()
                value = func(*args, **kwargs)
                run_ms = int((time.perf_counter() - start) * 1000)
                box.update(value=value, run_ms=run_ms)
                payload = encode(value, run_ms)
                box["cacheable"] = payload is not None
                return {"v": value, "run_ms": run_ms}, payload

            with tool_cache.telemetry.operation("cached_call"):
                flight = tool_cache._flight.run(key, compute, ttl=key_ttl, decode=decode)
                account(flight, box.get("run_ms", 0), box.get("cacheable", False))
                tool_cache._flush()
            return flight.value["v"]

        return cast(F, wrapper)

    return decorate
