"""The checkpointer's thread index: ``list(None, ...)``, ``search_threads`` and
``delete_for_runs`` cost in proportion to the answer (no SCAN), on standalone and
cluster; the index follows deletes, prunes, copies, retention and expiry."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import pytest
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_metadata

from langgraph_valkey_cache import AsyncValkeySaver, ValkeySaver
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache.checkpoint.base import Script
from langgraph_valkey_cache.testing import count_commands


def _cfg(thread: str, ns: str = "", cid: str | None = None, **meta: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ns}
    if cid:
        conf["checkpoint_id"] = cid
    out: dict[str, Any] = {"configurable": conf}
    if meta:
        out["metadata"] = meta
    return out


def _bulk_put(saver: ValkeySaver, calls: Iterable[tuple[Any, ...]], batch: int = 1000) -> None:
    """Run many ``put`` plans through pipelines of EVALSHA, step by step: the saver's
    own plans (put script, then the index script it asks for), far fewer round trips."""
    client = saver.client
    calls = list(calls)
    for start in range(0, len(calls), batch):
        pending = []
        for call in calls[start : start + batch]:
            plan = saver._plan_put(*call)
            pending.append((plan, next(plan)))
        while pending:
            pipe = client.pipeline(transaction=False)
            for _, op in pending:
                assert isinstance(op, Script)
                script = saver._scripts[op.name]
                pipe.execute_command("EVALSHA", script.sha, len(op.keys), *op.keys, *op.args)
            replies = pipe.execute()
            nxt = []
            for (plan, _), reply in zip(pending, replies, strict=True):
                try:
                    nxt.append((plan, plan.send(reply)))
                except StopIteration:
                    pass
            pending = nxt


def _one(saver: ValkeySaver, thread: str, **meta: Any) -> dict[str, Any]:
    cp = generate_checkpoint(channel_values={"a": 1}, channel_versions={"a": 1})
    return saver.put(_cfg(thread, **meta), cp, generate_metadata(), {"a": 1})


def test_listing_10k_threads_sends_no_scan(any_url: str, prefix: str) -> None:
    client = client_from_url(any_url)
    saver = ValkeySaver(client, prefix=prefix, index_metadata=("user_id",))
    _one(saver, "warm", user_id="w")  # loads the put and index scripts
    n = 10_000
    calls = []
    for i in range(n):
        cp = generate_checkpoint(channel_values={"a": i}, channel_versions={"a": 1})
        meta = {"user_id": f"u{i % 100}"}
        calls.append((_cfg(f"th-{i:05d}", **meta), cp, generate_metadata(step=i), {"a": 1}))
    _bulk_put(saver, calls)
    assert client.zcard(saver.keys.index_threads()) == n + 1
    list(saver.list(None, limit=1))  # loads the index and list scripts

    with count_commands() as log:
        got = list(saver.list(None, limit=10))
    assert len(got) == 10
    assert "SCAN" not in log.commands
    assert log.round_trips <= 12, log.commands  # one index page + one list per thread

    with count_commands() as log:
        ids = saver.thread_ids()
    assert sorted(ids) == sorted(["warm", *(f"th-{i:05d}" for i in range(n))])
    assert "SCAN" not in log.commands
    assert log.round_trips <= n // 1000 + 2, log.round_trips  # pages of 1000 ids

    with count_commands() as log:
        got = list(saver.list(None, filter={"user_id": "u7"}))
    assert "SCAN" not in log.commands
    assert sorted(t.config["configurable"]["thread_id"] for t in got) == [
        f"th-{i:05d}" for i in range(7, n, 100)
    ]
    assert all(t.metadata["user_id"] == "u7" for t in got)
    # proportional to the answer: 100 threads, a couple of index pages
    assert log.round_trips <= 100 + 3, log.round_trips

    with count_commands() as log:
        got = list(saver.list(None, filter={"user_id": "u7", "step": 107}, limit=5))
    assert [t.config["configurable"]["thread_id"] for t in got] == ["th-00107"]
    assert "SCAN" not in log.commands and log.round_trips <= 100 + 3

    with count_commands() as log:
        threads = saver.search_threads({"user_id": "u42"})
    assert threads == [f"th-{i:05d}" for i in range(42, n, 100)]
    assert log.round_trips <= 2 and "SCAN" not in log.commands  # the index alone decides
    assert saver.search_threads({"user_id": "u42"}, limit=3) == threads[:3]

    # a rebuild (in chunks of 1000 members) gives the same index
    before = client.zrange(saver.keys.index_threads(), 0, -1)
    pair = saver.keys.index_pair("user_id=su42")
    pair_before = client.zrange(pair, 0, -1)
    assert saver.reindex() == n + 1
    assert client.zrange(saver.keys.index_threads(), 0, -1) == before
    assert client.zrange(pair, 0, -1) == pair_before

    # without the index the same listing scans the keyspace (what the index replaces)
    plain = ValkeySaver(client, prefix=prefix, thread_index=False)
    with count_commands() as log:
        assert len(list(plain.list(None, limit=10))) == 10
    assert "SCAN" in log.commands
    client.close()


def test_index_follows_deletes_runs_prune_and_copy(any_url: str, prefix: str) -> None:
    client = client_from_url(any_url)
    saver = ValkeySaver(client, prefix=prefix, index_metadata=("user_id", "source"))
    threads = saver.keys.index_threads()

    def members(key: str) -> set[str]:
        return {m.decode() for m in client.zrange(key, 0, -1)}

    # thread a: user alice, two runs; thread b: user bob, run r2; thread c: alice later
    parent = None
    for i, (run, user) in enumerate([("r1", "alice"), ("r1", "alice"), ("r2", "carol")]):
        cp = generate_checkpoint(channel_values={"a": i}, channel_versions={"a": i + 1})
        config = {**_cfg("a", cid=parent), "metadata": {"run_id": run, "user_id": user}}
        parent = saver.put(config, cp, generate_metadata(step=i), {"a": i + 1})["configurable"][
            "checkpoint_id"
        ]
    _one(saver, "b", run_id="r2", user_id="bob")
    cp = generate_checkpoint(channel_values={"a": 1}, channel_versions={"a": 1})
    saver.put(_cfg("c", user_id="alice"), cp, generate_metadata(source="update"), {"a": 1})
    assert members(threads) == {"a", "b", "c"}
    assert saver.search_threads({"user_id": "alice"}) == ["a", "c"]
    assert saver.search_threads({"user_id": "carol"}) == ["a"]
    assert saver.search_threads({"user_id": "alice", "source": "update"}) == ["c"]
    assert saver.search_threads() == ["a", "b", "c"]
    assert members(saver.keys.index_run("r2")) == {"a", "b"}

    # deleting run r2 removes a's carol checkpoint: a leaves carol's entry; b is gone
    with count_commands() as log:
        saver.delete_for_runs(["r2"])
    assert "SCAN" not in log.commands
    assert saver.search_threads({"user_id": "carol"}) == []
    assert not client.exists(saver.keys.index_run("r2"))
    assert members(threads) == {"a", "c"}
    assert saver.search_threads({"user_id": "alice"}) == ["a", "c"]

    saver.copy_thread("a", "a2")
    assert members(threads) == {"a", "a2", "c"}
    assert members(saver.keys.index_run("r1")) == {"a", "a2"}
    assert saver.search_threads({"user_id": "alice"}) == ["a", "a2", "c"]

    saver.prune(["a"], strategy="delete")
    saver.delete_thread("c")
    assert members(threads) == {"a2"}
    assert saver.search_threads({"user_id": "alice"}) == ["a2"]
    saver.delete_for_runs(["r1"])
    assert _all_keys(client, prefix) == []  # data and index keys alike
    client.close()


def _all_keys(client: Any, prefix: str) -> list[Any]:
    from langgraph_valkey_cache._client import scan_keys

    return list(scan_keys(client, prefix + "*"))


def test_index_values_match_like_filters(valkey_url: str, prefix: str) -> None:
    """Index codes follow Python equality (1 == 1.0 == True), non-scalar and missing
    values fall back to the threads' own checkpoints, long values are digested."""
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix, index_metadata=("k",))
    long = "x" * 1000
    for thread, value in [("i", 1), ("f", 1.0), ("b", True), ("s", "1"), ("l", long)]:
        _one(saver, thread, k=value)
    cp = generate_checkpoint(channel_values={"a": 1}, channel_versions={"a": 1})
    saver.put(_cfg("d"), cp, generate_metadata(k={"nested": 1}), {"a": 1})  # not indexed
    _one(saver, "none")
    assert saver.search_threads({"k": 1}) == ["b", "f", "i"]
    assert saver.search_threads({"k": "1"}) == ["s"]
    assert saver.search_threads({"k": long}) == ["l"]
    assert saver.search_threads({"k": {"nested": 1}}) == ["d"]
    assert saver.search_threads({"k": None}) == ["none"]
    for flt in ({"k": 1}, {"k": long}, {"k": {"nested": 1}}, {"k": None}):
        ours = sorted(t.config["configurable"]["thread_id"] for t in saver.list(None, filter=flt))
        assert ours == sorted(saver.search_threads(flt)), flt
    client.close()


def test_retention_drops_index_entries_and_overwrite_is_counted(
    valkey_url: str, prefix: str
) -> None:
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix, index_metadata=("user_id",), keep_last=2)
    parent = None
    for i, user in enumerate(["old", "new", "new"]):
        cp = generate_checkpoint(channel_values={"a": i}, channel_versions={"a": i + 1})
        config = {**_cfg("t", cid=parent), "metadata": {"user_id": user, "run_id": f"r{i}"}}
        parent = saver.put(config, cp, generate_metadata(), {"a": i + 1})["configurable"][
            "checkpoint_id"
        ]
    assert len(list(saver.list(_cfg("t")))) == 2
    assert saver.search_threads({"user_id": "old"}) == []  # its only checkpoint was pruned
    assert not client.exists(saver.keys.index_run("r0"))
    assert saver.search_threads({"user_id": "new"}) == ["t"]
    # the same checkpoint id written again with another value moves the entry
    tup = saver.get_tuple(_cfg("t"))
    assert tup is not None
    config = {**_cfg("t", cid=tup.parent_config["configurable"]["checkpoint_id"])}
    config["metadata"] = {"user_id": "other"}
    saver.put(config, tup.checkpoint, generate_metadata(), {})
    assert saver.search_threads({"user_id": "other"}) == ["t"]
    assert saver.search_threads({"user_id": "new"}) == ["t"]  # the other one still has it
    client.close()


def test_expired_threads_leave_the_index(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix, ttl={"default_ttl": 0.01}, index_metadata=("u",))
    _one(saver, "short", u="x")
    saver2 = ValkeySaver(client, prefix=prefix, index_metadata=("u",))
    _one(saver2, "long", u="x")
    time.sleep(0.8)
    assert saver.get_tuple(_cfg("short")) is None
    assert [t.config["configurable"]["thread_id"] for t in saver.list(None)] == ["long"]
    # met once by a listing: dropped from the index keys it was found through
    assert client.zrange(saver.keys.index_threads(), 0, -1) == [b"long"]
    assert saver.search_threads({"u": "x"}) == ["long", "short"]  # not listed through u yet
    assert [t.config["configurable"]["thread_id"] for t in saver.list(None, filter={"u": "x"})] == [
        "long"
    ]
    assert saver.search_threads({"u": "x"}) == ["long"]
    # thread_ids() checks what the index names when the saver has a TTL
    _one(saver, "short2", u="y")
    client.zadd(saver.keys.index_threads(), {b"short": 0})  # as if never met
    deadline = time.monotonic() + 10
    while client.exists(saver.keys.base("short2") + "ns"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _one(saver, "fresh", u="y")
    assert client.zscore(saver.keys.index_threads(), b"short2") is not None
    with count_commands() as log:
        ids = saver.thread_ids()
    assert sorted(ids) == ["fresh", "long"]
    assert "SCAN" not in log.commands
    assert client.zscore(saver.keys.index_threads(), b"short") is None  # met: dropped
    client.close()


def test_reindex_rebuilds_from_thread_data(any_url: str, prefix: str) -> None:
    client = client_from_url(any_url)
    plain = ValkeySaver(client, prefix=prefix, thread_index=False)
    indexed = ValkeySaver(client, prefix=prefix, index_metadata=("u",))
    for i in range(5):
        _one(plain, f"old-{i}", run_id="r-old")  # written without the index
    _one(indexed, "new", u="x", run_id="r-new")
    assert [t.config["configurable"]["thread_id"] for t in indexed.list(None)] == ["new"]
    client.zadd(indexed.keys.index_pair("u=sgone"), {b"ghost": 0})  # a stale entry
    assert indexed.reindex() == 6
    assert sorted(t.config["configurable"]["thread_id"] for t in indexed.list(None)) == [
        "new",
        *(f"old-{i}" for i in range(5)),
    ]
    assert indexed.search_threads({"u": "x"}) == ["new"]
    assert not client.exists(indexed.keys.index_pair("u=sgone"))
    with count_commands() as log:
        indexed.delete_for_runs(["r-old"])
    assert "SCAN" not in log.commands
    assert indexed.search_threads() == ["new"]
    client.close()


async def test_async_index(any_url: str, prefix: str) -> None:
    client = client_from_url(any_url, asyncio=True)
    saver = AsyncValkeySaver(client, prefix=prefix, index_metadata=("user_id",))
    for i in range(30):
        cp = generate_checkpoint(channel_values={"a": i}, channel_versions={"a": 1})
        await saver.aput(
            _cfg(f"t{i:02d}", user_id=f"u{i % 3}", run_id=f"r{i % 2}"),
            cp,
            generate_metadata(),
            {"a": 1},
        )
    with count_commands() as log:
        got = [t async for t in saver.alist(None, filter={"user_id": "u1"}, limit=4)]
    assert [t.config["configurable"]["thread_id"] for t in got] == ["t01", "t04", "t07", "t10"]
    assert "SCAN" not in log.commands
    assert await saver.asearch_threads({"user_id": "u2"}, limit=2) == ["t02", "t05"]
    await saver.adelete_for_runs(["r0"])
    assert await saver.asearch_threads() == [f"t{i:02d}" for i in range(1, 30, 2)]
    assert await saver.areindex() == 15
    await client.aclose()


def test_index_options_are_checked(valkey_url: str) -> None:
    client = client_from_url(valkey_url)
    with pytest.raises(TypeError, match="sequence of field names"):
        ValkeySaver(client, index_metadata="user_id")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="thread_index"):
        ValkeySaver(client, index_metadata=("u",), thread_index=False)
    with pytest.raises(ValueError, match="keep_last"):
        ValkeySaver(client, keep_last=0)
    client.close()


@pytest.mark.parametrize("by", ["writes", "reads"])
def test_index_keys_expire_after_the_threads_they_name(
    valkey_url: str, prefix: str, by: str
) -> None:
    """With a TTL the index keys expire too, never before a thread they name: a thread
    kept alive (by puts, or by reads with refresh_on_read) for longer than the index
    TTL stays listed; once every thread has expired the index keys go as well."""
    client = client_from_url(valkey_url)
    ttl_ms = 600
    saver = ValkeySaver(
        client,
        prefix=prefix,
        index_metadata=("u",),
        ttl={"default_ttl": ttl_ms / 60_000, "refresh_on_read": by == "reads"},
    )
    _one(saver, "busy", u="x", run_id="r1")
    _one(saver, "idle", u="x")
    keys = [
        saver.keys.index_threads(),
        saver.keys.index_pair("u=sx"),
        saver.keys.index_run("r1"),
    ]
    for key in keys:
        assert 0 < client.pttl(key) <= ttl_ms * 3 // 2
    # a saver without a TTL keeps its (other) index keys persistent
    plain = ValkeySaver(client, prefix=prefix + "p")
    _one(plain, "t")
    assert client.pttl(plain.keys.index_threads()) == -1

    # another saver (another process) keeps "busy" alive past the index TTL
    other = ValkeySaver(
        client_from_url(valkey_url),
        prefix=prefix,
        index_metadata=("u",),
        ttl={"default_ttl": ttl_ms / 60_000, "refresh_on_read": by == "reads"},
    )
    end = time.monotonic() + 3 * ttl_ms / 1000
    while time.monotonic() < end:
        if by == "writes":
            other.put(_cfg("busy", u="x"), generate_checkpoint(), generate_metadata(), {})
        else:
            assert other.get_tuple(_cfg("busy")) is not None
        time.sleep(0.05)
    assert saver.get_tuple(_cfg("idle")) is None  # expired long ago
    assert saver.thread_ids() == ["busy"]
    listed = list(saver.list(None, filter={"u": "x"}))
    assert {t.config["configurable"]["thread_id"] for t in listed} == {"busy"}
    runs = [t.metadata.get("run_id") for t in saver.list(_cfg("busy"))]
    assert runs.count("r1") == 1
    saver.delete_for_runs(["r1"])  # the run's index key still names the thread
    assert "r1" not in [t.metadata.get("run_id") for t in saver.list(_cfg("busy"))]
    deadline = time.monotonic() + 10
    while any(client.exists(k) for k in keys[:2]):
        assert time.monotonic() < deadline, [client.pttl(k) for k in keys]
        time.sleep(0.05)
    other.client.close()
    client.close()
