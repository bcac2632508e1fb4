"""The I/O-free half of the checkpointer: keys, encoding and *plans*.

A plan is a generator that yields the operations it needs (:class:`Script` calls,
:class:`ScanThreads`) and receives their replies; it returns (or, for listings,
:class:`Emit`-s) the result. ``ValkeySaver`` and ``AsyncValkeySaver`` only execute
plans, with a sync or an async client, so every behaviour is written once and every
round trip is visible here.

Record layout (one HASH field per checkpoint, see ``_keys.CheckpointKeys``)::

    parent \\t run \\t blobfield,... \\t deltachannel,... \\n msgpack[ctype, cbytes, mtype, mbytes]

The header is what the Lua scripts need (parent chain, blob lookup, run index,
DeltaChannel-safe pruning); the body is the serde's output, untouched.
"""

from __future__ import annotations

import random
import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import ormsgpack
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    PendingWrite,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from langgraph_valkey_cache._client import require_bytes_client
from langgraph_valkey_cache._keys import CheckpointKeys, decode, encode
from langgraph_valkey_cache._plans import Emit
from langgraph_valkey_cache._scripts import CHECKPOINT_SCRIPTS, ScriptRegistry
from langgraph_valkey_cache._serde import default_serde, dumps_checked, pack_typed, unpack_typed
from langgraph_valkey_cache._telemetry import Telemetry

__all__ = ["ValkeySaverBase", "TTLConfig"]

_ID_RE = re.compile(r"^[\x21-\x7e]{1,256}$")
_REGISTRY = ScriptRegistry(CHECKPOINT_SCRIPTS)
_LIST_PAGE = 100


@dataclass(frozen=True)
class Script:
    """Run checkpoint script ``name`` on the thread whose marker key is ``key``."""

    name: str
    key: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class ScanThreads:
    """Reply: every thread id with data under this saver's prefix (SCAN per primary)."""


Op = Script | ScanThreads | Emit
Plan = Generator[Op, Any, Any]

TTLConfig = dict[str, Any]


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value) or "," in value:
        raise ValueError(
            f"malformed {what} {value!r}: expected 1-256 printable ASCII characters "
            "without spaces or commas (LangGraph uses UUIDs)"
        )
    return value


def _matches(metadata: CheckpointMetadata, filter: dict[str, Any] | None) -> bool:
    return not filter or all(metadata.get(k) == v for k, v in filter.items())  # type: ignore[misc]


class ValkeySaverBase(BaseCheckpointSaver[str]):
    """Shared state and plans of :class:`ValkeySaver` and :class:`AsyncValkeySaver`."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "lgv:cp",
        serde: SerializerProtocol | None = None,
        ttl: TTLConfig | None = None,
        metrics: Any = True,
    ) -> None:
        super().__init__(serde=serde or default_serde())
        require_bytes_client(client, "the checkpointer", "serialized values are binary")
        self.client = client
        self.keys = CheckpointKeys(prefix)
        self.ttl = dict(ttl or {})
        default_ttl = self.ttl.get("default_ttl")
        if default_ttl is not None and (
            not isinstance(default_ttl, (int, float)) or default_ttl <= 0
        ):
            raise ValueError(
                f"ttl['default_ttl'] must be a positive number of minutes, got {default_ttl!r}"
            )
        self._ttl_ms = int(default_ttl * 60_000) if default_ttl else 0
        self._read_ttl_ms = self._ttl_ms if self.ttl.get("refresh_on_read") else 0
        self._scripts = _REGISTRY.bind(client)
        self._telemetry = Telemetry("checkpoint", metrics=metrics)

    # -- config parsing -------------------------------------------------------------

    @staticmethod
    def _thread_id(config: RunnableConfig | None) -> str:
        configurable = (config or {}).get("configurable") or {}
        thread_id = configurable.get("thread_id")
        if thread_id is None:
            raise ValueError(
                'config["configurable"]["thread_id"] is required by ValkeySaver '
                '(e.g. {"configurable": {"thread_id": "my-thread"}})'
            )
        if (
            isinstance(thread_id, (bytes, bytearray))
            or not isinstance(thread_id, (str, int))
            and not hasattr(thread_id, "hex")
        ):
            raise TypeError(f"thread_id must be a str, int or UUID, got {type(thread_id).__name__}")
        return str(thread_id)

    def _script(self, name: str, thread_id: str, *args: Any) -> Script:
        base = self.keys.base(thread_id)
        return Script(name, base + "ns", (base, *args))

    # -- encoding ---------------------------------------------------------------------

    def _record(
        self,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        parent_id: str,
    ) -> bytes:
        c = checkpoint.copy()
        c.pop("channel_values", None)  # type: ignore[misc]
        ctyped = dumps_checked(self.serde, c, "checkpoint")
        mtyped = dumps_checked(self.serde, metadata, "checkpoint metadata")
        run_id = metadata.get("run_id")
        counters = metadata.get("counters_since_delta_snapshot") or {}
        fields = ",".join(
            self.keys.blob_field(ch, ver) for ch, ver in checkpoint["channel_versions"].items()
        )
        deltas = ",".join(encode(str(ch)) for ch in counters)
        head = "\t".join([parent_id, encode(str(run_id)) if run_id else "", fields, deltas])
        body = ormsgpack.packb([ctyped[0], bytes(ctyped[1]), mtyped[0], bytes(mtyped[1])])
        return head.encode() + b"\n" + body

    def _parse_record(self, rec: bytes) -> tuple[str | None, Checkpoint, CheckpointMetadata]:
        nl = rec.index(b"\n")
        parent = rec[:nl].split(b"\t", 1)[0].decode() or None
        ctype, cbytes, mtype, mbytes = ormsgpack.unpackb(rec[nl + 1 :])
        checkpoint = self.serde.loads_typed((ctype, cbytes))
        metadata = self.serde.loads_typed((mtype, mbytes))
        return parent, checkpoint, metadata

    @staticmethod
    def _header_channels(rec: bytes) -> list[str]:
        nl = rec.index(b"\n")
        fields = rec[:nl].split(b"\t")[2].decode()
        return [decode(f.split(":", 1)[0]) for f in fields.split(",")] if fields else []

    def _decode_writes(self, raw: Sequence[bytes | None]) -> list[tuple[Any, ...]]:
        """Writes as ``(task_id, channel, typed, task_path, idx)``, in writes_sort_key order."""
        rows = [ormsgpack.unpackb(w) for w in raw if w]
        rows.sort(key=lambda r: writes_sort_key(r[2], r[0], r[1]))
        return [(r[0], r[3], (r[4], r[5]), r[2], r[1]) for r in rows]

    def _parse_tuple(self, thread_id: str, reply: list[Any]) -> CheckpointTuple:
        ns_enc, cid, rec, blobs, writes = reply
        ns = decode(_str(ns_enc))
        cid = _str(cid)
        parent, checkpoint, metadata = self._parse_record(rec)
        values: dict[str, Any] = {}
        for ch, blob in zip(self._header_channels(rec), blobs, strict=True):
            if blob:
                values[ch] = self.serde.loads_typed(unpack_typed(blob))
        checkpoint["channel_values"] = values
        return CheckpointTuple(
            config={
                "configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}
            },
            checkpoint=checkpoint,
            metadata=metadata,
            parent_config=(
                {
                    "configurable": {
                        "thread_id": thread_id,
                        "checkpoint_ns": ns,
                        "checkpoint_id": parent,
                    }
                }
                if parent
                else None
            ),
            pending_writes=[
                (tid, ch, self.serde.loads_typed(typed))
                for tid, ch, typed, _, _ in self._decode_writes(writes)
            ],
        )

    # -- plans ----------------------------------------------------------------------

    def _plan_put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Plan:
        thread_id = self._thread_id(config)
        configurable = config["configurable"]
        ns = configurable.get("checkpoint_ns", "") or ""
        cid = _check_id(checkpoint.get("id"), "checkpoint id")
        parent_id = configurable.get("checkpoint_id") or ""
        if parent_id:
            _check_id(parent_id, "parent checkpoint id")
        meta = get_serializable_checkpoint_metadata(config, metadata)
        values = checkpoint.get("channel_values", {})
        blob_args: list[Any] = []
        for ch, ver in new_versions.items():
            if ch in values:
                typed = dumps_checked(self.serde, values[ch], f"value of channel {ch!r}")
                blob_args += [self.keys.blob_field(ch, ver), pack_typed(typed)]
        rec = self._record(checkpoint, meta, parent_id)
        run_id = meta.get("run_id")
        yield self._script(
            "put", thread_id, encode(ns), cid, rec,
            encode(str(run_id)) if run_id else "", self._ttl_ms, *blob_args,
        )  # fmt: skip
        self._telemetry.stored(len(rec) + sum(len(a) for a in blob_args[1::2]))
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}}

    def _plan_put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> Plan:
        thread_id = self._thread_id(config)
        configurable = config["configurable"]
        ns = configurable.get("checkpoint_ns", "") or ""
        cid = _check_id(configurable.get("checkpoint_id"), "checkpoint id")
        if not writes:
            return None
        args: list[Any] = []
        for idx, (channel, value) in enumerate(writes):
            widx = WRITES_IDX_MAP.get(channel, idx)
            t, b = dumps_checked(self.serde, value, f"write to channel {channel!r}")
            packed = ormsgpack.packb([str(task_id), widx, task_path, channel, t, bytes(b)])
            args += [self.keys.write_field(cid, str(task_id), widx), packed, 1 if widx < 0 else 0]
        yield self._script("put_writes", thread_id, encode(ns), cid, self._ttl_ms, *args)
        self._telemetry.stored(sum(len(a) for a in args[1::3]))
        return None

    def _plan_get_tuple(self, config: RunnableConfig) -> Plan:
        thread_id = self._thread_id(config)
        configurable = config["configurable"]
        ns = configurable.get("checkpoint_ns", "") or ""
        cid = get_checkpoint_id(config) or ""
        if cid:
            _check_id(cid, "checkpoint id")
        reply = yield self._script("get", thread_id, encode(ns), cid, self._read_ttl_ms)
        return self._parse_tuple(thread_id, reply) if reply else None

    def _plan_list_thread(
        self,
        thread_id: str,
        ns: str | None,
        checkpoint_id: str | None,
        filter: dict[str, Any] | None,
        before: str,
        limit: int | None,
    ) -> Plan:
        """Emit a thread's checkpoints newest first; returns how many were emitted."""
        emitted = 0
        if checkpoint_id and ns is not None:
            # one known checkpoint: a single read
            reply = yield self._script(
                "get", thread_id, encode(ns), checkpoint_id, self._read_ttl_ms
            )
            if reply and (not before or checkpoint_id < before):
                tup = self._parse_tuple(thread_id, reply)
                if _matches(tup.metadata, filter):
                    yield Emit(tup)
                    return 1
            return 0
        exact = not filter and not checkpoint_id
        cursor = before
        while limit is None or emitted < limit:
            page_size = min(limit - emitted, _LIST_PAGE) if (exact and limit) else _LIST_PAGE
            reply = yield self._script(
                "list", thread_id, "1" if ns is not None else "0", encode(ns or ""),
                cursor, page_size, self._read_ttl_ms,
            )  # fmt: skip
            tuples, cursor = reply[0], _str(reply[1]) if reply[1] else ""
            for raw in tuples:
                if checkpoint_id and _str(raw[1]) != checkpoint_id:
                    continue
                tup = self._parse_tuple(thread_id, raw)
                if not _matches(tup.metadata, filter):
                    continue
                yield Emit(tup)
                emitted += 1
                if limit is not None and emitted >= limit:
                    return emitted
            if not cursor:
                break
        return emitted

    def _plan_list(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> Plan:
        if limit is not None and limit <= 0:
            return None
        before_id = (get_checkpoint_id(before) if before else None) or ""
        if config is None:
            threads = yield ScanThreads()
            ns, cid = None, None
        else:
            threads = [self._thread_id(config)]
            ns = config["configurable"].get("checkpoint_ns")
            cid = get_checkpoint_id(config)
        for thread_id in threads:
            n = yield from self._plan_list_thread(thread_id, ns, cid, filter, before_id, limit)
            if limit is not None:
                limit -= n
                if limit <= 0:
                    break
        return None

    def _plan_delete_thread(self, thread_id: str) -> Plan:
        yield self._script(
            "delete_thread", self._thread_id({"configurable": {"thread_id": thread_id}})
        )

    def _plan_delete_for_runs(self, run_ids: Sequence[str]) -> Plan:
        if not run_ids:
            return None
        runs = [encode(str(r)) for r in run_ids]
        threads = yield ScanThreads()
        for thread_id in threads:
            yield self._script("delete_runs", thread_id, *runs)
        return None

    def _plan_copy_thread(self, source_thread_id: str, target_thread_id: str) -> Plan:
        src = self._thread_id({"configurable": {"thread_id": source_thread_id}})
        dst = self._thread_id({"configurable": {"thread_id": target_thread_id}})
        dump = yield self._script("dump", src)
        yield self._script("load", dst, dump, self._ttl_ms)

    def _plan_prune(self, thread_ids: Sequence[str], strategy: str) -> Plan:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")
        for thread_id in thread_ids:
            tid = self._thread_id({"configurable": {"thread_id": thread_id}})
            yield self._script("prune", tid, strategy)

    def _plan_delta_history(self, config: RunnableConfig, channels: Sequence[str]) -> Plan:
        if not channels:
            return {}
        thread_id = self._thread_id(config)
        ns = config["configurable"].get("checkpoint_ns", "") or ""
        cid = get_checkpoint_id(config) or ""
        ancestors = yield self._script(
            "history", thread_id, encode(ns), cid, *(encode(str(c)) for c in channels)
        )
        collected: dict[str, list[PendingWrite]] = {c: [] for c in channels}
        seeds: dict[str, Any] = {}
        remaining = set(channels)
        for _, rec, blobs, writes in ancestors:
            if not remaining:
                break
            terminated: dict[str, Any] = {}
            for ch, blob in zip(self._header_channels(rec), blobs, strict=True):
                if ch in remaining and blob:
                    terminated[ch] = self.serde.loads_typed(unpack_typed(blob))
            for tid, ch, typed, _, _ in reversed(self._decode_writes(writes)):
                if ch in remaining:
                    collected[ch].append((tid, ch, self.serde.loads_typed(typed)))
            for ch, value in terminated.items():
                seeds[ch] = value
                remaining.discard(ch)
        result: dict[str, DeltaChannelHistory] = {}
        for ch in channels:
            entry: DeltaChannelHistory = {"writes": list(reversed(collected[ch]))}
            if ch in seeds:
                entry["seed"] = seeds[ch]
            result[ch] = entry
        return result

    # -- misc -----------------------------------------------------------------------

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Versions sort as strings: zero-padded counter plus a random fraction."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(str(current).split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    def _thread_from_marker(self, key: Any) -> str:
        return self.keys.thread_from_marker(cast(str | bytes, key))
