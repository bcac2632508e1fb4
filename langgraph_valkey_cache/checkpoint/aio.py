"""``AsyncValkeySaver``: the checkpointer on ``valkey.asyncio``, all the way down."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
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

from langgraph_valkey_cache._client import (
    aclose_client,
    ascan_keys,
    client_from_url,
    is_async_client,
)
from langgraph_valkey_cache._plans import aiter_plan, arun_plan
from langgraph_valkey_cache._wire import wire_for
from langgraph_valkey_cache.checkpoint.base import (
    Op,
    Plan,
    ScanKeys,
    ScanThreads,
    Script,
    ValkeySaverBase,
)

__all__ = ["AsyncValkeySaver"]

T = TypeVar("T")


class AsyncValkeySaver(ValkeySaverBase):
    """LangGraph checkpointer on an async Valkey client (standalone or cluster).

    Same data layout, options and round-trip budget as :class:`ValkeySaver`. Sync
    methods work from other threads (they run on the saver's event loop, the way
    ``AsyncPostgresSaver`` does it) and refuse to run on the loop's own thread.

    Example:
        ```python
        from langgraph_valkey_cache import AsyncValkeySaver

        async with AsyncValkeySaver.from_conn_string("valkey://localhost:6379") as saver:
            graph = builder.compile(checkpointer=saver)
            await graph.ainvoke(inputs, {"configurable": {"thread_id": "t1"}})
        ```
    """

    def __init__(self, client: Any, **kwargs: Any) -> None:
        if not is_async_client(client):
            raise TypeError("AsyncValkeySaver needs a valkey.asyncio client; use ValkeySaver")
        super().__init__(client, **kwargs)
        self._wire = wire_for(client)  # None on a cluster
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None

    @classmethod
    @asynccontextmanager
    async def from_conn_string(cls, url: str, **kwargs: Any) -> AsyncIterator[AsyncValkeySaver]:
        client_kwargs = kwargs.pop("client_kwargs", {})
        client = client_from_url(url, asyncio=True, **client_kwargs)
        try:
            yield cls(client, **kwargs)
        finally:
            await aclose_client(client)

    async def asetup(self) -> None:
        await self.client.ping()

    # -- plan execution ---------------------------------------------------------------

    async def _execute(self, op: Op) -> Any:
        if isinstance(op, Script):
            script, keys = self._scripts[op.name], op.keys
            wire = self._wire
            if wire is not None:  # the lean command path (standalone)
                return await wire.evalsha(script, keys, op.args)
            try:
                return await self.client.evalsha(script.sha, len(keys), *keys, *op.args)
            except NoScriptError:  # a restarted or failed-over server: load it once
                script.sha = await self.client.script_load(script.script)
                return await self.client.evalsha(script.sha, len(keys), *keys, *op.args)
        if isinstance(op, ScanThreads):
            return [
                self._thread_from_marker(k)
                async for k in ascan_keys(self.client, self.keys.marker_pattern)
            ]
        if isinstance(op, ScanKeys):
            return [k async for k in ascan_keys(self.client, op.pattern)]
        raise TypeError(f"unexpected plan step {op!r}")

    async def _run(self, plan: Plan, name: str) -> Any:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        with self._telemetry.operation(name):
            return await arun_plan(plan, self._execute)

    async def _iter(self, plan: Plan, name: str) -> AsyncIterator[CheckpointTuple]:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()

        # one span per request: a span must not stay open across the consumer's yields
        async def execute(op: Op) -> Any:
            with self._telemetry.operation(name):
                return await self._execute(op)

        async for item in aiter_plan(plan, execute):
            yield item

    # -- async API ------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._run(self._plan_get_tuple(config), "get_tuple")

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        async for item in self._iter(self._plan_list(config, filter, before, limit), "list"):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await self._run(self._plan_put(config, checkpoint, metadata, new_versions), "put")

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._run(self._plan_put_writes(config, writes, task_id, task_path), "put_writes")

    async def athread_ids(self) -> builtins.list[str]:
        """Every thread id with checkpoints under this saver's prefix, without reading
        any checkpoint: from the thread index (with a TTL, each id is checked and
        expired threads leave the index), or with ``thread_index=False`` by ``SCAN``
        of the thread markers (per primary on a cluster)."""
        return await self._run(self._plan_thread_ids(), "thread_ids")

    async def asearch_threads(
        self, filter: dict[str, Any] | None = None, *, limit: int | None = None
    ) -> builtins.list[str]:
        """See :meth:`ValkeySaver.search_threads`."""
        return await self._run(self._plan_search_threads(filter, limit), "search_threads")

    async def areindex(self) -> int:
        """See :meth:`ValkeySaver.reindex`."""
        return await self._run(self._plan_reindex(), "reindex")

    async def adelete_thread(self, thread_id: str) -> None:
        await self._run(self._plan_delete_thread(thread_id), "delete_thread")

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._run(self._plan_delete_for_runs(run_ids), "delete_for_runs")

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._run(self._plan_copy_thread(source_thread_id, target_thread_id), "copy_thread")

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._run(self._plan_prune(thread_ids, strategy), "prune")

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return await self._run(self._plan_delta_history(config, channels), "delta_history")

    # -- sync API: bridged onto the saver's loop from other threads ------------------

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self.loop is None or running is self.loop:
            coro.close()
            raise asyncio.InvalidStateError(
                "Synchronous calls to AsyncValkeySaver are only allowed from a different "
                "thread than its event loop's. From the loop, use the async interface, "
                "e.g. `await checkpointer.aget_tuple(...)` or `await graph.ainvoke(...)`."
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._sync(self.aget_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        async def collect() -> list[CheckpointTuple]:
            return [t async for t in self.alist(config, filter=filter, before=before, limit=limit)]

        yield from self._sync(collect())

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._sync(self.aput(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._sync(self.aput_writes(config, writes, task_id, task_path))

    def thread_ids(self) -> builtins.list[str]:
        return self._sync(self.athread_ids())

    def search_threads(
        self, filter: dict[str, Any] | None = None, *, limit: int | None = None
    ) -> builtins.list[str]:
        return self._sync(self.asearch_threads(filter, limit=limit))

    def reindex(self) -> int:
        return self._sync(self.areindex())

    def delete_thread(self, thread_id: str) -> None:
        self._sync(self.adelete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._sync(self.adelete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._sync(self.acopy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._sync(self.aprune(thread_ids, strategy=strategy))

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return self._sync(self.aget_delta_channel_history(config=config, channels=channels))
