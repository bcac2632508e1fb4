"""The store's vector search on a 3-primary Valkey Cluster running valkey-search with its
coordinator (``search_cluster`` fixture): the same answers as InMemoryStore after a bulk
load, read-your-writes for a search right after each put, and a search right after an
index is created over existing data. Runs in CI (``.ci/run``); skipped, with the reason,
where the search cluster cannot run (see ``search_cluster_unavailable`` in conftest).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from langgraph_valkey_cache import ValkeyStore
from langgraph_valkey_cache.embedded import EmbeddedCluster
from langgraph_valkey_cache.testing import HashingEmbeddings
from tests.test_store import FLAVOURS, call, open_store
from tests.test_store_search import (
    DIMS,
    QUERIES,
    _docs,
    _index,
    _loaded,
    _ranks_as_inmemory,
    _same_ranking,
)

pytestmark = [pytest.mark.search_cluster, pytest.mark.cluster, pytest.mark.search]

# HNSW-default: no EF_RUNTIME from the user, so the store's own choice is what is tested
ALGORITHMS: dict[str, tuple[str, dict[str, Any]]] = {
    "FLAT": ("FLAT", {}),
    "HNSW": ("HNSW", {"M": 16, "EF_CONSTRUCTION": 200, "EF_RUNTIME": 50}),
    "HNSW-default": ("HNSW", {}),
}


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
async def test_bulk_load_matches_inmemory(
    flavour: str, algorithm: str, search_cluster_url: str, prefix: str
) -> None:
    algo, params = ALGORITHMS[algorithm]
    async with _loaded(
        flavour, search_cluster_url, prefix, _docs(80), vector_algorithm=algo, vector_params=params
    ) as (store, mem):
        await _ranks_as_inmemory(store, mem)


N_PUTS = 40


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_search_right_after_each_put_finds_it(
    flavour: str, search_cluster_url: str, prefix: str
) -> None:
    """Read-your-writes: each put lands in its own namespace (hash tag), so the puts
    spread over the three shards, and the very next search must return the new item."""
    emb = HashingEmbeddings(DIMS)
    words = "lisbon porto cats dogs coffee tea music chess rain sun ocean bike".split()
    async with open_store(flavour, search_cluster_url, prefix=prefix, index=_index(emb)) as store:
        await call(store, "setup")
        missed: list[int] = []
        for i in range(N_PUTS):
            text = f"note {i} about {words[i % len(words)]} and {words[(i * 5 + 3) % len(words)]}"
            await call(store, "put", ("rw", f"user{i}"), f"k{i}", {"text": text})
            hits = await call(store, "search", ("rw",), query=text, limit=3)
            if not hits or (hits[0].key, tuple(hits[0].namespace)) != (f"k{i}", ("rw", f"user{i}")):
                missed.append(i)
        assert missed == [], f"{len(missed)}/{N_PUTS} searches missed the item just put: {missed}"


TRIALS = 4


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_search_right_after_index_creation_over_existing_data(
    flavour: str, search_cluster_url: str, prefix: str
) -> None:
    """Items written before the FT index exists (no setup, no search yet): the first
    search creates the index, waits for the backfill of every shard, and then answers
    as InMemoryStore does. Fresh prefixes, so every trial creates a new index."""
    failures: list[str] = []
    for trial in range(TRIALS):
        docs = _docs(60, seed=10 + trial)
        async with _loaded(flavour, search_cluster_url, f"{prefix}t{trial}", docs, setup=False) as (
            store,
            mem,
        ):
            query = QUERIES[trial % len(QUERIES)]
            ours = await call(store, "search", ("mem",), query=query, limit=10)
            theirs = mem.search(("mem",), query=query, limit=10)
            try:
                _same_ranking(ours, theirs)
            except AssertionError as exc:
                failures.append(f"trial {trial}: {exc}")
    assert failures == [], f"{len(failures)}/{TRIALS} trials differ: {failures}"


def test_cluster_without_coordinator_is_a_clear_error(search_cluster_url: str) -> None:
    """valkey-search loaded on each node without ``--use-coordinator``: FT.CREATE stays on
    one node, and setup says what to fix after its wait (~30 s) instead of failing later
    with "index not found" on some searches."""
    with EmbeddedCluster(3, search=os.environ["VALKEY_SEARCH_MODULE"]) as lone:
        emb = HashingEmbeddings(DIMS)
        with ValkeyStore.from_conn_string(lone.url, index=_index(emb)) as store:
            with pytest.raises(RuntimeError, match="--use-coordinator"):
                store.setup()
        # the semantic cache's explicit setup() says the same (lookups stay fail-open)
        from langgraph_valkey_cache import ValkeySemanticCache, client_from_url

        client = client_from_url(lone.url)
        cache = ValkeySemanticCache(client, emb, prefix="nocoord", dims=DIMS, metrics=False)
        with pytest.raises(RuntimeError, match="--use-coordinator"):
            cache.setup()
        client.close()
