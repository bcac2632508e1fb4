"""Run by ``test_checkpoint.py`` in a fresh interpreter, with ``LANGGRAPH_STRICT_MSGPACK``
set by the test: LangGraph reads it once, at import.

Prints, as JSON, the type each saver (``InMemorySaver``, ``ValkeySaver``) gives back
for a user's Pydantic model in graph state, a functional-API task's Pydantic result
replayed on resume, and an unregistered dataclass put into a channel directly.

    python tests/checkpoint_serde_probe.py URL PREFIX
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_metadata
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde import _msgpack
from langgraph.func import entrypoint, task
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from pydantic import BaseModel
from typing_extensions import TypedDict

from langgraph_valkey_cache import ValkeySaver
from langgraph_valkey_cache._client import client_from_url


class Profile(BaseModel):
    name: str
    age: int


@dataclasses.dataclass
class Unlisted:
    x: int


class State(TypedDict):
    profile: Profile


def graph_state(saver: BaseCheckpointSaver) -> str:
    b = StateGraph(State)
    b.add_node("make", lambda s: {"profile": Profile(name="ada", age=36)})
    b.add_edge(START, "make")
    b.add_edge("make", END)
    g = b.compile(checkpointer=saver)
    conf: Any = {"configurable": {"thread_id": "g"}}
    g.invoke({"profile": Profile(name="x", age=0)}, conf)
    return type(g.get_state(conf).values["profile"]).__name__


def task_result(saver: BaseCheckpointSaver) -> str:
    @task
    def fetch() -> Profile:
        return Profile(name="bob", age=7)

    @entrypoint(checkpointer=saver)
    def flow(x: int) -> str:
        p = fetch().result()  # on resume: read back from the pending writes
        interrupt("ok?")
        return type(p).__name__

    conf: Any = {"configurable": {"thread_id": "f"}}
    flow.invoke(1, conf)
    return str(flow.invoke(Command(resume=True), conf))


def direct(saver: BaseCheckpointSaver) -> str:
    cp = generate_checkpoint(channel_values={"c": Unlisted(1)}, channel_versions={"c": 1})
    conf: Any = {"configurable": {"thread_id": "d", "checkpoint_ns": ""}}
    saver.put(conf, cp, generate_metadata(), {"c": 1})
    tup = saver.get_tuple(conf)
    assert tup is not None
    return type(tup.checkpoint["channel_values"]["c"]).__name__


def main(url: str, prefix: str) -> dict[str, Any]:
    savers: dict[str, Callable[[], BaseCheckpointSaver]] = {
        "memory": InMemorySaver,
        "valkey": lambda: ValkeySaver(client_from_url(url), prefix=prefix),
    }
    out: dict[str, Any] = {"strict": _msgpack.STRICT_MSGPACK_ENABLED}
    for name, make in savers.items():
        out[name] = {probe.__name__: probe(make()) for probe in (graph_state, task_result, direct)}
    return out


if __name__ == "__main__":
    sys.stdout.write(json.dumps(main(sys.argv[1], sys.argv[2])) + "\n")
