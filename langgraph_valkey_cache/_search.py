"""valkey-search (FT.*) helpers shared by the semantic cache and the store.

Written to the dialect both valkey-search 1.1+ and RediSearch 2.10 accept (see
SEARCH-SERVER.md in the design notes): always ``DIALECT 2``; no bare ``*`` query; filter values
inline and escaped; PARAMS only for the vector; KNN hits sorted on the client; FT.INFO
and documents read by field name; RESP2 and RESP3 replies both parsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "SearchModuleMissing",
    "escape_tag",
    "is_backfilling",
    "is_index_exists_error",
    "is_missing_index_error",
    "is_unknown_command_error",
    "pack_vector",
    "parse_info",
    "parse_search",
]

_TAG_SPECIAL = set(",.<>{}[]\"':;!@#$%^&*()-+=~|/\\ ")


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


def pack_vector(vector: Sequence[float], dims: int | None = None) -> bytes:
    """FLOAT32 little-endian bytes of exactly ``dims`` values."""
    import struct

    if dims is not None and len(vector) != dims:
        raise ValueError(f"vector has {len(vector)} dimensions, index expects {dims}")
    return struct.pack(f"<{len(vector)}f", *vector)


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
    rest = reply[1:]
    i = 0
    while i < len(rest):
        key = _s(rest[i])
        fields: dict[str, Any] = {}
        if i + 1 < len(rest) and isinstance(rest[i + 1], (list, tuple)):
            flat = rest[i + 1]
            fields = {_s(flat[j]): flat[j + 1] for j in range(0, len(flat) - 1, 2)}
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
