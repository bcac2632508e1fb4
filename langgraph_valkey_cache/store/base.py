"""The I/O-free half of the store: validation, encoding and *plans*.

A plan is a generator that yields :class:`Pipe` (commands sent as one pipeline, one
round trip per node) or :class:`Embed` (texts for the embedder) and receives the
replies. :class:`ValkeyStore` and :class:`AsyncValkeyStore` only execute plans, so
sync and async share every behaviour and every round trip is visible here.

Data layout: see :class:`langgraph_valkey_cache._keys.StoreKeys`. Round trips: a batch
of N gets is 1; N puts 1 (+1 when a namespace appears, +2 when one empties); a search
without query 2; a vector search 1: one FT.SEARCH KNN returning whole items (each
vector doc carries a copy of its item in one field ``it``, written by the same
script), plus a retry with a larger K when post-filtering left fewer than ``limit``
hits and more exist, one exact pass when an HNSW KNN returned fewer than K, 2 for
unscored fill-ins when still short, 1 for a TTL refresh; ``list_namespaces`` 2.

Vectors are checked before anything is written: a NaN, an infinity, a value beyond
FLOAT32 or a wrong dimension raises ``ValueError`` naming the item and field (or the
query); zero vectors are not written (no cosine), so scores are always finite.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import struct
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from langchain_core.embeddings import Embeddings
from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    ensure_embeddings,
    get_text_at_path,
    tokenize_path,
    validate_op_namespace,
)

from langgraph_valkey_cache._client import is_cluster, require_bytes_client
from langgraph_valkey_cache._keys import StoreKeys, decode, digest, encode
from langgraph_valkey_cache._scripts import STORE_SCRIPTS, ScriptRegistry
from langgraph_valkey_cache._search import (
    INDEX_WAIT_SECONDS,
    MAX_KNN_K,
    NoCoordinator,
    filter_command,
    hnsw_ef_runtime,
    is_backfilling,
    is_index_exists_error,
    is_missing_index_error,
    is_unknown_command_error,
    is_zero_vector,
    knn_command,
    pack_vector,
    parse_info,
    parse_search,
)
from langgraph_valkey_cache._telemetry import Telemetry
from langgraph_valkey_cache._wire import wire_for
from langgraph_valkey_cache.store import search as q

__all__ = ["Call", "Embed", "Pipe", "Sleep", "ValkeyStoreBase", "op_name"]

logger = logging.getLogger("langgraph_valkey_cache.store")
_REGISTRY = ScriptRegistry(STORE_SCRIPTS)
_ALGORITHMS = ("HNSW", "FLAT")


@dataclass(frozen=True)
class Call:
    """One command: a store script (``script``, ``keys``, ``args``) or raw ``args``."""

    args: tuple[Any, ...]
    script: str | None = None
    keys: tuple[str, ...] = ()
    # on a cluster: sent to every primary (alone in its Pipe); the reply is the list of
    # the primaries' replies, server errors as values
    each_primary: bool = False


@dataclass(frozen=True)
class Pipe:
    """Reply: the replies of ``calls``, sent as one pipeline (errors raised)."""

    calls: list[Call]
    # a server error (e.g. FT.INFO on a missing index) becomes the reply, not raised
    return_errors: bool = False


@dataclass(frozen=True)
class Embed:
    """Reply: embeddings of ``texts`` (``embed_query`` each when ``query``)."""

    texts: list[str]
    query: bool = False


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds`` (polling an index backfill)."""

    seconds: float


PlanOp = Pipe | Embed | Sleep
Plan = Generator[PlanOp, Any, Any]
# a put ready to send: (op, encoded namespace, JSON value or None to delete,
# [(field path, text to embed)])
_Prepared = tuple[PutOp, str, str | None, list[tuple[str, str]]]
# every vector doc carries its item as one field, ``it`` = "<created> <updated> <ttl>
# <JSON value>", so a KNN returns whole items (one round trip, one field to parse)
_ITEM_FIELDS = ("it",)


@dataclass
class _Row:
    ns: str  # encoded namespace
    key: str  # encoded key
    value: dict[str, Any]
    created: int
    updated: int
    ttl: int
    nv: int
    vs: str = ""  # vector space of the item's vectors
    vectors: list[bytes] = field(default_factory=list)

    def item(self, keys: StoreKeys, score: float | None = None, search: bool = False) -> Item:
        ns, key = _ns_decode(self.ns), decode(self.key)
        created, updated = _dt(self.created), _dt(self.updated)
        if search:
            return SearchItem(
                namespace=ns,
                key=key,
                value=self.value,
                created_at=created,
                updated_at=updated,
                score=score,
            )
        return Item(value=self.value, key=key, namespace=ns, created_at=created, updated_at=updated)


# namespaces repeat across results: decode each once
_ns_decode = functools.lru_cache(maxsize=4096)(StoreKeys.ns_decode)


# marks a KNN hit whose vector doc lacks the item's fields (written by older code)
_LEGACY = _Row("", "", {}, 0, 0, 0, 0)


def op_name(ops: Sequence[Op]) -> str:
    """Telemetry name of a batch: the op kind when all ops share one."""
    kinds = {type(op) for op in ops}
    if len(kinds) != 1:
        return "batch"
    kind = kinds.pop()
    if kind is PutOp:
        return "delete" if all(op.value is None for op in ops) else "put"  # type: ignore[union-attr]
    return {GetOp: "get", SearchOp: "search", ListNamespacesOp: "list_namespaces"}.get(
        kind, "batch"
    )


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def _b(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("latin-1")


def _finite(value: Any) -> float | None:
    try:
        f = float(value)  # float() takes bytes too
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc)


def _embed_identity(embed: Any) -> str:
    """What makes two embedders' vectors comparable: the class and its model fields."""
    if embed is None or isinstance(embed, str):
        return str(embed)
    if isinstance(embed, Embeddings):
        cls = type(embed)
        parts = [f"{cls.__module__}.{cls.__qualname__}"]
        for attr in ("model", "model_name", "model_id", "deployment", "dimensions", "dims"):
            value = getattr(embed, attr, None)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                parts.append(f"{attr}={value}")
        return ";".join(parts)
    return f"{getattr(embed, '__module__', '')}.{getattr(embed, '__qualname__', repr(embed))}"


def _cosine(query: Sequence[float], blobs: Sequence[bytes]) -> list[float]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with langchain's deps
        out = []
        qn = math.sqrt(sum(x * x for x in query))
        for blob in blobs:
            v = struct.unpack(f"<{len(blob) // 4}f", blob)
            vn = math.sqrt(sum(x * x for x in v))
            dot = sum(a * b for a, b in zip(query, v, strict=True))
            out.append(dot / (qn * vn) if qn and vn else 0.0)
        return out
    if not blobs:
        return []
    x = np.asarray(query, dtype=np.float32)
    y = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1)
    norms = np.linalg.norm(y, axis=1) * np.linalg.norm(x)
    sims = np.zeros(len(blobs), dtype=np.float64)
    mask = norms != 0
    sims[mask] = (y[mask] @ x) / norms[mask]
    return [float(s) for s in sims]


class ValkeyStoreBase(BaseStore):
    """Shared state and plans of :class:`ValkeyStore` and :class:`AsyncValkeyStore`."""

    supports_ttl: bool = True

    def _init_store(
        self,
        client: Any,
        *,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        prefix: str = "lgv:store",
        filter_fields: Sequence[str] = (),
        vector_algorithm: str = "HNSW",
        vector_params: dict[str, Any] | None = None,
        embedding_cache: Any = None,
        metrics: Any = True,
    ) -> None:
        self.client = client
        require_bytes_client(client, "the store", "vectors travel as raw FLOAT32 bytes")
        space = ""
        if index:
            identity = _embed_identity(index.get("embed"))
            space = digest("space", str(index.get("dims")), identity)[:12]
        self.keys = StoreKeys(prefix, space)
        self.ttl_config = ttl
        if ttl and ttl.get("default_ttl") is not None and ttl["default_ttl"] <= 0:  # type: ignore[operator]
            raise ValueError(
                f"ttl['default_ttl'] must be positive minutes, got {ttl['default_ttl']!r}"
            )
        self.filter_fields = q.FilterFields(filter_fields)
        algorithm = vector_algorithm.upper()
        if algorithm not in _ALGORITHMS:
            raise ValueError(
                f"vector_algorithm must be one of {_ALGORITHMS}, got {vector_algorithm!r}"
            )
        self.vector_algorithm = algorithm
        self.vector_params = {k.upper(): v for k, v in (vector_params or {}).items()}
        ef = self.vector_params.get("EF_RUNTIME")
        if ef is not None:
            if algorithm != "HNSW":
                raise ValueError("vector_params['EF_RUNTIME'] applies to HNSW only")
            hnsw_ef_runtime(1, ef)  # validates
        # None: derived from each query's k (hnsw_ef_runtime)
        self._ef_override: int | None = None if ef is None else int(ef)
        self.index_config: IndexConfig | None = None
        self.embeddings: Any = None
        self._fields: list[tuple[str, Any]] = []
        self.index_name: str | None = None
        if index:
            dims = index.get("dims")
            if not isinstance(dims, int) or dims <= 0:
                raise ValueError(f"index['dims'] must be a positive int, got {dims!r}")
            self.index_config = dict(index)  # type: ignore[assignment]
            self.embeddings = ensure_embeddings(index.get("embed"))
            if embedding_cache:
                self.embeddings = self._cached(self.embeddings, embedding_cache, prefix)
            self._fields = [
                (p, tokenize_path(p) if p != "$" else p) for p in (index.get("fields") or ["$"])
            ]
            # EF_RUNTIME is a query-time knob: changing it must not rebuild the index
            built = sorted((k, v) for k, v in self.vector_params.items() if k != "EF_RUNTIME")
            config = json.dumps([dims, algorithm, built, list(filter_fields)], default=str)
            self.index_name = self.keys.index_name(digest(self.keys.vector_prefix, config))
        self.dims: int | None = index["dims"] if index else None
        # None: not checked yet; False: no FT module (brute-force fallback)
        self._search_ok: bool | None = None
        self._warned = False
        self._scripts = _REGISTRY.bind(client)
        self._cluster = is_cluster(client)
        self._wire: Any = wire_for(client)  # the lean command path (standalone)
        self._telemetry = Telemetry("store", metrics=metrics)

    def _cached(self, embeddings: Any, cache: Any, prefix: str) -> Any:
        """Route embeddings through the shared embedding cache (``CachedEmbeddings``)."""
        from langgraph_valkey_cache._client import is_async_client
        from langgraph_valkey_cache.embeddings import CachedEmbeddings, ValkeyByteStore

        if cache is True:
            side = "async_client" if is_async_client(self.client) else "client"
            cache = ValkeyByteStore(**{side: self.client}, prefix=f"{prefix}:emb")
        return CachedEmbeddings(embeddings, cache)

    # -- calls ----------------------------------------------------------------------

    def _commands(self, calls: Sequence[Call]) -> list[tuple[Any, ...]]:
        """The commands of a pipelined step (a script as ``EVALSHA`` of its sha)."""
        return [
            ("EVALSHA", self._scripts[c.script].sha, len(c.keys), *c.keys, *c.args)
            if c.script
            else c.args
            for c in calls
        ]

    def _script(self, name: str, key: str, *args: Any) -> Call:
        return Call(args, script=name, keys=(key,))

    def _mget_calls(
        self, wanted: Sequence[tuple[str, str, bool]]
    ) -> tuple[list[Call], list[list[int]]]:
        """One ``mget`` script call per namespace for ``(E, encoded K, refresh)`` triples;
        also the positions each call answers."""
        groups: dict[str, list[int]] = {}
        for pos, (ns, _, _) in enumerate(wanted):
            groups.setdefault(ns, []).append(pos)
        calls = []
        for ns, positions in groups.items():
            ib, _, _, xkey = self.keys.bases(ns)
            vpre, vpost = self.keys.vector_parts(ns)
            args: list[Any] = [ib, vpre, vpost, xkey]
            for pos in positions:
                args += [wanted[pos][1], int(wanted[pos][2])]
            calls.append(self._script("mget", ib + wanted[positions[0]][1], *args))
        return calls, list(groups.values())

    def _plan_mget(self, wanted: Sequence[tuple[str, str, bool]]) -> Plan:
        """Rows (None when absent) for ``(E, encoded K, refresh)`` triples: one round trip."""
        rows: list[_Row | None] = [None] * len(wanted)
        if not wanted:
            return rows
        calls, groups = self._mget_calls(wanted)
        replies = yield Pipe(calls)
        for positions, reply in zip(groups, replies, strict=True):
            for pos, r in zip(positions, reply, strict=True):
                if r and isinstance(r, list) and r[0] is not None:
                    ns, k, _ = wanted[pos]
                    v, c, u, t, nv, vs = r
                    rows[pos] = _Row(ns, k, json.loads(v), int(c), int(u), int(t), int(nv), _s(vs))
        return rows

    # -- batch ----------------------------------------------------------------------

    def _plan_batch(self, ops: Iterable[Op]) -> Plan:
        ops = list(ops)
        results: list[Result] = [None] * len(ops)
        gets: list[tuple[int, GetOp]] = []
        searches: list[tuple[int, SearchOp]] = []
        listings: list[tuple[int, ListNamespacesOp]] = []
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for i, op in enumerate(ops):
            validate_op_namespace(op)
            if isinstance(op, GetOp):
                gets.append((i, op))
            elif isinstance(op, SearchOp):
                searches.append((i, op))
            elif isinstance(op, ListNamespacesOp):
                listings.append((i, op))
            elif isinstance(op, PutOp):
                if not op.namespace:
                    raise InvalidNamespaceError("Namespace cannot be empty.")
                puts[(op.namespace, str(op.key))] = op
            else:
                raise ValueError(f"Unknown operation type: {type(op)}")
        # encode puts first: bad input fails before anything is read or written
        prepared = [self._prepare_put(op) for op in puts.values()]

        if gets:
            wanted = [
                (self.keys.ns(op.namespace), encode(str(op.key)), op.refresh_ttl) for _, op in gets
            ]
            rows = yield from self._plan_mget(wanted)
            for (i, _), row in zip(gets, rows, strict=True):
                results[i] = row.item(self.keys) if row else None
        for i, sop in searches:
            results[i] = yield from self._plan_search(sop)
        for i, lop in listings:
            results[i] = yield from self._plan_list_namespaces(lop)
        if prepared:
            yield from self._plan_puts(prepared)
        return results

    # -- puts -----------------------------------------------------------------------

    def _prepare_put(self, op: PutOp) -> _Prepared:
        ns = self.keys.ns(op.namespace)
        if op.value is None:
            return op, ns, None, []
        if not isinstance(op.value, Mapping):
            raise TypeError(f"store values must be dicts, got {type(op.value).__name__}")
        if not isinstance(op.value, dict):
            op = op._replace(value=dict(op.value))
        try:
            text = json.dumps(op.value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"value of {op.namespace}/{op.key!r} is not JSON-serialisable: {exc}"
            ) from exc
        if op.ttl is not None and (not isinstance(op.ttl, (int, float)) or op.ttl <= 0):
            raise ValueError(f"ttl must be a positive number of minutes or None, got {op.ttl!r}")
        texts: list[tuple[str, str]] = []  # (field path, text)
        if self.embeddings is not None and op.index is not False:
            paths = (
                self._fields
                if op.index is None
                else [(p, tokenize_path(p) if p != "$" else p) for p in op.index]
            )
            for path, tokens in paths:
                texts.extend((path, t) for t in get_text_at_path(op.value, tokens))
        return op, ns, text, texts

    def _plan_puts(self, prepared: list[_Prepared]) -> Plan:
        all_texts = [t for *_, texts in prepared for _, t in texts]
        vectors: list[list[float]] = []
        if all_texts:
            vectors = yield Embed(all_texts)
            if len(vectors) != len(all_texts):
                raise ValueError(
                    f"embedder returned {len(vectors)} vectors for {len(all_texts)} texts"
                )
        # every vector checked before anything is written
        blobs: list[bytes | None] = []
        fields = ((op, path) for op, _, _, texts in prepared for path, _ in texts)
        for (op, path), v in zip(fields, vectors, strict=True):
            what = f"embedding of item {op.namespace}/{op.key!r}, field {path!r}"
            blob = pack_vector(v, self.dims, what)
            # a zero vector has no cosine: RediSearch would skip it, valkey-search score
            # it 0 against everything; not written, so the item's text is unscored alike
            blobs.append(None if is_zero_vector(v) else blob)
        calls: list[Call] = []
        pos = 0
        for op, ns, text, texts in prepared:
            _, _, ukey, xkey = self.keys.bases(ns)
            vpre, vpost = self.keys.vector_parts(ns)
            item = self.keys.item(ns, str(op.key))
            k = encode(str(op.key))
            if text is None:
                calls.append(self._script("delete", item, vpre, vpost, ukey, xkey, k))
                continue
            mine = [b for b in blobs[pos : pos + len(texts)] if b is not None]
            pos += len(texts)
            shared = ["nsp", q.ns_tags(op.namespace), *self.filter_fields.doc_fields(op.value)]  # type: ignore[arg-type]
            ttl_ms = int(op.ttl * 60_000) if op.ttl else 0
            calls.append(
                self._script(
                    "put",
                    item,
                    vpre,
                    vpost,
                    self.keys.space,
                    ukey,
                    xkey,
                    k,
                    text,
                    ttl_ms,
                    len(mine),
                    len(shared) // 2,
                    *shared,
                    *mine,
                )
            )
            self._telemetry.stored(len(text) + sum(len(b) for b in mine))
        replies = yield Pipe(calls)
        new: list[str] = []
        emptied: list[str] = []
        for (_, ns, text, _), reply in zip(prepared, replies, strict=True):
            if text is None:
                if int(reply) == 0:
                    emptied.append(ns)
            elif int(reply[2]) == 1:
                new.append(ns)
        # After the item scripts, so a concurrent emptiness check re-adds what it removed.
        if new:
            yield Pipe([Call(("ZADD", self.keys.registry, *[x for n in new for x in (0, n)]))])
        if emptied:
            yield from self._plan_unregister(sorted(set(emptied) - set(new)))

    def _alive_call(self, ns: str) -> Call:
        _, _, ukey, xkey = self.keys.bases(ns)
        return self._script("alive", xkey, ukey)

    def _plan_unregister(self, dead: list[str]) -> Plan:
        """Drop empty namespaces from the registry; put back any a put revived meanwhile."""
        if not dead:
            return
        yield Pipe([Call(("ZREM", self.keys.registry, *dead))])
        counts = yield Pipe([self._alive_call(ns) for ns in dead])
        back = [ns for ns, n in zip(dead, counts, strict=True) if int(n) > 0]
        if back:
            yield Pipe([Call(("ZADD", self.keys.registry, *[x for n in back for x in (0, n)]))])

    # -- namespaces -----------------------------------------------------------------

    def _plan_namespaces(self, prefix: tuple[str, ...]) -> Plan:
        """Encoded namespaces in the registry under ``prefix`` (whole labels)."""
        pre = self.keys.ns(prefix)
        if pre:
            call = Call(("ZRANGEBYLEX", self.keys.registry, "[" + pre, "(" + pre + "-"))
        else:
            call = Call(("ZRANGE", self.keys.registry, 0, -1))
        (reply,) = yield Pipe([call])
        found = [_s(m) for m in reply]
        return [n for n in found if not pre or n == pre or n.startswith(pre + ",")]

    def _plan_list_namespaces(self, op: ListNamespacesOp) -> Plan:
        literal: tuple[str, ...] = ()
        for cond in op.match_conditions or ():
            if cond.match_type == "prefix":
                for label in cond.path:
                    if label == "*":
                        break
                    literal += (label,)
                break
        candidates = yield from self._plan_namespaces(literal)
        if candidates:
            counts = yield Pipe([self._alive_call(ns) for ns in candidates])
            dead = [ns for ns, n in zip(candidates, counts, strict=True) if int(n) == 0]
            yield from self._plan_unregister(dead)
            candidates = [ns for ns, n in zip(candidates, counts, strict=True) if int(n) > 0]
        namespaces = [self.keys.ns_decode(ns) for ns in candidates]
        if op.match_conditions:
            namespaces = [
                ns for ns in namespaces if all(q.does_match(c, ns) for c in op.match_conditions)
            ]
        if op.max_depth is not None:
            namespaces = sorted({ns[: op.max_depth] for ns in namespaces})
        else:
            namespaces = sorted(namespaces)
        return namespaces[op.offset : op.offset + op.limit]

    # -- search ---------------------------------------------------------------------

    def _plan_search(self, op: SearchOp) -> Plan:
        if op.query and self.embeddings is not None:
            (vector,) = yield Embed([op.query], query=True)
            blob = pack_vector(vector, self.dims, f"embedding of query {op.query!r}")
            if is_zero_vector(vector):
                raise ValueError(
                    f"embedding of query {op.query!r} is all zeros: cosine similarity is "
                    "undefined for it"
                )
            if self._search_ok is None:
                yield from self._plan_setup()
            if self._search_ok:
                return (yield from self._plan_knn(op, vector, blob))
            if not self._warned:
                self._warned = True
                logger.warning(
                    "the server has no search module (FT.*): search(query=...) falls back to "
                    "exact cosine over every item under the namespace prefix, which is slow "
                    "for large namespaces. Use Valkey with valkey-search for vector search."
                )
            return (yield from self._plan_bruteforce(op, vector))
        rows = yield from self._plan_scan(op.namespace_prefix, op.filter, op.offset + op.limit)
        page = rows[op.offset : op.offset + op.limit]
        yield from self._plan_refresh(page, op.refresh_ttl)
        return [r.item(self.keys, search=True) for r in page]  # type: ignore[misc]

    def _plan_refresh(self, rows: list[_Row], refresh: bool) -> Plan:
        touch = [(r.ns, r.key, True) for r in rows if refresh and r.ttl > 0]
        if touch:
            yield Pipe(self._mget_calls(touch)[0])

    def _plan_scan(
        self,
        prefix: tuple[str, ...],
        filter: dict[str, Any] | None,
        want: int | None,
        *,
        vectors: bool = False,
        scoreless: bool = False,
    ) -> Plan:
        """Items under ``prefix`` passing ``filter``, most recently updated first.

        Reads ``want`` (all if None) index entries per namespace, then 4x more while
        post-filtering leaves fewer than ``want`` and a namespace may have more.
        """
        namespaces = yield from self._plan_namespaces(prefix)
        if not namespaces:
            return []
        count = 0 if want is None else max(want, 10) * (2 if filter or scoreless else 1)
        while True:
            calls = []
            for ns in namespaces:
                ib, _, ukey, xkey = self.keys.bases(ns)
                vpre, vpost = self.keys.vector_parts(ns)
                calls.append(self._script("list", ukey, ib, vpre, vpost, xkey, count, int(vectors)))
            replies = yield Pipe(calls)
            rows: list[_Row] = []
            bound: int | None = None  # entries not read are no newer than this
            for ns, (out, seen, last) in zip(namespaces, replies, strict=True):
                if count > 0 and int(seen) >= count:
                    last_us = int(float(_s(last)))
                    bound = last_us if bound is None else max(bound, last_us)
                for r in out:
                    row = _Row(
                        ns,
                        _s(r[0]),
                        json.loads(r[1]),
                        int(r[2]),
                        int(r[3]),
                        int(r[4]),
                        int(r[5]),
                        _s(r[6]),
                        [_b(v) for v in r[7:]],
                    )
                    if row.vs != self.keys.space:
                        row.vectors = []  # another model's vectors: not comparable
                    if scoreless and row.nv and row.vs == self.keys.space:
                        continue
                    if q.matches(row.value, filter):
                        rows.append(row)
            rows.sort(key=lambda r: (-r.updated, r.ns, r.key))
            if bound is not None:
                # only rows newer than every truncated namespace's last entry are final
                rows = [r for r in rows if r.updated > bound]
            if want is None or bound is None or len(rows) >= want:
                return rows
            count *= 4

    def _plan_bruteforce(self, op: SearchOp, vector: list[float]) -> Plan:
        rows = yield from self._plan_scan(op.namespace_prefix, op.filter, None, vectors=True)
        flat = [(row, blob) for row in rows for blob in row.vectors if blob]
        scores = _cosine(vector, [b for _, b in flat])
        best: dict[tuple[str, str], tuple[float, _Row]] = {}
        for score, (row, _) in zip(scores, flat, strict=True):
            k = (row.ns, row.key)
            if not math.isfinite(score):  # a NaN vector stored by older code
                continue
            if k not in best or score > best[k][0]:
                best[k] = (score, row)
        ranked = sorted(best.values(), key=lambda sr: -sr[0])
        kept = ranked[op.offset : op.offset + op.limit]
        page: list[tuple[float | None, _Row]] = list(kept)
        if len(page) < op.limit:
            unscored = [r for r in rows if (r.ns, r.key) not in best]
            page += [(None, r) for r in unscored][: op.limit - len(page)]
        yield from self._plan_refresh([r for _, r in page], op.refresh_ttl)
        return [r.item(self.keys, score=s, search=True) for s, r in page]

    def _plan_knn(self, op: SearchOp, vector: Sequence[float], blob: bytes) -> Plan:
        """One FT.SEARCH returning whole items (vector docs carry the item's fields), so
        one round trip; more only when post-filtering left fewer than ``limit`` hits
        (K grows), when an HNSW KNN returned fewer than K (an exact pass, below), for
        docs written before the fields were copied, and for a TTL refresh."""
        assert self.index_name is not None
        expr = q.knn_filter(op.namespace_prefix, self.filter_fields.pushdown(op.filter))
        want = op.offset + op.limit
        # one vector doc per item is the common case; grown below if hits collapse
        k = min(max(want * (3 if op.filter else 1), 1), MAX_KNN_K)
        fetched: dict[tuple[str, str], _Row | None] = {}
        while True:
            ef = None  # FLAT rejects EF_RUNTIME
            if self.vector_algorithm == "HNSW":
                ef = hnsw_ef_runtime(k, self._ef_override)
            cmd = knn_command(
                self.index_name, "vec", expr, k, blob, ef_runtime=ef, return_fields=_ITEM_FIELDS
            )
            _, docs = yield from self._plan_ft_search(tuple(cmd))
            hits: list[tuple[float, str, str, dict[str, Any]]] = []
            for key, fields in docs:
                dist = _finite(fields.get("dist"))
                if dist is not None:  # a NaN distance (a vector stored by older code)
                    hits.append((dist, *self.keys.split_vector(key), fields))
            # ties in a stable order, so both servers page alike
            hits.sort(key=lambda h: (h[0], h[1], h[2]))
            ranked: list[tuple[float, tuple[str, str]]] = []
            seen: set[tuple[str, str]] = set()
            for dist, ns, key, fields in hits:
                ident = (ns, key)
                if ident in seen:  # another of the item's vectors, farther
                    continue
                seen.add(ident)
                ranked.append((dist, ident))
                if ident not in fetched:
                    fetched[ident] = self._row_of(ns, key, fields)
            yield from self._plan_legacy(fetched)
            kept: list[tuple[float | None, _Row]] = []
            for dist, ident in ranked:
                row = fetched.get(ident)
                if row is not None and q.matches(row.value, op.filter):
                    kept.append((1.0 - dist, row))
            exhausted = len(docs) < k
            if len(kept) >= want or exhausted or k >= MAX_KNN_K:
                break
            k = min(k * 4, MAX_KNN_K)
        if exhausted and self.vector_algorithm == "HNSW":
            # HNSW returned fewer than K: every candidate it could reach. Its graph can
            # leave nodes unreachable (on valkey-search, up to a third of 250
            # near-duplicate texts), so the candidate set, known now to be small (< K),
            # is ranked exactly instead: one more round trip, bounded by K docs.
            exact = yield from self._plan_exact(expr, vector, op.filter)
            if exact is not None:
                kept = exact
        page = kept[op.offset : want]
        if len(page) < op.limit:
            extra = yield from self._plan_scan(
                op.namespace_prefix, op.filter, op.limit - len(page), scoreless=True
            )
            page += [(None, r) for r in extra][: op.limit - len(page)]
        yield from self._plan_refresh([r for _, r in page], op.refresh_ttl)
        return [r.item(self.keys, score=s, search=True) for s, r in page]

    def _plan_legacy(self, fetched: dict[tuple[str, str], _Row | None]) -> Plan:
        """Fetch the items of vector docs written before they carried the item's fields."""
        missing = [ident for ident, row in fetched.items() if row is _LEGACY]
        if missing:
            got = yield from self._plan_mget([(ns, key, False) for ns, key in missing])
            fetched.update(zip(missing, got, strict=True))

    def _plan_exact(
        self, expr: str, vector: Sequence[float], filter: dict[str, Any] | None
    ) -> Plan:
        """Every candidate doc matching ``expr`` (one FT.SEARCH), ranked by exact cosine
        on the client; None when the server cannot list them (valkey-search 1.0) or
        there are more than one reply may hold."""
        assert self.index_name is not None
        cmd = filter_command(self.index_name, expr, ("vec", *_ITEM_FIELDS), MAX_KNN_K)
        found = yield from self._plan_ft_search(tuple(cmd), errors_ok=True)
        if found is None:
            return None
        total, docs = found
        if total > len(docs):
            return None
        size = 4 * (self.dims or 0)
        flat = [
            (*self.keys.split_vector(key), fields)
            for key, fields in docs
            if isinstance(fields.get("vec"), bytes) and len(fields["vec"]) == size
        ]
        scores = _cosine(vector, [f["vec"] for _, _, f in flat])
        best: dict[tuple[str, str], float] = {}
        fetched: dict[tuple[str, str], _Row | None] = {}
        for score, (ns, key, fields) in zip(scores, flat, strict=True):
            ident = (ns, key)
            if not math.isfinite(score):
                continue
            if ident not in best or score > best[ident]:
                best[ident] = score
            if ident not in fetched:
                fetched[ident] = self._row_of(ns, key, fields)
        yield from self._plan_legacy(fetched)
        kept: list[tuple[float | None, _Row]] = []
        for ident, score in sorted(best.items(), key=lambda x: (-x[1], x[0])):
            row = fetched.get(ident)
            if row is not None and q.matches(row.value, filter):
                kept.append((score, row))
        return kept

    def _row_of(self, ns: str, key: str, fields: dict[str, Any]) -> _Row | None:
        """The item from a KNN hit's returned fields; ``_LEGACY`` when they are absent."""
        it = fields.get("it")
        if it is None:
            return _LEGACY
        try:
            # str: json.loads would sniff a bytes value's encoding first
            c, u, t, v = (it.decode() if type(it) is bytes else it).split(" ", 3)
            return _Row(ns, key, json.loads(v), int(c), int(u), int(t), 1, self.keys.space)
        except (TypeError, ValueError):
            return _LEGACY

    # -- setup ----------------------------------------------------------------------

    def _plan_setup(self) -> Plan:
        """Create the FT index if missing (idempotent); detect a server without FT."""
        if self.index_name is None or self.dims is None:
            self._search_ok = False
            return
        (info,) = yield Pipe([Call(("FT.INFO", self.index_name))], return_errors=True)
        if isinstance(info, Exception):
            if is_unknown_command_error(info):
                self._search_ok = False
                return
            if not is_missing_index_error(info):
                raise info
            schema = q.index_schema(
                self.keys.vector_prefix,
                self.dims,
                self.vector_algorithm,
                self.vector_params,
                len(self.filter_fields.paths),
            )
            (created,) = yield Pipe(
                [Call(("FT.CREATE", self.index_name, *schema))], return_errors=True
            )
            if isinstance(created, Exception) and not is_index_exists_error(created):
                if is_unknown_command_error(created):
                    self._search_ok = False
                    return
                raise created
            yield from self._plan_wait_index()
        elif self._cluster:
            # created by another client: the coordinator may not have reached every node
            yield from self._plan_wait_index()
        self._search_ok = True

    def _plan_wait_index(self) -> Plan:
        """Wait until the index exists and has indexed the existing docs everywhere.

        A new index over existing docs backfills in the background, and a search meanwhile
        silently misses docs. FT.INFO is per node: on a cluster every primary is asked
        (the coordinator also creates the index on the others a moment after FT.CREATE).
        """
        assert self.index_name is not None
        missing = 0
        deadline = time.monotonic() + INDEX_WAIT_SECONDS
        while True:
            if not self._cluster:
                (info,) = yield Pipe([Call(("FT.INFO", self.index_name))])
                infos: list[Any] = [info]
            else:
                (infos,) = yield Pipe([Call(("FT.INFO", self.index_name), each_primary=True)])
            missing, busy = 0, False
            for info in infos:
                if isinstance(info, Exception):
                    if not is_missing_index_error(info):
                        raise info
                    missing += 1
                elif is_backfilling(parse_info(info)):
                    busy = True
            if not missing and not busy:
                return
            if time.monotonic() >= deadline:
                break
            yield Sleep(0.05)
        if missing:
            raise NoCoordinator(self.index_name, missing, len(infos))
        logger.warning(
            "FT index %s still backfilling after 10 s: searching anyway", self.index_name
        )

    def _plan_ft_search(self, cmd: tuple[Any, ...], errors_ok: bool = False) -> Plan:
        """``(total, [(key, fields)])`` of the FT.SEARCH ``cmd`` (totals summed over the
        primaries of a cluster); None on a server error when ``errors_ok``.

        On a cluster: one ``LOCALONLY`` query per primary, merged here. A fan-out from
        one node misses writes made inside Lua on the other shards until an FT command
        reaches them (valkey-search 1.2.1: a search right after a put missed the item
        about half the time), while a query on each primary sees its own shard's every
        write. Each shard returns its own top K, so the union holds the global top K,
        and fewer than K in all means no shard has more.
        """
        if not self._cluster:
            (reply,) = yield Pipe([Call(cmd)], return_errors=errors_ok)
            replies = [reply]
        else:
            (replies,) = yield Pipe([Call((*cmd, "LOCALONLY"), each_primary=True)])
        total = 0
        docs: list[tuple[str, dict[str, Any]]] = []
        for reply in replies:
            if isinstance(reply, Exception):
                if errors_ok:
                    logger.debug("FT.SEARCH failed: %s", reply)
                    return None
                raise reply
            n, got = parse_search(reply)
            total += n
            docs += got
        return total, docs
