"""Embedding cache on Valkey: a LangChain ``ByteStore`` and a caching ``Embeddings`` wrapper.

Used by the semantic cache and the store (so it sits beside them, not inside either).

``ValkeyByteStore`` plugs into LangChain's ``CacheBackedEmbeddings`` (langchain-classic)::

    from langchain_classic.embeddings import CacheBackedEmbeddings
    cached = CacheBackedEmbeddings.from_bytes_store(
        embeddings, ValkeyByteStore(client), namespace=model_name, key_encoder="blake2b"
    )

``CachedEmbeddings`` does the same without the langchain-classic dependency (vectors as
raw FLOAT32 bytes, keys ``namespace`` + digest of the text), so a repeated text is
embedded once, across processes. Its logic is one plan per call whose steps are the
store's and the model's sync or async methods (:class:`~._failopen.Call`).
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.stores import ByteStore

from langgraph_valkey_cache._cachebase import CacheCore
from langgraph_valkey_cache._client import CACHE_TIMEOUT, ascan_keys, scan_keys
from langgraph_valkey_cache._failopen import Call, Cmd, Pipe, Plan, Tally
from langgraph_valkey_cache._keys import DEFAULT_PREFIXES, digest
from langgraph_valkey_cache._keys import LLMCacheKeys as _Keys
from langgraph_valkey_cache._plans import arun_plan, run_plan

__all__ = ["CachedEmbeddings", "ValkeyByteStore", "default_namespace"]


class ValkeyByteStore(CacheCore, ByteStore):
    """A LangChain ``ByteStore`` on Valkey (standalone or cluster).

    Keys are stored as ``<prefix>:b:<percent-encoded key>``; ``yield_keys(prefix=...)``
    scans only this store's keys (SCAN per primary, the key prefix glob-safe).

    Args:
        client: a sync or async valkey-py client (or pass both, ``async_client=``).
        prefix: key prefix of this store.
        ttl: seconds each value lives (set in the same ``SET``), ``None`` for no expiry.
        fail_open: as a cache (the default), any server trouble makes ``mget`` return
            misses and ``mset`` a no-op within the budget (logged once, counted);
            ``False`` raises instead.
        timeout: latency budget per operation in seconds (see ``ValkeyCache``).

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
        prefix: str = DEFAULT_PREFIXES["embeddings"],
        ttl: float | None = None,
        fail_open: bool = True,
        metrics: Any = True,
        timeout: float = CACHE_TIMEOUT,
    ) -> None:
        self._keys = _Keys(prefix)
        self._px: tuple[Any, ...] = () if ttl is None else ("PX", max(1, int(ttl * 1000)))
        self._fail_open = fail_open
        self._init_core(
            client, async_client, tier="embedding_cache", stats_key=self._keys.stats(),
            metrics=metrics, timeout=timeout,
        )  # fmt: skip

    def _plan_mget(self, keys: Sequence[str]) -> Plan:
        names = [self._keys.blob(k) for k in keys]
        if len(names) == 1:
            values = [(yield Cmd(("GET", names[0])))]
        elif self._aexec.cluster:  # keys of many slots: one pipeline, grouped per node
            values = yield Pipe(tuple(("GET", n) for n in names))
        else:
            values = yield Cmd(("MGET", *names))
        hits = sum(v is not None for v in values)
        # each vector found is a text the model did not embed again
        yield Tally(hits=hits, misses=len(values) - hits, calls_saved=hits)
        return list(values)

    def _plan_mset(self, pairs: Sequence[tuple[str, bytes]]) -> Plan:
        cmds = []
        for k, v in pairs:
            if not isinstance(v, (bytes, bytearray)):
                raise TypeError(f"ValkeyByteStore values are bytes, got {type(v).__name__}")
            cmds.append(("SET", self._keys.blob(k), v, *self._px))
        yield Pipe(tuple(cmds)) if len(cmds) > 1 else Cmd(cmds[0])
        yield Tally(stored_bytes=sum(len(v) for _, v in pairs))

    def _plan_mdelete(self, keys: Sequence[str]) -> Plan:
        names = [self._keys.blob(k) for k in keys]
        if self._aexec.cluster:
            yield Pipe(tuple(("UNLINK", n) for n in names))
        else:
            yield Cmd(("UNLINK", *names))

    def _go(self, plan: Plan, op: str, **kwargs: Any) -> Any:
        if not self._fail_open:
            return self._run_strict(plan, op)
        return self._run(plan, op, **kwargs)

    async def _ago(self, plan: Plan, op: str, **kwargs: Any) -> Any:
        if not self._fail_open:
            return await self._arun_strict(plan, op)
        return await self._arun(plan, op, **kwargs)

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return self._go(self._plan_mget(keys), "mget", default=[None] * len(keys))

    async def amget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return await self._ago(self._plan_mget(keys), "mget", default=[None] * len(keys))

    def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        if key_value_pairs:
            self._check_values(key_value_pairs)
            self._go(self._plan_mset(key_value_pairs), "mset")

    async def amset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
        if key_value_pairs:
            self._check_values(key_value_pairs)
            await self._ago(self._plan_mset(key_value_pairs), "mset")

    @staticmethod
    def _check_values(pairs: Sequence[tuple[str, bytes]]) -> None:
        # a wrong type is the caller's bug: raise even while the server is skipped
        for _, v in pairs:
            if not isinstance(v, (bytes, bytearray)):
                raise TypeError(f"ValkeyByteStore values are bytes, got {type(v).__name__}")

    def mdelete(self, keys: Sequence[str]) -> None:
        if keys:
            self._run_strict(self._plan_mdelete(keys), "mdelete")

    async def amdelete(self, keys: Sequence[str]) -> None:
        if keys:
            await self._arun_strict(self._plan_mdelete(keys), "mdelete")

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        for key in scan_keys(self._sync_exec().client, self._keys.blob_pattern(prefix)):
            yield self._keys.blob_from_key(key)

    async def ayield_keys(self, *, prefix: str | None = None) -> AsyncIterator[str]:
        if self.aclient is None:
            for k in self.yield_keys(prefix=prefix):
                yield k
            return
        async for key in ascan_keys(self.aclient, self._keys.blob_pattern(prefix)):
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

    def _plan(self, kind: str, texts: list[str]) -> Plan:
        """Read every text's vector, embed the misses (documents: one batch call;
        queries: one call each, as the model embeds queries), store them."""
        keys = [self._key(kind, t) for t in texts]
        found = yield Call(self.store.mget, self.store.amget, (keys,))
        out: list[list[float] | None] = [None if v is None else _unpack(v) for v in found]
        missing = [i for i, v in enumerate(out) if v is None]
        if not missing:
            return out
        u = self.underlying
        if kind == "d":
            vectors = yield Call(
                u.embed_documents, u.aembed_documents, ([texts[i] for i in missing],)
            )
        else:
            vectors = []
            for i in missing:
                vectors.append((yield Call(u.embed_query, u.aembed_query, (texts[i],))))
        for i, v in zip(missing, vectors, strict=True):
            out[i] = list(v)
        pairs = [(keys[i], _pack(v)) for i, v in zip(missing, vectors, strict=True)]
        yield Call(self.store.mset, self.store.amset, (pairs,))
        return out

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return run_plan(self._plan("d", texts), _call_sync)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await arun_plan(self._plan("d", texts), _call_async)

    def embed_query(self, text: str) -> list[float]:
        return self.embed_queries([text])[0]

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_queries([text]))[0]

    def embed_queries(self, texts: list[str]) -> list[list[float]]:
        """Query embeddings of many texts: one cache read, the misses embedded."""
        return run_plan(self._plan("q", texts), _call_sync)

    async def aembed_queries(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_queries`."""
        return await arun_plan(self._plan("q", texts), _call_async)


def _call_sync(step: Call) -> Any:
    return step.sync(*step.args)


def _call_async(step: Call) -> Any:
    return step.async_(*step.args)
