"""Checkpointer benchmark: a 20-step agent loop over many threads, side by side.

Runs the same graph with InMemorySaver (the floor), our ValkeySaver and
AsyncValkeySaver, and langgraph-checkpoint-aws's ValkeySaver when installed
(``pip install 'langgraph-checkpoint-aws[valkey]'``), all in one process against one
embedded valkey-server (or ``--url``). Prints per-step time and the ratio to
InMemorySaver, round trips per saver operation, and server bytes per checkpoint
(``MEMORY USAGE`` summed over a thread's keys).

    python bench/bench_checkpoint.py [--threads 40] [--url valkey://...] [--one-way-ms 0.25]

``--one-way-ms`` routes every saver through a delaying TCP proxy (bench/_latency.py,
its own process) to show what round trips cost over a real network; the measured
round-trip time is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from typing import Any

import valkey
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph

from langgraph_valkey_cache import AsyncValkeySaver, ValkeySaver
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache.demo import embedded_or_url
from langgraph_valkey_cache.testing import count_commands

STEPS = 20  # supersteps per thread: 10 agent turns + 10 tool turns


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


class OpCounter:
    """Counts calls of each saver operation by wrapping the instance's methods."""

    OPS = ("put", "put_writes", "get_tuple", "aput", "aput_writes", "aget_tuple")

    def __init__(self, saver: Any) -> None:
        self.calls: Counter[str] = Counter()
        for name in self.OPS:
            orig = getattr(saver, name, None)
            if orig is None:
                continue
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


def run_sync(saver: Any, threads: int, tag: str) -> float:
    graph = build_graph()(checkpointer=saver)
    start = time.perf_counter()
    for i in range(threads):
        graph.invoke(
            {"messages": [HumanMessage("go")]}, {"configurable": {"thread_id": f"{tag}-{i}"}}
        )
    return time.perf_counter() - start


async def run_async(saver: Any, threads: int, tag: str) -> float:
    graph = build_graph()(checkpointer=saver)
    start = time.perf_counter()
    for i in range(threads):
        await graph.ainvoke(
            {"messages": [HumanMessage("go")]}, {"configurable": {"thread_id": f"{tag}-{i}"}}
        )
    return time.perf_counter() - start


def thread_bytes(client: valkey.Valkey, match: str) -> int:
    return sum(
        client.memory_usage(k, samples=0) or 0 for k in client.scan_iter(match=match, count=1000)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=40)
    parser.add_argument("--url", default=None)
    parser.add_argument("--one-way-ms", type=float, default=0.0)
    args = parser.parse_args()
    n = args.threads
    with embedded_or_url(args.url, print) as direct_url:
        raw = client_from_url(direct_url)
        url, proxy = direct_url, None
        if args.one_way_ms:
            from _latency import measured_rtt_ms, spawn

            proxy, url = spawn(int(direct_url.rsplit(":", 1)[1]), args.one_way_ms)
            print(f"through a delaying proxy: measured RTT {measured_rtt_ms(url):.2f} ms")
        rows: list[tuple[str, float, dict[str, float], float | None]] = []

        mem = InMemorySaver()
        run_sync(mem, 2, "warm")
        rows.append(("InMemorySaver", run_sync(mem, n, "m"), {}, None))

        def record(name: str, elapsed: float, counter: OpCounter, rts: int, match: str) -> None:
            ops = sum(counter.calls.values())
            per_op = {f"{op}/thread": c / n for op, c in counter.calls.items()}
            per_op["round trips/op"] = rts / ops if ops else 0.0
            rows.append((name, elapsed, per_op, thread_bytes(raw, match) / (STEPS + 2)))

        def measure_sync(name: str, saver: Any, match: str) -> None:
            counter = OpCounter(saver)
            run_sync(saver, 2, "warm")
            counter.calls.clear()
            with count_commands() as log:
                elapsed = run_sync(saver, n, "b")
            record(name, elapsed, counter, log.round_trips, match)

        async def measure_async() -> None:
            # the async client must be created inside the loop that runs it
            saver = AsyncValkeySaver(client_from_url(url, asyncio=True), prefix="ba")
            counter = OpCounter(saver)
            await run_async(saver, 2, "warm")
            counter.calls.clear()
            with count_commands() as log:
                elapsed = await run_async(saver, n, "b")
            record("AsyncValkeySaver (ours)", elapsed, counter, log.round_trips, "ba:{b-0}:*")
            await saver.client.aclose()

        measure_sync(
            "ValkeySaver (ours)", ValkeySaver(client_from_url(url), prefix="bs"), "bs:{b-0}:*"
        )
        asyncio.run(measure_async())

        try:
            from langgraph_checkpoint_aws import ValkeySaver as AwsValkeySaver
        except ImportError:
            print("(langgraph-checkpoint-aws not installed: skipping its ValkeySaver)")
        else:
            raw.flushdb()  # its keys have no configurable prefix; measure it alone
            aws_client = valkey.Valkey.from_url(url)
            measure_sync(
                "langgraph-checkpoint-aws ValkeySaver", AwsValkeySaver(aws_client), "*b-0*"
            )

        if proxy is not None:
            proxy.kill()
        base = rows[0][1]
        steps = n * STEPS
        print(f"\n{n} threads x {STEPS} steps, one process, server {url}")
        print(f"{'saver':<40}{'us/step':>10}{'x InMemory':>12}{'bytes/ckpt':>12}  round trips")
        for name, elapsed, per_op, nbytes in rows:
            rt = " ".join(f"{k}={v:.2f}" for k, v in sorted(per_op.items()))
            b = f"{nbytes:,.0f}" if nbytes is not None else "-"
            print(f"{name:<40}{elapsed / steps * 1e6:>10.0f}{elapsed / base:>12.2f}{b:>12}  {rt}")


if __name__ == "__main__":
    main()
