"""Helpers for tests and benchmarks: count what a call sends to the server.

``count_commands()`` instruments valkey-py's connection classes (sync and async)
while the block runs: every ``send_packed_command`` is one round trip (a pipeline
is one), and every packed command is recorded by name. What a new connection sends
to set itself up (``HELLO``, ``AUTH``, ``CLIENT SETINFO``...) is counted apart, in
``handshakes``: a cluster client may open a connection to another node at any time,
and that is not the operation's cost. Real server, real client:
nothing is faked, only observed.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import valkey.asyncio.connection as aconn
import valkey.connection as sconn
from langchain_core.embeddings import Embeddings

from langgraph_valkey_cache import _wire

__all__ = ["CommandLog", "HashingEmbeddings", "count_commands"]


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
    Implements LangChain's ``Embeddings`` interface (sync and async) and counts calls
    in ``calls`` so tests can check what was embedded.
    """

    def __init__(self, dims: int = 64, seed: int = 0) -> None:
        self.dims = dims
        self.seed = seed
        self.calls = 0
        self.texts_embedded = 0

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
        return self.embed_documents([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        return self.embed_query(text)
