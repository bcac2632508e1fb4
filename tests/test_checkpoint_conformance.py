"""langgraph-checkpoint-conformance: every capability, both savers, standalone and cluster.

``ValkeySaver`` runs the suite through ``SyncBridge``, whose async methods call the
saver's *sync* API directly, so the sync code path is what gets validated.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES

from langgraph_valkey_cache import AsyncValkeySaver, ValkeySaver
from langgraph_valkey_cache._client import client_from_url


class SyncBridge(BaseCheckpointSaver):
    """Async facade over a sync saver: each a* method calls the sync method."""

    def __init__(self, saver: ValkeySaver) -> None:
        super().__init__(serde=saver.serde)
        self.saver = saver

    async def aget_tuple(self, config: Any) -> Any:
        return self.saver.get_tuple(config)

    async def alist(self, config: Any, **kwargs: Any) -> AsyncIterator[Any]:
        for item in self.saver.list(config, **kwargs):
            yield item

    async def aput(self, *args: Any, **kwargs: Any) -> Any:
        return self.saver.put(*args, **kwargs)

    async def aput_writes(self, *args: Any, **kwargs: Any) -> None:
        self.saver.put_writes(*args, **kwargs)

    async def adelete_thread(self, thread_id: str) -> None:
        self.saver.delete_thread(thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        self.saver.delete_for_runs(run_ids)

    async def acopy_thread(self, source: str, target: str) -> None:
        self.saver.copy_thread(source, target)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self.saver.prune(thread_ids, strategy=strategy)

    def get_next_version(self, current: Any, channel: None) -> Any:
        return self.saver.get_next_version(current, channel)


def _registered(flavour: str, url: str, prefix: str) -> Any:
    if flavour == "async":

        async def factory() -> AsyncIterator[BaseCheckpointSaver]:
            client = client_from_url(url, asyncio=True)
            yield AsyncValkeySaver(client, prefix=prefix)
            await client.aclose()

    elif flavour == "sync-zstd-indexed":
        # everything compressed, metadata filters through the thread index
        async def factory() -> AsyncIterator[BaseCheckpointSaver]:
            client = client_from_url(url)
            saver = ValkeySaver(
                client,
                prefix=prefix,
                compress_min_bytes=0,
                index_metadata=("source", "step", "score", "run_id", "user_id"),
            )
            yield SyncBridge(saver)
            client.close()

    else:
        # list channels stored whole, as before list_items
        options = {"list_items": False} if flavour == "sync-whole-lists" else {}

        async def factory() -> AsyncIterator[BaseCheckpointSaver]:
            client = client_from_url(url)
            yield SyncBridge(ValkeySaver(client, prefix=prefix, **options))
            client.close()

    return checkpointer_test(name=f"{flavour}-{prefix}")(factory)


@pytest.mark.parametrize("flavour", ["sync", "async", "sync-zstd-indexed", "sync-whole-lists"])
async def test_conformance_all_capabilities(flavour: str, any_url: str, prefix: str) -> None:
    report = await validate(_registered(flavour, any_url, prefix))
    failures = {
        cap: [f"{f}" for f in (res.failures or [])]
        for cap, res in report.results.items()
        if not res.passed
    }
    assert not failures, failures
    assert {c.value for c in ALL_CAPABILITIES} == set(report.results)
    assert all(res.detected for res in report.results.values())


def test_bridge_overrides_every_capability() -> None:
    """Guard: the bridge must expose every capability, or the suite would skip some."""
    from langgraph.checkpoint.conformance.capabilities import DetectedCapabilities

    saver = object.__new__(SyncBridge)
    assert DetectedCapabilities.from_instance(saver).missing == frozenset()
