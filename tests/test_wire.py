"""The lean command path (``_wire``) on real servers: same replies as valkey-py's own
``execute_command``, and the connection handling that makes it safe to share.

What can go wrong with a private idle list of connections: a late reply read by the
next command after a timeout, a connection the server closed while idle, a reply stream
out of step after an error in a pipeline, a script the server forgot. Each has a test.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import valkey
import valkey.asyncio as avalkey
from valkey.exceptions import DataError, ResponseError
from valkey.exceptions import TimeoutError as VTimeoutError

from langgraph_valkey_cache import _wire
from langgraph_valkey_cache._client import cache_client_from_url, client_from_url
from langgraph_valkey_cache._wire import AsyncWire, Wire, wire_for
from langgraph_valkey_cache.embedded import EmbeddedValkey
from langgraph_valkey_cache.testing import count_commands


@pytest.fixture
def client(valkey_url: str) -> Iterator[valkey.Valkey]:
    c = valkey.Valkey.from_url(valkey_url)
    yield c
    c.close()


def test_replies_match_execute_command(client: valkey.Valkey, prefix: str) -> None:
    w = Wire(client)
    key = f"{prefix}k"
    assert w.call(("SET", key, "v")) is client.execute_command("SET", key, "v") is True
    assert w.call(("GET", key)) == client.execute_command("GET", key) == b"v"
    assert w.call(("SET", key, "w", "NX")) is None  # callbacks applied as valkey-py does
    assert w.call(("EXISTS", key, key)) == 2
    assert w.call(("MGET", key, f"{prefix}none")) == [b"v", None]
    assert w.call(("INCRBYFLOAT", f"{prefix}f", 1.5)) == 1.5  # a float, as valkey-py gives
    assert client.execute_command("INCRBYFLOAT", f"{prefix}f", 0) == 1.5
    assert w.call(("GET", f"{prefix}none")) is None


def test_arguments_encoded_like_valkey_py(client: valkey.Valkey, prefix: str) -> None:
    w = Wire(client)
    for value in ("ünïcode \x00 nul", b"\x00\xff bytes", 12, -3, 2.5, memoryview(b"mv")):
        w.call(("SET", f"{prefix}a", value))
        client.set(f"{prefix}b", value)
        assert w.call(("GET", f"{prefix}a")) == client.get(f"{prefix}b")
    with pytest.raises(DataError):
        w.call(("SET", f"{prefix}a", True))  # valkey-py refuses bools too
    with pytest.raises(DataError):
        w.call(("SET", f"{prefix}a", object()))


def test_big_values_are_sent_whole(client: valkey.Valkey, prefix: str) -> None:
    w = Wire(client)
    big = os.urandom(3 * 1024 * 1024)
    small = b"s" * 100
    w.pipeline([("SET", f"{prefix}big", big), ("SET", f"{prefix}small", small)])
    assert w.call(("GET", f"{prefix}big")) == big
    assert w.call(("MGET", f"{prefix}small", f"{prefix}big")) == [small, big]


def test_pipeline_raises_first_error_and_stays_in_step(client: valkey.Valkey, prefix: str) -> None:
    w = Wire(client)
    client.set(f"{prefix}s", "x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        w.pipeline([("SET", f"{prefix}a", 1), ("LPUSH", f"{prefix}s", "y"), ("GET", f"{prefix}a")])
    # the replies after the error were read: the next command gets its own reply
    assert client.get(f"{prefix}a") == b"1"
    assert w.call(("GET", f"{prefix}s")) == b"x"
    assert w.pipeline([("GET", f"{prefix}a"), ("GET", f"{prefix}s")]) == [b"1", b"x"]


def test_script_reloaded_after_script_flush(client: valkey.Valkey, prefix: str) -> None:
    w = Wire(client)
    script = client.register_script("return ARGV[1] .. redis.call('GET', KEYS[1])")
    client.set(f"{prefix}k", "!")
    assert w.evalsha(script, (f"{prefix}k",), ("hi",)) == b"hi!"
    client.script_flush()
    with count_commands() as log:
        assert w.evalsha(script, (f"{prefix}k",), ("again",)) == b"again!"
    assert log.commands == ["EVALSHA", "SCRIPT", "EVALSHA"]


def test_timeout_never_leaves_a_late_reply_for_the_next_command(prefix: str) -> None:
    with EmbeddedValkey(extra_args=["--enable-debug-command", "yes"]) as server:
        c = cache_client_from_url(server.url, timeout=0.2)
        w = wire_for(c)
        assert w is not None
        c.set(f"{prefix}k", "mine")
        with pytest.raises(VTimeoutError):
            w.call(("DEBUG", "SLEEP", "0.5"))  # its "+OK" arrives after we gave up
        time.sleep(0.5)  # the server is back and has sent that "+OK"
        assert w.call(("GET", f"{prefix}k")) == b"mine"
        c.close()


def test_connection_closed_while_idle_is_replaced(prefix: str) -> None:
    server = EmbeddedValkey().start()
    try:
        c = cache_client_from_url(server.url, timeout=0.5)
        w = wire_for(c)
        assert w is not None
        w.call(("SET", f"{prefix}k", "1"))
        c2 = valkey.Valkey.from_url(server.url)
        c2.client_kill_filter(_type="normal", skipme=True)  # the server drops our idle one
        assert w.call(("GET", f"{prefix}k")) == b"1"  # no error: reconnected first
        server.kill()
        server = EmbeddedValkey(port=server.port).start()  # restarted, empty
        assert w.call(("GET", f"{prefix}k")) is None
        c.close()
        c2.close()
    finally:
        server.stop()


def test_close_closes_idle_connections_and_they_come_back(client: valkey.Valkey) -> None:
    w = Wire(client)
    w.call(("PING",))
    (conn,) = w.idle
    client.close()
    assert conn._sock is None  # the pool's disconnect reached it
    assert w.call(("PING",)) is True


def test_threads_share_it_safely(client: valkey.Valkey, prefix: str) -> None:
    w = Wire(client)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(200):
                w.call(("SET", f"{prefix}{i}", f"{i}:{j}"))
                assert w.call(("GET", f"{prefix}{i}")) == f"{i}:{j}".encode()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(w.idle) <= 6


def test_small_pool_is_not_starved(valkey_url: str, prefix: str) -> None:
    """The idle list keeps at most a quarter of a bounded pool: with two connections,
    both go back after each call, so the client's own commands never wait for one."""
    c = valkey.Valkey(
        connection_pool=valkey.BlockingConnectionPool.from_url(
            valkey_url, max_connections=2, timeout=0.2
        )
    )
    w = Wire(c)
    barrier = threading.Barrier(2)

    def work() -> None:
        barrier.wait()
        for _ in range(50):
            w.call(("SET", f"{prefix}k", "v"))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(w.idle) == 0
    assert c.get(f"{prefix}k") == b"v"  # would raise "No connection available" if starved
    assert Wire(valkey.Valkey.from_url(valkey_url)).idle_cap == 16
    c.close()


def test_only_plain_standalone_clients(valkey_url: str, cluster_url: str) -> None:
    plain = client_from_url(valkey_url)
    assert isinstance(wire_for(plain), Wire)
    assert wire_for(plain) is wire_for(plain)  # one per client
    assert wire_for(client_from_url(cluster_url)) is None
    assert isinstance(wire_for(client_from_url(valkey_url, asyncio=True)), AsyncWire)
    assert wire_for(cache_client_from_url(valkey_url, local_cache=True)) is None
    assert wire_for(object()) is None


def test_decode_responses_client_gets_str(valkey_url: str, prefix: str) -> None:
    c = valkey.Valkey.from_url(valkey_url, decode_responses=True)
    w = Wire(c)
    w.call(("SET", f"{prefix}k", "v"))
    assert w.call(("GET", f"{prefix}k")) == "v"
    c.close()


def test_count_commands_sees_the_lean_path(client: valkey.Valkey, prefix: str) -> None:
    w = Wire(client)
    with count_commands() as outer, count_commands() as inner:
        w.call(("GET", f"{prefix}k"))
        w.pipeline([("GET", f"{prefix}a"), ("SET", f"{prefix}b", 1)])
    assert inner.commands == outer.commands == ["GET", "GET", "SET"]
    assert inner.round_trips == 2
    assert _wire._record is None


# -- async -------------------------------------------------------------------------------


async def test_async_replies_pipeline_and_scripts(valkey_url: str, prefix: str) -> None:
    c = avalkey.Valkey.from_url(valkey_url)
    w = AsyncWire(c)
    assert await w.call(("SET", f"{prefix}k", "v")) is True
    assert await w.call(("GET", f"{prefix}k")) == await c.get(f"{prefix}k") == b"v"
    big = os.urandom(1024 * 1024)
    assert await w.pipeline([("SET", f"{prefix}b", big), ("GET", f"{prefix}b")]) == [True, big]
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await w.pipeline([("LPUSH", f"{prefix}k", "x"), ("GET", f"{prefix}k")])
    assert await w.call(("GET", f"{prefix}k")) == b"v"  # still in step
    errors = await w.pipeline([("LPUSH", f"{prefix}k", "x")], raise_on_error=False)
    assert isinstance(errors[0], ResponseError)
    script = c.register_script("return ARGV[1]")
    await c.script_flush()
    with count_commands() as log:
        assert await w.evalsha(script, (), ("hi",)) == b"hi"
    assert log.commands == ["EVALSHA", "SCRIPT", "EVALSHA"]
    assert log.round_trips == 3
    await c.aclose()


async def test_async_deadline_never_leaves_a_late_reply(prefix: str) -> None:
    with EmbeddedValkey(extra_args=["--enable-debug-command", "yes"]) as server:
        c = avalkey.Valkey.from_url(server.url, socket_timeout=5)
        w = AsyncWire(c)
        await w.call(("SET", f"{prefix}k", "mine"))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):  # the executor's budget cancels the read
                await w.call(("DEBUG", "SLEEP", "0.4"))
        await asyncio.sleep(0.5)
        assert await w.call(("GET", f"{prefix}k")) == b"mine"
        await c.aclose()


async def test_async_connection_closed_while_idle_is_replaced(valkey_url: str, prefix: str) -> None:
    c = avalkey.Valkey.from_url(valkey_url)
    w = AsyncWire(c)
    await w.call(("SET", f"{prefix}k", "1"))
    other = valkey.Valkey.from_url(valkey_url)
    other.client_kill_filter(_type="normal", skipme=True)
    await asyncio.sleep(0.05)  # the loop sees the EOF
    assert await w.call(("GET", f"{prefix}k")) == b"1"
    other.close()
    await c.aclose()


def test_async_wire_across_event_loops(valkey_url: str, prefix: str) -> None:
    """asyncio.run() twice with one client: an idle connection of the first loop is
    reset and reconnects on the second (valkey-py's own path raises there)."""
    c = avalkey.Valkey.from_url(valkey_url)
    w = AsyncWire(c)
    asyncio.run(w.call(("SET", f"{prefix}k", "1")))
    assert asyncio.run(w.call(("GET", f"{prefix}k"))) == b"1"


async def test_async_tasks_share_it(valkey_url: str, prefix: str) -> None:
    c = avalkey.Valkey.from_url(valkey_url)
    w = AsyncWire(c)

    async def work(i: int) -> None:
        for j in range(100):
            await w.call(("SET", f"{prefix}{i}", f"{i}:{j}"))
            assert await w.call(("GET", f"{prefix}{i}")) == f"{i}:{j}".encode()

    await asyncio.gather(*(work(i) for i in range(8)))
    assert len(w.idle) <= 8
    await c.aclose()


async def test_async_deadlines_are_kept_by_one_timer(prefix: str) -> None:
    """The socket timeout and a caller's budget bound each exchange without a timer per
    call: a stalled server times out each call at its own deadline (an earlier one
    armed after a later one included), no late reply reaches the next command, and a
    thousand calls leave no timer per call on the loop."""
    with EmbeddedValkey(extra_args=["--enable-debug-command", "yes"]) as server:
        c = avalkey.Valkey.from_url(server.url, socket_timeout=0.3)
        w = AsyncWire(c)
        await w.call(("SET", f"{prefix}k", "mine"))
        loop: Any = asyncio.get_running_loop()
        before = len(loop._scheduled)  # the connect's own timers, cancelled, may linger
        for _ in range(1000):
            await w.call(("GET", f"{prefix}k"))
        assert len(loop._scheduled) <= before
        assert len([h for h in loop._scheduled if not h.cancelled()]) <= 1
        sleeper = avalkey.Valkey.from_url(server.url)

        async def timed(budget: float | None) -> float:
            t0 = time.perf_counter()
            with pytest.raises(VTimeoutError):
                await w.call(("GET", f"{prefix}k"), budget=budget)
            return time.perf_counter() - t0

        # two connections idle, so both calls below wait on a read (not on a connect)
        await asyncio.gather(*(w.call(("GET", f"{prefix}k")) for _ in range(2)))
        assert len(w.idle) == 2
        stall = asyncio.ensure_future(sleeper.execute_command("DEBUG", "SLEEP", "0.8"))
        await asyncio.sleep(0.05)  # the server is asleep from here
        late, early = await asyncio.gather(timed(None), timed(0.1))
        assert 0.25 <= late < 0.55, late  # the socket timeout, 0.3 s
        assert 0.08 <= early < 0.25, early  # the budget, armed after the later deadline
        await stall
        assert await w.call(("GET", f"{prefix}k")) == b"mine"
        assert await w.evalsha(c.register_script("return 7"), (), (), budget=1.0) == 7
        await sleeper.aclose()
        await c.aclose()
