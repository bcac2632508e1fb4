"""What the LLM caches key on, tried with agents (issue 12): agent replays through plain
``set_llm_cache`` (sync, async, streaming, cached_stream), scopes (``scope=``), and the
per-request ``configurable["cache_control"]`` (skip, refresh, ttl), for ValkeyCache and
ModelCacheMiddleware. The semantic cache's share is in tests/test_semantic_cache.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.caches import InMemoryCache
from langchain_core.globals import set_llm_cache
from langchain_core.load import dumps
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

from langgraph_valkey_cache import ValkeyCache
from langgraph_valkey_cache._client import scan_keys
from langgraph_valkey_cache.cache.llm import cache_config, canonical_prompt, project_messages
from langgraph_valkey_cache.cache.middleware import (
    ModelCacheMiddleware,
    acached_stream,
    cached_stream,
)
from langgraph_valkey_cache.testing import ScriptedModel, join_chunks

CITIES = ("Paris", "Lima")


@tool
def get_weather(city: str) -> str:
    """Weather of a city."""
    return f"sunny in {city}"


def _agent_turn(messages: list[BaseMessage]) -> AIMessage:
    """One tool call per city, then a final answer (ScriptedModel adds a fresh id, usage
    and response metadata to each: what differs between a live answer and a replay)."""
    done = sum(isinstance(m, ToolMessage) for m in messages)
    if done < len(CITIES):
        city = CITIES[done]
        return AIMessage(
            content=f"Checking {city}.",
            tool_calls=[{"name": "get_weather", "args": {"city": city}, "id": f"c{done}"}],
        )
    return AIMessage(content="Sunny in Paris and Lima.")


def _model() -> ScriptedModel:
    return ScriptedModel(script=_agent_turn)


QUESTION = {"messages": [HumanMessage("Weather in Paris and Lima?")]}


@pytest.fixture
def global_cache() -> Iterator[None]:
    yield
    set_llm_cache(None)


def _entries(client: Any, prefix: str) -> int:
    return len(list(scan_keys(client, f"{prefix}:x:*")))


def _calls_per_run(model: ScriptedModel, run: Any, runs: int = 3) -> list[int]:
    out = []
    for i in range(runs):
        before = model.calls
        run(i)
        out.append(model.calls - before)
    return out


async def _acalls_per_run(
    model: ScriptedModel, run: Callable[[int], Awaitable[None]], runs: int = 3
) -> list[int]:
    out = []
    for i in range(runs):
        before = model.calls
        await run(i)
        out.append(model.calls - before)
    return out


# -- 1. agent replays hit on every model call through plain set_llm_cache --------------------


def test_raw_prompt_keys_miss_on_replay(global_cache: None) -> None:
    """The symptom, with LangChain's InMemoryCache (keyed by the raw prompt): a cached
    answer is marked (total_cost=0), so every later prompt containing it misses."""
    set_llm_cache(InMemoryCache())
    model = _model()
    agent = create_agent(model, [get_weather])
    assert _calls_per_run(model, lambda i: agent.invoke(QUESTION)) == [3, 2, 1]


def test_agent_replay_sync(sync_client: Any, prefix: str, global_cache: None) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    set_llm_cache(ValkeyCache(sync_client, prefix=prefix, metrics=False))
    model = _model()
    agent = create_agent(model, [get_weather], checkpointer=InMemorySaver())
    results: list[Any] = []

    def run(i: int) -> None:
        config = {"configurable": {"thread_id": f"t{i}"}}
        results.append(agent.invoke(QUESTION, config))  # type: ignore[arg-type]

    assert _calls_per_run(model, run) == [3, 0, 0]
    assert _entries(sync_client, prefix) == 3
    texts = [[(type(m).__name__, m.content) for m in r["messages"]] for r in results]
    assert texts[0] == texts[1] == texts[2]


async def test_agent_replay_async(async_client: Any, prefix: str, global_cache: None) -> None:
    set_llm_cache(ValkeyCache(async_client, prefix=prefix, metrics=False))
    model = _model()
    agent = create_agent(model, [get_weather])

    async def run(i: int) -> None:
        out = await agent.ainvoke(QUESTION)
        assert out["messages"][-1].content == "Sunny in Paris and Lima."

    assert await _acalls_per_run(model, run) == [3, 0, 0]


def test_agent_replay_streaming(sync_client: Any, prefix: str, global_cache: None) -> None:
    """agent.stream(stream_mode="messages") streams the model (LangChain checks the cache
    first): the replays stream from the cache."""
    set_llm_cache(ValkeyCache(sync_client, prefix=prefix, metrics=False))
    model = _model()
    agent = create_agent(model, [get_weather])
    texts: list[str] = []

    def run(i: int) -> None:
        parts = [
            chunk.content
            for chunk, _meta in agent.stream(QUESTION, stream_mode="messages")
            if isinstance(chunk, AIMessage) and isinstance(chunk.content, str)
        ]
        texts.append("".join(parts))

    assert _calls_per_run(model, run) == [3, 0, 0]
    assert texts[0] == texts[1] == texts[2] and "Sunny in Paris and Lima." in texts[0]


async def test_agent_replay_astreaming(async_client: Any, prefix: str, global_cache: None) -> None:
    set_llm_cache(ValkeyCache(async_client, prefix=prefix, metrics=False))
    model = _model()
    agent = create_agent(model, [get_weather])

    async def run(i: int) -> None:
        async for _chunk in agent.astream(QUESTION, stream_mode="messages"):
            pass

    assert await _acalls_per_run(model, run) == [3, 0, 0]


def _tool_results(msg: AIMessage) -> list[ToolMessage]:
    return [
        ToolMessage(get_weather.invoke(tc["args"]), tool_call_id=tc["id"], name=tc["name"])
        for tc in msg.tool_calls
    ]


def test_cached_stream_conversation_replay(sync_client: Any, prefix: str) -> None:
    """A hand-driven agent loop on cached_stream: each replay streams every turn from
    the cache (the replayed messages carry other ids and usage than the originals)."""
    cache = ValkeyCache(sync_client, prefix=prefix, metrics=False)
    model = _model()

    def run(i: int) -> None:
        messages: list[BaseMessage] = [HumanMessage("Weather in Paris and Lima?")]
        while True:
            msg = join_chunks(list(cached_stream(model, messages, cache)))
            messages.append(msg)
            if not msg.tool_calls:
                break
            messages.extend(_tool_results(msg))
        assert messages[-1].content == "Sunny in Paris and Lima."

    assert _calls_per_run(model, run) == [3, 0, 0]


async def test_acached_stream_conversation_replay(async_client: Any, prefix: str) -> None:
    cache = ValkeyCache(async_client, prefix=prefix, metrics=False)
    model = _model()

    async def run(i: int) -> None:
        messages: list[BaseMessage] = [HumanMessage("Weather in Paris and Lima?")]
        while True:
            msg = join_chunks([c async for c in acached_stream(model, messages, cache)])
            messages.append(msg)
            if not msg.tool_calls:
                break
            messages.extend(_tool_results(msg))

    assert await _acalls_per_run(model, run) == [3, 0, 0]


def test_middleware_agent_replay_new_threads(sync_client: Any, prefix: str) -> None:
    cache = ValkeyCache(sync_client, prefix=prefix, metrics=False)
    model = _model()
    agent = create_agent(model, [get_weather], middleware=[ModelCacheMiddleware(cache)])
    assert _calls_per_run(model, lambda i: agent.invoke(QUESTION)) == [3, 0, 0]


# -- what the key holds (pure) --------------------------------------------------------------


def _conversation(**ai: Any) -> list[BaseMessage]:
    call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "c0"}
    return [
        SystemMessage("Be brief."),
        HumanMessage("Weather?", id="h1"),
        AIMessage(content="Checking.", tool_calls=[call], **ai),
        ToolMessage("sunny", tool_call_id="c0", artifact={"raw": ai.get("id")}),
    ]


def test_key_ignores_ids_usage_and_metadata() -> None:
    usage = {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}
    a = _conversation(id="run-1", usage_metadata=usage, response_metadata={"model_name": "x"})
    b = _conversation(
        id="run-2",
        usage_metadata={**usage, "total_cost": 0},
        additional_kwargs={"refusal": None},
    )
    assert dumps(a) != dumps(b)
    assert canonical_prompt(dumps(a)) == canonical_prompt(dumps(b))
    projected = project_messages(dumps(a))
    assert projected == [
        {"type": "system", "content": "Be brief."},
        {"type": "human", "content": "Weather?"},
        {
            "type": "ai",
            "content": "Checking.",
            "tool_calls": [{"name": "get_weather", "args": {"city": "Paris"}, "id": "c0"}],
        },
        {"type": "tool", "content": "sunny", "tool_call_id": "c0"},
    ]
    # a chunk in the history is its message
    chunked = [*a[:2], AIMessageChunk(content="Checking.", tool_calls=a[2].tool_calls), a[3]]  # type: ignore[attr-defined]
    assert canonical_prompt(dumps(chunked)) == canonical_prompt(dumps(a))


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c[1].model_copy(update={"content": "Weather!"}),
        lambda c: c[1].model_copy(update={"name": "bob"}),
        lambda c: c[2].model_copy(update={"tool_calls": [{**c[2].tool_calls[0], "id": "c9"}]}),
        lambda c: c[2].model_copy(
            update={"tool_calls": [{**c[2].tool_calls[0], "args": {"city": "Lima"}}]}
        ),
        lambda c: c[2].model_copy(update={"tool_calls": [{**c[2].tool_calls[0], "name": "x"}]}),
        lambda c: c[3].model_copy(update={"tool_call_id": "c9"}),
        lambda c: c[3].model_copy(update={"status": "error"}),
        lambda c: c[1].model_copy(update={"content": [{"type": "text", "text": "Weather?"}]}),
    ],
)
def test_key_holds_what_the_provider_sees(change: Any) -> None:
    base = _conversation()
    changed = change(base)
    other = [changed if type(m) is type(changed) else m for m in base]
    assert canonical_prompt(dumps(other)) != canonical_prompt(dumps(base))


def test_plain_prompts_are_used_as_is() -> None:
    for prompt in ("hello", "[not json", '["a"]', "[]", '[{"lc": 1}]'):
        assert canonical_prompt(prompt) == prompt
    # no raw prompt can take a projected prompt's key
    projected = canonical_prompt(dumps([HumanMessage("hi")]))
    assert projected.startswith("lvc-messages:1:") and projected != dumps([HumanMessage("hi")])


# -- 3. scopes ---------------------------------------------------------------------------


def _invoke_in(config: dict[str, Any], model: Any, prompt: str) -> Any:
    # a runnable around the model: what sets the config the cache reads
    return RunnableLambda(lambda x: model.invoke(x)).invoke(prompt, config)  # type: ignore[arg-type]


def test_scope_user_a_and_b_are_two_entries(
    sync_client: Any, prefix: str, global_cache: None, caplog: pytest.LogCaptureFixture
) -> None:
    cache = ValkeyCache(sync_client, prefix=prefix, scope=("user_id",), metrics=False)
    set_llm_cache(cache)
    model = _model()
    for user in ("a", "b", "a", "b"):
        _invoke_in({"configurable": {"user_id": user}}, model, "Weather?")
    assert model.calls == 2, "each user's first call is a miss, the repeats hit"
    assert _entries(sync_client, prefix) == 2
    # no user_id: the model is called and nothing is stored, one warning
    with caplog.at_level(logging.WARNING, logger="langgraph_valkey_cache.cache"):
        _invoke_in({"configurable": {}}, model, "Weather?")
        _invoke_in({}, model, "Weather?")
        model.invoke("Weather?")  # a bare invoke sets no config: no scope either
    assert model.calls == 5 and _entries(sync_client, prefix) == 2
    warnings = [r for r in caplog.records if "scoped by user_id" in r.getMessage()]
    assert len(warnings) == 1
    # cache_config() for a bare invoke; another scope name never shares an entry
    with cache_config({"configurable": {"user_id": "a"}}):
        model.invoke("Weather?")
    assert model.calls == 5
    tenant = ValkeyCache(sync_client, prefix=prefix, scope=("tenant",), metrics=False)
    set_llm_cache(tenant)
    _invoke_in({"configurable": {"tenant": "a"}}, model, "Weather?")
    assert model.calls == 6 and _entries(sync_client, prefix) == 3


def test_unscoped_and_scoped_caches_never_share(sync_client: Any, prefix: str) -> None:
    unscoped = ValkeyCache(sync_client, prefix=prefix, metrics=False)
    scoped = ValkeyCache(sync_client, prefix=prefix, scope="user_id", metrics=False)
    gens = [ChatGeneration(message=AIMessage("shared?"))]
    unscoped.update("p", "llm", gens)
    with cache_config({"configurable": {"user_id": "a"}}):
        assert scoped.lookup("p", "llm") is None
        scoped.update("p", "llm", [ChatGeneration(message=AIMessage("mine"))])
        assert scoped.lookup("p", "llm")[0].message.content == "mine"  # type: ignore[index,union-attr]
    with cache_config({"configurable": {"user_id": "b"}}):
        assert scoped.lookup("p", "llm") is None
    assert unscoped.lookup("p", "llm")[0].message.content == "shared?"  # type: ignore[index,union-attr]


@dataclass
class UserContext:
    user_id: str


def test_scope_from_agent_config_and_runtime_context(
    sync_client: Any, prefix: str, global_cache: None
) -> None:
    set_llm_cache(ValkeyCache(sync_client, prefix=prefix, scope=("user_id",), metrics=False))
    model = _model()
    agent = create_agent(model, [get_weather], context_schema=UserContext)
    for user in ("a", "b", "a"):
        agent.invoke(QUESTION, {"configurable": {"user_id": user}})  # type: ignore[arg-type]
    assert model.calls == 6 and _entries(sync_client, prefix) == 6
    agent.invoke(QUESTION, context=UserContext("b"))  # the same scope via the context
    assert model.calls == 6
    agent.invoke(QUESTION, context=UserContext("c"))
    assert model.calls == 9 and _entries(sync_client, prefix) == 9


def test_middleware_scope(sync_client: Any, prefix: str) -> None:
    cache = ValkeyCache(sync_client, prefix=prefix, metrics=False)
    model = _model()
    mw = ModelCacheMiddleware(cache, scope=("user_id",))
    agent = create_agent(model, [get_weather], middleware=[mw], context_schema=UserContext)
    agent.invoke(QUESTION, context=UserContext("a"))
    agent.invoke(QUESTION, context=UserContext("b"))
    agent.invoke(QUESTION, {"configurable": {"user_id": "a"}})  # type: ignore[arg-type]
    assert model.calls == 6 and _entries(sync_client, prefix) == 6
    agent.invoke(QUESTION)  # no user: the model, nothing stored
    assert model.calls == 9 and _entries(sync_client, prefix) == 6
    # the middleware takes the cache's scope by default
    assert ModelCacheMiddleware(ValkeyCache(sync_client, scope="tenant")).scope == ("tenant",)


async def test_middleware_scope_any_base_cache() -> None:
    """A cache without scopes of its own: the scope goes into the llm string."""
    model = _model()
    mw = ModelCacheMiddleware(InMemoryCache(), scope=("user_id",))
    agent = create_agent(model, [get_weather], middleware=[mw], context_schema=UserContext)
    await agent.ainvoke(QUESTION, context=UserContext("a"))
    await agent.ainvoke(QUESTION, context=UserContext("b"))
    await agent.ainvoke(QUESTION, context=UserContext("a"))
    assert model.calls == 6


# -- 4. per-request control ----------------------------------------------------------------


def _control(**control: Any) -> dict[str, Any]:
    return {"configurable": {"cache_control": control}}


def test_cache_control_skip_refresh_ttl(sync_client: Any, prefix: str, global_cache: None) -> None:
    set_llm_cache(ValkeyCache(sync_client, prefix=prefix, ttl=3600, metrics=False))
    model = _model()
    first = _invoke_in({}, model, "Weather?")
    assert model.calls == 1 and _entries(sync_client, prefix) == 1
    # skip: neither read nor written
    _invoke_in(_control(skip=True), model, "Weather?")
    _invoke_in(_control(skip=True), model, "Other?")
    assert model.calls == 3 and _entries(sync_client, prefix) == 1
    # refresh: recomputed and overwritten (the next plain call gets the new answer)
    fresh = _invoke_in(_control(refresh=True), model, "Weather?")
    assert model.calls == 4
    assert (
        fresh.response_metadata["system_fingerprint"]
        != first.response_metadata["system_fingerprint"]
    )
    again = _invoke_in({}, model, "Weather?")
    assert model.calls == 4
    assert (
        again.response_metadata["system_fingerprint"]
        == fresh.response_metadata["system_fingerprint"]
    )
    # ttl: this entry's lifetime, the cache's default otherwise
    _invoke_in(_control(ttl=30), model, "Short?")
    ttls = {}
    for key in scan_keys(sync_client, f"{prefix}:x:*"):
        ttls[key] = sync_client.pttl(key)
    assert sorted(t // 1000 for t in ttls.values())[0] in (29, 30)
    assert max(ttls.values()) > 3_000_000
    with pytest.raises(ValueError, match="unknown keys"):
        _invoke_in(_control(skipp=True), model, "Weather?")


def test_middleware_cache_control(sync_client: Any, prefix: str) -> None:
    cache = ValkeyCache(sync_client, prefix=prefix, metrics=False)
    model = _model()
    agent = create_agent(model, [get_weather], middleware=[ModelCacheMiddleware(cache)])
    agent.invoke(QUESTION, _control(skip=True))  # type: ignore[arg-type]
    assert model.calls == 3 and _entries(sync_client, prefix) == 0
    agent.invoke(QUESTION, _control(ttl=20))  # type: ignore[arg-type]
    assert model.calls == 6 and _entries(sync_client, prefix) == 3
    assert all(0 < sync_client.pttl(k) <= 20_000 for k in scan_keys(sync_client, f"{prefix}:x:*"))
    agent.invoke(QUESTION)
    assert model.calls == 6
    agent.invoke(QUESTION, _control(refresh=True))  # type: ignore[arg-type]
    assert model.calls == 9
    # refreshed entries carry no TTL (the cache's default: none)
    assert all(sync_client.pttl(k) == -1 for k in scan_keys(sync_client, f"{prefix}:x:*"))


async def test_cached_stream_cache_control(async_client: Any, prefix: str) -> None:
    cache = ValkeyCache(async_client, prefix=prefix, metrics=False)
    model = _model()

    async def stream(config: Any = None) -> AIMessage:
        return join_chunks([c async for c in acached_stream(model, "Weather?", cache, config)])

    await stream(_control(skip=True))
    await stream()
    await stream()
    assert model.calls == 2
    await stream(_control(refresh=True))
    assert model.calls == 3
    sync_side = [c for c in cached_stream(model, "Weather?", cache, _control(skip=True))]
    assert sync_side and model.calls == 4
    scoped = ValkeyCache(async_client, prefix=prefix, scope="user_id", metrics=False)
    cfg = {"configurable": {"user_id": "a"}}
    _ = [c async for c in acached_stream(model, "Weather?", scoped, cfg)]
    _ = [c async for c in acached_stream(model, "Weather?", scoped, cfg)]
    assert model.calls == 5
    await asyncio.sleep(0)
