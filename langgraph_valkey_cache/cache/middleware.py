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

The cache key of an agent model call is what the provider sees of the system message
plus messages (:func:`~langgraph_valkey_cache.cache.llm.canonical_prompt`) and an llm
string made of the model's own llm string plus the bound tools, tool choice and model
settings; a scoped middleware or cache adds the scope values. The run's
``configurable["cache_control"]`` (skip, refresh, ttl) applies to every call.

Calls with a ``response_format`` (structured output) are cached on the model instead:
the agent parses the model's answer inside the call with a strategy it picks per model,
so a cached call could only give the message, not the parsed object. The middleware
hands the call a copy of the model whose ``cache=`` is its cache, so the model call hits
through LangChain's own cache path (same keys) and the parse runs on the hit (no
single-flight there). A model with its own ``cache=`` keeps it, and a middleware whose
scope differs from its cache's passes these calls on uncached.
"""

from __future__ import annotations

import functools
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

from langgraph_valkey_cache._cachebase import CacheCore
from langgraph_valkey_cache._control import (
    cache_config,
    current_config,
    normalize_scope,
    read_control,
)
from langgraph_valkey_cache._failopen import BYPASS, COMPUTE, Call, Plan
from langgraph_valkey_cache._keys import AGENT_MARKER
from langgraph_valkey_cache._plans import arun_plan, run_plan
from langgraph_valkey_cache._prices import fresh_tally
from langgraph_valkey_cache.cache.llm import (
    LLMRequest,
    ValkeyCache,
    llm_request,
    tally_generations,
)
from langgraph_valkey_cache.cache.semantic import ValkeySemanticCache
from langgraph_valkey_cache.cache.singleflight import (
    Flight,
    FlightOptions,
    flight_plan,
    guarded_plan,
    lease_key,
)

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


def request_key(request: Any, scope: Any = ()) -> tuple[str, str]:
    """``(prompt, llm_string)`` of an agent ``ModelRequest``; ``scope`` (``(name, value)``
    pairs) goes into the llm string, for caches that take no scope themselves."""
    messages = list(request.messages)
    if request.system_message is not None:
        messages = [request.system_message, *messages]
    extra: dict[str, Any] = {
        "tools": [_tool_spec(t) for t in request.tools or []],
        "tool_choice": request.tool_choice,
        "settings": request.model_settings or {},
    }
    if scope:
        extra["scope"] = [list(pair) for pair in scope]
    llm_string = (
        request.model._get_llm_string()
        + AGENT_MARKER
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
            scope: names whose values (from the run's ``configurable``, then the agent's
                runtime context) become part of every key, e.g. ``("user_id",)``;
                default: the cache's own ``scope``. A call without a value calls the
                model and stores nothing (one warning).

        Per run, ``configurable["cache_control"]`` = ``{"skip": True}`` (no read, no
        write), ``{"refresh": True}`` (call the model, overwrite) or ``{"ttl": s}``.

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
            scope: Sequence[str] | str | None = None,
        ) -> None:
            super().__init__()
            self.cache = cache
            codec = getattr(cache, "codec", None)
            self.scope = (
                normalize_scope(scope) if scope is not None else getattr(codec, "scope", ())
            )
            self.hits = 0
            self.misses = 0
            self.single_flight = single_flight
            self.flight = FlightOptions(lease_ttl=lease_ttl, wait_timeout=wait_timeout)

        @property
        def name(self) -> str:
            return "ValkeyModelCache"

        def _request(self, request: Any) -> LLMRequest:
            """Scope values and ``cache_control`` of this call (read before the plan runs:
            a malformed ``cache_control`` raises to the caller)."""
            runtime = getattr(request, "runtime", None)
            return llm_request(self, self.scope, context=getattr(runtime, "context", None))

        def _structured(self, request: Any) -> Any:
            """A call with a ``response_format``: the agent parses the answer inside the
            call, so the cache goes onto the model (LangChain's own cache path, keyed on
            the same provider view, the cache's scope and ``cache_control`` applying)
            rather than around the call. Left alone: a model with its own ``cache=``
            (or ``cache=False``), and a middleware scoped differently from its cache
            (the model's cache would not see that scope)."""
            model = request.model
            codec = getattr(self.cache, "codec", None)
            if (
                not isinstance(model, BaseChatModel)
                or model.cache is not None
                or self.scope != getattr(codec, "scope", ())
            ):
                return request
            if not isinstance(self.cache, (ValkeyCache, ValkeySemanticCache)):
                # another library's cache does not read cache_control: honour it here
                if not read_control(current_config()).reads:
                    return request
            return request.override(model=model.model_copy(update={"cache": self.cache}))

        def _plan(self, request: Any, req: LLMRequest) -> Plan:
            """The whole call as one plan: ``COMPUTE`` calls the model (the handler)."""
            cache = self.cache
            ours = cache if isinstance(cache, (ValkeyCache, ValkeySemanticCache)) else None
            if not req.writes:  # skipped, or no scope value: the model, nothing stored
                yield BYPASS
                return (yield COMPUTE)
            prompt, llm_string = request_key(request, () if ours is not None else req.scope)
            if not req.reads:  # refresh: the model, then overwrite
                response = yield COMPUTE
                yield from self._store_plan(prompt, llm_string, response, req)
                flight = Flight(response, "leader")
            elif isinstance(cache, ValkeyCache) and self.single_flight:
                ttl_ms = cache.codec.entry_ttl_ms(req)
                flight = yield from flight_plan(
                    cache.codec.key(prompt, llm_string, req.scope),
                    None if ttl_ms is None else ttl_ms / 1000,
                    lambda raw: _decoded(cache, raw),
                    self.flight,
                    payload_of=lambda response: _payload(cache, response),
                )
                # the flight reads the key itself (not through cache.lookup): count here
                hit = None if flight.computed else [ChatGeneration(message=flight.value.result[0])]
                yield tally_generations((hit,), cache.cost_of, cache.pricer, llm_string)
                fresh = _cacheable(flight.value) if flight.computed else None
                if fresh is not None:  # the flight stored it (not cache._plan_update): count here
                    yield fresh_tally([ChatGeneration(message=fresh)], llm_string, cache.pricer)
            else:

                def lookup() -> Plan:
                    if ours is not None:
                        gens = yield from ours._plan_lookup(prompt, llm_string, req)
                    else:
                        gens = yield Call(cache.lookup, cache.alookup, (prompt, llm_string))
                    msg = _message_of(gens)
                    return None if msg is None else ModelResponse(result=[msg])

                def store(response: Any) -> Plan:
                    yield from self._store_plan(prompt, llm_string, response, req)

                if ours is not None and self.single_flight:
                    lease = lease_key(ours.codec.key(prompt, llm_string, req.scope))
                    flight = yield from guarded_plan(lease, lookup, store, self.flight)
                else:  # another BaseCache: its own methods, no single-flight
                    found = yield from lookup()
                    if found is not None:
                        flight = Flight(found, "hit")
                    else:
                        response = yield COMPUTE
                        yield from store(response)
                        flight = Flight(response, "leader")
            if flight.computed:
                self.misses += 1
            else:
                self.hits += 1
            return flight.value

        def _store_plan(self, prompt: str, llm_string: str, response: Any, req: LLMRequest) -> Plan:
            msg = _cacheable(response)
            if msg is None:
                return
            gens = [ChatGeneration(message=msg)]
            cache = self.cache
            if isinstance(cache, (ValkeyCache, ValkeySemanticCache)):
                yield from cache._plan_update(prompt, llm_string, gens, req)
            else:
                yield Call(cache.update, cache.aupdate, (prompt, llm_string, gens))

        def wrap_model_call(
            self, request: ModelRequest, handler: Callable[[ModelRequest], Any]
        ) -> Any:
            if request.response_format is not None:
                return handler(self._structured(request))
            plan = self._plan(request, self._request(request))
            compute = functools.partial(handler, request)
            if isinstance(self.cache, CacheCore):
                return self.cache._run(plan, "model_call", compute=compute)
            return run_plan(plan, lambda step: compute() if step is COMPUTE else _sync_call(step))

        async def awrap_model_call(
            self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[Any]]
        ) -> Any:
            if request.response_format is not None:
                return await handler(self._structured(request))
            plan = self._plan(request, self._request(request))
            compute = functools.partial(handler, request)
            if isinstance(self.cache, CacheCore):
                return await self.cache._arun(plan, "model_call", compute=compute)

            async def execute(step: Any) -> Any:
                return await (compute() if step is COMPUTE else step.async_(*step.args))

            return await arun_plan(plan, execute)

else:  # pragma: no cover

    class ModelCacheMiddleware:  # type: ignore[no-redef]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError(
                "ModelCacheMiddleware needs LangChain 1.x agents: "
                "pip install 'langgraph-valkey-cache[agents]'"
            )


def _payload(cache: ValkeyCache, response: Any) -> bytes | None:
    msg = _cacheable(response)
    return None if msg is None else cache.codec.encode([ChatGeneration(message=msg)]).encode()


def _sync_call(step: Call) -> Any:
    return step.sync(*step.args)


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


def _control_of(config: RunnableConfig | None) -> Any:
    return read_control(config if config is not None else current_config())


def _in_config(config: RunnableConfig | None, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with ``config`` as the run's config (the cache reads its scope and
    ``cache_control`` there; LangChain's ``stream`` hands a cache none)."""
    if config is None:
        return fn(*args)
    with cache_config(config):
        return fn(*args)


async def _ain_config(config: RunnableConfig | None, fn: Callable[..., Any], *args: Any) -> Any:
    if config is None:
        return await fn(*args)
    with cache_config(config):
        return await fn(*args)


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

    ``config`` (else the running runnable's) carries the cache's scope values and
    ``configurable["cache_control"]`` (skip, refresh, ttl).

    Example:
        >>> for chunk in cached_stream(model, "hi", ValkeyCache(client)):  # doctest: +SKIP
        ...     print(chunk.content, end="")
    """
    prompt, llm_string = _stream_key(model, input, stop, kwargs)
    control = _control_of(config)
    if control.reads:
        cached = _message_of(_in_config(config, cache.lookup, prompt, llm_string))
        if cached is not None:
            yield from chunks_from_message(cached, chunk_chars)
            return
    acc: AIMessageChunk | None = None
    for chunk in model.stream(input, config, stop=stop, **kwargs):
        acc = chunk if acc is None else acc + chunk
        yield chunk
    gens = _record(acc)
    if gens is not None and control.writes:
        _in_config(config, cache.update, prompt, llm_string, gens)


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
    control = _control_of(config)
    if control.reads:
        cached = _message_of(await _ain_config(config, cache.alookup, prompt, llm_string))
        if cached is not None:
            for chunk in chunks_from_message(cached, chunk_chars):
                yield chunk
            return
    acc: AIMessageChunk | None = None
    async for chunk in model.astream(input, config, stop=stop, **kwargs):
        acc = chunk if acc is None else acc + chunk
        yield chunk
    gens = _record(acc)
    if gens is not None and control.writes:
        await _ain_config(config, cache.aupdate, prompt, llm_string, gens)
