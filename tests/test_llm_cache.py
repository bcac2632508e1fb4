"""ValkeyCache (exact): langchain-tests suites, full-message round trip through a chat
model, scoping of clear/invalidate, TTL, normalisation, fail-open, round trips."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from langchain_core.globals import set_llm_cache
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, Generation
from langchain_tests.integration_tests.cache import AsyncCacheTestSuite, SyncCacheTestSuite

from langgraph_valkey_cache import ValkeyCache
from langgraph_valkey_cache._client import client_from_url, scan_keys
from langgraph_valkey_cache.testing import count_commands


class TestValkeyCacheSync(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, sync_client: Any, prefix: str) -> ValkeyCache:
        return ValkeyCache(sync_client, prefix=prefix, metrics=False)


class TestValkeyCacheAsync(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(self, async_client: Any, prefix: str) -> ValkeyCache:
        return ValkeyCache(async_client, prefix=prefix, metrics=False)


class TestValkeyCacheBothClients(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(self, sync_client: Any, async_client: Any, prefix: str) -> ValkeyCache:
        return ValkeyCache(sync_client, async_client=async_client, prefix=prefix, metrics=False)


def _tool_call_message() -> AIMessage:
    return AIMessage(
        content=[{"type": "text", "text": "Let me look that up."}],
        tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}],
        usage_metadata={"input_tokens": 12, "output_tokens": 7, "total_tokens": 19},
        response_metadata={"model_name": "fake-1", "finish_reason": "tool_calls"},
        additional_kwargs={"refusal": None, "custom": [1, 2]},
    )


def _strip(msg: Any) -> Any:
    # LangChain zeroes total_cost on cache hits and assigns run ids; compare the rest
    usage = {k: v for k, v in (msg.usage_metadata or {}).items() if k != "total_cost"}
    return msg.model_copy(update={"id": None, "usage_metadata": usage})


@pytest.fixture
def global_cache() -> Iterator[None]:
    yield
    set_llm_cache(None)


def test_tool_call_round_trip_invoke(sync_client: Any, prefix: str, global_cache: None) -> None:
    set_llm_cache(ValkeyCache(sync_client, prefix=prefix, metrics=False))
    model = FakeMessagesListChatModel(responses=[_tool_call_message(), AIMessage("other")])
    first = model.invoke([HumanMessage("weather in Paris?")])
    assert model.i == 1
    second = model.invoke([HumanMessage("weather in Paris?")])
    assert model.i == 1, "the second identical invoke must not call the model"
    assert _strip(second) == _strip(first)
    assert second.tool_calls == first.tool_calls
    assert second.usage_metadata is not None
    assert second.usage_metadata["total_tokens"] == 19
    assert second.response_metadata == first.response_metadata
    assert second.additional_kwargs == first.additional_kwargs
    assert second.content == first.content


async def test_tool_call_round_trip_ainvoke(
    async_client: Any, prefix: str, global_cache: None
) -> None:
    cache = ValkeyCache(async_client, prefix=prefix, metrics=False)
    model = FakeMessagesListChatModel(
        responses=[_tool_call_message(), AIMessage("other")], cache=cache
    )
    first = await model.ainvoke([HumanMessage("weather in Paris?")])
    second = await model.ainvoke([HumanMessage("weather in Paris?")])
    assert model.i == 1
    assert _strip(second) == _strip(first)
    assert second.tool_calls[0]["args"] == {"city": "Paris"}
    # a different question is a miss
    third = await model.ainvoke([HumanMessage("weather in Rome?")])
    assert third.content == "other"


def test_prompt_not_in_key_and_ttl_in_set(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    cache = ValkeyCache(client, prefix=prefix, ttl=60, metrics=False, stats_flush_interval=60)
    client.ping()  # connect first: the handshake is not the cache's cost
    with count_commands() as log:
        cache.update("secret prompt text", "llm", [Generation(text="x")])
    assert log.round_trips == 1  # one SET carries value and TTL
    keys = [k.decode() for k in scan_keys(client, f"{prefix}:*")]
    assert len(keys) == 1 and "secret" not in keys[0]
    assert 0 < client.pttl(keys[0]) <= 60_000
    with count_commands() as log:
        assert cache.lookup("secret prompt text", "llm") == [Generation(text="x")]
    assert log.round_trips == 1
    client.close()


def test_no_collision_between_prompt_and_llm_string(sync_client: Any, prefix: str) -> None:
    cache = ValkeyCache(sync_client, prefix=prefix, metrics=False)
    cache.update("ab", "c", [Generation(text="1")])
    assert cache.lookup("a", "bc") is None


def test_clear_is_scoped_and_star_prefix_does_not_widen(sync_client: Any, prefix: str) -> None:
    star = ValkeyCache(sync_client, prefix=prefix + "*", metrics=False)
    plain = ValkeyCache(sync_client, prefix=prefix + "x", metrics=False)
    other = ValkeyCache(sync_client, prefix=prefix + "xy", metrics=False)
    for c in (star, plain, other):
        c.update("p", "llm", [Generation(text="v")])
    sync_client.set(prefix + "unrelated", "keep")
    star.clear()
    assert star.lookup("p", "llm") is None
    assert plain.lookup("p", "llm") is not None
    assert other.lookup("p", "llm") is not None
    plain.clear()
    assert other.lookup("p", "llm") is not None
    assert sync_client.get(prefix + "unrelated") == b"keep"


async def test_invalidate_model(async_client: Any, prefix: str) -> None:
    cache = ValkeyCache(async_client, prefix=prefix, metrics=False)
    for i in range(30):
        await cache.aupdate(f"p{i}", "model-a", [Generation(text="a")])
        await cache.aupdate(f"p{i}", "model-b", [Generation(text="b")])
    await cache.ainvalidate_model("model-a")
    assert await cache.alookup("p3", "model-a") is None
    assert await cache.alookup("p3", "model-b") == [Generation(text="b")]


def test_normalize_is_opt_in(sync_client: Any, prefix: str) -> None:
    plain = ValkeyCache(sync_client, prefix=prefix + "a", metrics=False)
    norm = ValkeyCache(sync_client, prefix=prefix + "b", normalize=True, metrics=False)
    for c in (plain, norm):
        c.update("What  is\n the   answer?", "llm", [Generation(text="42")])
    assert plain.lookup("What is the answer?", "llm") is None
    assert norm.lookup("What is the answer?", "llm") == [Generation(text="42")]
    # chat prompts: only message text is collapsed, the JSON stays valid
    from langchain_core.load import dumps

    p1 = dumps([HumanMessage("hello    world")])
    p2 = dumps([HumanMessage("hello world ")])
    norm.update(p1, "llm", [Generation(text="hi")])
    assert norm.lookup(p2, "llm") == [Generation(text="hi")]


def test_unsafe_payload_is_not_instantiated(sync_client: Any, prefix: str) -> None:
    cache = ValkeyCache(sync_client, prefix=prefix, metrics=False)
    key = cache.codec.key("p", "llm")
    evil = (
        '[{"lc": 1, "type": "constructor", "id": ["langchain", "prompts", "prompt", '
        '"PromptTemplate"], "kwargs": {"template": "{x}", "input_variables": ["x"]}}]'
    )
    sync_client.set(key, evil)
    assert cache.lookup("p", "llm") is None
    sync_client.set(key, "not json")
    assert cache.lookup("p", "llm") is None


@pytest.mark.parametrize(
    "damage",
    [
        {"content": 5},
        {"tool_calls": [{"name": "t", "args": "not a dict", "id": "c"}]},
        {"tool_calls": "nope"},
        {"usage_metadata": ["x"]},
        {"response_metadata": None},
        {"type": "human"},
    ],
)
def test_damaged_compact_entry_is_a_miss(
    sync_client: Any, prefix: str, damage: dict[str, Any]
) -> None:
    """The compact decoder rebuilds messages without re-validating only when the stored
    fields have the shape model_dump() gives; anything else is validated (and a miss)."""
    import json

    cache = ValkeyCache(sync_client, prefix=prefix, metrics=False)
    cache.update("p", "llm", [ChatGeneration(message=_tool_call_message())])
    key = cache.codec.key("p", "llm")
    entry = json.loads(sync_client.get(key))  # {"lvc":2,"g":[{"m": fields}]}
    entry["g"][0]["m"].update(damage)
    sync_client.set(key, json.dumps(entry, separators=(",", ":")))
    assert cache.lookup("p", "llm") is None
    # and an undamaged entry with a field this langchain-core does not know: validated
    entry["g"][0]["m"] = _tool_call_message().model_dump() | {"future_field": 1}
    sync_client.set(key, json.dumps(entry, separators=(",", ":")))
    (gen,) = cache.lookup("p", "llm") or [None]
    assert isinstance(gen, ChatGeneration) and gen.message.tool_calls


def test_multiple_chat_generations(sync_client: Any, prefix: str) -> None:
    cache = ValkeyCache(sync_client, prefix=prefix, metrics=False)
    gens = [ChatGeneration(message=_tool_call_message()), ChatGeneration(message=AIMessage("b"))]
    cache.update("p", "llm", gens)
    assert cache.lookup("p", "llm") == gens


def test_lookup_many_one_round_trip(sync_client: Any, prefix: str) -> None:
    cache = ValkeyCache(sync_client, prefix=prefix, metrics=False, stats_flush_interval=60)
    cache.update("p1", "llm", [Generation(text="1")])
    with count_commands() as log:
        got = cache.lookup_many([("p1", "llm"), ("p2", "llm")])
    assert got == [[Generation(text="1")], None]
    if not hasattr(sync_client, "get_primaries"):
        assert log.round_trips == 1  # cluster pipelines take one per node


def test_fail_open_sync(dead_url: str, caplog: pytest.LogCaptureFixture) -> None:
    client = client_from_url(dead_url, timeout=0.2)
    cache = ValkeyCache(client, metrics=False)
    model = FakeMessagesListChatModel(responses=[AIMessage("fresh")], cache=cache)
    with caplog.at_level(logging.WARNING, "langgraph_valkey_cache.cache"):
        assert model.invoke("hi").content == "fresh"
    # the failed lookup opened the breaker: the update did not try the server again
    assert "lookup failed" in caplog.text and "update failed" not in caplog.text
    client.close()


async def test_fail_open_async(dead_url: str, caplog: pytest.LogCaptureFixture) -> None:
    client = client_from_url(dead_url, asyncio=True, timeout=0.2)
    cache = ValkeyCache(client, metrics=False)
    with caplog.at_level(logging.WARNING, "langgraph_valkey_cache.cache"):
        assert await cache.alookup("p", "llm") is None
        await cache.aupdate("p", "llm", [Generation(text="x")])
    assert "lookup failed" in caplog.text
    await client.aclose()


async def test_async_only_client_refuses_sync_use(async_client: Any, prefix: str) -> None:
    cache = ValkeyCache(async_client, prefix=prefix, metrics=False)
    with pytest.raises(TypeError, match="only an async client"):
        cache.lookup("p", "llm")


@pytest.fixture
async def url_cache(valkey_url: str, prefix: str) -> AsyncIterator[ValkeyCache]:
    cache = ValkeyCache.from_url(valkey_url, prefix=prefix, metrics=False)
    yield cache
    cache.close()
    await cache.aclose()


async def test_from_url_serves_both(url_cache: ValkeyCache) -> None:
    url_cache.update("p", "llm", [Generation(text="s")])
    assert await url_cache.alookup("p", "llm") == [Generation(text="s")]


def test_user_data_that_looks_serialized_round_trips(sync_client: Any, prefix: str) -> None:
    cache = ValkeyCache(sync_client, prefix=prefix, metrics=False)
    tricky = {"lc": 1, "type": "constructor", "id": ["langchain", "prompts", "x"], "kwargs": {}}
    msg = AIMessage("ok", additional_kwargs={"payload": tricky})
    cache.update("p", "llm", [ChatGeneration(message=msg)])
    got = cache.lookup("p", "llm")
    assert got is not None
    assert got[0].message.additional_kwargs == {"payload": tricky}  # type: ignore[attr-defined]


async def test_async_methods_use_the_async_client_natively(
    async_client: Any, dead_url: str, prefix: str
) -> None:
    # the sync client points at nothing: the a* methods succeeding proves they never use it
    dead = client_from_url(dead_url, timeout=0.2)
    cache = ValkeyCache(dead, async_client=async_client, prefix=prefix, metrics=False)
    await cache.aupdate("p", "llm", [Generation(text="x")])
    assert await cache.alookup("p", "llm") == [Generation(text="x")]
    await cache.aclear()
    assert await cache.alookup("p", "llm") is None
    dead.close()


def test_metrics_hits_misses_and_cost_saved(sync_client: Any, prefix: str) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    cache = ValkeyCache(
        sync_client,
        prefix=prefix,
        metrics=registry,
        cost_of=lambda gens: 0.002 * len(gens),
    )
    cache.lookup("p", "llm")
    cache.update("p", "llm", [Generation(text="x")])
    cache.lookup("p", "llm")
    cache.lookup("p", "llm")

    def value(name: str, **labels: str) -> float:
        got = registry.get_sample_value(name, labels)
        return 0.0 if got is None else got

    ns = "langgraph_valkey_cache"
    assert value(f"{ns}_requests_total", tier="llm_cache", result="hit") == 2
    assert value(f"{ns}_requests_total", tier="llm_cache", result="miss") == 1
    assert value(f"{ns}_cost_saved_usd_total", tier="llm_cache") == pytest.approx(0.004)
    assert value(f"{ns}_stored_bytes_total", tier="llm_cache") > 0
