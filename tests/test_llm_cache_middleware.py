"""ModelCacheMiddleware in create_agent (exact and semantic, sync and async, single-flight
across threads and tasks) and cached_stream / acached_stream (hit replayed as chunks,
miss recorded while it streams)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.tools import tool

from langgraph_valkey_cache import ValkeyCache, ValkeySemanticCache
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache.cache.middleware import (
    ModelCacheMiddleware,
    acached_stream,
    cached_stream,
)
from langgraph_valkey_cache.testing import HashingEmbeddings, ScriptedModel, join_chunks

USAGE = {"input_tokens": 10, "output_tokens": 4, "total_tokens": 14}


@tool
def get_weather(city: str) -> str:
    """Weather of a city."""
    return f"sunny in {city}"


def _turn(messages: list[BaseMessage]) -> AIMessage:
    """A tool call when the last message is the user's, else a final answer."""
    if isinstance(messages[-1], HumanMessage):
        return AIMessage(
            content="Checking.",
            tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}],
            usage_metadata=USAGE,  # type: ignore[arg-type]
        )
    return AIMessage(content="It is sunny in Paris.", usage_metadata=USAGE)  # type: ignore[arg-type]


def _model(delay: float = 0.0) -> ScriptedModel:
    return ScriptedModel(script=_turn, delay=delay)


def _final(result: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    return [
        (type(m).__name__, m.content, getattr(m, "tool_calls", None)) for m in result["messages"]
    ]


@pytest.fixture
def exact(sync_client: Any, prefix: str) -> ValkeyCache:
    return ValkeyCache(sync_client, prefix=prefix, metrics=False)


def test_agent_second_run_does_not_call_model(exact: ValkeyCache) -> None:
    model = _model()
    mw = ModelCacheMiddleware(exact)
    agent = create_agent(model, [get_weather], middleware=[mw])
    first = agent.invoke({"messages": [HumanMessage("weather in Paris?")]})
    assert model.calls == 2
    second = agent.invoke({"messages": [HumanMessage("weather in Paris?")]})
    assert model.calls == 2, "both model calls of the second run came from the cache"
    assert _final(second) == _final(first)
    ai = [m for m in second["messages"] if isinstance(m, AIMessage)]
    assert ai[0].usage_metadata is not None and ai[0].usage_metadata["total_tokens"] == 14
    assert len({m.id for m in second["messages"]}) == len(second["messages"])
    assert mw.hits == 2 and mw.misses == 2
    # another system prompt is another key
    other = create_agent(model, [get_weather], middleware=[mw], system_prompt="Be brief.")
    other.invoke({"messages": [HumanMessage("weather in Paris?")]})
    assert model.calls == 4


async def test_agent_async(async_client: Any, prefix: str) -> None:
    cache = ValkeyCache(async_client, prefix=prefix, metrics=False)
    model = _model()
    agent = create_agent(model, [get_weather], middleware=[ModelCacheMiddleware(cache)])
    first = await agent.ainvoke({"messages": [HumanMessage("weather in Paris?")]})
    second = await agent.ainvoke({"messages": [HumanMessage("weather in Paris?")]})
    assert model.calls == 2
    assert _final(second) == _final(first)


def test_single_flight_threads(exact: ValkeyCache) -> None:
    model = _model(delay=0.3)
    agent = create_agent(model, [], middleware=[ModelCacheMiddleware(exact, wait_timeout=10)])
    with ThreadPoolExecutor(6) as pool:
        results = list(
            pool.map(lambda _: agent.invoke({"messages": [HumanMessage("same?")]}), range(6))
        )
    assert model.calls == 1, f"{model.calls} model calls for 6 identical concurrent misses"
    assert all(
        r["messages"][-1].tool_calls == results[0]["messages"][-1].tool_calls for r in results
    )


async def test_single_flight_tasks(async_client: Any, prefix: str) -> None:
    cache = ValkeyCache(async_client, prefix=prefix, metrics=False)
    model = _model(delay=0.3)
    agent = create_agent(model, [], middleware=[ModelCacheMiddleware(cache, wait_timeout=10)])
    results = await asyncio.gather(
        *[agent.ainvoke({"messages": [HumanMessage("same?")]}) for _ in range(6)]
    )
    assert model.calls == 1
    assert len(results) == 6


@pytest.mark.search
async def test_semantic_mode(search_url: str, prefix: str) -> None:
    sync = client_from_url(search_url)
    aclient = client_from_url(search_url, asyncio=True)
    cache = ValkeySemanticCache(
        sync, HashingEmbeddings(256), async_client=aclient, prefix=prefix,
        distance_threshold=0.08, metrics=False,
    )  # fmt: skip
    cache.setup()
    model = _model(delay=0.2)
    agent = create_agent(model, [], middleware=[ModelCacheMiddleware(cache)])
    agent.invoke({"messages": [HumanMessage("What is the capital of France?")]})
    assert model.calls == 1
    agent.invoke({"messages": [HumanMessage("what is the capital city of France?")]})
    assert model.calls == 1, "a paraphrase hits"
    await agent.ainvoke({"messages": [HumanMessage("How do I bake bread?")]})
    assert model.calls == 2
    # concurrent identical misses: one call
    await asyncio.gather(
        *[agent.ainvoke({"messages": [HumanMessage("Why is the sky blue?")]}) for _ in range(4)]
    )
    assert model.calls == 3
    cache.drop_index()
    sync.close()
    await aclient.aclose()


def test_fail_open_agent(dead_url: str, prefix: str) -> None:
    client = client_from_url(dead_url, timeout=0.2)
    model = _model()
    agent = create_agent(
        model, [get_weather], middleware=[ModelCacheMiddleware(ValkeyCache(client, metrics=False))]
    )
    out = agent.invoke({"messages": [HumanMessage("weather in Paris?")]})
    assert out["messages"][-1].content == "It is sunny in Paris."
    client.close()


def test_invalidate_model_reaches_middleware_entries(exact: ValkeyCache) -> None:
    """The middleware appends tools and settings to the model's llm string; invalidating
    the model by its own llm string still drops those entries."""
    model = _model()
    agent = create_agent(model, [get_weather], middleware=[ModelCacheMiddleware(exact)])
    agent.invoke({"messages": [HumanMessage("weather in Paris?")]})
    agent.invoke({"messages": [HumanMessage("weather in Paris?")]})
    assert model.calls == 2
    exact.invalidate_model(model._get_llm_string())
    agent.invoke({"messages": [HumanMessage("weather in Paris?")]})
    assert model.calls == 4


async def test_any_base_cache_works_without_single_flight() -> None:
    from langchain_core.caches import InMemoryCache

    model = _model()
    mw = ModelCacheMiddleware(InMemoryCache())
    agent = create_agent(model, [get_weather], middleware=[mw])
    agent.invoke({"messages": [HumanMessage("weather in Paris?")]})
    await agent.ainvoke({"messages": [HumanMessage("weather in Paris?")]})
    assert model.calls == 2 and (mw.hits, mw.misses) == (2, 2)


def _sum(chunks: list[AIMessageChunk]) -> AIMessage:
    """The streamed message without its id (a replay carries another)."""
    return join_chunks(chunks).model_copy(update={"id": None})


def test_cached_stream(exact: ValkeyCache) -> None:
    model = _model()
    first = list(cached_stream(model, "weather in Paris?", exact))
    assert model.calls == 1 and len(first) > 2
    second = list(cached_stream(model, "weather in Paris?", exact, chunk_chars=4))
    assert model.calls == 1, "the replay did not call the model"
    assert len(second) > 2, "a hit is replayed as several chunks"
    a, b = _sum(first), _sum(second)
    assert b.content == a.content and b.tool_calls == a.tool_calls
    assert b.usage_metadata == a.usage_metadata
    # the same key as invoke: an invoke after streaming is a hit too
    model.cache = exact
    assert model.invoke("weather in Paris?").tool_calls == a.tool_calls
    assert model.calls == 1


async def test_acached_stream_shares_invoke_entries(async_client: Any, prefix: str) -> None:
    cache = ValkeyCache(async_client, prefix=prefix, metrics=False)
    model = _model()
    model.cache = cache
    done = await model.ainvoke("weather in Paris?")
    chunks = [c async for c in acached_stream(model, "weather in Paris?", cache)]
    assert model.calls == 1
    assert _sum(chunks).tool_calls == done.tool_calls
    # a miss is recorded once the stream completes
    model.cache = None
    fresh = [c async for c in acached_stream(model, "other question", cache)]
    assert model.calls == 2
    again = [c async for c in acached_stream(model, "other question", cache)]
    assert model.calls == 2
    assert _sum(again).content == _sum(fresh).content


@pytest.fixture
async def _unused() -> AsyncIterator[None]:
    yield


@pytest.mark.search
def test_semantic_mode_scope_and_control(search_url: str, prefix: str) -> None:
    """The middleware on a scoped semantic cache: a paraphrase hits within a user's
    scope only; a call without a user, or with cache_control skip, stores nothing."""
    from dataclasses import dataclass

    @dataclass
    class Ctx:
        user_id: str | None = None

    sync = client_from_url(search_url)
    emb = HashingEmbeddings(256)
    cache = ValkeySemanticCache(
        sync, emb, prefix=prefix, distance_threshold=0.08, scope="user_id", metrics=False
    )
    cache.setup()
    model = _model()
    agent = create_agent(model, [], middleware=[ModelCacheMiddleware(cache)], context_schema=Ctx)
    ask = {"messages": [HumanMessage("What is the capital of France?")]}
    paraphrase = {"messages": [HumanMessage("what is the capital city of France?")]}
    agent.invoke(ask, context=Ctx("a"))
    agent.invoke(paraphrase, context=Ctx("a"))
    assert model.calls == 1, "a paraphrase hits in the same scope"
    agent.invoke(paraphrase, context=Ctx("b"))
    assert model.calls == 2, "never across scopes"
    entries = len(list(sync.scan_iter(match=f"{prefix}:s:*")))
    agent.invoke(ask, context=Ctx())  # no user: the model, nothing stored
    agent.invoke(ask, {"configurable": {"cache_control": {"skip": True}}}, context=Ctx("c"))
    assert model.calls == 4
    assert len(list(sync.scan_iter(match=f"{prefix}:s:*"))) == entries == 2
    cache.drop_index()
    sync.close()
