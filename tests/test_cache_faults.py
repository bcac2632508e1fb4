"""The caches' fault contract, proven on real servers (README "Faults").

Whatever happens to the server (kill -9, SIGSTOP shorter and longer than the budget,
``DEBUG SLEEP``, ``CLIENT PAUSE``, restart), every agent step that goes through a cache
(an LLM call with ``cache=``, a cached graph node, a cached tool, an embedding, an agent's
model call through ``ModelCacheMiddleware`` with single-flight, a ``@cached`` function;
the semantic cache: ``tests/test_semantic_faults.py``) finishes
within the latency budget plus a second with the model, node, tool or embedder called;
when the server is back the same objects hit again within 2 s. The checkpointer and the
store fail closed: they raise within their socket timeout plus a second.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypedDict

import pytest
import valkey
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
)
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import CachePolicy

from langgraph_valkey_cache import (
    CachedEmbeddings,
    ToolCache,
    ValkeyByteStore,
    ValkeyCache,
    ValkeyNodeCache,
    ValkeySaver,
    ValkeyStore,
    cache_client_from_url,
    cached,
    client_from_url,
)
from langgraph_valkey_cache._failopen import breaker_for
from langgraph_valkey_cache.cache.middleware import ModelCacheMiddleware
from langgraph_valkey_cache.embedded import EmbeddedValkey
from langgraph_valkey_cache.testing import HashingEmbeddings, ScriptedModel

BUDGET = 0.25
SLACK = 1.0  # "within the budget plus a second"
RECOVERY = 2.0


class _State(TypedDict, total=False):
    x: int
    y: int


class Rig:
    """One of each cache on one server, and a step that goes through each."""

    def __init__(self, url: str, *, asyncio_: bool) -> None:
        self.asyncio = asyncio_
        self.client = cache_client_from_url(url, asyncio=asyncio_, timeout=BUDGET)
        prefix = f"f{uuid.uuid4().hex[:8]}"
        self.ran: dict[str, int] = {"node": 0, "tool": 0, "cached": 0}
        rig = self

        self.model = ScriptedModel(
            script=["answer"], cache=ValkeyCache(self.client, prefix=f"{prefix}l", metrics=False)
        )

        def node(state: _State) -> _State:
            rig.ran["node"] += 1
            return {"y": state["x"] + 1}

        builder = StateGraph(_State)
        builder.add_node("n", node, cache_policy=CachePolicy(ttl=60))
        builder.add_edge(START, "n")
        self.graph = builder.compile(
            cache=ValkeyNodeCache(self.client, prefix=f"{prefix}n", metrics=False)
        )

        @tool
        def weather(city: str) -> str:
            """Weather of a city."""
            rig.ran["tool"] += 1
            return f"sunny in {city}"

        tools = ToolCache(self.client, prefix=f"{prefix}t", metrics=False)
        tb = StateGraph(MessagesState)
        tb.add_node(
            "tools", ToolNode([weather], wrap_tool_call=tools.wrap, awrap_tool_call=tools.awrap)
        )
        tb.add_edge(START, "tools")
        self.tools = tb.compile()

        store = ValkeyByteStore(self.client, prefix=f"{prefix}e", metrics=False)
        self.embedder = HashingEmbeddings(16)
        self.embeddings = CachedEmbeddings(self.embedder, store)

        self.agent_model = ScriptedModel(script=["done"])
        middleware = ModelCacheMiddleware(
            ValkeyCache(self.client, prefix=f"{prefix}m", metrics=False)
        )
        self.agent = create_agent(self.agent_model, [], middleware=[middleware])

        if asyncio_:

            @cached(tools, name="lookup")
            async def lookup(text: str) -> str:
                rig.ran["cached"] += 1
                return text.upper()

        else:

            @cached(tools, name="lookup")
            def lookup(text: str) -> str:
                rig.ran["cached"] += 1
                return text.upper()

        self.lookup = lookup

    def steps(self, tag: str) -> list[tuple[str, Callable[[], Any]]]:
        call = {
            "messages": [
                AIMessage("", tool_calls=[{"name": "weather", "args": {"city": tag}, "id": "c1"}])
            ]
        }
        question = {"messages": [HumanMessage(f"hi {tag}")]}
        if self.asyncio:
            return [
                ("llm", lambda: self.model.ainvoke(f"q {tag}")),
                ("node", lambda: self.graph.ainvoke({"x": len(tag)})),
                ("tool", lambda: self.tools.ainvoke(call)),
                ("embed", lambda: self.embeddings.aembed_query(tag)),
                ("agent", lambda: self.agent.ainvoke(question)),
                ("cached", lambda: self.lookup(tag)),
            ]
        return [
            ("llm", lambda: self.model.invoke(f"q {tag}")),
            ("node", lambda: self.graph.invoke({"x": len(tag)})),
            ("tool", lambda: self.tools.invoke(call)),
            ("embed", lambda: self.embeddings.embed_query(tag)),
            ("agent", lambda: self.agent.invoke(question)),
            ("cached", lambda: self.lookup(tag)),
        ]

    def runs(self, name: str) -> int:
        """How many times step ``name``'s real work (model, node, tool...) ran."""
        counted = {"llm": self.model, "agent": self.agent_model}
        if name in counted:
            return counted[name].calls
        return self.embedder.queries if name == "embed" else self.ran[name]

    async def run(self, fn: Callable[[], Any]) -> float:
        start = time.monotonic()
        result = fn()
        if isinstance(result, Awaitable):
            await result
        return time.monotonic() - start

    async def step_all(self, tag: str) -> dict[str, tuple[float, bool]]:
        """Each step once: ``name -> (seconds, whether the real work ran)``."""
        out = {}
        for name, fn in self.steps(tag):
            before = self.runs(name)
            elapsed = await self.run(fn)
            out[name] = (elapsed, self.runs(name) > before)
        return out

    async def close(self) -> None:
        if self.asyncio:
            await self.client.aclose()
        else:
            self.client.close()


@pytest.fixture
def server() -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey(extra_args=["--enable-debug-command", "yes"]) as s:
        yield s


@contextmanager
def stopped(server: EmbeddedValkey) -> Iterator[None]:
    pid = server._proc.pid  # type: ignore[union-attr]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def assert_fails_open_for(rig: Rig, seconds: float, max_rounds: int = 5000) -> int:
    """Step through every cache until ``seconds`` pass: each step within the budget plus
    a second, with the real work done every time. Returns how many rounds ran."""
    end = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < end and rounds < max_rounds:
        for name, (elapsed, ran) in (await rig.step_all(f"fault{rounds % 3}")).items():
            assert elapsed < BUDGET + SLACK, (name, elapsed)
            assert ran, f"{name}: the real work must run while the cache is unavailable"
        rounds += 1
        await asyncio.sleep(0.005)  # an agent does other work between steps
    assert time.monotonic() >= end, "the fault must last the whole time asked for"
    return rounds


async def assert_hits_again(rig: Rig) -> float:
    """After the server is back: every cache serves a hit within RECOVERY seconds."""
    start = time.monotonic()
    pending = {name for name, _ in rig.steps("back")}
    while pending:
        assert time.monotonic() - start < RECOVERY, f"no hit yet from {sorted(pending)}"
        for name, (_, ran) in (await rig.step_all("back")).items():
            if not ran:
                pending.discard(name)
        await asyncio.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture(autouse=True)
def _fresh_breakers() -> Iterator[None]:
    yield


FLAVOURS = ["sync", "async"]


@pytest.fixture(params=FLAVOURS)
async def rig(server: EmbeddedValkey, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    """A sync or async rig on ``server``, warm: every step ran once."""
    rig = Rig(server.url, asyncio_=request.param == "async")
    await rig.step_all("warm")
    yield rig
    await rig.close()


async def test_sigstop_longer_than_the_budget(server: EmbeddedValkey, rig: Rig) -> None:
    assert not any(ran for _, ran in (await rig.step_all("warm")).values())  # all hits
    with stopped(server):
        rounds = await assert_fails_open_for(rig, 12.0)
    assert rounds > 10
    await assert_hits_again(rig)


async def test_sigstop_for_a_minute_sync_and_async(server: EmbeddedValkey) -> None:
    rigs = [Rig(server.url, asyncio_=False), Rig(server.url, asyncio_=True)]
    for rig in rigs:
        await rig.step_all("warm")
    with stopped(server):
        end = time.monotonic() + 60
        while time.monotonic() < end:
            for rig in rigs:
                await assert_fails_open_for(rig, 0.5)
    for rig in rigs:
        await assert_hits_again(rig)
        await rig.close()


async def test_sigstop_shorter_than_the_budget(server: EmbeddedValkey, rig: Rig) -> None:
    """A 0.1 s stall is absorbed: the steps just take a little longer, and hit."""
    pid = server._proc.pid  # type: ignore[union-attr]
    os.kill(pid, signal.SIGSTOP)
    threading.Timer(0.1, os.kill, (pid, signal.SIGCONT)).start()
    results = await rig.step_all("warm")
    assert all(elapsed < BUDGET + SLACK for elapsed, _ in results.values())
    await assert_hits_again(rig)


def _blocking(server: EmbeddedValkey, *command: Any) -> threading.Thread:
    """Run a server-blocking command from its own connection, in a thread."""

    def run() -> None:
        c = valkey.Valkey.from_url(server.url, socket_timeout=60)
        try:
            c.execute_command(*command)
        finally:
            c.close()

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.1)  # let it reach the server first
    return t


async def test_debug_sleep(server: EmbeddedValkey, rig: Rig) -> None:
    t = _blocking(server, "DEBUG", "SLEEP", "12")
    await assert_fails_open_for(rig, 10.0)
    t.join()
    await assert_hits_again(rig)


async def test_client_pause(server: EmbeddedValkey, rig: Rig) -> None:
    admin = valkey.Valkey.from_url(server.url)
    paused_until = time.monotonic() + 4.0
    admin.execute_command("CLIENT", "PAUSE", "4000", "ALL")
    await assert_fails_open_for(rig, 3.5)
    admin.close()
    time.sleep(max(0.0, paused_until - time.monotonic()))  # the server's own clock ends it
    await assert_hits_again(rig)


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_kill_and_restart(flavour: str, caplog: pytest.LogCaptureFixture) -> None:
    server = EmbeddedValkey().start()
    rig = Rig(server.url, asyncio_=flavour == "async")
    try:
        await rig.step_all("warm")
        server.kill()
        caplog.set_level(logging.WARNING, "langgraph_valkey_cache")
        await assert_fails_open_for(rig, 3.0)
        # one warning for the outage, not one per cache or per call
        assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1
        server = EmbeddedValkey(port=server.port).start()  # back, empty
        took = await assert_hits_again(rig)
        assert took < RECOVERY
    finally:
        await rig.close()
        server.stop()


@pytest.mark.parametrize("connected", [True, False], ids=["reading", "connecting"])
async def test_async_budget_holds_on_a_client_without_timeouts(
    server: EmbeddedValkey, connected: bool
) -> None:
    """A user's async client with no socket timeout: the deadline still bounds the call,
    on a connection it holds (reading) and on none yet (the kernel accepts the connect,
    the stopped server never answers the handshake)."""
    client = valkey.asyncio.Valkey.from_url(server.url)
    cache = ValkeyCache(client, prefix=f"u{uuid.uuid4().hex[:6]}", metrics=False, timeout=BUDGET)
    if connected:
        await cache.aupdate("p", "m", [])
    with stopped(server):
        start = time.monotonic()
        assert await cache.alookup("p", "m") is None
        assert time.monotonic() - start < BUDGET + SLACK
    await client.aclose()


def test_sync_client_without_socket_timeout_warns(
    server: EmbeddedValkey, caplog: pytest.LogCaptureFixture
) -> None:
    client = valkey.Valkey.from_url(server.url)
    with caplog.at_level(logging.WARNING, "langgraph_valkey_cache"):
        ValkeyCache(client, metrics=False)
    assert "no socket_timeout" in caplog.text
    client.close()


# -- permanent errors and our own bugs: fail open, loudly, labelled by reason --------------


def test_acl_denial_fails_open_with_a_reason(
    server: EmbeddedValkey, caplog: pytest.LogCaptureFixture
) -> None:
    admin = valkey.Valkey.from_url(server.url)
    admin.execute_command("ACL", "SETUSER", "nocache", "on", ">pw", "~other:*", "+@all")
    client = cache_client_from_url(server.url.replace("//", "//nocache:pw@"))
    cache = ValkeyCache(client, prefix="denied", metrics=False, stats_flush_interval=0)
    model = FakeListChatModel(responses=["fresh"], cache=cache)
    with caplog.at_level(logging.ERROR, "langgraph_valkey_cache"):
        assert model.invoke("hi").content == "fresh"
        assert model.invoke("hi").content == "fresh"
    assert sum("(acl)" in r.getMessage() for r in caplog.records) == 1  # once, loudly
    assert breaker_for(client).closed  # a permanent error is not an outage
    reader = ValkeyCache(admin, prefix="denied", metrics=False)
    admin_stats = reader.stats()
    assert admin_stats.errors_by_reason.get("acl", 0) == 0  # the denied user cannot write stats
    client.close()
    admin.close()


def test_oom_fails_open_and_is_counted(
    server: EmbeddedValkey, caplog: pytest.LogCaptureFixture
) -> None:
    admin = valkey.Valkey.from_url(server.url)
    client = cache_client_from_url(server.url)
    cache = ValkeyCache(client, prefix="oom", metrics=False, stats_flush_interval=3600)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")
    try:
        with caplog.at_level(logging.ERROR, "langgraph_valkey_cache"):
            cache.update("p", "m", [])
            cache.update("p2", "m", [])
        assert sum("(oom)" in r.getMessage() for r in caplog.records) == 1
        assert cache.shared_stats.pending[cache.shared_stats.key]["errors.oom"] == 2
    finally:
        admin.config_set("maxmemory", "0")
    assert cache.stats().errors_by_reason == {"oom": 2}
    client.close()
    admin.close()


def test_a_bug_in_cache_code_never_crashes_the_node(
    server: EmbeddedValkey, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenSerde:
        def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
            raise RuntimeError("serde bug")

        def loads_typed(self, data: tuple[str, bytes]) -> Any:
            raise RuntimeError("serde bug")

    calls = 0

    def node(state: _State) -> _State:
        nonlocal calls
        calls += 1
        return {"y": 1}

    builder = StateGraph(_State)
    builder.add_node("n", node, cache_policy=CachePolicy(ttl=60))
    builder.add_edge(START, "n")
    client = cache_client_from_url(server.url)
    cache = ValkeyNodeCache(client, serde=BrokenSerde(), metrics=False, stats_flush_interval=0)  # type: ignore[arg-type]
    graph = builder.compile(cache=cache)
    with caplog.at_level(logging.ERROR, "langgraph_valkey_cache"):
        assert graph.invoke({"x": 1}) == {"x": 1, "y": 1}
        assert graph.invoke({"x": 1}) == {"x": 1, "y": 1}
    assert calls == 2
    bug_logs = [r for r in caplog.records if "(bug)" in r.getMessage()]
    assert len(bug_logs) == 1 and bug_logs[0].exc_info is not None  # with its traceback
    assert cache.stats().errors_by_reason["bug"] == 2
    client.close()


# -- the checkpointer and the store fail closed, within a bound ----------------------------


def test_saver_and_store_raise_within_the_socket_timeout(server: EmbeddedValkey) -> None:
    from langgraph.checkpoint.base import empty_checkpoint

    timeout = 1.0
    client = client_from_url(server.url, timeout=timeout)
    saver = ValkeySaver(client, metrics=False)
    store = ValkeyStore(client, metrics=False)
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
    saver.put(config, empty_checkpoint(), {}, {})
    with stopped(server):
        for name, op in [
            ("get_tuple", lambda: saver.get_tuple(config)),
            ("put", lambda: saver.put(config, empty_checkpoint(), {}, {})),
            ("store.put", lambda: store.put(("ns",), "k", {"v": 1})),
            ("store.get", lambda: store.get(("ns",), "k")),
        ]:
            start = time.monotonic()
            with pytest.raises(valkey.exceptions.TimeoutError):
                op()
            assert time.monotonic() - start < timeout + 1.0, name
    assert saver.get_tuple(config) is not None  # fine again after the stall
    client.close()


async def test_async_saver_and_store_raise_within_the_socket_timeout(
    server: EmbeddedValkey,
) -> None:
    """The async savers and stores send through the async lean path: its reads keep the
    client's socket timeout, so a stall raises within it, and the next call after the
    stall gets its own reply (never the stalled command's late one)."""
    from langgraph.checkpoint.base import empty_checkpoint

    from langgraph_valkey_cache import AsyncValkeySaver, AsyncValkeyStore

    timeout = 1.0
    client = client_from_url(server.url, timeout=timeout, asyncio=True)
    saver = AsyncValkeySaver(client, metrics=False)
    store = AsyncValkeyStore(client, metrics=False)
    config = {"configurable": {"thread_id": "ta", "checkpoint_ns": ""}}
    await saver.aput(config, empty_checkpoint(), {}, {})
    await store.aput(("ns",), "k", {"v": 1})
    with stopped(server):
        for name, op in [
            ("aget_tuple", lambda: saver.aget_tuple(config)),
            ("aput", lambda: saver.aput(config, empty_checkpoint(), {}, {})),
            ("store.aput", lambda: store.aput(("ns",), "k2", {"v": 2})),
            ("store.aget", lambda: store.aget(("ns",), "k")),
        ]:
            start = time.monotonic()
            with pytest.raises(valkey.exceptions.TimeoutError):
                await op()
            assert time.monotonic() - start < timeout + 1.0, name
    assert await saver.aget_tuple(config) is not None  # fine again after the stall
    item = await store.aget(("ns",), "k")
    assert item is not None and item.value == {"v": 1}
    await client.aclose()
