"""The I/O-free half of the checkpointer: keys, encoding and *plans*.

A plan is a generator that yields the operations it needs (:class:`Script` calls,
:class:`ScanThreads`) and receives their replies; it returns (or, for listings,
:class:`Emit`-s) the result. ``ValkeySaver`` and ``AsyncValkeySaver`` only execute
plans, with a sync or an async client, so every behaviour is written once and every
round trip is visible here.

Record layout (one HASH field per checkpoint, see ``_keys.CheckpointKeys``)::

    parent \\t run \\t blobfield,... \\t deltachannel,... \\t pair,... \\n body
    body = msgpack[ctype, cbytes, mtype, mbytes]   (or 0x01 + zstd of it)

The header is what the Lua scripts need (parent chain, blob lookup, run index,
indexed metadata pairs, DeltaChannel-safe pruning); the body is the serde's output.
Blobs, record bodies and pending writes above ``compress_min_bytes`` are stored as
``0x01`` + a zstd frame; every plain value starts with a msgpack array byte
(``0x9X``), so a value reads back whatever the setting was when it was written.

The thread index (``thread_index=True``, the default) is a set of sorted sets in one
slot (``P:{%ix}:...``): every thread, the threads of each run, and the threads with a
checkpoint carrying each indexed metadata pair (``index_metadata=``). Scripts cannot
span slots, so the put script reports what changed for the index (a new thread, a run
new to the thread, a pair whose count went from 0 to 1, or what a retention prune
removed) and the plan sends one more script to the index slot only then.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import os
import random
import re
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from operator import is_
from typing import Any, NamedTuple, cast
from uuid import UUID

import ormsgpack
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    EXCLUDED_METADATA_KEYS,
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    PendingWrite,
    get_checkpoint_id,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from langgraph_valkey_cache._client import require_bytes_client
from langgraph_valkey_cache._keys import CheckpointKeys, decode, digest, encode
from langgraph_valkey_cache._plans import Emit
from langgraph_valkey_cache._scripts import CHECKPOINT_SCRIPTS, ScriptRegistry
from langgraph_valkey_cache._serde import default_serde, dumps_checked, pack_typed, unpack_typed
from langgraph_valkey_cache._telemetry import Telemetry

__all__ = ["ValkeySaverBase", "TTLConfig"]

_ID_RE = re.compile(r"^[\x21-\x7e]{1,256}$")
_REGISTRY = ScriptRegistry(CHECKPOINT_SCRIPTS)
_LIST_PAGE = 100
_ID_PAGE = 1000  # thread ids per index page of thread_ids()
_RENEWED_SIZE = 10_000  # threads whose index renewal time is remembered
_KEY_CACHE_SIZE = 1024
_ZSTD = b"\x01"  # codec marker: never the first byte of a msgpack array (0x90-0x9f, 0xdc)
_PAIR_MAX = 200  # longer encoded values are indexed by their digest
_ITEMS = b"\x02"  # a list stored item by item: the marker, then 16-byte item digests
_RAW = b"\x00"  # a stored item: 0x00 + its msgpack bytes, or _ZSTD + zstd of them
_MIN_ITEMS = 2  # shorter lists are stored whole
_KNOWN_ITEMS = 100_000  # item digests remembered per namespace (16 bytes each)
# tokens for new item generations: unique per process (a forked child draws its own
# prefix, or workers forked from one parent would repeat each other's) and call
_TOKEN_PREFIX = os.urandom(8).hex().encode()
_TOKENS = itertools.count()


def _new_token_prefix() -> None:
    global _TOKEN_PREFIX
    _TOKEN_PREFIX = os.urandom(8).hex().encode()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_token_prefix)
_REMEMBER_LIST = 1 << 20  # the last version of lists up to 1 MB is kept, per channel...
_LISTS_SIZE = 256  # ...of this many (thread, namespace, channel)s...
_LISTS_BYTES = 16 << 20  # ...and this many stored bytes in all (then forgotten at once)


@dataclass(frozen=True)
class Script:
    """Run checkpoint script ``name`` with ``keys`` (all of one thread) and ``args``."""

    name: str
    keys: tuple[str | bytes, ...]
    args: tuple[Any, ...]


@dataclass(frozen=True)
class ScanThreads:
    """Reply: every thread id with data under this saver's prefix (SCAN per primary)."""


@dataclass(frozen=True)
class ScanKeys:
    """Reply: every key matching ``pattern`` (SCAN per primary)."""

    pattern: str


@dataclass(frozen=True)
class _NsKeys:
    """One (thread, namespace)'s encoded namespace and the KEYS of each script."""

    ns: str
    all: tuple[bytes, ...]  # list (and anything that refreshes the TTL)
    put: tuple[bytes, ...]
    put_writes: tuple[bytes, ...]
    get: tuple[bytes, ...]
    history: tuple[bytes, ...]


Op = Script | ScanThreads | ScanKeys | Emit
Plan = Generator[Op, Any, Any]

TTLConfig = dict[str, Any]


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value) or "," in value:
        raise ValueError(
            f"malformed {what} {value!r}: expected 1-256 printable ASCII characters "
            "without spaces or commas (LangGraph uses UUIDs)"
        )
    return value


def _matches(metadata: CheckpointMetadata, filter: dict[str, Any] | None) -> bool:
    return not filter or all(metadata.get(k) == v for k, v in filter.items())  # type: ignore[misc]


def _value_code(value: Any) -> str | None:
    """The index code of a metadata value, or None when it is not indexed (only str,
    int, float and bool are). Values Python finds equal get the same code
    (``1 == 1.0 == True``), so a filter finds every thread ``_matches`` would."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        code = "n" + str(value)
    elif isinstance(value, float):
        code = "n" + (str(int(value)) if value.is_integer() else repr(value))
    elif isinstance(value, str):
        code = "s" + value
    else:
        return None
    enc = encode(code)
    # codes start with n or s: "h" + a digest never equals one
    return enc if len(enc) <= _PAIR_MAX else "h" + digest(code)


def _array_start(data: bytes) -> tuple[int, int] | None:
    """(items, offset of the first) of a msgpack array, or None if ``data`` is not one."""
    if not data:
        return None
    b0 = data[0]
    if 0x90 <= b0 <= 0x9F:
        return b0 & 0x0F, 1
    if b0 == 0xDC:
        return int.from_bytes(data[1:3], "big"), 3
    if b0 == 0xDD:
        return int.from_bytes(data[1:5], "big"), 5
    return None


def _split_array(data: bytes, pos: int, n: int) -> list[bytes] | None:
    """The ``n`` top-level items of a msgpack array from ``pos`` to its end, as byte
    slices, when every item is flat (an ext, as LangGraph's serde writes messages and
    other objects, a string, bytes or a scalar); None for anything else (nested maps
    and arrays: the list is stored whole). An ext item is skipped by its length."""
    out = []
    size = len(data)
    for _ in range(n):
        if pos >= size:
            return None
        start, b = pos, data[pos]
        if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
            pos += 1
        elif 0xA0 <= b <= 0xBF:
            pos += 1 + (b & 0x1F)
        elif 0xD4 <= b <= 0xD8:  # fixext 1..16
            pos += 2 + (1 << (b - 0xD4))
        elif b in (0xC7, 0xD9, 0xC4):  # ext8 (+ type byte), str8, bin8
            pos += (3 if b == 0xC7 else 2) + data[pos + 1]
        elif b in (0xC8, 0xDA, 0xC5):
            pos += (4 if b == 0xC8 else 3) + int.from_bytes(data[pos + 1 : pos + 3], "big")
        elif b in (0xC9, 0xDB, 0xC6):
            pos += (6 if b == 0xC9 else 5) + int.from_bytes(data[pos + 1 : pos + 5], "big")
        elif b in (0xCC, 0xD0):
            pos += 2
        elif b in (0xCD, 0xD1):
            pos += 3
        elif b in (0xCA, 0xCE, 0xD2):
            pos += 5
        elif b in (0xCB, 0xCF, 0xD3):
            pos += 9
        else:
            return None
        out.append(data[start:pos])
    return out if pos == size else None


#: Item types whose serialised bytes depend on nothing but the object's identity.
_IMMUTABLE = frozenset(
    {str, bytes, int, float, bool, type(None), UUID, Decimal}
    | {_dt.datetime, _dt.date, _dt.time, _dt.timedelta}
)
_CHANGED = object()  # the snapshot of an item that is always serialised again


class _ListVersion(NamedTuple):
    """The last version of a list channel a saver wrote in one thread namespace."""

    items: list[Any]  # the item objects (kept alive: their identity is compared)
    snaps: list[Any]  # their _snapshot()s
    refs: list[bytes]  # their digests
    pairs: list[bytes]  # (digest, stored item) arguments
    size: int  # stored bytes of the items


def _snapshot(obj: Any) -> Any:
    """What decides whether list item ``obj``, the same object as in the previous
    version, still serialises as it did: nothing for an immutable value; for an object
    with attributes (a message, a document, a dataclass) the attribute values, as a
    tuple holding them (compared by identity); anything else is serialised again."""
    if type(obj) in _IMMUTABLE:
        return None
    attrs = getattr(obj, "__dict__", None)
    if type(attrs) is not dict or getattr(obj, "__pydantic_extra__", None):
        return _CHANGED
    return tuple(attrs.values())


def _unchanged(obj: Any, snap: Any) -> bool:
    if snap is None:
        return True
    if snap is _CHANGED:
        return False
    attrs = obj.__dict__
    if getattr(obj, "__pydantic_extra__", None):  # extras set since (see _snapshot)
        return False
    return len(attrs) == len(snap) and all(map(is_, attrs.values(), snap))


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 65536:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _zstd_loads(data: bytes) -> bytes:
    try:
        import zstandard
    except ImportError:
        raise RuntimeError(
            "this checkpoint was stored compressed (zstd): pip install "
            "'langgraph-valkey-cache[compress]' to read it"
        ) from None
    return cast(bytes, zstandard.ZstdDecompressor().decompress(data))


def _unz(data: bytes) -> bytes:
    """A stored value as written by the serde, whatever the compression setting."""
    return _zstd_loads(data[1:]) if data[:1] == _ZSTD else data


def _invalid_text(value: str, what: str, exc: UnicodeEncodeError) -> ValueError:
    return ValueError(
        f"{what} {value!r} cannot be stored: it is not valid Unicode text "
        f"(a lone surrogate at position {exc.start})"
    )


def _text(value: str, what: str) -> str:
    """``value``, or ``ValueError`` naming it if UTF-8 cannot represent it (a lone
    surrogate: msgpack would silently turn it into ``?``)."""
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise _invalid_text(value, what, exc) from None
    return value


def _key_part(value: str, what: str) -> str:
    """:func:`encode` with an error that names what the string was."""
    try:
        return encode(value)
    except ValueError:
        raise ValueError(
            f"{what} {value!r} cannot be stored: it is not valid Unicode text (a lone surrogate)"
        ) from None


def _check_texts(value: Any, what: str) -> None:
    """Refuse any string inside ``value`` (dict keys too) that UTF-8 cannot represent.
    Names are built only on the way to a failure: this runs on every ``put``."""
    if isinstance(value, str):
        if not value.isascii():
            _text(value, what)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and not k.isascii():
                _text(k, f"{what} key")
            if not (isinstance(v, str) and v.isascii()) and isinstance(v, (str, dict, list, tuple)):
                _check_texts(v, f"{what}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if isinstance(v, (str, dict, list, tuple)):
                _check_texts(v, f"{what}[{i}]")


def checkpoint_metadata(config: RunnableConfig, metadata: CheckpointMetadata) -> dict[str, Any]:
    """The metadata to store: ``metadata`` plus the config's scalar ``metadata`` and
    ``configurable`` entries, as LangGraph's ``get_serializable_checkpoint_metadata``
    merges them, but every string kept exactly (LangGraph's helper deletes NUL
    characters, which Postgres text cannot hold; msgpack can). A string that cannot
    be stored at all raises ``ValueError`` naming its key."""
    out: dict[str, Any] = dict(metadata)
    for extra in (config.get("metadata"), config.get("configurable")):
        if not extra:
            continue
        maps = getattr(extra, "maps", None)
        if maps is not None:  # LangGraph's ChainMap: its items() rebuilds it per key
            extra = {k: v for m in reversed(maps) for k, v in m.items()}
        for key, v in extra.items():
            if key in out or key in EXCLUDED_METADATA_KEYS or key.startswith("__"):
                continue
            if isinstance(v, (str, int, bool, float)):
                out[key] = v
    out.pop("writes", None)
    _check_texts(out, "checkpoint metadata")
    return out


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
        thread_index: bool = True,
        index_metadata: Sequence[str] = (),
        keep_last: int | None = None,
        compress_min_bytes: int | None = None,
        list_items: bool = True,
    ) -> None:
        super().__init__(serde=serde or default_serde())
        if isinstance(index_metadata, str):
            raise TypeError("index_metadata is a sequence of field names, e.g. ('user_id',)")
        if index_metadata and not thread_index:
            raise ValueError("index_metadata needs thread_index=True")
        if keep_last is not None and (
            not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1
        ):
            raise ValueError(f"keep_last must be a positive int or None, got {keep_last!r}")
        if compress_min_bytes is not None:
            if not isinstance(compress_min_bytes, int) or compress_min_bytes < 0:
                raise ValueError(
                    f"compress_min_bytes must be a non-negative int or None, "
                    f"got {compress_min_bytes!r}"
                )
            try:
                import zstandard  # noqa: F401
            except ImportError:
                raise ImportError(
                    "compress_min_bytes needs zstandard: "
                    "pip install 'langgraph-valkey-cache[compress]'"
                ) from None
        self.thread_index = thread_index
        self.index_metadata = tuple(index_metadata)
        self._indexed = {f: _key_part(f, "index_metadata field") for f in self.index_metadata}
        self.keep_last = keep_last
        self._keep_arg = str(keep_last or 0).encode()
        self.compress_min_bytes = compress_min_bytes
        self.list_items = list_items
        # (thread, ns) -> (generation, digests): the list items this saver saw stored
        # there while the items' generation was that one
        self._known: dict[tuple[str, str], tuple[bytes, set[bytes]]] = {}
        self._salts: dict[str, Any] = {}  # channel -> blake2b primed with its name
        # (thread, ns, channel) -> the last list version this saver wrote there
        self._lists: dict[tuple[str, str, str], _ListVersion] = {}
        self._lists_bytes = 0
        self._zlocal = threading.local()
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
        self._ttl_arg = str(self._ttl_ms).encode()
        # index keys outlive the threads they name: see _plan_index_refresh
        self._index_ttl_arg = str(self._ttl_ms * 3 // 2).encode()
        self._index_renewed: dict[str, float] = {}  # thread -> when (monotonic)
        self._read_ttl_arg = str(self._read_ttl_ms).encode()
        self._scripts = _REGISTRY.bind(client)
        self._telemetry = Telemetry("checkpoint", metrics=metrics)
        # (thread_id, ns) -> _NsKeys: the hot path names the same thread and namespace
        # on every call, so their keys are built once
        self._key_cache: dict[tuple[str, str], _NsKeys] = {}
        # (channel, version) -> blob field: a record names every channel's current
        # version, and most of them are the same as in the previous record
        self._fields: dict[tuple[str, Any], str] = {}

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

    def _ns_keys(self, thread_id: str, ns: str) -> _NsKeys:
        """The encoded namespace and each one-namespace script's KEYS, memoised."""
        found = self._key_cache.get((thread_id, ns))
        if found is None:
            _key_part(thread_id, "thread_id")
            ns_enc = _key_part(ns, "checkpoint_ns")
            every = tuple(k.encode() for k in self.keys.script_keys(thread_id, ns_enc))
            # list items (content-addressed, per namespace): P:{T}:e:<ns>
            e = (self.keys.base(thread_id) + "e:" + ns_enc).encode()
            every += (e,)
            nsk, runs, _, x, i, c, b, w, d, e = every
            # only what each script touches: without a TTL nothing is refreshed; the
            # pair counts only with a metadata index; retention deletes checkpoints
            put: tuple[bytes, ...] = (
                (nsk, runs, x, i, c, b) if self._indexed else (nsk, runs, i, c, b)
            )
            if self.list_items:
                put += (e,)
            found = _NsKeys(
                ns_enc,
                every,
                every if self._ttl_ms or self.keep_last else put,
                every if self._ttl_ms else (nsk, w, d),
                every if self._read_ttl_ms else (nsk, i, c, b, w, d, e),
                (nsk, i, c, b, w, d, e),
            )
            if len(self._key_cache) >= _KEY_CACHE_SIZE:
                self._key_cache.clear()
            self._key_cache[(thread_id, ns)] = found
        return found

    def _thread_script(self, name: str, thread_id: str, *args: Any) -> Script:
        _key_part(thread_id, "thread_id")
        return Script(name, self.keys.thread_keys(thread_id), args)

    # -- encoding ---------------------------------------------------------------------

    def _z(self, data: bytes) -> bytes:
        """``data``, zstd-compressed behind the codec marker when large enough (and
        only if that saves bytes)."""
        limit = self.compress_min_bytes
        if limit is None or len(data) < limit:
            return data
        comp = getattr(self._zlocal, "c", None)
        if comp is None:  # zstandard compressors are not thread-safe: one per thread
            import zstandard

            comp = self._zlocal.c = zstandard.ZstdCompressor(level=3)
        out = _ZSTD + comp.compress(data)
        return out if len(out) < len(data) else data

    def _unblob(self, blob: bytes) -> Any:
        return self.serde.loads_typed(unpack_typed(_unz(blob)))

    def _value(self, blob: bytes, items: bytes | Sequence[bytes], channel: str) -> Any:
        """A channel value: one blob, or a list reassembled from its stored items (the
        script sends raw items joined into one string, see ``load_items``)."""
        if blob[:1] != _ITEMS:
            return self._unblob(blob)
        n = (len(blob) - 1) // 16
        if isinstance(items, bytes):
            body = items
        elif len(items) != n or not all(items):
            raise RuntimeError(
                f"checkpoint data is damaged: an item of list channel {channel!r} is missing"
            )
        else:
            body = b"".join([it[1:] if it[:1] == _RAW else _zstd_loads(it[1:]) for it in items])
        return self.serde.loads_typed(("msgpack", _array_header(n) + body))

    def _list_blob(
        self,
        thread_id: str,
        ns: str,
        channel: str,
        value: list[Any],
        old: list[bytes],
        new: list[bytes],
    ) -> tuple[bytes | None, tuple[str, bytes] | None]:
        """(the reference blob of list ``value`` stored item by item, None; or None and
        the whole list serialised, to be stored whole). Appends the items' (digest,
        stored item) arguments to ``old`` (the items of the previous version this saver
        wrote there, which this one starts with) and ``new`` (the others).

        Only the items after the longest prefix that is unchanged since that version
        are serialised (as one list, cut into its items): a growing message list costs
        its new messages, not the whole thread, on every put. An item is unchanged when
        it is the same object and, for an object with attributes, every attribute is
        still the same value (:func:`_snapshot`: a message whose ``content`` or ``id``
        was reassigned is serialised again). A digest covers the channel and the item's
        stored bytes, so an item is stored once per namespace and channel, and garbage
        collection only compares blobs of one channel."""
        key = (thread_id, ns, channel)
        prev = self._lists.get(key)
        n, k = len(value), 0
        if prev is not None:
            objs, snaps = prev.items, prev.snaps
            common = min(n, len(objs))
            while k < common and value[k] is objs[k] and _unchanged(value[k], snaps[k]):
                k += 1
        parts: list[bytes] = []
        if k < n:
            what = f"value of channel {channel!r}"
            typed = dumps_checked(self.serde, value[k:] if k else value, what)
            if typed[0] != "msgpack":  # e.g. an encrypting serde: opaque bytes
                return None, (typed if not k else None)
            data = bytes(typed[1])
            start = _array_start(data)
            cut = None if start is None else _split_array(data, start[1], start[0])
            if cut is None:  # e.g. nested lists or maps: stored whole
                return None, (typed if not k else None)
            parts = cut
        salt = self._salts.get(channel)
        if salt is None:
            salt = hashlib.blake2b(
                _key_part(channel, "channel name").encode() + b"\x00", digest_size=16
            )
            if len(self._salts) >= _KEY_CACHE_SIZE:
                self._salts.clear()
            self._salts[channel] = salt
        refs: list[bytes] = prev.refs[:k] if prev is not None else []
        pairs: list[bytes] = prev.pairs[: 2 * k] if prev is not None else []
        old += pairs
        added: list[bytes] = []
        limit = self.compress_min_bytes
        for part in parts:
            stored = _RAW + part
            if limit is not None and len(part) >= limit:
                packed = self._z(part)
                if packed is not part:
                    stored = packed
            h = salt.copy()
            h.update(stored)
            ref = h.digest()
            refs.append(ref)
            added += (ref, stored)
        new += added
        size = sum([len(v) for v in added[1::2]])
        if prev is not None and k:  # the prefix's stored bytes
            size += prev.size if k == len(prev.items) else sum([len(v) for v in pairs[1::2]])
        if size <= _REMEMBER_LIST:
            self._lists_bytes += size - (prev.size if prev is not None else 0)
            if len(self._lists) >= _LISTS_SIZE or self._lists_bytes > _LISTS_BYTES:
                self._lists.clear()
                self._lists_bytes = size
            kept = prev.snaps[:k] if prev is not None else []
            snaps = kept + [_snapshot(o) for o in value[k:]]
            self._lists[key] = _ListVersion(list(value), snaps, refs, pairs + added, size)
        elif prev is not None:
            self._lists_bytes -= prev.size
            self._lists.pop(key, None)
        return _ITEMS + b"".join(refs), None

    def _pairs(self, metadata: dict[str, Any]) -> str:
        """The indexed metadata pairs of a record, comma-joined (encoded: no commas)."""
        out = []
        for field, enc in self._indexed.items():
            if field in metadata:
                code = _value_code(metadata[field])
                if code is not None:
                    out.append(enc + "=" + code)
        return ",".join(out)

    def _filter_pairs(self, filter: dict[str, Any] | None) -> tuple[list[str], bool]:
        """The index keys a filter can use, and whether they alone decide it (one
        indexed entry: the pair index is exact per thread)."""
        keys = []
        for field, value in (filter or {}).items():
            enc = self._indexed.get(field)
            code = _value_code(value) if enc is not None else None
            if code is not None:
                keys.append(self.keys.index_pair(enc + "=" + code))  # type: ignore[operator]
        return keys, len(keys) == len(filter or {}) == 1

    def _blob_field(self, channel: str, version: Any) -> str:
        found = self._fields.get((channel, version))
        if found is None:
            found = _key_part(channel, "channel name") + ":" + encode(str(version))
            if len(self._fields) >= _KEY_CACHE_SIZE:
                self._fields.clear()
            self._fields[(channel, version)] = found
        return found

    def _record(
        self,
        checkpoint: Checkpoint,
        metadata: dict[str, Any],
        parent_id: str,
        run: str,
    ) -> bytes:
        c = checkpoint.copy()
        c.pop("channel_values", None)  # type: ignore[misc]
        ctyped = dumps_checked(self.serde, c, "checkpoint")
        mtyped = dumps_checked(self.serde, metadata, "checkpoint metadata")
        counters = metadata.get("counters_since_delta_snapshot") or {}
        field = self._blob_field
        fields = ",".join([field(ch, ver) for ch, ver in checkpoint["channel_versions"].items()])
        deltas = ",".join([_key_part(str(ch), "channel name") for ch in counters])
        parts = [parent_id, run, fields, deltas]
        if self._indexed:
            parts.append(self._pairs(metadata))
        head = "\t".join(parts)
        body = ormsgpack.packb([ctyped[0], bytes(ctyped[1]), mtyped[0], bytes(mtyped[1])])
        return head.encode() + b"\n" + self._z(body)

    def _parse_record(self, rec: bytes) -> tuple[str | None, Checkpoint, CheckpointMetadata]:
        nl = rec.index(b"\n")
        parent = rec[:nl].split(b"\t", 1)[0].decode() or None
        ctype, cbytes, mtype, mbytes = ormsgpack.unpackb(_unz(rec[nl + 1 :]))
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
        rows = [ormsgpack.unpackb(_unz(w)) for w in raw if w]
        rows.sort(key=lambda r: writes_sort_key(r[2], r[0], r[1]))
        return [(r[0], r[3], (r[4], r[5]), r[2], r[1]) for r in rows]

    def _parse_tuple(self, thread_id: str, reply: list[Any]) -> CheckpointTuple:
        ns_enc, cid, rec, blobs, writes, items = reply
        ns = decode(_str(ns_enc))
        cid = _str(cid)
        parent, checkpoint, metadata = self._parse_record(rec)
        values: dict[str, Any] = {}
        for ch, blob, its in zip(self._header_channels(rec), blobs, items, strict=True):
            if blob:
                values[ch] = self._value(blob, its, ch)
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
        nk = self._ns_keys(thread_id, ns)
        cid = _check_id(checkpoint.get("id"), "checkpoint id")
        parent_id = configurable.get("checkpoint_id") or ""
        if parent_id:
            _check_id(parent_id, "parent checkpoint id")
        meta = checkpoint_metadata(config, metadata)
        run_id = meta.get("run_id")
        run = _key_part(str(run_id), "run_id") if run_id else ""
        values = checkpoint.get("channel_values", {})
        # bytes throughout: valkey-py then packs each argument without encoding it
        args = [cid.encode(), b"", run.encode(), self._ttl_arg, nk.ns.encode(), b"", self._keep_arg]
        stored = 0
        blobs: list[bytes] = []
        old: list[bytes] = []  # list items the previous versions started with
        new: list[bytes] = []  # and the others
        for ch, ver in new_versions.items():
            if ch in values:
                value = values[ch]
                blob = typed = None
                if self.list_items and type(value) is list and len(value) >= _MIN_ITEMS:
                    blob, typed = self._list_blob(thread_id, ns, ch, value, old, new)
                if blob is None:
                    if typed is None:
                        typed = dumps_checked(self.serde, value, f"value of channel {ch!r}")
                    blob = self._z(pack_typed(typed))
                blobs += (self._blob_field(ch, ver).encode(), blob)
                stored += len(blob)
        rec = args[1] = self._record(checkpoint, meta, parent_id, run)
        if self._indexed:
            args[5] = b"=" + self._pairs(meta).encode()
        items = old + new
        if not items:
            reply = yield Script("put", nk.put, (*args, b"0", b"n", *blobs))
        else:
            key = (thread_id, ns)
            seen = self._known.get(key)
            reply = -1
            if seen is not None:
                # items this saver saw stored in this namespace are not sent again: the
                # script checks nothing was collected there since (one field)
                known = seen[1]
                if not known.issuperset(old[0::2]):  # e.g. the previous put failed
                    new = items
                fresh = [x for i in range(0, len(new), 2) if new[i] not in known
                         for x in new[i : i + 2]]  # fmt: skip
                reply = yield Script(
                    "put", nk.put,
                    (*args, str(len(fresh)).encode(), b"v" + seen[0], *fresh, *blobs),
                )  # fmt: skip
                if reply != -1:
                    known.update(new[0::2])
                    stored += sum([len(v) for v in fresh[1::2]])
            if reply == -1:  # nothing known, or collected meanwhile: send them all
                token = b"n%s%x" % (_TOKEN_PREFIX, next(_TOKENS))
                reply = yield Script(
                    "put", nk.put, (*args, str(len(items)).encode(), token, *items, *blobs)
                )
                seen = None
                stored += sum([len(v) for v in items[1::2]])
            gen = reply[6] if isinstance(reply, list) else reply
            if not gen:  # a retention collected items: nothing is known
                self._known.pop(key, None)
            elif seen is None or seen[0] != gen or len(seen[1]) > _KNOWN_ITEMS:
                if len(self._known) >= _KEY_CACHE_SIZE:
                    self._known.clear()
                self._known[key] = (bytes(gen), set(items[0::2]))
        self._telemetry.stored(len(rec) + stored)
        if isinstance(reply, list):
            yield from self._plan_index(thread_id, reply[:6])
        if self._ttl_ms:
            yield from self._plan_index_refresh(thread_id)
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
        nk = self._ns_keys(thread_id, ns)
        cid = _check_id(configurable.get("checkpoint_id"), "checkpoint id")
        if not writes:
            return None
        task = str(task_id)
        prefix = f"{encode(cid)}:{_key_part(task, 'task_id')}:"
        _text(task_path, "task_path")
        args = [cid.encode(), self._ttl_arg, nk.ns.encode()]
        stored = 0
        for idx, (channel, value) in enumerate(writes):
            widx = WRITES_IDX_MAP.get(channel, idx)
            t, b = dumps_checked(self.serde, value, f"write to channel {channel!r}")
            packed = self._z(
                ormsgpack.packb(
                    [task, widx, task_path, _text(channel, "write channel"), t, bytes(b)]
                )
            )
            args += ((prefix + str(widx)).encode(), packed, b"1" if widx < 0 else b"0")
            stored += len(packed)
        reply = yield Script("put_writes", nk.put_writes, tuple(args))
        self._telemetry.stored(stored)
        if isinstance(reply, list):  # writes before any checkpoint created the thread
            yield from self._plan_index(thread_id, [1, [], [], 0, [], []])
        if self._ttl_ms:
            yield from self._plan_index_refresh(thread_id)
        return None

    def _plan_get_tuple(self, config: RunnableConfig) -> Plan:
        thread_id = self._thread_id(config)
        configurable = config["configurable"]
        ns = configurable.get("checkpoint_ns", "") or ""
        nk = self._ns_keys(thread_id, ns)
        cid = get_checkpoint_id(config) or ""
        if cid:
            _check_id(cid, "checkpoint id")
        reply = yield Script("get", nk.get, (nk.ns.encode(), cid.encode(), self._read_ttl_arg))
        if not reply:
            return None
        if self._read_ttl_ms:  # the read slid the thread's TTL
            yield from self._plan_index_refresh(thread_id)
        return self._parse_tuple(thread_id, reply)

    def _plan_index(self, thread_id: str, reply: list[Any]) -> Plan:
        """Apply what a thread script reported to the global thread index:
        ``[new thread, new runs, new pairs, gone, dropped pairs, dropped runs]``."""
        if not self.thread_index:
            return None
        new_thread, new_runs, fresh, gone, dropped, dropped_runs = reply
        member = encode(thread_id).encode()
        keys: list[str] = []
        slot: dict[str, int] = {}
        args: list[Any] = []

        def op(kind: bytes, key: str) -> None:
            if key not in slot:
                keys.append(key)
                slot[key] = len(keys)
            args.extend((kind, slot[key], member))

        # removals first: an overwrite may drop and re-add the same entry
        if int(gone):
            op(b"r", self.keys.index_threads())
        for p in dropped:
            op(b"r", self.keys.index_pair(_str(p)))
        for r in dropped_runs:
            op(b"r", self.keys.index_run(_str(r)))
        if int(new_thread):
            op(b"a", self.keys.index_threads())
        for r in new_runs:
            op(b"a", self.keys.index_run(_str(r)))
        for p in fresh:
            op(b"a", self.keys.index_pair(_str(p)))
        if args:
            yield Script("index_update", tuple(keys), (self._index_ttl_arg, *args))
        if int(new_thread) and self._ttl_ms:
            self._refreshed(thread_id)  # every entry it has was just written
        return None

    def _plan_forget(self, thread_enc: bytes, keys: Sequence[str]) -> Plan:
        """A thread the index named is gone (expired): drop it from ``keys``."""
        args: list[Any] = []
        for i in range(len(keys)):
            args += (b"r", i + 1, thread_enc)
        yield Script("index_update", tuple(keys), (self._index_ttl_arg, *args))

    def _refreshed(self, thread_id: str) -> bool:
        """Note that ``thread_id``'s index entries are being renewed now; False if they
        were renewed less than a tenth of the TTL ago (by this saver)."""
        now = time.monotonic()
        last = self._index_renewed.get(thread_id)
        if last is not None and now - last < self._ttl_ms / 10_000:
            return False
        if len(self._index_renewed) >= _RENEWED_SIZE:
            self._index_renewed.clear()
        self._index_renewed[thread_id] = now
        return True

    def _plan_index_refresh(self, thread_id: str) -> Plan:
        """With a TTL the index keys expire too (after 1.5 TTL, extended by every add):
        a thread kept alive by its writes (or reads, with ``refresh_on_read``) adds its
        entries again at most once per tenth of the TTL per saver, so no index key
        expires before a thread it names (2 round trips then, none otherwise)."""
        if not (self.thread_index and self._ttl_ms) or not self._refreshed(thread_id):
            return None
        info = yield self._thread_script("index_info", thread_id)
        if not info:
            return None
        keys = [self.keys.index_threads()]
        keys += [self.keys.index_pair(_str(p)) for p in info[0]]
        keys += [self.keys.index_run(_str(r)) for r in info[1]]
        member = encode(thread_id).encode()
        args: list[Any] = [self._index_ttl_arg]
        for i in range(len(keys)):
            args += (b"a", i + 1, member)
        yield Script("index_update", tuple(keys), tuple(args))
        return None

    def _plan_index_page(self, keys: Sequence[str], cursor: str, page: int) -> Plan:
        """One page of the encoded thread ids in every one of ``keys``: returns
        ``(members, next cursor)``, the cursor ``None`` after the last page. Start with
        ``cursor=""``."""
        members, after = yield Script("index_page", tuple(keys), (cursor, page))
        return list(members or ()), (_str(after) if after else None)

    def _candidates(self, filter: dict[str, Any] | None) -> tuple[list[str], bool]:
        keys, exact = self._filter_pairs(filter)
        if not keys:
            return [self.keys.index_threads()], not filter
        return keys, exact

    def _plan_list_thread(
        self,
        thread_id: str,
        ns: str | None,
        checkpoint_id: str | None,
        filter: dict[str, Any] | None,
        before: str,
        limit: int | None,
        emit: bool = True,
    ) -> Plan:
        """Emit a thread's checkpoints newest first; returns ``(emitted, gone)``
        (gone: the thread has no data at all). ``emit=False`` only counts."""
        emitted = 0
        keys: tuple[str | bytes, ...]
        if ns is not None:
            nk = self._ns_keys(thread_id, ns)
            ns_enc, keys = nk.ns, nk.all
        else:
            _key_part(thread_id, "thread_id")
            ns_enc, keys = "", self.keys.thread_keys(thread_id)
        if self._read_ttl_ms:  # this read slides the thread's TTL
            yield from self._plan_index_refresh(thread_id)
        if checkpoint_id and ns is not None:
            # one known checkpoint: a single read
            reply = yield Script("get", nk.get, (ns_enc, checkpoint_id, self._read_ttl_ms))
            if reply and (not before or checkpoint_id < before):
                tup = self._parse_tuple(thread_id, reply)
                if _matches(tup.metadata, filter):
                    if emit:
                        yield Emit(tup)
                    return 1, False
            return 0, False
        exact = not filter and not checkpoint_id
        cursor = before
        gone = False
        while limit is None or emitted < limit:
            page_size = min(limit - emitted, _LIST_PAGE) if (exact and limit) else _LIST_PAGE
            reply = yield Script(
                "list", keys,
                ("1" if ns is not None else "0", ns_enc, cursor, page_size, self._read_ttl_ms),
            )  # fmt: skip
            tuples, cursor = reply[0], _str(reply[1]) if reply[1] else ""
            gone = not int(reply[2])
            for raw in tuples:
                if checkpoint_id and _str(raw[1]) != checkpoint_id:
                    continue
                tup = self._parse_tuple(thread_id, raw)
                if not _matches(tup.metadata, filter):
                    continue
                if emit:
                    yield Emit(tup)
                emitted += 1
                if limit is not None and emitted >= limit:
                    return emitted, gone
            if not cursor:
                break
        return emitted, gone

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
        if config is not None:
            thread_id = self._thread_id(config)
            ns = config["configurable"].get("checkpoint_ns")
            cid = get_checkpoint_id(config)
            yield from self._plan_list_thread(thread_id, ns, cid, filter, before_id, limit)
            return None
        if not self.thread_index:
            for thread_id in (yield ScanThreads()):
                n, _ = yield from self._plan_list_thread(
                    thread_id, None, None, filter, before_id, limit
                )
                if limit is not None:
                    limit -= n
                    if limit <= 0:
                        break
            return None
        keys, _ = self._candidates(filter)
        # the index names threads; each thread's listing applies the whole filter (so
        # with one, a thread may give nothing: full pages)
        page = min(limit, _LIST_PAGE) if limit and not filter else _LIST_PAGE
        cursor: str | None = ""
        while cursor is not None:
            members, cursor = yield from self._plan_index_page(keys, cursor, page)
            for member in members:
                thread_id = decode(_str(member))
                n, gone = yield from self._plan_list_thread(
                    thread_id, None, None, filter, before_id, limit
                )
                if gone:
                    yield from self._plan_forget(_bytes(member), keys)
                if limit is not None:
                    limit -= n
                    if limit <= 0:
                        return None
        return None

    def _plan_search_threads(self, filter: dict[str, Any] | None, limit: int | None) -> Plan:
        """Thread ids with at least one checkpoint whose metadata matches ``filter``."""
        if limit is not None and limit <= 0:
            return []
        found: list[str] = []
        if not self.thread_index:
            for thread_id in (yield ScanThreads()):
                if not filter:
                    found.append(thread_id)
                else:
                    n, _ = yield from self._plan_list_thread(
                        thread_id, None, None, filter, "", 1, emit=False
                    )
                    if n:
                        found.append(thread_id)
                if limit is not None and len(found) >= limit:
                    break
            return found
        keys, exact = self._candidates(filter)
        page = min(limit, _LIST_PAGE) if limit and exact else _LIST_PAGE
        cursor: str | None = ""
        while cursor is not None:
            members, cursor = yield from self._plan_index_page(keys, cursor, page)
            for member in members:
                thread_id = decode(_str(member))
                if not exact:
                    # several entries (each may match a different checkpoint) or a
                    # field that is not indexed: check the thread's checkpoints
                    n, gone = yield from self._plan_list_thread(
                        thread_id, None, None, filter, "", 1, emit=False
                    )
                    if gone:
                        yield from self._plan_forget(_bytes(member), keys)
                    if not n:
                        continue
                found.append(thread_id)
                if limit is not None and len(found) >= limit:
                    return found
        return found

    def _plan_thread_ids(self) -> Plan:
        """Every thread id, from the thread index (pages of 1000, no ``SCAN``). With a
        TTL each one is checked (one round trip per thread, as a listing does) and
        expired ones leave the index; without one the index is the answer (only
        deletes remove threads, and they update it). Without the index: ``SCAN``."""
        if not self.thread_index:
            threads = yield ScanThreads()
            return threads
        keys = [self.keys.index_threads()]
        out: list[str] = []
        cursor: str | None = ""
        while cursor is not None:
            members, cursor = yield from self._plan_index_page(keys, cursor, _ID_PAGE)
            for member in members:
                thread_id = decode(_str(member))
                if self._ttl_ms:
                    if not int((yield self._thread_script("alive", thread_id))):
                        yield from self._plan_forget(_bytes(member), keys)
                        continue
                out.append(thread_id)
        return out

    def _forget_items(self, thread_id: str) -> None:
        """This saver is about to drop items of ``thread_id``: stop skipping them."""
        for key in [k for k in self._known if k[0] == thread_id]:
            self._known.pop(key, None)

    def _plan_delete_thread(self, thread_id: str) -> Plan:
        tid = self._thread_id({"configurable": {"thread_id": thread_id}})
        self._forget_items(tid)
        reply = yield self._thread_script("delete_thread", tid)
        yield from self._plan_index(tid, [0, [], [], *reply])

    def _plan_delete_for_runs(self, run_ids: Sequence[str]) -> Plan:
        if not run_ids:
            return None
        runs = [_key_part(str(r), "run_id") for r in run_ids]
        threads: list[str]
        if self.thread_index:
            threads, seen = [], set()
            for run in runs:
                keys = [self.keys.index_run(run)]
                cursor: str | None = ""
                while cursor is not None:
                    members, cursor = yield from self._plan_index_page(keys, cursor, _LIST_PAGE)
                    for m in members:
                        if m not in seen:
                            seen.add(m)
                            threads.append(decode(_str(m)))
        else:
            threads = yield ScanThreads()
        for thread_id in threads:
            self._forget_items(thread_id)
            reply = yield self._thread_script("delete_runs", thread_id, *runs)
            yield from self._plan_index(thread_id, [0, [], [], *reply])
        return None

    def _plan_copy_thread(self, source_thread_id: str, target_thread_id: str) -> Plan:
        src = self._thread_id({"configurable": {"thread_id": source_thread_id}})
        dst = self._thread_id({"configurable": {"thread_id": target_thread_id}})
        dump = yield self._thread_script("dump", src)
        reply = yield self._thread_script("load", dst, dump, self._ttl_ms)
        yield from self._plan_index(dst, reply)

    def _plan_prune(self, thread_ids: Sequence[str], strategy: str) -> Plan:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")
        for thread_id in thread_ids:
            tid = self._thread_id({"configurable": {"thread_id": thread_id}})
            self._forget_items(tid)
            reply = yield self._thread_script("prune", tid, strategy)
            yield from self._plan_index(tid, [0, [], [], *reply])

    def _plan_reindex(self) -> Plan:
        """Rebuild the thread index from the threads' own data (SCAN of the thread
        markers): after an upgrade from a version without it, a crash between a
        checkpoint write and its index write, or TTL expiries never listed since."""
        entries: dict[str, list[bytes]] = {self.keys.index_threads(): []}
        for thread_id in (yield ScanThreads()):
            member = encode(thread_id).encode()
            info = yield self._thread_script("index_info", thread_id)
            if not info:
                continue
            entries[self.keys.index_threads()].append(member)
            for p in info[0]:
                entries.setdefault(self.keys.index_pair(_str(p)), []).append(member)
            for r in info[1]:
                entries.setdefault(self.keys.index_run(_str(r)), []).append(member)
        stale = yield ScanKeys(self.keys.index_pattern())
        for key in stale:
            entries.setdefault(_str(key), [])
        for key, members in entries.items():
            # replaced key by key, 1000 members per script (a script blocks the shard)
            for start in range(0, max(len(members), 1), 1000):
                args: list[Any] = [b"d", 1, b""] if start == 0 else []
                for m in members[start : start + 1000]:
                    args += (b"a", 1, m)
                yield Script("index_update", (key,), (self._index_ttl_arg, *args))
        return len(entries[self.keys.index_threads()])

    def _plan_delta_history(self, config: RunnableConfig, channels: Sequence[str]) -> Plan:
        if not channels:
            return {}
        thread_id = self._thread_id(config)
        ns = config["configurable"].get("checkpoint_ns", "") or ""
        keys = self._ns_keys(thread_id, ns).history
        cid = get_checkpoint_id(config) or ""
        if cid:
            _check_id(cid, "checkpoint id")
        chans = [_key_part(str(c), "channel name") for c in channels]
        ancestors = yield Script("history", keys, (cid, *chans))
        collected: dict[str, list[PendingWrite]] = {c: [] for c in channels}
        seeds: dict[str, Any] = {}
        remaining = set(channels)
        for _, rec, blobs, writes, items in ancestors:
            if not remaining:
                break
            terminated: dict[str, Any] = {}
            for ch, blob, its in zip(self._header_channels(rec), blobs, items, strict=True):
                if ch in remaining and blob:
                    terminated[ch] = self._value(blob, its, ch)
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
