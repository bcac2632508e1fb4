"""The main demo: one agent using every tier at once, on Valkey.

``python -m langgraph_valkey_cache demo`` runs a scripted multi-thread conversation
twice on an embedded server (or on ``--url`` / ``$VALKEY_URL``): once with persistence
only, once with every cache on, and prints a table per tier and both wall times. The
chat models are scripted fakes that sleep like a hosted model would, so no API key or
network is needed and the counts are the same on every run.

The agent: ``recall`` (store search over the user's memories) -> ``classify`` (a node
cached by ``ValkeyNodeCache``) -> ``remember`` (store put) | ``faq`` (a model behind
``ValkeySemanticCache``) | ``agent`` (a model behind ``set_llm_cache(ValkeyCache)``)
-> ``approve`` (``interrupt()``; resumed by the script) -> ``tools`` (``ToolCache``)
-> ``agent``. The checkpointer (``ValkeySaver``) keeps every thread.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.store.base import BaseStore
from langgraph.types import CachePolicy, Command, interrupt

__all__ = [
    "SCRIPT",
    "ScriptedChatModel",
    "build_agent",
    "count_round_trips",
    "embedded_or_url",
    "run_demo",
]

Out = Callable[[str], None]

#: The model name the scripted models report (priced by genai-prices in the ledger).
MODEL = "gpt-4o-mini"
#: Seconds each scripted model call and tool run sleeps, like a hosted model / API would.
MODEL_LATENCY = 0.2
TOOL_LATENCY = 0.1

#: ``(thread, user, message)``: the conversation, in order. ``carol`` opens with bob's
#: question (every model call of her turn is a replay), ``alice-replay`` re-runs alice's
#: thread on a new thread (an eval run or a retried session): every call is a replay.
SCRIPT: tuple[tuple[str, str, str], ...] = (
    ("alice", "alice", "remember: I live in Sofia and travel with my dog"),
    ("alice", "alice", "What's the weather in Sofia?"),
    ("alice", "alice", "How do I get a refund?"),
    ("bob", "bob", "What's the weather in Lisbon?"),
    ("bob", "bob", "How do I get a refund, please?"),  # a paraphrase: semantic hit
    ("carol", "carol", "What's the weather in Lisbon?"),
    ("alice-replay", "alice", "remember: I live in Sofia and travel with my dog"),
    ("alice-replay", "alice", "What's the weather in Sofia?"),
    ("alice-replay", "alice", "How do I get a refund?"),
)

_FAQ = {
    "refund": "Refunds go back to your card within five working days of a cancellation.",
    "dog": "Dogs up to 8 kg travel in the cabin; book their seat with yours.",
}
_WEATHER = {"sofia": "12°C, clear", "lisbon": "19°C, windy"}


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    time.sleep(TOOL_LATENCY)
    return _WEATHER.get(city.lower(), "no data")


def _usage(messages: Sequence[BaseMessage], base: int, output: int) -> dict[str, int]:
    # a system prompt and tool schemas of ``base`` tokens, plus ~1.3 tokens per word
    words = sum(len(str(m.content).split()) for m in messages)
    inputs = base + int(words * 1.3)
    return {"input_tokens": inputs, "output_tokens": output, "total_tokens": inputs + output}


class ScriptedChatModel(BaseChatModel):
    """A deterministic stand-in for a chat model.

    ``role="agent"``: asks for the weather tool on a user turn, answers from a tool
    result. ``role="faq"``: answers a policy question from a fixed table. Each call
    sleeps ``latency`` seconds and reports ``usage_metadata`` and the ``model_name`` of
    a real model (so the savings ledger can price hits). ``calls`` counts invocations.
    """

    calls: int = 0
    latency: float = 0.0
    role: str = "agent"
    model_name: str = MODEL

    @property
    def _llm_type(self) -> str:
        return "scripted-demo"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "role": self.role}

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
        if self.latency:
            time.sleep(self.latency)
        last = messages[-1]
        meta = {"model_name": self.model_name, "model_provider": "openai"}
        if self.role == "faq":
            topic = next((t for t in _FAQ if t in str(last.content).lower()), None)
            text = _FAQ[topic] if topic else "Please ask our support team."
            msg = AIMessage(
                content=text, response_metadata=meta, usage_metadata=_usage(messages, 900, 40)
            )
        elif isinstance(last, ToolMessage):
            msg = AIMessage(
                content=f"The weather is {last.content}.",
                response_metadata=meta,
                usage_metadata=_usage(messages, 400, 12),
            )
        else:
            city = str(last.content).rstrip("?").split()[-1]
            msg = AIMessage(
                content="",
                tool_calls=[{"name": "get_weather", "args": {"city": city}, "id": "call_1"}],
                response_metadata=meta,
                usage_metadata=_usage(messages, 400, 20),
            )
        return ChatResult(generations=[ChatGeneration(message=msg)])


class AgentState(MessagesState):
    memory: str


def _memory_key(text: str) -> str:
    # the same memory written twice is one item (a replayed thread rewrites it)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_agent(
    model: BaseChatModel | None = None,
    tool_cache: Any = None,
    *,
    faq_model: BaseChatModel | None = None,
    node_cache_ttl: int | None = 600,
) -> StateGraph:
    """The demo's graph (see the module docs); compile it with any checkpointer.

    Args:
        model: the agent's model (default: a :class:`ScriptedChatModel`).
        tool_cache: a :class:`~langgraph_valkey_cache.ToolCache` wrapping the tool node.
        faq_model: the model answering policy questions (default: a scripted one).
        node_cache_ttl: ``classify``'s ``CachePolicy`` TTL in seconds (``None``: no
            policy); it only takes effect when the graph is compiled with ``cache=``.

    The ``recall`` and ``remember`` nodes use the store the graph is compiled with
    (``store=``) under ``("users", <user_id>, "memories")``, ``user_id`` from the run's
    ``configurable``; without a store they do nothing.
    """
    llm = (model or ScriptedChatModel()).bind_tools([get_weather])
    faq = faq_model or ScriptedChatModel(role="faq")

    def user_ns(config: RunnableConfig) -> tuple[str, ...]:
        return ("users", config.get("configurable", {}).get("user_id", "anonymous"), "memories")

    def recall(state: AgentState, config: RunnableConfig, *, store: BaseStore) -> dict[str, Any]:
        if store is None:
            return {"memory": ""}
        query = str(state["messages"][-1].content)
        hits = store.search(user_ns(config), query=query, filter={"kind": "fact"}, limit=1)
        return {"memory": hits[0].value["text"] if hits else ""}

    def classify(state: AgentState) -> Command[Any]:
        time.sleep(0.02)  # stands in for a small intent classifier
        text = str(state["messages"][-1].content).lower()
        if text.startswith("remember:"):
            return Command(goto="remember")
        if any(topic in text for topic in _FAQ):
            return Command(goto="faq")
        return Command(goto="agent")

    def remember(state: AgentState, config: RunnableConfig, *, store: BaseStore) -> dict[str, Any]:
        text = str(state["messages"][-1].content).removeprefix("remember:").strip()
        if store is not None:
            store.put(user_ns(config), _memory_key(text), {"text": text, "kind": "fact"})
        return {"messages": [AIMessage(f"Noted: {text}")]}

    def answer_faq(state: AgentState) -> dict[str, Any]:
        # only the question: the semantic cache compares it with other users' questions
        return {"messages": [faq.invoke([state["messages"][-1]])]}

    def agent(state: AgentState) -> dict[str, Any]:
        system = "You are a travel assistant."
        if state.get("memory"):
            system += f" Known about the user: {state['memory']}"
        return {"messages": [llm.invoke([SystemMessage(system), *state["messages"]])]}

    def approve(state: AgentState) -> Command[Any]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)  # route() only sends tool-calling turns here
        call = last.tool_calls[0]
        decision = interrupt({"tool": call["name"], "args": call["args"]})
        return Command(goto="tools" if decision == "approve" else END)

    def route(state: AgentState) -> str:
        return "approve" if getattr(state["messages"][-1], "tool_calls", None) else END

    def last_message(state: AgentState) -> str:
        # the classifier reads only the last message: key the cache on it alone
        return str(state["messages"][-1].content)

    builder = StateGraph(AgentState)
    builder.add_node("recall", recall)
    policy = (
        CachePolicy(key_func=last_message, ttl=node_cache_ttl)
        if node_cache_ttl is not None
        else None
    )
    builder.add_node(
        "classify", classify, cache_policy=policy, destinations=("remember", "faq", "agent")
    )
    builder.add_node("remember", remember)
    builder.add_node("faq", answer_faq)
    builder.add_node("agent", agent)
    builder.add_node("approve", approve, destinations=("tools", END))
    hooks = (
        {"wrap_tool_call": tool_cache.wrap, "awrap_tool_call": tool_cache.awrap}
        if tool_cache
        else {}
    )
    builder.add_node("tools", ToolNode([get_weather], **hooks))
    builder.add_edge(START, "recall")
    builder.add_edge("recall", "classify")
    builder.add_edge("remember", END)
    builder.add_edge("faq", END)
    builder.add_conditional_edges("agent", route, ["approve", END])
    builder.add_edge("tools", "agent")
    return builder


# -- round trips per tier --------------------------------------------------------------------


@dataclass
class RoundTrips:
    """Requests one client sent (a pipeline or a script is one); handshakes excluded."""

    n: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self) -> None:
        with self._lock:
            self.n += 1


def count_round_trips(client: Any) -> RoundTrips | None:
    """Count the round trips of a standalone sync client built by ``client_from_url`` /
    ``cache_client_from_url`` (before its first command). ``None`` for a cluster client,
    which has no single pool to count on."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return None
    trips = RoundTrips()
    base: Any = pool.connection_class

    class Counting(base):  # type: ignore[misc, valid-type]
        def on_connect(self, *args: Any, **kwargs: Any) -> Any:
            self._lgv_handshake = True
            try:
                return super().on_connect(*args, **kwargs)
            finally:
                self._lgv_handshake = False

        def send_packed_command(self, command: Any, check_health: bool = True) -> Any:
            if not getattr(self, "_lgv_handshake", False):
                trips.add()
            return super().send_packed_command(command, check_health)

    pool.connection_class = Counting
    return trips


# -- the server --------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    search: bool
    embedded: Any = None  # an EmbeddedValkey the demo started


@contextmanager
def embedded_or_url(
    url: str | None, out: Out, *, search: bool = False, keep: bool = False
) -> Iterator[Server]:
    """Yield ``url``, or start an embedded valkey-server for the duration (``keep``:
    leave it running afterwards).

    With ``search=True`` the embedded server loads an FT.* module when one is installed
    (the test extra's), so the store and the semantic cache can use vector search.
    """
    if url:
        yield Server(url, _has_search(url))
        return
    from langgraph_valkey_cache.embedded import EmbeddedValkey, search_module_path

    try:
        with_search = search and bool(search_module_path())
    except RuntimeError:
        with_search = False
    server = EmbeddedValkey(search=with_search).start()
    extra = " with an FT.* module" if with_search else ""
    out(f"started an embedded valkey-server{extra} at {server.url}")
    try:
        yield Server(server.url, with_search, server)
    finally:
        if not keep:
            server.stop()


def _has_search(url: str) -> bool:
    from langgraph_valkey_cache._client import client_from_url

    client = client_from_url(url)
    try:
        client.execute_command("FT._LIST")
        return True
    except Exception:  # no module (unknown command) or not allowed: run without it
        return False
    finally:
        client.close()


# -- the run ---------------------------------------------------------------------------------


class Progress:
    """A plain-text progress bar on ``stream``: redrawn in place on a terminal, else one
    line at the end of each pass of ``per_pass`` steps."""

    def __init__(
        self, total: int, per_pass: int, stream: TextIO | None = None, width: int = 30
    ) -> None:
        self.total, self.per_pass, self.done, self.width = total, per_pass, 0, width
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def step(self, label: str) -> None:
        self.done += 1
        end_of_pass = self.done % self.per_pass == 0
        if not (self.tty or end_of_pass):
            return
        filled = self.width * self.done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        line = f"[{bar}] {self.done:>2}/{self.total} {label:<28}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if end_of_pass else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


@dataclass
class PassResult:
    seconds: float
    model_calls: int
    tool_runs: int
    transcript: list[str]


def _run_script(
    graph: Any, progress: Progress, label: str, tool_runs: Callable[[], int]
) -> PassResult:
    models = [graph.agent_model, graph.faq_model]
    calls_before = sum(m.calls for m in models)
    runs_before = tool_runs()
    transcript = []
    t0 = time.perf_counter()
    for thread, user, text in SCRIPT:
        config = {"configurable": {"thread_id": thread, "user_id": user}}
        result = graph.invoke({"messages": [HumanMessage(text)]}, config)
        approved = []
        while result.get("__interrupt__"):  # the scripted user approves every tool call
            ask = result["__interrupt__"][0].value
            args = ", ".join(f"{k}={v}" for k, v in ask["args"].items())
            approved.append(f"[approved {ask['tool']}({args})] ")
            result = graph.invoke(Command(resume="approve"), config)
        reply = "".join(approved) + str(result["messages"][-1].content)
        transcript.append(f"  {thread:<13} {text}\n  {'':<13} -> {reply}")
        progress.step(f"{label}: {thread}")
    return PassResult(
        time.perf_counter() - t0, sum(m.calls for m in models) - calls_before,
        tool_runs() - runs_before, transcript,
    )  # fmt: skip


@dataclass
class Row:
    tier: str
    hits: int | None = None
    misses: int | None = None
    round_trips: int | None = None
    tokens_saved: int | None = None
    saved_usd: float | None = None
    saved_s: float | None = None


def run_demo(
    url: str | None = None,
    out: Out = print,
    *,
    keep: bool = False,
    progress: TextIO | None = None,
    model_latency: float = MODEL_LATENCY,
) -> list[Row]:
    """Run the scripted conversation without and with caching; print the per-tier
    table and wall times. Returns the table's rows. ``keep``: leave the data (and an
    embedded server) in place and print the CLI commands that explore it."""
    from langchain_core.globals import get_llm_cache, set_llm_cache

    logging.basicConfig(level=logging.WARNING, format="  [%(name)s] %(message)s")
    previous_cache = get_llm_cache()
    with embedded_or_url(url, out, search=True, keep=keep) as server:
        run = uuid.uuid4().hex[:8]
        base = f"lgv-demo:{run}"
        if not server.search:
            out("no FT.* module on this server: the semantic cache is skipped (FAQ answers "
                "go through the exact cache) and memory search is exact cosine")  # fmt: skip
            # the store would log the same fallback once more
            logging.getLogger("langgraph_valkey_cache.store").setLevel(logging.ERROR)
        bar = Progress(2 * len(SCRIPT), len(SCRIPT), progress)
        try:
            baseline = _baseline_pass(server, f"{base}:nocache", bar, model_latency)
            rows, cached = _cached_pass(server, base, bar, model_latency)
        finally:
            set_llm_cache(previous_cache)
        out("\nthe conversation (the same in both passes):")
        for line in cached.transcript:
            out(line)
        _print_table(rows, out)
        speedup = baseline.seconds / cached.seconds if cached.seconds else 0.0
        out(
            f"\nwall time for {len(SCRIPT)} turns on {len({t for t, _, _ in SCRIPT})} threads: "
            f"{baseline.seconds:.2f} s without caching, {cached.seconds:.2f} s with "
            f"({speedup:.1f}x)"
        )
        out(
            f"model calls {baseline.model_calls} -> {cached.model_calls}, "
            f"tool runs {baseline.tool_runs} -> {cached.tool_runs} "
            f"(each scripted model call sleeps {model_latency:g} s, each tool run "
            f"{TOOL_LATENCY:g} s)"
        )
        _cleanup(server.url, f"{base}:nocache")
        if keep:
            _print_keep(server, base, out)
        elif server.embedded is None:
            _cleanup(server.url, base)
    return rows


def _baseline_pass(server: Server, prefix: str, bar: Progress, latency: float) -> PassResult:
    """Persistence only: the checkpointer and the store, no cache of any kind."""
    from langchain_core.globals import set_llm_cache

    from langgraph_valkey_cache._client import client_from_url
    from langgraph_valkey_cache.checkpoint import ValkeySaver

    set_llm_cache(None)
    cp_client, store_client = client_from_url(server.url), client_from_url(server.url)
    try:
        saver = ValkeySaver(cp_client, prefix=f"{prefix}:cp")
        saver.setup()
        store = _store(store_client, f"{prefix}:store")
        graph, runs = _graph(saver, store, latency, tool_cache=None, faq_cache=None)
        return _run_script(graph, bar, "without caching", runs)
    finally:
        cp_client.close()
        store_client.close()


def _cached_pass(
    server: Server, base: str, bar: Progress, latency: float
) -> tuple[list[Row], PassResult]:
    from langchain_core.globals import set_llm_cache

    from langgraph_valkey_cache._client import cache_client_from_url, client_from_url
    from langgraph_valkey_cache.cache.llm import ValkeyCache
    from langgraph_valkey_cache.cache.node import ValkeyNodeCache
    from langgraph_valkey_cache.cache.semantic import ValkeySemanticCache
    from langgraph_valkey_cache.cache.tools import ToolCache
    from langgraph_valkey_cache.checkpoint import ValkeySaver
    from langgraph_valkey_cache.testing import HashingEmbeddings

    clients: dict[str, Any] = {
        "checkpointer": client_from_url(server.url),
        "store": client_from_url(server.url),
        "llm": cache_client_from_url(server.url),
        "tools": cache_client_from_url(server.url),
        "node": cache_client_from_url(server.url),
    }
    if server.search:
        clients["semantic"] = cache_client_from_url(server.url)
    trips = {tier: count_round_trips(c) for tier, c in clients.items()}
    try:
        saver = ValkeySaver(clients["checkpointer"], prefix=f"{base}:cp")
        saver.setup()
        store = _store(clients["store"], f"{base}:store")
        llm_cache = ValkeyCache(clients["llm"], prefix=f"{base}:llm", ttl=3600)
        tool_cache = ToolCache(clients["tools"], prefix=f"{base}:tools", ttl=600)
        node_cache: ValkeyNodeCache[Any] = ValkeyNodeCache(clients["node"], prefix=f"{base}:node")
        semantic = None
        if server.search:
            semantic = ValkeySemanticCache(
                clients["semantic"], HashingEmbeddings(256), prefix=f"{base}:semantic",
                distance_threshold=0.1, ttl=3600,
            )  # fmt: skip
            semantic.setup()
        set_llm_cache(llm_cache)
        graph, runs = _graph(
            saver, store, latency, tool_cache=tool_cache, faq_cache=semantic, cache=node_cache
        )
        # setup() calls are not part of the conversation
        for counter in trips.values():
            if counter:
                counter.n = 0
        result = _run_script(graph, bar, "with caching", runs)
        caches: list[tuple[str, Any]] = [("LLM cache (exact)", llm_cache)]
        if semantic is not None:
            caches.append(("semantic cache", semantic))
        caches += [("tool cache", tool_cache), ("node cache", node_cache)]
        for _, cache in caches:
            cache.flush_stats()  # so `stats` in another process sees this run
        rows = [Row("checkpointer", round_trips=_n(trips["checkpointer"]))]
        tier_of = {"LLM cache (exact)": "llm", "semantic cache": "semantic",
                   "tool cache": "tools", "node cache": "node"}  # fmt: skip
        for name, cache in caches:
            st = cache.totals() if isinstance(cache, ToolCache) else cache.stats()
            priced = name in ("LLM cache (exact)", "semantic cache")
            rows.append(
                Row(name, st.hits, st.misses, _n(trips[tier_of[name]]),
                    st.tokens_saved if priced else None, st.saved_usd if priced else None,
                    st.saved_ms / 1000 if st.saved_ms else None)
            )  # fmt: skip
        if semantic is not None and semantic.embedding_store is not None:
            # the semantic cache's query vectors (its round trips are counted above)
            st = semantic.embedding_store.stats()
            rows.append(Row("embedding cache", st.hits, st.misses))
        rows.append(Row("store", round_trips=_n(trips["store"])))
        return rows, result
    finally:
        for c in clients.values():
            c.close()


def _n(counter: RoundTrips | None) -> int | None:
    return counter.n if counter else None


def _store(client: Any, prefix: str) -> Any:
    from langgraph_valkey_cache.store import ValkeyStore
    from langgraph_valkey_cache.testing import HashingEmbeddings

    store = ValkeyStore(
        client,
        prefix=prefix,
        index={"dims": 64, "embed": HashingEmbeddings(64), "fields": ["text"]},
    )
    store.setup()
    return store


def _graph(
    saver: Any,
    store: Any,
    latency: float,
    *,
    tool_cache: Any,
    faq_cache: Any,
    cache: Any = None,
) -> tuple[Any, Callable[[], int]]:
    runs = [0]

    def counting(request: Any, execute: Callable[[Any], Any]) -> Any:
        runs[0] += 1
        return execute(request)

    class Counted:
        """Counts tool runs (below the tool cache: hits never get here)."""

        def wrap(self, request: Any, execute: Callable[[Any], Any]) -> Any:
            def inner(r: Any) -> Any:
                return counting(r, execute)

            return tool_cache.wrap(request, inner) if tool_cache else inner(request)

        async def awrap(self, request: Any, execute: Callable[[Any], Any]) -> Any:
            async def inner(r: Any) -> Any:
                runs[0] += 1
                return await execute(r)

            return await tool_cache.awrap(request, inner) if tool_cache else await inner(request)

    agent_model = ScriptedChatModel(latency=latency)
    # the FAQ model's cache: the semantic one when there is one, else the global exact one
    faq_model = ScriptedChatModel(role="faq", latency=latency, cache=faq_cache)
    builder = build_agent(agent_model, Counted(), faq_model=faq_model)
    graph = builder.compile(checkpointer=saver, store=store, cache=cache)
    graph.agent_model, graph.faq_model = agent_model, faq_model  # type: ignore[attr-defined]
    return graph, lambda: runs[0]


def _print_table(rows: Sequence[Row], out: Out) -> None:
    def cell(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    def seconds(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} s"

    def line(r: Row) -> str:
        return (
            f"{r.tier:<18} {cell(r.hits, 'd'):>5} {cell(r.misses, 'd'):>6} "
            f"{cell(r.round_trips, 'd'):>11} {cell(r.tokens_saved, ','):>12} "
            f"{cell(r.saved_usd, '.6f'):>10} {seconds(r.saved_s):>10}"
        )

    out("")
    out(f"{'tier':<18} {'hits':>5} {'misses':>6} {'round trips':>11} "
        f"{'tokens saved':>12} {'USD saved':>10} {'time saved':>10}")  # fmt: skip
    for r in rows:
        out(line(r))
    caches = [r for r in rows if r.hits is not None]
    total = Row(
        "total",
        sum(r.hits or 0 for r in caches),
        sum(r.misses or 0 for r in caches),
        sum(r.round_trips or 0 for r in rows),
        sum(r.tokens_saved or 0 for r in caches),
        sum(r.saved_usd or 0.0 for r in caches),
        sum(r.saved_s or 0.0 for r in caches) or None,
    )
    out(line(total))


def _print_keep(server: Server, base: str, out: Out) -> None:
    cli = f"python -m langgraph_valkey_cache --url {server.url}"
    cp = f"{cli} --prefix {base}:cp"
    out(f"\nthe data is kept on {server.url} under {base}:*")
    if server.embedded is not None:
        pid = server.embedded._proc.pid if server.embedded._proc else "?"
        out(f"the embedded server keeps running (pid {pid}); stop it with: kill {pid}")
    out("explore it:")
    out(f"  {cp} threads")
    out(f"  {cp} inspect alice")
    out(f"  {cp} diff alice latest~1 latest")
    out(f"  {cli} stats")


def _cleanup(url: str, prefix: str) -> None:
    """Delete every key under ``prefix:``, its FT indexes and its stats registry entries."""
    from langgraph_valkey_cache._client import client_from_url, scan_keys
    from langgraph_valkey_cache._stats import REGISTRY_KEY

    client = client_from_url(url)
    try:
        for key in scan_keys(client, f"{prefix}:*"):
            client.unlink(key)
        try:
            indexes = client.execute_command("FT._LIST")
        except Exception:  # no search module: no index to drop
            indexes = []
        for name in indexes:
            if _text(name).startswith(prefix + ":"):
                client.execute_command("FT.DROPINDEX", name)
        stale = [f for f in client.hkeys(REGISTRY_KEY) if f":{prefix}:" in _text(f)]
        if stale:
            client.hdel(REGISTRY_KEY, *stale)
    finally:
        client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
