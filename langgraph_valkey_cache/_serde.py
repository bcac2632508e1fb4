"""Serialisation shared by the tiers: the injected ``SerializerProtocol`` plus a
compact raw framing of its ``(type, bytes)`` pairs (msgpack array, no base64).

Two defaults, for two kinds of data:

* :func:`default_serde` (the checkpointer's) is LangGraph's own default,
  ``JsonPlusSerializer()``, so ``LANGGRAPH_STRICT_MSGPACK`` means for us what it
  means for every LangGraph saver: unset, a user's types in state round-trip as
  with ``InMemorySaver``; ``true``, only LangGraph's safe types plus the allowlist
  LangGraph derives from each graph's schemas (handed over by ``with_allowlist``)
  are revived.
* :func:`strict_serde` (the caches') never revives a class it was not told about,
  whatever the environment says: the caches decode only their own formats.

No pickle unless the user passes a serde with ``pickle_fallback=True``.
"""

from __future__ import annotations

from typing import Any

import ormsgpack
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

__all__ = ["default_serde", "dumps_checked", "pack_typed", "strict_serde", "unpack_typed"]


def default_serde() -> SerializerProtocol:
    """LangGraph's default serializer; follows ``LANGGRAPH_STRICT_MSGPACK``."""
    return JsonPlusSerializer()


def strict_serde() -> SerializerProtocol:
    """``JsonPlusSerializer`` that revives only LangGraph's safe types, always."""
    return JsonPlusSerializer(allowed_msgpack_modules=None)


def pack_typed(typed: tuple[str, bytes]) -> bytes:
    return ormsgpack.packb([typed[0], bytes(typed[1])])


def unpack_typed(data: bytes) -> tuple[str, bytes]:
    value: Any = ormsgpack.unpackb(data)
    return value[0], value[1]


def dumps_checked(serde: SerializerProtocol, value: Any, what: str) -> tuple[str, bytes]:
    """``serde.dumps_typed`` with an error that names what could not be encoded."""
    try:
        return serde.dumps_typed(value)
    except Exception as exc:
        raise TypeError(
            f"{what} of type {type(value).__name__} cannot be serialized by "
            f"{type(serde).__name__}: {exc}"
        ) from exc
