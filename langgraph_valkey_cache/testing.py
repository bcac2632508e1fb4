"""Helpers for tests and benchmarks: count what a call sends to the server, embed and
chat offline.

``count_commands()`` instruments valkey-py's connection classes (sync and async)
while the block runs: every ``send_packed_command`` is one round trip (a pipeline
is one), and every packed command is recorded by name. What a new connection sends
to set itself up (``HELLO``, ``AUTH``, ``CLIENT SETINFO``...) is counted apart, in
``handshakes``: a cluster client may open a connection to another node at any time,
and that is not the operation's cost. Real server, real client:
nothing is faked, only observed.

``HashingEmbeddings`` and ``ScriptedModel`` stand in for an embedding model and a chat
model, so graphs that use the caches can be tested without a network or an API key.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import valkey.asyncio.connection as aconn
import valkey.connection as sconn
from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.utils import message_chunk_to_message
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr, SkipValidation

from langgraph_valkey_cache import _wire

__all__ = ["CommandLog", "HashingEmbeddings", "ScriptedModel", "count_commands", "join_chunks"]


@dataclass
class CommandLog:
    round_trips: int = 0
    commands: list[str] = field(default_factory=list)
    handshakes: int = 0

    @property
    def n_commands(self) -> int:
        return len(self.commands)

    def reset(self) -> None:
        self.round_trips = 0
        self.commands.clear()
        self.handshakes = 0


_lock = threading.Lock()


def _name(args: tuple[Any, ...]) -> str:
    first = args[0]
    name = first.decode() if isinstance(first, bytes) else str(first)
    return name.split(" ")[0].upper()


@contextmanager
def count_commands() -> Iterator[CommandLog]:
    """Record round trips and command names sent by any valkey-py client."""
    log = CommandLog()
    patched: list[tuple[type, str, Any]] = []

    def patch(cls: type, attr: str, make: Any) -> None:
        orig = cls.__dict__[attr]
        patched.append((cls, attr, orig))
        setattr(cls, attr, make(orig))

    def count_trip(conn: Any) -> None:
        with _lock:
            if getattr(conn, "_lvc_handshake", False):
                log.handshakes += 1
            else:
                log.round_trips += 1

    def wrap_send(orig: Any) -> Any:
        def send(self: Any, *a: Any, **k: Any) -> Any:
            count_trip(self)
            return orig(self, *a, **k)

        return send

    def wrap_asend(orig: Any) -> Any:
        async def send(self: Any, *a: Any, **k: Any) -> Any:
            count_trip(self)
            return await orig(self, *a, **k)

        return send

    def wrap_connect(orig: Any) -> Any:
        def on_connect(self: Any, *a: Any, **k: Any) -> Any:
            self._lvc_handshake = True
            try:
                return orig(self, *a, **k)
            finally:
                self._lvc_handshake = False

        return on_connect

    def wrap_aconnect(orig: Any) -> Any:
        async def on_connect(self: Any, *a: Any, **k: Any) -> Any:
            self._lvc_handshake = True
            try:
                return await orig(self, *a, **k)
            finally:
                self._lvc_handshake = False

        return on_connect

    def wrap_pack(orig: Any) -> Any:
        # sync: send_command(*args); async: pack_command(*args) (send_command and
        # pipelines both go through it). Either way args[0] is the command name.
        def pack(self: Any, *args: Any, **kwargs: Any) -> Any:
            if not getattr(self, "_lvc_handshake", False):
                with _lock:
                    log.commands.append(_name(args))
            return orig(self, *args, **kwargs)

        return pack

    def wrap_packs(orig: Any) -> Any:
        def packs(self: Any, commands: Any) -> Any:
            commands = list(commands)
            with _lock:
                log.commands.extend(_name(tuple(c)) for c in commands)
            return orig(self, commands)

        return packs

    previous_record = _wire._record

    def record(args: tuple[Any, ...]) -> None:  # commands packed by our lean path
        with _lock:
            log.commands.append(_name(args))
        if previous_record is not None:  # an enclosing count_commands
            previous_record(args)

    previous_trip = _wire._trip

    def trip(conn: Any) -> None:  # round trips of the async lean path
        count_trip(conn)
        if previous_trip is not None:
            previous_trip(conn)

    with _lock:
        _wire._record = record
        _wire._trip = trip
        patch(sconn.AbstractConnection, "on_connect", wrap_connect)
        patch(aconn.AbstractConnection, "on_connect", wrap_aconnect)
        patch(sconn.AbstractConnection, "pack_commands", wrap_packs)
        patch(sconn.AbstractConnection, "send_packed_command", wrap_send)
        patch(aconn.AbstractConnection, "send_packed_command", wrap_asend)
        patch(sconn.AbstractConnection, "send_command", wrap_pack)
        patch(aconn.AbstractConnection, "pack_command", wrap_pack)
    try:
        yield log
    finally:
        with _lock:
            _wire._record = previous_record
            _wire._trip = previous_trip
            for cls, attr, orig in reversed(patched):
                setattr(cls, attr, orig)


class HashingEmbeddings(Embeddings):
    """Deterministic offline embeddings for tests, demos and benchmarks.

    A seeded hashed bag of words (lower-cased word unigrams and character
    trigrams), L2-normalised: texts sharing words are close in cosine distance,
    the same text always gives the same vector, and no model or network is needed.
    Implements LangChain's ``Embeddings`` interface (sync and async) and counts what
    it was asked so tests can check what was embedded: ``calls`` (every call),
    ``texts_embedded`` (texts, over all calls) and ``queries`` (``embed_query`` and
    ``aembed_query`` calls alone).
    """

    def __init__(self, dims: int = 64, seed: int = 0) -> None:
        self.dims = dims
        self.seed = seed
        self.calls = 0
        self.texts_embedded = 0
        self.queries = 0

    def _vector(self, text: str) -> list[float]:
        vec = [0.0] * self.dims
        words = re.findall(r"[a-z0-9]+", text.lower())
        grams = words + [w[i : i + 3] for w in words for i in range(max(1, len(w) - 2))]
        for g in grams:
            h = hashlib.blake2b(f"{self.seed}:{g}".encode(), digest_size=8).digest()
            idx = int.from_bytes(h[:4], "little") % self.dims
            sign = 1.0 if h[4] & 1 else -1.0
            vec[idx] += sign * (2.0 if g in words else 1.0)
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        self.texts_embedded += len(texts)
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        self.queries += 1
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        return self.embed_query(text)


Reply = AIMessage | str
"""What a :class:`ScriptedModel`'s script answers: a message, or its text."""


class _CallCounter:
    """Calls of a :class:`ScriptedModel`, shared by its copies (``model_copy`` is how
    LangChain and our middleware hand a model its cache)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.n = 0

    def next(self) -> int:
        with self.lock:
            self.n += 1
            return self.n


class ScriptedModel(BaseChatModel):
    """A chat model that answers from a script, to test graphs and agents offline.

    ``script`` is a list of replies (call ``n`` answers ``script[(n - 1) % len(script)]``)
    or a function of the prompt's messages (so an agent answers by its turn, whichever
    earlier turns a cache served). A reply is an ``AIMessage`` or its text.

    Every call is a new response, as a provider's is: the reply gets a fresh ``id``; and,
    where the reply sets none, the ``usage_metadata`` of call ``n`` (``10 + n`` input
    and 4 output tokens) and ``response_metadata`` with ``model_name`` and a
    ``system_fingerprint`` of ``f"fp{n}"``. So an answer replayed from a cache can be
    told from a live one, and a cache is seen not to key on what changes every call.

    ``calls`` counts the calls (thread-safe; copies of the model share the count).
    ``delay`` seconds pass before each answer (``asyncio.sleep`` in async calls), to
    test concurrent callers. Streaming yields the reply's text in ``chunk_chars``
    pieces, then one chunk with its tool calls, usage and metadata. ``bind_tools``
    returns the model itself: the script decides which tools it calls.

    Example:
        >>> model = ScriptedModel(script=["Hello.", "Bye."])
        >>> [model.invoke("hi").content for _ in range(3)], model.calls
        (['Hello.', 'Bye.', 'Hello.'], 3)
        >>> a, b = model.invoke("hi"), model.invoke("hi")
        >>> a.id != b.id and a.usage_metadata != b.usage_metadata
        True
    """

    # as given: pydantic would try to build an AIMessage from each string
    script: SkipValidation[Sequence[Reply] | Callable[[list[BaseMessage]], Reply]]
    model_name: str = "scripted-1"
    delay: float = 0.0
    chunk_chars: int = 5
    _counter: _CallCounter = PrivateAttr(default_factory=_CallCounter)

    @property
    def calls(self) -> int:
        """How many times the model was called (by this object or a copy of it)."""
        return self._counter.n

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self

    def _reply(self, messages: list[BaseMessage]) -> AIMessage:
        n = self._counter.next()
        script = self.script
        reply = script(messages) if callable(script) else script[(n - 1) % len(script)]
        msg = AIMessage(content=reply) if isinstance(reply, str) else reply
        usage = {"input_tokens": 10 + n, "output_tokens": 4, "total_tokens": 14 + n}
        meta = {"model_name": self.model_name, "system_fingerprint": f"fp{n}"}
        return msg.model_copy(
            update={
                "id": f"run-{uuid.uuid4()}",
                "usage_metadata": msg.usage_metadata or usage,
                "response_metadata": msg.response_metadata or meta,
            }
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.delay:
            time.sleep(self.delay)
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.delay:
            await asyncio.sleep(self.delay)
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages))])

    def _chunks(self, messages: list[BaseMessage]) -> Iterator[ChatGenerationChunk]:
        from langgraph_valkey_cache.cache.middleware import chunks_from_message

        for chunk in chunks_from_message(self._reply(messages), self.chunk_chars):
            yield ChatGenerationChunk(message=chunk)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        if self.delay:
            time.sleep(self.delay)
        yield from self._chunks(messages)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if self.delay:
            await asyncio.sleep(self.delay)
        for chunk in self._chunks(messages):
            yield chunk


def join_chunks(chunks: Iterable[AIMessageChunk]) -> AIMessage:
    """The message a stream of chunks adds up to (LangChain's chunk addition): to compare
    what a stream (``cached_stream``, ``model.stream``) delivered with an ``invoke``.

    Example:
        >>> join_chunks([AIMessageChunk(content="Hel"), AIMessageChunk(content="lo")]).content
        'Hello'
    """
    chunks = list(chunks)
    if not chunks:
        raise ValueError("join_chunks: no chunks")
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    message = message_chunk_to_message(total)
    if not isinstance(message, AIMessage):
        raise TypeError(f"join_chunks: the chunks add up to a {type(message).__name__}")
    return message
