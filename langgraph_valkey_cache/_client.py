"""Client construction and the few client-shape questions every tier asks.

A client passed in by the user is used as is (never reconfigured). Clients we build
from a URL get explicit socket/connect timeouts, a blocking pool with a wait timeout
(instead of "Too many connections" under load), retries with exponential backoff on
connection errors, and ``lib-name`` set best effort.

URLs: ``valkey://``, ``valkeys://`` (TLS), ``unix://``, and the ``redis``/``rediss``
spellings. ``?cluster=true`` (or ``cluster=True``) builds a cluster client. Username
and password in the URL give ACL auth.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import valkey
import valkey.asyncio as avalkey
from valkey.asyncio.cluster import ValkeyCluster as AsyncValkeyCluster
from valkey.backoff import ExponentialBackoff
from valkey.cluster import ValkeyCluster
from valkey.exceptions import ConnectionError as VConnectionError

from langgraph_valkey_cache._version import __version__

__all__ = [
    "CACHE_TIMEOUT",
    "AsyncClient",
    "SyncClient",
    "cache_client_from_url",
    "client_from_url",
    "is_async_client",
    "is_cluster",
    "require_bytes_client",
    "scan_keys",
    "ascan_keys",
]

SyncClient = valkey.Valkey | ValkeyCluster
AsyncClient = avalkey.Valkey | AsyncValkeyCluster

LIB_NAME = "langgraph-valkey-cache"
DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_CONNECTIONS = 64
_TRUE = {"1", "true", "yes", "on"}


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
        **kwargs: passed to the client constructor.
    """
    clean_url, flag = _split_cluster_flag(url)
    use_cluster = cluster if cluster is not None else bool(flag)
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
        return avalkey.Valkey.from_pool(pool)
    spool = valkey.BlockingConnectionPool.from_url(
        clean_url, max_connections=max_connections, timeout=timeout, **options
    )
    return valkey.Valkey.from_pool(spool)


#: The caches' default latency budget per operation, in seconds.
CACHE_TIMEOUT = 0.25


def cache_client_from_url(
    url: str, *, asyncio: bool = False, timeout: float = CACHE_TIMEOUT, **kwargs: Any
) -> Any:
    """A client for caches: the latency budget as socket, connect and pool timeout, and
    no retries (a cache that fails falls back to the model or tool at once)."""
    kwargs.setdefault("retries", 0)
    return client_from_url(url, asyncio=asyncio, timeout=timeout, **kwargs)


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
