"""Embedding cache on Valkey: a LangChain ``ByteStore`` and a caching ``Embeddings`` wrapper.

``ValkeyByteStore`` plugs into LangChain's ``CacheBackedEmbeddings`` (langchain-classic)::

    from langchain_classic.embeddings import CacheBackedEmbeddings
    cached = CacheBackedEmbeddings.from_bytes_store(
        embeddings, ValkeyByteStore(client), namespace=model_name, key_encoder="blake2b"
    )

``CachedEmbeddings`` does the same without the langchain-classic dependency (vectors as
raw FLOAT32 bytes, keys ``namespace`` + digest of the text) and is what the semantic cache
uses, so a repeated prompt is embedded once, across processes.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.stores import ByteStore

from langgraph_valkey_cache._client import ascan_keys, is_cluster, scan_keys
from langgraph_valkey_cache._keys import LLMCacheKeys as _Keys
from langgraph_valkey_cache._keys import digest
from langgraph_valkey_cache._telemetry import Telemetry
from langgraph_valkey_cache.cache._failopen import CACHE_ERRORS, Breaker
from langgraph_valkey_cache.cache.llm import _ClientPair

__all__ = ["CachedEmbeddings", "ValkeyByteStore", "default_namespace"]


class ValkeyByteStore(ByteStore):
    """A LangChain ``ByteStore`` on Valkey (standalone or cluster).

    Keys are stored as ``<prefix>:b:<percent-encoded key>``; ``yield_keys(prefix=...)``
    scans only this store's keys (SCAN per primary, the key prefix glob-safe).

    Args:
        client: a sync or async valkey-py client (or pass both, ``async_client=``).
        prefix: key prefix of this store.
        ttl: seconds each value lives (set in the same ``SET``), ``None`` for no expiry.
        fail_open: as a cache (the default), server errors make ``mget`` return misses
            and ``mset`` a no-op (logged, counted), and the server is then skipped for
            ``failure_cooldown`` seconds; ``False`` raises them instead.
        failure_cooldown: seconds to skip the server after an error (fail-open mode;
            0: never skip).
        breaker: a :class:`~langgraph_valkey_cache.cache._failopen.Breaker` shared with
            an owning cache (overrides ``failure_cooldown``).

    Example:
        >>> store = ValkeyByteStore(client, prefix="emb", ttl=86400)  # doctest: +SKIP
        >>> store.mset([("k", b"v")]); store.mget(["k"])  # doctest: +SKIP
        [b'v']
    """

    def __init__(
        self,
        client: Any = None,
        *,
        async_client: Any = None,
        prefix: str = "lgv:emb",
        ttl: float | None = None,
        fail_open: bool = True,
        metrics: Any = True,
        failure_cooldown: float = 5.0,
        breaker: Breaker | None = None,
    ) -> None:
        self._clients = _ClientPair(client, async_client, "ValkeyByteStore")
        self._keys = _Keys(prefix)
        self._px = None if ttl is None else max(1, int(ttl * 1000))
        self._fail_open = fail_open
        self.telemetry = Telemetry("embedding_cache", metrics=metrics)
        self.breaker = breaker or Breaker(failure_cooldown)

    def _fail(self, op: str, exc: BaseException) -> None:
        if not self._fail_open:
            raise exc
        self.breaker.fail(self.telemetry, op, exc)

    def _skip(self) -> bool:
        """True when a fail-open call should not touch the server (recent failure)."""
        return self._fail_open and not self.breaker.closed

    def _count(self, values: list[bytes | None]) -> list[bytes | None]:
        hits = sum(v is not None for v in values)
        self.telemetry.result("hit", hits)
        self.telemetry.result("miss", len(values) - hits)
        return values

    # mget: one MGET standalone; a cluster spreads keys over slots, so non-atomic MGET.
    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        names = [self._keys.blob(k) for k in keys]
        client = self._clients.sync()
        if self._skip():
            return self._count([None] * len(keys))
        with self.telemetry.operation("mget"):
            try:
                if is_cluster(client):
                    values = client.mget_nonatomic(names)
                else:
                    values = client.mget(names)
            except CACHE_ERRORS as exc:
                self._fail("mget", exc)
                return [None] * len(keys)
            return self._count(list(values))

    async def amget(self, keys: Sequence[str]) -> list[bytes | None]:
        aclient = self._clients.async_client
        if aclient is None:
            return await super().amget(keys)
        if not keys:
            return []
        names = [self._keys.blob(k) for k in keys]
        if self._skip():
            return self._count([None] * len(keys))
        with self.telemetry.operation("mget"):
            try:
                if is_cluster(aclient):
                    values = await aclient.mget_nonatomic(names)
                else:
                    values = await aclient.mget(names)
            except CACHE_ERRORS as exc:
                self._fail("mget", exc)
                return [None] * len(keys)
            return self._count(list(values))

    def _pipe_sets(self, pipe: Any, pairs: Sequence[tuple[str, bytes]]) -> int:
        n = 0
        for k, v in pairs:
            if not isinstance(v, (bytes, bytearray)):
                raise TypeError(f"ValkeyByteStore values are bytes, got {type(v).__name__}")
            pipe.set(self._keys.blob(k), v, px=self._px)
            n += len(v)
        return n

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        if not key_value_pairs:
            return
        with self.telemetry.operation("mset"):
            pipe = self._clients.sync().pipeline(transaction=False)
            n = self._pipe_sets(pipe, key_value_pairs)  # bad values raise even when skipping
            if self._skip():
                return
            try:
                pipe.execute()
            except CACHE_ERRORS as exc:
                self._fail("mset", exc)
                return
            self.telemetry.stored(n)

    async def amset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        aclient = self._clients.async_client
        if aclient is None:
            await super().amset(key_value_pairs)
            return
        if not key_value_pairs:
            return
        with self.telemetry.operation("mset"):
            pipe = aclient.pipeline(transaction=False)
            n = self._pipe_sets(pipe, key_value_pairs)
            if self._skip():
                return
            try:
                await pipe.execute()
            except CACHE_ERRORS as exc:
                self._fail("mset", exc)
                return
            self.telemetry.stored(n)

    def mdelete(self, keys: Sequence[str]) -> None:
        if keys:
            self._clients.sync().unlink(*[self._keys.blob(k) for k in keys])

    async def amdelete(self, keys: Sequence[str]) -> None:
        aclient = self._clients.async_client
        if aclient is None:
            await super().amdelete(keys)
        elif keys:
            await aclient.unlink(*[self._keys.blob(k) for k in keys])

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        for key in scan_keys(self._clients.sync(), self._keys.blob_pattern(prefix)):
            yield self._keys.blob_from_key(key)

    async def ayield_keys(self, *, prefix: str | None = None) -> AsyncIterator[str]:
        aclient = self._clients.async_client
        if aclient is None:
            async for k in super().ayield_keys(prefix=prefix):
                yield k
            return
        async for key in ascan_keys(aclient, self._keys.blob_pattern(prefix)):
            yield self._keys.blob_from_key(key)


def _pack(vector: Sequence[float]) -> bytes:
    return struct.pack(f"<{len(vector)}f", *vector)


def _unpack(raw: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


# Fields that change what a model returns for the same text (never counters or secrets).
_IDENTITY_FIELDS = (
    "model", "model_name", "model_id", "deployment", "dimensions", "dims", "dim",
    "output_dimensionality", "seed", "task_type", "normalize", "encoding_format",
)  # fmt: skip


def default_namespace(embeddings: Embeddings) -> str:
    """The class path plus the model-identifying fields that are set (``model``,
    ``dimensions``, ``seed``...). Pass ``namespace=`` yourself when a model has other
    settings that change its vectors."""
    ident = {}
    for name in _IDENTITY_FIELDS:
        value = getattr(embeddings, name, None)
        if isinstance(value, (str, int, float, bool)):
            ident[name] = value
    cls = type(embeddings)
    return f"{cls.__module__}.{cls.__qualname__}:" + ",".join(
        f"{k}={v!r}" for k, v in sorted(ident.items())
    )


class CachedEmbeddings(Embeddings):
    """Wrap an ``Embeddings`` so each distinct text is embedded once, across processes.

    Documents and queries are cached under separate namespaces (some models embed them
    differently). Vectors are stored as FLOAT32 bytes (what the FT index stores too).
    Cache failures fall back to the underlying model (the store fails open).

    Args:
        embeddings: the model to wrap.
        store: any LangChain ``ByteStore`` (usually :class:`ValkeyByteStore`).
        namespace: separates models; defaults to :func:`default_namespace` (the class
            and its model, dimensions and seed fields).

    Example:
        >>> emb = CachedEmbeddings(OpenAIEmbeddings(), ValkeyByteStore(client))  # doctest: +SKIP
    """

    def __init__(
        self, embeddings: Embeddings, store: ByteStore, *, namespace: str | None = None
    ) -> None:
        self.underlying = embeddings
        self.store = store
        self.namespace = namespace if namespace is not None else default_namespace(embeddings)

    def _key(self, kind: str, text: str) -> str:
        return f"{kind}:{digest(self.namespace, text)}"

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        keys = [self._key("d", t) for t in texts]
        found = self.store.mget(keys)
        missing = [i for i, v in enumerate(found) if v is None]
        out: list[list[float] | None] = [None if v is None else _unpack(v) for v in found]
        if missing:
            vectors = self.underlying.embed_documents([texts[i] for i in missing])
            self.store.mset([(keys[i], _pack(v)) for i, v in zip(missing, vectors, strict=True)])
            for i, v in zip(missing, vectors, strict=True):
                out[i] = list(v)
        return [v for v in out if v is not None]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        keys = [self._key("d", t) for t in texts]
        found = await self.store.amget(keys)
        missing = [i for i, v in enumerate(found) if v is None]
        out: list[list[float] | None] = [None if v is None else _unpack(v) for v in found]
        if missing:
            vectors = await self.underlying.aembed_documents([texts[i] for i in missing])
            pairs = [(keys[i], _pack(v)) for i, v in zip(missing, vectors, strict=True)]
            await self.store.amset(pairs)
            for i, v in zip(missing, vectors, strict=True):
                out[i] = list(v)
        return [v for v in out if v is not None]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_queries([text])[0]

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_queries([text]))[0]

    def embed_queries(self, texts: list[str]) -> list[list[float]]:
        """Query embeddings of many texts: one cache read, the misses embedded."""
        keys = [self._key("q", t) for t in texts]
        found = self.store.mget(keys)
        out = [None if v is None else _unpack(v) for v in found]
        new = []
        for i, v in enumerate(out):
            if v is None:
                out[i] = vec = list(self.underlying.embed_query(texts[i]))
                new.append((keys[i], _pack(vec)))
        if new:
            self.store.mset(new)
        return [v for v in out if v is not None]

    async def aembed_queries(self, texts: list[str]) -> list[list[float]]:
        keys = [self._key("q", t) for t in texts]
        found = await self.store.amget(keys)
        out = [None if v is None else _unpack(v) for v in found]
        new = []
        for i, v in enumerate(out):
            if v is None:
                out[i] = vec = list(await self.underlying.aembed_query(texts[i]))
                new.append((keys[i], _pack(vec)))
        if new:
            await self.store.amset(new)
        return [v for v in out if v is not None]
