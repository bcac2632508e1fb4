"""ValkeyNodeCache behaves like LangGraph's InMemoryCache for CachePolicy graphs."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from langgraph.cache.base import BaseCache
from langgraph.cache.memory import InMemoryCache
from langgraph.graph import END, START, StateGraph
from langgraph.types import CachePolicy
from typing_extensions import TypedDict

from langgraph_valkey_cache import ValkeyNodeCache
from langgraph_valkey_cache._client import client_from_url, is_cluster
from langgraph_valkey_cache.embedded import EmbeddedValkey
from langgraph_valkey_cache.testing import count_commands

NS_A = ("__pregel_ns_writes", "mod.a", "a")


class State(TypedDict):
    x: int
    a: int
    b: int


def build(calls: Counter[str], cache: BaseCache[Any]) -> Any:
    def a(state: State) -> dict[str, int]:
        calls["a"] += 1
        return {"a": state["x"] * 10}

    def b(state: State) -> dict[str, int]:
        calls["b"] += 1
        return {"b": state["a"] + 1}

    builder = StateGraph(State)
    builder.add_node("a", a, cache_policy=CachePolicy())
    # a fractional TTL keeps the test fast; both caches honour it like whole seconds
    builder.add_node("b", b, cache_policy=CachePolicy(ttl=0.4))  # type: ignore[arg-type]
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("b", END)
    return builder.compile(cache=cache)


FLAVOURS = ["sync", "async", "async-graph-sync-client"]


@asynccontextmanager
async def node_cache(flavour: str, url: str, prefix: str) -> AsyncIterator[ValkeyNodeCache]:
    if flavour == "async":
        client = client_from_url(url, asyncio=True)
        yield ValkeyNodeCache(client, prefix=prefix, metrics=False)
        await client.aclose()
    else:
        client = client_from_url(url)
        yield ValkeyNodeCache(client, prefix=prefix, metrics=False)
        client.close()


async def scenario(flavour: str, make: Callable[[], BaseCache[Any]]) -> list[dict[str, int]]:
    """The same steps against any cache; returns the call counts after each step."""
    calls: Counter[str] = Counter()
    graph = build(calls, make())
    use_async = flavour != "sync"

    async def invoke(x: int) -> dict[str, Any]:
        if use_async:
            return dict(await graph.ainvoke({"x": x}))
        return dict(graph.invoke({"x": x}))

    async def clear(nodes: list[str] | None = None) -> None:
        if use_async:
            await graph.aclear_cache(nodes)
        else:
            graph.clear_cache(nodes)

    seen = []
    assert await invoke(1) == {"x": 1, "a": 10, "b": 11}
    seen.append(dict(calls))
    assert await invoke(1) == {"x": 1, "a": 10, "b": 11}  # both cached
    seen.append(dict(calls))
    await invoke(2)  # different input: both run
    seen.append(dict(calls))
    await asyncio.sleep(0.5)  # b's TTL expired, a has none
    await invoke(1)
    seen.append(dict(calls))
    await clear(["a"])  # only a's namespace
    await invoke(1)
    seen.append(dict(calls))
    await clear()
    await invoke(1)
    seen.append(dict(calls))
    return seen


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_matches_in_memory_cache(flavour: str, any_url: str, prefix: str) -> None:
    expected = await scenario(flavour, InMemoryCache)
    async with node_cache(flavour, any_url, prefix) as cache:
        got = await scenario(flavour, lambda: cache)
    assert got == expected
    assert expected[-1] == {"a": 4, "b": 4}  # the scenario exercised hits and misses


def test_shared_between_cache_objects(any_url: str, prefix: str) -> None:
    """Another worker (its own client and cache object) hits what this one stored."""
    calls: Counter[str] = Counter()
    clients = [client_from_url(any_url) for _ in range(2)]
    for client in clients:
        build(calls, ValkeyNodeCache(client, prefix=prefix, metrics=False)).invoke({"x": 3})
        client.close()
    assert calls == {"a": 1, "b": 1}


def test_get_is_one_round_trip_and_ttl_is_in_the_set(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    cache: ValkeyNodeCache[Any] = ValkeyNodeCache(
        client, prefix=prefix, metrics=False, stats_flush_interval=60
    )
    keys = [(NS_A, f"k{i}") for i in range(5)]
    client.ping()  # connect first: the handshake is not the cache's cost
    with count_commands() as log:
        cache.set({keys[0]: ([("a", 1)], 30)})
    assert log.round_trips == 1  # value and TTL in one SET ... PX
    assert 0 < client.pttl(cache.keys.entry(NS_A, "k0")) <= 30_000
    with count_commands() as log:
        cache.set({k: ([("a", i)], None) for i, k in enumerate(keys)})
    assert log.round_trips == 1  # one pipeline
    assert client.pttl(cache.keys.entry(NS_A, "k1")) == -1
    with count_commands() as log:
        got = cache.get([*keys, (NS_A, "missing")])
    assert log.round_trips == 1
    # msgpack has no tuples: lists come back, exactly as from InMemoryCache's serde
    assert got == {k: [["a", i]] for i, k in enumerate(keys)}
    client.close()


async def test_async_get_set_round_trips(async_client: Any, prefix: str) -> None:
    cache: ValkeyNodeCache[Any] = ValkeyNodeCache(
        async_client, prefix=prefix, metrics=False, stats_flush_interval=60
    )
    keys = [(NS_A, f"k{i}") for i in range(3)]
    await cache.aset({k: ({"v": i}, 60) for i, k in enumerate(keys)})
    with count_commands() as log:
        got = await cache.aget(keys)
    assert got == {k: {"v": i} for i, k in enumerate(keys)}
    # one pipeline of GETs, one round trip per node holding a key; one MGET standalone
    if is_cluster(async_client):
        assert 1 <= log.round_trips <= 3
        assert log.commands == ["GET"] * len(keys)
    else:
        assert log.round_trips == 1
        assert log.commands == ["MGET"]
    with pytest.raises(TypeError, match="only an async client"):
        cache.get(keys)


async def test_clear_is_scoped(any_url: str, prefix: str) -> None:
    client = client_from_url(any_url, asyncio=True)
    cache: ValkeyNodeCache[Any] = ValkeyNodeCache(client, prefix=prefix, metrics=False)
    other: ValkeyNodeCache[Any] = ValkeyNodeCache(client, prefix=prefix + "x", metrics=False)
    star = ("*",)
    nested = ("a", "b")
    entries = {(("a",), "1"): (1, None), (nested, "2"): (2, None), (star, "3"): (3, None)}
    await cache.aset(entries)
    await other.aset(entries)
    await cache.aclear([star])  # a glob character in a namespace widens nothing
    assert set(await cache.aget(list(entries))) == {(("a",), "1"), (nested, "2")}
    await cache.aclear([("a",)])  # ("a",) is not a prefix of ("a", "b")
    assert set(await cache.aget(list(entries))) == {(nested, "2")}
    await cache.aclear()
    assert await cache.aget(list(entries)) == {}
    assert len(await other.aget(list(entries))) == 3  # another prefix is untouched
    await other.aclear()
    await client.aclose()


def test_sync_clear_on_cluster_and_standalone(sync_client: Any, prefix: str) -> None:
    cache: ValkeyNodeCache[Any] = ValkeyNodeCache(sync_client, prefix=prefix, metrics=False)
    cache.set({(NS_A, f"k{i}"): (i, None) for i in range(1200)})  # > one UNLINK batch
    cache.set({(("other",), "k"): (1, None)})
    cache.clear([NS_A])
    assert cache.get([(NS_A, "k0"), (NS_A, "k1199"), (("other",), "k")]) == {(("other",), "k"): 1}


def test_fails_open_when_server_dies(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    server = EmbeddedValkey().start()
    client = client_from_url(server.url, timeout=0.5)
    calls: Counter[str] = Counter()
    graph = build(calls, ValkeyNodeCache(client, prefix=prefix, metrics=False))
    graph.invoke({"x": 1})
    graph.invoke({"x": 1})
    assert calls == {"a": 1, "b": 1}
    server.kill()
    caplog.set_level(logging.WARNING, "langgraph_valkey_cache")
    t0 = time.monotonic()
    assert graph.invoke({"x": 1}) == {"x": 1, "a": 10, "b": 11}
    assert calls == {"a": 2, "b": 2}  # nodes just ran
    assert time.monotonic() - t0 < 15
    assert "node_cache cache get failed" in caplog.text
    warnings = len(caplog.records)
    with count_commands() as log:
        graph.invoke({"x": 1})  # within the cooldown: no server calls, no new warnings
    assert log.round_trips == 0 and len(caplog.records) == warnings
    assert calls == {"a": 3, "b": 3}
    client.close()
    server.stop()


def test_undecodable_entry_is_a_miss(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    cache: ValkeyNodeCache[Any] = ValkeyNodeCache(client, prefix=prefix, metrics=False)
    client.set(cache.keys.entry(NS_A, "k"), b"garbage")
    assert cache.get([(NS_A, "k")]) == {}
    client.close()


def slow_graph(cache: ValkeyNodeCache[Any], runs: list[int], fail: bool = False) -> Any:
    lock = threading.Lock()

    def slow(state: State) -> dict[str, int]:
        with lock:
            runs.append(state["x"])
        time.sleep(0.3)
        if fail:
            raise RuntimeError("node failed")
        return {"a": state["x"] + 1}

    builder = StateGraph(State)
    builder.add_node("slow", slow, cache_policy=CachePolicy(ttl=60))
    builder.add_edge(START, "slow")
    return builder.compile(cache=cache)


def test_single_flight_threads(any_url: str, prefix: str) -> None:
    runs: list[int] = []
    clients = [client_from_url(any_url) for _ in range(8)]
    # one cache object per worker, as separate processes would have
    graphs = [
        slow_graph(ValkeyNodeCache(c, prefix=prefix, single_flight=True, metrics=False), runs)
        for c in clients
    ]
    barrier = threading.Barrier(len(graphs))
    results: list[Any] = []

    def worker(graph: Any) -> None:
        barrier.wait()
        results.append(graph.invoke({"x": 1}))

    threads = [threading.Thread(target=worker, args=(g,)) for g in graphs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runs == [1]
    assert all(r["a"] == 2 for r in results) and len(results) == 8
    for c in clients:
        c.close()


async def test_single_flight_tasks_and_failing_leader(any_url: str, prefix: str) -> None:
    runs: list[int] = []
    client = client_from_url(any_url, asyncio=True)
    graphs = [
        slow_graph(
            ValkeyNodeCache(
                client, prefix=prefix, single_flight=True, wait_timeout=0.6, metrics=False
            ),
            runs,
        )
        for _ in range(10)
    ]
    results = await asyncio.gather(*(g.ainvoke({"x": 5}) for g in graphs))
    assert runs == [5] and {r["a"] for r in results} == {6}
    # a leader that fails leaves its lease: a waiter gives up after wait_timeout and runs
    failing = ValkeyNodeCache(client, prefix=prefix, single_flight=True, metrics=False)
    with pytest.raises(RuntimeError):
        await slow_graph(failing, runs, fail=True).ainvoke({"x": 7})
    t0 = time.monotonic()
    assert (await graphs[0].ainvoke({"x": 7}))["a"] == 8
    assert 0.5 < time.monotonic() - t0 < 3
    assert runs == [5, 7, 7]
    await client.aclose()


def test_single_flight_get_then_set_publishes_without_errors(valkey_url: str, prefix: str) -> None:
    """A miss takes the lease; the matching set stores the value and drops the lease in
    one script, with no error counted (a plan step replying into a list would fail open)."""
    client = client_from_url(valkey_url)
    cache: ValkeyNodeCache[Any] = ValkeyNodeCache(
        client, prefix=prefix, single_flight=True, metrics=False, stats_flush_interval=0
    )
    key = (NS_A, "k")
    assert cache.get([key]) == {}  # a miss: this process now holds the lease
    cache.set({key: ({"v": 1}, 60)})
    assert cache.get([key]) == {key: {"v": 1}}
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.errors) == (1, 1, 0), stats
    assert client.exists(f"{cache.keys.entry(NS_A, 'k')}") == 1
    client.close()
