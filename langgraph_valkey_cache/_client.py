"""Client construction and the few client-shape questions every tier asks.

A client passed in by the user is used as is (never reconfigured). Clients we build
from a URL get explicit socket/connect timeouts, a blocking pool with a wait timeout
(instead of "Too many connections" under load), retries with exponential backoff on
connection errors, and ``lib-name`` set best effort.

URLs: ``valkey://``, ``valkeys://`` (TLS), ``unix://``, and the ``redis``/``rediss``
spellings. ``?cluster=true`` (or ``cluster=True``) builds a cluster client. Username
and password in the URL give ACL auth.

``local_cache=True`` (:func:`cache_client_from_url`, :func:`with_local_cache`) adds a
coherent in-process L1 on valkey-py's RESP3 client-side caching; see :class:`LocalCache`.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import os
import select
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import valkey
import valkey.asyncio as avalkey
from valkey._cache import AbstractCache
from valkey.asyncio.cluster import ValkeyCluster as AsyncValkeyCluster
from valkey.backoff import ExponentialBackoff
from valkey.cluster import ValkeyCluster
from valkey.exceptions import ConnectionError as VConnectionError
from valkey.exceptions import TimeoutError as VTimeoutError

from langgraph_valkey_cache._version import __version__

__all__ = [
    "CACHE_TIMEOUT",
    "AsyncClient",
    "LocalCache",
    "SyncClient",
    "cache_client_from_url",
    "client_from_url",
    "is_async_client",
    "is_cluster",
    "has_local_cache",
    "require_bytes_client",
    "scan_keys",
    "ascan_keys",
    "with_local_cache",
]

SyncClient = valkey.Valkey | ValkeyCluster
AsyncClient = avalkey.Valkey | AsyncValkeyCluster

LIB_NAME = "langgraph-valkey-cache"
DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_CONNECTIONS = 64
_TRUE = {"1", "true", "yes", "on"}
#: L1 defaults (``local_cache=True``): entries per pooled connection, max age in seconds.
DEFAULT_LOCAL_CACHE_SIZE = 10_000
DEFAULT_LOCAL_CACHE_MAX_AGE: float | None = 60.0


def _split_cluster_flag(url: str) -> tuple[str, bool | None]:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    flag: bool | None = None
    kept = []
    for k, v in query:
        if k == "cluster":
            flag = v.lower() in _TRUE
        else:
            kept.append((k, v))
    scheme = {"valkey": "valkey", "valkeys": "valkeys", "redis": "valkey", "rediss": "valkeys"}
    new_scheme = scheme.get(parts.scheme, parts.scheme)
    if new_scheme not in ("valkey", "valkeys", "unix"):
        raise ValueError(
            f"unsupported URL scheme {parts.scheme!r}: use valkey://, valkeys:// or unix://"
        )
    rebuilt = urlunsplit(parts._replace(scheme=new_scheme, query=urlencode(kept)))
    if not parts.netloc:  # urlunsplit turns unix:///path into unix:/path
        rebuilt = rebuilt.replace(f"{new_scheme}:", f"{new_scheme}://", 1)
    return rebuilt, flag


def client_from_url(
    url: str,
    *,
    asyncio: bool = False,
    cluster: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    retries: int = 3,
    local_cache: bool = False,
    local_cache_size: int = DEFAULT_LOCAL_CACHE_SIZE,
    local_cache_max_age: float | None = DEFAULT_LOCAL_CACHE_MAX_AGE,
    **kwargs: Any,
) -> Any:
    """Build a client with explicit timeouts and bounded retries.

    A timed-out command is never re-sent (that would multiply a stall); connection
    errors (refused, reset) are retried ``retries`` times with a short backoff. No
    health-check PINGs (valkey-py 6.2's recurse through reconnects on a dead server);
    a stale pooled connection is caught by the connection-error retry instead.

    Args:
        url: ``valkey://[user:pass@]host:port/db``, ``valkeys://...`` or ``unix://...``.
        asyncio: build a ``valkey.asyncio`` client.
        cluster: build a cluster client (also ``?cluster=true`` in the URL).
        timeout: socket, connect and pool-wait timeout in seconds.
        max_connections: pool size (blocking pool: callers wait up to ``timeout``).
        retries: retries of a command that hit a connection error (0: none).
        local_cache: add the coherent in-process L1 (see :func:`cache_client_from_url`).
        local_cache_size: its entries per pooled connection.
        local_cache_max_age: its entries' maximum age in seconds (``None``: no limit).
        **kwargs: passed to the client constructor.
    """
    clean_url, flag = _split_cluster_flag(url)
    use_cluster = cluster if cluster is not None else bool(flag)
    if local_cache and use_cluster:
        raise ValueError(_NO_CLUSTER_L1)
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "lib_name": LIB_NAME,
        "lib_version": __version__,
        "health_check_interval": 0,
    }
    backoff = ExponentialBackoff(cap=min(1.0, timeout), base=min(0.05, timeout / 4))
    if asyncio:
        from valkey.asyncio.retry import Retry as ARetry

        options["retry"] = ARetry(backoff, retries)
    else:
        from valkey.retry import Retry

        options["retry"] = Retry(backoff, retries)
    options["retry_on_error"] = [VConnectionError]
    options["retry_on_timeout"] = False
    if local_cache:
        options.update(_local_cache_kwargs(local_cache_size, local_cache_max_age))
    options.update(kwargs)
    if use_cluster:
        options.pop("health_check_interval", None)
        options.pop("retry_on_error", None)
        options.pop("retry_on_timeout", None)
        options.pop("retry", None)
        # the cluster client retries timeouts too (reinitialising its slot map): at
        # most once for the checkpointer, never for a cache (retries=0)
        options.setdefault("cluster_error_retry_attempts", min(retries, 1))
        if asyncio:
            options.setdefault("connection_error_retry_attempts", min(retries, 1))
            return AsyncValkeyCluster.from_url(
                clean_url, max_connections=max_connections, **options
            )
        pool_class = functools.partial(valkey.BlockingConnectionPool, timeout=timeout)
        return ValkeyCluster.from_url(
            clean_url,
            max_connections=max_connections,
            connection_pool_class=pool_class,
            **options,
        )
    if asyncio:
        pool = avalkey.BlockingConnectionPool.from_url(
            clean_url, max_connections=max_connections, timeout=timeout, **options
        )
        if local_cache:
            pool.connection_class = _l1_connection_class(pool.connection_class)  # type: ignore[arg-type]
            return _AsyncL1Valkey.from_pool(pool)
        return avalkey.Valkey.from_pool(pool)
    spool_class = _L1BlockingPool if local_cache else valkey.BlockingConnectionPool
    spool = spool_class.from_url(
        clean_url, max_connections=max_connections, timeout=timeout, **options
    )
    if local_cache:
        spool.connection_class = _l1_connection_class(spool.connection_class)
        return _L1Valkey.from_pool(spool)
    return valkey.Valkey.from_pool(spool)


#: The caches' default latency budget per operation, in seconds.
CACHE_TIMEOUT = 0.25


def cache_client_from_url(
    url: str,
    *,
    asyncio: bool = False,
    timeout: float = CACHE_TIMEOUT,
    local_cache: bool = False,
    local_cache_size: int = DEFAULT_LOCAL_CACHE_SIZE,
    local_cache_max_age: float | None = DEFAULT_LOCAL_CACHE_MAX_AGE,
    **kwargs: Any,
) -> Any:
    """A client for caches: the latency budget as socket, connect and pool timeout, and
    no retries (a cache that fails falls back to the model or tool at once).

    ``local_cache=True`` adds the coherent in-process L1 (:class:`LocalCache`): up to
    ``local_cache_size`` replies per pooled connection, each at most
    ``local_cache_max_age`` seconds old (``None``: until the server invalidates it).
    Standalone servers only (RESP3, Valkey/Redis >= 6).
    """
    kwargs.setdefault("retries", 0)
    return client_from_url(
        url, asyncio=asyncio, timeout=timeout, local_cache=local_cache,
        local_cache_size=local_cache_size, local_cache_max_age=local_cache_max_age, **kwargs,
    )  # fmt: skip


# --- the L1: valkey-py client-side caching (RESP3 CLIENT TRACKING), made coherent -----------

#: The reads served locally: the caches' entry reads (a GET, a node cache MGET).
_L1_COMMANDS = ("GET", "MGET")
_NO_CLUSTER_L1 = (
    "local_cache=True needs a standalone server: valkey-py 6.2 tracks keys per "
    "connection, and a cluster client's per-node connections are not supported yet"
)
_IMMUTABLE = (bytes, str, int, float, type(None))
#: Loop iterations an async L1 lookup yields at most for data still on the socket.
_SETTLE_YIELDS = 4


class _Flat(tuple):  # type: ignore[type-arg]
    """A list reply of immutable items (bytes, None...), kept as a tuple: a caller's
    change to the list it gets can't reach the cache, so a shallow copy serves it."""

    __slots__ = ()


class LocalCache(AbstractCache):
    """The L1 of one connection: a bounded LRU of read replies, dropped on invalidation.

    Coherence comes from the server: the connection runs ``CLIENT TRACKING ON`` (RESP3),
    so the server remembers every key it read and pushes an invalidation on that
    connection when any client writes, deletes, expires or evicts one of them.
    valkey-py reads pending pushes on the connection before every local lookup
    (``_get_from_local_cache``), so once an invalidation has arrived the old reply is
    never served. Each pooled connection has its own ``LocalCache``: a cache shared by
    several connections would serve a key one connection read after the invalidation
    went to another. A dropped connection flushes its cache (its pushes are lost).

    Why not valkey-py's own ``_LocalCache``: its LRU eviction leaves the evicted
    command in its TTL list and key index (both grow without bound under churn) and
    ``copy.deepcopy``-s every reply. This one evicts from every index, returns
    immutable replies as they are, and never stores a nil reply (a miss is never
    served locally: the caches then compute, and the next read asks the server).

    ``max_age`` (seconds) bounds how long a reply is served without asking the server:
    a key past its TTL is invalidated only once the server deletes it (lazily on
    access, or by its active expiry cycle, which may lag on a large keyspace).
    """

    def __init__(self, max_size: int = DEFAULT_LOCAL_CACHE_SIZE, max_age: float | None = None):
        if max_size < 1:
            raise ValueError("local_cache_size must be >= 1")
        if max_age is not None and max_age <= 0:
            raise ValueError("local_cache_max_age must be > 0 seconds (or None)")
        self.max_size = max_size
        self.max_age = max_age
        # command -> (reply, keys, stored at); key -> commands that read it
        self._entries: OrderedDict[Any, tuple[Any, tuple[str, ...], float]] = OrderedDict()
        self._by_key: dict[str, set[Any]] = {}
        # the async client's connections are used by one task at a time, the sync ones
        # by one thread; the lock only guards a cache shared on purpose
        self._lock = threading.Lock()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        # valkey-py tests ``if self.client_cache:`` to turn tracking on: an empty cache
        # must count as present
        return True

    def set(self, command: Any, response: Any, keys_in_command: Any) -> None:
        if response is None:
            return
        keys = tuple(k.decode() if isinstance(k, bytes) else str(k) for k in keys_in_command)
        if type(response) is list and all(isinstance(r, _IMMUTABLE) for r in response):
            response = _Flat(response)  # an MGET reply: served as a new list, no deepcopy
        with self._lock:
            if command in self._entries:
                self._drop(command)
            while len(self._entries) >= self.max_size:
                self._drop(next(iter(self._entries)))
            self._entries[command] = (response, keys, time.monotonic())
            for key in keys:
                self._by_key.setdefault(key, set()).add(command)

    def get(self, command: Any) -> Any:
        entry = self._entries.get(command)
        if entry is None:
            return None
        reply, _, stored_at = entry
        if self.max_age is not None and time.monotonic() - stored_at > self.max_age:
            with self._lock:
                self._drop(command)
            return None
        self._entries.move_to_end(command)
        self.hits += 1
        if isinstance(reply, _IMMUTABLE):
            return reply
        return list(reply) if type(reply) is _Flat else copy.deepcopy(reply)

    def _drop(self, command: Any) -> None:
        entry = self._entries.pop(command, None)
        if entry is None:
            return
        for key in entry[1]:
            commands = self._by_key.get(key)
            if commands is not None:
                commands.discard(command)
                if not commands:
                    del self._by_key[key]

    def delete_command(self, command: Any) -> None:
        with self._lock:
            self._drop(command)

    def delete_commands(self, commands: Any) -> None:
        with self._lock:
            for command in commands:
                self._drop(command)

    def flush(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_key.clear()

    def invalidate_key(self, key: Any) -> None:
        name = key.decode() if isinstance(key, bytes) else str(key)
        with self._lock:
            for command in list(self._by_key.get(name, ())):
                self._drop(command)


def _local_cache_kwargs(size: int, max_age: float | None) -> dict[str, Any]:
    LocalCache(size, max_age)  # validate now, not at the first connection
    return {
        "protocol": 3,
        "cache_enabled": True,
        # only our entry reads: a short allow list (valkey-py scans it per command)
        "cache_allow_list": list(_L1_COMMANDS),
        "cache_deny_list": [],
        "lgv_local_cache": (size, max_age),
    }


@functools.cache
def _l1_connection_class(base: Any) -> Any:
    """``base`` (TCP, TLS or unix, sync or async) with a :class:`LocalCache` of its own."""
    if getattr(base, "_lgv_l1", False):
        return base

    class WithLocalCache(base):  # type: ignore[misc]
        _lgv_l1 = True

        def __init__(self, *args: Any, lgv_local_cache: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            size, max_age = lgv_local_cache or (DEFAULT_LOCAL_CACHE_SIZE, None)
            self.client_cache = LocalCache(size, max_age)

        if inspect.iscoroutinefunction(getattr(base, "_get_from_local_cache", None)):

            async def _get_from_local_cache(self, command: Any) -> Any:
                # valkey.asyncio only looks at its read buffer: a connection the server
                # closed would go on serving replies whose invalidations can no longer
                # arrive. Drop it (disconnect flushes the L1) and let the command go to
                # the server, which reconnects or fails inside valkey-py's own cleanup.
                reader = getattr(self, "_reader", None)
                if reader is not None and reader.at_eof():
                    await self.disconnect()
                    return None
                # and only at what the loop has moved into that buffer, which it does
                # when the running task yields: an invalidation still on the socket
                # would not count yet. Yield until the socket is empty (a few times
                # at most: the loop reads a ready socket on its next iterations)
                for _ in range(_SETTLE_YIELDS):
                    if not self._lgv_socket_pending():
                        break
                    await asyncio.sleep(0)
                try:
                    return await super()._get_from_local_cache(command)
                except (VConnectionError, VTimeoutError, OSError):
                    await self.disconnect()
                    return None

            def _lgv_socket_pending(self) -> bool:
                writer = getattr(self, "_writer", None)
                sock = writer.get_extra_info("socket") if writer is not None else None
                if sock is None:
                    return False
                try:
                    return bool(select.select((sock,), (), (), 0)[0])
                except (OSError, ValueError):  # can't tell: valkey-py's own check only
                    return False

            def local_reply(self, command: Any, drain: bool = False) -> Any:
                """The reply this connection's L1 holds for ``command``, or None, and
                None whenever anything is pending (on the socket or in the buffers):
                never awaits, never reads (``drain`` is ignored: reading needs the
                loop, :meth:`_get_from_local_cache` does it)."""
                reader = getattr(self, "_reader", None)
                if reader is None or reader.at_eof():
                    return None
                buffered = getattr(reader, "_buffer", None)
                if (
                    buffered is None
                    or len(buffered)
                    or getattr(self._parser, "_buffer", None)
                    or self._lgv_socket_pending()
                ):
                    return None
                return self.client_cache.get(command)

        else:

            def _get_from_local_cache(self, command: Any) -> Any:  # type: ignore[misc]
                # valkey-py calls this before the try/finally that returns the connection
                # to the pool: a connection the server closed raises here and leaked its
                # pool slot. Its pushes are lost (disconnect flushed the L1): a miss, so
                # the command goes to the server and reconnects or fails there.
                try:
                    return super()._get_from_local_cache(command)
                except (VConnectionError, VTimeoutError, OSError):
                    self.disconnect()
                    return None

        if not inspect.iscoroutinefunction(getattr(base, "_get_from_local_cache", None)):

            def local_reply(self, command: Any, drain: bool = True) -> Any:
                """The reply this connection's L1 holds for ``command`` once every
                pending invalidation is read, or None. Never sends anything: a
                connection that is closed, or fails while reading, is dropped (its
                L1 flushed) and None returned. ``drain=False``: None while anything
                is pending, so it never reads (never blocks: for an event loop)."""
                sock = self._sock
                if sock is None:  # not connected: its L1 was flushed
                    return None
                # what can_read() answers, inlined (this is the whole cost of a hit
                # besides the lookup): pushes already in the parser's buffer, or on
                # the socket
                buffer = getattr(self._parser, "_buffer", None)
                try:
                    pending = buffer is None or bool(
                        buffer.unread_bytes() or select.select((sock,), (), (), 0)[0]
                    )
                except (OSError, ValueError):  # e.g. a descriptor select() can't take
                    pending = True
                if pending:
                    if not drain:
                        return None
                    try:
                        while self.can_read():
                            self.read_response(push_request=True)
                    except (VConnectionError, VTimeoutError, OSError):
                        self.disconnect()
                        return None
                return self.client_cache.get(command)

            def can_read(self, timeout: float = 0) -> bool:
                # valkey-py polls for pending invalidations before every lookup (and the
                # pool once more at checkout) with a zero-timeout recv that raises, after
                # two settimeout calls; a select() says "nothing pending" in ~1 us
                if timeout == 0 and self._sock is not None:
                    buffer = getattr(self._parser, "_buffer", None)
                    if buffer is not None and not buffer.unread_bytes():
                        try:
                            readable, _, _ = select.select((self._sock,), (), (), 0)
                        except (OSError, ValueError):
                            readable = [True]  # let valkey-py's own check report it
                        if not readable:
                            return False
                return bool(super().can_read(timeout))

    WithLocalCache.__name__ = WithLocalCache.__qualname__ = base.__name__ + "WithLocalCache"
    return WithLocalCache


class _L1BlockingPool(valkey.BlockingConnectionPool):
    """valkey-py's blocking pool (``max_connections``, callers wait up to ``timeout``),
    rebuilt for the L1's hot path, where a pool checkout and release cost more than the
    local lookup itself (~3 us with the pool's queue and its conditions, ~0.7 us here):

    - idle connections sit in a LIFO ``deque`` (atomic ``pop``/``append``): a free
      connection is taken without a lock, and the most recently used one (whose L1 is
      the warmest) comes first; a lock and condition are used only to open a new
      connection or to wait for one;
    - no "connection has unread data" check at checkout: with tracking on, that data is
      pending invalidations, and 6.2's blocking pool (unlike its plain pool) then
      reconnects, flushing the whole L1 on every write to any key it holds. The pushes
      are read before the next lookup or reply instead.
    """

    def reset(self) -> None:
        # not BlockingConnectionPool.reset: no queue of placeholders (a user's plain
        # pool may allow 2**31 connections)
        self._idle: deque[Any] = deque()
        self._opened = 0  # connections made, at most max_connections
        self._cond = threading.Condition(threading.Lock())
        self._waiting = 0
        self._connections: list[Any] = []
        self.pid = os.getpid()  # last, as in valkey-py (see ConnectionPool._checkpid)

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        if self.pid != os.getpid():
            self._checkpid()
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = self._wait_for_connection()
        try:
            connection.connect()
        except BaseException:
            self.release(connection)
            raise
        return connection

    def _wait_for_connection(self) -> Any:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        with self._cond:
            # counted before looking again: a release that misses this look sees the
            # count and notifies (GIL order), so no wake-up is lost
            self._waiting += 1
            try:
                while True:
                    try:
                        return self._idle.pop()
                    except IndexError:
                        pass
                    if self._opened < self.max_connections:
                        self._opened += 1
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise VConnectionError("No connection available.")
                    self._cond.wait(remaining)
            finally:
                self._waiting -= 1
        try:
            return self.make_connection()
        except BaseException:
            with self._cond:
                self._opened -= 1
                self._cond.notify()
            raise

    def take_idle(self) -> Any:
        """An idle connection, or None (none idle, or after a fork): never opens or
        waits for one. Hand it back with :meth:`put_back`."""
        if self.pid != os.getpid():
            return None
        try:
            return self._idle.pop()
        except IndexError:
            return None

    def release(self, connection: Any) -> None:
        if self.pid != os.getpid():
            self._checkpid()
        if not self.owns_connection(connection):  # a parent's connection after a fork
            connection.disconnect()
            return
        self.put_back(connection)

    def put_back(self, connection: Any) -> None:
        """Return a connection :meth:`take_idle` just gave (no fork check again)."""
        self._idle.append(connection)
        if self._waiting:
            with self._cond:
                self._cond.notify()

    def idle_count(self) -> int:
        """Connections made and not in use (for tests)."""
        return len(self._idle)


def _read_keys(args: tuple[Any, ...], options: dict[str, Any]) -> None:
    # valkey-py caches a reply only when the caller names its keys (client.get() does,
    # execute_command() callers such as the fail-open executor don't)
    if args and args[0] in _L1_COMMANDS and "keys" not in options:
        options["keys"] = args[1:]


class _L1Valkey(valkey.Valkey):
    """A sync client whose GET/MGET through ``execute_command`` use the L1."""

    def local_reply(self, *args: Any, drain: bool = True) -> Any:
        """The L1's reply to ``args`` (a GET or MGET), or None when it has none: no
        round trip, no connect, no wait for a busy pool (any of those is left to the
        caller's own command, run under its fault handling). ``drain=False``: also
        None when invalidations are pending (reading them could block)."""
        pool = self.connection_pool
        conn = pool.take_idle()
        if conn is None:
            return None
        try:
            return conn.local_reply(args, drain)
        finally:
            pool.put_back(conn)

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if options or self.connection is not None or args[0] not in _L1_COMMANDS:
            _read_keys(args, options)
            return super().execute_command(*args, **options)
        # the executor's entry read: valkey-py's execute_command minus its option
        # handling (~1 us of a ~5 us local hit), with the lookup inside the try that
        # returns the connection to the pool
        pool = self.connection_pool
        conn = pool.get_connection(args[0])
        try:
            reply = conn.local_reply(args)
            if reply is not None:
                return reply
            response = conn.retry.call_with_retry(
                lambda: self._send_command_parse_response(conn, args[0], *args),
                lambda error: self._disconnect_raise(conn, error),
            )
            conn._add_to_local_cache(args, response, args[1:])
            return response
        finally:
            pool.release(conn)


class _AsyncL1Valkey(avalkey.Valkey):
    """The async twin of :class:`_L1Valkey`."""

    def local_reply(self, *args: Any, drain: bool = False) -> Any:
        """The L1's reply to ``args`` (a GET or MGET) from an idle connection, or None
        (none idle, nothing held, or anything pending): a plain method, it never
        awaits, so no other task sees the connection leave the pool's idle list."""
        idle = getattr(self.connection_pool, "_available_connections", None)
        if not idle:
            return None
        conn = idle.pop()
        try:
            return conn.local_reply(args)
        finally:
            idle.append(conn)

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        _read_keys(args, options)
        return await super().execute_command(*args, **options)


def has_local_cache(client: Any) -> bool:
    """Whether ``client`` serves reads from a :class:`LocalCache`."""
    return isinstance(client, (_L1Valkey, _AsyncL1Valkey))


def with_local_cache(
    client: Any,
    *,
    size: int = DEFAULT_LOCAL_CACHE_SIZE,
    max_age: float | None = DEFAULT_LOCAL_CACHE_MAX_AGE,
) -> Any:
    """``client`` itself if it has the L1 already, else a new client to the same server
    with the same options (its own pool) and the L1 (``client`` is not changed).
    What ``local_cache=True`` on a cache does with the client it is given."""
    if client is None or has_local_cache(client):
        return client
    if is_cluster(client):
        raise ValueError(_NO_CLUSTER_L1)
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(_local_cache_kwargs(size, max_age))
    if kwargs.get("decode_responses"):
        raise ValueError("local_cache=True needs a client with decode_responses=False")
    options: dict[str, Any] = {"max_connections": pool.max_connections}
    pool_class: Any = type(pool)
    if isinstance(pool, (valkey.BlockingConnectionPool, avalkey.BlockingConnectionPool)):
        options["timeout"] = pool.timeout
    if not is_async_client(client):
        # ours, also for a plain pool: never waits then (it raises when full, as the
        # plain pool does)
        options.setdefault("timeout", 0)
        pool_class = _L1BlockingPool
    new_pool = pool_class(
        connection_class=_l1_connection_class(pool.connection_class), **options, **kwargs
    )
    cls = _AsyncL1Valkey if is_async_client(client) else _L1Valkey
    return cls.from_pool(new_pool)


def local_cache_stats(client: Any) -> dict[str, int]:
    """``{"entries": n, "hits": n}`` over the L1s of ``client``'s idle and busy connections
    (a snapshot; for tests and the benchmark)."""
    pool = client.connection_pool
    conns: list[Any] = []
    for name in ("_available_connections", "_in_use_connections", "_connections"):
        found = getattr(pool, name, None)
        if found:
            conns.extend(c for c in found if c is not None)
    caches = {id(c.client_cache): c.client_cache for c in conns if getattr(c, "client_cache", None)}
    return {
        "entries": sum(len(c) for c in caches.values()),
        "hits": sum(c.hits for c in caches.values()),
    }


def require_bytes_client(client: Any, component: str, why: str) -> None:
    """Refuse a client built with ``decode_responses=True``: our values are binary."""
    try:
        decoding = bool(client.get_encoder().decode_responses)
    except Exception:  # a client without an encoder: assume raw bytes
        decoding = False
    if decoding:
        raise ValueError(
            f"{component} needs a client with decode_responses=False: {why} "
            "(build one with langgraph_valkey_cache.client_from_url)"
        )


def is_cluster(client: Any) -> bool:
    return isinstance(client, (ValkeyCluster, AsyncValkeyCluster))


def is_async_client(client: Any) -> bool:
    return isinstance(client, (avalkey.Valkey, AsyncValkeyCluster))


def scan_keys(client: SyncClient, match: str, count: int = 1000) -> Iterator[bytes | str]:
    """SCAN every primary (one node when standalone) for ``match``. Never KEYS."""
    if isinstance(client, ValkeyCluster):
        for node in client.get_primaries():
            conn = client.get_valkey_connection(node)
            yield from conn.scan_iter(match=match, count=count)
    else:
        yield from client.scan_iter(match=match, count=count)


async def ascan_keys(client: AsyncClient, match: str, count: int = 1000) -> AsyncIterator[Any]:
    """Async twin of :func:`scan_keys`."""
    if isinstance(client, AsyncValkeyCluster):
        for node in client.get_primaries():
            cursor: int = 0
            while True:
                reply = await client.execute_command(
                    "SCAN", cursor, "MATCH", match, "COUNT", count, target_nodes=node
                )
                cursor, keys = reply
                if isinstance(cursor, dict):  # the cluster client keys cursors by node
                    (cursor,) = cursor.values()
                for key in keys:
                    yield key
                if int(cursor) == 0:
                    break
    else:
        async for key in client.scan_iter(match=match, count=count):
            yield key


async def aclose_client(client: Any) -> None:
    close = getattr(client, "aclose", None) or client.close
    await close()
