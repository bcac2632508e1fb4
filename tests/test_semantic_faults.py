"""The semantic cache's fault contract on real FT servers (README "Faults"), sync and async.

Under SIGSTOP longer than the budget, ``DEBUG SLEEP`` and kill -9, every model call
through a :class:`ValkeySemanticCache` finishes within the budget plus a second with the
model called, and (the server's breaker being open) without spending an embedding per
call; once the server is back, the same objects hit again within 2 s, including after a
restart that lost the FT index (it is recreated on the next update).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator

import pytest

from langgraph_valkey_cache import ValkeySemanticCache, cache_client_from_url
from langgraph_valkey_cache.embedded import EmbeddedValkey, redisearch_module_path
from langgraph_valkey_cache.testing import HashingEmbeddings, ScriptedModel
from tests.conftest import FT_SERVERS
from tests.test_cache_faults import _blocking, stopped

pytestmark = pytest.mark.search

BUDGET = 0.25
SLACK = 1.0  # "within the budget plus a second"
RECOVERY = 2.0
Q = "What is the capital of France?"
PARAPHRASE = "what is the capital city of France?"
FLAVOURS = ["sync", "async"]
MODULES = [s for s in FT_SERVERS if s != "external"]


def _module(name: str) -> str:
    return (
        os.environ["VALKEY_SEARCH_MODULE"] if name == "valkey-search" else redisearch_module_path()
    )


class Rig:
    """A scripted model whose ``cache=`` is a semantic cache on ``url``."""

    def __init__(self, url: str, *, asyncio_: bool) -> None:
        self.asyncio = asyncio_
        self.client = cache_client_from_url(url, asyncio=asyncio_, timeout=BUDGET)
        self.embeddings = HashingEmbeddings(256)
        self.cache = ValkeySemanticCache(
            self.client,
            self.embeddings,
            prefix=f"sf{uuid.uuid4().hex[:8]}",
            distance_threshold=0.08,
            metrics=False,
            timeout=BUDGET,
        )
        self.model = ScriptedModel(script=["Paris"], cache=self.cache)

    @property
    def embedded(self) -> int:
        return self.embeddings.queries

    async def step(self, prompt: str) -> tuple[float, bool]:
        """One model call: ``(seconds, whether the model ran)``."""
        before = self.model.calls
        start = time.monotonic()
        if self.asyncio:
            await self.model.ainvoke(prompt)
        else:
            self.model.invoke(prompt)
        return time.monotonic() - start, self.model.calls > before

    async def warm(self) -> None:
        await self.step(Q)
        assert (await self.step(PARAPHRASE))[1] is False, "a paraphrase hits before the fault"

    async def fails_open_for(self, seconds: float) -> int:
        end = time.monotonic() + seconds
        rounds = 0
        embedded = self.embedded
        while time.monotonic() < end:
            elapsed, ran = await self.step(PARAPHRASE)
            assert elapsed < BUDGET + SLACK, elapsed
            assert ran, "the model must run while the cache is unavailable"
            rounds += 1
        # the first call may embed (its vector read is what fails); then the breaker
        # skips the server before anything is embedded
        assert self.embedded - embedded <= 2, (self.embedded - embedded, rounds)
        return rounds

    async def hits_again(self) -> float:
        start = time.monotonic()
        while (await self.step(PARAPHRASE))[1]:
            assert time.monotonic() - start < RECOVERY, "no hit yet"
            await asyncio.sleep(0.02)
        return time.monotonic() - start

    async def close(self) -> None:
        if self.asyncio:
            await self.client.aclose()
        else:
            self.client.close()


@pytest.fixture(params=MODULES[-1:])  # the real valkey-search when it is there
def server(request: pytest.FixtureRequest) -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey(
        search=_module(request.param), extra_args=["--enable-debug-command", "yes"]
    ) as s:
        yield s


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_sigstop_longer_than_the_budget(server: EmbeddedValkey, flavour: str) -> None:
    rig = Rig(server.url, asyncio_=flavour == "async")
    await rig.warm()
    with stopped(server):
        assert await rig.fails_open_for(12.0) > 10
    await rig.hits_again()
    await rig.close()


@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_debug_sleep(server: EmbeddedValkey, flavour: str) -> None:
    rig = Rig(server.url, asyncio_=flavour == "async")
    await rig.warm()
    t = _blocking(server, "DEBUG", "SLEEP", "8")
    await rig.fails_open_for(6.0)
    t.join()
    await rig.hits_again()
    await rig.close()


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("flavour", FLAVOURS)
async def test_kill_and_restart_recreates_the_index(module: str, flavour: str) -> None:
    """The restarted server is empty: the first lookup finds no index (a miss, the
    model runs), the update recreates the index and stores the answer, and the
    paraphrase hits again within 2 s."""
    server = EmbeddedValkey(search=_module(module)).start()
    rig = Rig(server.url, asyncio_=flavour == "async")
    try:
        await rig.warm()
        server.kill()
        await rig.fails_open_for(2.0)
        server = EmbeddedValkey(search=_module(module), port=server.port).start()
        start = time.monotonic()
        while (await rig.step(PARAPHRASE))[1]:
            assert time.monotonic() - start < RECOVERY, "no hit after the restart"
            await asyncio.sleep(0.02)
    finally:
        await rig.close()
        server.stop()
