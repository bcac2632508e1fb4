"""ToolCache with ToolNode and create_agent, the cached() decorator, on real servers."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from langchain.agents import create_agent
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import InjectedState, ToolNode, tools_condition
from langgraph.types import Command

from langgraph_valkey_cache import ToolCache, cached
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache.embedded import EmbeddedValkey
from langgraph_valkey_cache.testing import count_commands


class FakeToolModel(GenericFakeChatModel):
    """GenericFakeChatModel that accepts bind_tools (create_agent binds the tools)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> FakeToolModel:
        return self


def tool_call(call_id: str, args: dict[str, Any], name: str = "weather") -> AIMessage:
    return AIMessage("", tool_calls=[{"name": name, "args": args, "id": call_id}])


def script(*turns: dict[str, Any]) -> Iterator[AIMessage]:
    """Per turn: a tool call, then a final answer."""
    for i, args in enumerate(turns):
        yield tool_call(f"call_{i}", args)
        yield AIMessage(f"answer {i}")


def make_tools(calls: list[dict[str, Any]]) -> list[BaseTool]:
    @tool
    def weather(city: str, units: str = "metric") -> str:
        """Weather of a city."""
        calls.append({"city": city, "units": units})
        return f"sunny in {city} ({units})"

    return [weather]


def make_async_tools(calls: list[dict[str, Any]]) -> list[BaseTool]:
    @tool
    async def weather(city: str, units: str = "metric") -> str:
        """Weather of a city."""
        calls.append({"city": city, "units": units})
        await asyncio.sleep(0)
        return f"sunny in {city} ({units})"

    return [weather]


TURNS = ({"city": "Sofia", "units": "metric"}, {"units": "metric", "city": "Sofia"})


def tool_messages(result: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in result["messages"] if isinstance(m, ToolMessage)]


def build_graph(model: Any, tools: list[BaseTool], cache: ToolCache) -> Any:
    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    async def aagent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent if False else _either(agent, aagent))
    builder.add_node(
        "tools", ToolNode(tools, wrap_tool_call=cache.wrap, awrap_tool_call=cache.awrap)
    )
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver())


def _either(sync_fn: Any, async_fn: Any) -> Any:
    from langchain_core.runnables import RunnableLambda

    return RunnableLambda(sync_fn, afunc=async_fn)


@pytest.fixture
def tool_cache(any_url: str, prefix: str) -> Iterator[ToolCache]:
    client = client_from_url(any_url)
    aclient = client_from_url(any_url, asyncio=True)
    yield ToolCache(client, async_client=aclient, prefix=prefix, ttl=60, metrics=False)
    client.close()


@pytest.mark.parametrize("kind", ["create_agent", "tool_node"])
def test_second_identical_call_is_served_from_valkey_sync(kind: str, tool_cache: ToolCache) -> None:
    calls: list[dict[str, Any]] = []
    tools = make_tools(calls)
    model = FakeToolModel(messages=script(*TURNS, TURNS[0]))
    if kind == "create_agent":
        graph = create_agent(
            model, tools, middleware=[tool_cache.middleware()], checkpointer=InMemorySaver()
        )
    else:
        graph = build_graph(model, tools, tool_cache)
    first = graph.invoke({"messages": [HumanMessage("hi")]}, {"configurable": {"thread_id": "a"}})
    second = graph.invoke(  # another turn, same thread
        {"messages": [HumanMessage("again")]}, {"configurable": {"thread_id": "a"}}
    )
    third = graph.invoke({"messages": [HumanMessage("hi")]}, {"configurable": {"thread_id": "b"}})
    assert len(calls) == 1
    (m1,), (_, m2), (m3,) = tool_messages(first), tool_messages(second), tool_messages(third)
    assert (m1.tool_call_id, m2.tool_call_id, m3.tool_call_id) == ("call_0", "call_1", "call_2")
    assert m1.content == m2.content == m3.content == "sunny in Sofia (metric)"
    assert m2.name == "weather"
    stats = tool_cache.stats()["weather"]
    assert (stats.hits, stats.misses) == (2, 1)


@pytest.mark.parametrize("kind", ["create_agent", "tool_node"])
async def test_second_identical_call_is_served_from_valkey_async(
    kind: str, tool_cache: ToolCache
) -> None:
    calls: list[dict[str, Any]] = []
    tools = make_async_tools(calls)
    model = FakeToolModel(messages=script(*TURNS))
    if kind == "create_agent":
        graph = create_agent(
            model, tools, middleware=[tool_cache.middleware()], checkpointer=InMemorySaver()
        )
    else:
        graph = build_graph(model, tools, tool_cache)
    first = await graph.ainvoke(
        {"messages": [HumanMessage("hi")]}, {"configurable": {"thread_id": "a"}}
    )
    second = await graph.ainvoke(
        {"messages": [HumanMessage("hi")]}, {"configurable": {"thread_id": "b"}}
    )
    assert len(calls) == 1
    (m1,), (m2,) = tool_messages(first), tool_messages(second)
    assert (m1.tool_call_id, m2.tool_call_id) == ("call_0", "call_1")
    assert m2.content == "sunny in Sofia (metric)"
    stats = (await tool_cache.astats())["weather"]
    assert (stats.hits, stats.misses) == (1, 1)
    await tool_cache.aclient.aclose()


def tool_graph(tools: list[BaseTool], **kwargs: Any) -> Any:
    """A ToolNode inside a one-node graph (ToolNode needs the graph's runtime)."""
    builder = StateGraph(MessagesState)
    builder.add_node("tools", ToolNode(tools, **kwargs))
    builder.add_edge(START, "tools")
    return builder.compile()


def run_node(node: Any, call_id: str, args: dict[str, Any], name: str = "weather") -> Any:
    return node.invoke({"messages": [tool_call(call_id, args, name)]})["messages"][-1]


def test_hit_is_one_round_trip(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    cache = ToolCache(client, prefix=prefix, metrics=False, stats_flush_interval=3600)
    calls: list[dict[str, Any]] = []
    node = tool_graph(make_tools(calls), wrap_tool_call=cache.wrap)
    run_node(node, "c0", {"city": "Oslo"})
    run_node(node, "c1", {"city": "Oslo"})  # scripts loaded, policies read
    with count_commands() as log:
        msg = run_node(node, "c2", {"city": "Oslo"})
    assert log.round_trips == 1 and log.commands == ["GET"]  # a plain GET, not the script
    assert msg.tool_call_id == "c2" and len(calls) == 1
    with count_commands() as log:
        run_node(node, "c3", {"city": "Rome"})
    # GET, then lookup-or-lease, then store-and-release
    assert log.round_trips == 3 and log.commands == ["GET", "EVALSHA", "EVALSHA"]
    client.close()


def test_injected_args_are_not_part_of_the_key(tool_cache: ToolCache) -> None:
    calls: list[str] = []

    @tool
    def lookup(
        query: str,
        state: Annotated[dict[str, Any], InjectedState],
        tool_call_id: Annotated[str, InjectedToolCallId],
    ) -> str:
        """Look something up."""
        calls.append(tool_call_id)
        return f"{query}: {len(state['messages'])} messages"

    node = tool_graph([lookup], wrap_tool_call=tool_cache.wrap)
    first = node.invoke({"messages": [tool_call("a", {"query": "q"}, "lookup")]})
    more = [HumanMessage("x"), tool_call("b", {"query": "q"}, "lookup")]
    second = node.invoke({"messages": more})
    assert calls == ["a"]
    assert second["messages"][-1].tool_call_id == "b"
    assert second["messages"][-1].content == first["messages"][-1].content
    assert tool_cache.key_for("lookup", {"query": "q"}) == tool_cache.key_for(
        "lookup", {"query": "q", "state": {"other": 1}, "tool_call_id": "zz"}, lookup
    )


def test_canonical_args_nested_order(tool_cache: ToolCache) -> None:
    a = {"city": "Sofia", "opts": {"x": 1, "y": [1, {"b": 2, "a": 1}]}}
    b = {"opts": {"y": [1, {"a": 1, "b": 2}], "x": 1}, "city": "Sofia"}
    assert tool_cache.key_for("t", a) == tool_cache.key_for("t", b)
    assert tool_cache.key_for("t", a) != tool_cache.key_for("u", a)
    assert tool_cache.key_for("t", {"x": [1, 2]}) != tool_cache.key_for("t", {"x": [2, 1]})


def test_errors_and_commands_are_never_cached(tool_cache: ToolCache) -> None:
    runs: list[str] = []

    @tool
    def flaky(x: int) -> str:
        """Fails."""
        runs.append("flaky")
        raise ValueError("boom")

    @tool
    def jump(x: int, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Returns a Command."""
        runs.append("jump")
        msg = ToolMessage("ok", tool_call_id=tool_call_id)
        return Command(update={"messages": [msg]})

    node = tool_graph([flaky, jump], wrap_tool_call=tool_cache.wrap, handle_tool_errors=True)
    for i in range(2):
        assert run_node(node, f"e{i}", {"x": 1}, "flaky").status == "error"
        node.invoke({"messages": [tool_call(f"j{i}", {"x": 1}, "jump")]})
    assert runs == ["flaky", "jump", "flaky", "jump"]
    stats = tool_cache.stats()
    assert stats["flaky"].uncacheable == 2 and stats["jump"].uncacheable == 2


def test_policies(any_url: str, prefix: str) -> None:
    client = client_from_url(any_url)
    cache = ToolCache(
        client,
        prefix=prefix,
        ttl=100,
        policies={"weather": 50},
        never_cache=["send_email"],
        metrics=False,
        policy_refresh=0.2,
    )
    assert cache.effective_ttl("weather") == 50
    assert cache.effective_ttl("other") == 100
    assert cache.effective_ttl("weather", {"weather": 5}) == 5  # per-call override wins
    assert cache.effective_ttl("weather", 0) == "no-cache"
    assert cache.effective_ttl("send_email", 60) == "no-cache"
    only = ToolCache(client, prefix=prefix, only=["weather"], metrics=False)
    assert only.effective_ttl("weather") == 3600 and only.effective_ttl("x") == "no-cache"

    calls: list[dict[str, Any]] = []
    node = tool_graph(make_tools(calls), wrap_tool_call=cache.wrap)
    run_node(node, "a", {"city": "Oslo"})
    entry = cache.key_for("weather", {"city": "Oslo"})
    assert 45_000 < client.pttl(entry) <= 50_000
    # per-call override from the run config
    node.invoke(
        {"messages": [tool_call("b", {"city": "Rome"})]},
        {"configurable": {"tool_cache_ttl": {"weather": 5}}},
    )
    assert 0 < client.pttl(cache.key_for("weather", {"city": "Rome"})) <= 5_000
    # an operator changes the policy in Valkey; another process sees it after the refresh
    other = ToolCache(client, prefix=prefix, ttl=100, metrics=False, policy_refresh=0.2)
    other.set_policy("weather", 7)
    time.sleep(0.25)
    run_node(node, "c", {"city": "Paris"})
    assert 0 < client.pttl(cache.key_for("weather", {"city": "Paris"})) <= 7_000
    other.set_policy("weather", enabled=False)
    time.sleep(0.25)
    run_node(node, "d", {"city": "Paris"})
    run_node(node, "e", {"city": "Paris"})
    assert len(calls) == 5  # disabled: every call runs
    other.delete_policy("weather")
    client.close()


def test_invalidate(tool_cache: ToolCache) -> None:
    calls: list[dict[str, Any]] = []
    node = tool_graph(make_tools(calls), wrap_tool_call=tool_cache.wrap)
    for city in ("Oslo", "Rome", "Lima"):
        run_node(node, city, {"city": city})
    assert tool_cache.invalidate("weather", {"city": "Oslo"}) == 1
    run_node(node, "x", {"city": "Oslo"})
    run_node(node, "y", {"city": "Rome"})
    assert len(calls) == 4
    assert tool_cache.invalidate("weather") == 3
    run_node(node, "z", {"city": "Rome"})
    assert len(calls) == 5


async def test_async_invalidate_and_effectiveness(any_url: str, prefix: str) -> None:
    aclient = client_from_url(any_url, asyncio=True)
    cache = ToolCache(aclient, prefix=prefix, ttl=60, metrics=False)
    calls: list[dict[str, Any]] = []
    node = tool_graph(make_async_tools(calls), awrap_tool_call=cache.awrap)
    for i in range(12):  # 2 distinct calls, 10 hits
        await node.ainvoke({"messages": [tool_call(f"c{i}", {"city": f"c{i % 2}"})]})
    report = {r.tool: r for r in await cache.atool_effectiveness()}
    assert report["weather"].stats.hits == 10
    assert report["weather"].recommendation == "longer_ttl"
    assert report["weather"].suggested_ttl == 120
    assert await cache.ainvalidate("weather") == 2
    await aclient.aclose()


def test_stats_are_shared_and_recommend(valkey_url: str, prefix: str) -> None:
    clients = [client_from_url(valkey_url) for _ in range(2)]
    caches = [ToolCache(c, prefix=prefix, ttl=60, metrics=False) for c in clients]
    calls: list[dict[str, Any]] = []
    tools = make_tools(calls)
    nodes = [tool_graph(tools, wrap_tool_call=c.wrap) for c in caches]
    for i in range(12):  # every call distinct: no reuse at all
        run_node(nodes[i % 2], f"c{i}", {"city": f"city{i}"})
    for c in caches:
        c.flush_stats()
    (line,) = caches[0].tool_effectiveness()
    assert line.stats.misses == 12 and line.stats.hits == 0
    assert line.recommendation == "disable"
    for c in clients:
        c.close()


def test_threads_run_the_tool_once(tool_cache: ToolCache) -> None:
    runs = 0
    lock = threading.Lock()

    @tool
    def slow(q: str) -> str:
        """Slow tool."""
        nonlocal runs
        with lock:
            runs += 1
        time.sleep(0.3)
        return q.upper()

    node = tool_graph([slow], wrap_tool_call=tool_cache.wrap)
    barrier = threading.Barrier(20)
    out: list[ToolMessage] = []

    def worker(i: int) -> None:
        barrier.wait()
        msg = run_node(node, f"t{i}", {"q": "x"}, "slow")
        with lock:
            out.append(msg)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runs == 1
    assert sorted(m.tool_call_id for m in out) == sorted(f"t{i}" for i in range(20))
    assert {m.content for m in out} == {"X"}


async def test_tasks_run_the_tool_once(tool_cache: ToolCache) -> None:
    runs = 0

    @tool
    async def slow(q: str) -> str:
        """Slow tool."""
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.3)
        return q.upper()

    node = tool_graph([slow], awrap_tool_call=tool_cache.awrap)
    results = await asyncio.gather(
        *(node.ainvoke({"messages": [tool_call(f"t{i}", {"q": "x"}, "slow")]}) for i in range(20))
    )
    assert runs == 1
    assert [r["messages"][-1].tool_call_id for r in results] == [f"t{i}" for i in range(20)]
    await tool_cache.aclient.aclose()


def _process_worker(url: str, prefix: str, barrier: Any, out: Any) -> None:
    client = client_from_url(url)
    cache = ToolCache(client, prefix=prefix, metrics=False)

    @tool
    def slow(q: str) -> str:
        """Slow tool."""
        client.incr(f"{prefix}:runs")
        time.sleep(0.5)
        return q.upper()

    node = tool_graph([slow], wrap_tool_call=cache.wrap)
    barrier.wait()
    msgs = []
    for i in range(5):  # 4 processes x 5 callers = 20
        msgs.append(
            threading.Thread(target=lambda i=i: run_node(node, f"p{i}", {"q": "x"}, "slow"))
        )
    for t in msgs:
        t.start()
    for t in msgs:
        t.join()
    cache.flush_stats()
    out.put("ok")
    client.close()


def test_processes_run_the_tool_once(valkey_url: str, prefix: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(valkey_url, prefix, barrier, out))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    assert [out.get(timeout=60) for _ in procs] == ["ok"] * 4
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    client = client_from_url(valkey_url)
    assert int(client.get(f"{prefix}:runs")) == 1
    stats = ToolCache(client, prefix=prefix, metrics=False).stats()["slow"]
    assert (stats.hits, stats.misses) == (19, 1)
    client.close()


def test_agent_finishes_when_server_dies(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    server = EmbeddedValkey().start()
    client = client_from_url(server.url, timeout=0.5)
    cache = ToolCache(client, prefix=prefix, metrics=False)
    calls: list[dict[str, Any]] = []
    model = FakeToolModel(messages=script(*TURNS, TURNS[0], TURNS[0]))
    agent = create_agent(model, make_tools(calls), middleware=[cache.middleware()])
    agent.invoke({"messages": [HumanMessage("hi")]})
    agent.invoke({"messages": [HumanMessage("hi")]})
    assert len(calls) == 1
    server.kill()
    caplog.set_level(logging.WARNING, "langgraph_valkey_cache")
    result = agent.invoke({"messages": [HumanMessage("hi")]})
    assert result["messages"][-1].content == "answer 2"
    assert tool_messages(result)[0].tool_call_id == "call_2"
    assert len(calls) == 2  # the tool just ran
    assert "tool_cache cache" in caplog.text and "failed" in caplog.text
    # the breaker keeps the dead server out of the way: no new timeouts, no new warnings
    warnings = len(caplog.records)
    with count_commands() as log:
        agent.invoke({"messages": [HumanMessage("hi")]})
    assert log.round_trips == 0
    assert len(calls) == 3 and len(caplog.records) == warnings
    client.close()
    server.stop()


def test_breaker_half_open_single_probe_and_growing_cooldown() -> None:
    from langgraph_valkey_cache._failopen import Breaker

    breaker = Breaker("test", first_cooldown=0.05, max_cooldown=0.2)
    assert breaker.allow()
    breaker.failure(ConnectionError("down"))
    assert not breaker.allow()  # open: nothing goes to the server
    time.sleep(0.06)
    assert breaker.allow()  # half-open: one probe...
    assert not breaker.allow()  # ...and only one
    breaker.failure(ConnectionError("refused"), slow=False)  # cost nothing: no growth
    assert breaker._cooldown == 0.05
    time.sleep(0.06)
    assert breaker.allow()
    breaker.failure(TimeoutError("stalled"))  # the probe timed out: cooldown doubles
    assert breaker._cooldown == 0.1
    time.sleep(0.06)
    assert not breaker.allow()
    time.sleep(0.05)
    assert breaker.allow()
    breaker.success()  # the server answered: closed, cooldown back to the first
    assert breaker.allow() and breaker.allow() and breaker._cooldown == 0.05
    for _ in range(5):  # capped
        time.sleep(breaker._cooldown + 0.01)
        assert breaker.allow()
        breaker.failure(ConnectionError("down"))
    assert breaker._cooldown == 0.2


def test_cached_decorator_sync(tool_cache: ToolCache) -> None:
    runs: list[tuple[str, int]] = []

    @cached(tool_cache, name="search_docs", ttl=30)
    def search_docs(query: str, k: int = 2) -> list[Document]:
        runs.append((query, k))
        return [Document(page_content=f"{query} {i}", metadata={"i": i}) for i in range(k)]

    first = search_docs("valkey")
    assert search_docs(k=2, query="valkey") == first  # same canonical arguments
    assert search_docs("valkey", 3) != first
    assert runs == [("valkey", 2), ("valkey", 3)]
    assert isinstance(first[0], Document)
    stats = tool_cache.stats()["search_docs"]
    assert (stats.hits, stats.misses) == (1, 2)


async def test_cached_decorator_async_single_flight(tool_cache: ToolCache) -> None:
    runs = 0

    @cached(tool_cache)
    async def fetch(url: str) -> dict[str, Any]:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.2)
        return {"url": url, "status": 200}

    results = await asyncio.gather(*(fetch("https://x") for _ in range(20)))
    assert runs == 1 and all(r == {"url": "https://x", "status": 200} for r in results)
    await tool_cache.aclient.aclose()


def test_stalled_server_costs_one_timeout_then_nothing(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that stops answering (SIGSTOP): one call waits for the client timeout,
    the following ones run the tool at once."""
    import os
    import signal

    server = EmbeddedValkey().start()
    client = client_from_url(server.url, timeout=0.3)
    cache = ToolCache(client, prefix=prefix, metrics=False)
    calls: list[dict[str, Any]] = []
    node = tool_graph(make_tools(calls), wrap_tool_call=cache.wrap)
    run_node(node, "a", {"city": "Oslo"})
    pid = server._proc.pid  # type: ignore[union-attr]
    os.kill(pid, signal.SIGSTOP)
    try:
        caplog.set_level(logging.WARNING, "langgraph_valkey_cache")
        t0 = time.monotonic()
        assert run_node(node, "b", {"city": "Oslo"}).tool_call_id == "b"
        first = time.monotonic() - t0
        with count_commands() as log:
            for i in range(5):
                run_node(node, f"c{i}", {"city": "Oslo"})
    finally:
        os.kill(pid, signal.SIGCONT)
    assert len(calls) == 7
    assert first < 5 and log.round_trips == 0, (first, log)
    assert "TimeoutError" in caplog.text
    client.close()
    server.stop()


def test_artifact_round_trips(tool_cache: ToolCache) -> None:
    runs: list[str] = []

    @tool(response_format="content_and_artifact")
    def search(q: str) -> tuple[str, dict[str, Any]]:
        """Search with an artifact."""
        runs.append(q)
        return f"2 results for {q}", {"ids": [1, 2], "q": q}

    node = tool_graph([search], wrap_tool_call=tool_cache.wrap)
    first = run_node(node, "a", {"q": "valkey"}, "search")
    second = run_node(node, "b", {"q": "valkey"}, "search")
    assert runs == ["valkey"]
    assert second.tool_call_id == "b" and second.name == "search"
    assert (second.content, second.artifact) == (first.content, first.artifact)
    assert second.artifact == {"ids": [1, 2], "q": "valkey"}


def test_async_client_keyword_is_the_same_on_every_cache(valkey_url: str) -> None:
    """async_client= on ToolCache and ValkeyNodeCache as on the LLM caches; the old
    aclient= still works, with a DeprecationWarning; both at once is an error."""
    from langgraph_valkey_cache import ValkeyNodeCache

    sync, aclient = client_from_url(valkey_url), client_from_url(valkey_url, asyncio=True)
    for cls in (ToolCache, ValkeyNodeCache):
        assert cls(sync, async_client=aclient, metrics=False).async_client is aclient
        with pytest.warns(DeprecationWarning, match="async_client="):
            assert cls(sync, aclient=aclient, metrics=False).async_client is aclient
        with pytest.raises(TypeError, match="once"):
            cls(sync, async_client=aclient, aclient=aclient, metrics=False)
    sync.close()
