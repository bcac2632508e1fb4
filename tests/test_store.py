"""ValkeyStore / AsyncValkeyStore on a plain server and the cluster: get/put/delete,
batching and round trips, namespaces (whole labels, any character), filters with
paging, list_namespaces, TTL, validation, key safety. Results are compared with
LangGraph's InMemoryStore. Vector search lives in test_store_search.py."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from langgraph.store.base import GetOp, InvalidNamespaceError, PutOp, SearchOp
from langgraph.store.memory import InMemoryStore

from langgraph_valkey_cache import AsyncValkeyStore, ValkeyStore
from langgraph_valkey_cache._client import client_from_url, scan_keys
from langgraph_valkey_cache.testing import count_commands
from tests.conftest import FT_SERVERS, ft_server_url

FLAVOURS = ["sync", "async"]


@pytest.fixture(params=["standalone", "cluster", *FT_SERVERS])
def any_url(request: pytest.FixtureRequest) -> str:
    """The plain server, the cluster, and each FT.* server (the store behaves the same)."""
    if request.param == "cluster":
        request.applymarker(pytest.mark.cluster)
        return str(request.getfixturevalue("cluster_url"))
    if request.param in FT_SERVERS:
        request.applymarker(pytest.mark.search)
        return ft_server_url(request, request.param)
    return str(request.getfixturevalue("valkey_url"))


@asynccontextmanager
async def open_store(flavour: str, url: str, **kwargs: Any) -> AsyncIterator[Any]:
    if flavour == "sync":
        client = client_from_url(url)
        try:
            yield ValkeyStore(client, **kwargs)
        finally:
            client.close()
    else:
        aclient = client_from_url(url, asyncio=True)
        try:
            yield AsyncValkeyStore(aclient, **kwargs)
        finally:
            await aclient.aclose()


async def call(store: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """``store.<name>(...)`` for a sync store, ``await store.a<name>(...)`` for an async one."""
    if isinstance(store, AsyncValkeyStore):
        return await getattr(store, "a" + name)(*args, **kwargs)
    return getattr(store, name)(*args, **kwargs)


def keys_of(search: list[Any]) -> list[tuple[tuple[str, ...], str]]:
    return [(tuple(i.namespace), i.key) for i in search]


# -- basics ----------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_put_get_update_delete(flavour: str, any_url: str, prefix: str) -> None:
    async with open_store(flavour, any_url, prefix=prefix) as store:
        ns = ("user", "alice", "memories")
        value = {"text": "Alice lives in Lisbon", "n": 1.5, "tags": ["a", "b"], "d": {"x": None}}
        await call(store, "put", ns, "m1", value)
        item = await call(store, "get", ns, "m1")
        assert item is not None and item.value == value and item.key == "m1"
        assert tuple(item.namespace) == ns and item.created_at == item.updated_at
        await asyncio.sleep(0.01)
        await call(store, "put", ns, "m1", {"text": "moved to Porto"})
        again = await call(store, "get", ns, "m1")
        assert again.value == {"text": "moved to Porto"}
        assert again.created_at == item.created_at and again.updated_at > item.updated_at
        assert await call(store, "get", ns, "other") is None
        assert await call(store, "get", ("nobody",), "m1") is None
        await call(store, "delete", ns, "m1")
        assert await call(store, "get", ns, "m1") is None
        assert await call(store, "list_namespaces") == []


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_batch_mixed_ops_read_before_write(flavour: str, any_url: str, prefix: str) -> None:
    async with open_store(flavour, any_url, prefix=prefix) as store:
        await call(store, "put", ("a",), "k", {"v": 1})
        ops = [
            GetOp(("a",), "k"),
            PutOp(("a",), "k", {"v": 2}),
            SearchOp(("a",), None, 10, 0),
            PutOp(("b",), "k", {"v": 3}),
            PutOp(("b",), "k", {"v": 4}),  # last put of a key wins
        ]
        results = await call(store, "batch", ops)
        assert results[0].value == {"v": 1} and results[1] is None and results[3] is None
        assert [i.value for i in results[2]] == [{"v": 1}]
        assert (await call(store, "get", ("a",), "k")).value == {"v": 2}
        assert (await call(store, "get", ("b",), "k")).value == {"v": 4}


def test_round_trips(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    store = ValkeyStore(client, prefix=prefix)
    ns = ("user", "bob")
    store.put(ns, "warm", {"v": 0})  # loads the scripts
    store.get(ns, "warm")
    store.search(ns)
    with count_commands() as log:
        store.batch([GetOp(ns, f"k{i}") for i in range(50)])
    assert log.round_trips == 1, log
    with count_commands() as log:
        store.batch([PutOp(ns, f"k{i}", {"i": i}) for i in range(50)])
    assert log.round_trips == 1, log  # namespace already registered
    with count_commands() as log:
        assert len(store.search(ns, limit=5)) == 5
    assert log.round_trips == 2, log  # registry range + per-namespace list script
    with count_commands() as log:
        store.list_namespaces()
    assert log.round_trips == 2, log
    assert "KEYS" not in log.commands and "SCAN" not in log.commands
    client.close()


@pytest.mark.cluster
def test_cluster_batch_of_gets_per_node(cluster_url: str, prefix: str) -> None:
    client = client_from_url(cluster_url)
    store = ValkeyStore(client, prefix=prefix)
    for i in range(30):
        store.put(("user", f"u{i}"), "k", {"i": i})
    with count_commands() as log:
        got = store.batch([GetOp(("user", f"u{i}"), "k") for i in range(30)])
    assert [g.value["i"] for g in got] == list(range(30))
    assert log.round_trips <= 3  # one pipeline, one round trip per primary
    assert len(store.list_namespaces(prefix=("user",))) == 30
    assert len(store.search(("user",), limit=100)) == 30
    client.close()


# -- namespaces and labels ----------------------------------------------------------------

ODD = ["user:1", "*", "{tag}", "a,b", "%41", "with space", "ünïcødé", "[x]", "a\\b", "-", "A"]


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_labels_any_character_and_whole_label_prefix(
    flavour: str, any_url: str, prefix: str
) -> None:
    async with open_store(flavour, any_url, prefix=prefix) as store:
        mem = InMemoryStore()
        for label in ODD:
            for st in (store, mem):
                await call(st, "put", ("odd", label), label, {"label": label})
        for ns in [("user1",), ("user10",), ("user1", "x"), ("a",), ("a", "b")]:
            for st in (store, mem):
                await call(st, "put", ns, "k", {"ns": list(ns)})
        for label in ODD:
            got = await call(store, "search", ("odd", label))
            assert [i.value["label"] for i in got] == [label]
            assert (await call(store, "get", ("odd", label), label)).value == {"label": label}
        for pre in [("user1",), ("a",), ("odd",), ("odd", "a"), ("a", "b"), ()]:
            ours = await call(store, "search", pre, limit=100)
            theirs = await call(mem, "search", pre, limit=100)
            assert sorted(keys_of(ours)) == sorted(keys_of(theirs)), pre
        assert await call(store, "list_namespaces", limit=1000) == await call(
            mem, "list_namespaces", limit=1000
        )


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_invalid_namespaces_raise_langgraph_errors(
    flavour: str, valkey_url: str, prefix: str
) -> None:
    async with open_store(flavour, valkey_url, prefix=prefix) as store:
        for bad in [("a.b",), ("",), ("ok", "x\x00")]:
            with pytest.raises(InvalidNamespaceError):
                await call(store, "put", bad, "k", {"v": 1})
            with pytest.raises(InvalidNamespaceError):
                await call(store, "get", bad, "k")
            with pytest.raises(InvalidNamespaceError):
                await call(store, "search", bad)
            with pytest.raises(InvalidNamespaceError):
                await call(store, "batch", [GetOp(bad, "k")])  # batch() validates too
        with pytest.raises(InvalidNamespaceError):
            await call(store, "put", ("langgraph", "x"), "k", {"v": 1})
        with pytest.raises(InvalidNamespaceError):
            await call(store, "put", (), "k", {"v": 1})
        with pytest.raises(InvalidNamespaceError):
            await call(store, "list_namespaces", prefix=("a.b",))
        with pytest.raises(TypeError, match="JSON"):
            await call(store, "put", ("ok",), "k", {"v": object()})
        assert await call(store, "list_namespaces") == []


# -- filters ---------------------------------------------------------------------------

FILTERS: list[dict[str, Any]] = [
    {"kind": "fact"},
    {"kind": {"$ne": "fact"}},
    {"n": {"$gt": 5}},
    {"n": {"$gte": 5, "$lt": 12}},
    {"n": {"$lte": 3}},
    {"meta": {"lang": "en"}},
    {"meta": {"lang": {"$ne": "en"}}, "kind": "pref"},
    {"flag": True},
    {"n": 7},
    {"tags": ["x", "y"]},
    {"missing": None},
]


def _data(n: int, seed: int = 0) -> list[tuple[tuple[str, ...], str, dict[str, Any]]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        ns = ("mem", rnd.choice(["alice", "bob"]), *rnd.choice([(), ("x",), ("x", "y")]))
        value = {
            "kind": rnd.choice(["fact", "pref", "event"]),
            "n": rnd.randint(0, 20),
            "meta": {"lang": rnd.choice(["en", "pt"])},
            "flag": rnd.choice([True, False]),
            "tags": rnd.choice([["x", "y"], ["y"]]),
            "text": f"memory {i}",
        }
        out.append((ns, f"k{i}", value))
    return out


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_search_filters_match_inmemory(flavour: str, any_url: str, prefix: str) -> None:
    async with open_store(flavour, any_url, prefix=prefix) as store:
        mem = InMemoryStore()
        data = _data(120)
        await call(store, "batch", [PutOp(ns, k, v) for ns, k, v in data])
        mem.batch([PutOp(ns, k, v) for ns, k, v in data])
        for pre in [("mem",), ("mem", "alice"), ("mem", "bob", "x")]:
            for flt in FILTERS:
                ours = await call(store, "search", pre, filter=flt, limit=1000)
                theirs = mem.search(pre, filter=flt, limit=1000)
                # same items; ours most recently updated first (InMemoryStore: dict order)
                assert sorted(keys_of(ours)) == sorted(keys_of(theirs)), (pre, flt)
                stamps = [i.updated_at for i in ours]
                assert stamps == sorted(stamps, reverse=True)
                page = await call(store, "search", pre, filter=flt, limit=7, offset=3)
                assert keys_of(page) == keys_of(ours)[3:10]


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_sparse_filter_never_returns_fewer_than_limit(
    flavour: str, any_url: str, prefix: str
) -> None:
    async with open_store(flavour, any_url, prefix=prefix) as store:
        ops = [PutOp(("sparse",), f"k{i:03d}", {"hit": i % 23 == 0, "i": i}) for i in range(300)]
        await call(store, "batch", ops)
        hits = [i for i in range(300) if i % 23 == 0]  # 14 matches spread over 300
        got = await call(store, "search", ("sparse",), filter={"hit": True}, limit=10)
        assert [i.value["i"] for i in got] == sorted(hits, reverse=True)[:10]
        rest = await call(store, "search", ("sparse",), filter={"hit": True}, limit=10, offset=10)
        assert [i.value["i"] for i in rest] == sorted(hits, reverse=True)[10:]


# -- list_namespaces ----------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_list_namespaces_matches_inmemory(flavour: str, any_url: str, prefix: str) -> None:
    async with open_store(flavour, any_url, prefix=prefix) as store:
        mem = InMemoryStore()
        spaces = [
            ("a", "b", "c"),
            ("a", "b", "d", "e"),
            ("a", "b", "d", "i"),
            ("a", "b", "f"),
            ("a", "c", "f"),
            ("b", "a", "f"),
            ("users", "123"),
            ("users", "456", "settings"),
            ("users", "789", "settings"),
            ("a10",),
            ("a", "b"),
        ]
        for ns in spaces:
            for st in (store, mem):
                await call(st, "put", ns, "k", {"v": 1})
        cases: list[dict[str, Any]] = [
            {},
            {"prefix": ("a",)},
            {"prefix": ("a", "b")},
            {"prefix": ("a", "*", "f")},
            {"prefix": ("*", "b")},
            {"suffix": ("f",)},
            {"suffix": ("*", "settings")},
            {"prefix": ("users",), "suffix": ("settings",)},
            {"max_depth": 2},
            {"prefix": ("a",), "max_depth": 3},
            {"limit": 3, "offset": 2},
            {"prefix": ("a",), "limit": 2, "offset": 1, "max_depth": 2},
            {"prefix": ("nope",)},
        ]
        for case in cases:
            assert await call(store, "list_namespaces", **case) == await call(
                mem, "list_namespaces", **case
            ), case


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_emptied_namespace_disappears(flavour: str, any_url: str, prefix: str) -> None:
    async with open_store(flavour, any_url, prefix=prefix) as store:
        mem = InMemoryStore()
        for st in (store, mem):
            await call(st, "put", ("keep",), "k", {"v": 1})
            await call(st, "put", ("gone", "x"), "k1", {"v": 1})
            await call(st, "put", ("gone", "x"), "k2", {"v": 1})
            await call(st, "delete", ("gone", "x"), "k1")
        assert await call(store, "list_namespaces") == [("gone", "x"), ("keep",)]
        for st in (store, mem):
            await call(st, "delete", ("gone", "x"), "k2")
        assert await call(store, "list_namespaces") == [("keep",)]
        # InMemoryStore keeps listing a namespace whose last item was deleted.
        assert await call(mem, "list_namespaces") == [("gone", "x"), ("keep",)]
        # the registry itself forgot it (no lazy leftovers)
        raw = client_from_url(any_url)
        assert raw.zrange(f"{prefix}:ns", 0, -1) == [b"keep"]
        raw.close()


# -- TTL -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_ttl_expiry_hides_items_everywhere(flavour: str, any_url: str, prefix: str) -> None:
    async with open_store(flavour, any_url, prefix=prefix) as store:
        await call(store, "put", ("t", "short"), "k", {"v": 1}, ttl=0.5 / 60)  # 0.5 s
        await call(store, "put", ("t", "long"), "k", {"v": 2})
        assert await call(store, "list_namespaces") == [("t", "long"), ("t", "short")]
        assert len(await call(store, "search", ("t",))) == 2
        await asyncio.sleep(0.7)
        assert await call(store, "get", ("t", "short"), "k") is None
        assert [i.value for i in await call(store, "search", ("t",))] == [{"v": 2}]
        assert await call(store, "list_namespaces") == [("t", "long")]
        raw = client_from_url(any_url)
        assert raw.zrange(f"{prefix}:ns", 0, -1) == [b"t,long"]
        raw.close()


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_ttl_default_and_refresh(flavour: str, valkey_url: str, prefix: str) -> None:
    ttl = {"default_ttl": 1.0 / 60, "refresh_on_read": True}  # 1 s
    raw = client_from_url(valkey_url)
    item_key = f"{prefix}:i:{{n}}:k"
    async with open_store(flavour, valkey_url, prefix=prefix, ttl=ttl) as store:
        assert store.supports_ttl
        await call(store, "put", ("n",), "k", {"v": 1})
        assert 0 < raw.pttl(item_key) <= 1000
        await asyncio.sleep(0.6)
        await call(store, "get", ("n",), "k", refresh_ttl=False)
        assert raw.pttl(item_key) < 500
        await call(store, "get", ("n",), "k")  # refresh_on_read
        assert raw.pttl(item_key) > 800
        await asyncio.sleep(0.6)
        await call(store, "search", ("n",))  # search refreshes what it returns
        assert raw.pttl(item_key) > 800
        await call(store, "put", ("n",), "k", {"v": 2}, ttl=None)  # explicit: no expiry
        assert raw.pttl(item_key) == -1
    raw.close()


# -- key safety, async loop guard -------------------------------------------------------------


def test_keys_stay_under_prefix_and_use_namespace_tags(any_url: str, prefix: str) -> None:
    client = client_from_url(any_url)
    store = ValkeyStore(client, prefix=prefix)
    for label in ODD:
        store.put(("p", label), "*", {"v": 1})
    other = client_from_url(any_url)
    keys = [k.decode() for k in scan_keys(other, "*") if k.decode().startswith(prefix)]
    assert keys and all(k.startswith(prefix + ":") for k in keys)
    for k in keys:
        if k != f"{prefix}:ns":
            assert k.count("{") == 1 and k.count("}") == 1, k
    store.delete(("p", "*"), "*")
    assert store.get(("p", "{tag}"), "*") is not None
    client.close()
    other.close()


async def test_async_store_refuses_sync_calls_on_its_loop(valkey_url: str, prefix: str) -> None:
    async with open_store("async", valkey_url, prefix=prefix) as store:
        with pytest.raises(asyncio.InvalidStateError):
            store.get(("a",), "k")
        # from another thread it works, on the store's loop
        await store.aput(("a",), "k", {"v": 1})
        got = await asyncio.to_thread(store.get, ("a",), "k")
        assert got.value == {"v": 1}


async def test_async_concurrent_calls_are_batched(valkey_url: str, prefix: str) -> None:
    async with open_store("async", valkey_url, prefix=prefix) as store:
        await store.aput(("c",), "warm", {"v": 0})
        await store.aget(("c",), "warm")
        await asyncio.gather(*(store.aput(("c",), f"k{i}", {"i": i}) for i in range(20)))
        with count_commands() as log:
            got = await asyncio.gather(*(store.aget(("c",), f"k{i}") for i in range(20)))
        assert [g.value["i"] for g in got] == list(range(20))
        assert log.round_trips == 1


def test_unregister_puts_back_a_namespace_revived_meanwhile(any_url: str, prefix: str) -> None:
    """The emptiness protocol (ZREM from the registry, re-check, re-add) never loses a
    namespace that a concurrent put filled between the check and the removal."""
    client = client_from_url(any_url)
    store = ValkeyStore(client, prefix=prefix)
    store.put(("race", "x"), "k", {"v": 1})
    # as if a lister had seen ("race", "x") empty just before this put landed
    store._run(store._plan_unregister([store.keys.ns(("race", "x"))]), "test")
    assert store.list_namespaces() == [("race", "x")]
    assert [i.key for i in store.search(("race",))] == ["k"]
    client.close()


def test_decoding_client_is_refused(valkey_url: str) -> None:
    client = client_from_url(valkey_url, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        ValkeyStore(client)
    client.close()
