"""ValkeySaver / AsyncValkeySaver behaviour beyond the conformance suite: round-trip
budgets, graphs (subgraph, interrupt, resume, time travel), DeltaChannel history and
pruning, TTL, key safety, and the failure policy."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import operator
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import pytest
import valkey
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_metadata
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from typing_extensions import TypedDict

from langgraph_valkey_cache import AsyncValkeySaver, ValkeySaver
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache._serde import strict_serde
from langgraph_valkey_cache.embedded import EmbeddedValkey
from langgraph_valkey_cache.testing import count_commands


def _cfg(thread: str, ns: str = "", cid: str | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ns}
    if cid:
        conf["checkpoint_id"] = cid
    return {"configurable": conf}


def _put_chain(saver: ValkeySaver, thread: str, n: int, ns: str = "") -> list[dict[str, Any]]:
    configs: list[dict[str, Any]] = []
    parent: str | None = None
    for i in range(n):
        cp = generate_checkpoint(channel_values={"a": i}, channel_versions={"a": i + 1})
        configs.append(
            saver.put(_cfg(thread, ns, parent), cp, generate_metadata(step=i), {"a": i + 1})
        )
        parent = configs[-1]["configurable"]["checkpoint_id"]
    return configs


# -- round-trip budget --------------------------------------------------------------


def test_round_trip_budget_sync(any_url: str, prefix: str) -> None:
    client = client_from_url(any_url)
    saver = ValkeySaver(client, prefix=prefix)
    warm = _put_chain(saver, "warm", 2)  # loads scripts and the cluster slot map
    saver.put_writes(warm[-1], [("a", 1)], "t")
    saver.get_tuple(warm[-1])
    list(saver.list(_cfg("warm"), limit=10))

    thread = "budget"
    cp0 = generate_checkpoint(channel_values={"a": 0}, channel_versions={"a": 1})
    with count_commands() as log:
        first = saver.put(_cfg(thread), cp0, generate_metadata(), {"a": 1})
    # a new thread: the put script, then the thread index (another slot)
    assert log.round_trips == 2 and log.commands == ["EVALSHA", "EVALSHA"], log.commands
    cp = generate_checkpoint(channel_values={"a": 1, "b": "x"}, channel_versions={"a": 1, "b": 1})
    with count_commands() as log:
        stored = saver.put(
            _cfg(thread, cid=first["configurable"]["checkpoint_id"]),
            cp,
            generate_metadata(),
            {"a": 1, "b": 1},
        )
    assert log.round_trips == 1 and log.commands == ["EVALSHA"], log.commands
    with count_commands() as log:
        saver.put_writes(stored, [("a", 2), ("b", "y")], "task-1", "path")
    assert log.round_trips == 1, log.commands
    for config in (_cfg(thread), stored):
        with count_commands() as log:
            tup = saver.get_tuple(config)
        assert log.round_trips == 1, log.commands
        assert tup is not None and tup.checkpoint["channel_values"] == {"a": 1, "b": "x"}
        assert tup.pending_writes == [("task-1", "a", 2), ("task-1", "b", "y")]
    _put_chain(saver, "many", 25)
    with count_commands() as log:
        got = list(saver.list(_cfg("many"), limit=10))
    assert len(got) == 10 and log.round_trips <= 2, log.commands
    client.close()


async def test_round_trip_budget_async(any_url: str, prefix: str) -> None:
    client = client_from_url(any_url, asyncio=True)
    saver = AsyncValkeySaver(client, prefix=prefix)
    cp0 = generate_checkpoint(channel_values={"a": 0}, channel_versions={"a": 1})
    warm = await saver.aput(_cfg("warm"), cp0, generate_metadata(), {"a": 1})
    await saver.aput_writes(warm, [("a", 1)], "t")
    await saver.aget_tuple(warm)
    _ = [t async for t in saver.alist(_cfg("warm"), limit=10)]

    with count_commands() as log:
        first = await saver.aput(_cfg("budget"), cp0, generate_metadata(), {"a": 1})
    assert log.round_trips == 2, log.commands  # a new thread: plus its index entry
    cp = generate_checkpoint(channel_values={"a": 1}, channel_versions={"a": 1})
    with count_commands() as log:
        stored = await saver.aput(
            _cfg("budget", cid=first["configurable"]["checkpoint_id"]),
            cp,
            generate_metadata(),
            {"a": 1},
        )
    assert log.round_trips == 1 and log.commands == ["EVALSHA"], log.commands
    with count_commands() as log:
        await saver.aput_writes(stored, [("a", 2)], "task-1")
    assert log.round_trips == 1, log.commands
    with count_commands() as log:
        tup = await saver.aget_tuple(_cfg("budget"))
    assert log.round_trips == 1 and tup is not None and tup.pending_writes == [("task-1", "a", 2)]
    parent = None
    for i in range(15):
        c = generate_checkpoint(channel_values={"a": i}, channel_versions={"a": i + 1})
        parent = (await saver.aput(_cfg("many", cid=parent), c, generate_metadata(), {"a": i + 1}))[
            "configurable"
        ]["checkpoint_id"]
    with count_commands() as log:
        got = [t async for t in saver.alist(_cfg("many"), limit=10)]
    assert len(got) == 10 and log.round_trips <= 2
    await client.aclose()


def test_unchanged_channels_are_not_rewritten(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix)
    big = "x" * 10_000
    cp1 = generate_checkpoint(
        channel_values={"big": big, "n": 1}, channel_versions={"big": 1, "n": 1}
    )
    c1 = saver.put(_cfg("t"), cp1, generate_metadata(), {"big": 1, "n": 1})
    cp2 = generate_checkpoint(
        channel_values={"big": big, "n": 2}, channel_versions={"big": 1, "n": 2}
    )
    with count_commands() as log:
        saver.put(
            _cfg("t", cid=c1["configurable"]["checkpoint_id"]), cp2, generate_metadata(), {"n": 2}
        )
    assert log.round_trips == 1
    blobs = client.hgetall(saver.keys.base("t") + "b:")
    assert len(blobs) == 3  # big@1, n@1, n@2: big stored once
    assert saver.get_tuple(_cfg("t")).checkpoint["channel_values"] == {"big": big, "n": 2}
    client.close()


# -- graphs -----------------------------------------------------------------------


class State(TypedDict):
    log: Annotated[list[str], operator.add]


def _build_graph() -> Any:
    def sub_step(state: State) -> dict[str, Any]:
        return {"log": ["sub"]}

    sub = StateGraph(State)
    sub.add_node("sub_step", sub_step)
    sub.add_edge(START, "sub_step")
    sub.add_edge("sub_step", END)

    def ask(state: State) -> dict[str, Any]:
        answer = interrupt("approve?")
        return {"log": [f"answer:{answer}"]}

    def finish(state: State) -> dict[str, Any]:
        return {"log": ["done"]}

    builder = StateGraph(State)
    builder.add_node("child", sub.compile())
    builder.add_node("ask", ask)
    builder.add_node("finish", finish)
    builder.add_edge(START, "child")
    builder.add_edge("child", "ask")
    builder.add_edge("ask", "finish")
    builder.add_edge("finish", END)
    return builder


def _scenario(graph: Any) -> list[Any]:
    """Interrupt, resume, history, replay and a fork: a transcript to compare."""
    config = {"configurable": {"thread_id": "g1"}}
    out: list[Any] = []
    first = graph.invoke({"log": ["start"]}, config)
    out.append(("interrupted", "__interrupt__" in first, graph.get_state(config).next))
    out.append(("resumed", graph.invoke(Command(resume="yes"), config)["log"]))
    history = list(graph.get_state_history(config))
    out.append(("history", [s.next for s in history], [s.metadata["step"] for s in history]))
    before_ask = next(s for s in history if s.next == ("ask",))
    out.append(("replay", graph.invoke(None, before_ask.config)["log"]))
    forked = graph.update_state(before_ask.config, {"log": ["edited"]})
    out.append(("fork-next", graph.get_state(forked).next))
    out.append(("fork-resumed", graph.invoke(Command(resume="no"), forked)["log"]))
    out.append(("latest", graph.get_state(config).values["log"]))
    out.append(("history-len", len(list(graph.get_state_history(config)))))
    return out


async def _ascenario(graph: Any) -> list[Any]:
    config = {"configurable": {"thread_id": "g1"}}
    out: list[Any] = []
    first = await graph.ainvoke({"log": ["start"]}, config)
    out.append(("interrupted", "__interrupt__" in first, (await graph.aget_state(config)).next))
    out.append(("resumed", (await graph.ainvoke(Command(resume="yes"), config))["log"]))
    history = [s async for s in graph.aget_state_history(config)]
    out.append(("history", [s.next for s in history], [s.metadata["step"] for s in history]))
    before_ask = next(s for s in history if s.next == ("ask",))
    out.append(("replay", (await graph.ainvoke(None, before_ask.config))["log"]))
    forked = await graph.aupdate_state(before_ask.config, {"log": ["edited"]})
    out.append(("fork-next", (await graph.aget_state(forked)).next))
    out.append(("fork-resumed", (await graph.ainvoke(Command(resume="no"), forked))["log"]))
    out.append(("latest", (await graph.aget_state(config)).values["log"]))
    out.append(("history-len", len([s async for s in graph.aget_state_history(config)])))
    return out


def test_graph_interrupt_resume_time_travel_sync(any_url: str, prefix: str) -> None:
    expected = _scenario(_build_graph().compile(checkpointer=InMemorySaver()))
    assert expected[0] == ("interrupted", True, ("ask",))
    assert "answer:no" in expected[-3][1] and "edited" in expected[-3][1]
    with ValkeySaver.from_conn_string(any_url, prefix=prefix) as saver:
        assert _scenario(_build_graph().compile(checkpointer=saver)) == expected
        # subgraph checkpoints live in their own namespace of the same thread
        config = {"configurable": {"thread_id": "g1"}}
        namespaces = {t.config["configurable"]["checkpoint_ns"] for t in saver.list(config)}
        assert "" in namespaces and any(ns.startswith("child:") for ns in namespaces)


async def test_graph_interrupt_resume_time_travel_async(any_url: str, prefix: str) -> None:
    expected = _scenario(_build_graph().compile(checkpointer=InMemorySaver()))
    async with AsyncValkeySaver.from_conn_string(any_url, prefix=prefix) as saver:
        assert await _ascenario(_build_graph().compile(checkpointer=saver)) == expected
        config = {"configurable": {"thread_id": "g1"}}
        # sync calls from another thread are bridged onto the saver's loop
        result: list[Any] = []
        worker = threading.Thread(target=lambda: result.append(saver.get_tuple(config)))
        worker.start()
        while worker.is_alive():
            await asyncio.sleep(0.01)
        assert result[0].checkpoint["channel_values"]["log"] == expected[-2][1]
        # ...and refused on the loop's own thread
        with pytest.raises(asyncio.InvalidStateError):
            saver.get_tuple(config)


# -- DeltaChannel --------------------------------------------------------------------


def _concat(base: list[str], updates: Sequence[list[str]]) -> list[str]:
    return base + [x for u in updates for x in u]


class DeltaState(TypedDict):
    items: Annotated[list[str], DeltaChannel(_concat, snapshot_frequency=3)]


def _delta_graph() -> Any:
    builder = StateGraph(DeltaState)
    builder.add_node("add", lambda s: {"items": [f"i{len(s['items'])}"]})
    builder.add_edge(START, "add")
    builder.add_edge("add", END)
    return builder


def test_delta_channel_history_matches_in_memory(valkey_url: str, prefix: str) -> None:
    reference = InMemorySaver()
    with ValkeySaver.from_conn_string(valkey_url, prefix=prefix) as saver:
        for cp in (reference, saver):
            graph = _delta_graph().compile(checkpointer=cp)
            config = {"configurable": {"thread_id": "d1"}}
            for _ in range(7):
                graph.invoke({"items": ["in"]}, config)
        config = {"configurable": {"thread_id": "d1", "checkpoint_ns": ""}}
        ours = saver.get_delta_channel_history(config=config, channels=["items"])
        theirs = reference.get_delta_channel_history(config=config, channels=["items"])
        assert [w[1:] for w in ours["items"]["writes"]] == [
            w[1:] for w in theirs["items"]["writes"]
        ]
        assert ours["items"].get("seed") == theirs["items"].get("seed")
        assert "seed" in ours["items"] and ours["items"]["writes"]

        graph = _delta_graph().compile(checkpointer=saver)
        state_before = graph.get_state(config).values
        n_before = len(list(saver.list(config)))
        saver.prune(["d1"], strategy="keep_latest")
        n_after = len(list(saver.list(config)))
        # fewer checkpoints, but the delta channel still reconstructs exactly
        assert 1 < n_after < n_before
        assert graph.get_state(config).values == state_before
        graph.invoke({"items": ["more"]}, config)
        assert (
            graph.get_state(config).values["items"][: len(state_before["items"])]
            == state_before["items"]
        )


def test_prune_keep_latest_without_delta_keeps_one_and_collects_blobs(
    valkey_url: str, prefix: str
) -> None:
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix)
    _put_chain(saver, "p", 5)
    saver.prune(["p"])
    assert len(list(saver.list(_cfg("p")))) == 1
    assert client.hlen(saver.keys.base("p") + "b:") == 1
    assert saver.get_tuple(_cfg("p")).checkpoint["channel_values"] == {"a": 4}
    with pytest.raises(ValueError, match="prune strategy"):
        saver.prune(["p"], strategy="keep_some")
    client.close()


# -- TTL --------------------------------------------------------------------------------


def _thread_keys(client: valkey.Valkey, saver: ValkeySaver, thread: str) -> list[bytes]:
    """The thread's data keys (not the short-lived refresh marker ``t``)."""
    pattern = saver.keys.base(thread).replace("{", "\\{").replace("}", "\\}") + "*"
    return [k for k in client.scan_iter(match=pattern) if not k.endswith(b"}:t")]


def test_ttl_applies_to_every_key_of_a_thread_and_slides(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix, ttl={"default_ttl": 0.02, "refresh_on_read": True})
    configs = _put_chain(saver, "ttl", 3)
    saver.put_writes(configs[-1], [("a", 9)], "task")
    keys = _thread_keys(client, saver, "ttl")
    assert len(keys) >= 5
    ttls = [client.pttl(k) for k in keys]
    assert all(0 < t <= 1200 for t in ttls), ttls
    time.sleep(0.6)
    saver.get_tuple(_cfg("ttl"))  # refresh_on_read slides the whole thread
    assert all(client.pttl(k) > 900 for k in keys)
    time.sleep(1.3)
    assert saver.get_tuple(_cfg("ttl")) is None
    assert _thread_keys(client, saver, "ttl") == []
    client.close()


def test_ttl_refresh_cost_is_bounded_with_many_namespaces(valkey_url: str, prefix: str) -> None:
    """A thread with many subgraph namespaces: each write refreshes its own namespace;
    all namespaces are refreshed at most every ttl/10, and none expires while active."""
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix, ttl={"default_ttl": 0.05})  # 3 s
    for i in range(30):
        _put_chain(saver, "fan", 1, ns=f"sub:{i}")
    _put_chain(saver, "fan", 1)
    ttls = [client.pttl(k) for k in _thread_keys(client, saver, "fan")]
    assert len(ttls) > 60 and all(0 < t <= 3000 for t in ttls)
    for _ in range(4):  # 4 x 1 s of activity on the root namespace only
        time.sleep(1.0)
        _put_chain(saver, "fan", 1)
    every_ns = {"configurable": {"thread_id": "fan"}}
    assert len(list(saver.list(every_ns))) == 35  # no subgraph namespace expired
    client.close()


def test_ttl_refresh_of_all_namespaces_is_throttled(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix, ttl={"default_ttl": 0.5})  # full refresh <= 3 s
    for i in range(30):
        _put_chain(saver, "fan", 1, ns=f"sub:{i}")

    def pexpire_calls() -> int:
        return int(client.info("commandstats")["cmdstat_pexpire"]["calls"])

    before = pexpire_calls()
    _put_chain(saver, "fan", 1)
    # thread-level keys (3: ns, runs, x) + the written namespace (6), not 6 per namespace
    assert pexpire_calls() - before == 9
    client.close()


def test_ttl_validation(valkey_url: str) -> None:
    client = client_from_url(valkey_url)
    with pytest.raises(ValueError, match="default_ttl"):
        ValkeySaver(client, ttl={"default_ttl": -1})
    client.close()


# -- key safety -------------------------------------------------------------------------


@pytest.mark.parametrize("weird", ["*", "[ab]*", "a}b{c", "x:y/z", "ユーザー 1", "%41"])
def test_hostile_thread_ids_stay_isolated(any_url: str, prefix: str, weird: str) -> None:
    client = client_from_url(any_url)
    saver = ValkeySaver(client, prefix=prefix)
    for thread in (weird, "a", "ab", "b"):
        _put_chain(saver, thread, 2)
    saver.delete_thread(weird)
    assert saver.get_tuple(_cfg(weird)) is None
    for thread in ("a", "ab", "b"):
        assert saver.get_tuple(_cfg(thread)) is not None
    assert {t.config["configurable"]["thread_id"] for t in saver.list(None)} == {"a", "ab", "b"}
    saver.copy_thread("a", weird)
    assert len(list(saver.list(_cfg(weird)))) == 2
    client.close()


def test_key_encoding_fast_path_is_the_same_encoding() -> None:
    """encode() returns plain parts as is and memoises the rest: the output must be
    exactly the percent-encoding it documents, so keys written before stay readable."""
    from urllib.parse import quote

    from langgraph_valkey_cache._keys import decode, encode

    rng = random.Random(7)
    alphabet = "aZ09-_.~:/%{}*?[], \n\x00éユ"
    samples = ["", "plain", "1f1ed6d5-c0bb-63a1-bfff-50d5c5157fba", "0" * 32 + ".5", "a:b"]
    samples += [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(500)
    ]
    for text in samples * 2:  # the second round is served from the memo
        assert encode(text) == quote(text, safe="-_.~"), text
        assert decode(encode(text)) == text
    assert len({encode(t) for t in samples}) == len(set(samples))
    with pytest.raises(ValueError, match="surrogate"):
        encode("a\ud800")
    with pytest.raises(TypeError):
        encode(5)  # type: ignore[arg-type]


def test_prefix_validation(valkey_url: str) -> None:
    client = client_from_url(valkey_url)
    with pytest.raises(ValueError, match="prefix"):
        ValkeySaver(client, prefix="a{b}")
    client.close()


# -- failure policy ---------------------------------------------------------------------


def test_bad_input_raises_before_anything_is_written(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix)
    cp = generate_checkpoint(channel_values={"a": 1}, channel_versions={"a": 1})
    with pytest.raises(ValueError, match="thread_id"):
        saver.put({"configurable": {}}, cp, generate_metadata(), {"a": 1})
    with pytest.raises(TypeError, match="channel 'a'"):
        bad = generate_checkpoint(channel_values={"a": object()}, channel_versions={"a": 1})
        saver.put(_cfg("t"), bad, generate_metadata(), {"a": 1})
    with pytest.raises(ValueError, match="malformed checkpoint id"):
        saver.put(_cfg("t"), {**cp, "id": "has space"}, generate_metadata(), {"a": 1})
    with pytest.raises(ValueError, match="malformed checkpoint id"):
        saver.get_tuple(_cfg("t", cid="a,b"))
    with pytest.raises(ValueError, match="malformed checkpoint id"):
        saver.put_writes(_cfg("t"), [("a", 1)], "task")
    assert list(client.scan_iter(match=prefix + "*")) == []
    client.close()


def test_script_error_never_leaves_a_partial_checkpoint(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix)
    client.set(saver.keys.base("t") + "runs", "not a hash")  # sabotage the run index
    cp = generate_checkpoint(channel_values={"a": 1}, channel_versions={"a": 1})
    with pytest.raises(valkey.ResponseError):
        saver.put(_cfg("t"), cp, generate_metadata(run_id="r1"), {"a": 1})
    client.delete(saver.keys.base("t") + "runs")
    assert saver.get_tuple(_cfg("t")) is None
    assert saver.get_tuple(_cfg("t", cid=cp["id"])) is None
    client.close()


def test_server_down_raises_instead_of_looking_empty(prefix: str) -> None:
    server = EmbeddedValkey().start()
    client = client_from_url(server.url, timeout=0.5)
    saver = ValkeySaver(client, prefix=prefix)
    _put_chain(saver, "t", 1)
    server.kill()
    try:
        with pytest.raises(valkey.ConnectionError):
            saver.get_tuple(_cfg("t"))
        with pytest.raises(valkey.ConnectionError):
            list(saver.list(_cfg("t")))
    finally:
        client.close()
        server.stop()


def test_wrong_client_kind_is_refused(valkey_url: str) -> None:
    with pytest.raises(TypeError, match="AsyncValkeySaver"):
        ValkeySaver(client_from_url(valkey_url, asyncio=True))
    with pytest.raises(TypeError, match="ValkeySaver"):
        AsyncValkeySaver(client_from_url(valkey_url))


def test_decoding_client_is_refused(valkey_url: str) -> None:
    with pytest.raises(ValueError, match="decode_responses=False"):
        ValkeySaver(valkey.Valkey.from_url(valkey_url, decode_responses=True))


async def test_resp3_clients_work(any_url: str, prefix: str) -> None:
    sync = client_from_url(any_url, protocol=3)
    saver = ValkeySaver(sync, prefix=prefix)
    configs = _put_chain(saver, "r3", 3)
    saver.put_writes(configs[-1], [("a", 7)], "task")
    tup = saver.get_tuple(_cfg("r3"))
    assert tup.checkpoint["channel_values"] == {"a": 2} and tup.pending_writes == [("task", "a", 7)]
    assert len(list(saver.list(_cfg("r3"), limit=2))) == 2
    aio = client_from_url(any_url, asyncio=True, protocol=3)
    asaver = AsyncValkeySaver(aio, prefix=prefix)
    got = [t async for t in asaver.alist(_cfg("r3"))]
    assert [t.checkpoint["channel_values"]["a"] for t in got] == [2, 1, 0]
    assert len(list(saver.list(None))) == 3
    sync.close()
    await aio.aclose()


@pytest.mark.parametrize("strict", ["false", "true"])
def test_serde_follows_langgraph_strict_msgpack(valkey_url: str, prefix: str, strict: str) -> None:
    """Both modes of ``LANGGRAPH_STRICT_MSGPACK`` (read once, at import: a fresh
    interpreter per mode): our saver gives back exactly what ``InMemorySaver`` does."""
    probe = Path(__file__).with_name("checkpoint_serde_probe.py")
    env = {**os.environ, "LANGGRAPH_STRICT_MSGPACK": strict}
    done = subprocess.run(
        [sys.executable, str(probe), valkey_url, prefix],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["strict"] is (strict == "true")
    if strict == "true":
        # the graph's schema types are allowlisted by LangGraph; nothing else is revived
        expected = {"graph_state": "Profile", "task_result": "dict", "direct": "dict"}
    else:
        expected = {"graph_state": "Profile", "task_result": "Profile", "direct": "Unlisted"}
    assert out["memory"] == expected  # LangGraph's behaviour, as the reference
    assert out["valkey"] == expected


def test_default_serde_is_langgraphs_default(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix)
    assert type(saver.serde) is JsonPlusSerializer
    assert saver.serde._allowed_msgpack_modules == JsonPlusSerializer()._allowed_msgpack_modules
    assert saver.serde.pickle_fallback is False
    client.close()


def test_strict_serde_never_revives_unlisted_types(valkey_url: str, prefix: str) -> None:
    """With an explicitly strict serde, a value of an unlisted class stays data
    (a crafted payload in the server cannot construct objects)."""

    @dataclasses.dataclass
    class Custom:
        x: int

    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix, serde=strict_serde())
    cp = generate_checkpoint(channel_values={"c": Custom(1)}, channel_versions={"c": 1})
    saver.put(_cfg("s"), cp, generate_metadata(), {"c": 1})
    value = saver.get_tuple(_cfg("s")).checkpoint["channel_values"]["c"]
    assert not isinstance(value, Custom)
    allowed = saver.with_allowlist({("mymod", "MyState")})
    assert allowed is not saver and allowed.client is saver.client
    assert ("mymod", "MyState") in allowed.serde._allowed_msgpack_modules
    client.close()


def test_next_version_is_monotonic_string(valkey_url: str) -> None:
    saver = ValkeySaver(client_from_url(valkey_url))
    v1 = saver.get_next_version(None, None)
    v2 = saver.get_next_version(v1, None)
    assert v1 < v2 and v2.startswith("0" * 31 + "2.")
    assert empty_checkpoint()["v"] >= 1
    _ = uuid.uuid4()


# -- data integrity ---------------------------------------------------------------------


def test_metadata_strings_survive_exactly(any_url: str, prefix: str) -> None:
    """NUL and non-ASCII text in metadata come back as written, and filters find them
    (LangGraph's own metadata helper deletes NUL characters; we store msgpack)."""
    client = client_from_url(any_url)
    saver = ValkeySaver(client, prefix=prefix)
    texts = {"nul": "a\x00b", "edge": "\x00", "uni": "ユ\x00ー", "nested": {"x": ["\x00y"]}}
    config = {**_cfg("nul"), "metadata": {"from_config": "c\x00d"}}
    cp = generate_checkpoint(channel_values={"v": "v\x00w"}, channel_versions={"v": 1})
    stored = saver.put(config, cp, generate_metadata(**texts), {"v": 1})
    saver.put_writes(stored, [("v", "w\x00x")], "task\x00id", "path\x00")
    tup = saver.get_tuple(stored)
    for key, value in texts.items():
        assert tup.metadata[key] == value
    assert tup.metadata["from_config"] == "c\x00d"
    assert tup.checkpoint["channel_values"] == {"v": "v\x00w"}
    assert tup.pending_writes == [("task\x00id", "v", "w\x00x")]
    for flt in ({"nul": "a\x00b"}, {"from_config": "c\x00d"}, {"nested": {"x": ["\x00y"]}}):
        assert [t.config for t in saver.list(_cfg("nul"), filter=flt)] == [stored], flt
    assert list(saver.list(_cfg("nul"), filter={"nul": "ab"})) == []
    client.close()


def test_unstorable_strings_are_refused_naming_them(valkey_url: str, prefix: str) -> None:
    """A lone surrogate cannot be UTF-8 encoded (msgpack would silently write ``?``):
    refused with a ValueError that names the string's role, before anything is written."""
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix)
    bad = "x\ud800y"
    cp = generate_checkpoint(channel_values={"a": 1}, channel_versions={"a": 1})
    cases: list[tuple[str, Any]] = [
        ("thread_id", lambda: saver.put(_cfg(bad), cp, generate_metadata(), {"a": 1})),
        ("checkpoint_ns", lambda: saver.put(_cfg("t", bad), cp, generate_metadata(), {"a": 1})),
        ("checkpoint metadata", lambda: saver.put(_cfg("t"), cp, generate_metadata(k=bad), {})),
        ("checkpoint metadata", lambda: saver.put(_cfg("t"), cp, {"parents": {bad: "1"}}, {})),
        ("run_id", lambda: saver.put(_cfg("t"), cp, generate_metadata(run_id=bad), {})),
        (
            "channel name",
            lambda: saver.put(
                _cfg("t"),
                generate_checkpoint(channel_values={bad: 1}, channel_versions={bad: 1}),
                generate_metadata(),
                {bad: 1},
            ),
        ),
        ("thread_id", lambda: saver.get_tuple(_cfg(bad))),
        ("thread_id", lambda: saver.delete_thread(bad)),
        ("run_id", lambda: saver.delete_for_runs([bad])),
    ]
    for what, call in cases:
        with pytest.raises(ValueError, match=what):
            call()
    assert list(client.scan_iter(match=prefix + "*")) == []
    stored = saver.put(_cfg("t"), cp, generate_metadata(), {"a": 1})
    for what, args in (
        ("task_id", ([("a", 1)], bad, "")),
        ("task_path", ([("a", 1)], "task", bad)),
        ("write channel", ([(bad, 1)], "task", "")),
    ):
        with pytest.raises(ValueError, match=what):
            saver.put_writes(stored, *args)
    assert saver.get_tuple(stored).pending_writes == []
    client.close()


# -- run index and delete_for_runs ------------------------------------------------------


def _graph_with_subgraph(saver: Any) -> Any:
    def sub_step(state: State) -> dict[str, Any]:
        return {"log": ["sub"]}

    sub = StateGraph(State)
    sub.add_node("sub_step", sub_step)
    sub.add_edge(START, "sub_step")
    sub.add_edge("sub_step", END)
    b = StateGraph(State)
    b.add_node("first", lambda s: {"log": ["first"]})
    b.add_node("sub", sub.compile())
    b.add_edge(START, "first")
    b.add_edge("first", "sub")
    b.add_edge("sub", END)
    return b.compile(checkpointer=saver)


@pytest.mark.parametrize("where", ["metadata", "configurable"])
def test_delete_for_runs_finds_langgraphs_run_id(any_url: str, prefix: str, where: str) -> None:
    """LangGraph records a run's id in each checkpoint's metadata ``run_id``, copied from
    ``config["metadata"]["run_id"]`` or ``config["configurable"]["run_id"]`` (the API
    server sets both); subgraph checkpoints carry it too."""
    client = client_from_url(any_url)
    saver = ValkeySaver(client, prefix=prefix)
    graph = _graph_with_subgraph(saver)
    runs = [str(uuid.uuid4()) for _ in range(3)]
    for i, run in enumerate(runs):
        thread = "shared" if i < 2 else "other"
        config: dict[str, Any] = {"configurable": {"thread_id": thread}}
        if where == "metadata":
            config["metadata"] = {"run_id": run}
        else:
            config["configurable"]["run_id"] = run
        graph.invoke({"log": []}, config)

    def run_ids() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for tup in saver.list(None):
            found.setdefault(tup.metadata.get("run_id"), set()).add(
                tup.config["configurable"]["checkpoint_ns"].split(":")[0]
            )
        return found

    assert run_ids() == {run: {"", "sub"} for run in runs}
    latest = graph.get_state({"configurable": {"thread_id": "shared"}}).values
    index = saver.keys.thread_keys("shared")[1]
    assert client.type(index) == b"zset"
    assert client.zcard(index) == sum(1 for _ in saver.list(_cfg("shared", ns=None)))
    saver.delete_for_runs([runs[0], str(uuid.uuid4())])
    assert run_ids() == {run: {"", "sub"} for run in runs[1:]}
    # the thread's latest state is run 2's, untouched by deleting run 1's checkpoints
    assert graph.get_state({"configurable": {"thread_id": "shared"}}).values == latest
    saver.delete_for_runs(runs[1:])
    assert list(saver.list(None)) == []
    assert list(client.scan_iter(match=prefix + "*")) == []  # blobs, writes, indexes too
    client.close()


def test_run_index_grows_by_one_member_per_checkpoint(valkey_url: str, prefix: str) -> None:
    """The run index is a sorted set: a put adds one member, it never rewrites a list."""
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix)
    parent: str | None = None
    index = saver.keys.thread_keys("long")[1]
    for i in range(50):
        cp = generate_checkpoint(channel_values={"a": i}, channel_versions={"a": i + 1})
        meta = generate_metadata(run_id="the-run", step=i)
        parent = saver.put(_cfg("long", cid=parent), cp, meta, {"a": i + 1})["configurable"][
            "checkpoint_id"
        ]
        assert client.zcard(index) == i + 1
    assert max(len(m) for m in client.zrange(index, 0, -1)) < 100
    saver.prune(["long"])
    assert client.zcard(index) == 1
    saver.delete_for_runs(["the-run"])
    assert saver.get_tuple(_cfg("long")) is None
    client.close()


# -- scripts: declared keys, NOSCRIPT ---------------------------------------------------


def _lua_keys(events: list[dict[str, Any]]) -> set[bytes]:
    """Key names in the commands that scripts ran, as MONITOR reports them (our key
    names have no spaces, so splitting the joined command is exact)."""
    keys: set[bytes] = set()
    for ev in events:
        if ev["client_type"] != "lua":
            continue
        cmd, *args = ev["command"].split(" ")
        keys.update(a.encode() for a in (args if cmd.upper() == "DEL" else args[:1]))
    return keys


@pytest.mark.parametrize("ttl", [None, {"default_ttl": 5, "refresh_on_read": True}])
def test_hot_path_scripts_declare_every_key_they_touch(
    valkey_url: str, prefix: str, ttl: dict[str, Any] | None
) -> None:
    """Slot-migration safety: every key put/put_writes/get_tuple's scripts touch (as
    MONITOR sees it) is in their KEYS, with and without a TTL."""
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix, ttl=ttl)
    cp = generate_checkpoint(channel_values={"a": 1}, channel_versions={"a": 1})
    conf = {**_cfg("decl", "sub:1"), "metadata": {"run_id": "r"}}
    events: list[dict[str, Any]] = []
    marker = f"stop-{prefix}"
    monitor = valkey.Valkey.from_url(valkey_url)

    def watch() -> None:
        with monitor.monitor() as m:
            for ev in m.listen():
                events.append(ev)
                if marker in ev["command"]:
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:  # until MONITOR is on
        client.echo("warm-up")
        time.sleep(0.01)
    declared: set[bytes] = set()
    for plan in (
        saver._plan_put(conf, cp, generate_metadata(), {"a": 1}),
        saver._plan_put_writes(_cfg("decl", "sub:1", cp["id"]), [("a", 2)], "task", ""),
        saver._plan_get_tuple(_cfg("decl", "sub:1")),
        saver._plan_get_tuple(_cfg("decl", "sub:1", cp["id"])),
    ):
        op = next(plan)
        declared |= {k if isinstance(k, bytes) else k.encode() for k in op.keys}
        saver._execute(op)
    client.echo(marker)
    watcher.join(10)
    touched = _lua_keys(events)
    assert len(touched) >= (8 if ttl else 6), touched
    assert touched <= declared, touched - declared
    monitor.close()
    client.close()


def test_scripts_are_reloaded_after_a_script_flush(any_url: str, prefix: str) -> None:
    client = client_from_url(any_url)
    saver = ValkeySaver(client, prefix=prefix)
    configs = _put_chain(saver, "flush", 2)
    client.script_flush()  # e.g. a restarted or failed-over server
    saver.put_writes(configs[-1], [("a", 5)], "task")
    assert saver.get_tuple(_cfg("flush")).pending_writes == [("task", "a", 5)]
    client.close()


def test_single_connection_client_works(valkey_url: str, prefix: str) -> None:
    """The sync saver sends EVALSHA on the client's own connection when it has one."""
    client = valkey.Valkey.from_url(valkey_url, single_connection_client=True)
    saver = ValkeySaver(client, prefix=prefix)
    configs = _put_chain(saver, "single", 3)
    saver.put_writes(configs[-1], [("a", 1)], "task")
    assert saver.get_tuple(_cfg("single")).pending_writes == [("task", "a", 1)]
    assert len(list(saver.list(_cfg("single")))) == 3
    client.close()


# -- CLI --------------------------------------------------------------------------------


def test_cli_threads_lists_names_without_reading_checkpoints(
    valkey_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from langgraph_valkey_cache.__main__ import main

    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix)
    names = ["t-1", "t:2", "t 3", "ユ"]
    for name in names:
        _put_chain(saver, name, 3)
    _put_chain(saver, "t-1", 2, ns="child:1")
    assert sorted(saver.thread_ids()) == sorted(names)
    with count_commands() as log:
        assert main(["--url", valkey_url, "--prefix", prefix, "threads"]) == 0
    assert capsys.readouterr().out.splitlines() == sorted(names)
    # the thread index's pages: no checkpoint is read, nothing is scanned
    assert set(log.commands) <= {"EVALSHA", "SCRIPT", "PING"}, log.commands
    assert log.round_trips <= 4, log.commands
    client.close()
