"""Model-call caching where LangChain's own cache does not reach: agents and streaming.

* :class:`ModelCacheMiddleware` is a LangChain 1.x ``AgentMiddleware``
  (``wrap_model_call`` / ``awrap_model_call``) for ``create_agent``. With a
  :class:`~langgraph_valkey_cache.cache.llm.ValkeyCache` it matches exactly, with a
  :class:`~langgraph_valkey_cache.cache.semantic.ValkeySemanticCache` semantically.
  Identical concurrent misses are single-flighted through
  :mod:`~langgraph_valkey_cache.cache.singleflight`: one worker calls the model, the others
  (threads, tasks, processes) wait for its answer.
* :func:`cached_stream` / :func:`acached_stream` wrap ``model.stream``/``astream`` (which
  bypass LangChain's cache): a hit is replayed as chunks, a miss is streamed through and
  recorded when it completes. They use LangChain's own cache key, so an answer cached by
  ``invoke`` replays on ``stream`` and the other way round. Any ``BaseCache`` works.

The cache key of an agent model call is the dump of the system message plus messages
(ids dropped, as LangChain does) and an llm string made of the model's own llm string
plus the bound tools, tool choice and model settings. Calls with a ``response_format``
(structured output) are not cached.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any

from langchain_core.caches import BaseCache
from langchain_core.language_models import BaseChatModel
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.utils import message_chunk_to_message
from langchain_core.outputs import ChatGeneration, Generation
from langchain_core.runnables import RunnableConfig

from langgraph_valkey_cache.cache.llm import ValkeyCache, count_result
from langgraph_valkey_cache.cache.semantic import ValkeySemanticCache
from langgraph_valkey_cache.cache.singleflight import AsyncSingleFlight, SingleFlight, lease_key

try:
    from langchain.agents.middleware.types import (
        AgentMiddleware,
        ModelRequest,
        ModelResponse,
    )
except ImportError:  # pragma: no cover - exercised only without the extra
    AgentMiddleware = None  # type: ignore[assignment,misc]

__all__ = [
    "ModelCacheMiddleware",
    "acached_stream",
    "cached_stream",
    "chunks_from_message",
]

logger = logging.getLogger("langgraph_valkey_cache.cache")


# -- keys (pure) -------------------------------------------------------------------------


def _prompt_of(messages: Sequence[BaseMessage]) -> str:
    return dumps(
        [m.model_copy(update={"id": None}) if getattr(m, "id", None) else m for m in messages]
    )


def _tool_spec(tool: Any) -> Any:
    if isinstance(tool, dict):
        return tool
    try:
        from langchain_core.utils.function_calling import convert_to_openai_tool

        return convert_to_openai_tool(tool)
    except Exception:  # an exotic tool: its name and description still identify it
        return {"name": getattr(tool, "name", repr(tool)), "doc": getattr(tool, "description", "")}


def request_key(request: Any) -> tuple[str, str]:
    """``(prompt, llm_string)`` of an agent ``ModelRequest``."""
    messages = list(request.messages)
    if request.system_message is not None:
        messages = [request.system_message, *messages]
    extra = {
        "tools": [_tool_spec(t) for t in request.tools or []],
        "tool_choice": request.tool_choice,
        "settings": request.model_settings or {},
    }
    llm_string = (
        request.model._get_llm_string()
        + "---agent:"
        + json.dumps(extra, sort_keys=True, default=repr)
    )
    return _prompt_of(messages), llm_string


def _cacheable(response: Any) -> AIMessage | None:
    """The single AIMessage of a plain model response, else None (not cached)."""
    if isinstance(response, AIMessage):
        return response
    result = getattr(response, "result", None)
    if getattr(response, "structured_response", None) is not None or not result:
        return None
    if len(result) == 1 and isinstance(result[0], AIMessage):
        return result[0]
    return None


def _fresh(message: AIMessage) -> AIMessage:
    # a cached message keeps its content but not its id: add_messages would otherwise
    # replace an earlier message that carries the same id
    return message.model_copy(update={"id": None})


def _message_of(gens: Sequence[Generation] | None) -> AIMessage | None:
    if not gens:
        return None
    msg = getattr(gens[0], "message", None)
    if isinstance(msg, AIMessage):
        return _fresh(msg)
    return AIMessage(content=gens[0].text)


# -- the agent middleware ----------------------------------------------------------------

if AgentMiddleware is not None:

    class ModelCacheMiddleware(AgentMiddleware):  # type: ignore[type-arg]
        """Cache agent model calls in Valkey (exact or semantic), with single-flight.

        Args:
            cache: a :class:`ValkeyCache` (exact) or :class:`ValkeySemanticCache`
                (semantic); any other ``BaseCache`` works without single-flight.
            single_flight: make identical concurrent misses call the model once.
            lease_ttl: seconds a leader may take before others stop waiting on its lease.
            wait_timeout: seconds a follower waits before calling the model itself.

        Example:
            >>> from langchain.agents import create_agent
            >>> cache = ValkeyCache(client, ttl=3600)  # doctest: +SKIP
            >>> agent = create_agent(model, tools, middleware=[ModelCacheMiddleware(cache)])
            ... # doctest: +SKIP
        """

        def __init__(
            self,
            cache: BaseCache,
            *,
            single_flight: bool = True,
            lease_ttl: float = 120.0,
            wait_timeout: float = 60.0,
        ) -> None:
            super().__init__()
            self.cache = cache
            self.hits = 0
            self.misses = 0
            sync_client = getattr(getattr(cache, "_clients", None), "sync_client", None)
            async_client = getattr(getattr(cache, "_clients", None), "async_client", None)
            telemetry = getattr(cache, "telemetry", None)
            opts: dict[str, Any] = {
                "lease_ttl": lease_ttl,
                "wait_timeout": wait_timeout,
                "telemetry": telemetry,
                # one breaker for the cache and its single-flight: one failure skips both
                "breaker": getattr(cache, "breaker", None),
            }
            self._sf = SingleFlight(sync_client, **opts) if single_flight and sync_client else None
            self._asf = (
                AsyncSingleFlight(async_client, **opts) if single_flight and async_client else None
            )

        @property
        def name(self) -> str:
            return "ValkeyModelCache"

        def _exact(self) -> ValkeyCache | None:
            return self.cache if isinstance(self.cache, ValkeyCache) else None

        def _lease(self, prompt: str, llm_string: str) -> str:
            # the semantic cache's lease: the exact key of this prompt under its prefix
            assert isinstance(self.cache, ValkeySemanticCache)
            return lease_key(self.cache.keys.exact(llm_string, prompt))

        def _count(self, hit: bool) -> None:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

        def _count_exact(self, cache: ValkeyCache, flight: Any) -> None:
            # the exact flight reads the key itself (not through cache.lookup): count here
            self._count(not flight.computed)
            gens = None
            if not flight.computed:
                msg = _cacheable(flight.value)
                gens = None if msg is None else [ChatGeneration(message=msg)]
            count_result(cache.telemetry, gens, cache.cost_of, cache.shared_stats)

        # sync

        def wrap_model_call(
            self, request: ModelRequest, handler: Callable[[ModelRequest], Any]
        ) -> Any:
            if request.response_format is not None:
                return handler(request)
            prompt, llm_string = request_key(request)
            exact = self._exact()
            if exact is not None and self._sf is not None:
                return self._exact_flight(exact, prompt, llm_string, request, handler)
            if isinstance(self.cache, ValkeySemanticCache) and self._sf is not None:
                return self._semantic_flight(prompt, llm_string, request, handler)
            cached = _message_of(self.cache.lookup(prompt, llm_string))
            self._count(cached is not None)
            if cached is not None:
                return ModelResponse(result=[cached])
            response = handler(request)
            msg = _cacheable(response)
            if msg is not None:
                self.cache.update(prompt, llm_string, [ChatGeneration(message=msg)])
            return response

        def _exact_flight(
            self,
            cache: ValkeyCache,
            prompt: str,
            llm_string: str,
            request: Any,
            handler: Callable[[Any], Any],
        ) -> Any:
            assert self._sf is not None

            def compute() -> tuple[Any, bytes | None]:
                response = handler(request)
                msg = _cacheable(response)
                payload = None if msg is None else _payload(cache, msg)
                return response, payload

            flight = self._sf.run(
                cache.codec.key(prompt, llm_string),
                compute,
                ttl=_ttl(cache),
                decode=lambda raw: _decoded(cache, raw),
            )
            self._count_exact(cache, flight)
            cache.shared_stats.maybe_flush()
            return flight.value

        def _semantic_flight(
            self, prompt: str, llm_string: str, request: Any, handler: Callable[[Any], Any]
        ) -> Any:
            assert self._sf is not None
            cache = self.cache
            box: dict[str, Any] = {}

            def lookup() -> Any:
                msg = _message_of(cache.lookup(prompt, llm_string))
                return None if msg is None else ModelResponse(result=[msg])

            def compute() -> Any:
                box["response"] = response = handler(request)
                return response

            def store(response: Any) -> None:
                msg = _cacheable(response)
                if msg is not None:
                    cache.update(prompt, llm_string, [ChatGeneration(message=msg)])

            flight = self._sf.call(self._lease(prompt, llm_string), lookup, compute, store)
            self._count(not flight.computed)
            return flight.value

        # async

        async def awrap_model_call(
            self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[Any]]
        ) -> Any:
            if request.response_format is not None:
                return await handler(request)
            prompt, llm_string = request_key(request)
            exact = self._exact()
            if exact is not None and self._asf is not None:
                return await self._aexact_flight(exact, prompt, llm_string, request, handler)
            if isinstance(self.cache, ValkeySemanticCache) and self._asf is not None:
                return await self._asemantic_flight(prompt, llm_string, request, handler)
            cached = _message_of(await self.cache.alookup(prompt, llm_string))
            self._count(cached is not None)
            if cached is not None:
                return ModelResponse(result=[cached])
            response = await handler(request)
            msg = _cacheable(response)
            if msg is not None:
                await self.cache.aupdate(prompt, llm_string, [ChatGeneration(message=msg)])
            return response

        async def _aexact_flight(
            self,
            cache: ValkeyCache,
            prompt: str,
            llm_string: str,
            request: Any,
            handler: Callable[[Any], Awaitable[Any]],
        ) -> Any:
            assert self._asf is not None

            async def compute() -> tuple[Any, bytes | None]:
                response = await handler(request)
                msg = _cacheable(response)
                return response, None if msg is None else _payload(cache, msg)

            flight = await self._asf.run(
                cache.codec.key(prompt, llm_string),
                compute,
                ttl=_ttl(cache),
                decode=lambda raw: _decoded(cache, raw),
            )
            self._count_exact(cache, flight)
            await cache.shared_stats.amaybe_flush()
            return flight.value

        async def _asemantic_flight(
            self,
            prompt: str,
            llm_string: str,
            request: Any,
            handler: Callable[[Any], Awaitable[Any]],
        ) -> Any:
            assert self._asf is not None
            cache = self.cache

            async def lookup() -> Any:
                msg = _message_of(await cache.alookup(prompt, llm_string))
                return None if msg is None else ModelResponse(result=[msg])

            async def compute() -> Any:
                return await handler(request)

            async def store(response: Any) -> None:
                msg = _cacheable(response)
                if msg is not None:
                    await cache.aupdate(prompt, llm_string, [ChatGeneration(message=msg)])

            flight = await self._asf.call(self._lease(prompt, llm_string), lookup, compute, store)
            self._count(not flight.computed)
            return flight.value

else:  # pragma: no cover

    class ModelCacheMiddleware:  # type: ignore[no-redef]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError(
                "ModelCacheMiddleware needs LangChain 1.x agents: "
                "pip install 'langgraph-valkey-cache[agents]'"
            )


def _ttl(cache: ValkeyCache) -> float | None:
    ms = cache.codec.ttl_ms
    return None if ms is None else ms / 1000


def _payload(cache: ValkeyCache, msg: AIMessage) -> bytes:
    return cache.codec.encode([ChatGeneration(message=msg)]).encode()


def _decoded(cache: ValkeyCache, raw: bytes) -> Any:
    msg = _message_of(cache.codec.decode(raw))
    if msg is None:
        raise ValueError("cached model response is unreadable")
    return ModelResponse(result=[msg])


# -- streaming ---------------------------------------------------------------------------


def chunks_from_message(message: AIMessage, chunk_chars: int = 24) -> Iterator[AIMessageChunk]:
    """Replay a message as chunks whose sum equals it (text in pieces, then one chunk with
    tool calls, usage and metadata)."""
    content = message.content
    if isinstance(content, str):
        for i in range(0, len(content), chunk_chars):
            yield AIMessageChunk(content=content[i : i + chunk_chars], id=message.id)
    else:
        yield AIMessageChunk(content=list(content), id=message.id)
    yield AIMessageChunk(
        content="",
        id=message.id,
        tool_call_chunks=[
            {
                "name": tc["name"],
                "args": json.dumps(tc["args"]),
                "id": tc.get("id"),
                "index": i,
                "type": "tool_call_chunk",
            }
            for i, tc in enumerate(message.tool_calls)
        ],
        invalid_tool_calls=list(message.invalid_tool_calls),
        usage_metadata=message.usage_metadata,
        response_metadata=dict(message.response_metadata),
        additional_kwargs=dict(message.additional_kwargs),
        chunk_position="last",
    )


def _stream_key(
    model: BaseChatModel, input: Any, stop: list[str] | None, kwargs: dict[str, Any]
) -> tuple[str, str]:
    messages = model._convert_input(input).to_messages()
    return _prompt_of(messages), model._get_llm_string(stop=stop, **kwargs)


def _record(acc: AIMessageChunk | None) -> list[Generation] | None:
    if acc is None:
        return None
    msg = message_chunk_to_message(acc)
    if not isinstance(msg, AIMessage):
        return None
    return [ChatGeneration(message=msg)]


def cached_stream(
    model: BaseChatModel,
    input: Any,
    cache: BaseCache,
    config: RunnableConfig | None = None,
    *,
    stop: list[str] | None = None,
    chunk_chars: int = 24,
    **kwargs: Any,
) -> Iterator[AIMessageChunk]:
    """``model.stream(input)`` through ``cache``: a hit replays as chunks, a miss streams
    and is recorded when the stream completes (an interrupted stream is not cached).

    Example:
        >>> for chunk in cached_stream(model, "hi", ValkeyCache(client)):  # doctest: +SKIP
        ...     print(chunk.content, end="")
    """
    prompt, llm_string = _stream_key(model, input, stop, kwargs)
    cached = _message_of(cache.lookup(prompt, llm_string))
    if cached is not None:
        yield from chunks_from_message(cached, chunk_chars)
        return
    acc: AIMessageChunk | None = None
    for chunk in model.stream(input, config, stop=stop, **kwargs):
        acc = chunk if acc is None else acc + chunk
        yield chunk
    gens = _record(acc)
    if gens is not None:
        cache.update(prompt, llm_string, gens)


async def acached_stream(
    model: BaseChatModel,
    input: Any,
    cache: BaseCache,
    config: RunnableConfig | None = None,
    *,
    stop: list[str] | None = None,
    chunk_chars: int = 24,
    **kwargs: Any,
) -> AsyncIterator[AIMessageChunk]:
    """Async twin of :func:`cached_stream` (``model.astream``, ``cache.alookup/aupdate``)."""
    prompt, llm_string = _stream_key(model, input, stop, kwargs)
    cached = _message_of(await cache.alookup(prompt, llm_string))
    if cached is not None:
        for chunk in chunks_from_message(cached, chunk_chars):
            yield chunk
        return
    acc: AIMessageChunk | None = None
    async for chunk in model.astream(input, config, stop=stop, **kwargs):
        acc = chunk if acc is None else acc + chunk
        yield chunk
    gens = _record(acc)
    if gens is not None:
        await cache.aupdate(prompt, llm_string, gens)
