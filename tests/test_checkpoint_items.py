"""List channels stored item by item (``list_items=True``, the default): a growing
message list writes each message once per thread namespace; states, histories and
pending writes are exactly InMemorySaver's (differential tests), and items no
checkpoint refers to any more are collected by prune, retention and deletes."""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command, interrupt

from langgraph_valkey_cache import AsyncValkeySaver, ValkeySaver
from langgraph_valkey_cache._client import client_from_url, scan_keys


def _items(client: Any, key: str) -> int:
    """Stored list items in ``key`` (16-byte digests: not the generation field)."""
    return sum(1 for f in client.hkeys(key) if len(f) == 16)


def _chat_graph() -> Any:
    def model(state: MessagesState) -> dict[str, Any]:
        n = len(state["messages"])
        out: list[Any] = [AIMessage(f"answer {n} " + "lorem ipsum " * 20, id=f"ai-{n}")]
        if n == 7:  # an edit in place and a removal: the list does not only grow
            first = state["messages"][0]
            out.append(HumanMessage("edited", id=first.id))
            out.append(RemoveMessage(id=str(state["messages"][1].id)))
        return {"messages": out}

    def review(state: MessagesState) -> dict[str, Any]:
        if len(state["messages"]) == 4:
            verdict = interrupt("ok?")
            return {"messages": [HumanMessage(f"verdict {verdict}", id="verdict")]}
        return {}

    b = StateGraph(MessagesState)
    b.add_node("model", model)
    b.add_node("review", review)
    b.add_edge(START, "model")
    b.add_edge("model", "review")
    b.add_edge("review", END)
    return b


def _norm(value: Any) -> str:
    """repr without interrupt ids (derived from checkpoint ids, which differ per saver)."""
    return re.sub(r"(Interrupt\(value=.*?), id='[0-9a-f]+'", r"\1", repr(value))


def _transcript(graph: Any) -> list[Any]:
    config = {"configurable": {"thread_id": "chat"}}
    out: list[Any] = []
    for i in range(6):
        got = graph.invoke({"messages": [HumanMessage(f"q{i} " * 30, id=f"h-{i}")]}, config)
        if "__interrupt__" in got:
            got = graph.invoke(Command(resume="yes"), config)
        out.append([(m.id, m.content) for m in got["messages"]])
    history = list(graph.get_state_history(config))
    out.append([([(m.id, m.content) for m in s.values["messages"]], s.next) for s in history])
    # every checkpoint's pending writes, and a fork from the middle of the history
    tuples = list(graph.checkpointer.list(config))
    out.append([[(w[1], _norm(w[2])) for w in t.pending_writes or []] for t in tuples])
    middle = history[len(history) // 2]
    forked = graph.update_state(middle.config, {"messages": [HumanMessage("fork", id="fork")]})
    out.append([(m.id, m.content) for m in graph.get_state(forked).values["messages"]])
    return out


def test_messages_match_in_memory_and_are_stored_once(any_url: str, prefix: str) -> None:
    expected = _transcript(_chat_graph().compile(checkpointer=InMemorySaver()))
    client = client_from_url(any_url)
    saver = ValkeySaver(client, prefix=prefix)
    assert _transcript(_chat_graph().compile(checkpointer=saver)) == expected
    base = saver.keys.base("chat")
    items = _items(client, base + "e:")
    config = {"configurable": {"thread_id": "chat"}}
    distinct = {
        (m.id, m.content)
        for t in saver.list(config)
        for m in t.checkpoint["channel_values"].get("messages", [])
    }
    # each distinct message once (a RemoveMessage write is a pending write, not an item)
    assert items == len(distinct)
    whole = ValkeySaver(client, prefix=prefix + "w", list_items=False)
    assert _transcript(_chat_graph().compile(checkpointer=whole)) == expected
    mem = {
        name: sum(
            client.memory_usage(k, samples=0) or 0 for k in scan_keys(client, f"{p}:{{chat}}:*")
        )
        for name, p in (("items", prefix), ("whole", prefix + "w"))
    }
    assert mem["items"] < mem["whole"] * 0.8, mem  # a short thread; see bench --memory
    client.close()


def test_items_are_collected(any_url: str, prefix: str) -> None:
    client = client_from_url(any_url)
    saver = ValkeySaver(client, prefix=prefix)
    graph = _chat_graph().compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "chat"}}
    _transcript(graph)
    e = saver.keys.base("chat") + "e:"
    before = _items(client, e)
    latest = graph.get_state(config).values
    saver.copy_thread("chat", "copy")
    copy = {"configurable": {"thread_id": "copy"}}
    assert graph.get_state(copy).values == latest
    saver.prune(["chat"])
    after = _items(client, e)
    assert 0 < after < before  # only the latest checkpoint's messages remain
    assert after == len(latest["messages"])
    assert graph.get_state(config).values == latest
    graph.invoke({"messages": [HumanMessage("again", id="again")]}, config)
    assert graph.get_state(config).values["messages"][-2].id == "again"
    saver.delete_thread("chat")
    assert not client.exists(e)
    assert graph.get_state(copy).values == latest  # the copy has its own items
    client.close()


@pytest.mark.parametrize("keep", [1, 3])
def test_retention_collects_items(valkey_url: str, prefix: str, keep: int) -> None:
    reference = _chat_graph().compile(checkpointer=InMemorySaver())
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix, keep_last=keep)
    graph = _chat_graph().compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "chat"}}
    e = saver.keys.base("chat") + "e:"
    for i in range(8):
        for g in (reference, graph):
            got = g.invoke({"messages": [HumanMessage(f"q{i}", id=f"h-{i}")]}, config)
            if "__interrupt__" in got:
                g.invoke(Command(resume="yes"), config)
        ours = list(graph.get_state_history(config))
        theirs = list(reference.get_state_history(config))
        assert [s.values for s in ours] == [s.values for s in theirs[: len(ours)]]
        referenced = {(m.id, m.content) for s in ours for m in s.values.get("messages", [])}
        # no item outlives the checkpoints that refer to it
        assert _items(client, e) <= len(referenced)
    client.close()


async def test_async_items_match_in_memory(valkey_url: str, prefix: str) -> None:
    reference = _chat_graph().compile(checkpointer=InMemorySaver())
    async with AsyncValkeySaver.from_conn_string(valkey_url, prefix=prefix) as saver:
        graph = _chat_graph().compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "a"}}
        for i in range(5):
            for g in (reference, graph):
                got = await g.ainvoke({"messages": [HumanMessage(f"q{i}", id=f"h{i}")]}, config)
                if "__interrupt__" in got:
                    await g.ainvoke(Command(resume="no"), config)
        ours = [s.values async for s in graph.aget_state_history(config)]
        theirs = [s.values async for s in reference.aget_state_history(config)]
        assert ours == theirs


def test_duplicate_items_and_plain_lists(valkey_url: str, prefix: str) -> None:
    from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_metadata

    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix)
    values = {
        "l": [1, "a", 1, None, b"raw", 1.5, "x" * 300, -7, 2**40, True],
        "nested": [{"k": [1, 2]}, [3]],  # maps and arrays inside: stored whole
        "one": [7],
        "empty": [],
    }
    versions: dict[str, str | int | float] = {k: 1 for k in values}
    cp = generate_checkpoint(channel_values=values, channel_versions=versions)
    cfg = {"configurable": {"thread_id": "d", "checkpoint_ns": ""}}
    saver.put(cfg, cp, generate_metadata(), versions)
    tup = saver.get_tuple({"configurable": {"thread_id": "d"}})
    assert tup is not None and tup.checkpoint["channel_values"] == values
    assert _items(client, saver.keys.base("d") + "e:") == 9  # 1 stored once
    client.close()


def test_items_collected_elsewhere_are_sent_again(any_url: str, prefix: str) -> None:
    """A saver does not resend items it saw stored; when another saver collected them
    meanwhile, the put script refuses (nothing written) and they are sent again."""
    from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_metadata

    from langgraph_valkey_cache.testing import count_commands

    client = client_from_url(any_url)
    writer = ValkeySaver(client, prefix=prefix)
    other = ValkeySaver(client, prefix=prefix)
    msgs = [HumanMessage(f"m{i} " * 50, id=f"m{i}") for i in range(6)]
    cfg: dict[str, Any] = {"configurable": {"thread_id": "k", "checkpoint_ns": ""}}
    parent = None
    for n in (2, 3, 4):
        cp = generate_checkpoint(
            channel_values={"messages": msgs[:n]}, channel_versions={"messages": n}
        )
        conf = {"configurable": {**cfg["configurable"], "checkpoint_id": parent}} if parent else cfg
        with count_commands() as log:
            parent = writer.put(conf, cp, generate_metadata(), {"messages": n})["configurable"][
                "checkpoint_id"
            ]
        sent = sum(1 for c in log.commands if c == "EVALSHA")
        assert sent == (2 if n == 2 else 1)  # the first: + the thread index
    e = writer.keys.base("k") + "e:"
    assert _items(client, e) == 4
    # another saver drops everything but a new checkpoint holding other messages
    other.delete_thread("k")
    cp = generate_checkpoint(
        channel_values={"messages": msgs[4:6]}, channel_versions={"messages": 9}
    )
    other.put(cfg, cp, generate_metadata(), {"messages": 9})
    cp = generate_checkpoint(
        channel_values={"messages": msgs[:5]}, channel_versions={"messages": 10}
    )
    with count_commands() as log:
        writer.put(cfg, cp, generate_metadata(), {"messages": 10})
    assert log.commands.count("EVALSHA") == 2  # refused, then sent whole
    tup = writer.get_tuple({"configurable": {"thread_id": "k"}})
    assert tup is not None and tup.checkpoint["channel_values"]["messages"] == msgs[:5]
    assert _items(client, e) == 6
    client.close()


def test_known_items_cost_one_check_and_a_prune_elsewhere_is_seen(
    valkey_url: str, prefix: str
) -> None:
    """A put that leaves out items it saw stored checks the items' generation (one
    field), not each item; a prune by another saver changes the generation, so the
    next put is refused and sends its items again."""
    from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_metadata

    from langgraph_valkey_cache.testing import count_commands

    client = client_from_url(valkey_url)
    writer = ValkeySaver(client, prefix=prefix)
    other = ValkeySaver(client, prefix=prefix)
    msgs = [HumanMessage(f"m{i} " * 50, id=f"m{i}") for i in range(40)]
    cfg: dict[str, Any] = {"configurable": {"thread_id": "g", "checkpoint_ns": ""}}

    def put(n: int) -> None:
        cp = generate_checkpoint(
            channel_values={"messages": msgs[:n]}, channel_versions={"messages": n}
        )
        writer.put(cfg, cp, generate_metadata(), {"messages": n})

    for n in range(2, 30):
        put(n)
    client.config_resetstat()
    with count_commands() as log:
        put(30)  # 29 items left out, one sent
    assert log.commands.count("EVALSHA") == 1
    stats = client.info("commandstats")
    assert "cmdstat_hexists" not in stats, stats  # no per-item check
    e = writer.keys.base("g") + "e:"
    assert _items(client, e) == 30
    other.prune(["g"])  # keeps only the latest: nothing to collect, yet...
    cp = generate_checkpoint(
        channel_values={"messages": msgs[5:7]}, channel_versions={"messages": 99}
    )
    other.put(cfg, cp, generate_metadata(), {"messages": 99})
    other.prune(["g"])  # ...this one collects every item but m5 and m6
    assert _items(client, e) == 2
    with count_commands() as log:
        put(31)
    assert log.commands.count("EVALSHA") == 2  # refused, then sent whole
    tup = writer.get_tuple({"configurable": {"thread_id": "g"}})
    assert tup is not None and tup.checkpoint["channel_values"]["messages"] == msgs[:31]
    assert _items(client, e) == 31
    client.close()


def test_items_of_a_put_that_failed_are_sent_by_the_next(valkey_url: str, prefix: str) -> None:
    """A put that fails after cutting its list (here: a checkpoint the serde refuses)
    stored nothing: the next put of the grown list must send those items too."""
    from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_metadata

    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix)
    msgs = [HumanMessage(f"m{i} " * 30, id=f"m{i}") for i in range(6)]
    cfg: dict[str, Any] = {"configurable": {"thread_id": "f", "checkpoint_ns": ""}}

    def checkpoint(n: int) -> Any:
        return generate_checkpoint(
            channel_values={"messages": msgs[:n]}, channel_versions={"messages": n}
        )

    saver.put(cfg, checkpoint(2), generate_metadata(), {"messages": 2})
    bad = checkpoint(4)
    bad["versions_seen"] = {"node": {"messages": object()}}  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="checkpoint"):
        saver.put(cfg, bad, generate_metadata(), {"messages": 4})
    saver.put(cfg, checkpoint(5), generate_metadata(), {"messages": 5})
    tup = saver.get_tuple({"configurable": {"thread_id": "f"}})
    assert tup is not None and tup.checkpoint["channel_values"]["messages"] == msgs[:5]
    assert _items(client, saver.keys.base("f") + "e:") == 5
    client.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_workers_draw_their_own_generation_tokens() -> None:
    """Workers forked from one parent must not repeat each other's item generation
    tokens (a repeat could make a stale view of a namespace's items look current)."""
    import warnings

    from langgraph_valkey_cache.checkpoint import base

    r, w = os.pipe()
    with warnings.catch_warnings():  # 3.12+: fork() of a threaded process warns
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, base._TOKEN_PREFIX)
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(w)
    child = os.read(r, 64)
    os.close(r)
    assert child and child != base._TOKEN_PREFIX


class _CountingSerde(JsonPlusSerializer):
    """LangGraph's serializer, recording the length of every list it serialises."""

    def __init__(self) -> None:
        super().__init__()
        self.lists: list[int] = []

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        if type(obj) is list:
            self.lists.append(len(obj))
        return super().dumps_typed(obj)


def test_a_put_serialises_only_new_or_changed_items(valkey_url: str, prefix: str) -> None:
    """A growing list of the same objects (as LangGraph's channels hand them over)
    costs each put its new items; an item whose attribute was reassigned, whose
    pydantic extras are set, or which is a mutable value without attributes, is
    serialised again from there; every checkpoint reads back as it was put."""
    from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_metadata

    client = client_from_url(valkey_url)
    serde = _CountingSerde()
    saver = ValkeySaver(client, prefix=prefix, serde=serde)
    msgs: list[Any] = [HumanMessage("q0", id="h0")]
    cfg: Any = {"configurable": {"thread_id": "grow", "checkpoint_ns": ""}}
    expected: list[tuple[Any, list[Any]]] = []

    def put(items: list[Any]) -> int:
        nonlocal cfg
        serde.lists.clear()
        versions: dict[str, str | int | float] = {"messages": len(expected) + 1}
        cp = generate_checkpoint(channel_values={"messages": items}, channel_versions=versions)
        cfg = saver.put(cfg, cp, generate_metadata(), versions)
        expected.append((cfg, copy.deepcopy(items)))
        return sum(serde.lists)

    assert put(msgs := [*msgs, AIMessage("a0", id="a0")]) == 2  # the first put: all
    for i in range(1, 5):
        assert put(msgs := [*msgs, HumanMessage(f"q{i}", id=f"h{i}")]) == 1
    assert put(list(msgs)) == 0  # the same objects again: nothing to serialise
    msgs[2].content = "reassigned"  # same object, an attribute reassigned
    assert put(msgs := [*msgs, AIMessage("a1", id="a1")]) == len(msgs) - 2
    msgs[3].__pydantic_extra__["note"] = "x"  # extras: always serialised again
    assert put(msgs := [*msgs, AIMessage("a2", id="a2")]) == len(msgs) - 3
    assert put(msgs := [*msgs, AIMessage("a3", id="a3")]) == len(msgs) - 3
    tags = {"a"}
    values: list[Any] = ["s", 1, tags, "t"]  # a set has no attributes: never reused
    assert put(values) == 4
    tags.add("b")
    assert put(values) == 2
    for config, items in expected:
        tup = saver.get_tuple(config)
        assert tup is not None and tup.checkpoint["channel_values"]["messages"] == items
    assert saver.get_tuple(expected[6][0]).checkpoint["channel_values"]["messages"][2].content == (  # type: ignore[union-attr]
        "reassigned"
    )
    client.close()


def test_reused_items_are_sent_again_after_the_thread_was_deleted(
    valkey_url: str, prefix: str
) -> None:
    """The items a put does not serialise again (same objects as the previous version)
    are still sent when the server no longer has them: after delete_thread, and after
    another saver deleted the thread behind this one's back."""
    from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_metadata

    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix)
    other = ValkeySaver(client, prefix=prefix)
    msgs: list[Any] = [HumanMessage(f"q{i}", id=f"h{i}") for i in range(3)]

    def put(items: list[Any], version: int) -> Any:
        versions: dict[str, str | int | float] = {"messages": version}
        cp = generate_checkpoint(channel_values={"messages": items}, channel_versions=versions)
        cfg = {"configurable": {"thread_id": "gone", "checkpoint_ns": ""}}
        return saver.put(cfg, cp, generate_metadata(), versions)

    put(msgs, 1)
    for deleter in (saver, other):
        deleter.delete_thread("gone")
        msgs = [*msgs, AIMessage(f"a{len(msgs)}", id=f"a{len(msgs)}")]
        cfg = put(msgs, len(msgs))
        tup = saver.get_tuple(cfg)
        assert tup is not None and tup.checkpoint["channel_values"]["messages"] == msgs
    client.close()


@pytest.mark.parametrize("compress", [None, 64])
def test_a_missing_item_is_reported_not_skipped(
    valkey_url: str, prefix: str, compress: int | None
) -> None:
    """A list reads back whole or raises naming its channel: the script joins raw items
    into one reply only when every item is there (with compressed items too)."""
    from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_metadata

    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix, compress_min_bytes=compress)
    msgs = [HumanMessage(("long " * 40) if i % 2 else f"q{i}", id=f"m{i}") for i in range(6)]
    versions: dict[str, str | int | float] = {"messages": 1}
    cp = generate_checkpoint(channel_values={"messages": msgs}, channel_versions=versions)
    cfg = {"configurable": {"thread_id": "dmg", "checkpoint_ns": ""}}
    cfg = saver.put(cfg, cp, generate_metadata(), versions)
    tup = saver.get_tuple(cfg)
    assert tup is not None and tup.checkpoint["channel_values"]["messages"] == msgs
    key = saver.keys.base("dmg") + "e:"
    client.hdel(key, next(f for f in client.hkeys(key) if len(f) == 16))
    with pytest.raises(RuntimeError, match="'messages' is missing"):
        saver.get_tuple(cfg)
    client.close()
