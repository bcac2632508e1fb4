"""LangGraph's own test suite (from the installed version's sdist) passes on our saver,
store and node cache, with LANGGRAPH_STRICT_MSGPACK unset and set to true.

bench/langgraph_suite.py does the work (download, fixture swap, pytest in a child
process); see README "LangGraph's own tests".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parent.parent / "bench" / "langgraph_suite.py"


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("mode", ["unset", "true"])
def test_langgraph_suite_passes(mode: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "--mode", mode, "--json"],
        capture_output=True,
        text=True,
        timeout=1400,
    )
    assert proc.stdout, f"runner printed nothing (exit {proc.returncode}): {proc.stderr[-3000:]}"
    (result,) = json.loads(proc.stdout)["results"]
    counts = result["counts"]
    assert counts["passed"] > 0, result
    assert (counts["failed"], counts["error"]) == (0, 0), (
        f"LANGGRAPH_STRICT_MSGPACK={mode}: {counts}; failing: {result['failed']}; "
        f"log: {result['log']}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
