"""Tool cache and node cache: hit latency in round trips, and what a miss costs.

Run: ``python bench/bench_tool_cache.py`` (starts its own embedded valkey-server on
loopback; numbers are per operation, median of N runs, single client thread).

* ToolCache, measured at the hook (``cache.wrap(request, execute)``) around a tool that
  does no work, so the numbers are pure cache overhead: no cache vs hit vs miss.
* ValkeyNodeCache, measured per ``graph.invoke`` of a one-node graph with a
  ``CachePolicy``: no cache vs LangGraph's ``InMemoryCache`` vs Valkey, hit and miss.

``--profile`` instead profiles a ToolCache hit: this process's CPU time per call
(``time.process_time``, so other load on the machine and the server's own time don't
count) of a raw ``GET``, a hit and an L1 hit, interleaved medians of 5 runs; then the
top of a cProfile of the hit (``--profile-top N`` lines, 0: none).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from langgraph.cache.memory import InMemoryCache
from langgraph.graph import START, StateGraph
from langgraph.prebuilt.tool_node import ToolCallRequest
from langgraph.types import CachePolicy
from typing_extensions import TypedDict

from langgraph_valkey_cache import ToolCache, ValkeyNodeCache
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache.embedded import EmbeddedValkey
from langgraph_valkey_cache.testing import count_commands

N = 2000


def timed(fn: Callable[[int], Any], n: int = N) -> tuple[float, float]:
    """(median µs per op, round trips per op) over n calls of fn(i)."""
    samples = []
    with count_commands() as log:
        for i in range(n):
            t0 = time.perf_counter()
            fn(i)
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6, log.round_trips / n


async def atimed(fn: Callable[[int], Awaitable[Any]], n: int = N) -> tuple[float, float]:
    samples = []
    with count_commands() as log:
        for i in range(n):
            t0 = time.perf_counter()
            await fn(i)
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6, log.round_trips / n


def row(label: str, us: float, rts: float, base: float | None = None) -> None:
    ratio = f"{us / base:6.1f}x" if base else "      "
    print(f"  {label:<34} {us:9.1f} µs  {ratio}  {rts:5.2f} round trips/op")


@tool
def weather(city: str, units: str = "metric") -> str:
    """Weather of a city."""
    return f"sunny in {city}"


def request(i: int, city: str) -> ToolCallRequest:
    call = {"name": "weather", "args": {"city": city, "units": "metric"}, "id": f"c{i}"}
    return ToolCallRequest(
        tool_call=call,  # type: ignore[arg-type]
        tool=weather,
        state={},
        runtime=SimpleNamespace(config={}),  # type: ignore[arg-type]
    )


def execute(req: ToolCallRequest) -> ToolMessage:
    return ToolMessage(
        f"sunny in {req.tool_call['args']['city']}", tool_call_id=req.tool_call["id"]
    )


async def aexecute(req: ToolCallRequest) -> ToolMessage:
    return execute(req)


def bench_tool_cache(url: str) -> None:
    client = client_from_url(url)
    aclient = client_from_url(url, asyncio=True)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    # stats flushed once at the end: a hit is then exactly the one lookup round trip
    cache = ToolCache(
        client, async_client=aclient, prefix=prefix, metrics=False, stats_flush_interval=3600
    )
    nocache = SimpleNamespace(wrap=lambda req, ex: ex(req))
    cache.wrap(request(0, "warm"), execute)
    cache.wrap(request(0, "warm"), execute)
    print("ToolCache (per tool call at the wrap hook; the tool itself does no work)")
    base, rts = timed(lambda i: nocache.wrap(request(i, "Sofia"), execute))
    row("no cache", base, rts)
    us, rts = timed(lambda i: cache.wrap(request(i, "warm"), execute))
    row("hit (sync)", us, rts, base)
    us, rts = timed(lambda i: cache.wrap(request(i, f"miss-{i}"), execute))
    row("miss + store, single-flight (sync)", us, rts, base)
    nosf = ToolCache(
        client, prefix=prefix + "b", metrics=False, stats_flush_interval=3600, single_flight=False
    )
    nosf.wrap(request(0, "warm"), execute)
    us, rts = timed(lambda i: nosf.wrap(request(i, f"miss-{i}"), execute))
    row("miss + store, no single-flight", us, rts, base)

    async def run_async() -> None:
        await cache.awrap(request(0, "warm"), aexecute)
        us, rts = await atimed(lambda i: cache.awrap(request(i, "warm"), aexecute))
        row("hit (async)", us, rts, base)
        us, rts = await atimed(lambda i: cache.awrap(request(i, f"amiss-{i}"), aexecute))
        row("miss + store, single-flight (async)", us, rts, base)
        await aclient.aclose()

    asyncio.run(run_async())
    cache.invalidate("weather")
    nosf.invalidate("weather")
    client.close()


class State(TypedDict):
    x: int
    y: int


def graph_with(cache: Any) -> Any:
    def work(state: State) -> dict[str, int]:
        return {"y": state["x"] * 2}

    builder = StateGraph(State)
    builder.add_node("work", work, cache_policy=CachePolicy(ttl=600) if cache else None)
    builder.add_edge(START, "work")
    return builder.compile(cache=cache)


def bench_node_cache(url: str) -> None:
    client = client_from_url(url)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    valkey_cache = ValkeyNodeCache(client, prefix=prefix, metrics=False)
    n = 500
    print("\nValkeyNodeCache (per graph.invoke of a one-node graph)")
    plain = graph_with(None)
    base, rts = timed(lambda i: plain.invoke({"x": 1}), n)
    row("no cache", base, rts)
    memory = graph_with(InMemoryCache())
    memory.invoke({"x": 1})
    us, rts = timed(lambda i: memory.invoke({"x": 1}), n)
    row("InMemoryCache hit", us, rts, base)
    graph = graph_with(valkey_cache)
    graph.invoke({"x": 1})
    us, rts = timed(lambda i: graph.invoke({"x": 1}), n)
    row("ValkeyNodeCache hit", us, rts, base)
    us, rts = timed(lambda i: graph.invoke({"x": i + 10}), n)
    row("ValkeyNodeCache miss + set", us, rts, base)
    keys = [(("ns",), f"k{i}") for i in range(10)]
    valkey_cache.set({k: ({"y": 1}, 600) for k in keys})
    us, rts = timed(lambda i: valkey_cache.get(keys), n)
    row("get() of 10 keys", us, rts)
    valkey_cache.clear()
    client.close()


def cpu_us(fn: Callable[[], Any], n: int) -> float:
    """This process's CPU time per call of ``fn``, in µs."""
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def profile_tool_hit(url: str, n: int, top: int) -> None:
    client = client_from_url(url)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    cache = ToolCache(client, prefix=prefix, metrics=False, stats_flush_interval=3600)
    local = ToolCache(
        client, prefix=prefix, metrics=False, stats_flush_interval=3600, local_cache=True
    )
    req = request(0, "Oslo")
    cache.wrap(req, execute)
    key = cache.key_for("weather", {"city": "Oslo", "units": "metric"})
    rows: dict[str, Callable[[], Any]] = {
        "raw GET (valkey-py)": lambda: client.get(key),
        "ToolCache hit": lambda: cache.wrap(req, execute),
        "ToolCache hit, L1": lambda: local.wrap(req, execute),
    }
    for fn in rows.values():  # warm up: connections, policies, memoised keys, the L1
        for _ in range(300):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(5):
        for name, fn in rows.items():
            samples[name].append(cpu_us(fn, n))
    print(f"ToolCache hit, CPU time of this process per call (median of 5 x {n})")
    medians = {name: statistics.median(v) for name, v in samples.items()}
    for name, us in medians.items():
        print(f"  {name:<22} {us:7.1f} µs")
    gap = medians["ToolCache hit"] - medians["raw GET (valkey-py)"]
    print(f"  hit - raw GET: {gap:.1f} µs CPU")
    if top:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            cache.wrap(req, execute)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(top)
    cache.invalidate("weather")
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", action="store_true", help="profile a ToolCache hit")
    parser.add_argument("--n", type=int, default=3000, help="calls per --profile run")
    parser.add_argument("--profile-top", type=int, default=25)
    args = parser.parse_args()
    with EmbeddedValkey() as server:
        if args.profile:
            profile_tool_hit(server.url, args.n, args.profile_top)
            return
        bench_tool_cache(server.url)
        bench_node_cache(server.url)


if __name__ == "__main__":
    main()
