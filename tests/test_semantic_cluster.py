"""ValkeySemanticCache on a 3-primary Valkey Cluster running valkey-search with its
coordinator (``search_cluster`` fixture), sync and async: setup, updates spread over the
shards, the same hits as a standalone valkey-search for the same paraphrases, a lookup
right after each update, and never an answer across models.

Runs in CI (``.ci/run``: a loopback-only network namespace); skipped, with the reason,
elsewhere (see ``search_cluster_unavailable`` in conftest). The standalone reference is
the real valkey-search too (``valkey_search_url``), so both sides use the same HNSW.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from langchain_core.outputs import Generation

from langgraph_valkey_cache import ValkeySemanticCache
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache.testing import HashingEmbeddings, count_commands

pytestmark = [pytest.mark.search_cluster, pytest.mark.cluster, pytest.mark.search]

DIMS = 256
# these tests are about answers, not faults: a budget no loaded CI machine exceeds, so a
# slow step cannot turn a hit into a fail-open miss
BUDGET = 5.0
THRESHOLD = 0.08
TOPICS = (
    "capital of {}", "population of {}", "national dish of {}", "official language of {}",
    "currency of {}", "highest mountain in {}",
)  # fmt: skip
PLACES = (
    "France", "Germany", "Spain", "Portugal", "Italy", "Japan", "Brazil", "Kenya", "Canada",
    "Peru",
)  # fmt: skip
STORED = [f"What is the {t.format(p)}?" for t in TOPICS for p in PLACES]  # 60 entries
# paraphrases (should hit their own entry), near neighbours (another place or topic)
# and unrelated prompts (should miss): the cluster must answer each exactly as standalone
PROBES = [
    *(f"what is the {t.format(p)} exactly?" for t in TOPICS[:3] for p in PLACES),
    *(f"Tell me the {t.format(p)}" for t in TOPICS[3:] for p in PLACES[:5]),
    "How do I bake bread?",
    "What is the capital of Atlantis?",
    "Who wrote Hamlet?",
]
MODELS = ("model-a", "model-b")


def _answer(model: str, prompt: str) -> list[Generation]:
    return [Generation(text=f"{model}: {prompt}")]


def _cache(client: Any, prefix: str, aclient: Any = None) -> ValkeySemanticCache:
    return ValkeySemanticCache(
        client,
        HashingEmbeddings(DIMS),
        async_client=aclient,
        prefix=prefix,
        distance_threshold=THRESHOLD,
        metrics=False,
        timeout=BUDGET,
    )


@pytest.fixture
def cluster_cache(search_cluster_url: str, prefix: str) -> Iterator[ValkeySemanticCache]:
    sync = client_from_url(search_cluster_url)
    c = _cache(sync, prefix)
    yield c
    c.clear()
    c.drop_index()
    sync.close()


@pytest.fixture
async def acluster_cache(
    search_cluster_url: str, prefix: str
) -> AsyncIterator[ValkeySemanticCache]:
    aclient = client_from_url(search_cluster_url, asyncio=True)
    c = _cache(aclient, prefix)
    yield c
    await c.aclear()
    await c.adrop_index()
    await aclient.aclose()


@pytest.fixture
def standalone_hits(valkey_search_url: str, prefix: str) -> Iterator[dict[str, list[Any]]]:
    """What a standalone valkey-search answers for every probe, per model."""
    sync = client_from_url(valkey_search_url)
    c = _cache(sync, prefix)
    c.setup()
    for model in MODELS:
        for prompt in STORED:
            c.update(prompt, model, _answer(model, prompt))
    yield {model: [c.lookup(p, model) for p in PROBES] for model in MODELS}
    c.clear()
    c.drop_index()
    sync.close()


def _check_same(ours: dict[str, list[Any]], standalone: dict[str, list[Any]]) -> None:
    hits = sum(g is not None for g in standalone[MODELS[0]])
    # the probe set is meaningful: most paraphrases hit, the unrelated prompts miss
    assert 30 <= hits < len(PROBES), hits
    for model in MODELS:
        differ = [
            (p, o, s)
            for p, o, s in zip(PROBES, ours[model], standalone[model], strict=True)
            if o != s
        ]
        assert differ == [], f"{len(differ)}/{len(PROBES)} lookups differ: {differ[:3]}"
        for got in ours[model]:  # never another model's answer
            assert got is None or got[0].text.startswith(f"{model}: ")


def test_sync_hits_equal_standalone(
    cluster_cache: ValkeySemanticCache, standalone_hits: dict[str, list[Any]]
) -> None:
    c = cluster_cache
    c.setup()
    c.setup()  # idempotent: the index exists on every node
    for model in MODELS:
        for prompt in STORED:
            c.update(prompt, model, _answer(model, prompt))
    ours = {model: [c.lookup(p, model) for p in PROBES] for model in MODELS}
    _check_same(ours, standalone_hits)
    # every search of a batch in one pipeline to one node (it fans out): the same answers
    with count_commands() as log:
        assert c.check_batch(PROBES, MODELS[0]) == ours[MODELS[0]]
    assert log.commands.count("FT.SEARCH") == len(PROBES)
    # the embeddings' cache reads (one per primary at most), then one for every search
    # (it was one round trip per search)
    assert log.round_trips <= 3 + 1, log
    assert c.nearest(STORED[0], MODELS[0]) == pytest.approx(0.0, abs=1e-5)


async def test_async_hits_equal_standalone(
    acluster_cache: ValkeySemanticCache, standalone_hits: dict[str, list[Any]]
) -> None:
    c = acluster_cache
    await c.asetup()
    await c.asetup()
    for model in MODELS:
        for prompt in STORED:
            await c.aupdate(prompt, model, _answer(model, prompt))
    ours = {model: [await c.alookup(p, model) for p in PROBES] for model in MODELS}
    _check_same(ours, standalone_hits)
    assert await c.acheck_batch(PROBES, MODELS[1]) == ours[MODELS[1]]


async def test_lookup_right_after_each_update(search_cluster_url: str, prefix: str) -> None:
    """Entries land on the shard of their key; the very next lookup (a fan-out from a
    random node) must find each one, sync and async, and not under the other model."""
    sync = client_from_url(search_cluster_url)
    aclient = client_from_url(search_cluster_url, asyncio=True)
    c = _cache(sync, prefix, aclient)
    await c.asetup()
    missed: list[str] = []
    for i, prompt in enumerate(STORED[:40]):
        model = MODELS[i % 2]
        if i % 4 < 2:
            c.update(prompt, model, _answer(model, prompt))
            got = c.lookup(prompt, model)
        else:
            await c.aupdate(prompt, model, _answer(model, prompt))
            got = await c.alookup(prompt, model)
        if got != _answer(model, prompt):
            missed.append(prompt)
        other = MODELS[(i + 1) % 2]
        crossed = c.lookup(prompt, other)  # another model: its own entries or nothing
        assert crossed is None or crossed[0].text.startswith(f"{other}: "), crossed
    assert missed == [], f"{len(missed)}/40 lookups missed the entry just written: {missed}"
    # spread over the shards: every primary holds some of the entries
    per_node = [
        int(node.valkey_connection.dbsize()) if node.valkey_connection else 0
        for node in sync.get_primaries()
    ]
    assert all(n > 0 for n in per_node), per_node
    c.clear()
    c.drop_index()
    sync.close()
    await aclient.aclose()


BULK = 600  # enough entries under one tag for HNSW to be approximate per shard


def _bulk() -> tuple[list[str], list[str]]:
    """``BULK`` random six-word prompts and 100 paraphrases (one word added) of them."""
    rng = random.Random(1)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(4, 9))) for _ in range(400)]
    stored = [" ".join(rng.sample(words, 6)) for _ in range(BULK)]
    return stored, [s + " " + rng.choice(words) for s in stored[:100]]


def _load(url: str, prefix: str, stored: list[str], **kw: Any) -> ValkeySemanticCache:
    c = ValkeySemanticCache(
        client_from_url(url),
        HashingEmbeddings(DIMS),
        async_client=client_from_url(url, asyncio=True),
        prefix=prefix,
        distance_threshold=0.3,
        metrics=False,
        timeout=BUDGET,
        **kw,
    )
    c.setup()
    for p in stored:
        c.update(p, "m", _answer("m", p))
    return c


@pytest.mark.parametrize("algorithm", ["HNSW", "FLAT"])
async def test_large_index_hits_equal_standalone(
    search_cluster_url: str, valkey_search_url: str, prefix: str, algorithm: str
) -> None:
    """600 entries under one model: without an explicit EF_RUNTIME each shard of the
    fan-out searched HNSW with ef = K and 5 of these 100 paraphrases missed on the
    cluster (measured while writing this test); with it, sync and async lookups on the
    cluster equal standalone's, for HNSW and FLAT."""
    stored, probes = _bulk()
    caches = [
        _load(url, f"{prefix}{i}", stored, algorithm=algorithm)
        for i, url in enumerate((valkey_search_url, search_cluster_url))
    ]
    standalone, cluster = caches
    want = [standalone.lookup(p, "m") for p in probes]
    assert sum(g is not None for g in want) >= 95
    assert [cluster.lookup(p, "m") for p in probes] == want
    assert [await cluster.alookup(p, "m") for p in probes] == want
    assert [cluster.lookup(p, "other-model") for p in probes[:10]] == [None] * 10
    for c in caches:
        c.clear()
        c.drop_index()
        c.client.close()
        await c.aclient.aclose()
