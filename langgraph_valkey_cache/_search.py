"""valkey-search (FT.*) helpers shared by the semantic cache and the store.

Written to the dialect both valkey-search 1.1+ and RediSearch 2.10 accept (see
SEARCH-SERVER.md in the design notes): always ``DIALECT 2``; no bare ``*`` query; filter values
inline and escaped; PARAMS only for the vector; KNN hits sorted on the client; FT.INFO
and documents read by field name; RESP2 and RESP3 replies both parsed.
"""

from __future__ import annotations

import math
import numbers
import struct
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = [
    "DEFAULT_EF_RUNTIME",
    "EF_PER_K",
    "INDEX_WAIT_SECONDS",
    "MAX_KNN_K",
    "NoCoordinator",
    "SearchModuleMissing",
    "escape_tag",
    "filter_command",
    "hnsw_ef_runtime",
    "is_backfilling",
    "is_index_exists_error",
    "is_missing_index_error",
    "is_unknown_command_error",
    "is_zero_vector",
    "knn_command",
    "pack_vector",
    "parse_info",
    "parse_search",
]

_TAG_SPECIAL = set(",.<>{}[]\"':;!@#$%^&*()-+=~|/\\ ")
_FLOAT32_MAX = 3.4028234663852886e38

#: EF_RUNTIME floor of an HNSW KNN (see :func:`hnsw_ef_runtime`).
DEFAULT_EF_RUNTIME = 100
#: EF_RUNTIME per requested neighbour above the floor.
EF_PER_K = 2
#: valkey-search 1.2 rejects a larger KNN K.
MAX_KNN_K = 10_000


#: How long ``setup()`` waits for a new index on every primary of a cluster (and, in the
#: store, for its backfill). valkey-search's coordinator creates it on the other
#: primaries a moment after FT.CREATE; under load that moment has exceeded 10 s (seen
#: once in CI).
INDEX_WAIT_SECONDS = 30.0


class NoCoordinator(RuntimeError):
    """An index still missing on some primaries after :data:`INDEX_WAIT_SECONDS`."""

    def __init__(self, index: str, missing: int, primaries: int) -> None:
        super().__init__(
            f"FT index {index} is missing on {missing} of the cluster's {primaries} "
            "primaries: valkey-search must run with its coordinator on a cluster (config "
            "file line: loadmodule /path/libsearch.so --use-coordinator)"
        )


class SearchModuleMissing(RuntimeError):
    """The server does not answer FT.* commands."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} needs the valkey-search module (FT.* commands), which this server "
            "does not have. Use Valkey with valkey-search 1.1+ (Amazon ElastiCache/MemoryDB, "
            "Google Memorystore for Valkey, or valkey-bundle)."
        )


def escape_tag(value: str) -> str:
    """Backslash-escape every punctuation character and space of a TAG value."""
    return "".join("\\" + c if c in _TAG_SPECIAL else c for c in value)


def pack_vector(vector: Sequence[float], dims: int | None = None, what: str = "vector") -> bytes:
    """FLOAT32 little-endian bytes of exactly ``dims`` finite values.

    Raises ``ValueError`` naming ``what`` (e.g. the item and field a vector embeds) on a
    wrong dimension, a NaN or infinity, or a value beyond FLOAT32's range: the server
    would index such a vector and answer NaN distances (valkey-search) or drop it
    (RediSearch), so it is refused before anything is written.
    """
    if dims is not None and len(vector) != dims:
        raise ValueError(f"{what} has {len(vector)} dimensions, the index expects {dims}")
    try:
        blob = struct.pack(f"<{len(vector)}f", *vector)
        # struct refuses |v| > FLOAT32 max, so the sum cannot overflow: it is finite
        # iff every value is (NaN and inf propagate; inf - inf is NaN)
        total = sum(vector)
    except (OverflowError, ValueError, struct.error, TypeError) as exc:
        _raise_bad_value(vector, what, exc)
    if not math.isfinite(total):
        _raise_bad_value(vector, what, None)
    return blob


def _raise_bad_value(vector: Sequence[float], what: str, exc: BaseException | None) -> NoReturn:
    for i, v in enumerate(vector):
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
            raise TypeError(f"{what}: value {i} is {type(v).__name__}, not a float") from exc
        if not math.isfinite(v) or abs(v) > _FLOAT32_MAX:
            raise ValueError(
                f"{what}: value {i} is {float(v)!r}; vectors must be finite FLOAT32 numbers"
            ) from exc
    raise ValueError(f"{what}: not a vector of finite FLOAT32 numbers") from exc


def is_zero_vector(vector: Sequence[float]) -> bool:
    """No direction, so no cosine: RediSearch skips such a doc, valkey-search scores it 0."""
    return not any(vector)


def hnsw_ef_runtime(k: int, override: int | None = None) -> int:
    """``EF_RUNTIME`` for an HNSW KNN of ``k``: ``override`` if given, else
    ``max(DEFAULT_EF_RUNTIME, EF_PER_K * k)``.

    valkey-search's own default is 10 whatever K is (recall@10 ~0.66 for a filtered
    KNN over 10k x 384), and on a cluster each shard of a fan-out would search with
    ef = K; 100 gives ~1.0 at 10 and the candidate list must exceed K.
    """
    if override is not None:
        ef = int(override)
        if ef <= 0:
            raise ValueError(f"EF_RUNTIME must be a positive int, got {override!r}")
        return ef
    return max(DEFAULT_EF_RUNTIME, EF_PER_K * k)


def knn_command(
    index: str,
    vector_field: str,
    filter_expr: str,
    k: int,
    vector: bytes,
    *,
    ef_runtime: int | None,
    return_fields: Sequence[str] = (),
    distance_alias: str = "dist",
) -> list[Any]:
    """The whole ``FT.SEARCH`` command of a filtered KNN, in the dialect both servers take.

    Args:
        index: the FT index name.
        vector_field: the VECTOR attribute (``@`` not included).
        filter_expr: a non-empty pre-filter (valkey-search rejects a bare ``*``; use a
            TAG every doc has); values inline and escaped (:func:`escape_tag`).
        k: neighbours wanted, at most :data:`MAX_KNN_K` (valkey-search's limit).
        vector: the query, from :func:`pack_vector`.
        ef_runtime: for an HNSW field always a number (:func:`hnsw_ef_runtime`); ``None``
            for FLAT, which rejects it.
        return_fields: hash fields returned with each hit besides the distance, so no
            second round trip fetches them.
        distance_alias: the name the distance is returned under.

    Hits come back unsorted on RediSearch: sort by the distance on the client.
    """
    if not 0 < k <= MAX_KNN_K:
        raise ValueError(f"KNN k must be in 1..{MAX_KNN_K}, got {k}")
    if not filter_expr.strip():
        raise ValueError("a KNN needs a pre-filter expression (no bare '*' on valkey-search)")
    ef = f" EF_RUNTIME {int(ef_runtime)}" if ef_runtime is not None else ""
    returned = [distance_alias, *return_fields]
    return [
        "FT.SEARCH",
        index,
        f"({filter_expr})=>[KNN {int(k)} @{vector_field} $B{ef} AS {distance_alias}]",
        "PARAMS",
        2,
        "B",
        vector,
        "RETURN",
        len(returned),
        *returned,
        "LIMIT",
        0,
        int(k),
        "DIALECT",
        2,
    ]


def _s(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def parse_search(reply: Any) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
    """``(total, [(key, {field: value})])`` from an FT.SEARCH reply, RESP2 or RESP3.

    Field names are decoded to str; values are left as returned (bytes unless the
    client decodes).
    """
    if isinstance(reply, dict):  # RESP3
        d = {_s(k): v for k, v in reply.items()}
        docs = []
        for row in d.get("results", []):
            r = {_s(k): v for k, v in row.items()}
            attrs = r.get("extra_attributes") or {}
            docs.append((_s(r.get("id")), {_s(k): v for k, v in attrs.items()}))
        return int(d.get("total_results", len(docs))), docs
    total = int(reply[0])
    docs = []
    n = len(reply)
    i = 1
    # the hot path of every KNN: no per-element helper calls
    while i < n:
        key = reply[i]
        if type(key) is bytes:
            key = key.decode()
        fields: dict[str, Any] = {}
        if i + 1 < n and isinstance(reply[i + 1], (list, tuple)):
            flat = reply[i + 1]
            names = flat[0::2]
            fields = dict(
                zip(
                    [f.decode() if type(f) is bytes else f for f in names],
                    flat[1::2],
                    strict=False,
                )
            )
            i += 2
        else:
            i += 1
        docs.append((key, fields))
    return total, docs


def parse_info(reply: Any) -> dict[str, Any]:
    """FT.INFO as a dict keyed by field name (RESP2 flat list or RESP3 map)."""
    if isinstance(reply, dict):
        return {_s(k): v for k, v in reply.items()}
    return {_s(reply[i]): reply[i + 1] for i in range(0, len(reply) - 1, 2)}


def is_missing_index_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "no such index" in text or "not found" in text or "unknown index" in text


def is_index_exists_error(exc: BaseException) -> bool:
    return "already exists" in str(exc).lower()


def is_unknown_command_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "unknown command" in text or "unknown subcommand" in text


def is_backfilling(info: dict[str, Any]) -> bool:
    """FT.INFO (parsed) says a new index is still indexing existing keys.

    RediSearch reports ``indexing`` (0/1), valkey-search ``backfill_in_progress``; a
    search during the backfill silently misses documents, so creators wait for it.
    """
    for name in ("indexing", "backfill_in_progress"):
        if name in info and str(_s(info[name])).strip() not in ("0", "0.0", "False", "false"):
            return True
    return False


def filter_command(
    index: str, filter_expr: str, return_fields: Sequence[str], limit: int = MAX_KNN_K
) -> list[Any]:
    """``FT.SEARCH`` of every doc matching ``filter_expr`` (no KNN), returning
    ``return_fields``: the exact pass over a candidate set an HNSW KNN could not
    exhaust (HNSW can leave a few nodes unreachable). valkey-search 1.1+."""
    if not filter_expr.strip():
        raise ValueError("a filter expression is required (no bare '*' on valkey-search)")
    return [
        "FT.SEARCH",
        index,
        f"({filter_expr})",
        "RETURN",
        len(return_fields),
        *return_fields,
        "LIMIT",
        0,
        int(limit),
        "DIALECT",
        2,
    ]
