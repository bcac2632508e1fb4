"""ValkeyByteStore (LangChain ByteStore suites, standalone and cluster), CacheBackedEmbeddings
and CachedEmbeddings embedding each text once across processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from langchain_tests.integration_tests.base_store import BaseStoreAsyncTests, BaseStoreSyncTests

from langgraph_valkey_cache import ValkeyByteStore
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache.embeddings import CachedEmbeddings
from langgraph_valkey_cache.testing import HashingEmbeddings, count_commands


class TestByteStoreSync(BaseStoreSyncTests[bytes]):
    @pytest.fixture
    def kv_store(self, sync_client: Any, prefix: str) -> ValkeyByteStore:
        return ValkeyByteStore(sync_client, prefix=prefix, metrics=False)

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:
        return b"foo", b"\x00bar", b"baz" * 100


class TestByteStoreAsync(BaseStoreAsyncTests[bytes]):
    @pytest.fixture
    async def kv_store(self, async_client: Any, prefix: str) -> ValkeyByteStore:
        return ValkeyByteStore(async_client, prefix=prefix, metrics=False)

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:
        return b"foo", b"\x00bar", b"baz" * 100


def test_yield_keys_is_glob_safe(sync_client: Any, prefix: str) -> None:
    star = ValkeyByteStore(sync_client, prefix=prefix + "*", metrics=False)
    other = ValkeyByteStore(sync_client, prefix=prefix + "x", metrics=False)
    star.mset([("a*", b"1"), ("a[b]", b"2"), ("ab", b"3")])
    other.mset([("a*", b"9")])
    assert sorted(star.yield_keys()) == ["a*", "a[b]", "ab"]
    assert sorted(star.yield_keys(prefix="a*")) == ["a*"]
    assert sorted(star.yield_keys(prefix="a[")) == ["a[b]"]
    assert list(other.yield_keys()) == ["a*"]


def test_ttl_and_one_round_trip(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    store = ValkeyByteStore(client, prefix=prefix, ttl=30, metrics=False)
    client.ping()
    with count_commands() as log:
        store.mset([("a", b"1"), ("b", b"2")])
        assert store.mget(["a", "b", "c"]) == [b"1", b"2", None]
    assert log.round_trips == 2
    assert 0 < client.pttl(f"{prefix}:b:a") <= 30_000
    client.close()


def test_fail_open_mget(dead_url: str, prefix: str) -> None:
    client = client_from_url(dead_url, timeout=0.2)
    store = ValkeyByteStore(client, prefix=prefix, metrics=False)
    assert store.mget(["a"]) == [None]
    store.mset([("a", b"1")])  # no raise
    strict = ValkeyByteStore(client, prefix=prefix, metrics=False, fail_open=False)
    with pytest.raises(Exception, match="(?i)connect"):
        strict.mget(["a"])
    with pytest.raises(Exception, match="(?i)connect"):  # no breaker when failing closed
        strict.mget(["a"])
    client.close()


async def test_fail_open_skips_a_dead_server_while_it_is_down(
    dead_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import time

    client = client_from_url(dead_url, timeout=0.2)
    aclient = client_from_url(dead_url, timeout=0.2, asyncio=True)
    store = ValkeyByteStore(client, async_client=aclient, prefix=prefix, metrics=False)
    caplog.set_level(logging.WARNING, "langgraph_valkey_cache")
    assert store.mget(["a"]) == [None]  # fails: warning, breaker open
    with count_commands() as log:  # the breaker is open: nothing is sent
        for _ in range(10):
            assert store.mget(["a", "b"]) == [None, None]
            assert await store.amget(["a"]) == [None]
            store.mset([("a", b"1")])
            await store.amset([("a", b"1")])
    assert log.round_trips == 0 and log.handshakes == 0
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    with pytest.raises(TypeError):  # bad input still raises while skipping
        store.mset([("a", "not bytes")])  # type: ignore[list-item]
    time.sleep(0.3)
    assert await store.amget(["a"]) == [None]  # probed again after the first cooldown
    assert store.breaker._cooldown == 0.25  # ...refused at once: probed again as soon
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # per outage
    client.close()
    await aclient.aclose()


_CHILD = textwrap.dedent(
    """
    import json, sys
    from langgraph_valkey_cache import ValkeyByteStore
    from langgraph_valkey_cache._client import client_from_url
    from langgraph_valkey_cache.embeddings import CachedEmbeddings
    from langgraph_valkey_cache.testing import HashingEmbeddings

    url, prefix, mode = sys.argv[1:4]
    client = client_from_url(url)
    base = HashingEmbeddings(32)
    store = ValkeyByteStore(client, prefix=prefix, metrics=False)
    if mode == "classic":
        from langchain_classic.embeddings import CacheBackedEmbeddings
        emb = CacheBackedEmbeddings.from_bytes_store(
            base, store, namespace="hashing-32", key_encoder="blake2b"
        )
    else:
        emb = CachedEmbeddings(base, store, namespace="hashing-32")
    vecs = emb.embed_documents(["alpha", "beta", "alpha", "gamma"])
    print(json.dumps({"embedded": base.texts_embedded, "vecs": vecs}))
    """
)


@pytest.mark.parametrize("mode", ["classic", "native"])
def test_embedded_once_across_processes(any_url: str, prefix: str, mode: str) -> None:
    results = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, any_url, prefix, mode],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        results.append(json.loads(out.stdout))
    # first process: 3 distinct texts embedded; second: none
    assert results[0]["embedded"] in (3, 4)  # classic embeds a batch's duplicates too
    assert results[1]["embedded"] == 0
    first = results[0]["vecs"]
    second = results[1]["vecs"]
    assert len(first) == len(second) == 4
    for a, b in zip(first, second, strict=True):
        assert a == pytest.approx(b, abs=1e-6)


async def test_cached_embeddings_async_queries(async_client: Any, prefix: str) -> None:
    base = HashingEmbeddings(16)
    emb = CachedEmbeddings(base, ValkeyByteStore(async_client, prefix=prefix, metrics=False))
    v1 = await emb.aembed_query("hello world")
    v2 = await emb.aembed_query("hello world")
    assert base.texts_embedded == 1
    assert v1 == pytest.approx(v2)
    assert v1 == pytest.approx(base.embed_query("hello world"), abs=1e-6)
    docs = await emb.aembed_documents(["a", "b"])
    docs2 = await emb.aembed_documents(["b", "a"])
    assert docs2 == [docs[1], docs[0]]


def test_default_namespace_separates_model_settings(sync_client: Any, prefix: str) -> None:
    store = ValkeyByteStore(sync_client, prefix=prefix, metrics=False)
    a = CachedEmbeddings(HashingEmbeddings(16), store)
    b = CachedEmbeddings(HashingEmbeddings(24), store)
    assert a.namespace != b.namespace
    assert len(a.embed_query("x")) == 16 and len(b.embed_query("x")) == 24
    c = HashingEmbeddings(16)
    c.embed_query("counters change")  # counters are not part of the identity
    assert CachedEmbeddings(c, store).namespace == a.namespace
