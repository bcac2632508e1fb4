"""Spans say what happened (issue 13): every cache tier's lookups carry
``langgraph_valkey_cache.outcome`` = hit / miss, a lookup that failed open is an
``error`` span with ERROR status, one skipped while the breaker is open a ``bypass``;
and no span holds a key, prompt, argument or thread id. OpenTelemetry SDK's in-memory
exporter, real servers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.outputs import Generation
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

import langgraph_valkey_cache._telemetry as tel
from langgraph_valkey_cache import (
    ToolCache,
    ValkeyCache,
    ValkeyNodeCache,
    ValkeySemanticCache,
    cached,
)
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache.cache.middleware import ModelCacheMiddleware
from langgraph_valkey_cache.embeddings import CachedEmbeddings, ValkeyByteStore
from langgraph_valkey_cache.testing import HashingEmbeddings
from tests.test_savings import priced_model

OUTCOME = "langgraph_valkey_cache.outcome"
SECRET = "secret-prompt-4711"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    original = tel._tracer
    tel._tracer = provider.get_tracer("langgraph_valkey_cache")  # type: ignore[assignment]
    try:
        yield exporter
    finally:
        tel._tracer = original


def _outcomes(exporter: InMemorySpanExporter) -> dict[str, list[str]]:
    """Outcome per span name of the spans finished so far (then forgets them)."""
    out: dict[str, list[str]] = {}
    finished = exporter.get_finished_spans()
    for s in finished:
        if s.attributes and OUTCOME in s.attributes:
            out.setdefault(s.name, []).append(str(s.attributes[OUTCOME]))
    assert all(s.status.status_code is not StatusCode.ERROR for s in finished)
    _no_secrets(finished)
    exporter.clear()
    return out


def _no_secrets(all_spans: tuple[ReadableSpan, ...]) -> None:
    for s in all_spans:
        text = repr(dict(s.attributes or {})) + s.name + repr(s.status.description)
        assert SECRET not in text, s.name


def test_every_tier_reports_hits_and_misses(
    spans: InMemorySpanExporter, valkey_url: str, search_url: str, prefix: str
) -> None:
    client = client_from_url(valkey_url)
    llm = ValkeyCache(client, prefix=f"{prefix}llm", metrics=False)
    llm.lookup(SECRET, "m")
    llm.update(SECRET, "m", [Generation(text="a")])
    llm.lookup(SECRET, "m")
    assert _outcomes(spans)["llm_cache.lookup"] == ["miss", "hit"]

    sclient = client_from_url(search_url)
    sem = ValkeySemanticCache(sclient, HashingEmbeddings(16), prefix=prefix, metrics=False)
    sem.lookup(SECRET, "m")
    sem.update(SECRET, "m", [Generation(text="a")])
    sem.lookup(SECRET, "m")
    assert _outcomes(spans)["semantic_cache.lookup"] == ["miss", "hit"]

    node: ValkeyNodeCache[Any] = ValkeyNodeCache(client, prefix=f"{prefix}node", metrics=False)
    node.get([(("n",), SECRET)])
    node.set({(("n",), SECRET): ({"v": 1}, 60)})
    node.get([(("n",), SECRET)])
    assert _outcomes(spans)["node_cache.get"] == ["miss", "hit"]

    tools = ToolCache(client, prefix=f"{prefix}tools", metrics=False)

    @cached(tools, name="echo")
    def echo(arg: str) -> str:
        return arg

    echo(SECRET)
    echo(SECRET)
    assert _outcomes(spans)["tool_cache.cached_call"] == ["miss", "hit"]

    store = ValkeyByteStore(client, prefix=f"{prefix}emb", metrics=False)
    emb = CachedEmbeddings(HashingEmbeddings(8), store)
    emb.embed_query(SECRET)
    emb.embed_query(SECRET)
    assert _outcomes(spans)["embedding_cache.mget"] == ["miss", "hit"]

    mw_cache = ValkeyCache(client, prefix=f"{prefix}mw", metrics=False)
    agent = create_agent(priced_model(), [], middleware=[ModelCacheMiddleware(mw_cache)])
    for _ in range(2):
        agent.invoke({"messages": [HumanMessage(SECRET)]}, {"configurable": {"thread_id": SECRET}})

    assert _outcomes(spans)["llm_cache.model_call"] == ["miss", "hit"]
    sclient.close()
    client.close()


def test_batches_carry_their_counts(
    spans: InMemorySpanExporter, valkey_url: str, prefix: str
) -> None:
    client = client_from_url(valkey_url)
    llm = ValkeyCache(client, prefix=prefix, metrics=False)
    llm.update("a", "m", [Generation(text="a")])
    llm.lookup_many([("a", "m"), ("b", "m"), ("c", "m")])
    (span,) = [s for s in spans.get_finished_spans() if s.name == "llm_cache.lookup_many"]
    assert span.attributes is not None
    assert span.attributes[OUTCOME] == "miss"
    assert (
        span.attributes["langgraph_valkey_cache.hits"],
        span.attributes["langgraph_valkey_cache.misses"],
    ) == (1, 2)
    client.close()


def test_a_lookup_that_failed_open_is_an_error_span(
    dead_url: str, spans: InMemorySpanExporter, prefix: str
) -> None:
    client = client_from_url(dead_url)
    cache = ValkeyCache(client, prefix=prefix, metrics=False)
    assert cache.lookup(SECRET, "m") is None  # fails open: a miss...
    assert cache.lookup(SECRET, "m") is None  # ...then skipped: the breaker is open
    first, second = [s for s in spans.get_finished_spans() if s.name == "llm_cache.lookup"]
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes[OUTCOME] == "error"
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes["error.type"] == "unavailable"
    assert second.attributes[OUTCOME] == "bypass"
    assert second.attributes["error.type"] == "breaker_open"
    _no_secrets(spans.get_finished_spans())
    client.close()


async def test_async_lookups_report_outcomes(
    spans: InMemorySpanExporter, valkey_url: str, prefix: str
) -> None:
    aclient = client_from_url(valkey_url, asyncio=True)
    llm = ValkeyCache(aclient, prefix=prefix, metrics=False)
    await llm.alookup(SECRET, "m")
    await llm.aupdate(SECRET, "m", [Generation(text="a")])
    await llm.alookup(SECRET, "m")
    assert _outcomes(spans)["llm_cache.lookup"] == ["miss", "hit"]
    await aclient.aclose()


def test_a_skipped_cache_is_a_bypass_span(
    spans: InMemorySpanExporter, valkey_url: str, prefix: str
) -> None:
    from langgraph_valkey_cache._control import cache_config

    registry = CollectorRegistry()
    client = client_from_url(valkey_url)
    llm = ValkeyCache(client, prefix=prefix, metrics=registry)
    llm.update(SECRET, "m", [Generation(text="a")])
    with cache_config({"configurable": {"cache_control": {"skip": True}}}):
        assert llm.lookup(SECRET, "m") is None  # skipped on purpose: not a lookup
    tools = ToolCache(client, prefix=f"{prefix}tools", metrics=False, never_cache=["send"])

    @cached(tools, name="send")
    def send(arg: str) -> str:
        return arg

    send(SECRET)
    got = _outcomes(spans)
    assert got["llm_cache.lookup"] == ["bypass"]
    assert got["tool_cache.cached_call"] == ["bypass"]
    sample = registry.get_sample_value(
        "langgraph_valkey_cache_requests_total", {"tier": "llm_cache", "result": "bypass"}
    )
    assert sample == 1
    assert llm.stats().calls == 0  # neither a hit nor a miss
    client.close()
