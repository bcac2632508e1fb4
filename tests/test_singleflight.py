"""Single-flight leases on a real server: threads and asyncio tasks (processes: see
test_tool_cache.py, which runs 4 processes through the whole ToolCache stack)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache._failopen import Cmd, Plan
from langgraph_valkey_cache.cache.singleflight import AsyncSingleFlight, SingleFlight, lease_key
from langgraph_valkey_cache.testing import count_commands


def _decode(raw: bytes) -> str:
    return raw.decode()


class _SlowCompute:
    """A compute that takes ``seconds`` and counts its runs (thread-safe)."""

    def __init__(self, result: tuple[str, bytes | None], seconds: float) -> None:
        self.result, self.seconds = result, seconds
        self.runs = 0
        self.lock = threading.Lock()

    def __call__(self) -> tuple[str, bytes | None]:
        with self.lock:
            self.runs += 1
        time.sleep(self.seconds)
        return self.result


def _in_threads(n: int, fn: Callable[[], object]) -> None:
    """Run ``fn`` in ``n`` threads released at once; return when all have finished."""
    start = threading.Barrier(n)

    def worker() -> None:
        start.wait()
        fn()

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_hit_is_one_round_trip_and_leader_miss_two(sync_client: Any, prefix: str) -> None:
    sf = SingleFlight(sync_client)
    key = f"{prefix}:k"
    sf.run(key + "w", lambda: ("warm", b"w"), ttl=None, decode=_decode)  # loads the scripts
    with count_commands() as log:
        flight = sf.run(key, lambda: ("v", b"v"), ttl=60, decode=_decode)
    assert (flight.value, flight.outcome) == ("v", "leader")
    assert log.round_trips == 2
    with count_commands() as log:
        flight = sf.run(key, lambda: pytest.fail("computed on a hit"), ttl=60, decode=_decode)
    assert (flight.value, flight.outcome) == ("v", "hit")
    assert log.round_trips == 1
    assert 0 < sync_client.pttl(key) <= 60_000
    assert not sync_client.exists(lease_key(key))


def test_threads_compute_once(sync_client: Any, prefix: str) -> None:
    sf = SingleFlight(sync_client)
    compute = _SlowCompute(("v", b"v"), 0.2)
    results: list[str] = []

    def call() -> None:
        flight = sf.run(f"{prefix}:k", compute, ttl=60, decode=_decode)
        with compute.lock:
            results.append(flight.outcome)

    _in_threads(20, call)
    assert compute.runs == 1
    assert sorted(set(results)) == ["follower", "leader"]
    assert results.count("leader") == 1


async def test_tasks_compute_once(async_client: Any, prefix: str) -> None:
    sf = AsyncSingleFlight(async_client)
    runs = 0

    async def compute() -> tuple[str, bytes]:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.2)
        return "v", b"v"

    flights = await asyncio.gather(
        *(sf.run(f"{prefix}:k", compute, ttl=60, decode=_decode) for _ in range(20))
    )
    assert runs == 1
    assert {f.value for f in flights} == {"v"}
    assert [f.outcome for f in flights].count("leader") == 1


def test_crashed_leader_lease_expires(sync_client: Any, prefix: str) -> None:
    key = f"{prefix}:k"
    # a leader that died: its lease stays until it expires
    sync_client.set(lease_key(key), "dead", px=300)
    sf = SingleFlight(sync_client, wait_timeout=5)
    t0 = time.monotonic()
    flight = sf.run(key, lambda: ("v", b"v"), ttl=60, decode=_decode)
    assert flight.outcome == "leader"
    assert 0.2 < time.monotonic() - t0 < 2


def test_wait_timeout_computes_itself(sync_client: Any, prefix: str) -> None:
    key = f"{prefix}:k"
    sync_client.set(lease_key(key), "slow", px=10_000)
    sf = SingleFlight(sync_client, wait_timeout=0.2)
    flight = sf.run(key, lambda: ("v", b"v"), ttl=60, decode=_decode)
    assert flight.outcome == "fallback"
    assert sync_client.get(key) == b"v"
    assert sync_client.get(lease_key(key)) == b"slow"  # someone else's lease is left alone


def test_uncacheable_result_and_compute_error_leave_a_short_marker(
    sync_client: Any, prefix: str
) -> None:
    sf = SingleFlight(sync_client, uncacheable_hold=0.5)
    key = f"{prefix}:k"
    assert sf.run(key, lambda: ("err", None), ttl=60, decode=_decode).outcome == "leader"
    assert not sync_client.exists(key)
    assert sync_client.get(lease_key(key)) == b"~uncacheable"
    assert 0 < sync_client.pttl(lease_key(key)) <= 500
    # while the marker lives, callers compute at once (and store a cacheable result)
    assert sf.run(key, lambda: ("v", b"v"), ttl=60, decode=_decode).outcome == "fallback"
    assert sync_client.get(key) == b"v"

    def boom() -> tuple[str, bytes]:
        raise RuntimeError("tool failed")

    other = f"{prefix}:other"
    with pytest.raises(RuntimeError):
        sf.run(other, boom, ttl=60, decode=_decode)
    assert sync_client.get(lease_key(other)) == b"~uncacheable"


def test_failing_callers_do_not_queue(sync_client: Any, prefix: str) -> None:
    """20 concurrent calls whose result is an error: waiters run in parallel, not one by one."""
    sf = SingleFlight(sync_client)
    compute = _SlowCompute(("error", None), 0.3)
    t0 = time.monotonic()
    _in_threads(20, lambda: sf.run(f"{prefix}:k", compute, ttl=60, decode=_decode))
    assert compute.runs == 20  # errors are never shared...
    assert time.monotonic() - t0 < 2.0  # ...but nobody queued behind 19 others (6 s)


def test_call_with_custom_layout(sync_client: Any, prefix: str) -> None:
    sf = SingleFlight(sync_client)
    h = f"{prefix}:h"
    runs = 0

    def lookup() -> Plan:  # plans: the executor sends the commands (fail-open)
        raw = yield Cmd(("HGET", h, "v"))
        return raw.decode() if raw else None

    def compute() -> str:
        nonlocal runs
        runs += 1
        time.sleep(0.1)
        return "v"

    def store(value: str) -> Plan:
        yield Cmd(("HSET", h, "v", value))

    threads = [
        threading.Thread(target=sf.call, args=(lease_key(h), lookup, compute, store))
        for _ in range(10)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runs == 1
    assert sf.call(lease_key(h), lookup, compute, store).outcome == "hit"


async def test_async_call_and_server_down(prefix: str) -> None:
    from langgraph_valkey_cache.embedded import EmbeddedValkey

    with EmbeddedValkey() as server:
        client = client_from_url(server.url, asyncio=True, timeout=0.5)
        sf = AsyncSingleFlight(client)
        server.kill()

        async def compute() -> tuple[str, bytes]:
            return "v", b"v"

        flight = await sf.run(f"{prefix}:k", compute, ttl=60, decode=_decode)
        assert flight.outcome == "fallback"
        await client.aclose()
