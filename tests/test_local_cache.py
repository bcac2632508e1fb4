"""The coherent L1 (issue 12 item 7): valkey-py RESP3 client-side caching behind
``local_cache=True``, on a real server, with a second client writing.

Coherence contract: a reply another client overwrites, deletes or lets expire is never
served once the server's invalidation has reached this process. The server pushes it
on the connection that read the key while executing the write, so it arrives about as
soon as the writer's own reply; the tests allow it a moment, then require every read to
be fresh, and check that a value, once replaced, never comes back.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from langgraph.graph import START, StateGraph
from langgraph.types import CachePolicy
from typing_extensions import TypedDict
from valkey.exceptions import ConnectionError as ValkeyConnectionError

from langgraph_valkey_cache import ToolCache, ValkeyNodeCache
from langgraph_valkey_cache._client import (
    LocalCache,
    cache_client_from_url,
    client_from_url,
    has_local_cache,
    local_cache_stats,
    with_local_cache,
)
from langgraph_valkey_cache.embedded import EmbeddedValkey
from langgraph_valkey_cache.testing import count_commands
from tests.test_tool_cache import tool_call, tool_graph
from tests.test_tool_cache_scopes import counting_tool

ARRIVAL = 0.05  # generous for an invalidation over loopback


@pytest.fixture
def writer(valkey_url: str) -> Any:
    c = client_from_url(valkey_url)
    yield c
    c.close()


@pytest.fixture
def l1(valkey_url: str) -> Any:
    c = cache_client_from_url(valkey_url, local_cache=True)
    yield c
    c.close()


def test_get_through_execute_command_is_served_locally(l1: Any, writer: Any, prefix: str) -> None:
    key = f"{prefix}:k"
    writer.set(key, b"v1")
    assert l1.execute_command("GET", key) == b"v1"  # the executor's path
    with count_commands() as log:
        for _ in range(5):
            assert l1.execute_command("GET", key) == b"v1"
    assert log.round_trips == 0
    assert local_cache_stats(l1)["hits"] >= 5


def test_overwrite_delete_and_expiry_are_never_served(l1: Any, writer: Any, prefix: str) -> None:
    key = f"{prefix}:k"
    writer.set(key, b"v0")
    assert l1.execute_command("GET", key) == b"v0"
    newest = 0
    for i in range(1, 200):
        writer.set(key, f"v{i}".encode())
        deadline = time.monotonic() + 1.0
        while True:  # the new value within a moment; never an older one after it
            got = int(l1.execute_command("GET", key)[1:])
            assert got >= newest, f"served v{got} after v{newest}"
            newest = got
            if got == i or time.monotonic() > deadline:
                break
        assert newest == i
        if i % 50 == 0:  # and strictly: once the push has had time to arrive
            writer.set(key, b"v-strict")
            time.sleep(ARRIVAL)
            assert l1.execute_command("GET", key) == b"v-strict"
            writer.set(key, f"v{i}".encode())
            time.sleep(ARRIVAL)
    writer.delete(key)
    time.sleep(ARRIVAL)
    assert l1.execute_command("GET", key) is None
    writer.set(key, b"short", px=200)
    assert l1.execute_command("GET", key) == b"short"
    assert l1.execute_command("GET", key) == b"short"  # served locally
    time.sleep(0.2)
    deadline = time.monotonic() + 2.0  # the server's active expiry deletes it and pushes
    while l1.execute_command("GET", key) is not None:
        assert time.monotonic() < deadline, "an expired key was still served"
        time.sleep(0.01)


def test_pipelines_bypass_the_l1_and_invalidate_it(l1: Any, prefix: str) -> None:
    key = f"{prefix}:p"
    l1.set(key, b"a")
    assert l1.execute_command("GET", key) == b"a"
    pipe = l1.pipeline(transaction=False)
    pipe.execute_command("GET", key)
    pipe.execute_command("SET", key, b"b")
    assert pipe.execute() == [b"a", True]  # a pipeline's GET goes to the server
    assert l1.execute_command("GET", key) == b"b"  # our own write invalidated the L1


def test_mget_and_write_through_another_connection(l1: Any, writer: Any, prefix: str) -> None:
    a, b = f"{prefix}:a", f"{prefix}:b"
    writer.mset({a: b"1", b: b"2"})
    assert l1.execute_command("MGET", a, b) == [b"1", b"2"]
    assert l1.execute_command("MGET", a, b) == [b"1", b"2"]
    writer.set(b, b"3")
    time.sleep(ARRIVAL)
    assert l1.execute_command("MGET", a, b) == [b"1", b"3"]


def test_tool_cache_hits_locally_and_stays_coherent(valkey_url: str, prefix: str) -> None:
    plain = client_from_url(valkey_url)
    reader = ToolCache(plain, prefix=prefix, metrics=False, local_cache=True)
    assert reader.local_cache and has_local_cache(reader.client)
    assert not has_local_cache(plain)  # the user's client is not changed
    writer = ToolCache(client_from_url(valkey_url), prefix=prefix, metrics=False)
    calls: list[str] = []
    weather = counting_tool(calls)
    rnode = tool_graph([weather], wrap_tool_call=reader.wrap)
    wnode = tool_graph([weather], wrap_tool_call=writer.wrap)

    def read(call_id: str) -> str:
        return str(rnode.invoke({"messages": [tool_call(call_id, {"city": "Oslo"})]})
                   ["messages"][-1].content)  # fmt: skip

    assert read("r0") == "report 1 for Oslo"
    assert read("r1") == "report 1 for Oslo"
    with count_commands() as log:
        assert read("r2") == "report 1 for Oslo"
    assert log.round_trips == 0  # served in process
    # another process refreshes the entry: the reader sees the new report
    refresh = {"configurable": {"cache_control": {"refresh": True}}}
    wnode.invoke({"messages": [tool_call("w", {"city": "Oslo"})]}, refresh)
    time.sleep(ARRIVAL)
    assert read("r3") == "report 2 for Oslo"
    # another process invalidates it: the reader runs the tool
    assert writer.invalidate("weather", {"city": "Oslo"}) == 1
    time.sleep(ARRIVAL)
    assert read("r4") == "report 3 for Oslo"
    assert len(calls) == 3
    stats = reader.stats()["weather"]  # HGETALL replies over RESP3
    assert stats.hits == 3 and stats.misses == 2
    reader.set_policy("weather", 30)
    assert reader.invalidate("weather") == 1  # SCAN + UNLINK over RESP3
    assert read("r5") == "report 4 for Oslo"
    assert reader.effective_ttl("weather") == 30  # policies re-read (HGETALL) on the call
    reader.close()
    writer.close()
    plain.close()


class S(TypedDict):
    x: int
    y: int


def test_node_cache_hits_locally_and_clear_elsewhere_is_seen(valkey_url: str, prefix: str) -> None:
    reader = ValkeyNodeCache(
        cache_client_from_url(valkey_url, local_cache=True), prefix=prefix, metrics=False,
        local_cache=True,
    )  # fmt: skip
    other = ValkeyNodeCache(client_from_url(valkey_url), prefix=prefix, metrics=False)
    calls: Counter[str] = Counter()

    def work(state: S) -> dict[str, int]:
        calls["work"] += 1
        return {"y": calls["work"]}

    def build(cache: Any) -> Any:
        builder = StateGraph(S)
        builder.add_node("work", work, cache_policy=CachePolicy())
        builder.add_edge(START, "work")
        return builder.compile(cache=cache)

    g, h = build(reader), build(other)
    assert g.invoke({"x": 1})["y"] == 1
    assert g.invoke({"x": 1})["y"] == 1
    with count_commands() as log:
        assert g.invoke({"x": 1})["y"] == 1
    assert log.round_trips == 0
    h.clear_cache()  # another process drops every entry
    time.sleep(ARRIVAL)
    assert g.invoke({"x": 1})["y"] == 2
    assert h.invoke({"x": 1})["y"] == 2  # shared through the server as before
    g.clear_cache()  # SCAN + UNLINK through the L1 client
    assert g.invoke({"x": 1})["y"] == 3
    assert reader.stats().hits >= 2
    reader.close()
    other.close()


async def test_async_l1_is_coherent(valkey_url: str, writer: Any, prefix: str) -> None:
    aclient = cache_client_from_url(valkey_url, asyncio=True, local_cache=True)
    key = f"{prefix}:a"
    writer.set(key, b"1")
    assert await aclient.execute_command("GET", key) == b"1"
    with count_commands() as log:
        assert await aclient.execute_command("GET", key) == b"1"
    assert log.round_trips == 0
    writer.set(key, b"2")
    await asyncio.sleep(ARRIVAL)
    assert await aclient.execute_command("GET", key) == b"2"
    writer.delete(key)
    await asyncio.sleep(ARRIVAL)
    assert await aclient.execute_command("GET", key) is None
    await aclient.aclose()


async def test_async_tool_cache_local(valkey_url: str, prefix: str) -> None:
    aclient = client_from_url(valkey_url, asyncio=True)
    cache = ToolCache(aclient, prefix=prefix, metrics=False, local_cache=True)
    assert has_local_cache(cache.aclient)
    calls: list[str] = []
    node = tool_graph([counting_tool(calls)], awrap_tool_call=cache.awrap)
    for _ in range(3):
        await node.ainvoke({"messages": [tool_call("c", {"city": "Rome"})]})
    assert len(calls) == 1
    assert local_cache_stats(cache.aclient)["hits"] >= 1
    await cache.aclose()
    await aclient.aclose()


@pytest.mark.cluster
def test_cluster_is_refused(cluster_url: str) -> None:
    with pytest.raises(ValueError, match="standalone"):
        cache_client_from_url(cluster_url, local_cache=True)
    client = client_from_url(cluster_url)
    with pytest.raises(ValueError, match="standalone"):
        with_local_cache(client)
    client.close()


def test_local_cache_bounds_and_max_age() -> None:
    cache = LocalCache(max_size=3, max_age=0.05)
    for i in range(10):
        cache.set(("GET", f"k{i}"), b"v", [f"k{i}"])
    assert len(cache) == 3
    assert set(cache._by_key) == {"k7", "k8", "k9"}  # evicted from every index
    assert cache.get(("GET", "k0")) is None and cache.get(("GET", "k9")) == b"v"
    cache.set(("MGET", "k8", "k9"), [b"a", b"b"], ["k8", "k9"])
    reply = cache.get(("MGET", "k8", "k9"))
    reply.append(b"mutated")  # a caller's change never reaches the cached reply
    assert cache.get(("MGET", "k8", "k9")) == [b"a", b"b"]
    cache.invalidate_key(b"k9")
    assert cache.get(("GET", "k9")) is None and cache.get(("MGET", "k8", "k9")) is None
    cache.set(("GET", "nil"), None, ["nil"])
    assert len(cache) <= 3 and ("GET", "nil") not in cache._entries  # misses not kept
    time.sleep(0.06)
    assert cache.get(("GET", "k8")) is None  # older than max_age
    with pytest.raises(ValueError):
        LocalCache(max_size=0)


def test_a_write_drops_only_its_key(l1: Any, writer: Any, prefix: str) -> None:
    """valkey-py 6.2's blocking pool reconnects (flushing the whole L1) when a pending
    invalidation sits on a connection at checkout; ours reads the push instead."""
    a, b = f"{prefix}:a", f"{prefix}:b"
    writer.mset({a: b"1", b: b"2"})
    assert l1.execute_command("GET", a) == b"1"
    assert l1.execute_command("GET", b) == b"2"
    writer.set(b, b"3")
    time.sleep(ARRIVAL)
    with count_commands() as log:
        assert l1.execute_command("GET", a) == b"1"
    assert log.round_trips == 0 and log.handshakes == 0  # a is still local, no reconnect
    assert l1.execute_command("GET", b) == b"3"
    assert local_cache_stats(l1)["entries"] == 2


def test_a_restarted_server_is_asked_again_sync() -> None:
    """The connection's invalidations die with it: after a restart (empty, same port)
    nothing from the old L1 is served, and no pool slot is lost on the way."""
    server = EmbeddedValkey().start()
    try:
        client = cache_client_from_url(server.url, local_cache=True, max_connections=2)
        client.set("k", b"old")
        held = [client.connection_pool.get_connection("GET") for _ in range(2)]
        for conn in held:  # both pooled connections open, each caching k
            client.connection_pool.release(conn)
        for _ in range(4):
            assert client.execute_command("GET", "k") == b"old"
        server.kill()
        for _ in range(3):
            with pytest.raises(ValkeyConnectionError):
                client.execute_command("GET", "k")  # not served from the L1
        assert client.connection_pool.idle_count() == 2  # every connection came back
        server.start()
        assert client.execute_command("GET", "k") is None
        client.close()
    finally:
        server.stop()


async def test_a_restarted_server_is_asked_again_async() -> None:
    server = EmbeddedValkey().start()
    try:
        client = cache_client_from_url(server.url, asyncio=True, local_cache=True)
        await client.set("k", b"old")
        assert await client.execute_command("GET", "k") == b"old"
        assert await client.execute_command("GET", "k") == b"old"
        server.kill()
        await asyncio.sleep(ARRIVAL)  # the loop sees the connection close
        with pytest.raises(ValkeyConnectionError):
            await client.execute_command("GET", "k")
        server.start()
        assert await client.execute_command("GET", "k") is None
        await client.aclose()
    finally:
        server.stop()


def test_tool_cache_fails_open_not_stale_when_the_server_dies(prefix: str) -> None:
    server = EmbeddedValkey().start()
    try:
        cache = ToolCache(
            client_from_url(server.url), prefix=prefix, metrics=False, local_cache=True
        )
        calls: list[str] = []
        node = tool_graph([counting_tool(calls)], wrap_tool_call=cache.wrap)

        def read() -> str:
            out = node.invoke({"messages": [tool_call("c", {"city": "Oslo"})]})
            return str(out["messages"][-1].content)

        assert read() == read() == "report 1 for Oslo"
        server.kill()
        assert read() == "report 2 for Oslo"  # the tool ran: no server, no L1 answer
        server.start()
        time.sleep(2.1)  # the breaker lets a probe through again
        assert read() == "report 3 for Oslo"  # an empty server: a miss, not the old L1
    finally:
        server.stop()


def test_threads_each_stay_coherent(l1: Any, writer: Any, prefix: str) -> None:
    """Several threads (so several pooled connections, each with its own L1) read while
    another client keeps writing: no thread sees a value go back, all see the last."""
    import threading

    key = f"{prefix}:n"
    writer.set(key, b"0")
    stop = threading.Event()
    errors: list[str] = []
    finals: list[int] = []

    def reader() -> None:
        seen = 0
        while not stop.is_set():
            got = int(l1.execute_command("GET", key))
            if got < seen:
                errors.append(f"{got} after {seen}")
            seen = got
        time.sleep(ARRIVAL)
        finals.append(int(l1.execute_command("GET", key)))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(1, 101):
        writer.set(key, str(i).encode())
        time.sleep(0.003)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert finals == [100] * 4
    assert local_cache_stats(l1)["hits"] > 0  # the reads were served locally in between


async def test_async_node_cache_local(valkey_url: str, writer: Any, prefix: str) -> None:
    aclient = client_from_url(valkey_url, asyncio=True)
    cache = ValkeyNodeCache(aclient, prefix=prefix, metrics=False, local_cache=True)
    calls: Counter[str] = Counter()

    async def work(state: S) -> dict[str, int]:
        calls["work"] += 1
        return {"y": calls["work"]}

    builder = StateGraph(S)
    builder.add_node("work", work, cache_policy=CachePolicy())
    builder.add_edge(START, "work")
    g = builder.compile(cache=cache)
    assert (await g.ainvoke({"x": 1}))["y"] == 1
    assert (await g.ainvoke({"x": 1}))["y"] == 1
    with count_commands() as log:
        assert (await g.ainvoke({"x": 1}))["y"] == 1
    assert log.round_trips == 0
    for key in writer.scan_iter(match=f"{prefix}:n:*"):
        writer.delete(key)  # another client drops the entry
    await asyncio.sleep(ARRIVAL)
    assert (await g.ainvoke({"x": 1}))["y"] == 2
    await cache.aclose()
    await aclient.aclose()


def test_llm_cache_local_cache_flag_hits_locally_and_stays_coherent(
    valkey_url: str, prefix: str
) -> None:
    from langchain_core.outputs import Generation

    from langgraph_valkey_cache import ValkeyCache

    plain = client_from_url(valkey_url)
    reader = ValkeyCache(plain, prefix=prefix, metrics=False, local_cache=True)
    assert has_local_cache(reader.client) and not has_local_cache(plain)
    writer = ValkeyCache(client_from_url(valkey_url), prefix=prefix, metrics=False)
    writer.update("p", "m", [Generation(text="one")])
    assert reader.lookup("p", "m") == [Generation(text="one")]
    with count_commands() as log:
        assert reader.lookup("p", "m") == [Generation(text="one")]
    assert log.round_trips == 0  # served in process
    writer.update("p", "m", [Generation(text="two")])  # overwritten elsewhere
    time.sleep(ARRIVAL)
    assert reader.lookup("p", "m") == [Generation(text="two")]
    writer.clear()
    time.sleep(ARRIVAL)
    assert reader.lookup("p", "m") is None
    reader.close()
    writer.close()
    plain.close()
