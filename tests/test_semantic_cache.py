"""ValkeySemanticCache on a server answering FT.*: langchain-tests suites, paraphrase hits,
the llm_string/context TAG prefilter, threshold semantics (sync == async), round trips,
judge/rerank band, threshold_effectiveness, check_batch, fail-open, module missing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, closing
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import Generation
from langchain_tests.integration_tests.cache import AsyncCacheTestSuite, SyncCacheTestSuite

from langgraph_valkey_cache import ValkeySemanticCache
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache._search import SearchModuleMissing
from langgraph_valkey_cache.cache.semantic import split_prompt
from langgraph_valkey_cache.testing import HashingEmbeddings, count_commands

pytestmark = pytest.mark.search

Q = "What is the capital of France?"
PARAPHRASE = "what is the capital city of France?"  # distance ~0.04 with 256 hashing dims
OTHER = "What is the capital of Germany?"  # ~0.12
THRESHOLD = 0.08


@pytest.fixture
def sclient(search_url: str) -> Iterator[Any]:
    with closing(client_from_url(search_url)) as client:
        yield client


@pytest.fixture
async def aclient(search_url: str) -> AsyncIterator[Any]:
    async with aclosing(client_from_url(search_url, asyncio=True)) as client:
        yield client


@pytest.fixture
def emb() -> HashingEmbeddings:
    return HashingEmbeddings(256)


def _cache(client: Any, emb: Any, prefix: str, **kw: Any) -> ValkeySemanticCache:
    kw.setdefault("distance_threshold", THRESHOLD)
    return ValkeySemanticCache(client, emb, prefix=prefix, metrics=False, **kw)


@pytest.fixture
def cache(sclient: Any, emb: HashingEmbeddings, prefix: str) -> Iterator[ValkeySemanticCache]:
    c = _cache(sclient, emb, prefix)
    c.setup()
    yield c
    c.clear()
    c.drop_index()


class TestSemanticSync(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, sclient: Any, prefix: str) -> Iterator[ValkeySemanticCache]:
        c = _cache(sclient, HashingEmbeddings(64), prefix)
        c.setup()
        yield c
        c.drop_index()


class TestSemanticAsync(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(
        self, sclient: Any, aclient: Any, prefix: str
    ) -> AsyncIterator[ValkeySemanticCache]:
        c = _cache(aclient, HashingEmbeddings(64), prefix)
        await c.asetup()
        yield c
        await c.aclear()
        sclient.execute_command("FT.DROPINDEX", c.keys.index())


def test_setup_is_idempotent_and_paraphrase_hits(cache: ValkeySemanticCache) -> None:
    cache.setup()
    cache.update(Q, "llm", [Generation(text="Paris")])
    assert cache.lookup(PARAPHRASE, "llm") == [Generation(text="Paris")]
    assert cache.lookup(OTHER, "llm") is None
    assert cache.lookup("How do I bake bread?", "llm") is None


def test_setup_without_module_names_valkey_search(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    c = _cache(client, HashingEmbeddings(8), prefix)
    with pytest.raises(SearchModuleMissing, match="valkey-search"):
        c.setup()
    client.close()


class _ModelA(FakeMessagesListChatModel):
    @property
    def _llm_type(self) -> str:
        return "model-a"


class _ModelB(FakeMessagesListChatModel):
    @property
    def _llm_type(self) -> str:
        return "model-b"


def test_prefilter_models_params_tools_system_prompt(cache: ValkeySemanticCache) -> None:
    usage = {"input_tokens": 5, "output_tokens": 1, "total_tokens": 6}
    fresh = [AIMessage(f"fresh{i}") for i in range(5)]
    a = _ModelA(responses=[AIMessage("Paris", usage_metadata=usage), *fresh], cache=cache)
    assert a.invoke([HumanMessage(Q)]).content == "Paris"
    # a paraphrase to the same model and parameters: served from the cache
    hit = a.invoke([HumanMessage(PARAPHRASE)])
    assert hit.content == "Paris" and a.i == 1
    assert hit.usage_metadata is not None and hit.usage_metadata["total_tokens"] == 6
    # the same question to another model: a miss
    b = _ModelB(responses=[AIMessage("from b")], cache=cache)
    assert b.invoke([HumanMessage(Q)]).content == "from b"
    # another temperature, other bound tools, a system prompt: each calls the model
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    assert a.bind(temperature=0.9).invoke([HumanMessage(Q)]).content == "fresh0"
    assert a.bind(tools=[tool]).invoke([HumanMessage(Q)]).content == "fresh1"
    with_system = [SystemMessage("Answer in French."), HumanMessage(Q)]
    assert a.invoke(with_system).content == "fresh2"
    assert a.i == 4
    # and each of those is now cached in its own partition
    assert a.bind(temperature=0.9).invoke([HumanMessage(PARAPHRASE)]).content == "fresh0"
    assert a.invoke(with_system).content == "fresh2"
    assert a.i == 4


def test_context_before_and_after_the_user_turn(cache: ValkeySemanticCache) -> None:
    llm = "llm"
    first = [HumanMessage("hi"), AIMessage("hello"), HumanMessage(Q)]
    cache.update(dumps(first), llm, [Generation(text="Paris")])
    # same last turn, same history: hit (paraphrased)
    same = [HumanMessage("hi"), AIMessage("hello"), HumanMessage(PARAPHRASE)]
    assert cache.lookup(dumps(same), llm) == [Generation(text="Paris")]
    # a different earlier turn: miss
    other = [HumanMessage("hey"), AIMessage("hello"), HumanMessage(Q)]
    assert cache.lookup(dumps(other), llm) is None
    # an agent's follow-up after a tool result must not get the first call's answer
    follow = [
        *first,
        AIMessage("", tool_calls=[{"name": "geo", "args": {}, "id": "c1"}]),
        ToolMessage("Paris", tool_call_id="c1"),
    ]
    assert cache.lookup(dumps(follow), llm) is None


def test_split_prompt() -> None:
    text, ctx = split_prompt(dumps([SystemMessage("s"), HumanMessage("q1")]))
    assert text == "q1" and '"s"' in ctx
    blocks = HumanMessage(content=[{"type": "text", "text": "look"}, {"type": "image", "url": "u"}])
    text, ctx = split_prompt(dumps([blocks]))
    assert text == "look" and '"u"' in ctx
    assert split_prompt("plain text") == ("plain text", "")
    assert split_prompt(dumps([HumanMessage("a")]), "prompt")[1] == ""


async def test_sync_and_async_agree(
    sclient: Any, aclient: Any, emb: HashingEmbeddings, prefix: str
) -> None:
    s = _cache(sclient, emb, prefix)
    a = _cache(aclient, emb, prefix)
    s.setup()
    s.update(Q, "llm", [Generation(text="Paris")])
    for q in (Q, PARAPHRASE, OTHER, "What is the population of France?"):
        ds = s.nearest(q, "llm")
        da = await a.anearest(q, "llm")
        assert ds == da
        assert (s.lookup(q, "llm") is None) == (await a.alookup(q, "llm") is None)
        for t in (0.0, 0.05, 0.1, 0.2):
            assert (s.lookup(q, "llm", distance_threshold=t) is None) == (
                await a.alookup(q, "llm", distance_threshold=t) is None
            )
            assert ds is not None
            assert (s.lookup(q, "llm", distance_threshold=t) is not None) == (ds <= t)
    s.drop_index()


def test_hit_costs_one_round_trip_plus_cached_embedding(
    search_url: str, emb: HashingEmbeddings, prefix: str
) -> None:
    client = client_from_url(search_url)
    c = _cache(client, emb, prefix, stats_flush_interval=60)
    c.setup()
    c.update(Q, "llm", [Generation(text="Paris")])
    assert c.lookup(PARAPHRASE, "llm") is not None  # embeds PARAPHRASE once, caches it
    embedded = emb.texts_embedded
    with count_commands() as log:
        assert c.lookup(PARAPHRASE, "llm") is not None
    assert emb.texts_embedded == embedded, "the repeated text was not re-embedded"
    assert log.round_trips == 2  # MGET of the cached vector + one FT.SEARCH
    # without the embedding cache: exactly one round trip (FT.SEARCH)
    plain = _cache(client, emb, prefix, cache_embeddings=False, stats_flush_interval=60)
    plain.setup()
    plain.lookup(Q, "llm")
    with count_commands() as log:
        assert plain.lookup(Q, "llm") is not None
    assert log.round_trips == 1
    c.drop_index()
    client.close()


def test_thresholds_per_call_context_and_category(sclient: Any, prefix: str) -> None:
    emb = HashingEmbeddings(256)
    c = _cache(
        sclient,
        emb,
        prefix,
        category_thresholds={"geo": 0.2},
        categorize=lambda text: "geo" if "capital" in text.lower() else None,
    )
    c.setup()
    c.update(Q, "llm", [Generation(text="Paris")])
    assert c.lookup(OTHER, "llm") is not None  # category threshold 0.2 > 0.12
    assert c.lookup(OTHER, "llm", distance_threshold=0.05) is None
    with c.threshold(0.01):
        assert c.lookup(PARAPHRASE, "llm") is None
    assert c.lookup(PARAPHRASE, "llm") is not None
    c.drop_index()


def test_judge_band(sclient: Any, emb: HashingEmbeddings, prefix: str) -> None:
    seen: list[tuple[str, str]] = []

    def judge(prompt: str, candidate: str) -> bool:
        seen.append((prompt, candidate))
        return "Germany" not in prompt

    c = _cache(sclient, emb, prefix, distance_threshold=0.01, judge=judge, band=0.2)
    c.setup()
    c.update(Q, "llm", [Generation(text="Paris")])
    assert c.lookup(Q, "llm") is not None and not seen  # direct hit: no judge call
    assert c.lookup(PARAPHRASE, "llm") == [Generation(text="Paris")]
    assert seen[-1] == (PARAPHRASE, Q)
    assert c.lookup(OTHER, "llm") is None
    assert c.lookup("How do I bake bread?", "llm") is None  # outside the band: no call
    assert len(seen) == 2
    c.drop_index()


async def test_judge_async_timeout_and_error_policy(
    sclient: Any, aclient: Any, emb: HashingEmbeddings, prefix: str
) -> None:
    async def slow(prompt: str, candidate: str) -> bool:
        await asyncio.sleep(1)
        return True

    async def yes(prompt: str, candidate: str) -> bool:
        return True

    def boom(prompt: str, candidate: str) -> bool:
        raise RuntimeError("judge down")

    base = _cache(sclient, emb, prefix)
    base.setup()
    base.update(Q, "llm", [Generation(text="Paris")])
    kw = {"distance_threshold": 0.01, "band": 0.2, "judge_timeout": 0.2}
    assert await _cache(aclient, emb, prefix, judge=yes, **kw).alookup(PARAPHRASE, "llm")
    # an async judge from the sync API
    assert _cache(sclient, emb, prefix, judge=yes, **kw).lookup(PARAPHRASE, "llm")
    start = time.perf_counter()
    assert await _cache(aclient, emb, prefix, judge=slow, **kw).alookup(PARAPHRASE, "llm") is None
    assert time.perf_counter() - start < 0.9
    assert _cache(sclient, emb, prefix, judge=slow, **kw).lookup(PARAPHRASE, "llm") is None
    assert _cache(sclient, emb, prefix, judge=boom, **kw).lookup(PARAPHRASE, "llm") is None
    lenient = _cache(aclient, emb, prefix, judge=boom, on_judge_error="hit", **kw)
    assert await lenient.alookup(PARAPHRASE, "llm") == [Generation(text="Paris")]
    base.drop_index()


def test_rerank_picks_among_candidates(sclient: Any, emb: HashingEmbeddings, prefix: str) -> None:
    c = _cache(
        sclient,
        emb,
        prefix,
        distance_threshold=0.0,
        band=0.3,
        rerank=lambda prompt, cands: next((i for i, t in enumerate(cands) if "Germany" in t), None),
        rerank_k=3,
    )
    c.setup()
    c.update(Q, "llm", [Generation(text="Paris")])
    c.update(OTHER, "llm", [Generation(text="Berlin")])
    assert c.lookup("What is the capital of Germany, please?", "llm") == [Generation(text="Berlin")]
    c.drop_index()


def test_threshold_effectiveness(sclient: Any, emb: HashingEmbeddings, prefix: str) -> None:
    c = _cache(sclient, emb, prefix, distance_threshold=0.03)
    c.setup()
    assert c.threshold_effectiveness()["recommendation"] == "keep"  # too few lookups
    c.update(Q, "llm", [Generation(text="Paris")])
    for _ in range(12):
        c.lookup(PARAPHRASE, "llm")  # ~0.04: just above 0.03, near misses
        c.lookup("What is the capital of France, please?", "llm")  # ~0.05
    report = c.threshold_effectiveness()
    assert report["lookups"] == 24
    assert report["recommendation"] == "loosen"
    assert report["suggested_threshold"] > 0.03
    assert report["reasons"]
    # with a judge that accepts the band, the recommendation cites the judge
    judged = _cache(
        sclient, emb, prefix, distance_threshold=0.03, judge=lambda p, c: True, band=0.1
    )
    judged.setup()
    for _ in range(20):
        judged.lookup(PARAPHRASE, "llm")
    report = judged.threshold_effectiveness()
    assert report["judge_accept_rate"] == 1.0 and report["recommendation"] == "loosen"
    assert "judge" in report["reasons"][0]
    c.drop_index()


def test_suggested_threshold_includes_the_distance_that_motivated_it(
    sclient: Any, emb: HashingEmbeddings, prefix: str
) -> None:
    """A suggestion is rounded to 4 decimals, upwards when it loosens: applying it must
    turn the observed near miss (~0.040834) into a hit, not stop at 0.0408."""
    c = _cache(sclient, emb, prefix, distance_threshold=0.03)
    c.setup()
    c.update(Q, "llm", [Generation(text="Paris")])
    distance = c.nearest(PARAPHRASE, "llm")
    assert distance is not None and round(distance, 4) < distance  # rounding matters
    for _ in range(20):
        assert c.lookup(PARAPHRASE, "llm") is None  # near misses
    report = c.threshold_effectiveness()
    assert report["recommendation"] == "loosen"
    suggested = report["suggested_threshold"]
    assert distance <= suggested <= distance + 0.0001
    assert _cache(sclient, emb, prefix, distance_threshold=suggested).lookup(PARAPHRASE, "llm")
    # the judge's suggestion (the farthest accepted band candidate) rounds up too
    judged = _cache(
        sclient, emb, prefix, distance_threshold=0.03, judge=lambda p, c: True, band=0.1
    )
    for _ in range(20):
        assert judged.lookup(PARAPHRASE, "llm") is not None
    report = judged.threshold_effectiveness()
    assert report["recommendation"] == "loosen"
    assert distance <= report["suggested_threshold"] <= distance + 0.0001
    c.drop_index()


def test_edge_hits_use_the_threshold_each_lookup_used(
    sclient: Any, emb: HashingEmbeddings, prefix: str
) -> None:
    """Hits made under ``with cache.threshold(0.5)`` sit far inside *their* threshold:
    they are not "edge hits" of the instance default (0.045, where ~0.0408 would be)."""
    c = _cache(sclient, emb, prefix, distance_threshold=0.045)
    c.setup()
    c.update(Q, "llm", [Generation(text="Paris")])
    with c.threshold(0.5):
        for _ in range(20):
            assert c.lookup(PARAPHRASE, "llm") is not None
    report = c.threshold_effectiveness()
    assert report["edge_hit_rate"] == 0.0
    assert report["recommendation"] == "keep"
    # per category, likewise: the "geo" threshold 0.5 is the one these hits used
    by_category = _cache(
        sclient,
        emb,
        prefix,
        distance_threshold=0.045,
        category_thresholds={"geo": 0.5},
        categorize=lambda text: "geo",
    )
    for _ in range(20):
        assert by_category.lookup(PARAPHRASE, "llm") is not None
    assert by_category.threshold_effectiveness()["recommendation"] == "keep"
    # the same hits under the default threshold are at its edge: tighten
    edge = _cache(sclient, emb, prefix, distance_threshold=0.045)
    for _ in range(20):
        assert edge.lookup(PARAPHRASE, "llm") is not None
    report = edge.threshold_effectiveness()
    assert report["edge_hit_rate"] == 1.0 and report["recommendation"] == "tighten"
    assert report["suggested_threshold"] == 0.036
    c.drop_index()


def test_dead_server_is_skipped_without_embedding(
    dead_url: str, emb: HashingEmbeddings, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After one failure the server's breaker skips the server and the embedding model:
    a lookup of a dead cache costs nothing until the cooldown ends, then one probe."""
    import logging

    client = client_from_url(dead_url, timeout=0.2)
    c = _cache(client, emb, prefix, dims=256)
    caplog.set_level(logging.WARNING, "langgraph_valkey_cache")
    assert c.lookup(Q, "llm") is None  # setup fails: one warning, breaker open
    embedded = emb.texts_embedded
    with count_commands() as log:
        for _ in range(10):
            assert c.lookup(Q, "llm") is None
            c.update(Q, "llm", [Generation(text="Paris")])
    assert log.round_trips == 0 and log.handshakes == 0
    assert emb.texts_embedded == embedded
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    time.sleep(c.breaker.first_cooldown + 0.05)
    assert c.lookup(Q, "llm") is None  # the breaker's probe after the cooldown
    assert emb.texts_embedded == embedded  # the probe failed: still nothing embedded
    # one warning per outage, not per probe
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    client.close()


async def test_stalled_server_shared_breaker_with_embedding_cache(
    search_url: str, emb: HashingEmbeddings, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The embedding cache's timeout opens the semantic cache's breaker too: a stalled
    server costs one timeout, not one for the vector read plus one for FT.SEARCH."""
    import logging
    import os
    import signal

    from langgraph_valkey_cache.embedded import EmbeddedValkey

    server = EmbeddedValkey(search=True).start()
    client = client_from_url(server.url, timeout=0.3, asyncio=True)
    c = _cache(client, emb, prefix)
    await c.asetup()
    await c.aupdate(Q, "llm", [Generation(text="Paris")])
    pid = server._proc.pid  # type: ignore[union-attr]
    os.kill(pid, signal.SIGSTOP)
    try:
        caplog.set_level(logging.WARNING, "langgraph_valkey_cache")
        t0 = time.monotonic()
        assert await c.alookup(PARAPHRASE, "llm") is None
        first = time.monotonic() - t0
        with count_commands() as log:
            for _ in range(5):
                assert await c.alookup(PARAPHRASE, "llm") is None
    finally:
        os.kill(pid, signal.SIGCONT)
    assert first < 3 and log.round_trips == 0, (first, log)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert "embedding_cache" in caplog.text  # the vector read timed out first
    # no reset: the breaker's probe finds the server back and caching resumes
    deadline = time.monotonic() + 2
    while await c.alookup(PARAPHRASE, "llm") is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await c.alookup(PARAPHRASE, "llm") == [Generation(text="Paris")]
    assert c.breaker.closed
    await client.aclose()
    server.stop()


async def test_check_batch_pipelined(
    sclient: Any, aclient: Any, emb: HashingEmbeddings, prefix: str
) -> None:
    c = _cache(sclient, emb, prefix, stats_flush_interval=60)
    c.setup()
    c.update(Q, "llm", [Generation(text="Paris")])
    c.update("How do I bake bread?", "llm", [Generation(text="Knead")])
    prompts = [PARAPHRASE, "how do I bake bread", "unrelated question entirely"]
    c.check_batch(prompts, "llm")  # warm the embedding cache
    with count_commands() as log:
        got = c.check_batch(prompts, "llm")
    assert got == [[Generation(text="Paris")], [Generation(text="Knead")], None]
    assert log.round_trips == 2  # one MGET of the vectors, one pipeline of FT.SEARCH
    a = _cache(aclient, emb, prefix)
    assert await a.acheck_batch(prompts, "llm") == got
    c.drop_index()


def test_clear_and_invalidate_model(cache: ValkeySemanticCache) -> None:
    cache.update(Q, "m1", [Generation(text="a")])
    cache.update(Q, "m2", [Generation(text="b")])
    cache.clear(llm_string="m1")
    assert cache.lookup(Q, "m1") is None
    assert cache.lookup(Q, "m2") == [Generation(text="b")]
    cache.clear()
    assert cache.lookup(Q, "m2") is None


def test_ttl(cache: ValkeySemanticCache, sclient: Any, emb: Any, prefix: str) -> None:
    c = _cache(sclient, emb, prefix + "t", ttl=0.3)
    c.setup()
    c.update(Q, "llm", [Generation(text="Paris")])
    assert c.lookup(Q, "llm") is not None
    time.sleep(0.5)
    assert c.lookup(Q, "llm") is None
    c.drop_index()


def test_fail_open(
    dead_url: str, emb: HashingEmbeddings, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_from_url(dead_url, timeout=0.2)
    c = _cache(client, emb, prefix, dims=256)
    model = FakeMessagesListChatModel(responses=[AIMessage("fresh")], cache=c)
    assert model.invoke(Q).content == "fresh"
    assert "failed" in caplog.text
    client.close()


def test_existing_index_with_other_dims_is_refused(sclient: Any, prefix: str) -> None:
    _cache(sclient, HashingEmbeddings(32), prefix).setup()
    with pytest.raises(ValueError, match="32-dimensional"):
        _cache(sclient, HashingEmbeddings(48), prefix).setup()
    _cache(sclient, HashingEmbeddings(32), prefix).setup()  # same dims: fine
    sclient.execute_command("FT.DROPINDEX", f"{prefix}:idx")


@pytest.mark.parametrize("protocol", [2, 3])
async def test_resp2_and_resp3_replies(search_url: str, prefix: str, protocol: int) -> None:
    sync = client_from_url(search_url, protocol=protocol)
    aclient = client_from_url(search_url, asyncio=True, protocol=protocol)
    emb = HashingEmbeddings(256)
    c = ValkeySemanticCache(
        sync, emb, async_client=aclient, prefix=prefix, distance_threshold=THRESHOLD, metrics=False
    )
    c.setup()
    c.setup()  # the exists path reads FT.INFO in this protocol
    c.update(Q, "llm", [Generation(text="Paris")])
    assert c.lookup(PARAPHRASE, "llm") == [Generation(text="Paris")]
    assert await c.alookup(PARAPHRASE, "llm") == [Generation(text="Paris")]
    assert c.check_batch([PARAPHRASE, OTHER], "llm") == [[Generation(text="Paris")], None]
    assert c.nearest(PARAPHRASE, "llm") == await c.anearest(PARAPHRASE, "llm")
    c.drop_index()
    sync.close()
    await aclient.aclose()


def test_image_only_turn_embeds_the_prompt() -> None:
    only_image = HumanMessage(content=[{"type": "image", "url": "https://x/y.png"}])
    prompt = dumps([only_image])
    assert split_prompt(prompt) == (prompt, "")


def test_lazy_setup_and_recovery_after_index_drop(
    sclient: Any, emb: HashingEmbeddings, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    from langchain_core.globals import set_llm_cache

    c = _cache(sclient, emb, prefix)  # no setup(): the first call creates the index
    set_llm_cache(c)
    try:
        model = FakeMessagesListChatModel(responses=[AIMessage("Paris"), AIMessage("again")])
        assert model.invoke(Q).content == "Paris"
        assert model.invoke(PARAPHRASE).content == "Paris"
        sclient.execute_command("FT.DROPINDEX", f"{prefix}:idx")
        assert c.lookup(Q, "llm") is None  # fails open, logs, forgets the index
        assert "lookup failed" in caplog.text
        c.update(Q, "llm", [Generation(text="back")])  # recreates it (docs are re-indexed)
        assert c.lookup(Q, "llm") == [Generation(text="back")]
    finally:
        set_llm_cache(None)
        c.clear()
        c.drop_index()


async def test_no_search_module_lookups_fail_open_with_one_loud_log(
    valkey_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server without valkey-search: model calls go through (sync and async), every
    lookup is a miss and every update a no-op, logged loudly once and counted under the
    reason ``no_search_module`` in stats()."""
    import logging

    sync = client_from_url(valkey_url)
    aclient = client_from_url(valkey_url, asyncio=True)
    c = ValkeySemanticCache(
        sync, HashingEmbeddings(8), async_client=aclient, prefix=prefix, metrics=False, dims=8
    )
    caplog.set_level(logging.ERROR, "langgraph_valkey_cache")
    model = FakeMessagesListChatModel(responses=[AIMessage("one"), AIMessage("two")], cache=c)
    assert model.invoke(Q).content == "one"
    assert (await model.ainvoke(Q)).content == "two"
    first = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    for _ in range(3):
        assert c.lookup(Q, "llm") is None
        assert await c.alookup(Q, "llm") is None
        c.update(Q, "llm", [Generation(text="x")])
        await c.aupdate(Q, "llm", [Generation(text="x")])
        assert c.check_batch([Q, OTHER], "llm") == [None, None]
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert first and all("no_search_module" in m for m in loud), loud
    # once per reason (and client), whatever the operation or how many calls
    assert len(loud) == len(first) <= 2, loud
    stats = c.stats()
    assert stats.misses == 2 + 3 * 4 and stats.hits == 0
    assert stats.errors_by_reason.get("no_search_module") == stats.errors > 0
    with pytest.raises(SearchModuleMissing):
        await c.asetup()
    with pytest.raises(SearchModuleMissing):  # diagnostics raise, naming what is missing
        c.nearest(Q, "llm")
    with pytest.raises(SearchModuleMissing):
        await c.anearest(Q, "llm")
    sync.close()
    await aclient.aclose()


async def test_cluster_client_without_search_fails_open(cluster_url: str, prefix: str) -> None:
    """Issue 8: on a cluster client, update() raised ("transaction is deprecated in
    cluster mode") and the async FT commands raised "Missing key": now every operation
    is routed, and a cluster without valkey-search is a plain miss."""
    sync = client_from_url(cluster_url)
    aclient = client_from_url(cluster_url, asyncio=True)
    c = ValkeySemanticCache(
        sync, HashingEmbeddings(8), async_client=aclient, prefix=prefix, metrics=False, dims=8
    )
    c.update(Q, "llm", [Generation(text="Paris")])
    await c.aupdate(Q, "llm", [Generation(text="Paris")])
    assert c.lookup(Q, "llm") is None and await c.alookup(Q, "llm") is None
    assert await c.acheck_batch([Q, OTHER], "llm") == [None, None]
    with pytest.raises(SearchModuleMissing):
        c.setup()
    c.clear()
    await c.aclear()
    sync.close()
    await aclient.aclose()


def test_threshold_effectiveness_without_hits_says_so(
    sclient: Any, emb: HashingEmbeddings, prefix: str
) -> None:
    """Only near misses: the report must not claim that hits "sit well inside" the
    threshold (there are none), and has no edge-hit rate to give."""
    c = _cache(sclient, emb, prefix, distance_threshold=0.03)
    c.setup()
    c.update(Q, "llm", [Generation(text="Paris")])
    for _ in range(20):
        assert c.lookup(PARAPHRASE, "llm") is None  # ~0.04: a near miss
    report = c.threshold_effectiveness()
    assert report["hit_rate"] == 0.0 and report["edge_hit_rate"] is None
    assert report["recommendation"] == "loosen"
    text = " ".join(report["reasons"])
    assert "well inside" not in text and "no lookup hit" in text
    # nothing near either: keep, and say there is nothing to judge by
    far = _cache(sclient, emb, prefix, distance_threshold=0.03)
    for _ in range(20):
        assert far.lookup("How do I bake bread?", "llm") is None
    report = far.threshold_effectiveness()
    assert report["recommendation"] == "keep"
    assert "hits sit" not in " ".join(report["reasons"])
    c.drop_index()


async def test_judge_timeout_warning_says_what_happened(
    sclient: Any,
    aclient: Any,
    emb: HashingEmbeddings,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A judge timeout used to log "judge failed (TimeoutError): " and nothing else."""
    import logging

    async def slow(prompt: str, candidate: str) -> bool:
        await asyncio.sleep(1)
        return True

    def blocking(prompt: str, candidate: str) -> bool:
        time.sleep(1)
        return True

    base = _cache(sclient, emb, prefix)
    base.setup()
    base.update(Q, "llm", [Generation(text="Paris")])
    kw: dict[str, Any] = {"distance_threshold": 0.01, "band": 0.2, "judge_timeout": 0.2}
    caplog.set_level(logging.WARNING, "langgraph_valkey_cache")
    for client, judge in (
        (aclient, slow),
        (sclient, slow),
        (aclient, blocking),
        (sclient, blocking),
    ):
        caplog.clear()
        c = _cache(client, emb, prefix, judge=judge, **kw)
        start = time.perf_counter()
        if client is aclient:
            assert await c.alookup(PARAPHRASE, "llm") is None
        else:
            assert c.lookup(PARAPHRASE, "llm") is None
        assert time.perf_counter() - start < 0.9
        (record,) = [r for r in caplog.records if "judge" in r.getMessage()]
        assert "timed out after 0.2s" in record.getMessage()
        assert "treated as a miss" in record.getMessage()
    base.drop_index()


def test_hnsw_searches_send_ef_runtime(sclient: Any, prefix: str) -> None:
    """EF_RUNTIME is always explicit for HNSW (a cluster fan-out would otherwise search
    each shard with ef = K) and never sent for FLAT, which rejects it."""
    emb = HashingEmbeddings(8)
    for algorithm, kw, expected in (
        ("HNSW", {}, " EF_RUNTIME 100 "),
        ("HNSW", {"ef_runtime": 40}, " EF_RUNTIME 40 "),
        ("FLAT", {}, None),
    ):
        c = _cache(sclient, emb, f"{prefix}{algorithm}{len(kw)}", algorithm=algorithm, dims=8, **kw)
        query = " ".join(str(a) for a in c._search_args(c.prepare(Q, "llm"), [1.0] * 8))
        if expected is None:
            assert "EF_RUNTIME" not in query
        else:
            assert expected in query
        c.setup()  # the server takes the query either way
        c.update(Q, "llm", [Generation(text="Paris")])
        assert c.lookup(Q, "llm") == [Generation(text="Paris")]
        c.drop_index()


async def test_one_client_serves_both_apis(search_url: str, prefix: str) -> None:
    """A sync client only: the async methods run its steps in a worker thread. An async
    client only: the sync methods say how to fix it."""
    sync = client_from_url(search_url)
    c = _cache(sync, HashingEmbeddings(64), prefix)
    await c.asetup()
    await c.aupdate(Q, "llm", [Generation(text="Paris")])
    assert await c.alookup(PARAPHRASE, "llm") == [Generation(text="Paris")]
    assert c.lookup(PARAPHRASE, "llm") == [Generation(text="Paris")]
    aclient = client_from_url(search_url, asyncio=True)
    only_async = _cache(aclient, HashingEmbeddings(64), prefix)
    with pytest.raises(TypeError, match="async"):
        only_async.lookup(Q, "llm")
    assert await only_async.alookup(PARAPHRASE, "llm") == [Generation(text="Paris")]
    await only_async.aclear()
    await only_async.adrop_index()
    sync.close()
    await aclient.aclose()


# -- issue 12: embedder identity, scopes, cache_control, agent replays --------------------


def test_another_embedder_never_compares_old_vectors(sclient: Any, prefix: str) -> None:
    """Same dimensions, another model (seed) or id: the old entries are never candidates,
    even for the identical prompt (distance 0 with the old model)."""
    first = _cache(sclient, HashingEmbeddings(256, seed=0), prefix)
    first.setup()
    first.update(Q, "llm", [Generation(text="Paris")])
    assert first.lookup(Q, "llm") == [Generation(text="Paris")]
    other_model = _cache(sclient, HashingEmbeddings(256, seed=1), prefix)
    other_model.setup()
    assert other_model.nearest(Q, "llm") is None, "no vector of the old model is compared"
    assert other_model.lookup(Q, "llm") is None
    named = _cache(sclient, HashingEmbeddings(256, seed=0), prefix, embeddings_namespace="m2")
    assert named.lookup(Q, "llm") is None
    same = _cache(sclient, HashingEmbeddings(256, seed=0), prefix)
    assert same.lookup(Q, "llm") == [Generation(text="Paris")], "the same model still hits"
    assert first.embedder_id != other_model.embedder_id
    # the dimensions: another size on this index is refused at setup, never compared
    with pytest.raises(ValueError, match="dimensional"):
        _cache(sclient, HashingEmbeddings(128, seed=0), prefix).setup()
    first.drop_index()


def test_semantic_scope(sclient: Any, emb: HashingEmbeddings, prefix: str) -> None:
    from langgraph_valkey_cache.cache.llm import cache_config

    c = _cache(sclient, emb, prefix, scope=("user_id",))
    c.setup()
    with cache_config({"configurable": {"user_id": "a"}}):
        c.update(Q, "llm", [Generation(text="for a")])
        assert c.lookup(PARAPHRASE, "llm") == [Generation(text="for a")]
    with cache_config({"configurable": {"user_id": "b"}}):
        assert c.lookup(Q, "llm") is None, "never an answer across scopes"
        c.update(Q, "llm", [Generation(text="for b")])
        assert c.lookup(Q, "llm") == [Generation(text="for b")]
    calls = emb.calls
    assert c.lookup(Q, "llm") is None  # no user_id: bypassed, nothing embedded
    c.update(Q, "llm", [Generation(text="nobody")])
    assert emb.calls == calls
    with cache_config({"configurable": {"user_id": "a"}}):
        assert c.lookup(Q, "llm") == [Generation(text="for a")]
    assert len(sclient.keys(f"{prefix}:s:*")) == 2
    c.drop_index()


async def test_semantic_cache_control(aclient: Any, emb: HashingEmbeddings, prefix: str) -> None:
    from langgraph_valkey_cache.cache.llm import cache_config

    c = _cache(aclient, emb, prefix)
    await c.asetup()

    def control(**kw: Any) -> Any:
        return cache_config({"configurable": {"cache_control": kw}})

    with control(skip=True):
        await c.aupdate(Q, "llm", [Generation(text="skipped")])
    assert await c.alookup(Q, "llm") is None
    with control(ttl=15):
        await c.aupdate(Q, "llm", [Generation(text="one")])
    (key,) = await aclient.keys(f"{prefix}:s:*")
    assert 0 < await aclient.pttl(key) <= 15_000
    with control(refresh=True):
        assert await c.alookup(Q, "llm") is None, "refresh: no read"
        await c.aupdate(Q, "llm", [Generation(text="two")])
    assert await c.alookup(Q, "llm") == [Generation(text="two")]
    assert await aclient.pttl(key) == -1, "the refreshed entry has the cache's TTL (none)"
    await c.adrop_index()


def test_semantic_agent_replay_context(sclient: Any, emb: HashingEmbeddings, prefix: str) -> None:
    """The TAG's context is projected like exact keys: the follow-up prompt of a replay
    (earlier answer now with other ids, usage and metadata) finds its entry."""
    c = _cache(sclient, emb, prefix)
    c.setup()
    call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "c0"}
    live = AIMessage("Checking.", tool_calls=[call], id="run-1",
                     usage_metadata={"input_tokens": 3, "output_tokens": 1, "total_tokens": 4},
                     response_metadata={"model_name": "x"})  # fmt: skip
    replayed = live.model_copy(
        update={"id": "run-2", "usage_metadata": {**live.usage_metadata, "total_cost": 0}}  # type: ignore[dict-item]
    )
    tool = ToolMessage("sunny", tool_call_id="c0")
    c.update(dumps([HumanMessage(Q), live, tool]), "llm", [Generation(text="It is sunny.")])
    assert c.lookup(dumps([HumanMessage(Q), replayed, tool]), "llm") == [
        Generation(text="It is sunny.")
    ]
    other = ToolMessage("rain", tool_call_id="c0")
    assert c.lookup(dumps([HumanMessage(Q), replayed, other]), "llm") is None
    c.drop_index()
