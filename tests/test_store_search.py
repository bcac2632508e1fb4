"""Semantic search of ValkeyStore / AsyncValkeyStore on the FT.* server (and the exact
fallback on a plain server), compared with InMemoryStore: scores, JSON-path fields,
per-item ``index=``, filters pushed down or post-filtered, TTL, setup, and a graph
that writes memories in one thread and recalls them by query in another."""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.tools import ToolRuntime, tool
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_store
from langgraph.graph import START, StateGraph
from langgraph.store.base import PutOp
from langgraph.store.memory import InMemoryStore
from typing_extensions import TypedDict

from langgraph_valkey_cache import AsyncValkeyStore, ValkeyStore
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache.testing import HashingEmbeddings, count_commands
from tests.conftest import FT_SERVERS, ft_server_url
from tests.test_store import FLAVOURS, call, open_store

DIMS = 48
FIELDS = ["text", "arr[*].c", "meta.title"]

WORDS = "alice bob lisbon porto cats dogs coffee tea music chess rain sun ocean bike".split()


def _docs(n: int, seed: int = 1) -> list[tuple[tuple[str, ...], str, dict[str, Any], Any]]:
    import random

    rnd = random.Random(seed)
    out = []
    for i in range(n):
        ns = ("mem", rnd.choice(["alice", "bob"]), *rnd.choice([(), ("x",)]))
        value: dict[str, Any] = {
            "text": " ".join(rnd.sample(WORDS, 3)),
            "kind": rnd.choice(["fact", "pref"]),
            "n": rnd.randint(0, 9),
            "meta": {"lang": rnd.choice(["en", "pt"]), "title": " ".join(rnd.sample(WORDS, 2))},
        }
        if i % 5 == 0:
            value["arr"] = [{"c": " ".join([*rnd.sample(WORDS, 2), f"w{j}"])} for j in range(3)]
        index: Any = None
        if i % 7 == 0:
            index = False
        elif i % 11 == 0:
            index = ["meta.title"]
        out.append((ns, f"k{i}", value, index))
    return out


def _index(emb: HashingEmbeddings) -> dict[str, Any]:
    return {"dims": DIMS, "embed": emb, "fields": FIELDS}


def _scored(items: list[Any]) -> list[tuple[str, float | None]]:
    return [(i.key, None if i.score is None else round(i.score, 4)) for i in items]


def _same_ranking(ours: list[Any], theirs: list[Any]) -> None:
    """Same scores (float32 vs float64) in the same order; the same items except among
    ties at the page edges (either store may keep either one); unscored fill-ins counted."""
    a, b = _scored(ours), _scored(theirs)
    assert [s for _, s in a] == [s for _, s in b], (a, b)
    scores = [s for _, s in a if s is not None]
    assert scores == sorted(scores, reverse=True)
    if scores:  # ties may straddle the offset and the limit: compare strictly inside
        lo, hi = scores[-1], scores[0]
        assert {k for k, s in a if s is not None and lo < s < hi} == {
            k for k, s in b if s is not None and lo < s < hi
        }
    for x, y in zip(ours, theirs, strict=True):
        if x.score is not None and y.score is not None:
            assert x.score == pytest.approx(y.score, abs=1e-5)


QUERIES = ["alice lisbon", "cats and dogs", "coffee in porto", "ocean bike rain"]


async def _fill(store: Any, mem: InMemoryStore, docs: list[Any]) -> None:
    await call(store, "batch", [PutOp(ns, k, v, index=ix) for ns, k, v, ix in docs])
    # one at a time: InMemoryStore.batch fails when two puts of a batch embed the same
    # text ("Number of embeddings ... does not match number of indices")
    for ns, k, v, ix in docs:
        mem.batch([PutOp(ns, k, v, index=ix)])


@asynccontextmanager
async def _loaded(
    flavour: str, url: str, prefix: str, docs: list[Any], *, setup: bool = True, **kwargs: Any
) -> AsyncIterator[tuple[Any, InMemoryStore]]:
    """Our store (``setup()`` first unless ``setup=False``) and an InMemoryStore with the
    same index, both holding ``docs``; ``kwargs`` go to the store."""
    emb = HashingEmbeddings(DIMS)
    async with open_store(flavour, url, prefix=prefix, index=_index(emb), **kwargs) as store:
        if setup:
            await call(store, "setup")
        mem = InMemoryStore(index=_index(emb))  # type: ignore[arg-type]
        await _fill(store, mem, docs)
        yield store, mem


async def _ranks_as_inmemory(store: Any, mem: InMemoryStore) -> None:
    """Every query, under namespace prefixes of each depth, with and without offsets."""
    for query in QUERIES:
        for pre in [("mem",), ("mem", "alice"), ("mem", "bob", "x"), ()]:
            for limit, offset in [(5, 0), (10, 3), (100, 0)]:
                ours = await call(store, "search", pre, query=query, limit=limit, offset=offset)
                theirs = mem.search(pre, query=query, limit=limit, offset=offset)
                _same_ranking(ours, theirs)


@pytest.mark.search
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("algorithm", ["HNSW", "FLAT"])
async def test_vector_search_matches_inmemory(
    flavour: str, algorithm: str, search_url: str, prefix: str
) -> None:
    params = {"M": 16, "EF_CONSTRUCTION": 200, "EF_RUNTIME": 50} if algorithm == "HNSW" else {}
    async with _loaded(
        flavour, search_url, prefix, _docs(80), vector_algorithm=algorithm, vector_params=params
    ) as (store, mem):
        await _ranks_as_inmemory(store, mem)


@pytest.mark.search
@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_filters_pushed_down_and_post_filtered(
    flavour: str, search_url: str, prefix: str
) -> None:
    async with _loaded(
        flavour, search_url, prefix, _docs(120, seed=2), filter_fields=["kind", "n", "meta.lang"]
    ) as (store, mem):
        filters: list[dict[str, Any]] = [
            {"kind": "fact"},
            {"kind": {"$ne": "fact"}, "n": {"$gte": 3}},
            {"n": {"$gt": 2, "$lte": 7}},
            {"meta": {"lang": "pt"}},
            {"meta": {"lang": {"$ne": "pt"}}, "n": 4},
            {"text": {"$ne": "nothing"}, "kind": "pref"},  # text is not pushed down
        ]
        for flt in filters:
            for query in QUERIES[:2]:
                ours = await call(store, "search", ("mem",), query=query, filter=flt, limit=7)
                theirs = mem.search(("mem",), query=query, filter=flt, limit=7)
                _same_ranking(ours, theirs)
        # pushed down: one KNN query is enough even for a rare value
        with count_commands() as log:
            got = await call(store, "search", ("mem",), query="alice", filter={"n": 9}, limit=3)
        assert got and all(i.value["n"] == 9 for i in got)
        # one FT.SEARCH returning whole items (vector docs carry the item's fields)
        assert log.round_trips == 1 and log.commands == ["FT.SEARCH"]


@pytest.mark.search
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("server", [*FT_SERVERS, "search_cluster"])
async def test_post_filter_never_returns_fewer_than_limit(
    flavour: str, server: str, request: pytest.FixtureRequest, prefix: str
) -> None:
    """A sparse filter (not pushed down) on near-duplicate texts: K grows, HNSW runs out
    of reachable candidates (valkey-search leaves up to a third of them unreachable
    here) and the exact pass ranks the candidate set, per primary on a cluster."""
    if server == "search_cluster":
        request.applymarker(pytest.mark.search_cluster)
        request.applymarker(pytest.mark.cluster)
        url = str(request.getfixturevalue("search_cluster_url"))
    else:
        url = ft_server_url(request, server)
    docs = [
        (("sparse",), f"k{i}", {"text": f"alice note {i}", "rare": i % 31 == 0}, None)
        for i in range(250)
    ]
    async with _loaded(flavour, url, prefix, docs, setup=False) as (store, mem):
        ours = await call(
            store, "search", ("sparse",), query="alice", filter={"rare": True}, limit=6
        )
        theirs = mem.search(("sparse",), query="alice", filter={"rare": True}, limit=6)
        assert len(ours) == 6
        _same_ranking(ours, theirs)


@pytest.mark.search
@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_one_round_trip_and_vector_docs_without_item_copy(
    flavour: str, search_url: str, prefix: str
) -> None:
    """A search is one FT.SEARCH returning whole items; vector docs written before they
    carried the item (no ``it`` field) are still found, with one fetch of the items."""
    async with _loaded(flavour, search_url, prefix, _docs(40, seed=3)) as (store, mem):
        want = mem.search(("mem",), query="alice lisbon", limit=5)
        with count_commands() as log:
            got = await call(store, "search", ("mem",), query="alice lisbon", limit=5)
        assert log.round_trips == 1 and log.commands == ["FT.SEARCH"]
        _same_ranking(got, want)
        raw = client_from_url(search_url)
        for key in raw.scan_iter(match=f"{prefix}:v-*"):
            raw.hdel(key, "it")
        with count_commands() as log:
            old = await call(store, "search", ("mem",), query="alice lisbon", limit=5)
        # the KNN, then the items fetched by the store's read script
        assert log.commands.count("FT.SEARCH") == 1 and "EVALSHA" in log.commands
        _same_ranking(old, want)
        for hit in [*got, *old]:  # whole items, as stored
            stored = mem.get(tuple(hit.namespace), hit.key)
            assert stored is not None and hit.value == stored.value
        raw.close()


@pytest.mark.search
@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_vectors_follow_item_lifecycle(flavour: str, search_url: str, prefix: str) -> None:
    emb = HashingEmbeddings(DIMS)
    async with open_store(flavour, search_url, prefix=prefix, index=_index(emb)) as store:
        raw = client_from_url(search_url)
        ns = ("life", "{odd:label}")
        await call(store, "put", ns, "a", {"arr": [{"c": "x"}, {"c": "y"}, {"c": "lisbon"}]})
        assert len(list(raw.scan_iter(match=f"{prefix}:v-*"))) == 3
        await call(store, "put", ns, "a", {"text": "lisbon"})  # one vector now
        assert len(list(raw.scan_iter(match=f"{prefix}:v-*"))) == 1
        hits = await call(store, "search", ns, query="lisbon")
        assert [h.key for h in hits] == ["a"] and hits[0].score == pytest.approx(1.0, abs=1e-5)
        await call(store, "put", ns, "a", {"text": "lisbon"}, index=False)
        assert list(raw.scan_iter(match=f"{prefix}:v-*")) == []
        assert [h.score for h in await call(store, "search", ns, query="lisbon")] == [None]
        await call(store, "delete", ns, "a")
        assert await call(store, "search", ns, query="lisbon") == []
        await call(store, "put", ns, "t", {"text": "lisbon"}, ttl=0.4 / 60)
        assert len(await call(store, "search", ns, query="lisbon")) == 1
        import asyncio

        await asyncio.sleep(0.6)
        assert await call(store, "search", ns, query="lisbon") == []
        assert await call(store, "list_namespaces") == []
        raw.close()


@pytest.mark.search
@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_bad_input_writes_nothing(flavour: str, search_url: str, prefix: str) -> None:
    def wrong_dims(texts: list[str]) -> list[list[float]]:
        return [[0.1] * (DIMS - 1) for _ in texts]

    async def awrong_dims(texts: list[str]) -> list[list[float]]:
        return wrong_dims(texts)

    embed = wrong_dims if flavour == "sync" else awrong_dims
    async with open_store(
        flavour, search_url, prefix=prefix, index={"dims": DIMS, "embed": embed}
    ) as store:
        with pytest.raises(ValueError, match="dimensions"):
            await call(store, "put", ("a",), "k", {"text": "hello"})
        assert await call(store, "get", ("a",), "k") is None
        assert await call(store, "list_namespaces") == []


def _server_url(request: pytest.FixtureRequest, server: str) -> str:
    """An FT server (one of FT_SERVERS, marked ``search``) or the plain one."""
    if server == "plain":
        return str(request.getfixturevalue("valkey_url"))
    request.applymarker(pytest.mark.search)
    return ft_server_url(request, server)


class _PoisonedEmbeddings(HashingEmbeddings):
    """HashingEmbeddings, except that texts containing a poison word embed badly."""

    BAD: dict[str, Any] = {
        "nanword": lambda v: [float("nan"), *v[1:]],
        "infword": lambda v: [*v[:-1], float("-inf")],
        "hugeword": lambda v: [1e39, *v[1:]],  # finite in float64, not in FLOAT32
        "shortword": lambda v: v[:-1],
        "zeroword": lambda v: [0.0] * len(v),
    }

    def _vector(self, text: str) -> list[float]:
        v = super()._vector(text)
        for word, spoil in self.BAD.items():
            if word in text:
                return list(spoil(v))
        return v


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("server", [*FT_SERVERS, "plain"])
@pytest.mark.parametrize(
    ("word", "error"),
    [
        ("nanword", "value 0 is nan"),
        ("infword", f"value {DIMS - 1} is -inf"),
        ("hugeword", "value 0 is 1e[+]39"),
        ("shortword", f"has {DIMS - 1} dimensions, the index expects {DIMS}"),
    ],
)
async def test_bad_vectors_refused_naming_item_and_field_before_any_write(
    flavour: str, server: str, word: str, error: str, request: pytest.FixtureRequest, prefix: str
) -> None:
    url = _server_url(request, server)
    emb = _PoisonedEmbeddings(DIMS)
    index = {"dims": DIMS, "embed": emb, "fields": ["title", "body"]}
    async with open_store(flavour, url, prefix=prefix, index=index) as store:
        await call(store, "setup")
        await call(store, "put", ("ok",), "before", {"title": "alice", "body": "lisbon"})
        raw = client_from_url(url)
        keys_before = sorted(raw.scan_iter(match=f"{prefix}:*"))
        batch = [
            PutOp(("ok",), "fine", {"title": "bob", "body": "porto"}),
            PutOp(("user", "a:b"), "k/1", {"title": "bob", "body": f"porto {word}"}),
        ]
        with pytest.raises(ValueError, match=error) as info:
            await call(store, "batch", batch)
        # names the item (namespace and key) and the field
        assert "('user', 'a:b')/'k/1'" in str(info.value) and "'body'" in str(info.value)
        assert sorted(raw.scan_iter(match=f"{prefix}:*")) == keys_before  # nothing written
        assert await call(store, "get", ("ok",), "fine") is None
        # the query is checked too, before anything is sent
        with count_commands() as log:
            with pytest.raises(ValueError, match=r"embedding of query 'alice .*word'"):
                await call(store, "search", ("ok",), query=f"alice {word}")
        assert log.round_trips == 0
        raw.close()


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("server", [*FT_SERVERS, "plain"])
async def test_zero_vectors_unscored_alike_and_scores_finite(
    flavour: str, server: str, request: pytest.FixtureRequest, prefix: str
) -> None:
    """A zero vector has no cosine: RediSearch skips such a doc and valkey-search would
    score it 0 against everything, so it is not written and the item comes back
    unscored on every server; a zero query vector is refused."""
    url = _server_url(request, server)
    emb = _PoisonedEmbeddings(DIMS)
    async with open_store(flavour, url, prefix=prefix, index=_index(emb)) as store:
        await call(store, "setup")
        await call(store, "put", ("z",), "zero", {"text": "zeroword"})
        await call(store, "put", ("z",), "half", {"text": "alice", "meta": {"title": "zeroword"}})
        await call(store, "put", ("z",), "far", {"text": "ocean bike"})
        hits = await call(store, "search", ("z",), query="alice", limit=10)
        assert [(h.key, h.score is None) for h in hits] == [
            ("half", False),
            ("far", False),
            ("zero", True),
        ]
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert all(math.isfinite(h.score) for h in hits if h.score is not None)
        with pytest.raises(ValueError, match="all zeros"):
            await call(store, "search", ("z",), query="zeroword")


@pytest.mark.search
def test_setup_idempotent_and_new_index_on_config_change(search_url: str, prefix: str) -> None:
    client = client_from_url(search_url)
    emb = HashingEmbeddings(DIMS)
    a = ValkeyStore(client, prefix=prefix, index=_index(emb))  # type: ignore[arg-type]
    a.setup()
    a.setup()
    b = ValkeyStore(client, prefix=prefix, index={"dims": DIMS, "embed": emb}, filter_fields=["k"])
    b.setup()
    c = ValkeyStore(client, prefix=prefix, index={"dims": 24, "embed": HashingEmbeddings(24)})
    c.setup()
    names = {n.decode() if isinstance(n, bytes) else n for n in client.execute_command("FT._LIST")}
    assert {a.index_name, b.index_name, c.index_name} <= names
    assert len({a.index_name, b.index_name, c.index_name}) == 3
    assert (
        b.index_name
        == ValkeyStore(
            client, prefix=prefix, index={"dims": DIMS, "embed": emb}, filter_fields=["k"]
        ).index_name
    )
    a.put(("s",), "k", {"text": "lisbon"})
    assert a.search(("s",), query="lisbon")[0].key == "k"
    client.close()


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_fallback_without_search_module(
    flavour: str, valkey_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with _loaded(flavour, valkey_url, prefix, _docs(60, seed=3)) as (store, mem):
        with caplog.at_level(logging.WARNING, logger="langgraph_valkey_cache.store"):
            for query in QUERIES:
                for flt in [None, {"kind": "fact"}]:
                    ours = await call(store, "search", ("mem",), query=query, filter=flt, limit=8)
                    _same_ranking(ours, mem.search(("mem",), query=query, filter=flt, limit=8))
        warnings = [r for r in caplog.records if "no search module" in r.getMessage()]
        assert len(warnings) == 1


@pytest.mark.search
async def test_embedding_cache_embeds_each_text_once(search_url: str, prefix: str) -> None:
    emb = HashingEmbeddings(DIMS)
    async with open_store(
        "async", search_url, prefix=prefix, index=_index(emb), embedding_cache=True
    ) as store:
        await store.aput(("e",), "k", {"text": "alice lisbon"})
        await store.asearch(("e",), query="where is alice")
        calls = emb.calls
        await store.asearch(("e",), query="where is alice")
        await store.aput(("e",), "k2", {"text": "alice lisbon"})
        assert emb.calls == calls


# -- graphs: write memories in one thread, recall them by query in another -----------------


class State(TypedDict, total=False):
    user: str
    text: str
    recalled: list[str]


def _graph(is_async: bool) -> Any:
    def remember(state: State) -> State:
        if state.get("text"):
            get_store().put(("memories", state["user"]), uuid.uuid4().hex, {"text": state["text"]})
        return {}

    def recall(state: State) -> State:
        hits = get_store().search(("memories", state["user"]), query="where does the user live")
        return {"recalled": [h.value["text"] for h in hits[:1]]}

    async def aremember(state: State) -> State:
        if state.get("text"):
            await get_store().aput(
                ("memories", state["user"]), uuid.uuid4().hex, {"text": state["text"]}
            )
        return {}

    async def arecall(state: State) -> State:
        hits = await get_store().asearch(
            ("memories", state["user"]), query="where does the user live"
        )
        return {"recalled": [h.value["text"] for h in hits[:1]]}

    builder = StateGraph(State)
    builder.add_node("remember", aremember if is_async else remember)
    builder.add_node("recall", arecall if is_async else recall)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    return builder


@pytest.mark.search
def test_graph_memory_across_threads_sync(search_url: str, prefix: str) -> None:
    emb = HashingEmbeddings(DIMS)
    with ValkeyStore.from_conn_string(
        search_url, prefix=prefix, index={"dims": DIMS, "embed": emb}
    ) as store:
        store.setup()
        graph = _graph(False).compile(checkpointer=InMemorySaver(), store=store)
        for text in ["the user lives in Lisbon", "the user likes chess", "bob lives in Porto"]:
            user = "bob" if text.startswith("bob") else "alice"
            graph.invoke({"user": user, "text": text}, {"configurable": {"thread_id": "t1"}})
        out = graph.invoke({"user": "alice"}, {"configurable": {"thread_id": "t2"}})
        assert out["recalled"] == ["the user lives in Lisbon"]


@pytest.mark.search
async def test_graph_memory_across_threads_async(search_url: str, prefix: str) -> None:
    emb = HashingEmbeddings(DIMS)
    async with AsyncValkeyStore.from_conn_string(
        search_url, prefix=prefix, index={"dims": DIMS, "embed": emb}
    ) as store:
        await store.asetup()
        graph = _graph(True).compile(checkpointer=InMemorySaver(), store=store)
        for text in ["the user lives in Lisbon", "the user likes chess", "bob lives in Porto"]:
            user = "bob" if text.startswith("bob") else "alice"
            await graph.ainvoke({"user": user, "text": text}, {"configurable": {"thread_id": "t1"}})
        out = await graph.ainvoke({"user": "alice"}, {"configurable": {"thread_id": "t2"}})
        assert out["recalled"] == ["the user lives in Lisbon"]


@pytest.mark.parametrize("server", [*FT_SERVERS, "plain"])
def test_another_embedding_model_never_compares_old_vectors(
    server: str, request: pytest.FixtureRequest, prefix: str
) -> None:
    if server == "plain":
        url = str(request.getfixturevalue("valkey_url"))
    else:
        request.applymarker(pytest.mark.search)
        url = ft_server_url(request, server)
    client = client_from_url(url)
    old_model = HashingEmbeddings(DIMS)
    other = HashingEmbeddings(DIMS, seed=7)

    def new_model(texts: list[str]) -> list[list[float]]:  # same dims, other vectors
        return other.embed_documents(texts)

    a = ValkeyStore(
        client, prefix=prefix, index={"dims": DIMS, "embed": old_model, "fields": ["text"]}
    )
    a.setup()
    a.put(("m",), "k1", {"text": "alice lisbon"})
    a.put(("m",), "k2", {"text": "bob porto"})
    b = ValkeyStore(
        client, prefix=prefix, index={"dims": DIMS, "embed": new_model, "fields": ["text"]}
    )
    b.setup()
    assert a.index_name != b.index_name and a.keys.space != b.keys.space
    # b sees the items, unscored, until they are written again under its model
    assert [h.score for h in b.search(("m",), query="alice lisbon")] == [None, None]
    b.put(("m",), "k1", {"text": "alice lisbon"})
    hits = b.search(("m",), query="alice lisbon")
    assert hits[0].key == "k1" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[1].key == "k2" and hits[1].score is None
    assert len(list(client.scan_iter(match=f"{prefix}:v-{a.keys.space}:*"))) == 1  # k2 only
    client.close()


@pytest.mark.cluster
@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_fallback_on_cluster_matches_inmemory(
    flavour: str, cluster_url: str, prefix: str
) -> None:
    # setup: FT.* answered "unknown command" by the cluster
    async with _loaded(flavour, cluster_url, prefix, _docs(40, seed=4)) as (store, mem):
        for query in QUERIES:
            ours = await call(store, "search", ("mem",), query=query, limit=6)
            _same_ranking(ours, mem.search(("mem",), query=query, limit=6))


# -- create_agent: tools that read runtime.store -------------------------------------------


def _agent(store: Any, is_async: bool) -> Any:
    class ToolModel(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

    save = {"name": "remember", "args": {"text": "I live in Lisbon"}, "id": "a"}
    ask = {"name": "recall", "args": {"query": "where do I live"}, "id": "b"}
    script = [
        AIMessage("", tool_calls=[save]),
        AIMessage("saved"),
        AIMessage("", tool_calls=[ask]),
        AIMessage("you live in Lisbon"),
    ]

    if is_async:

        @tool
        async def remember(text: str, runtime: ToolRuntime) -> str:
            """Save a memory."""
            await runtime.store.aput(("memories", "alice"), uuid.uuid4().hex, {"text": text})
            return "ok"

        @tool
        async def recall(query: str, runtime: ToolRuntime) -> str:
            """Recall a memory."""
            hits = await runtime.store.asearch(("memories", "alice"), query=query, limit=1)
            return hits[0].value["text"]

    else:

        @tool
        def remember(text: str, runtime: ToolRuntime) -> str:
            """Save a memory."""
            runtime.store.put(("memories", "alice"), uuid.uuid4().hex, {"text": text})
            return "ok"

        @tool
        def recall(query: str, runtime: ToolRuntime) -> str:
            """Recall a memory."""
            hits = runtime.store.search(("memories", "alice"), query=query, limit=1)
            return hits[0].value["text"]

    model = ToolModel(messages=iter(script))
    return create_agent(model, [remember, recall], store=store, checkpointer=InMemorySaver())


@pytest.mark.search
def test_create_agent_tools_use_runtime_store_sync(search_url: str, prefix: str) -> None:
    emb = HashingEmbeddings(DIMS)
    index = {"dims": DIMS, "embed": emb, "fields": ["text"]}
    with ValkeyStore.from_conn_string(search_url, prefix=prefix, index=index) as store:
        store.setup()
        store.put(("memories", "alice"), "old", {"text": "I like chess"})
        agent = _agent(store, False)
        agent.invoke({"messages": [("user", "remember")]}, {"configurable": {"thread_id": "1"}})
        out = agent.invoke({"messages": [("user", "recall")]}, {"configurable": {"thread_id": "2"}})
        tool_msgs = [m for m in out["messages"] if m.type == "tool"]
        assert tool_msgs[-1].content == "I live in Lisbon"


@pytest.mark.search
async def test_create_agent_tools_use_runtime_store_async(search_url: str, prefix: str) -> None:
    emb = HashingEmbeddings(DIMS)
    index = {"dims": DIMS, "embed": emb, "fields": ["text"]}
    async with AsyncValkeyStore.from_conn_string(search_url, prefix=prefix, index=index) as store:
        await store.asetup()
        await store.aput(("memories", "alice"), "old", {"text": "I like chess"})
        agent = _agent(store, True)
        cfg1, cfg2 = {"configurable": {"thread_id": "1"}}, {"configurable": {"thread_id": "2"}}
        await agent.ainvoke({"messages": [("user", "remember")]}, cfg1)
        out = await agent.ainvoke({"messages": [("user", "recall")]}, cfg2)
        tool_msgs = [m for m in out["messages"] if m.type == "tool"]
        assert tool_msgs[-1].content == "I live in Lisbon"


@pytest.mark.search
@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_vector_search_refreshes_ttl_of_what_it_returns(
    flavour: str, search_url: str, prefix: str
) -> None:
    import asyncio

    emb = HashingEmbeddings(DIMS)
    ttl = {"default_ttl": 1.0 / 60, "refresh_on_read": True}
    raw = client_from_url(search_url)
    async with open_store(flavour, search_url, prefix=prefix, index=_index(emb), ttl=ttl) as s:
        await call(s, "put", ("r",), "hit", {"text": "alice lisbon"})
        await call(s, "put", ("r",), "miss", {"text": "bob porto chess"})
        await asyncio.sleep(0.5)
        got = await call(s, "search", ("r",), query="alice lisbon", limit=1)
        assert [g.key for g in got] == ["hit"]
        item_hit, item_miss = f"{prefix}:i:{{r}}:hit", f"{prefix}:i:{{r}}:miss"
        vec_hit = f"{prefix}:v-{s.keys.space}:{{r}}:hit:0"
        assert raw.pttl(item_hit) > 800 and raw.pttl(vec_hit) > 800
        assert raw.pttl(item_miss) < 600
        await call(s, "search", ("r",), query="alice lisbon", limit=1, refresh_ttl=False)
        await asyncio.sleep(0.6)
        assert [g.key for g in await call(s, "search", ("r",), query="porto chess")] == ["hit"]
    raw.close()


# -- search quality on the real module ------------------------------------------------

RECALL_N, RECALL_DIMS, RECALL_QUERIES = 10_000, 384, 40


class _Table(Embeddings):
    """Precomputed vectors by text, so recall depends on the index alone."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.vectors[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.vectors[text]


def _recall_ns(i: int) -> tuple[str, ...]:
    return ("mem", "b") if i % 5 == 0 else ("mem", "a")  # 8k and 2k items


@pytest.fixture(scope="module")
def recall_store(search_url: str) -> Any:
    """10k x 384 seeded vectors (64 gaussian clusters plus noise; queries are perturbed
    documents) bulk-loaded through ``ValkeyStore.batch`` (pipelines of 500 puts), with
    the exact top 10 of each query per namespace."""
    import numpy as np

    rng = np.random.default_rng(7)
    centres = rng.normal(size=(64, RECALL_DIMS))
    docs = centres[rng.integers(0, 64, RECALL_N)] + 2.0 * rng.normal(size=(RECALL_N, RECALL_DIMS))
    picks = rng.integers(0, RECALL_N, RECALL_QUERIES)
    queries = docs[picks] + 1.4 * rng.normal(size=(RECALL_QUERIES, RECALL_DIMS))
    docs, queries = docs.astype(np.float32), queries.astype(np.float32)
    table = {f"d{i}": docs[i].tolist() for i in range(RECALL_N)}
    table.update({f"q{j}": queries[j].tolist() for j in range(RECALL_QUERIES)})
    unit = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    truth: dict[tuple[str, ...], list[set[str]]] = {}
    for ns in [("mem", "a"), ("mem", "b")]:
        inside = np.array([_recall_ns(i) == ns for i in range(RECALL_N)])
        masked = np.where(inside, sims, -np.inf)
        truth[ns] = [{f"k{i}" for i in np.argsort(-row)[:10]} for row in masked]
    truth[("mem",)] = [{f"k{i}" for i in np.argsort(-row)[:10]} for row in sims]
    client = client_from_url(search_url)
    prefix = f"recall{uuid.uuid4().hex[:8]}"
    index = {"dims": RECALL_DIMS, "embed": _Table(table), "fields": ["text"]}
    store = ValkeyStore(client, prefix=prefix, index=index, metrics=False)  # type: ignore[arg-type]
    store.setup()
    for start in range(0, RECALL_N, 500):
        end = min(RECALL_N, start + 500)
        store.batch([PutOp(_recall_ns(i), f"k{i}", {"text": f"d{i}"}) for i in range(start, end)])
    yield store, truth, index
    client.close()


def _recall(store: Any, ns: tuple[str, ...], truth: list[set[str]]) -> float:
    found = 0
    for j, want in enumerate(truth):
        hits = store.search(ns, query=f"q{j}", limit=10)
        assert len(hits) == 10 and all(math.isfinite(h.score) for h in hits)
        found += len({h.key for h in hits} & want)
    return found / (10 * len(truth))


@pytest.mark.search
@pytest.mark.parametrize("ns", [("mem", "a"), ("mem", "b"), ("mem",)])
def test_recall_at_10_with_defaults(recall_store: Any, ns: tuple[str, ...]) -> None:
    """valkey-search's HNSW answers with EF_RUNTIME 10 unless told otherwise (recall
    about two thirds); the store's default (hnsw_ef_runtime) must reach 0.95 with a
    namespace filter. RediSearch is exact: 1.0 there."""
    store, truth, _ = recall_store
    assert _recall(store, ns, truth[ns]) >= 0.95


@pytest.mark.search
def test_recall_test_data_tells_ef_runtime_apart(recall_store: Any, search_server: str) -> None:
    """The data is hard enough that the server's own default (EF_RUNTIME 10) fails the
    bar on valkey-search, so the test above checks the store's EF_RUNTIME, and an
    override reaches the server (EF_RUNTIME is a query knob: same index, no rebuild)."""
    store, truth, index = recall_store
    low = ValkeyStore(
        store.client,
        prefix=store.keys.prefix,
        index=index,
        vector_params={"EF_RUNTIME": 10},
        metrics=False,
    )
    assert low.index_name == store.index_name
    recall = _recall(low, ("mem",), truth[("mem",)])
    if search_server == "redisearch":
        assert recall == 1.0  # exact filtered KNN whatever EF_RUNTIME says
    else:
        assert recall < 0.95
