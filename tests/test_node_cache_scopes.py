"""ValkeyNodeCache scopes and per-request control (issue 12 items 3 and 4) on a real
server: the config bound with ``for_run`` or the enclosing runnable's."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest
from langgraph.graph import START, StateGraph
from langgraph.types import CachePolicy
from typing_extensions import TypedDict

from langgraph_valkey_cache import ValkeyNodeCache
from langgraph_valkey_cache._client import client_from_url, scan_keys


class S(TypedDict):
    x: int
    y: int


def graph(calls: Counter[str], cache: Any, ttl: int | None = None) -> Any:
    def work(state: S) -> dict[str, int]:
        calls["work"] += 1
        return {"y": state["x"] * 10 + calls["work"]}

    builder = StateGraph(S)
    builder.add_node("work", work, cache_policy=CachePolicy(ttl=ttl))
    builder.add_edge(START, "work")
    return builder.compile(cache=cache)


def entries(client: Any, cache: ValkeyNodeCache) -> list[Any]:
    return list(scan_keys(client, cache.keys.all_pattern()))


def conf(uid: Any = None, **control: Any) -> dict[str, Any]:
    c: dict[str, Any] = {} if uid is None else {"user_id": uid}
    if control:
        c["cache_control"] = control
    return {"configurable": c}


def run(g: Any, cache: ValkeyNodeCache, config: Any, x: int = 1) -> int:
    with cache.for_run(config):
        return int(g.invoke({"x": x}, config)["y"])


def test_scope_keeps_users_apart(
    client: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache = ValkeyNodeCache(client, prefix=prefix, metrics=False, scope=("user_id",))
    calls: Counter[str] = Counter()
    g = graph(calls, cache)
    assert run(g, cache, conf("a")) == 11
    assert run(g, cache, conf("b")) == 12  # same input, another user: runs
    assert run(g, cache, conf("a")) == 11  # a's own entry
    assert calls["work"] == 2
    assert len(entries(client, cache)) == 2
    with caplog.at_level(logging.WARNING, "langgraph_valkey_cache"):
        assert run(g, cache, conf()) == 13
        assert g.invoke({"x": 1})["y"] == 14  # nothing bound, not inside a runnable
    assert calls["work"] == 4 and len(entries(client, cache)) == 2  # nothing stored
    assert sum("user_id" in r.getMessage() for r in caplog.records) == 1
    # clear by node reaches every scope
    g.clear_cache(["work"])
    assert entries(client, cache) == []


def test_scope_from_the_enclosing_runnable(client: Any, prefix: str) -> None:
    """A graph run inside a node (a subgraph call) reads the node's config: no for_run."""
    cache = ValkeyNodeCache(client, prefix=prefix, metrics=False, scope="user_id")
    calls: Counter[str] = Counter()
    inner = graph(calls, cache)

    def outer_node(state: S) -> dict[str, int]:
        return {"y": inner.invoke({"x": state["x"]})["y"]}

    builder = StateGraph(S)
    builder.add_node("outer", outer_node)
    builder.add_edge(START, "outer")
    outer = builder.compile()
    assert outer.invoke({"x": 1}, conf("a"))["y"] == 11
    assert outer.invoke({"x": 1}, conf("b"))["y"] == 12
    assert outer.invoke({"x": 1}, conf("a"))["y"] == 11
    assert calls["work"] == 2


def test_cache_control(client: Any, prefix: str) -> None:
    cache = ValkeyNodeCache(client, prefix=prefix, metrics=False)
    calls: Counter[str] = Counter()
    g = graph(calls, cache, ttl=600)
    assert run(g, cache, conf(skip=True)) == 11
    assert entries(client, cache) == []  # skip: nothing stored
    assert run(g, cache, conf(ttl=5)) == 12
    (key,) = entries(client, cache)
    assert 0 < client.pttl(key) <= 5000  # the request's TTL, not the policy's
    assert run(g, cache, conf()) == 12  # a hit
    assert run(g, cache, conf(skip=True)) == 13  # skip: not read
    assert run(g, cache, conf(refresh=True)) == 14  # refresh: runs, overwrites
    assert run(g, cache, conf()) == 14
    assert client.pttl(key) > 5000  # the policy's TTL again
    assert calls["work"] == 4
    with pytest.raises(ValueError, match="cache_control"):
        run(g, cache, {"configurable": {"cache_control": {"ttl": -1}}})


async def test_scope_and_control_async(valkey_url: str, prefix: str) -> None:
    aclient = client_from_url(valkey_url, asyncio=True)
    cache = ValkeyNodeCache(aclient, prefix=prefix, metrics=False, scope=("user_id",))
    calls: Counter[str] = Counter()
    g = graph(calls, cache)

    async def arun(config: Any) -> int:
        with cache.for_run(config):
            return int((await g.ainvoke({"x": 1}, config))["y"])

    assert await arun(conf("a")) == 11
    assert await arun(conf("b")) == 12
    assert await arun(conf("a")) == 11
    assert await arun(conf("a", refresh=True)) == 13
    assert await arun(conf("a")) == 13
    assert await arun(conf("b")) == 12
    assert calls["work"] == 3
    await aclient.aclose()


def test_scoped_keys_are_injective(prefix: str) -> None:
    keys = ValkeyNodeCache(client_from_url("valkey://localhost:1"), prefix=prefix).keys
    ns = ("__pregel_ns_writes", "m.work", "work")
    seen = {
        keys.entry(ns, "k"),
        keys.entry(ns, "k", ("a",)),
        keys.entry(ns, "k", ("a", "b")),
        keys.entry(ns, "k", ("a,b",)),
        keys.entry(ns, "k", ("",)),
        keys.entry(ns, "k", ("", "")),
        keys.entry(ns, "k:@a"),
    }
    assert len(seen) == 7
