"""The savings ledger (issue 13): LLM-cache hits add the cached response's tokens and
genai-prices' price for them, provider prompt caching is read from the responses that
pass through and priced apart, every cache names itself in the server's registry, and
``stats --json`` reports it all. Real servers, a scripted model (no network)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from genai_prices import Usage, calc_price
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult, Generation

from langgraph_valkey_cache import ToolCache, ValkeyCache, ValkeyNodeCache, cached
from langgraph_valkey_cache.__main__ import main
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache._prices import Pricer, TokenPrices, TokenUsage, model_of
from langgraph_valkey_cache._stats import REGISTRY_KEY
from langgraph_valkey_cache.embeddings import CachedEmbeddings, ValkeyByteStore
from langgraph_valkey_cache.testing import HashingEmbeddings, ScriptedModel

IN, OUT = 1200, 300


def priced_model(
    cache: Any = None,
    cache_read: int = 0,
    cache_creation: int = 0,
    model_name: str = "gpt-4o-mini",
) -> ScriptedModel:
    """A scripted chat model that reports a model name and token usage, as OpenAI's and
    Anthropic's integrations do (``response_metadata["model_name"]``, ``usage_metadata``
    with ``input_token_details``)."""
    details = {}
    if cache_read:
        details["cache_read"] = cache_read
    if cache_creation:
        details["cache_creation"] = cache_creation
    usage: dict[str, Any] = {
        "input_tokens": IN, "output_tokens": OUT, "total_tokens": IN + OUT,
    }  # fmt: skip
    if details:
        usage["input_token_details"] = details

    def answer(messages: list[BaseMessage]) -> AIMessage:
        return AIMessage(
            content=f"answer to {messages[-1].content}",
            usage_metadata=usage,  # type: ignore[arg-type]
            response_metadata={"model_name": model_name, "model_provider": "openai"},
        )

    return ScriptedModel(script=answer, model_name=model_name, cache=cache)


def _price(**usage: int) -> float:
    return float(calc_price(Usage(**usage), "gpt-4o-mini").total_price)


def _provider_saving(model: str, inp: int, read: int, write: int) -> float:
    full = calc_price(Usage(input_tokens=inp), model).input_price
    billed = calc_price(
        Usage(input_tokens=inp, cache_read_tokens=read or None, cache_write_tokens=write or None),
        model,
    ).input_price
    return float(full - billed)


def _stats_json(url: str, capsys: Any, *args: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["--url", url, "stats", "--json", *args]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object
    return json.loads(out)


def test_hits_without_cost_of_are_priced_by_genai_prices(
    valkey_url: str, prefix: str, capsys: Any
) -> None:
    client = client_from_url(valkey_url)
    cache = ValkeyCache(client, prefix=f"{prefix}llm", metrics=False)
    model = priced_model(cache=cache)
    for _ in range(3):  # 1 miss, 2 hits
        model.invoke("What is Valkey?")
    assert model.calls == 1
    cache.flush_stats()
    report = _stats_json(valkey_url, capsys, f"--llm-prefix={prefix}llm")
    llm = report["llm"]
    assert (llm["hits"], llm["misses"]) == (2, 1)
    assert llm["hit_rate"] == pytest.approx(2 / 3)
    assert llm["tokens_saved"] == 2 * (IN + OUT)
    expected = 2 * _price(input_tokens=IN, output_tokens=OUT)
    assert expected > 0
    assert llm["saved_usd"] == pytest.approx(expected, rel=1e-9)
    assert llm["by_model"]["gpt-4o-mini"]["tokens_saved"] == 2 * (IN + OUT)
    assert set(report["provider_prompt_cache"]) >= {"read_tokens", "write_tokens", "saved_usd"}
    # the same figures from the API, this process and any other
    st = cache.stats()
    assert st.tokens_saved == 2 * (IN + OUT) and st.saved_usd == pytest.approx(expected)
    client.close()


def test_cost_of_still_overrides_the_price(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    cache = ValkeyCache(client, prefix=prefix, metrics=False, cost_of=lambda gens: 0.5)
    model = priced_model(cache=cache)
    for _ in range(3):
        model.invoke("hi")
    st = cache.stats()
    assert st.saved_usd == pytest.approx(1.0)
    assert st.tokens_saved == 2 * (IN + OUT)  # tokens are counted whatever prices them
    client.close()


def test_prices_override_and_model_from_the_llm_string(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    cache = ValkeyCache(
        client, prefix=prefix, metrics=False, prices={"my-finetune": {"input": 1, "output": 10}}
    )
    cache.update("q", "[('model_name', 'my-finetune')]", [
        ChatGeneration(message=AIMessage("a", usage_metadata={
            "input_tokens": 1000, "output_tokens": 100, "total_tokens": 1100,
        }))
    ])  # fmt: skip
    assert cache.lookup("q", "[('model_name', 'my-finetune')]") is not None
    st = cache.stats()
    assert st.tokens_saved == 1100
    assert st.saved_usd == pytest.approx((1000 * 1 + 100 * 10) / 1e6)
    assert st.by_model["my-finetune"]["hits"] == 1
    client.close()


def test_provider_prompt_cache_reads_are_priced_apart(
    valkey_url: str, prefix: str, capsys: Any
) -> None:
    client = client_from_url(valkey_url)
    cache = ValkeyCache(client, prefix=f"{prefix}llm", metrics=False)
    model = priced_model(cache=cache, cache_read=1024)
    model.invoke("first question")  # misses: fresh responses, each read 1024 from the
    model.invoke("second question")  # provider's prompt cache
    model.invoke("first question")  # our hit: not a provider figure
    cache.flush_stats()
    report = _stats_json(valkey_url, capsys, f"--llm-prefix={prefix}llm")
    pc = report["provider_prompt_cache"]
    assert (pc["read_tokens"], pc["write_tokens"]) == (2048, 0)
    assert pc["input_tokens"] == 2 * IN and pc["read_share"] == pytest.approx(2048 / (2 * IN))
    expected = 2 * _provider_saving("gpt-4o-mini", IN, 1024, 0)
    assert expected > 0  # gpt-4o-mini reads cached input at half price
    assert pc["saved_usd"] == pytest.approx(expected, rel=1e-9)
    assert report["llm"]["provider_prompt_cache"]["read_tokens"] == 2048
    # our own hit is priced at the full price of the cached response, reads included
    hit_price = _price(input_tokens=IN, output_tokens=OUT, cache_read_tokens=1024)
    assert report["llm"]["saved_usd"] == pytest.approx(hit_price, rel=1e-9)
    client.close()


def test_cache_write_premium_is_subtracted() -> None:
    u = TokenUsage(input_tokens=3000, output_tokens=10, cache_read=0, cache_write=2000)
    saving = Pricer().provider_saving("claude-sonnet-4-5", u)
    assert saving < 0  # writing costs 1.25x the input rate, nothing read yet
    assert saving == pytest.approx(_provider_saving("claude-sonnet-4-5", 3000, 0, 2000))
    over = Pricer({"m": TokenPrices(input=3, output=15, cache_read=0.3, cache_write=3.75)})
    u = TokenUsage(input_tokens=3000, cache_read=2000, cache_write=500)
    assert over.provider_saving("m", u) == pytest.approx((2000 * 2.7 - 500 * 0.75) / 1e6)


def test_model_names_and_unknown_models() -> None:
    msg = AIMessage("x", response_metadata={"model": "claude-3-5-haiku-latest"})
    assert model_of(ChatGeneration(message=msg)) == "claude-3-5-haiku-latest"
    assert model_of(Generation(text="x"), "[('_type', 'openai'), ('model_name', 'gpt-4o')]") == (
        "gpt-4o"
    )
    assert model_of(Generation(text="x"), '{"model": "gemini-2.0-flash"}---agent:{}') == (
        "gemini-2.0-flash"
    )
    assert model_of(Generation(text="x"), "no model here") is None
    # a model nobody prices: tokens count, dollars stay 0 (and "*" prices the rest)
    assert Pricer().price("no-such-model-xyz", TokenUsage(10, 10)) == 0.0
    assert Pricer({"*": {"input": 1, "output": 1}}).price(
        "no-such-model-xyz", TokenUsage(10, 10)
    ) == pytest.approx(20 / 1e6)
    with pytest.raises(ValueError, match="unknown price fields"):
        Pricer({"m": {"inptu": 1}})


def test_every_cache_names_itself_in_the_registry(
    valkey_url: str, prefix: str, capsys: Any
) -> None:
    client = client_from_url(valkey_url)
    llm = ValkeyCache(client, prefix=f"{prefix}llm", metrics=False)
    llm.update("q", "m", [Generation(text="a")])
    llm.lookup("q", "m")
    node: ValkeyNodeCache[Any] = ValkeyNodeCache(client, prefix=f"{prefix}node", metrics=False)
    node.get([(("n",), "k")])
    tools = ToolCache(client, prefix=f"{prefix}tools", metrics=False)

    @cached(tools, name="upper")
    def upper(s: str) -> str:
        return s.upper()

    upper("a")
    upper("a")
    store = ValkeyByteStore(client, prefix=f"{prefix}emb", metrics=False)
    emb = CachedEmbeddings(HashingEmbeddings(8), store)
    emb.embed_documents(["one", "two"])
    emb.embed_documents(["one", "two", "three"])
    for c in (llm, node, tools, store):
        c.flush_stats()
    registry = {k.decode(): v.decode() for k, v in client.hgetall(REGISTRY_KEY).items()}
    assert registry[f"llm:{prefix}llm"] == f"{prefix}llm:stats"
    assert f"node:{prefix}node" in registry and f"tools:{prefix}tools" in registry
    assert f"embeddings:{prefix}emb" in registry
    # no prefix given: stats finds every registered cache by itself
    report = _stats_json(valkey_url, capsys)
    assert f"{prefix}llm" in report["llm"]["prefixes"]
    assert report["llm"]["caches"][f"{prefix}llm"]["hits"] == 1
    assert report["tools"]["caches"][f"{prefix}tools"]["hits"] == 1
    assert report["node"]["caches"][f"{prefix}node"]["misses"] == 1
    emb_stats = report["embeddings"]["caches"][f"{prefix}emb"]
    assert (emb_stats["hits"], emb_stats["calls_saved"]) == (2, 2)  # "one", "two" again
    for tier in ("llm", "node", "tools", "embeddings"):
        assert {"hits", "misses", "hit_rate", "tokens_saved", "saved_usd"} <= set(report[tier])
    client.close()


def test_registry_written_once_per_process(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url)
    cache = ValkeyCache(client, prefix=prefix, metrics=False, stats_flush_interval=0)
    cache.lookup("q", "m")
    assert cache.shared_stats.registered
    assert cache.shared_stats.flush_commands({"k": {"hits": 1}}) == (("HINCRBY", "k", "hits", 1),)
    client.close()


def test_a_failed_flush_registers_later(dead_url: str, prefix: str) -> None:
    client = client_from_url(dead_url, socket_timeout=0.2)
    cache = ValkeyCache(client, prefix=prefix, metrics=False)
    cache.lookup("q", "m")  # fails open: a miss
    cache.flush_stats()  # the server is not there: counts and registration stay pending
    assert not cache.shared_stats.registered
    assert cache.shared_stats.pending
    client.close()


def test_semantic_and_middleware_hits_are_ledgered(
    valkey_url: str, search_url: str, prefix: str
) -> None:
    from langchain.agents import create_agent

    from langgraph_valkey_cache import ValkeySemanticCache
    from langgraph_valkey_cache.cache.middleware import ModelCacheMiddleware

    sclient = client_from_url(search_url)
    sem = ValkeySemanticCache(sclient, HashingEmbeddings(32), prefix=prefix, metrics=False)
    model = priced_model(cache=sem)
    for _ in range(2):
        model.invoke("What is Valkey?")
    assert model.calls == 1
    st = sem.stats()
    assert (st.hits, st.tokens_saved) == (1, IN + OUT)
    assert st.saved_usd == pytest.approx(_price(input_tokens=IN, output_tokens=OUT))
    sclient.close()

    client = client_from_url(valkey_url)
    for single_flight in (True, False):  # the flight path and the lookup/store path
        exact = ValkeyCache(client, prefix=f"{prefix}mw{single_flight}", metrics=False)
        agent_model = priced_model(cache_read=512)
        mw = ModelCacheMiddleware(exact, single_flight=single_flight)
        agent = create_agent(agent_model, [], middleware=[mw])
        for _ in range(3):
            agent.invoke({"messages": [HumanMessage("hello")]})
        assert agent_model.calls == 1
        st = exact.stats()
        assert (st.hits, st.misses, st.tokens_saved) == (2, 1, 2 * (IN + OUT))
        assert st.provider_read_tokens == 512  # counted once, on the one fresh response
        assert st.provider_saved_usd == pytest.approx(_provider_saving("gpt-4o-mini", IN, 512, 0))
    client.close()


def test_composes_with_anthropic_prompt_caching(valkey_url: str, prefix: str) -> None:
    """Ours outside, LangChain's AnthropicPromptCachingMiddleware inside: our hits skip
    the model; each miss goes out with Anthropic's cache_control, and the cache reads and
    writes Anthropic reports come back through us and are priced."""
    from langchain.agents import create_agent
    from langchain_anthropic import ChatAnthropic
    from langchain_anthropic.middleware import AnthropicPromptCachingMiddleware

    from langgraph_valkey_cache.cache.middleware import ModelCacheMiddleware

    class ScriptedClaude(ChatAnthropic):
        """ChatAnthropic (so the middleware applies) answering from a script: the first
        call writes the prompt prefix to Anthropic's cache, later ones read it."""

        calls: int = 0
        seen: list[dict[str, Any]] = []

        def _generate(
            self,
            messages: list[BaseMessage],
            stop: list[str] | None = None,
            run_manager: CallbackManagerForLLMRun | None = None,
            **kwargs: Any,
        ) -> ChatResult:
            self.calls += 1
            self.seen.append(kwargs)
            details = {"cache_creation": 4000} if self.calls == 1 else {"cache_read": 4000}
            msg = AIMessage(
                f"answer {self.calls}",
                usage_metadata={
                    "input_tokens": 5000, "output_tokens": 50, "total_tokens": 5050,
                    "input_token_details": details,  # type: ignore[typeddict-item]
                },
                response_metadata={"model_name": self.model, "model_provider": "anthropic"},
            )  # fmt: skip
            return ChatResult(generations=[ChatGeneration(message=msg)])

    model = ScriptedClaude(model="claude-sonnet-4-5", api_key="offline")  # type: ignore[call-arg]
    client = client_from_url(valkey_url)
    cache = ValkeyCache(client, prefix=prefix, metrics=False)
    agent = create_agent(
        model,
        [],
        system_prompt="You answer questions about Valkey. " * 50,
        middleware=[ModelCacheMiddleware(cache), AnthropicPromptCachingMiddleware()],
    )
    agent.invoke({"messages": [HumanMessage("first")]})  # miss: writes the prefix
    agent.invoke({"messages": [HumanMessage("first")]})  # our hit: no model call
    agent.invoke({"messages": [HumanMessage("second")]})  # miss: reads the prefix
    assert model.calls == 2
    assert all(kw.get("cache_control") == {"type": "ephemeral", "ttl": "5m"} for kw in model.seen)
    st = cache.stats()
    assert (st.hits, st.misses) == (1, 2)
    assert (st.provider_read_tokens, st.provider_write_tokens) == (4000, 4000)
    expected = _provider_saving("claude-sonnet-4-5", 5000, 0, 4000) + _provider_saving(
        "claude-sonnet-4-5", 5000, 4000, 0
    )
    assert st.provider_saved_usd == pytest.approx(expected, rel=1e-9)
    # our hit served the first answer: its tokens, at what that call cost
    assert st.tokens_saved == 5050
    first = calc_price(
        Usage(input_tokens=5000, output_tokens=50, cache_write_tokens=4000), "claude-sonnet-4-5"
    )
    assert st.saved_usd == pytest.approx(float(first.total_price), rel=1e-9)
    assert st.by_model["claude-sonnet-4-5"]["provider.read_tokens"] == 4000
    client.close()


@pytest.mark.cluster
def test_ledger_and_registry_on_a_cluster(cluster_url: str, prefix: str, capsys: Any) -> None:
    client = client_from_url(cluster_url)
    cache = ValkeyCache(client, prefix=prefix, metrics=False)
    model = priced_model(cache=cache, cache_read=100)
    for _ in range(2):
        model.invoke("on a cluster")
    cache.flush_stats()  # HINCRBYs and the registry HSET: keys of different slots
    assert cache.shared_stats.registered
    assert client.hget(REGISTRY_KEY, f"llm:{prefix}") == f"{prefix}:stats".encode()
    report = _stats_json(cluster_url, capsys)
    mine = report["llm"]["caches"][prefix]
    assert (mine["hits"], mine["tokens_saved"]) == (1, IN + OUT)
    assert mine["provider_prompt_cache"]["read_tokens"] == 100
    client.close()


async def test_async_hits_and_astats(valkey_url: str, prefix: str) -> None:
    aclient = client_from_url(valkey_url, asyncio=True)
    cache = ValkeyCache(aclient, prefix=prefix, metrics=False)
    model = priced_model(cache=cache, cache_creation=800)
    for _ in range(3):
        await model.ainvoke("async question")
    assert model.calls == 1
    st = await cache.astats()
    assert (st.hits, st.misses, st.tokens_saved) == (2, 1, 2 * (IN + OUT))
    assert st.provider_write_tokens == 800
    # writing 800 tokens costs gpt-4o-mini nothing extra (no write rate): no saving
    assert st.provider_saved_usd == pytest.approx(_provider_saving("gpt-4o-mini", IN, 0, 800))
    price = _price(input_tokens=IN, output_tokens=OUT, cache_write_tokens=800)
    assert st.saved_usd == pytest.approx(2 * price, rel=1e-9)
    await aclient.aclose()


def test_tool_hits_add_time_and_the_policy_cost(valkey_url: str, prefix: str) -> None:
    from prometheus_client import CollectorRegistry

    from langgraph_valkey_cache.cache.tools import ToolPolicy

    registry = CollectorRegistry()
    client = client_from_url(valkey_url)
    tools = ToolCache(
        client, prefix=prefix, metrics=registry,
        policies={"paid_api": ToolPolicy(ttl=60, cost_usd=0.02)},
    )  # fmt: skip

    @cached(tools, name="paid_api")
    def paid_api(q: str) -> str:
        return q * 2

    @cached(tools, name="free")
    def free(q: str) -> str:
        time.sleep(0.02)  # its hits each save the recorded ~20 ms
        return q

    for _ in range(3):  # 1 miss, 2 hits each
        paid_api("x")
        free("x")
    per_tool = tools.stats()
    assert per_tool["paid_api"].saved_usd == pytest.approx(0.04)
    assert per_tool["free"].saved_usd == 0.0
    assert tools.totals().saved_usd == pytest.approx(0.04)
    assert registry.get_sample_value(
        "langgraph_valkey_cache_cost_saved_usd_total", {"tier": "tool_cache"}
    ) == pytest.approx(0.04)
    saved_s = registry.get_sample_value(
        "langgraph_valkey_cache_time_saved_seconds_total", {"tier": "tool_cache", "tool": "free"}
    )
    assert saved_s is not None and 0.04 <= saved_s < 1.0
    assert per_tool["free"].saved_ms == pytest.approx(saved_s * 1000, abs=2)
    assert ToolPolicy.from_json(ToolPolicy(ttl=5, cost_usd=0.5).to_json()).cost_usd == 0.5
    client.close()
