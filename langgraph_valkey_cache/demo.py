"""The main demo: a tool-calling agent whose every tier runs on Valkey.

``python -m langgraph_valkey_cache demo`` runs it on an embedded server (or on
``--url`` / ``$VALKEY_URL``). The chat model is a scripted fake, so no API key or
network is needed and the output is the same on every run.
"""

from __future__ import annotations

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
    turn, then answers from the tool's result."""

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


def build_agent(model: BaseChatModel | None = None) -> StateGraph:
    """agent -> approve (interrupt) -> tools -> agent -> END."""
    llm = (model or ScriptedChatModel()).bind_tools([get_weather])

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [llm.invoke(state["messages"])]}

    def approve(state: MessagesState) -> Command[Any]:
        call = state["messages"][-1].tool_calls[0]  # type: ignore[attr-defined]
        decision = interrupt({"tool": call["name"], "args": call["args"]})
        return Command(goto="tools" if decision == "approve" else END)

    def route(state: MessagesState) -> str:
        return "approve" if getattr(state["messages"][-1], "tool_calls", None) else END

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("approve", approve, destinations=("tools", END))
    builder.add_node("tools", ToolNode([get_weather]))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", route, ["approve", END])
    builder.add_edge("tools", "agent")
    return builder


@contextmanager
def embedded_or_url(url: str | None, out: Out) -> Iterator[str]:
    """Yield ``url``, or start an embedded valkey-server for the duration."""
    if url:
        yield url
        return
    from langgraph_valkey_cache.embedded import EmbeddedValkey

    with EmbeddedValkey() as server:
        out(f"started an embedded valkey-server at {server.url}")
        yield server.url


def run_demo(url: str | None = None, out: Out = print) -> None:  # noqa: T201 - CLI output
    with embedded_or_url(url, out) as server_url:
        thread = f"demo-{uuid.uuid4().hex[:8]}"
        config = {"configurable": {"thread_id": thread}}
        with ValkeySaver.from_conn_string(server_url, prefix="lgv-demo:cp") as saver:
            saver.setup()
            graph = build_agent().compile(checkpointer=saver)
            out(f"\n== checkpointer: thread {thread}")
            first = graph.invoke({"messages": [HumanMessage("What's the weather in Sofia?")]}, config)
            pending = first["__interrupt__"][0].value
            out(f"interrupted, waiting for approval of {pending['tool']}({pending['args']})")
            final = graph.invoke(Command(resume="approve"), config)
            out(f"resumed -> {final['messages'][-1].content}")
            out("history (newest first):")
            for snap in graph.get_state_history(config):
                last = snap.values.get("messages", [])[-1:] if snap.values else []
                text = _describe(last[0]) if last else "-"
                out(
                    f"  step {snap.metadata['step']:>2}  {snap.metadata['source']:<6} "
                    f"next={list(snap.next)!s:<12} last={text}"
                )
            saver.delete_thread(thread)


def _describe(msg: BaseMessage) -> str:
    if isinstance(msg, AIMessage) and msg.tool_calls:
        return f"AI tool call {msg.tool_calls[0]['name']}{msg.tool_calls[0]['args']}"
    return f"{msg.type}: {str(msg.content)[:40]}"
