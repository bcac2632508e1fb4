"""A lean command path for sync, standalone valkey-py clients.

Every cache hit and every checkpoint write is one round trip, and on a fast local
server valkey-py's per-command client work is about half of it: a raw ``GET`` costs
~40 us of which ~20 us is the socket. This module keeps the parts we rely on (the
client's own connections, their socket timeouts, parser, retry policy and response
callbacks) and drops the rest of the per-call cost:

- commands are packed here (bytes arguments are not re-encoded; one buffer per
  command, big values sent as their own chunks),
- connections are taken from a small idle list instead of the pool on every call
  (a ``BlockingConnectionPool`` get/release is ~10 us), with the pool's own staleness
  check (a readable idle socket means the server closed it: reconnect first),
- no client-side-cache lookups, option parsing or health-check PINGs.

Connections still come from, and are bounded by, the client's pool, and at most a
quarter of a bounded pool (16 at most) waits in the idle list, so other users of the same
client are not starved (a pool of three or fewer gets every connection back after each
call). ``client.close()``
(the pool's ``disconnect``) closes idle ones too, and they reconnect on next use.
:class:`AsyncWire` does the same for ``valkey.asyncio`` standalone clients (the pool's
lock and condition, and a task per send for its write timeout, are the costs there),
and keeps every exchange's deadline (the socket timeout, or a caller's shorter budget)
with one timer per event loop (:class:`_Deadlines`) instead of a timer per read.
Clients with an L1 (client-side caching), cluster clients and clients in
single-connection mode use their own ``execute_command`` (``wire_for`` returns None).

``testing.count_commands`` sees these commands like any other (``_record``).
"""

from __future__ import annotations

import asyncio
import os
import select
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import valkey
import valkey.asyncio as avalkey
from valkey._parsers import Encoder
from valkey.exceptions import NoScriptError, ResponseError

from langgraph_valkey_cache._client import has_local_cache, is_cluster

__all__ = ["AsyncWire", "Wire", "wire_for"]

# testing.count_commands sets these: the names of commands sent here, and the round
# trips of the async path (the sync one goes through the connection's
# send_packed_command, which it counts already)
_record: Callable[[tuple[Any, ...]], None] | None = None
_trip: Callable[[Any], None] | None = None

_IDLE_MAX = 16  # idle connections kept out of the pool per client, at most


def _idle_cap(pool: Any) -> int:
    # a quarter of a bounded pool at most, so other users of the same client keep
    # most of it (a pool of 3 or fewer: every connection goes back after each call)
    return min(_IDLE_MAX, int(getattr(pool, "max_connections", 0) or 2**31) // 4)


_BIG = 16 * 1024  # arguments at least this long are sent as their own chunk


def _arg(value: Any, encoder: Encoder) -> bytes:
    t = type(value)
    if t is bytes:
        return value  # type: ignore[no-any-return]
    if t is str:
        return value.encode(encoder.encoding, encoder.encoding_errors)  # type: ignore[no-any-return]
    if t is int:
        return b"%d" % value
    if t is float:
        return repr(value).encode()
    out = encoder.encode(value)  # bool raises DataError, as in valkey-py
    return out if type(out) is bytes else bytes(out)


def pack(args: Sequence[Any], encoder: Encoder) -> list[bytes]:
    """RESP-encode one command: one chunk, or several when an argument is big."""
    head = [b"*%d\r\n" % len(args)]
    chunks: list[bytes] = []
    for value in args:
        t = type(value)  # _arg's common cases inlined: a put has ~24 arguments
        if t is bytes:
            b = value
        elif t is str:
            b = value.encode(encoder.encoding, encoder.encoding_errors)
        else:
            b = _arg(value, encoder)
        if len(b) < _BIG:
            head.append(b"$%d\r\n%b\r\n" % (len(b), b))
        else:  # no copy of a large value into the command buffer
            head.append(b"$%d\r\n" % len(b))
            chunks.append(b"".join(head))
            chunks.append(b)
            head = [b"\r\n"]
    chunks.append(b"".join(head))
    return chunks


class _Lane:
    """What both paths keep of a client: its pool, encoder settings, callbacks."""

    def __init__(self, client: Any) -> None:
        pool = client.connection_pool
        kw = pool.connection_kwargs
        self.pool = pool
        self.callbacks = client.response_callbacks
        encoding = kw.get("encoding", "utf-8")
        self.encoder = Encoder(encoding, kw.get("encoding_errors", "strict"), False)
        self.idle: deque[Any] = deque()
        self.idle_cap = _idle_cap(pool)


class Wire(_Lane):
    """Send commands for one sync standalone client (see the module docstring)."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.pid = os.getpid()

    # -- connections ------------------------------------------------------------------

    def _take(self) -> Any:
        if self.pid != os.getpid():  # forked: the parent's sockets are not ours
            self.idle = deque()
            self.pid = os.getpid()
        try:
            conn = self.idle.pop()
        except IndexError:
            return self.pool.get_connection("_")
        sock = conn._sock
        if sock is not None:
            # the pool's check before handing out a connection: readable while idle
            # means the server closed it (or sent something unasked): start afresh
            fd = sock.fileno()
            if 0 <= fd < 1024:  # select()'s limit; past it, the parser's own check
                stale = select.select((sock,), (), (), 0)[0]
            else:
                stale = conn.can_read()
            if stale:
                conn.disconnect()
        return conn

    def _give(self, conn: Any) -> None:
        if len(self.idle) < self.idle_cap:
            self.idle.append(conn)
        else:
            self.pool.release(conn)

    def _exchange(self, chunks: list[bytes], n: int) -> list[Any]:
        conn = self._take()

        def once() -> list[Any]:
            conn.send_packed_command(chunks, False)
            replies: list[Any] = []
            for _ in range(n):
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:  # keep reading: the connection stays in step
                    replies.append(exc)
            return replies

        def failed(error: Exception) -> None:
            conn.disconnect()
            retryable = conn.retry_on_error
            if retryable is None or not isinstance(error, tuple(retryable)):
                raise error

        try:
            return conn.retry.call_with_retry(once, failed)  # type: ignore[no-any-return]
        except BaseException:
            conn.disconnect()  # a reply may still be on its way: never reuse it
            raise
        finally:
            self._give(conn)

    # -- commands ---------------------------------------------------------------------

    def call(self, args: Sequence[Any]) -> Any:
        """One command; its reply as ``client.execute_command(*args)`` returns it."""
        return self.pipeline((args,))[0]

    def pipeline(self, commands: Iterable[Sequence[Any]], raise_on_error: bool = True) -> list[Any]:
        """Commands in one round trip, like a non-transactional pipeline's ``execute()``:
        raises the first error after reading every reply, or (``raise_on_error=False``)
        returns each command's error in its place."""
        commands = list(commands)
        replies = self._exchange(_packed(commands, self.encoder), len(commands))
        return _parsed(commands, replies, self.callbacks, raise_on_error)

    def evalsha(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``EVALSHA`` of ``script`` (anything with ``sha`` and ``script``, such as
        valkey-py's ``Script``); loads it once when the server answers ``NOSCRIPT``."""
        try:
            return self.call(("EVALSHA", script.sha, len(keys), *keys, *args))
        except NoScriptError:  # a restarted or failed-over server
            script.sha = _text(self.call(("SCRIPT", "LOAD", script.script)))
            return self.call(("EVALSHA", script.sha, len(keys), *keys, *args))


class AsyncWire(_Lane):
    """:class:`Wire` for one ``valkey.asyncio`` standalone client. Idle connections are
    kept with the event loop they were opened on; one taken on another loop (a second
    ``asyncio.run``) is reset and reconnects, where valkey-py's own path would raise
    "Event loop is closed"."""

    idle: deque[tuple[Any, asyncio.AbstractEventLoop]]

    def _ready(self, loop: asyncio.AbstractEventLoop) -> Any:
        """An idle connection of this loop that is still good, taken without awaiting
        (the common case), or None: then :meth:`_take` does the rest."""
        idle = self.idle
        if idle:
            conn, home = idle[-1]
            reader = conn._reader
            if home is loop and reader is not None and not _spoiled(reader):
                idle.pop()
                return conn
        return None

    async def _take(self, loop: asyncio.AbstractEventLoop) -> Any:
        while self.idle:
            conn, home = self.idle.pop()
            if home is not loop:  # opened on another (maybe closed) loop: start afresh
                try:
                    await conn.disconnect(nowait=True)
                except RuntimeError:  # "Event loop is closed": it is dropped all the same
                    pass
                return conn
            reader = conn._reader
            if reader is not None and _spoiled(reader):
                await conn.disconnect(nowait=True)
            return conn
        return await self.pool.get_connection("_")

    async def _exchange(self, chunks: list[bytes], n: int, budget: float | None) -> list[Any]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        conn = self._ready(loop)
        if conn is None:  # from the pool, maybe a connect: bounded by a timer of its own
            if budget is None:
                conn = await self._take(loop)
            else:
                try:
                    conn = await asyncio.wait_for(self._take(loop), budget)
                except asyncio.TimeoutError:
                    raise valkey.exceptions.TimeoutError(
                        f"Timeout taking a connection within {budget} s"
                    ) from None
        limit = conn.socket_timeout
        if budget is not None and (limit is None or budget < limit):
            limit = budget
        watch = None if limit is None else _deadlines(loop)
        end = 0.0 if limit is None else start + limit

        async def once() -> list[Any]:
            if not conn.is_connected:  # a (re)connect: within what is left of the deadline
                if limit is None:
                    await conn.connect()
                else:
                    try:
                        await asyncio.wait_for(conn.connect(), max(end - loop.time(), 0.001))
                    except asyncio.TimeoutError:
                        raise valkey.exceptions.TimeoutError(
                            f"Timeout connecting to {conn._host_error()}"
                        ) from None
            if watch is not None:
                watch.add(conn, end)
            writer = conn._writer
            if _trip is not None:
                _trip(conn)
            writer.writelines(chunks)
            try:
                if writer.transport.get_write_buffer_size():  # the kernel did not take all
                    await writer.drain()
                parser = conn._parser
                replies: list[Any] = []
                for _ in range(n):
                    # the parser returns a server error in place (the connection stays in
                    # step); the deadline is the watch's, not a timer per reply
                    replies.append(await parser.read_response(disable_decoding=False))
                return replies
            except (OSError, EOFError, valkey.exceptions.ConnectionError) as exc:
                if watch is not None and watch.expired(conn):
                    raise valkey.exceptions.TimeoutError(
                        f"Timeout reading from {conn._host_error()}"
                    ) from None
                if isinstance(exc, valkey.exceptions.ConnectionError):
                    raise
                raise valkey.exceptions.ConnectionError(
                    f"Error while reading from {conn._host_error()} : {exc.args}"
                ) from exc

        async def failed(error: Exception) -> None:
            await conn.disconnect(nowait=True)
            if watch is not None:
                watch.discard(conn)
            retryable = conn.retry_on_error
            late = watch is not None and loop.time() >= end
            if late or retryable is None or not isinstance(error, tuple(retryable)):
                raise error

        try:
            replies = await conn.retry.call_with_retry(once, failed)
            if watch is not None and watch.discard(conn):  # aborted as it answered
                await conn.disconnect(nowait=True)
        except BaseException:  # cancelled by a deadline too: a reply may still come
            if watch is not None:
                watch.discard(conn)
            await conn.disconnect(nowait=True)
            raise
        finally:
            if len(self.idle) < self.idle_cap:
                self.idle.append((conn, loop))
            else:
                await self.pool.release(conn)
        return replies  # type: ignore[no-any-return]

    async def call(self, args: Sequence[Any], budget: float | None = None) -> Any:
        """One command; its reply as ``await client.execute_command(*args)`` gives it.
        ``budget``: seconds it may take in all, when shorter than the socket timeout."""
        return (await self.pipeline((args,), budget=budget))[0]

    async def pipeline(
        self,
        commands: Iterable[Sequence[Any]],
        raise_on_error: bool = True,
        budget: float | None = None,
    ) -> list[Any]:
        """:meth:`Wire.pipeline`, async; ``budget`` as in :meth:`call`."""
        commands = list(commands)
        replies = await self._exchange(_packed(commands, self.encoder), len(commands), budget)
        return _parsed(commands, replies, self.callbacks, raise_on_error)

    async def evalsha(
        self,
        script: Any,
        keys: Sequence[Any],
        args: Sequence[Any],
        budget: float | None = None,
    ) -> Any:
        """:meth:`Wire.evalsha`, async; ``budget`` as in :meth:`call`, for all of it."""
        end = None if budget is None else asyncio.get_running_loop().time() + budget
        try:
            return await self.call(("EVALSHA", script.sha, len(keys), *keys, *args), budget)
        except NoScriptError:  # a restarted or failed-over server
            sha = await self.call(("SCRIPT", "LOAD", script.script), _left(end))
            script.sha = _text(sha)
            return await self.call(("EVALSHA", script.sha, len(keys), *keys, *args), _left(end))


def _spoiled(reader: Any) -> bool:
    """The pool's check of an idle async connection: the server closed it, or sent
    something unasked (never reuse it as it is)."""
    return bool(reader.at_eof() or reader._buffer)


def _left(end: float | None) -> float | None:
    """Seconds until loop time ``end``, at least a millisecond (None: no bound)."""
    if end is None:
        return None
    return max(end - asyncio.get_running_loop().time(), 0.001)


class _Deadlines:
    """The deadlines of the exchanges in flight on one event loop, kept by one timer.

    A timer per read (``asyncio.timeout``, or a bare ``call_later`` cancelled after the
    reply) costs the loop's heap and select a timer each; an async cache hit paid two
    (the executor's budget, the socket timeout): ~20 us of a ~130 us hit, measured with
    both variants interleaved in one process. Here an exchange records its deadline (a
    dict entry) and one timer, armed at the earliest deadline in flight, aborts the
    transport of every exchange past its own: the pending read fails, the exchange
    raises ``TimeoutError`` and the connection is never reused. With one timeout per
    client a new deadline is never earlier than the armed one, so the timer is re-armed
    only when it fires (at most once per timeout), not per call."""

    __slots__ = ("at", "due", "gone", "loop", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.due: dict[Any, float] = {}  # connection -> its exchange's deadline
        self.gone: set[Any] = set()  # connections the timer aborted, until discarded
        self.timer: asyncio.TimerHandle | None = None
        self.at = float("inf")

    def add(self, conn: Any, deadline: float) -> None:
        self.due[conn] = deadline
        if deadline < self.at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(deadline, self._fire)
            self.at = deadline

    def expired(self, conn: Any) -> bool:
        return conn in self.gone

    def discard(self, conn: Any) -> bool:
        """Stop watching ``conn``; True if the timer aborted it."""
        self.due.pop(conn, None)
        if conn in self.gone:
            self.gone.discard(conn)
            return True
        return False

    def _fire(self) -> None:
        self.timer, self.at = None, float("inf")
        now = self.loop.time()
        for conn, deadline in list(self.due.items()):
            if deadline <= now:
                del self.due[conn]
                self.gone.add(conn)
                writer = conn._writer
                if writer is not None:
                    writer.transport.abort()
        if self.due:
            nxt = min(self.due.values())
            self.timer = self.loop.call_at(nxt, self._fire)
            self.at = nxt


_loop_deadlines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Deadlines] = (
    weakref.WeakKeyDictionary()
)


def _deadlines(loop: asyncio.AbstractEventLoop) -> _Deadlines:
    found = _loop_deadlines.get(loop)
    if found is None:
        found = _loop_deadlines.setdefault(loop, _Deadlines(loop))
    return found


def _text(sha: Any) -> str:
    return sha.decode() if isinstance(sha, bytes) else str(sha)


def _packed(commands: Sequence[Sequence[Any]], encoder: Encoder) -> list[bytes]:
    chunks: list[bytes] = []
    for args in commands:
        if _record is not None:
            _record(tuple(args))
        chunks.extend(pack(args, encoder))
    return chunks


def _parsed(
    commands: Sequence[Sequence[Any]],
    replies: list[Any],
    callbacks: Any,
    raise_on_error: bool = True,
) -> list[Any]:
    """Replies as valkey-py returns them: errors raised (the first) or kept in place,
    response callbacks applied."""
    out = []
    for args, reply in zip(commands, replies, strict=True):
        if isinstance(reply, ResponseError):
            if raise_on_error:
                raise reply
            out.append(reply)
            continue
        cb = callbacks.get(args[0])
        out.append(reply if cb is None else cb(reply))
    return out


_wires: weakref.WeakKeyDictionary[Any, Wire | AsyncWire | None] = weakref.WeakKeyDictionary()


def wire_for(client: Any) -> Wire | AsyncWire | None:
    """The lean path of a standalone client (a :class:`Wire` for a sync client, an
    :class:`AsyncWire` for an async one), or None where it does not apply."""
    try:
        return _wires[client]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable: not a valkey-py client
        return None
    wire: Wire | AsyncWire | None = None
    if not is_cluster(client) and not has_local_cache(client):
        if isinstance(client, valkey.Valkey) and client.connection is None:
            wire = Wire(client)
        elif isinstance(client, avalkey.Valkey) and client.single_connection_client is False:
            wire = AsyncWire(client)
    _wires[client] = wire
    return wire
