"""``ValkeyNodeCache(local_cache=True)``: the local fast path of ``get`` and the L1 pool
it takes connections from, on real servers.

The fast path serves a ``get`` only when the L1 holds every entry, after reading the
pending invalidations, with no round trip; anything else (a miss, a foreign entry, the
breaker open, a dead server) is the plan's, under the executor. These tests pin that it
counts like the plan, stays coherent with another client writing, and never answers
when the plan would not.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from valkey.exceptions import ConnectionError as ValkeyConnectionError

from langgraph_valkey_cache import ValkeyNodeCache
from langgraph_valkey_cache._client import (
    cache_client_from_url,
    client_from_url,
    local_cache_stats,
)
from langgraph_valkey_cache.embedded import EmbeddedValkey
from langgraph_valkey_cache.testing import count_commands

ARRIVAL = 0.05  # generous for an invalidation over loopback
NS = ("__pregel_ns_writes", "mod.work", "work")
A, B = (NS, "a"), (NS, "b")


@pytest.fixture
def pair(valkey_url: str, prefix: str) -> Any:
    """A reader with the L1 and a writer without, on the same entries."""
    reader = ValkeyNodeCache(
        client_from_url(valkey_url), prefix=prefix, metrics=False, local_cache=True,
        stats_flush_interval=3600,
    )  # fmt: skip
    writer = ValkeyNodeCache(client_from_url(valkey_url), prefix=prefix, metrics=False)
    yield reader, writer
    reader.close()
    writer.close()


def test_hits_are_local_and_counted_like_the_plans(pair: Any) -> None:
    reader, writer = pair
    writer.set({A: ([("y", 1)], 60), B: ([("y", 2)], 60)})
    assert reader.get([A]) == {A: [["y", 1]]}  # from the server, into the L1
    assert reader.get([A, B]) == {A: [["y", 1]], B: [["y", 2]]}
    before = local_cache_stats(reader.client)["hits"]
    with count_commands() as log:
        for _ in range(10):
            assert reader.get([A]) == {A: [["y", 1]]}
            assert reader.get([A, B]) == {A: [["y", 1]], B: [["y", 2]]}  # one MGET
    assert log.round_trips == 0 and log.handshakes == 0
    assert local_cache_stats(reader.client)["hits"] - before == 20
    stats = reader.stats()
    assert (stats.hits, stats.misses) == (2 + 1 + 10 + 20, 0)


def test_a_value_replaced_or_deleted_elsewhere_is_never_served(pair: Any) -> None:
    reader, writer = pair
    writer.set({A: ([("y", 0)], 60)})
    assert reader.get([A]) == {A: [["y", 0]]}
    for i in range(1, 50):
        writer.set({A: ([("y", i)], 60)})
        time.sleep(ARRIVAL if i % 10 == 0 else 0)
        got = reader.get([A])[A][0][1]
        assert got in (i - 1, i)  # never older than the one before the write
        if i % 10 == 0:
            assert got == i  # once the invalidation has had time to arrive
    writer.clear()
    time.sleep(ARRIVAL)
    assert reader.get([A]) == {}
    stats = reader.stats()
    assert stats.misses == 1


def test_a_partial_hit_goes_to_the_server(pair: Any) -> None:
    reader, writer = pair
    writer.set({A: ([("y", 1)], 60)})
    assert reader.get([A, B]) == {A: [["y", 1]]}  # MGET with a nil: held by the L1
    with count_commands() as log:
        assert reader.get([A, B]) == {A: [["y", 1]]}
    assert log.round_trips == 0  # the plan's own MGET was served by the L1 too
    writer.set({B: ([("y", 2)], 60)})
    time.sleep(ARRIVAL)
    with count_commands() as log:
        assert reader.get([A, B]) == {A: [["y", 1]], B: [["y", 2]]}
    assert log.round_trips == 1  # B's write dropped the MGET reply: asked again
    stats = reader.stats()
    assert (stats.hits, stats.misses) == (4, 2)


def test_a_foreign_entry_is_a_miss(pair: Any, valkey_url: str) -> None:
    reader, _ = pair
    raw = client_from_url(valkey_url)
    raw.set(reader.keys.entry(*A), b"not ours")
    assert reader.get([A]) == {}
    assert reader.get([A]) == {}  # served locally, still unreadable: the plan skips it
    assert reader.stats().misses == 2
    raw.close()


def test_scope_and_control_apply_before_the_l1(pair: Any) -> None:
    reader, writer = pair
    writer.set({A: ([("y", 1)], 60)})
    assert reader.get([A]) == {A: [["y", 1]]}
    with reader.for_run({"configurable": {"cache_control": {"skip": True}}}):
        assert reader.get([A]) == {}
    scoped = ValkeyNodeCache(
        reader.client, prefix=reader.keys.prefix, metrics=False, local_cache=True,
        scope=("user_id",),
    )  # fmt: skip
    with scoped.for_run({"configurable": {"user_id": "u1"}}):
        assert scoped.get([A]) == {}  # another key: u1's entry, not the unscoped one
        scoped.set({A: ([("y", "u1")], 60)})
        assert scoped.get([A]) == {A: [["y", "u1"]]}
        assert scoped.get([A]) == {A: [["y", "u1"]]}


def test_breaker_open_or_server_gone_never_serves_the_l1(prefix: str) -> None:
    server = EmbeddedValkey().start()
    try:
        cache = ValkeyNodeCache(
            cache_client_from_url(server.url), prefix=prefix, metrics=False, local_cache=True
        )
        cache.set({A: ([("y", 1)], 60)})
        assert cache.get([A]) == cache.get([A]) == {A: [["y", 1]]}
        cache.breaker.failure(ValkeyConnectionError("test"), slow=False)
        try:
            with count_commands() as log:
                assert cache.get([A]) == {}  # refused like any step while open
            assert log.round_trips == 0
        finally:
            cache.breaker.reset()
        assert cache.get([A]) == {A: [["y", 1]]}
        server.kill()
        started = time.monotonic()
        assert cache.get([A]) == {}  # the closed socket drops the L1: a miss
        assert time.monotonic() - started < cache.timeout + 0.5
        server.start()
        time.sleep(1.1)  # the breaker lets a probe through again
        assert cache.get([A]) == {}  # an empty server, not the old L1
        cache.close()
    finally:
        server.stop()


def test_l1_pool_is_bounded_and_wakes_a_waiter(valkey_url: str) -> None:
    client = cache_client_from_url(valkey_url, local_cache=True, max_connections=2, timeout=2)
    pool = client.connection_pool
    held = [pool.get_connection("GET") for _ in range(2)]
    assert pool.take_idle() is None  # nothing idle: never opens one
    got: list[Any] = []
    started = time.monotonic()
    waiter = threading.Thread(target=lambda: got.append(pool.get_connection("GET")))
    waiter.start()
    time.sleep(0.2)
    assert not got  # waits: the pool is full
    pool.release(held[0])
    waiter.join(1)
    assert got == [held[0]]  # woken by the release, not by its timeout
    assert 0.2 <= time.monotonic() - started < 1.5
    pool.release(held[1])
    pool.release(got[0])
    assert pool.idle_count() == 2 and len(pool._connections) == 2
    client.close()

    short = cache_client_from_url(valkey_url, local_cache=True, max_connections=1, timeout=0.2)
    conn = short.connection_pool.get_connection("GET")
    started = time.monotonic()
    with pytest.raises(ValkeyConnectionError, match="No connection available"):
        short.connection_pool.get_connection("GET")
    assert 0.15 <= time.monotonic() - started < 1.0
    short.connection_pool.release(conn)
    assert short.execute_command("PING")
    short.close()


def test_l1_pool_threads_share_connections(valkey_url: str, prefix: str) -> None:
    client = cache_client_from_url(valkey_url, local_cache=True, max_connections=3, timeout=2)
    client.set(f"{prefix}:k", b"v")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(300):
                assert client.execute_command("GET", f"{prefix}:k") == b"v"
                client.local_reply("GET", f"{prefix}:k")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    pool = client.connection_pool
    assert len(pool._connections) <= 3 and pool.idle_count() == len(pool._connections)
    client.close()


async def test_aget_on_a_sync_l1_client_is_local_and_coherent(
    pair: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No async client: a local hit is served on the loop (no worker thread, no round
    trip) while nothing is pending; a pending invalidation sends it to the plan."""
    reader, writer = pair
    threads: list[Any] = []
    to_thread = asyncio.to_thread

    async def counted(fn: Any, *args: Any) -> Any:  # the executor's worker-thread hop
        threads.append(fn)
        return await to_thread(fn, *args)

    monkeypatch.setattr(asyncio, "to_thread", counted)
    writer.set({A: ([("y", 1)], 60)})
    assert await reader.aget([A]) == {A: [["y", 1]]}
    assert len(threads) == 1  # the first read: the plan, in a worker thread
    with count_commands() as log:
        for _ in range(5):
            assert await reader.aget([A]) == {A: [["y", 1]]}
    assert log.round_trips == 0 and len(threads) == 1  # served on the loop
    writer.set({A: ([("y", 2)], 60)})
    time.sleep(ARRIVAL)  # the invalidation is pending on the reader's connection
    assert await reader.aget([A]) == {A: [["y", 2]]}
    writer.clear()
    time.sleep(ARRIVAL)
    assert await reader.aget([A]) == {}
    stats = await reader.astats()
    assert (stats.hits, stats.misses) == (7, 1)


async def test_async_l1_sees_an_invalidation_the_loop_has_not_read_yet(
    valkey_url: str, prefix: str
) -> None:
    """The invalidation sits on the socket (this task never yielded since it arrived):
    the lookup yields to the loop until it is read, then answers."""
    aclient = cache_client_from_url(valkey_url, asyncio=True, local_cache=True)
    writer = client_from_url(valkey_url)
    key = f"{prefix}:k"
    writer.set(key, b"1")
    assert await aclient.execute_command("GET", key) == b"1"
    for i in range(2, 12):
        writer.set(key, str(i).encode())
        time.sleep(ARRIVAL)  # blocks the loop: the push stays in the kernel's buffer
        assert aclient.local_reply("GET", key) is None  # pending: not answered locally
        assert await aclient.execute_command("GET", key) == str(i).encode()
        assert aclient.local_reply("GET", key) == str(i).encode()
    await aclient.aclose()
    writer.close()


async def test_aget_on_an_async_l1_client(valkey_url: str, prefix: str) -> None:
    aclient = client_from_url(valkey_url, asyncio=True)
    reader = ValkeyNodeCache(aclient, prefix=prefix, metrics=False, local_cache=True)
    writer = ValkeyNodeCache(client_from_url(valkey_url), prefix=prefix, metrics=False)
    writer.set({A: ([("y", 1)], 60)})
    assert await reader.aget([A]) == {A: [["y", 1]]}
    with count_commands() as log:
        for _ in range(5):
            assert await reader.aget([A, B]) == {A: [["y", 1]]}  # MGET through the plan
            assert await reader.aget([A]) == {A: [["y", 1]]}
    assert log.round_trips == 1  # the first MGET; every other read local
    for i in range(2, 7):
        writer.set({A: ([("y", i)], 60)})
        time.sleep(ARRIVAL)  # the loop has not read the push
        assert await reader.aget([A]) == {A: [["y", i]]}
    writer.clear()
    await asyncio.sleep(ARRIVAL)
    assert await reader.aget([A]) == {}
    stats = await reader.astats()
    assert (stats.hits, stats.misses) == (1 + 10 + 5, 5 + 1)
    await reader.aclose()
    writer.close()
    await aclient.aclose()
