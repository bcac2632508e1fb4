"""The command line on a real server, against what LangGraph itself reports.

A small graph runs a few steps on ``ValkeySaver``: a fan-out with ``Send``, a node that
finishes in the same step as one that interrupts, a message list. ``inspect`` and
``diff`` must agree with ``graph.get_state``/``get_state_history`` on every checkpoint.
"""

from __future__ import annotations

import json
import operator
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, Send, StateSnapshot, interrupt

from langgraph_valkey_cache import ValkeySaver
from langgraph_valkey_cache.__main__ import main
from tests.conftest import dead_port

NULL_TASK_ID = "00000000-0000-0000-0000-000000000000"  # LangGraph's writes not of a task


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    items: Annotated[list[str], operator.add]
    note: str


def _a(state: State) -> dict[str, Any]:
    return {"messages": [AIMessage("planning " + "x" * 200)], "items": ["a"], "note": "from a"}


def _fan(state: State) -> list[Send]:
    return [Send("w", {"items": [str(i)]}) for i in (1, 2)]


def _w(state: dict[str, Any]) -> dict[str, Any]:
    return {"items": [f"w{state['items'][0]}"]}


def _b(state: State) -> dict[str, Any]:
    return {"items": ["b"]}


def _ask(state: State) -> dict[str, Any]:
    answer = interrupt("approve?")
    return {"note": f"approved: {answer}", "messages": [AIMessage("done")]}


def _graph(saver: ValkeySaver) -> Any:
    g = StateGraph(State)
    for name, fn in (("a", _a), ("w", _w), ("b", _b), ("ask", _ask)):
        g.add_node(name, fn)  # type: ignore[call-overload]
    g.add_edge(START, "a")
    g.add_conditional_edges("a", _fan, ["w"])
    g.add_edge("a", "b")
    g.add_edge("a", "ask")  # b finishes in the step in which ask interrupts
    g.add_edge("ask", END)
    return g.compile(checkpointer=saver)


@pytest.fixture
def ran(valkey_url: str, prefix: str) -> Iterator[tuple[Any, list[str]]]:
    """Thread 'open' waits at the interrupt; thread 'done' was resumed to the end."""
    with ValkeySaver.from_conn_string(valkey_url, prefix=prefix) as saver:
        graph = _graph(saver)
        start = {"messages": [HumanMessage("hi")], "items": [], "note": ""}
        graph.invoke(start, _cfg("open"))
        graph.invoke(start, _cfg("done"))
        graph.invoke(Command(resume="yes"), _cfg("done"))
        yield graph, ["--url", valkey_url, "--prefix", prefix]


def _cfg(thread: str) -> Any:
    return {"configurable": {"thread_id": thread}}


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    assert len(out.splitlines()) == 1  # one JSON document
    return json.loads(out)


def _plain(value: Any) -> Any:
    """What --json makes of a revived value (messages as their model dump)."""
    from langgraph_valkey_cache.__main__ import _json_default

    return json.loads(json.dumps(value, default=_json_default))


def _nonempty(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v != []}


def test_inspect_agrees_with_get_state_on_every_checkpoint(
    ran: tuple[Any, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    graph, opts = ran
    seen_next = set()
    for thread in ("open", "done"):
        history = list(graph.get_state_history(_cfg(thread)))
        assert len(history) >= 3
        for snap in history:
            cid = snap.config["configurable"]["checkpoint_id"]
            report = _json(capsys, *opts, "inspect", thread, cid)
            assert report["checkpoint_id"] == cid
            assert report["step"] == snap.metadata["step"]
            assert report["source"] == snap.metadata["source"]
            # LangGraph orders pulled nodes by graph order, we sort them: compare as bags
            assert Counter(report["next"]) == Counter(snap.next), (thread, snap.metadata)
            seen_next.add(tuple(sorted(snap.next)))
            # a reducer channel never written is not stored (LangGraph shows it as [])
            assert _nonempty(report["values"]) == _nonempty(_plain(snap.values))
            assert report["metadata"] == _plain(snap.metadata)
            parent = (
                snap.parent_config["configurable"]["checkpoint_id"] if snap.parent_config else None
            )
            assert report["parent_checkpoint_id"] == parent
            assert "history" not in report  # only for the latest
            # every write of a task this checkpoint ran is named by its node
            for w in report["pending_writes"]:
                assert w["node"] is not None or w["task_id"] == NULL_TASK_ID, w
    # the graph exercised every kind of trigger: start, pull, Send, done
    assert {("__start__",), ("a",), ("ask", "b", "w", "w"), ()} <= seen_next


def test_inspect_latest_leaves_out_tasks_that_finished(
    ran: tuple[Any, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    graph, opts = ran
    state = graph.get_state(_cfg("open"))
    assert state.next == ("ask",)  # b and both w finished in the interrupted step
    report = _json(capsys, *opts, "inspect", "open")
    assert report["next"] == ["ask"]
    assert report["checkpoint_id"] == state.config["configurable"]["checkpoint_id"]
    writes = {(w["node"], w["channel"], json.dumps(w["value"])) for w in report["pending_writes"]}
    assert ("b", "items", '["b"]') in writes and ("w", "items", '["w1"]') in writes
    [interrupted] = [w for w in report["pending_writes"] if w["channel"] == "__interrupt__"]
    assert interrupted["node"] == "ask"
    assert interrupted["value"][0]["value"] == "approve?"
    assert report["interrupts"] == [{"node": "ask", "value": "approve?"}]
    history = report["history"]
    assert [h["checkpoint_id"] for h in history] == [
        s.config["configurable"]["checkpoint_id"] for s in graph.get_state_history(_cfg("open"))
    ]
    assert history[-1]["source"] == "input"
    assert report["history_truncated"] is False
    short = _json(capsys, *opts, "inspect", "open", "--history", "2")
    assert short["history"] == history[:2] and short["history_truncated"] is True
    code, out, _ = _run(capsys, *opts, "inspect", "open", "--history", "1")
    assert out.splitlines()[-1] == "  ... older ones left out (--history 1; 0: all)"
    assert _json(capsys, *opts, "inspect", "open", "--history", "3")["history_truncated"] is False
    assert _json(capsys, *opts, "inspect", "done")["next"] == []


def test_inspect_text_truncates_values(
    ran: tuple[Any, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, opts = ran
    code, out, err = _run(capsys, *opts, "inspect", "open", "--width", "40")
    assert code == 0, err
    lines = out.splitlines()
    assert "next        ask" in lines
    [messages] = [line for line in lines if line.startswith("  messages")]
    assert messages.endswith("…") and len(messages.split("  ", 2)[2]) == 40
    # messages as type: content; a list too long for the width keeps its newest items
    assert messages.split("  ", 2)[2].startswith("[2] …, ai: 'planning xxx")
    assert "  note      'from a'" in lines
    assert "interrupt   ask: 'approve?'" in lines
    assert any(line.startswith("  ask  __interrupt__") and "approve?" in line for line in lines)
    assert "  b    items          ['b']" in lines
    assert "history (newest first)" in lines
    assert sum(line.startswith("  (root) ") for line in lines) == 3
    # --width 0: nothing cut
    code, out, _ = _run(capsys, *opts, "inspect", "open", "--width", "0")
    assert "x" * 200 in out and "…" not in out


def test_diff_reports_added_changed_removed(
    ran: tuple[Any, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    graph, opts = ran
    history = list(graph.get_state_history(_cfg("done")))  # newest first
    ids = [s.config["configurable"]["checkpoint_id"] for s in history]
    first, last = history[-1], history[0]

    report = _json(capsys, *opts, "diff", "done", ids[-1], ids[0])
    assert report["a"] == {"checkpoint_id": ids[-1], "step": -1}
    assert report["b"] == {"checkpoint_id": ids[0], "step": last.metadata["step"]}
    # the input checkpoint holds only __start__ (hidden): every state channel is new
    assert report["added"] == _plain(last.values)
    assert report["removed"] == {} and report["changed"] == {}
    assert _nonempty(first.values) == {}

    internal = _json(capsys, *opts, "diff", "done", ids[-1], ids[-2], "--internal")
    assert "__start__" in internal["removed"]
    assert "branch:to:a" in internal["added"]

    # step 0 -> the end: lists appended to, the note replaced
    step0 = ids[-2]
    report = _json(capsys, *opts, "diff", "done", step0, "latest")
    assert report["added"] == {} and report["removed"] == {}
    changed = report["changed"]
    assert changed["items"] == {"appended": ["a", "b", "w1", "w2"]}
    assert [m["content"] for m in changed["messages"]["appended"]][-1] == "done"
    assert changed["note"] == {"before": "", "after": "approved: yes"}

    code, out, err = _run(capsys, *opts, "diff", "done", step0, "latest")
    assert code == 0, err
    lines = [" ".join(line.split()) for line in out.splitlines()]
    assert lines[0].startswith(f"thread done: {step0} (step 0) -> {ids[0]}")
    assert "~ items +4 item(s): ['a', 'b', 'w1', 'w2']" in lines
    assert "~ note '' -> 'approved: yes'" in lines
    assert "~ messages +2 item(s): […, ai: 'done']" in lines  # the long one left out
    # latest~N counts back from the newest; a checkpoint against itself changes nothing
    again = _json(capsys, *opts, "diff", "done", f"latest~{len(ids) - 2}", ids[0])
    assert again == report
    code, out, _ = _run(capsys, *opts, "diff", "done", ids[0], ids[0][:30])
    assert code == 0 and out.splitlines()[1] == "(no channel changed)"


def test_options_anywhere_on_the_line(
    ran: tuple[Any, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, (_, url, _, prefix) = ran
    lines = [
        ["--url", url, "--prefix", prefix, "--json", "inspect", "open"],
        ["inspect", "open", "--url", url, "--prefix", prefix, "--json"],
        ["--json", "inspect", "--prefix", prefix, "open", "--url", url],
        # the last --url wins, wherever it is
        ["--url", "valkey://127.0.0.1:1", "inspect", "open", "--url", url, "--prefix", prefix,
         "--json"],
    ]  # fmt: skip
    outputs = set()
    for argv in lines:
        code, out, err = _run(capsys, *argv)
        assert code == 0, (argv, err)
        outputs.add(out)
    assert len(outputs) == 1
    assert json.loads(outputs.pop())["next"] == ["ask"]
    # threads: text and JSON, options after the subcommand
    code, out, _ = _run(capsys, "threads", "--url", url, "--prefix", prefix)
    assert (code, out.splitlines()) == (0, ["done", "open"])
    assert _json(capsys, "threads", "--prefix", prefix, "--url", url) == ["done", "open"]
    # stats takes the shared options too (its JSON report is tested in test_stats.py)
    stats = _json(capsys, "stats", "--url", url, "--llm-prefix", f"{prefix}llm")
    assert isinstance(stats, dict)


def test_errors_are_one_line_with_an_exit_code(
    ran: tuple[Any, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    graph, opts = ran
    cases = [
        (["inspect", "nobody"], 1, "no checkpoints for thread 'nobody'"),
        (["inspect", "open", "1f0000000"], 1, "no checkpoint '1f0000000' in thread 'open'"),
        (["diff", "nobody", "latest", "latest~1"], 1, "no checkpoints for thread 'nobody'"),
        (["diff", "open", "latest", "latest~9"], 1, "thread 'open' has only 3 checkpoints"),
        (["inspect", "open", "--ns", "sub"], 1, "thread 'open' namespace 'sub'"),
        (["inspect", "\ud800"], 2, "thread_id"),  # the saver refuses it: a usage error
    ]
    for argv, code, message in cases:
        got, out, err = _run(capsys, *opts, *argv)
        assert (got, out) == (code, ""), argv
        assert err.count("\n") == 1 and message in err, (argv, err)
        assert err.startswith("python -m langgraph_valkey_cache: error: ")
    # the demo prints a story, not a document: --json is refused before it starts
    got, out, err = _run(capsys, "demo", "--json")
    assert (got, out) == (2, "") and "demo has no --json output" in err
    # an id prefix shared by several checkpoints is a usage error
    shared = graph.get_state(_cfg("open")).config["configurable"]["checkpoint_id"][:4]
    got, _, err = _run(capsys, *opts, "inspect", "open", shared)
    assert got == 2 and "matches 3 checkpoints" in err


def test_a_server_that_is_not_valkey(capsys: pytest.CaptureFixture[str]) -> None:
    """Something else on the port (here: a socket that answers HTTP): exit 3, one line."""
    import threading

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]

        def answer() -> None:
            for _ in range(8):  # the client may reconnect and retry
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer, daemon=True).start()
        code, out, err = _run(capsys, "threads", "--url", f"valkey://127.0.0.1:{port}")
    assert (code, out) == (3, "")
    assert "does not answer like Valkey" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["threads", "--url", "valkey://:s3cret@127.0.0.1:{port}"], 3, "cannot reach valkey://:***@127.0.0.1:"),
        (["inspect", "t1", "--url", "valkey://127.0.0.1:{port}"], 3, "Connection refused"),
        (["stats", "--url", "valkey://127.0.0.1:{port}"], 3, "cannot reach"),
        (["threads", "--url", "valkey://127.0.0.1:{port}?cluster=true"], 3, "cannot reach"),
        (["threads", "--url", "http://localhost:6379"], 2, "bad URL 'http://localhost:6379'"),
        (["diff", "t1", "a", "b"], 2, "diff needs --url or VALKEY_URL"),
        (["inspect"], 2, "the following arguments are required: thread_id"),
    ],
)  # fmt: skip
def test_process_exit_codes_without_tracebacks(argv: list[str], code: int, message: str) -> None:
    argv = [a.replace("{port}", str(dead_port())) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "langgraph_valkey_cache", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},  # no VALKEY_URL
    )
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == ""
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and "s3cret" not in proc.stderr
    if "required" not in message:  # argparse's own errors print the usage first
        assert proc.stderr.count("\n") == 1, proc.stderr


class _Sub(TypedDict):
    x: str


def _sub_step(state: _Sub) -> dict[str, Any]:
    return {"x": state["x"] + "1"}


def _sub_ask(state: _Sub) -> dict[str, Any]:
    return {"x": state["x"] + interrupt("sub?")}


def test_inspect_a_subgraph_namespace(
    valkey_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    inner = StateGraph(_Sub)
    inner.add_node("step", _sub_step)
    inner.add_node("ask", _sub_ask)
    inner.add_edge(START, "step")
    inner.add_edge("step", "ask")
    outer = StateGraph(_Sub)
    outer.add_node("sub", inner.compile())
    outer.add_edge(START, "sub")
    opts = ["--url", valkey_url, "--prefix", prefix]
    with ValkeySaver.from_conn_string(valkey_url, prefix=prefix) as saver:
        graph = outer.compile(checkpointer=saver)
        graph.invoke({"x": "a"}, _cfg("nested"))
        [task] = graph.get_state(_cfg("nested"), subgraphs=True).tasks
    sub_state = task.state
    assert isinstance(sub_state, StateSnapshot)
    ns = sub_state.config["configurable"]["checkpoint_ns"]
    assert ns.startswith("sub:")
    report = _json(capsys, *opts, "inspect", "nested", "--ns", ns)
    assert report["checkpoint_ns"] == ns
    assert report["checkpoint_id"] == sub_state.config["configurable"]["checkpoint_id"]
    assert report["next"] == list(sub_state.next) == ["ask"]
    assert report["values"] == sub_state.values == {"x": "a1"}
    # the root checkpoint waits on the subgraph node; the history spans both namespaces
    root = _json(capsys, *opts, "inspect", "nested")
    assert root["next"] == ["sub"]
    assert {h["checkpoint_ns"] for h in root["history"]} == {"", ns}
    sub_step0 = [h for h in root["history"] if h["checkpoint_ns"] == ns][-2]["checkpoint_id"]
    diff = _json(capsys, *opts, "diff", "nested", sub_step0, "latest", "--ns", ns)
    assert diff["checkpoint_ns"] == ns and diff["changed"] == {"x": {"before": "a", "after": "a1"}}


def _append(name: str) -> Any:
    def node(state: State) -> dict[str, Any]:
        return {"items": [name]}

    return node


def test_next_through_a_join_barrier(
    valkey_url: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """p and q start together, r follows q; j waits for both p and r (a join edge)."""
    g = StateGraph(State)
    for name in ("p", "q", "r", "j"):
        g.add_node(name, _append(name))  # type: ignore[call-overload]
    g.add_edge(START, "p")
    g.add_edge(START, "q")
    g.add_edge("q", "r")
    g.add_edge(["p", "r"], "j")
    opts = ["--url", valkey_url, "--prefix", prefix]
    with ValkeySaver.from_conn_string(valkey_url, prefix=prefix) as saver:
        graph = g.compile(checkpointer=saver, interrupt_before=["j"])
        graph.invoke({"messages": [], "items": [], "note": ""}, _cfg("join"))
        history = list(graph.get_state_history(_cfg("join")))
    nexts = []
    for snap in history:
        cid = snap.config["configurable"]["checkpoint_id"]
        report = _json(capsys, *opts, "inspect", "join", cid)
        assert Counter(report["next"]) == Counter(snap.next), snap.metadata
        nexts.append(sorted(snap.next))
    # step 1 may list j too: LangGraph hands the barrier's set to the background
    # checkpoint writer by reference, so whether it holds {p} or already {p, r} there
    # depends on timing (InMemorySaver's history shows the same); agreeing is the test
    assert nexts[0] == ["j"] and nexts[2] == ["p", "q"] and "r" in nexts[1]
    assert _json(capsys, *opts, "inspect", "join")["next"] == ["j"]
    # stopped before r: the barrier holds only p, so j is not next
    with ValkeySaver.from_conn_string(valkey_url, prefix=prefix) as saver:
        graph = g.compile(checkpointer=saver, interrupt_before=["r"])
        graph.invoke({"messages": [], "items": [], "note": ""}, _cfg("half"))
        assert graph.get_state(_cfg("half")).next == ("r",)
    report = _json(capsys, *opts, "inspect", "half", "--internal")
    assert report["values"]["join:p+r:j"] == ["p"]
    assert report["next"] == ["r"]
