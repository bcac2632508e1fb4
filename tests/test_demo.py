"""The README's demo command and the CLI, run for real."""

from __future__ import annotations

import subprocess
import sys

from langgraph_valkey_cache import ValkeySaver
from langgraph_valkey_cache.__main__ import main
from langgraph_valkey_cache.demo import build_agent


def test_demo_command_on_embedded_server() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "langgraph_valkey_cache", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "started an embedded valkey-server" in out
    assert "interrupted, waiting for approval of get_weather({'city': 'Sofia'})" in out
    assert "resumed -> The weather is 12°C, clear." in out
    assert out.count("  step ") == 6
    # every tier took part
    assert "model calls on this thread: 2 of 2" in out
    assert "model calls on this thread: 0 of 2" in out  # the replay: all from ValkeyCache
    assert "get_weather: 1 hit(s), 1 miss(es)" in out
    assert "'summarize' ran 1 time(s) for 2 identical invocations" in out
    assert "-> 'Alice lives in Sofia, Bulgaria'" in out


def test_threads_and_inspect_cli(valkey_url: str, prefix: str, capsys: object) -> None:
    with ValkeySaver.from_conn_string(valkey_url, prefix=prefix) as saver:
        graph = build_agent().compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "cli-1"}}
        graph.invoke({"messages": [("user", "Weather in Lisbon?")]}, config)
    assert main(["--url", valkey_url, "--prefix", prefix, "threads"]) == 0
    assert main(["--url", valkey_url, "--prefix", prefix, "inspect", "cli-1"]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert out.splitlines()[0] == "cli-1"
    assert "source=input" in out and "(root)" in out
