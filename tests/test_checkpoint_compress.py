"""Compression of large checkpoint values (``compress_min_bytes=``, the ``compress``
extra): zstd behind a codec byte, readable whatever the setting was at write time."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_metadata

from langgraph_valkey_cache import AsyncValkeySaver, ValkeySaver
from langgraph_valkey_cache._client import client_from_url
from tests.test_checkpoint import _cfg

BIG = " ".join(f"word{i % 97} and some text {i}" for i in range(800))  # ~20 KB


def _put_big(saver: ValkeySaver, thread: str) -> dict[str, Any]:
    values = {"big": BIG, "small": "s", "msgs": [HumanMessage(BIG), AIMessage("ok")]}
    versions: dict[str, str | int | float] = {k: 1 for k in values}
    cp = generate_checkpoint(channel_values=values, channel_versions=versions)
    stored = saver.put(_cfg(thread), cp, generate_metadata(note=BIG), versions)
    saver.put_writes(stored, [("big", BIG), ("small", "w")], "task")
    return stored


def test_large_values_are_stored_compressed_and_read_back(any_url: str, prefix: str) -> None:
    client = client_from_url(any_url)
    plain = ValkeySaver(client, prefix=prefix)
    packed = ValkeySaver(client, prefix=prefix, compress_min_bytes=1024)
    _put_big(plain, "plain")
    _put_big(packed, "packed")
    sizes = {}
    for thread in ("plain", "packed"):
        base = plain.keys.base(thread)
        blobs = client.hgetall(base + "b:")
        # the message list is stored item by item (16-byte digests; and the items'
        # generation field)
        items = {k: v for k, v in client.hgetall(base + "e:").items() if len(k) == 16}
        writes = client.hgetall(base + "w:")
        rec = next(iter(client.hgetall(base + "c:").values()))
        sizes[thread] = (
            sum(map(len, blobs.values()))
            + sum(map(len, items.values()))
            + sum(map(len, writes.values()))
            + len(rec)
        )
        marked = {k for k, v in blobs.items() if v[:1] == b"\x01"}
        if thread == "packed":
            # the large values carry the codec byte; the small ones are stored as is
            assert {k.split(b":")[0] for k in marked} == {b"big"}
            assert sorted(v[:1] for v in items.values()) == [b"\x00", b"\x01"]
            assert any(v[:1] == b"\x01" for v in writes.values())
            assert rec[rec.index(b"\n") + 1 :][:1] == b"\x01"
        else:
            assert not marked
    assert sizes["packed"] < sizes["plain"] / 5
    # each saver reads both threads: the codec byte decides, not the setting
    for saver in (plain, packed):
        for thread in ("plain", "packed"):
            tup = saver.get_tuple(_cfg(thread))
            assert tup is not None
            assert tup.checkpoint["channel_values"]["big"] == BIG
            assert tup.checkpoint["channel_values"]["msgs"][0].content == BIG
            assert tup.metadata["note"] == BIG
            assert tup.pending_writes == [("task", "big", BIG), ("task", "small", "w")]
            assert [t.config for t in saver.list(_cfg(thread))] == [tup.config]
    client.close()


def test_compression_options(valkey_url: str) -> None:
    client = client_from_url(valkey_url)
    with pytest.raises(ValueError, match="compress_min_bytes"):
        ValkeySaver(client, compress_min_bytes=-1)
    client.close()


async def test_async_compressed_copy_and_history(valkey_url: str, prefix: str) -> None:
    client = client_from_url(valkey_url, asyncio=True)
    saver = AsyncValkeySaver(client, prefix=prefix, compress_min_bytes=0)
    parent = None
    for i in range(3):
        cp = generate_checkpoint(channel_values={"a": BIG + str(i)}, channel_versions={"a": i + 1})
        stored = await saver.aput(_cfg("a", cid=parent), cp, generate_metadata(), {"a": i + 1})
        parent = stored["configurable"]["checkpoint_id"]
    await saver.acopy_thread("a", "b")
    got = [t.checkpoint["channel_values"]["a"] async for t in saver.alist(_cfg("b"))]
    assert got == [BIG + "2", BIG + "1", BIG + "0"]
    await client.aclose()
