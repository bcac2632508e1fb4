"""ToolCache scopes, injected key values, per-request control and schema-normalised
arguments (issue 12 items 3, 4, 6), on real servers through ToolNode and create_agent."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import InjectedState, ToolNode

from langgraph_valkey_cache import ToolCache
from langgraph_valkey_cache._client import client_from_url, scan_keys
from tests.test_tool_cache import FakeToolModel, make_tools, tool_call, tool_graph


def entries(client: Any, cache: ToolCache) -> list[bytes]:
    return sorted(scan_keys(client, cache.keys.all_pattern()))  # type: ignore[type-var]


def call(node: Any, call_id: str, args: dict[str, Any], config: Any = None, **state: Any) -> Any:
    out = node.invoke({"messages": [tool_call(call_id, args)], **state}, config)
    return out["messages"][-1]


def user(uid: str | None, **control: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {} if uid is None else {"user_id": uid}
    if control:
        conf["cache_control"] = control
    return {"configurable": conf}


# --- scopes -------------------------------------------------------------------------------


def test_scope_keeps_users_apart_and_missing_scope_bypasses(
    client: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = ToolCache(client, prefix=prefix, metrics=False, scope=("user_id",))
    calls: list[dict[str, Any]] = []
    node = tool_graph(make_tools(calls), wrap_tool_call=cache.wrap)
    call(node, "a1", {"city": "Oslo"}, user("a"))
    call(node, "b1", {"city": "Oslo"}, user("b"))
    assert len(calls) == 2  # same args, two users: two entries
    assert len(entries(client, cache)) == 2
    hit = call(node, "a2", {"city": "Oslo"}, user("a"))
    assert len(calls) == 2 and hit.tool_call_id == "a2"
    # an int and its digits are one user (the app may spell it either way)
    call(node, "n1", {"city": "Oslo"}, user(7))  # type: ignore[arg-type]
    call(node, "n2", {"city": "Oslo"}, user("7"))
    assert len(calls) == 3

    with caplog.at_level(logging.WARNING, "langgraph_valkey_cache"):
        call(node, "x1", {"city": "Oslo"}, user(None))
        call(node, "x2", {"city": "Oslo"}, None)
    assert len(calls) == 5  # no scope value: the tool runs every time
    assert len(entries(client, cache)) == 3  # and nothing was stored
    warned = [r for r in caplog.records if "user_id" in r.getMessage()]
    assert len(warned) == 1


def test_scope_from_runtime_context(client: Any, prefix: str) -> None:
    """create_agent's runtime context supplies the scope when configurable has none."""
    from dataclasses import dataclass

    @dataclass
    class Ctx:
        user_id: str

    cache = ToolCache(client, prefix=prefix, metrics=False, scope="user_id")
    calls: list[dict[str, Any]] = []

    def run(uid: str, n: int) -> None:
        model = FakeToolModel(
            messages=iter([tool_call(f"{uid}{n}", {"city": "Rome"}), AIMessage("done")])
        )
        agent = create_agent(
            model, make_tools(calls), middleware=[cache.middleware()], context_schema=Ctx
        )
        agent.invoke({"messages": [HumanMessage("hi")]}, context=Ctx(uid))

    run("a", 0)
    run("b", 0)
    run("a", 1)
    assert len(calls) == 2


async def test_scope_async(valkey_url: str, prefix: str) -> None:
    aclient = client_from_url(valkey_url, asyncio=True)
    cache = ToolCache(aclient, prefix=prefix, metrics=False, scope=("user_id",))
    calls: list[dict[str, Any]] = []
    node = tool_graph(make_tools(calls), awrap_tool_call=cache.awrap)
    for uid in ("a", "b", "a", "b"):
        await node.ainvoke({"messages": [tool_call("c", {"city": "Oslo"})]}, user(uid))
    assert len(calls) == 2
    await aclient.aclose()


class UserState(MessagesState):
    user_id: str


def user_tools(calls: list[str]) -> list[BaseTool]:
    @tool
    def my_orders(status: str, user_id: Annotated[str, InjectedState("user_id")]) -> str:
        """The current user's orders (the user comes from the graph state)."""
        calls.append(user_id)
        return f"orders of {user_id}: {status}"

    return [my_orders]


def user_graph(tools: list[BaseTool], cache: ToolCache) -> Any:
    builder = StateGraph(UserState)
    builder.add_node("tools", ToolNode(tools, wrap_tool_call=cache.wrap))
    builder.add_edge(START, "tools")
    return builder.compile()


def orders(node: Any, uid: str) -> str:
    msg = tool_call(f"c-{uid}", {"status": "open"}, "my_orders")
    return str(node.invoke({"messages": [msg], "user_id": uid})["messages"][-1].content)


def test_key_injected_keeps_users_apart(client: Any, prefix: str) -> None:
    calls: list[str] = []
    cache = ToolCache(client, prefix=prefix, metrics=False, key_injected=("user_id",))
    node = user_graph(user_tools(calls), cache)
    assert orders(node, "ann") == "orders of ann: open"
    assert orders(node, "bob") == "orders of bob: open"  # not ann's cached result
    assert orders(node, "ann") == "orders of ann: open"
    assert calls == ["ann", "bob"]


def test_without_key_injected_the_state_is_not_in_the_key(client: Any, prefix: str) -> None:
    """Why key_injected exists: the default key leaves injected state out."""
    calls: list[str] = []
    node = user_graph(user_tools(calls), ToolCache(client, prefix=prefix, metrics=False))
    orders(node, "ann")
    assert orders(node, "bob") == "orders of ann: open"
    assert calls == ["ann"]


def test_key_injected_per_tool_and_missing_value_bypasses(
    client: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    @tool
    def my_orders(status: str, state: Annotated[dict[str, Any], InjectedState]) -> str:
        """The current user's orders."""
        calls.append(state.get("user_id", "nobody"))
        return f"orders of {calls[-1]}: {status}"

    weather_calls: list[dict[str, Any]] = []
    cache = ToolCache(client, prefix=prefix, metrics=False, key_injected={"my_orders": ["user_id"]})
    tools = [my_orders, *make_tools(weather_calls)]
    node = tool_graph(tools, wrap_tool_call=cache.wrap)  # MessagesState: no user_id
    call(node, "w1", {"city": "Oslo"})
    call(node, "w2", {"city": "Oslo"})
    assert len(weather_calls) == 1  # tools not named in the mapping: keyed as before
    with caplog.at_level(logging.WARNING, "langgraph_valkey_cache"):
        for i in range(2):
            node.invoke({"messages": [tool_call(f"o{i}", {"status": "open"}, "my_orders")]})
    assert calls == ["nobody", "nobody"]  # no user_id: ran both times, nothing served
    assert len(entries(client, cache)) == 1  # only weather's entry
    assert sum("user_id" in r.getMessage() for r in caplog.records) == 1


# --- per-request control ------------------------------------------------------------------


def counting_tool(calls: list[str]) -> BaseTool:
    @tool
    def weather(city: str, units: str = "metric") -> str:
        """Weather of a city (a new report on every run)."""
        calls.append(city)
        return f"report {len(calls)} for {city}"

    return weather


def test_cache_control_skip_refresh_ttl(client: Any, prefix: str) -> None:
    cache = ToolCache(client, prefix=prefix, metrics=False, ttl=600)
    calls: list[str] = []
    weather = counting_tool(calls)
    node = tool_graph([weather], wrap_tool_call=cache.wrap)
    lima = {"city": "Lima"}
    key = cache.key_for("weather", lima, weather)  # normalised: the tool's schema
    skip = {"configurable": {"cache_control": {"skip": True}}}

    assert call(node, "s1", lima, skip).content == "report 1 for Lima"
    assert client.exists(key) == 0  # skip: nothing stored

    call(node, "t1", lima, {"configurable": {"cache_control": {"ttl": 5}}})
    assert len(calls) == 2 and 0 < client.pttl(key) <= 5000  # the request's TTL

    assert call(node, "h1", lima).content == "report 2 for Lima"  # a hit
    assert call(node, "s2", lima, skip).content == "report 3 for Lima"  # skip: not served
    assert call(node, "h2", lima).content == "report 2 for Lima"  # and not stored

    refreshed = call(node, "r1", lima, {"configurable": {"cache_control": {"refresh": True}}})
    assert refreshed.content == "report 4 for Lima"  # ran despite the entry
    assert call(node, "h3", lima).content == "report 4 for Lima"  # and overwrote it
    assert client.pttl(key) > 5000  # with the cache's TTL again
    assert len(calls) == 4


async def test_cache_control_async(valkey_url: str, prefix: str) -> None:
    aclient = client_from_url(valkey_url, asyncio=True)
    cache = ToolCache(aclient, prefix=prefix, metrics=False, ttl=600)
    calls: list[str] = []
    node = tool_graph([counting_tool(calls)], awrap_tool_call=cache.awrap)

    async def run(config: Any = None) -> str:
        out = await node.ainvoke({"messages": [tool_call("c", {"city": "Rome"})]}, config)
        return str(out["messages"][-1].content)

    assert await run() == "report 1 for Rome"
    assert await run() == "report 1 for Rome"
    assert await run({"configurable": {"cache_control": {"refresh": True}}}) == "report 2 for Rome"
    assert await run({"configurable": {"cache_control": {"skip": True}}}) == "report 3 for Rome"
    assert await run() == "report 2 for Rome"
    await aclient.aclose()


def test_tool_cache_ttl_override_still_works(client: Any, prefix: str) -> None:
    cache = ToolCache(client, prefix=prefix, metrics=False, ttl=600)
    calls: list[dict[str, Any]] = []
    tools = make_tools(calls)
    node = tool_graph(tools, wrap_tool_call=cache.wrap)
    key = cache.key_for("weather", {"city": "Kyiv"}, tools[0])
    call(node, "o1", {"city": "Kyiv"}, {"configurable": {"tool_cache_ttl": 0}})
    assert client.exists(key) == 0
    call(node, "o2", {"city": "Kyiv"}, {"configurable": {"tool_cache_ttl": {"weather": 30}}})
    assert 25_000 < client.pttl(key) <= 30_000
    client.delete(key)
    both = {"tool_cache_ttl": 30, "cache_control": {"ttl": 3}}
    call(node, "o3", {"city": "Kyiv"}, {"configurable": both})
    assert 0 < client.pttl(key) <= 3000  # cache_control's ttl wins
    assert len(calls) == 3


def test_malformed_cache_control_raises(client: Any, prefix: str) -> None:
    cache = ToolCache(client, prefix=prefix, metrics=False)
    node = tool_graph(make_tools([]), wrap_tool_call=cache.wrap)
    with pytest.raises(ValueError, match="cache_control"):
        call(node, "m", {"city": "Lima"}, {"configurable": {"cache_control": {"skp": True}}})


# --- arguments normalised through the schema ------------------------------------------------


def test_defaults_and_coercion_give_one_entry(client: Any, prefix: str) -> None:
    cache = ToolCache(client, prefix=prefix, metrics=False)
    calls: list[Any] = []

    @tool
    def forecast(city: str, days: int = 3, units: str = "metric") -> str:
        """Forecast."""
        calls.append((city, days, units))
        return f"{city} {days} {units}"

    node = tool_graph([forecast], wrap_tool_call=cache.wrap)
    for i, args in enumerate(
        [
            {"city": "Lima"},
            {"city": "Lima", "units": "metric"},
            {"days": 3, "city": "Lima", "units": "metric"},
            {"city": "Lima", "days": "3"},  # coerced by the schema, as the tool does
        ]
    ):
        msg = node.invoke({"messages": [tool_call(f"f{i}", args, "forecast")]})["messages"][-1]
        assert msg.content == "Lima 3 metric"
    assert len(calls) == 1
    assert len(entries(client, cache)) == 1
    msg = node.invoke({"messages": [tool_call("g", {"city": "Lima", "days": 4}, "forecast")]})
    assert len(calls) == 2  # a real difference is another entry

    # invalidate with the short form: the schema remembered from the calls above
    assert cache.invalidate("forecast", {"city": "Lima"}) == 1
    assert len(entries(client, cache)) == 1
    # a new cache object that has seen no call: pass the tool
    fresh = ToolCache(client, prefix=prefix, metrics=False)
    assert fresh.invalidate(forecast, {"city": "Lima", "days": "4"}) == 1
    assert entries(client, cache) == []


def test_invalidate_with_tools_registered_and_scope(client: Any, prefix: str) -> None:
    calls: list[dict[str, Any]] = []
    tools = make_tools(calls)
    cache = ToolCache(client, prefix=prefix, metrics=False, scope=("user_id",), tools=tools)
    node = tool_graph(tools, wrap_tool_call=cache.wrap)
    call(node, "a", {"city": "Oslo"}, user("a"))
    call(node, "b", {"city": "Oslo"}, user("b"))
    with pytest.raises(ValueError, match="user_id"):
        cache.invalidate("weather", {"city": "Oslo"})
    assert cache.invalidate("weather", {"city": "Oslo", "units": "metric"}, scope={"user_id": "a"})
    call(node, "a2", {"city": "Oslo"}, user("a"))
    call(node, "b2", {"city": "Oslo"}, user("b"))
    assert len(calls) == 3  # only a's entry was dropped
    assert cache.invalidate("weather") == 2  # every scope


def test_json_schema_tool_defaults(client: Any, prefix: str) -> None:
    """A tool whose args_schema is a JSON schema dict: top-level defaults are filled."""
    from langchain_core.tools import StructuredTool

    runs: list[dict[str, Any]] = []

    def lookup(**kwargs: Any) -> str:
        runs.append(kwargs)
        return "ok"

    schema = {
        "type": "object",
        "properties": {"q": {"type": "string"}, "k": {"type": "integer", "default": 4}},
        "required": ["q"],
    }
    lookup_tool = StructuredTool.from_function(
        lookup, name="lookup", description="Look up.", args_schema=schema
    )
    cache = ToolCache(client, prefix=prefix, metrics=False)
    assert cache.key_for("lookup", {"q": "x"}, lookup_tool) == cache.key_for(
        "lookup", {"q": "x", "k": 4}, lookup_tool
    )
    assert cache.key_for("lookup", {"q": "x"}, lookup_tool) != cache.key_for(
        "lookup", {"q": "x", "k": 5}, lookup_tool
    )


def test_hit_keeps_the_current_call_id(client: Any, prefix: str) -> None:
    cache = ToolCache(client, prefix=prefix, metrics=False, scope=("user_id",))
    node = tool_graph(make_tools([]), wrap_tool_call=cache.wrap)
    call(node, "first", {"city": "Oslo"}, user("a"))
    msg = call(node, "second", {"city": "Oslo", "units": "metric"}, user("a"))
    assert isinstance(msg, ToolMessage) and msg.tool_call_id == "second"


def test_cached_function_follows_the_run_scope_and_control(client: Any, prefix: str) -> None:
    from langgraph_valkey_cache import cached

    cache = ToolCache(client, prefix=prefix, metrics=False, scope=("user_id",))
    runs: list[str] = []

    @cached(cache, name="search")
    def search(query: str) -> str:
        runs.append(query)
        return f"{query} #{len(runs)}"

    builder = StateGraph(MessagesState)
    builder.add_node("n", lambda state: {"messages": [AIMessage(search("q"))]})
    builder.add_edge(START, "n")
    graph = builder.compile()

    def answer(config: Any) -> str:
        return str(graph.invoke({"messages": []}, config)["messages"][-1].content)

    assert answer(user("a")) == "q #1"
    assert answer(user("b")) == "q #2"  # another user: not a's entry
    assert answer(user("a")) == "q #1"
    assert answer(user(None)) == "q #3"  # no scope value: runs, nothing stored
    assert answer(user(None)) == "q #4"
    assert answer(user("a", refresh=True)) == "q #5"
    assert answer(user("a")) == "q #5"
    assert answer(user("a", skip=True)) == "q #6"
    assert answer(user("a")) == "q #5"
    assert search("q") == "q #7"  # outside any run: no scope, runs uncached


def test_invalidate_without_a_known_schema_warns(
    client: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = ToolCache(client, prefix=prefix, metrics=False)
    with caplog.at_level(logging.WARNING, "langgraph_valkey_cache"):
        assert cache.invalidate("weather", {"city": "Lima"}) == 0
    assert any("no schema of this tool" in r.getMessage() for r in caplog.records)
