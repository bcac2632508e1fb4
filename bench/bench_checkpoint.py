"""Checkpointer benchmark: a 20-step agent loop over many threads, side by side.

Runs the same graph with InMemorySaver, a floor row (InMemorySaver plus one bare-socket
round trip per ``put``/``put_writes``: what any saver with one round trip per call
costs at least inside LangGraph's loop), our ValkeySaver and
AsyncValkeySaver, and langgraph-checkpoint-aws's ValkeySaver when installed
(``pip install 'langgraph-checkpoint-aws[valkey]'``), all in one process against one
embedded valkey-server (or ``--url``). Prints per-step time (wall and this process's
CPU) and its ratios to InMemorySaver and to langgraph-checkpoint-aws, what the saver
adds to the step (``+saver``: above the same graph compiled without a checkpointer,
LangGraph's own floor), round trips per saver operation, and server bytes per
checkpoint (``MEMORY USAGE`` summed over a thread's keys). Calls and round trips are
counted in the warm-up round only: counting wraps every command, so timed rounds run
the savers unwrapped.

    python bench/bench_checkpoint.py [--threads 40] [--url valkey://...] [--one-way-ms 0.25]
                                     [--ops 200] [--repeat 3]

``--ops N`` adds a per-operation table: the exact ``put``/``put_writes`` calls of one
agent-loop thread (recorded from a run on InMemorySaver) are replayed N times into each
Valkey saver, plus ``get_tuple`` of the latest checkpoint and of one by id. It prints
the median wall time per call and the client CPU time per call (``process_time``:
what the saver costs the agent's process; the server is another process).
``--repeat R`` runs the agent loop R times per saver and keeps the best (the machine
is shared: the minimum is the least disturbed run).

``--memory`` adds a server-memory table: bytes per checkpoint (``MEMORY USAGE`` of a
thread's keys, plus this saver's thread-index keys, over its checkpoints) for the agent
loop (about 11 KB of state at the end) and for a 50-message chat thread (25 turns of
~400-character messages drawn from a Zipf vocabulary, about as compressible as prose),
for our saver as is, with ``compress_min_bytes=1024`` and langgraph-checkpoint-aws's.

``--thread-lengths 20,100,400`` adds the client CPU of one ``put`` that appends a message
to a thread of that many messages, per saver (a long conversation's cost per step).

``--one-way-ms`` routes every saver through a delaying TCP proxy (bench/_latency.py,
its own process) to show what round trips cost over a real network; the measured
round-trip time is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import random
import socket
import statistics
import threading
import time
from collections import Counter
from typing import Any

import valkey
import valkey.asyncio
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph

from langgraph_valkey_cache import AsyncValkeySaver, ValkeySaver
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache.demo import embedded_or_url
from langgraph_valkey_cache.testing import count_commands

STEPS = 20  # supersteps per thread: 10 agent turns + 10 tool turns
WARM = 2  # threads per saver in the warm-up round (which also counts round trips)


def build_graph() -> Any:
    def agent(state: MessagesState) -> dict[str, Any]:
        turns = sum(isinstance(m, AIMessage) for m in state["messages"])
        if turns >= STEPS // 2:
            return {"messages": [AIMessage("done")]}
        call = {"name": "lookup", "args": {"q": f"q{turns}"}, "id": f"c{turns}"}
        return {"messages": [AIMessage("", tool_calls=[call])]}

    def tools(state: MessagesState) -> dict[str, Any]:
        call = state["messages"][-1].tool_calls[0]  # type: ignore[attr-defined]
        return {"messages": [ToolMessage("result " * 20, tool_call_id=call["id"])]}

    def route(state: MessagesState) -> str:
        return "tools" if getattr(state["messages"][-1], "tool_calls", None) else END

    b = StateGraph(MessagesState)
    b.add_node("agent", agent)
    b.add_node("tools", tools)
    b.add_edge(START, "agent")
    b.add_conditional_edges("agent", route, ["tools", END])
    b.add_edge("tools", "agent")
    return b.compile


class FloorSaver(InMemorySaver):
    """The floor of any networked saver: InMemorySaver's work plus one round trip per
    ``put`` and ``put_writes`` (a ``PING`` on a bare blocking socket per thread, no
    client library). Inside LangGraph's loop a round trip costs far more than its
    syscalls: the background thread blocks, the loop's thread takes the GIL, and the
    reply waits for it to be handed back."""

    def __init__(self, url: str) -> None:
        super().__init__()
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        self.addr = (host, int(port))
        self.local = threading.local()

    def _round_trip(self) -> None:
        sock = getattr(self.local, "sock", None)
        if sock is None:
            sock = self.local.sock = socket.create_connection(self.addr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        got = b""
        while not got.endswith(b"\r\n"):
            got += sock.recv(64)

    def put(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        out = super().put(config, checkpoint, metadata, new_versions)
        self._round_trip()
        return out

    def put_writes(self, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
        super().put_writes(config, writes, task_id, task_path)
        self._round_trip()


class OpCounter:
    """Counts calls of each saver operation by wrapping the instance's methods
    (``restore()`` removes the wrappers)."""

    OPS = ("put", "put_writes", "get_tuple", "aput", "aput_writes", "aget_tuple")

    def __init__(self, saver: Any) -> None:
        self.calls: Counter[str] = Counter()
        self.saver = saver
        self.wrapped: list[str] = []
        for name in self.OPS:
            orig = getattr(saver, name, None)
            if orig is None:
                continue
            self.wrapped.append(name)
            if asyncio.iscoroutinefunction(orig):

                async def awrapped(*a: Any, __o: Any = orig, __n: str = name, **k: Any) -> Any:
                    self.calls[__n[1:]] += 1  # aput -> put: same operation
                    return await __o(*a, **k)

                setattr(saver, name, awrapped)
            else:

                def wrapped(*a: Any, __o: Any = orig, __n: str = name, **k: Any) -> Any:
                    self.calls[__n] += 1
                    return __o(*a, **k)

                setattr(saver, name, wrapped)

    def restore(self) -> None:
        for name in self.wrapped:
            vars(self.saver).pop(name, None)


def run_sync(saver: Any, threads: int, tag: str) -> float:
    return run_sync_cpu(saver, threads, tag)[0]


def run_sync_cpu(saver: Any, threads: int, tag: str) -> tuple[float, float]:
    """(wall s, CPU s of this process, every thread: LangGraph's background puts too).
    ``saver=None``: the same graph without a checkpointer (LangGraph's own floor)."""
    graph = build_graph()(checkpointer=saver)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(threads):
        graph.invoke(
            {"messages": [HumanMessage("go")]}, {"configurable": {"thread_id": f"{tag}-{i}"}}
        )
    return time.perf_counter() - start, time.process_time() - cpu


async def run_async(saver: Any, threads: int, tag: str) -> float:  # wall s
    graph = build_graph()(checkpointer=saver)
    start = time.perf_counter()
    for i in range(threads):
        await graph.ainvoke(
            {"messages": [HumanMessage("go")]}, {"configurable": {"thread_id": f"{tag}-{i}"}}
        )
    return time.perf_counter() - start


class Recorder(InMemorySaver):
    """InMemorySaver that keeps a copy of every put/put_writes call, in order. One
    deep-copy memo for the whole run: an object LangGraph hands to several calls (a
    message in every later checkpoint's list) is one object in the replay too, as it
    is in the live loop (copying each call apart would make every put's messages new
    objects, which no real run does)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.memo: dict[int, Any] = {}  # also keeps the originals alive (ids stay theirs)

    def put(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        args = (config, checkpoint, metadata, new_versions)
        self.calls.append(("put", copy.deepcopy(args, self.memo)))
        return super().put(*args)

    def put_writes(self, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
        args = (config, writes, task_id, task_path)
        self.calls.append(("put_writes", copy.deepcopy(args, self.memo)))
        super().put_writes(*args)


def record_calls() -> list[tuple[str, tuple[Any, ...]]]:
    rec = Recorder()
    run_sync(rec, 1, "rec")
    return rec.calls


def _with_thread(config: Any, thread: str) -> Any:
    return {**config, "configurable": {**config["configurable"], "thread_id": thread}}


def _replay(saver: Any, calls: list[tuple[str, tuple[Any, ...]]], thread: str) -> dict[str, Any]:
    """One replay of ``calls`` into ``thread``: per op, (wall s, CPU s) of each call."""
    out: dict[str, list[tuple[float, float]]] = {"put": [], "put_writes": [], "get_tuple": []}
    clock, cpu_clock = time.perf_counter, time.process_time
    last: Any = None
    for op, args in calls:
        fn = getattr(saver, op)
        call = (_with_thread(args[0], thread), *args[1:])
        c0, t0 = cpu_clock(), clock()
        got = fn(*call)
        t1, c1 = clock(), cpu_clock()
        out[op].append((t1 - t0, c1 - c0))
        if op == "put":
            last = got
    for config in ({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}, last):
        c0, t0 = cpu_clock(), clock()
        got = saver.get_tuple(config)
        t1, c1 = clock(), cpu_clock()
        assert got is not None
        out["get_tuple"].append((t1 - t0, c1 - c0))
    return out


def measure_ops(
    savers: dict[str, Any], calls: list[tuple[str, tuple[Any, ...]]], reps: int
) -> dict[str, dict[str, tuple[float, float]]]:
    """Per saver and operation: (median wall us, median client CPU us) over ``reps``
    replays. The savers take turns replay by replay, so a noisy neighbour on a shared
    machine slows all of them alike."""
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {
        name: {"put": [], "put_writes": [], "get_tuple": []} for name in savers
    }
    for r in range(-2, reps):  # two warm-up replays
        for name, saver in savers.items():
            got = _replay(saver, calls, f"ops-{r}")
            if r >= 0:
                for op, xs in got.items():
                    samples[name][op] += xs
    return {
        name: {
            op: (
                statistics.median(w for w, _ in xs) * 1e6,
                statistics.median(c for _, c in xs) * 1e6,
            )
            for op, xs in ops.items()
        }
        for name, ops in samples.items()
    }


def _vocabulary(rng: random.Random, n: int = 2000) -> list[str]:
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1]
    return ["".join(rng.choices(letters, weights, k=rng.randint(2, 9))) for _ in range(n)]


def _text(rng: random.Random, vocab: list[str], chars: int) -> str:
    # Zipf-distributed words: roughly the redundancy of natural language
    weights = [1 / (i + 1) for i in range(len(vocab))]
    out: list[str] = []
    size = 0
    while size < chars:
        w = rng.choices(vocab, weights)[0]
        out.append(w)
        size += len(w) + 1
    return " ".join(out)


def build_chat_graph() -> Any:
    def reply(state: MessagesState) -> dict[str, Any]:
        rng = random.Random(len(state["messages"]))
        return {"messages": [AIMessage(_text(rng, _VOCAB, 400))]}

    b = StateGraph(MessagesState)
    b.add_node("model", reply)
    b.add_edge(START, "model")
    b.add_edge("model", END)
    return b.compile


_VOCAB = _vocabulary(random.Random(7))
CHAT_TURNS = 25  # 50 messages


def state_bytes(saver: Any, config: dict[str, Any]) -> int:
    tup = saver.get_tuple(config)
    return sum(
        len(saver.serde.dumps_typed(v)[1]) for v in tup.checkpoint["channel_values"].values()
    )


def long_thread_table(
    savers: dict[str, Any], lengths: list[int], puts: int = 40
) -> list[tuple[int, dict[str, float]]]:
    """Median client CPU us of one ``put`` that appends a message to a thread of N
    messages (the same message objects from put to put, as LangGraph hands them over),
    per saver: what a long conversation costs each step."""
    from langgraph.checkpoint.base import empty_checkpoint

    def checkpoint(msgs: list[Any], version: int) -> Any:
        cp = empty_checkpoint()
        cp["id"] = f"{version:08d}-{random.getrandbits(64):016x}"
        cp["channel_values"] = {"messages": msgs}
        cp["channel_versions"] = {"messages": version}
        return cp

    out = []
    for n in lengths:
        row = {}
        for name, saver in savers.items():
            msgs: list[Any] = [
                HumanMessage("q " * 60, id=f"h{i}") if i % 2 == 0 else AIMessage("a " * 120)
                for i in range(n)
            ]
            cfg = {"configurable": {"thread_id": f"long-{n}", "checkpoint_ns": ""}}
            first = checkpoint(msgs, 1)
            cfg = saver.put(cfg, first, {"source": "loop", "step": 0}, {"messages": 1})
            times = []
            for k in range(puts):
                msgs = [*msgs, AIMessage(f"n{k} " * 50, id=f"n{n}-{k}")]
                cp, meta = checkpoint(msgs, k + 2), {"source": "loop", "step": k + 1}
                t = time.process_time()
                cfg = saver.put(cfg, cp, meta, {"messages": k + 2})
                times.append(time.process_time() - t)
            row[name] = statistics.median(times) * 1e6
        out.append((n, row))
    return out


def memory_table(
    raw: valkey.Valkey, url: str, make_client: Any
) -> list[tuple[str, str, float, int]]:
    """(scenario, saver, bytes per checkpoint, final state bytes) rows."""
    tag = f"{random.randrange(1 << 30):x}"  # fresh keys each run: nothing is flushed
    savers: dict[str, Any] = {
        "ValkeySaver (ours)": lambda: ValkeySaver(make_client(url), prefix=f"mem-a{tag}"),
        "ValkeySaver (ours, compress_min_bytes=1024)": lambda: ValkeySaver(
            make_client(url), prefix=f"mem-z{tag}", compress_min_bytes=1024
        ),
    }
    try:
        from langgraph_checkpoint_aws import ValkeySaver as AwsValkeySaver
    except ImportError:
        pass
    else:
        savers["langgraph-checkpoint-aws ValkeySaver"] = lambda: AwsValkeySaver(make_client(url))
    rows = []
    for k, scenario in enumerate(("agent loop (20 steps)", "chat, 50 messages")):
        for j, (name, factory) in enumerate(savers.items()):
            saver = factory()
            thread = f"memthread-{tag}-{k}-{j}"
            config = {"configurable": {"thread_id": thread}}
            if scenario.startswith("agent"):
                build_graph()(checkpointer=saver).invoke({"messages": [HumanMessage("go")]}, config)
            else:
                graph = build_chat_graph()(checkpointer=saver)
                rng = random.Random(1)
                for _ in range(CHAT_TURNS):
                    graph.invoke({"messages": [HumanMessage(_text(rng, _VOCAB, 400))]}, config)
            n = sum(1 for _ in saver.list(config))
            total = float(thread_bytes(raw, f"*{thread}*"))
            if isinstance(saver, ValkeySaver):  # its share of the thread index too
                total += thread_bytes(raw, f"{saver.keys.prefix}:{{%ix}}:*") / (k + 1)
            rows.append((scenario, name, total / n, state_bytes(saver, config)))
    return rows


def thread_bytes(client: valkey.Valkey, match: str) -> int:
    return sum(
        client.memory_usage(k, samples=0) or 0 for k in client.scan_iter(match=match, count=1000)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=40)
    parser.add_argument("--url", default=None)
    parser.add_argument("--one-way-ms", type=float, default=0.0)
    parser.add_argument("--ops", type=int, default=0, help="per-operation replays (0: off)")
    parser.add_argument("--repeat", type=int, default=1, help="agent-loop runs, best kept")
    parser.add_argument("--memory", action="store_true", help="server bytes per checkpoint")
    parser.add_argument(
        "--thread-lengths",
        default="",
        help="comma-separated message counts, e.g. 20,100,400: CPU of one put per length",
    )
    parser.add_argument(
        "--client",
        choices=("ours", "plain"),
        default="ours",
        help="every saver gets the same client: client_from_url (blocking pool, timeouts) "
        "or a plain valkey.Valkey.from_url",
    )
    args = parser.parse_args()
    n = args.threads

    def make_client(url: str, **kw: Any) -> Any:
        if args.client == "ours":
            return client_from_url(url, **kw)
        if kw.get("asyncio"):
            return valkey.asyncio.Valkey.from_url(url)
        return valkey.Valkey.from_url(url)

    with embedded_or_url(args.url, print) as server:
        # a URL, or (newer demo helper) an object carrying one
        direct_url = str(getattr(server, "url", server))
        raw = client_from_url(direct_url)
        url, proxy = direct_url, None
        if args.one_way_ms:
            from _latency import measured_rtt_ms, spawn

            proxy, url = spawn(int(direct_url.rsplit(":", 1)[1]), args.one_way_ms)
            print(f"through a delaying proxy: measured RTT {measured_rtt_ms(url):.2f} ms")

        mem_rows = memory_table(raw, url, make_client) if args.memory else []
        long_rows: list[tuple[int, dict[str, float]]] = []
        if args.thread_lengths:
            long_savers: dict[str, Any] = {
                "InMemorySaver": InMemorySaver(),
                "ValkeySaver (ours)": ValkeySaver(make_client(url), prefix="long"),
            }
            try:
                from langgraph_checkpoint_aws import ValkeySaver as AwsLongSaver
            except ImportError:
                pass
            else:
                long_savers["langgraph-checkpoint-aws ValkeySaver"] = AwsLongSaver(make_client(url))
            lengths = [int(x) for x in args.thread_lengths.split(",")]
            long_rows = long_thread_table(long_savers, lengths)
            raw.flushdb()
        ops_rows: list[tuple[str, dict[str, tuple[float, float]]]] = []
        calls = record_calls() if args.ops else []
        if calls:
            ops_savers: dict[str, Any] = {
                "ValkeySaver (ours)": ValkeySaver(make_client(url), prefix="ops")
            }
            try:
                from langgraph_checkpoint_aws import ValkeySaver as AwsOpsSaver
            except ImportError:
                pass
            else:
                ops_savers["langgraph-checkpoint-aws ValkeySaver"] = AwsOpsSaver(make_client(url))
            ops_rows = list(measure_ops(ops_savers, calls, args.ops).items())
            raw.flushdb()

        # agent loop: the savers take turns, round by round (a shared machine's noise hits
        # all of them alike); per saver the best wall and the best CPU time are kept
        sync_savers: dict[str, tuple[Any, str | None]] = {
            "no checkpointer": (None, None),
            "InMemorySaver": (InMemorySaver(), None),
            "floor: InMemorySaver + 1 round trip": (FloorSaver(url), None),
            "ValkeySaver (ours)": (ValkeySaver(make_client(url), prefix="bs"), "bs:{ours-0-0}:*"),
        }
        try:
            from langgraph_checkpoint_aws import ValkeySaver as AwsValkeySaver
        except ImportError:
            print("(langgraph-checkpoint-aws not installed: skipping its ValkeySaver)")
        else:
            sync_savers["langgraph-checkpoint-aws ValkeySaver"] = (
                AwsValkeySaver(make_client(url)),
                "*aws-0-0*",  # its keys have no configurable prefix
            )
        tags = {
            "no checkpointer": "none",
            "InMemorySaver": "mem",
            "floor: InMemorySaver + 1 round trip": "floor",
            "ValkeySaver (ours)": "ours",
        }
        best: dict[str, list[float]] = {}
        per_op: dict[str, dict[str, float]] = {}

        def count(name: str, counter: OpCounter, log: Any) -> None:
            ops = sum(counter.calls.values())
            per_op[name] = {
                **{f"{op}/thread": c / WARM for op, c in counter.calls.items()},
                "round trips/op": log.round_trips / ops if ops else 0.0,
            }

        async def one_async(k: int) -> tuple[float, float]:
            # the async client must be created inside the loop that runs it
            saver = AsyncValkeySaver(make_client(url, asyncio=True), prefix="ba")
            if k < 0:  # warm-up, and the only counted run (see below)
                counter = OpCounter(saver)
                with count_commands() as log:
                    await run_async(saver, WARM, "warm")
                count("AsyncValkeySaver (ours)", counter, log)
                await saver.client.aclose()
                return 0.0, 0.0
            cpu = time.process_time()
            elapsed = await run_async(saver, n, f"async-{k}")
            cpu = time.process_time() - cpu
            await saver.client.aclose()
            return elapsed, cpu

        # Round -1 warms every saver up and counts calls and round trips; the timed
        # rounds run the savers as they are (counting wraps every command: a few us
        # each, more for a saver sending more commands per round trip).
        for k in range(-1, args.repeat):
            for name, (saver, _) in sync_savers.items():
                tag = tags.get(name, "aws")
                if k < 0:
                    if saver is None:
                        run_sync(saver, WARM, f"warm-{tag}")
                        continue
                    counter = OpCounter(saver)
                    with count_commands() as log:
                        run_sync(saver, WARM, f"warm-{tag}")
                    if not isinstance(saver, InMemorySaver):
                        count(name, counter, log)
                    counter.restore()
                    continue
                wall, cpu = run_sync_cpu(saver, n, f"{tag}-{k}")
                got = best.setdefault(name, [wall, cpu])
                got[:] = [min(got[0], wall), min(got[1], cpu)]
            wall, cpu = asyncio.run(one_async(k))
            if k >= 0:
                got = best.setdefault("AsyncValkeySaver (ours)", [wall, cpu])
                got[:] = [min(got[0], wall), min(got[1], cpu)]
        nbytes = {
            name: thread_bytes(raw, m) / (STEPS + 2) for name, (_, m) in sync_savers.items() if m
        }
        nbytes["AsyncValkeySaver (ours)"] = thread_bytes(raw, "ba:{async-0-0}:*") / (STEPS + 2)

        if proxy is not None:
            proxy.kill()
        base_wall, base_cpu = best["InMemorySaver"]
        floor_wall, floor_cpu = best["no checkpointer"]
        aws = best.get("langgraph-checkpoint-aws ValkeySaver")
        steps = n * STEPS
        print(f"\n{n} threads x {STEPS} steps, one process, server {url}, best of {args.repeat}")
        print(
            "us/step: the whole step (the graph's nodes are trivial); x InMem, x aws: of"
            " that; +saver: above the same graph without a checkpointer"
        )
        print(f"{'saver':<38}{'us/step':>8}{'x InMem':>8}{'x aws':>7}{'+saver':>8}"
              f"{'CPU us':>8}{'x InMem':>8}{'x aws':>7}{'+saver':>8}"
              f"{'bytes/ckpt':>11}  round trips")  # fmt: skip
        order = ["no checkpointer", "InMemorySaver", "floor: InMemorySaver + 1 round trip"]
        order += ["ValkeySaver (ours)"]
        order += ["AsyncValkeySaver (ours)"]
        order += [name for name in best if name not in order]
        for name in order:
            wall, cpu = best[name]
            rt = " ".join(f"{k}={v:.2f}" for k, v in sorted(per_op.get(name, {}).items()))
            b = f"{nbytes[name]:,.0f}" if name in nbytes else "-"
            xa = f"{wall / aws[0]:>7.2f}" if aws else f"{'-':>7}"
            xac = f"{cpu / aws[1]:>7.2f}" if aws else f"{'-':>7}"
            print(f"{name:<38}{wall / steps * 1e6:>8.0f}{wall / base_wall:>8.2f}{xa}"
                  f"{(wall - floor_wall) / steps * 1e6:>8.0f}"
                  f"{cpu / steps * 1e6:>8.0f}{cpu / base_cpu:>8.2f}{xac}"
                  f"{(cpu - floor_cpu) / steps * 1e6:>8.0f}{b:>11}  {rt}")  # fmt: skip
        if long_rows:
            print("\nclient CPU us of one put appending a message to a thread of N messages")
            names = list(long_rows[0][1])
            print(f"{'messages':>9}" + "".join(f"{n[:34]:>36}" for n in names))
            for n, row in long_rows:
                print(f"{n:>9}" + "".join(f"{row[name]:>36.0f}" for name in names))
        if mem_rows:
            print("\nserver bytes per checkpoint (MEMORY USAGE of every key / checkpoints)")
            print(f"{'scenario':<24}{'saver':<46}{'bytes/ckpt':>12}{'x aws':>8}{'state B':>9}")
            aws = {sc: mb for sc, name, mb, _ in mem_rows if "aws" in name}
            for sc, name, mb, st in mem_rows:
                ratio = f"{mb / aws[sc]:.2f}" if sc in aws else "-"
                print(f"{sc:<24}{name:<46}{mb:>12,.0f}{ratio:>8}{st:>9,}")
        if ops_rows:
            op_names = ("put", "put_writes", "get_tuple")
            print(f"\nper call, {args.ops} interleaved replays of one thread's {len(calls)} "
                  "calls (median wall us / median client CPU us)")  # fmt: skip
            print(f"{'saver':<40}" + "".join(f"{op:>22}" for op in op_names))
            for name, res in ops_rows:
                cells = "".join(f"{res[op][0]:>12.0f} /{res[op][1]:>7.0f}" for op in op_names)
                print(f"{name:<40}{cells}")


if __name__ == "__main__":
    main()
