"""The main demo: a tool-calling agent whose every tier runs on Valkey.

``python -m langgraph_valkey_cache demo`` runs it on an embedded server (or on
``--url`` / ``$VALKEY_URL``). The chat model is a scripted fake, so no API key or
network is needed and the output is the same on every run.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import Command, interrupt

from langgraph_valkey_cache.checkpoint import ValkeySaver

__all__ = ["ScriptedChatModel", "build_agent", "embedded_or_url", "run_demo"]

Out = Callable[[str], None]


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    table = {"sofia": "12°C, clear", "lisbon": "19°C, windy"}
    return table.get(city.lower(), "no data")


class ScriptedChatModel(BaseChatModel):
    """A deterministic stand-in for a chat model: asks for the weather tool on a user
    turn, then answers from the tool's result. ``calls`` counts real invocations."""

    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted-demo"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls += 1
        last = messages[-1]
        if isinstance(last, ToolMessage):
            msg = AIMessage(content=f"The weather is {last.content}.")
        else:
            city = str(last.content).rstrip("?").split()[-1]
            msg = AIMessage(
                content="",
                tool_calls=[{"name": "get_weather", "args": {"city": city}, "id": "call_1"}],
                usage_metadata={"input_tokens": 12, "output_tokens": 5, "total_tokens": 17},
            )
        return ChatResult(generations=[ChatGeneration(message=msg)])


def build_agent(model: BaseChatModel | None = None, tool_cache: Any = None) -> StateGraph:
    """agent -> approve (interrupt) -> tools -> agent -> END.

    With ``tool_cache`` (a :class:`~langgraph_valkey_cache.ToolCache`) the tool node
    serves repeated tool calls from Valkey.
    """
    llm = (model or ScriptedChatModel()).bind_tools([get_weather])

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [llm.invoke(state["messages"])]}

    def approve(state: MessagesState) -> Command[Any]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)  # route() only sends tool-calling turns here
        call = last.tool_calls[0]
        decision = interrupt({"tool": call["name"], "args": call["args"]})
        return Command(goto="tools" if decision == "approve" else END)

    def route(state: MessagesState) -> str:
        return "approve" if getattr(state["messages"][-1], "tool_calls", None) else END

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("approve", approve, destinations=("tools", END))
    hooks = (
        {"wrap_tool_call": tool_cache.wrap, "awrap_tool_call": tool_cache.awrap}
        if tool_cache
        else {}
    )
    builder.add_node("tools", ToolNode([get_weather], **hooks))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", route, ["approve", END])
    builder.add_edge("tools", "agent")
    return builder


@contextmanager
def embedded_or_url(url: str | None, out: Out, *, search: bool = False) -> Iterator[str]:
    """Yield ``url``, or start an embedded valkey-server for the duration.

    With ``search=True`` the embedded server loads an FT.* module when one is installed
    (the test extra's), so the store demo can use vector search.
    """
    if url:
        yield url
        return
    from langgraph_valkey_cache.embedded import EmbeddedValkey, search_module_path

    try:
        with_search = search and bool(search_module_path())
    except RuntimeError:
        with_search = False
    with EmbeddedValkey(search=with_search) as server:
        extra = " with an FT.* module" if with_search else ""
        out(f"started an embedded valkey-server{extra} at {server.url}")
        yield server.url


def run_demo(url: str | None = None, out: Out = print) -> None:
    """Every tier on one server: checkpointer, LLM cache, tool cache, node cache, store."""
    from langchain_core.globals import set_llm_cache

    from langgraph_valkey_cache._client import client_from_url
    from langgraph_valkey_cache.cache.llm import ValkeyCache
    from langgraph_valkey_cache.cache.tools import ToolCache

    logging.basicConfig(level=logging.WARNING, format="  [%(name)s] %(message)s")
    with embedded_or_url(url, out, search=True) as server_url:
        run = uuid.uuid4().hex[:8]
        client = client_from_url(server_url)
        llm_cache = ValkeyCache(client, prefix=f"lgv-demo:{run}:llm", ttl=3600)
        tool_cache = ToolCache(client, prefix=f"lgv-demo:{run}:tools", ttl=600)
        model = ScriptedChatModel()
        set_llm_cache(llm_cache)
        try:
            with ValkeySaver.from_conn_string(server_url, prefix=f"lgv-demo:{run}:cp") as saver:
                saver.setup()
                graph = build_agent(model, tool_cache).compile(checkpointer=saver)
                for i, thread in enumerate((f"demo-{run}-a", f"demo-{run}-b")):
                    calls_before = model.calls
                    _agent_turn(graph, thread, out, show_history=i == 0)
                    out(f"model calls on this thread: {model.calls - calls_before} of 2")
                    saver.delete_thread(thread)
            # keys hold what the provider sees, not the ids/usage LangChain's hit marks
            out("(thread b: both model calls came from ValkeyCache: its keys hold what the")
            out(" provider sees, not the ids and usage that differ on a cached answer)")
            out("\n== tool cache (ToolNode(wrap_tool_call=cache.wrap))")
            for s in tool_cache.stats().values():
                out(f"  {s.tool}: {s.hits} hit(s), {s.misses} miss(es)")
            _node_cache_section(client, run, out)
            _store_section(client, run, out)
            llm_cache.clear()
        finally:
            set_llm_cache(None)
            client.close()


def _agent_turn(graph: Any, thread: str, out: Out, *, show_history: bool) -> None:
    config = {"configurable": {"thread_id": thread}}
    out(f"\n== checkpointer + LLM cache: thread {thread}")
    first = graph.invoke({"messages": [HumanMessage("What's the weather in Sofia?")]}, config)
    pending = first["__interrupt__"][0].value
    out(f"interrupted, waiting for approval of {pending['tool']}({pending['args']})")
    final = graph.invoke(Command(resume="approve"), config)
    out(f"resumed -> {final['messages'][-1].content}")
    if not show_history:
        return
    out("history (newest first):")
    for snap in graph.get_state_history(config):
        last = snap.values.get("messages", [])[-1:] if snap.values else []
        text = _describe(last[0]) if last else "-"
        out(
            f"  step {snap.metadata['step']:>2}  {snap.metadata['source']:<6} "
            f"next={list(snap.next)!s:<12} last={text}"
        )


def _node_cache_section(client: Any, run: str, out: Out) -> None:
    from langgraph.types import CachePolicy
    from typing_extensions import TypedDict

    from langgraph_valkey_cache.cache.node import ValkeyNodeCache

    class Doc(TypedDict):
        text: str
        summary: str

    runs: list[str] = []

    def summarize(state: Doc) -> dict[str, str]:
        runs.append(state["text"])
        return {"summary": state["text"][:24] + "..."}

    builder = StateGraph(Doc)
    builder.add_node("summarize", summarize, cache_policy=CachePolicy(ttl=600))
    builder.add_edge(START, "summarize")
    graph = builder.compile(cache=ValkeyNodeCache(client, prefix=f"lgv-demo:{run}:node"))
    doc: Doc = {"text": "Valkey is an open source, in-memory data store.", "summary": ""}
    for _ in range(2):
        graph.invoke(doc)
    out("\n== node cache (graph.compile(cache=ValkeyNodeCache(...)))")
    out(f"  'summarize' ran {len(runs)} time(s) for 2 identical invocations")
    graph.clear_cache()


def _store_section(client: Any, run: str, out: Out) -> None:
    from langgraph_valkey_cache.store import ValkeyStore
    from langgraph_valkey_cache.testing import HashingEmbeddings

    out("\n== store (long-term memory with semantic search)")
    store = ValkeyStore(
        client,
        prefix=f"lgv-demo:{run}:store",
        index={"dims": 64, "embed": HashingEmbeddings(64), "fields": ["text"]},
    )
    store.setup()
    ns = ("user", "alice", "memories")
    store.put(ns, "home", {"text": "Alice lives in Sofia, Bulgaria"})
    store.put(ns, "food", {"text": "Alice's favourite food is banitsa"})
    store.put(ns, "work", {"text": "Alice works as a nurse"})
    hits = store.search(ns, query="where does Alice live?", limit=1)
    out(f"  search 'where does Alice live?' -> {hits[0].value['text']!r}")
    out(f"  namespaces: {store.list_namespaces(prefix=('user',))}")
    for key in ("home", "food", "work"):
        store.delete(ns, key)


def _describe(msg: BaseMessage) -> str:
    if isinstance(msg, AIMessage) and msg.tool_calls:
        return f"AI tool call {msg.tool_calls[0]['name']}{msg.tool_calls[0]['args']}"
    return f"{msg.type}: {str(msg.content)[:40]}"
