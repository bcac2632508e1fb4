"""``ValkeySaver``: the synchronous LangGraph checkpointer on plain Valkey."""

from __future__ import annotations

import asyncio
import builtins
import functools
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
)
from valkey.exceptions import NoScriptError

from langgraph_valkey_cache._client import client_from_url, is_async_client, is_cluster, scan_keys
from langgraph_valkey_cache._plans import iter_plan, run_plan
from langgraph_valkey_cache._wire import wire_for
from langgraph_valkey_cache.checkpoint.base import (
    Op,
    Plan,
    ScanKeys,
    ScanThreads,
    Script,
    TTLConfig,
    ValkeySaverBase,
)

__all__ = ["ValkeySaver", "TTLConfig"]

T = TypeVar("T")


class ValkeySaver(ValkeySaverBase):
    """LangGraph checkpointer on a synchronous Valkey client (standalone or cluster).

    Plain strings, hashes and sorted sets: no modules needed. ``put``, ``put_writes``
    and ``get_tuple`` are one round trip each (one atomic Lua script).

    Args:
        client: a ``valkey.Valkey`` or ``valkey.cluster.ValkeyCluster``, used as is.
        prefix: key prefix of this saver (no ``{``/``}``).
        serde: serializer; defaults to LangGraph's ``JsonPlusSerializer()``, which
            follows ``LANGGRAPH_STRICT_MSGPACK`` like every LangGraph saver (set it to
            ``true`` in production: only allowlisted types are revived). No pickle.
        ttl: ``{"default_ttl": minutes, "refresh_on_read": bool}``; every key of a
            thread expires together, sliding on each write (and read, if asked).
        metrics: ``False`` to turn Prometheus metrics off, or a registry.
        thread_index: keep the thread index (``list(None)``, ``search_threads`` and
            ``delete_for_runs`` without ``SCAN``); ``False`` scans instead.
        index_metadata: metadata fields whose values the thread index records, e.g.
            ``("user_id",)``: ``search_threads({"user_id": "alice"})``.
        keep_last: keep at most this many checkpoints per thread namespace (plus the
            ancestors a DeltaChannel needs), pruned by ``put`` itself.
        compress_min_bytes: zstd-compress stored values at least this large (needs
            the ``compress`` extra); values are readable whatever the setting.
        list_items: store list values (message lists) item by item, each item once
            per thread namespace (default); ``False`` stores them whole.

    Example:
        ```python
        from langgraph_valkey_cache import ValkeySaver

        with ValkeySaver.from_conn_string("valkey://localhost:6379") as saver:
            graph = builder.compile(checkpointer=saver)
            graph.invoke(inputs, {"configurable": {"thread_id": "t1"}})
        ```
    """

    def __init__(self, client: Any, **kwargs: Any) -> None:
        if is_async_client(client):
            raise TypeError(
                "ValkeySaver needs a sync client; use AsyncValkeySaver for valkey.asyncio"
            )
        super().__init__(client, **kwargs)
        self._cluster = is_cluster(client)
        self._wire = wire_for(client)  # None on a cluster

    @classmethod
    @contextmanager
    def from_conn_string(cls, url: str, **kwargs: Any) -> Iterator[ValkeySaver]:
        """Open a client for ``url`` (closed on exit) and yield a saver on it."""
        client_kwargs = kwargs.pop("client_kwargs", {})
        client = client_from_url(url, **client_kwargs)
        try:
            yield cls(client, **kwargs)
        finally:
            client.close()

    def setup(self) -> None:
        """Check the server answers. No schema to create: plain data types only."""
        self.client.ping()

    # -- plan execution ---------------------------------------------------------------

    def _execute(self, op: Op) -> Any:
        if isinstance(op, Script):
            script, keys = self._scripts[op.name], op.keys
            wire = self._wire
            if wire is not None:  # the lean command path: ~15 us less client time
                return wire.evalsha(script, keys, op.args)
            try:
                return self.client.evalsha(script.sha, len(keys), *keys, *op.args)
            except NoScriptError:  # a restarted or failed-over server: load it once
                script.sha = self.client.script_load(script.script)
                return self.client.evalsha(script.sha, len(keys), *keys, *op.args)
        if isinstance(op, ScanThreads):
            return [
                self._thread_from_marker(k)
                for k in scan_keys(self.client, self.keys.marker_pattern)
            ]
        if isinstance(op, ScanKeys):
            return builtins.list(scan_keys(self.client, op.pattern))
        raise TypeError(f"unexpected plan step {op!r}")

    def _run(self, plan: Plan, name: str) -> Any:
        # Telemetry.operation()'s steps without its generator context manager: ~1.5 us
        # of every put and put_writes
        telemetry = self._telemetry
        start = time.perf_counter()
        span = telemetry.start(name)
        try:
            result = run_plan(plan, self._execute)
        except BaseException as exc:
            telemetry.error(name)
            telemetry.finish(name, start, span, exc)
            raise
        telemetry.finish(name, start, span)
        return result

    def _iter(self, plan: Plan, name: str) -> Iterator[CheckpointTuple]:
        # one span per request: a span must not stay open across the consumer's yields
        def execute(op: Op) -> Any:
            with self._telemetry.operation(name):
                return self._execute(op)

        return iter_plan(plan, execute)

    # -- BaseCheckpointSaver --------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._run(self._plan_get_tuple(config), "get_tuple")

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        return self._iter(self._plan_list(config, filter, before, limit), "list")

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._run(self._plan_put(config, checkpoint, metadata, new_versions), "put")

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._run(self._plan_put_writes(config, writes, task_id, task_path), "put_writes")

    def thread_ids(self) -> builtins.list[str]:
        """Every thread id with checkpoints under this saver's prefix, without reading
        any checkpoint: from the thread index (with a TTL, each id is checked and
        expired threads leave the index), or with ``thread_index=False`` by ``SCAN``
        of the thread markers (per primary on a cluster)."""
        return self._run(self._plan_thread_ids(), "thread_ids")

    def search_threads(
        self, filter: dict[str, Any] | None = None, *, limit: int | None = None
    ) -> builtins.list[str]:
        """Thread ids with at least one checkpoint whose metadata matches ``filter``
        (all threads without one), from the thread index: one round trip per page of
        100 candidates, plus one per candidate when the filter is not a single
        ``index_metadata`` field. Ordered by encoded thread id."""
        return self._run(self._plan_search_threads(filter, limit), "search_threads")

    def reindex(self) -> int:
        """Rebuild the thread index from the threads' own keys (``SCAN``): after an
        upgrade from a version without it, or to drop entries of expired threads.
        Metadata pairs are those recorded by checkpoints written with
        ``index_metadata`` set. Returns the number of threads indexed."""
        return self._run(self._plan_reindex(), "reindex")

    def delete_thread(self, thread_id: str) -> None:
        self._run(self._plan_delete_thread(thread_id), "delete_thread")

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._run(self._plan_delete_for_runs(run_ids), "delete_for_runs")

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._run(self._plan_copy_thread(source_thread_id, target_thread_id), "copy_thread")

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._run(self._plan_prune(thread_ids, strategy), "prune")

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return self._run(self._plan_delta_history(config, channels), "delta_history")

    # -- async methods: the sync client, run in the default executor ------------------

    async def _in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._in_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        items = await self._in_thread(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for item in items:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._in_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._in_thread(self.put_writes, config, writes, task_id, task_path)

    async def athread_ids(self) -> builtins.list[str]:
        return await self._in_thread(self.thread_ids)

    async def asearch_threads(
        self, filter: dict[str, Any] | None = None, *, limit: int | None = None
    ) -> builtins.list[str]:
        return await self._in_thread(self.search_threads, filter, limit=limit)

    async def areindex(self) -> int:
        return await self._in_thread(self.reindex)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._in_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._in_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._in_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._in_thread(self.prune, thread_ids, strategy=strategy)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return await self._in_thread(
            self.get_delta_channel_history, config=config, channels=channels
        )
