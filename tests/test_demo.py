"""The README's demo command, its table, and ``demo --keep`` followed by the CLI, run for
real (subprocesses like a user's shell, an embedded server the demo starts itself)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import valkey

from langgraph_valkey_cache._stats import REGISTRY_KEY
from langgraph_valkey_cache.demo import SCRIPT, run_demo

# no VALKEY_URL: the demo starts a server (PYTHONPATH kept for runs from a source copy)
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"} | {
    k: v for k, v in os.environ.items() if k == "PYTHONPATH"
}
ROW = re.compile(
    r"^(checkpointer|LLM cache \(exact\)|semantic cache|tool cache|node cache|"
    r"embedding cache|store|total) +(\S+) +(\S+) +(\S+) +(\S+) +(\S+) +(\S+(?: s)?)$"
)


def table(out: str) -> dict[str, dict[str, Any]]:
    """The per-tier table: tier -> hits, misses, round_trips, tokens, usd (None for -)."""

    def num(text: str) -> float | None:
        return None if text == "-" else float(text.replace(",", "").removesuffix(" s"))

    rows = {}
    for line in out.splitlines():
        m = ROW.match(line)
        if m:
            names = ("hits", "misses", "round_trips", "tokens", "usd", "seconds")
            rows[m[1]] = dict(zip(names, map(num, m.groups()[1:]), strict=True))
    return rows


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "langgraph_valkey_cache", *args],
        capture_output=True, text=True, timeout=timeout, env=ENV,
    )  # fmt: skip


def check_cached_pass(rows: dict[str, dict[str, Any]], *, semantic: bool) -> None:
    """What the script implies (see SCRIPT): carol replays bob's opening turn and
    alice-replay replays alice's thread, so those model calls, tool calls and
    classifier runs hit; bob's paraphrased refund question hits the semantic cache."""
    llm = rows["LLM cache (exact)"]
    if semantic:
        assert (llm["hits"], llm["misses"]) == (4, 4)
        sem = rows["semantic cache"]
        assert (sem["hits"], sem["misses"]) == (2, 1)
        assert sem["tokens"] > 0 and sem["usd"] > 0
    else:
        # the FAQ model goes through the exact cache: the paraphrase misses there
        assert (llm["hits"], llm["misses"]) == (5, 6)
        assert "semantic cache" not in rows
    assert llm["tokens"] > 0 and llm["usd"] > 0
    assert (rows["tool cache"]["hits"], rows["tool cache"]["misses"]) == (2, 2)
    assert rows["tool cache"]["seconds"] > 0  # the tool's run time, from the tool cache
    assert (rows["node cache"]["hits"], rows["node cache"]["misses"]) == (4, 5)
    for tier in ("checkpointer", "store", "LLM cache (exact)", "tool cache", "node cache"):
        assert rows[tier]["round_trips"] > 0, tier
    priced = [r for t, r in rows.items() if t != "total" and r["tokens"] is not None]
    assert rows["total"]["tokens"] == sum(r["tokens"] for r in priced)


def test_demo_command_on_embedded_server() -> None:
    proc = run("demo")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "started an embedded valkey-server with an FT.* module" in out
    # the progress bar: one line per pass when stdout is not a terminal
    assert re.search(r"^\[#{15}\.{15}\]  9/18 without caching", out, re.M)
    assert re.search(r"^\[#{30}\] 18/18 with caching", out, re.M)
    # the transcript: an interrupt approved and resumed, memory written, FAQ answered
    assert "-> [approved get_weather(city=Sofia)] The weather is 12°C, clear." in out
    assert "-> Noted: I live in Sofia and travel with my dog" in out
    assert out.count("-> Refunds go back to your card") == 3
    check_cached_pass(table(out), semantic=True)
    m = re.search(r"([\d.]+) s without caching, ([\d.]+) s with", out)
    assert m and float(m[2]) < float(m[1])
    assert "model calls 11 -> 5, tool runs 4 -> 2" in out
    assert "kill" not in out and "explore it" not in out


def test_demo_keep_then_cli_on_its_data() -> None:
    proc = run("demo", "--keep")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    pid = int(re.search(r"stop it with: kill (\d+)", out)[1])  # type: ignore[index]
    try:
        url = re.search(r"the data is kept on (\S+) under", out)[1]  # type: ignore[index]
        commands = [
            shlex.split(line.strip())[3:]
            for line in out.splitlines()
            if line.startswith("  python -m langgraph_valkey_cache ")
        ]
        assert [c[c.index("--prefix") + 2 if "--prefix" in c else 2] for c in commands] == [
            "threads", "inspect", "diff", "stats",
        ]  # fmt: skip
        threads, inspect, diff, stats = (run(*c, timeout=30) for c in commands)
        for p in (threads, inspect, diff, stats):
            assert p.returncode == 0, p.stderr
        assert threads.stdout.split() == sorted({t for t, _, _ in SCRIPT})
        assert "'I live in Sofia and travel with my dog'" in inspect.stdout
        assert re.search(r"^next +\(none", inspect.stdout, re.M)
        assert "user_id" in inspect.stdout and "'alice'" in inspect.stdout
        assert "messages" in diff.stdout and "Refunds go back" in diff.stdout
        # the server-side totals another process reads equal the demo's own table
        rows = table(out)
        check_cached_pass(rows, semantic=True)
        report = json.loads(run(*commands[3], "--json", timeout=30).stdout)
        for tier, name in (
            ("llm", "LLM cache (exact)"), ("semantic", "semantic cache"),
            ("tools", "tool cache"), ("node", "node cache"),
        ):  # fmt: skip
            assert (report[tier]["hits"], report[tier]["misses"]) == (
                rows[name]["hits"], rows[name]["misses"],
            ), tier  # fmt: skip
        assert report["llm"]["tokens_saved"] == rows["LLM cache (exact)"]["tokens"]
        assert valkey.Valkey.from_url(url).ping()
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"kept server {pid} did not stop")


def test_demo_on_a_server_without_search_module_cleans_up(valkey_url: str) -> None:
    lines: list[str] = []
    rows = run_demo(valkey_url, lines.append, model_latency=0.0)
    out = "\n".join(lines)
    assert "started an embedded" not in out
    assert out.count("no FT.* module") == 1
    check_cached_pass(table(out), semantic=False)
    assert [r.tier for r in rows][0] == "checkpointer"
    client = valkey.Valkey.from_url(valkey_url)
    assert not list(client.scan_iter(match="lgv-demo:*"))  # no --keep: nothing left
    assert not [f for f in client.hkeys(REGISTRY_KEY) if b"lgv-demo:" in f]
    client.close()


def test_demo_keep_on_url_then_cli(valkey_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from langgraph_valkey_cache.__main__ import main

    lines: list[str] = []
    run_demo(valkey_url, lines.append, keep=True, model_latency=0.0)
    out = "\n".join(lines)
    assert "kill" not in out  # the server is the caller's: nothing to stop
    base = re.search(r"under (lgv-demo:[0-9a-f]+):\*", out)[1]  # type: ignore[index]
    commands = [
        shlex.split(line.strip())[3:]
        for line in lines
        if line.startswith("  python -m langgraph_valkey_cache ")
    ]
    assert commands[0] == ["--url", valkey_url, "--prefix", f"{base}:cp", "threads"]
    capsys.readouterr()
    assert main(commands[0]) == 0
    assert capsys.readouterr().out.split() == sorted({t for t, _, _ in SCRIPT})
    assert main([*commands[2], "--json"]) == 0  # diff alice latest~1 latest
    assert json.loads(capsys.readouterr().out)
    client = valkey.Valkey.from_url(valkey_url)
    try:
        kept = list(client.scan_iter(match=f"{base}:*"))
        assert kept and not list(client.scan_iter(match=f"{base}:nocache:*"))
        for key in kept:
            client.unlink(key)
        stale = [f for f in client.hkeys(REGISTRY_KEY) if base.encode() in f]
        assert stale  # `stats` finds the kept caches through the registry
        client.hdel(REGISTRY_KEY, *stale)
    finally:
        client.close()
