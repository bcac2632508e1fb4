"""How long an agent step through each cache takes while the server is stopped.

Runs the fault-test rig (``tests/test_cache_faults.py``: exact LLM cache, node cache, tool
cache, ``cached()``, embedding cache, model-call middleware) on an embedded server, SIGSTOPs
the server for ``--seconds``, steps through every cache in rounds, then SIGCONTs it and
times how long until every cache hits again. Prints p50/p99/max step latency per flavour.

Run:  python bench/bench_fault_latency.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_cache_faults import Rig

from langgraph_valkey_cache.embedded import EmbeddedValkey


async def main(seconds: float) -> None:
    logging.getLogger("langgraph_valkey_cache").setLevel(logging.ERROR)
    with EmbeddedValkey() as server:
        pid = server._proc.pid  # type: ignore[union-attr]
        for flavour in ("sync", "async"):
            rig = Rig(server.url, asyncio_=flavour == "async")
            await rig.step_all("warm")
            os.kill(pid, signal.SIGSTOP)
            times: list[float] = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                times += [elapsed for elapsed, _ in (await rig.step_all("f")).values()]
                await asyncio.sleep(0.005)
            os.kill(pid, signal.SIGCONT)
            back = time.monotonic()
            while any(ran for _, ran in (await rig.step_all("back")).values()):
                pass
            times.sort()
            print(
                f"{flavour:5} {len(times)} steps during a {seconds:.0f} s SIGSTOP: "
                f"p50 {times[len(times) // 2] * 1e3:.1f} ms, "
                f"p99 {times[int(len(times) * 0.99)] * 1e3:.1f} ms, max {times[-1] * 1e3:.0f} ms; "
                f"every cache hits again {time.monotonic() - back:.2f} s after SIGCONT"
            )
            await rig.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=6.0)
    asyncio.run(main(parser.parse_args().seconds))
