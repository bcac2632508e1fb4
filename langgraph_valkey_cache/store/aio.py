"""``AsyncValkeyStore``: the store on ``valkey.asyncio``, all the way down."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from langgraph.store.base import Op, Result
from langgraph.store.base.batch import AsyncBatchedBaseStore
from valkey.exceptions import NoScriptError, ResponseError

from langgraph_valkey_cache._client import aclose_client, client_from_url, is_async_client
from langgraph_valkey_cache._plans import arun_plan
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

__all__ = ["AsyncValkeyStore"]


class AsyncValkeyStore(AsyncBatchedBaseStore, ValkeyStoreBase):
    """:class:`~langgraph_valkey_cache.store.ValkeyStore` on an async client.

    Same layout, options and round trips. Concurrent ``aget``/``aput``/... calls from
    one event loop are gathered into one ``abatch`` (LangGraph's
    ``AsyncBatchedBaseStore``); sync methods work from other threads and refuse to
    run on the store's own loop.

    Example:
        ```python
        from langgraph_valkey_cache import AsyncValkeyStore

        index = {"dims": 1536, "embed": "openai:text-embedding-3-small"}
        async with AsyncValkeyStore.from_conn_string(url, index=index) as store:
            await store.asetup()
            graph = builder.compile(store=store)
        ```
    """

    def __init__(self, client: Any, **kwargs: Any) -> None:
        if not is_async_client(client):
            raise TypeError("AsyncValkeyStore needs a valkey.asyncio client; use ValkeyStore")
        self._init_store(client, **kwargs)
        super().__init__()

    @classmethod
    @asynccontextmanager
    async def from_conn_string(cls, url: str, **kwargs: Any) -> AsyncIterator[AsyncValkeyStore]:
        client = client_from_url(url, asyncio=True, **kwargs.pop("client_kwargs", {}))
        try:
            yield cls(client, **kwargs)
        finally:
            await aclose_client(client)

    async def asetup(self) -> None:
        """Async twin of :meth:`ValkeyStore.setup`."""
        await self.client.ping()
        self._search_ok = None
        await self._run(self._plan_setup(), "setup")

    def setup(self) -> None:
        self._check_thread("setup")
        import asyncio

        asyncio.run_coroutine_threadsafe(self.asetup(), self._loop).result()

    def _check_thread(self, name: str) -> None:
        import asyncio

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if running is self._loop:
            raise asyncio.InvalidStateError(
                f"Synchronous calls to AsyncValkeyStore detected in its event loop: "
                f"use `await store.a{name}(...)`."
            )

    # -- plan execution ---------------------------------------------------------------

    async def _one(self, call: Call) -> Any:
        wire = self._wire  # the lean command path (standalone)
        if call.script:
            if wire is not None:
                return await wire.evalsha(self._scripts[call.script], call.keys, call.args)
            return await self._scripts[call.script](keys=list(call.keys), args=list(call.args))
        if call.each_primary:
            return await self._each_primary(call.args)
        if wire is not None:
            return await wire.call(call.args)
        if self._cluster and str(call.args[0]).startswith("FT."):
            # no key to route by: valkey-search answers (and fans out) from any node
            return await self.client.execute_command(*call.args, target_nodes=self.client.RANDOM)
        return await self.client.execute_command(*call.args)

    async def _each_primary(self, args: tuple[Any, ...]) -> list[Any]:
        """One reply per primary (a ``ResponseError`` as a value), asked concurrently."""
        import asyncio

        async def ask(node: Any) -> Any:
            try:
                if node is None:
                    return await self.client.execute_command(*args)
                return await self.client.execute_command(*args, target_nodes=node)
            except ResponseError as exc:
                return exc

        nodes = self.client.get_primaries() if self._cluster else [None]
        return list(await asyncio.gather(*(ask(node) for node in nodes)))

    async def _pipe(self, op: Pipe) -> list[Any]:
        if len(op.calls) == 1:
            try:
                return [await self._one(op.calls[0])]
            except ResponseError as exc:
                if op.return_errors:
                    return [exc]
                raise
        cmds = self._commands(op.calls)
        if self._wire is not None:
            replies = await self._wire.pipeline(cmds, raise_on_error=False)
        else:
            pipe = self.client.pipeline(transaction=False)
            for cmd in cmds:
                pipe.execute_command(*cmd)
            replies = list(await pipe.execute(raise_on_error=False))
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                replies[i] = await self._one(op.calls[i])
            elif isinstance(reply, Exception) and not (
                op.return_errors and isinstance(reply, ResponseError)
            ):
                raise reply
        return replies

    async def _execute(self, op: PlanOp) -> Any:
        if isinstance(op, Pipe):
            return await self._pipe(op)
        if isinstance(op, Embed):
            if op.query:
                if hasattr(self.embeddings, "aembed_queries"):  # CachedEmbeddings: one read
                    return await self.embeddings.aembed_queries(op.texts)
                return [await self.embeddings.aembed_query(t) for t in op.texts]
            return await self.embeddings.aembed_documents(op.texts)
        if isinstance(op, Sleep):
            import asyncio

            return await asyncio.sleep(op.seconds)
        raise TypeError(f"unexpected plan step {op!r}")

    async def _run(self, plan: Plan, name: str) -> Any:
        with self._telemetry.operation(name):
            return await arun_plan(plan, self._execute)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        return await self._run(self._plan_batch(ops), op_name(ops))
