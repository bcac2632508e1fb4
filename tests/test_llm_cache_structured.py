"""Structured output through the LLM cache (issue 12, item 2): ``with_structured_output``
hits on repeat and returns the parsed object in every mode the scripted model offers
(tool calling, JSON schema, JSON mode; with and without ``include_raw``), sync and
async; and ``create_agent(response_format=...)`` (tool and provider strategies) gets its
``structured_response`` from a hit."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.structured_output import ProviderStrategy, ToolStrategy
from langchain_core.globals import set_llm_cache
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.output_parsers import PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field

from langgraph_valkey_cache import ValkeyCache
from langgraph_valkey_cache._client import scan_keys
from langgraph_valkey_cache.cache.middleware import ModelCacheMiddleware


class Weather(BaseModel):
    """The weather of a city."""

    city: str
    temp_c: int


class StructuredModel(GenericFakeChatModel):
    """Answers like a provider: a call of the bound tool when tools are bound, JSON
    content under a ``response_format``, else text. Each call a new temperature, so
    an answer served from the cache is told apart from a new one. Copies (the
    middleware's ``model_copy``) share the call counter."""

    counter: list[int] = Field(default_factory=lambda: [0])  # shared by copies

    @property
    def calls(self) -> int:
        return self.counter[0]

    def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any) -> Any:
        formatted = [convert_to_openai_tool(t) for t in tools]
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(  # type: ignore[override]
        self, schema: Any, *, method: str = "function_calling", include_raw: bool = False
    ) -> Any:
        if method == "function_calling":
            return super().with_structured_output(schema, include_raw=include_raw)
        if method == "json_schema":
            fmt = {
                "type": "json_schema",
                "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema()},
            }
        else:  # json_mode
            fmt = {"type": "json_object"}
        if include_raw:
            raise NotImplementedError("include_raw: function_calling only in this script")
        return self.bind(response_format=fmt) | PydanticOutputParser(pydantic_object=schema)

    def _reply(self, kw: dict[str, Any]) -> AIMessage:
        self.counter[0] += 1
        payload = {"city": "Paris", "temp_c": 20 + self.calls}
        meta = {"model_name": "structured-1"}
        tools = kw.get("tools") or []
        if tools:
            name = tools[0]["function"]["name"]
            call = {"name": name, "args": payload, "id": f"call_{uuid.uuid4().hex[:8]}"}
            return AIMessage(content="", tool_calls=[call], response_metadata=meta)
        if kw.get("response_format"):
            return AIMessage(content=json.dumps(payload), response_metadata=meta)
        return AIMessage(content="It is warm.", response_metadata=meta)

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._reply(kw))])

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._reply(kw))])


@pytest.fixture
def global_cache() -> Iterator[None]:
    yield
    set_llm_cache(None)


def _model() -> StructuredModel:
    return StructuredModel(messages=iter([]))


MODES = ("function_calling", "json_schema", "json_mode")


@pytest.mark.parametrize("method", MODES)
def test_with_structured_output_hits(
    sync_client: Any, prefix: str, global_cache: None, method: str
) -> None:
    set_llm_cache(ValkeyCache(sync_client, prefix=prefix, metrics=False))
    model = _model()
    structured = model.with_structured_output(Weather, method=method)
    first = structured.invoke("Weather in Paris?")
    assert isinstance(first, Weather) and model.calls == 1
    second = structured.invoke("Weather in Paris?")
    assert model.calls == 1, "the repeat is a hit"
    assert isinstance(second, Weather) and second == first
    # another question, another mode, or the plain model: other entries
    structured.invoke("Weather in Lima?")
    model.invoke("Weather in Paris?")
    assert model.calls == 3
    for other in MODES:
        if other != method:
            model.with_structured_output(Weather, method=other).invoke("Weather in Paris?")
    assert model.calls == 5
    assert len(list(scan_keys(sync_client, f"{prefix}:x:*"))) == 5


@pytest.mark.parametrize("method", MODES)
async def test_with_structured_output_hits_async(
    async_client: Any, prefix: str, global_cache: None, method: str
) -> None:
    set_llm_cache(ValkeyCache(async_client, prefix=prefix, metrics=False))
    model = _model()
    structured = model.with_structured_output(Weather, method=method)
    first = await structured.ainvoke("Weather in Paris?")
    second = await structured.ainvoke("Weather in Paris?")
    assert model.calls == 1 and isinstance(second, Weather) and second == first


def test_with_structured_output_include_raw(
    sync_client: Any, prefix: str, global_cache: None
) -> None:
    set_llm_cache(ValkeyCache(sync_client, prefix=prefix, metrics=False))
    model = _model()
    structured = model.with_structured_output(Weather, include_raw=True)
    first = structured.invoke("Weather in Paris?")
    second = structured.invoke("Weather in Paris?")
    assert model.calls == 1
    assert isinstance(second["parsed"], Weather) and second["parsed"] == first["parsed"]
    assert second["raw"].tool_calls == first["raw"].tool_calls


@pytest.mark.parametrize(
    "response_format",
    [Weather, ToolStrategy(Weather), ProviderStrategy(Weather)],
    ids=["auto", "tool", "provider"],
)
def test_agent_response_format_hits_through_the_llm_cache(
    sync_client: Any, prefix: str, global_cache: None, response_format: Any
) -> None:
    set_llm_cache(ValkeyCache(sync_client, prefix=prefix, metrics=False))
    model = _model()
    agent = create_agent(model, [], response_format=response_format)
    question = {"messages": [HumanMessage("Weather in Paris?")]}
    first = agent.invoke(question)
    assert isinstance(first["structured_response"], Weather) and model.calls == 1
    for _ in range(2):
        again = agent.invoke(question)
        assert again["structured_response"] == first["structured_response"]
    assert model.calls == 1


@pytest.mark.parametrize(
    "response_format",
    [Weather, ToolStrategy(Weather), ProviderStrategy(Weather)],
    ids=["auto", "tool", "provider"],
)
def test_agent_response_format_hits_through_the_middleware(
    sync_client: Any, prefix: str, response_format: Any
) -> None:
    """No set_llm_cache: the middleware puts its cache on the model for these calls."""
    model = _model()
    mw = ModelCacheMiddleware(ValkeyCache(sync_client, prefix=prefix, metrics=False))
    agent = create_agent(model, [], response_format=response_format, middleware=[mw])
    question = {"messages": [HumanMessage("Weather in Paris?")]}
    first = agent.invoke(question)
    assert isinstance(first["structured_response"], Weather) and model.calls == 1
    again = agent.invoke(question)
    assert again["structured_response"] == first["structured_response"] and model.calls == 1
    assert model.cache is None, "the agent's model itself is left alone"
    assert len(list(scan_keys(sync_client, f"{prefix}:x:*"))) == 1
    # a middleware scoped unlike its cache: the model's cache could not see the scope,
    # so these calls are not cached at all (never an answer across users)
    scoped = ModelCacheMiddleware(
        ValkeyCache(sync_client, prefix=prefix + "s", metrics=False), scope="user_id"
    )
    other = create_agent(model, [], response_format=response_format, middleware=[scoped])
    for _ in range(2):
        other.invoke(question, {"configurable": {"user_id": "a"}})  # type: ignore[arg-type]
    assert model.calls == 3


async def test_agent_response_format_middleware_async(async_client: Any, prefix: str) -> None:
    model = _model()
    mw = ModelCacheMiddleware(ValkeyCache(async_client, prefix=prefix, metrics=False))
    agent = create_agent(model, [], response_format=ToolStrategy(Weather), middleware=[mw])
    question = {"messages": [HumanMessage("Weather in Paris?")]}
    first = await agent.ainvoke(question)
    second = await agent.ainvoke(question)
    assert model.calls == 1 and second["structured_response"] == first["structured_response"]


def test_agent_response_format_any_base_cache_honours_skip() -> None:
    from langchain_core.caches import InMemoryCache

    model = _model()
    agent = create_agent(
        model, [], response_format=ToolStrategy(Weather),
        middleware=[ModelCacheMiddleware(InMemoryCache())],
    )  # fmt: skip
    question = {"messages": [HumanMessage("Weather in Paris?")]}
    skip = {"configurable": {"cache_control": {"skip": True}}}
    agent.invoke(question, skip)  # type: ignore[arg-type]
    agent.invoke(question)
    agent.invoke(question)
    assert model.calls == 2, "skipped, then a miss and a hit"
    agent.invoke(question, skip)  # type: ignore[arg-type]
    assert model.calls == 3
