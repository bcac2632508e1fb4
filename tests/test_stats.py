"""Hit/miss stats and cost saved, shared across processes, for every cache tier; the
``stats`` command. Real servers, real processes."""

from __future__ import annotations

import json
import multiprocessing
from typing import Any

import pytest
from langchain_core.outputs import Generation

from langgraph_valkey_cache import (
    ToolCache,
    ValkeyCache,
    ValkeyNodeCache,
    ValkeySemanticCache,
    cached,
)
from langgraph_valkey_cache.__main__ import main
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache._failopen import Executor
from langgraph_valkey_cache._stats import CacheStats, SharedStats, read_hashes
from langgraph_valkey_cache._telemetry import Telemetry
from langgraph_valkey_cache.embedded import EmbeddedValkey
from langgraph_valkey_cache.testing import HashingEmbeddings, count_commands


def _cost(gens: Any) -> float:
    return 0.25 * len(gens)


def _prefixes(prefix: str) -> dict[str, str]:
    return {"llm": f"{prefix}llm", "node": f"{prefix}node", "tools": f"{prefix}tools"}


def _worker(url: str, prefix: str, i: int, n: int, out: Any) -> None:
    """One process: ``n`` LLM hits and 1 miss, ``n`` node hits and 1 miss, 1 tool miss
    and ``n`` tool hits, all through the real cache classes."""
    p = _prefixes(prefix)
    client = client_from_url(url)
    llm = ValkeyCache(client, prefix=p["llm"], metrics=False, cost_of=_cost)
    llm.update("q", "model", [Generation(text="a")])
    assert llm.lookup("not cached", "model") is None
    for _ in range(n):
        assert llm.lookup("q", "model") is not None
    node: ValkeyNodeCache[Any] = ValkeyNodeCache(client, prefix=p["node"], metrics=False)
    node.set({(("graph", "step"), "k"): ({"v": 1}, 60)})
    assert node.get([(("graph", "step"), "missing")]) == {}
    for _ in range(n):
        assert node.get([(("graph", "step"), "k")])
    tools = ToolCache(client, prefix=p["tools"], metrics=False)

    @cached(tools, name="lookup_city")
    def lookup_city(city: str) -> str:
        return city.upper()

    for _ in range(n + 1):  # a call of its own: 1 miss, then n hits
        assert lookup_city(f"c{i}") == f"C{i}"
    # every process writes what it still holds before exiting
    llm.flush_stats()
    node.flush_stats()
    tools.flush_stats()
    client.close()
    out.put("ok")


def test_two_processes_add_to_the_same_totals(valkey_url: str, prefix: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    n = 4
    procs = [ctx.Process(target=_worker, args=(valkey_url, prefix, i, n, out)) for i in range(2)]
    for proc in procs:
        proc.start()
    assert [out.get(timeout=60) for _ in procs] == ["ok", "ok"]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    # a third client, which recorded nothing itself, sees both processes' counts
    client = client_from_url(valkey_url)
    p = _prefixes(prefix)
    llm = ValkeyCache(client, prefix=p["llm"], metrics=False).stats()
    assert (llm.hits, llm.misses) == (2 * n, 2)
    assert llm.hit_rate == pytest.approx(2 * n / (2 * n + 2))
    assert llm.saved_usd == pytest.approx(2 * n * 0.25)
    node = ValkeyNodeCache(client, prefix=p["node"], metrics=False).stats()
    assert (node.hits, node.misses) == (2 * n, 2)
    tools = ToolCache(client, prefix=p["tools"], metrics=False)
    total = tools.totals()
    assert (total.hits, total.misses) == (2 * n, 2)
    assert tools.stats()["lookup_city"].calls == 2 * n + 2  # the per-tool API is unchanged
    client.close()


async def test_async_stats_and_the_cli(valkey_url: str, prefix: str, capsys: Any) -> None:
    aclient = client_from_url(valkey_url, asyncio=True)
    p = _prefixes(prefix)
    llm = ValkeyCache(aclient, prefix=p["llm"], metrics=False, cost_of=_cost)
    await llm.aupdate("q", "model", [Generation(text="a")])
    for prompt in ("q", "q", "q", "other"):
        await llm.alookup(prompt, "model")
    assert await llm.astats() == CacheStats(hits=3, misses=1, saved_usd=0.75)
    node: ValkeyNodeCache[Any] = ValkeyNodeCache(aclient, prefix=p["node"], metrics=False)
    await node.aset({(("n",), "k"): (1, None)})
    await node.aget([(("n",), "k"), (("n",), "x")])
    assert (await node.astats()).hit_rate == 0.5
    tools = ToolCache(aclient, prefix=p["tools"], metrics=False)

    @cached(tools, name="slow")
    async def slow(x: int) -> int:
        return x

    for x in (1, 1, 1, 2):
        await slow(x)
    totals = await tools.atotals()
    assert (totals.hits, totals.misses) == (2, 2)

    args = ["--url", valkey_url, "stats"]
    args += [f"--{tier}-prefix={pre}" for tier, pre in p.items()]
    args += [f"--semantic-prefix={prefix}nothing"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["tier", "prefix", "hits", "misses"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"llm", "node", "tools"}  # no semantic stats under that prefix
    assert rows["llm"][1:6] == [p["llm"], "3", "1", "75.0%", "0.7500"]
    assert rows["node"][2:5] == ["1", "1", "50.0%"]
    assert rows["tools"][2:5] == ["2", "2", "50.0%"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["llm"]["hits"] == 3 and report["llm"]["saved_usd"] == 0.75
    assert report["tools"]["prefixes"] == [p["tools"]]
    assert report["tools"]["caches"][p["tools"]]["hits"] == 2
    assert "semantic" not in report and "provider_prompt_cache" in report
    await aclient.aclose()


def test_cli_without_stats(valkey_url: str, prefix: str, capsys: Any) -> None:
    args = ["--url", valkey_url, "stats"]
    args += [
        f"--{t}-prefix={prefix}{t}" for t in ("llm", "semantic", "node", "tools", "embeddings")
    ]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("no cache stats under")


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_hit_path_is_one_round_trip_between_flushes(
    flavour: str, valkey_url: str, prefix: str
) -> None:
    interval = 0.5
    client = client_from_url(valkey_url, asyncio=flavour == "async")
    cache = ValkeyCache(client, prefix=prefix, metrics=False, stats_flush_interval=interval)

    async def lookup() -> Any:
        if flavour == "async":
            return await cache.alookup("q", "model")
        return cache.lookup("q", "model")

    if flavour == "async":
        await cache.aupdate("q", "model", [Generation(text="a")])
        await cache.aflush_stats()
    else:
        cache.update("q", "model", [Generation(text="a")])
        cache.flush_stats()
    await lookup()  # connect first: the handshake is not the lookup's cost
    with count_commands() as log:
        for _ in range(5):
            assert await lookup() is not None
    assert log.round_trips == 5 and log.commands == ["GET"] * 5
    import asyncio

    await asyncio.sleep(interval)
    with count_commands() as log:
        assert await lookup() is not None  # due: the counts ride along, one extra trip
        assert await lookup() is not None  # and not again until the next interval
    assert log.round_trips == 3
    assert log.commands.count("HINCRBY") == 1 and "HINCRBYFLOAT" not in log.commands
    stats = await cache.astats() if flavour == "async" else cache.stats()
    assert stats.hits == 8
    if flavour == "async":
        await client.aclose()
    else:
        client.close()


def test_node_get_is_one_round_trip_between_flushes(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    node: ValkeyNodeCache[Any] = ValkeyNodeCache(
        client, prefix=prefix, metrics=False, stats_flush_interval=3600
    )
    node.set({(("n",), "k"): (1, None)})
    node.get([(("n",), "k")])
    with count_commands() as log:
        for _ in range(5):
            assert node.get([(("n",), "k")])
    assert log.round_trips == 5
    assert node.stats().hits == 6
    client.close()


def test_flush_fails_open_and_keeps_the_counts(prefix: str) -> None:
    server = EmbeddedValkey().start()
    client = client_from_url(server.url, timeout=0.3)
    try:
        cache = ValkeyCache(client, prefix=prefix, metrics=False)
        cache.update("q", "model", [Generation(text="a")])
        assert cache.lookup("q", "model") is not None
        server.kill()
        cache.flush_stats()  # no raise: the hit stays pending (and the failure is counted)
        assert cache.shared_stats.pending == {
            f"{prefix}:stats": {"hits": 1, "errors": 1, "errors.unavailable": 1}
        }
        assert cache.lookup("q", "model") is None  # the breaker is open: a miss, counted
        server.stop()
        server = EmbeddedValkey(port=server.port).start()
        import time

        time.sleep(0.3)  # the breaker's first cooldown
        stats = cache.stats()
        assert (stats.hits, stats.misses, stats.errors) == (1, 1, 1)
        assert stats.errors_by_reason == {"unavailable": 1}
    finally:
        client.close()
        server.stop()


def test_shared_stats_many_hashes_one_round_trip(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    stats = SharedStats(f"{prefix}:a", flush_interval=3600)
    executor = Executor(client, Telemetry("t", metrics=False), stats)
    stats.record(hits=2, saved_usd=0.5)
    stats.record(f"{prefix}:b", misses=1, saved_ms=30)
    executor.maybe_flush()  # not due
    assert read_hashes(client, [f"{prefix}:a"]) == [{}]
    client.ping()
    with count_commands() as log:
        executor.maybe_flush(force=True)
    assert log.round_trips == 1
    assert read_hashes(client, [f"{prefix}:a", f"{prefix}:b", f"{prefix}:c"]) == [
        {"hits": 2, "saved_usd": 0.5},
        {"misses": 1, "saved_ms": 30},
        {},
    ]
    client.close()


@pytest.mark.search
def test_semantic_cache_stats_across_instances(search_url: str, prefix: str) -> None:
    clients = [client_from_url(search_url) for _ in range(2)]
    caches = [
        ValkeySemanticCache(
            c, HashingEmbeddings(64), prefix=prefix, metrics=False, cost_of=_cost, dims=64
        )
        for c in clients
    ]
    caches[0].setup()
    caches[0].update("What is the capital of France?", "llm", [Generation(text="Paris")])
    for cache in caches:
        assert cache.lookup("what is the capital of France?", "llm") is not None
        assert cache.lookup("How do I bake bread?", "llm") is None
    caches[0].flush_stats()
    stats = caches[1].stats()  # flushes its own, reads both
    assert (stats.hits, stats.misses, stats.saved_usd) == (2, 2, 0.5)
    caches[0].drop_index()
    for c in clients:
        c.close()
