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

Connections still come from, and are bounded by, the client's pool: ``client.close()``
(the pool's ``disconnect``) closes idle ones too, and they reconnect on next use.
Clients with an L1 (client-side caching), cluster and async clients, and clients in
single-connection mode use their own ``execute_command`` (``wire_for`` returns None).

``testing.count_commands`` sees these commands like any other (``_record``).
"""

from __future__ import annotations

import os
import select
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import valkey
from valkey._parsers import Encoder
from valkey.exceptions import NoScriptError, ResponseError

from langgraph_valkey_cache._client import has_local_cache, is_async_client, is_cluster

__all__ = ["Wire", "wire_for"]

# testing.count_commands sets this to record the names of commands sent here
_record: Callable[[tuple[Any, ...]], None] | None = None

_IDLE_MAX = 16  # idle connections kept out of the pool per client
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


class Wire:
    """Send commands for one sync standalone client (see the module docstring)."""

    def __init__(self, client: Any) -> None:
        pool = client.connection_pool
        kw = pool.connection_kwargs
        self.pool = pool
        self.callbacks = client.response_callbacks
        encoding = kw.get("encoding", "utf-8")
        self.encoder = Encoder(encoding, kw.get("encoding_errors", "strict"), False)
        self.idle: deque[Any] = deque()
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
        if len(self.idle) < _IDLE_MAX:
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
        if _record is not None:
            _record(tuple(args))
        reply = self._exchange(pack(args, self.encoder), 1)[0]
        if isinstance(reply, ResponseError):
            raise reply
        cb = self.callbacks.get(args[0])
        return reply if cb is None else cb(reply)

    def pipeline(self, commands: Iterable[Sequence[Any]], raise_on_error: bool = True) -> list[Any]:
        """Commands in one round trip, like a non-transactional pipeline's ``execute()``:
        raises the first error after reading every reply, or (``raise_on_error=False``)
        returns each command's error in its place."""
        commands = list(commands)
        chunks: list[bytes] = []
        for args in commands:
            if _record is not None:
                _record(tuple(args))
            chunks.extend(pack(args, self.encoder))
        replies = self._exchange(chunks, len(commands))
        out = []
        for args, reply in zip(commands, replies, strict=True):
            if isinstance(reply, ResponseError):
                if raise_on_error:
                    raise reply
                out.append(reply)
                continue
            cb = self.callbacks.get(args[0])
            out.append(reply if cb is None else cb(reply))
        return out

    def evalsha(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``EVALSHA`` of ``script`` (anything with ``sha`` and ``script``, such as
        valkey-py's ``Script``); loads it once when the server answers ``NOSCRIPT``."""
        try:
            return self.call(("EVALSHA", script.sha, len(keys), *keys, *args))
        except NoScriptError:  # a restarted or failed-over server
            script.sha = self.call(("SCRIPT", "LOAD", script.script))
            if isinstance(script.sha, bytes):
                script.sha = script.sha.decode()
            return self.call(("EVALSHA", script.sha, len(keys), *keys, *args))


_wires: weakref.WeakKeyDictionary[Any, Wire | None] = weakref.WeakKeyDictionary()


def wire_for(client: Any) -> Wire | None:
    """The lean path of a sync standalone client, or None where it does not apply."""
    try:
        return _wires[client]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable: not a valkey-py client
        return None
    eligible = (
        isinstance(client, valkey.Valkey)
        and not is_cluster(client)
        and not is_async_client(client)
        and not has_local_cache(client)
        and client.connection is None
    )
    wire = Wire(client) if eligible else None
    _wires[client] = wire
    return wire
