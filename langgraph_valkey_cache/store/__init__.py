"""``ValkeyStore``: LangGraph's long-term memory ``BaseStore`` on a sync Valkey client."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from langgraph.store.base import Op, Result
from valkey.exceptions import NoScriptError, ResponseError

from langgraph_valkey_cache._client import client_from_url, is_async_client
from langgraph_valkey_cache._plans import run_plan
from langgraph_valkey_cache.store.base import (
    Call,
    Embed,
    Pipe,
    Plan,
    PlanOp,
    Sleep,
    ValkeyStoreBase,
    op_name,
)

__all__ = ["AsyncValkeyStore", "ValkeyStore"]


class ValkeyStore(ValkeyStoreBase):
    """LangGraph ``BaseStore`` on Valkey, with semantic search on valkey-search.

    One HASH per item, one HASH per embedded text (FLOAT32 vector, HNSW or FLAT,
    cosine), a per-namespace updated/expiry index and a namespace registry: no KEYS,
    no keyspace SCAN. Without the search module everything works and ``query=`` falls
    back to exact cosine (logged once).

    Args:
        client: a ``valkey.Valkey`` or ``valkey.cluster.ValkeyCluster``, used as is.
        index: LangGraph ``IndexConfig`` (``dims``, ``embed``, ``fields``).
        ttl: LangGraph ``TTLConfig`` (``default_ttl`` minutes, ``refresh_on_read``);
            Valkey's own expiry deletes items, no sweeper.
        prefix: key prefix (no ``{``/``}``).
        filter_fields: dotted value paths copied onto vector docs, so ``filter`` on
            them is pushed into the FT query (others are applied afterwards).
        vector_algorithm: ``"HNSW"`` (default) or ``"FLAT"``.
        vector_params: e.g. ``{"M": 16, "EF_CONSTRUCTION": 200}``; ``EF_RUNTIME`` (HNSW,
            query time, same index) overrides the default ``max(100, 2k)`` for a KNN of k.
        embedding_cache: ``True`` (a ``ValkeyByteStore`` under ``<prefix>:emb`` on the
            same client) or any LangChain ``ByteStore``: texts and queries are embedded
            through ``CachedEmbeddings``, each distinct text once across processes.
        metrics: ``False`` to turn Prometheus metrics off, or a registry.

    Commands used (for an ACL user confined to ``~<prefix>*``): ``EVALSHA``/``SCRIPT
    LOAD`` (put, delete, get, list), ``ZADD``, ``ZREM``, ``ZRANGE``, ``ZRANGEBYLEX``,
    ``PING``, and with an ``index`` ``FT.INFO``, ``FT.CREATE``, ``FT.SEARCH``.

    Example:
        ```python
        from langgraph_valkey_cache import ValkeyStore
        from langgraph_valkey_cache.testing import HashingEmbeddings

        with ValkeyStore.from_conn_string(
            "valkey://localhost:6379", index={"dims": 64, "embed": HashingEmbeddings(64)}
        ) as store:
            store.setup()
            store.put(("user", "alice"), "home", {"text": "Alice lives in Lisbon"})
            store.search(("user", "alice"), query="where does Alice live?")
        ```
    """

    def __init__(self, client: Any, **kwargs: Any) -> None:
        if is_async_client(client):
            raise TypeError(
                "ValkeyStore needs a sync client; use AsyncValkeyStore for valkey.asyncio"
            )
        self._init_store(client, **kwargs)

    @classmethod
    @contextmanager
    def from_conn_string(cls, url: str, **kwargs: Any) -> Iterator[ValkeyStore]:
        """Open a client for ``url`` (closed on exit) and yield a store on it."""
        client = client_from_url(url, **kwargs.pop("client_kwargs", {}))
        try:
            yield cls(client, **kwargs)
        finally:
            client.close()

    def setup(self) -> None:
        """Check the server; create the FT index if ``index`` is set (idempotent).

        A changed index configuration gets a new index name. On a server without the
        search module this only logs: ``query=`` will use the exact fallback.
        """
        self.client.ping()
        self._search_ok = None
        self._run(self._plan_setup(), "setup")

    # -- plan execution ---------------------------------------------------------------

    def _one(self, call: Call) -> Any:
        wire = self._wire  # the lean command path (standalone)
        if call.script:
            if wire is not None:
                return wire.evalsha(self._scripts[call.script], call.keys, call.args)
            return self._scripts[call.script](keys=list(call.keys), args=list(call.args))
        if call.each_primary:
            return self._each_primary(call.args)
        if wire is not None:
            return wire.call(call.args)
        if self._cluster and str(call.args[0]).startswith("FT."):
            # no key to route by: valkey-search answers (and fans out) from any node
            return self.client.execute_command(*call.args, target_nodes=self.client.RANDOM)
        return self.client.execute_command(*call.args)

    def _each_primary(self, args: tuple[Any, ...]) -> list[Any]:
        nodes = self.client.get_primaries() if self._cluster else [None]
        replies: list[Any] = []
        for node in nodes:
            try:
                kwargs = {} if node is None else {"target_nodes": node}
                replies.append(self.client.execute_command(*args, **kwargs))
            except ResponseError as exc:
                replies.append(exc)
        return replies

    def _pipe(self, op: Pipe) -> list[Any]:
        if len(op.calls) == 1:
            try:
                return [self._one(op.calls[0])]
            except ResponseError as exc:
                if op.return_errors:
                    return [exc]
                raise
        cmds = self._commands(op.calls)
        if self._wire is not None:
            replies = self._wire.pipeline(cmds, raise_on_error=False)
        else:
            pipe = self.client.pipeline(transaction=False)
            for cmd in cmds:
                pipe.execute_command(*cmd)
            replies = list(pipe.execute(raise_on_error=False))
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                replies[i] = self._one(op.calls[i])  # loads the script
            elif isinstance(reply, Exception) and not (
                op.return_errors and isinstance(reply, ResponseError)
            ):
                raise reply
        return replies

    def _execute(self, op: PlanOp) -> Any:
        if isinstance(op, Pipe):
            return self._pipe(op)
        if isinstance(op, Embed):
            if op.query:
                if hasattr(self.embeddings, "embed_queries"):  # CachedEmbeddings: one read
                    return self.embeddings.embed_queries(op.texts)
                return [self.embeddings.embed_query(t) for t in op.texts]
            return self.embeddings.embed_documents(op.texts)
        if isinstance(op, Sleep):
            import time

            return time.sleep(op.seconds)
        raise TypeError(f"unexpected plan step {op!r}")

    def _run(self, plan: Plan, name: str) -> Any:
        with self._telemetry.operation(name):
            return run_plan(plan, self._execute)

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        return self._run(self._plan_batch(ops), op_name(ops))

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self.batch, list(ops))


def __getattr__(name: str) -> Any:
    if name == "AsyncValkeyStore":
        from langgraph_valkey_cache.store.aio import AsyncValkeyStore

        return AsyncValkeyStore
    raise AttributeError(name)
