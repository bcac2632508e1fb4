"""Retention (``keep_last=N``): at most N checkpoints per thread namespace, pruned by
the put script, keeping the ancestors a DeltaChannel still needs; states stay exactly
what InMemorySaver gives."""

from __future__ import annotations

import operator
from typing import Annotated, Any

import pytest
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_metadata
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

from langgraph_valkey_cache import AsyncValkeySaver, ValkeySaver
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache.testing import count_commands
from tests.test_checkpoint import _cfg, _delta_graph, _put_chain


def test_keep_last_without_delta_channels(any_url: str, prefix: str) -> None:
    client = client_from_url(any_url)
    saver = ValkeySaver(client, prefix=prefix, keep_last=3)
    _put_chain(saver, "warm", 4)
    configs = _put_chain(saver, "t", 3)
    for config in configs:
        saver.put_writes(config, [("a", "w")], "task")
    parent = configs[-1]["configurable"]["checkpoint_id"]
    with count_commands() as log:
        for i in range(3, 7):
            cp = generate_checkpoint(channel_values={"a": i}, channel_versions={"a": i + 1})
            meta = generate_metadata(step=i)
            parent = saver.put(_cfg("t", cid=parent), cp, meta, {"a": i + 1})["configurable"][
                "checkpoint_id"
            ]
    assert log.round_trips == 4  # pruning is inside the put script
    got = list(saver.list(_cfg("t")))
    assert len(got) == 3
    assert [t.checkpoint["channel_values"]["a"] for t in got] == [6, 5, 4]
    base = saver.keys.base("t")
    assert client.hlen(base + "b:") == 3  # the pruned checkpoints' blobs are gone
    assert client.hlen(base + "c:") == 3
    assert client.hlen(base + "w:") == 0  # and their pending writes
    assert client.hlen(base + "d:") == 0
    client.close()


class LogState(TypedDict):
    log: Annotated[list[str], operator.add]


def _log_graph() -> Any:
    b = StateGraph(LogState)
    b.add_node("one", lambda s: {"log": ["one"]})
    b.add_node("two", lambda s: {"log": ["two"]})
    b.add_edge(START, "one")
    b.add_edge("one", "two")
    b.add_edge("two", END)
    return b


@pytest.mark.parametrize("keep", [1, 2, 5])
def test_keep_last_graph_matches_in_memory(any_url: str, prefix: str, keep: int) -> None:
    reference = _log_graph().compile(checkpointer=InMemorySaver())
    with ValkeySaver.from_conn_string(any_url, prefix=prefix, keep_last=keep) as saver:
        graph = _log_graph().compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "g"}}
        for i in range(6):
            expected = reference.invoke({"log": [f"in{i}"]}, config)
            assert graph.invoke({"log": [f"in{i}"]}, config) == expected
            ours = list(graph.get_state_history(config))
            theirs = list(reference.get_state_history(config))
            assert len(ours) == min(keep, len(theirs))
            # the retained ones are the newest, with the same values and next nodes
            assert [(s.values, s.next) for s in ours] == [
                (s.values, s.next) for s in theirs[: len(ours)]
            ]


def test_keep_last_keeps_delta_ancestors(valkey_url: str, prefix: str) -> None:
    """DeltaChannel (snapshot every 3 updates): the retained checkpoints still
    reconstruct exactly, because the ancestors back to a snapshot are kept."""
    reference = _delta_graph().compile(checkpointer=InMemorySaver())
    with ValkeySaver.from_conn_string(valkey_url, prefix=prefix, keep_last=2) as saver:
        graph = _delta_graph().compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "d"}}
        counts = []
        for i in range(12):
            reference.invoke({"items": [f"in{i}"]}, config)
            graph.invoke({"items": [f"in{i}"]}, config)
            assert graph.get_state(config).values == reference.get_state(config).values
            ours = list(graph.get_state_history(config))
            theirs = list(reference.get_state_history(config))
            counts.append(len(ours))
            # each retained checkpoint still gives InMemorySaver's state
            assert [(s.values, s.next) for s in ours] == [
                (s.values, s.next) for s in theirs[: len(ours)]
            ]
        total = len(list(reference.checkpointer.list(config)))  # type: ignore[union-attr]
        assert max(counts) < total  # pruned...
        # ...but beyond 2 while the retained ones have no snapshot of the delta channel
        assert max(counts) > 2 and min(counts) >= 1
        assert max(counts) <= 2 + 6  # two retained + at most one snapshot period back


async def test_keep_last_async(valkey_url: str, prefix: str) -> None:
    async with AsyncValkeySaver.from_conn_string(valkey_url, prefix=prefix, keep_last=2) as saver:
        parent = None
        for i in range(5):
            cp = generate_checkpoint(channel_values={"a": i}, channel_versions={"a": i + 1})
            parent = (
                await saver.aput(_cfg("a", cid=parent), cp, generate_metadata(), {"a": i + 1})
            )["configurable"]["checkpoint_id"]
        got = [t async for t in saver.alist(_cfg("a"))]
        assert [t.checkpoint["channel_values"]["a"] for t in got] == [4, 3]
