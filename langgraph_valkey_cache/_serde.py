"""Serialisation shared by the tiers: the injected ``SerializerProtocol`` plus a
compact raw framing of its ``(type, bytes)`` pairs (msgpack array, no base64).

The default serde is LangGraph's ``JsonPlusSerializer`` in strict mode
(``allowed_msgpack_modules=None``): a payload in Valkey can only revive LangGraph's
safe types plus what ``with_allowlist`` adds from a graph's schemas. No pickle
unless the user passes a serde with ``pickle_fallback=True``.
"""

from __future__ import annotations

from typing import Any

import ormsgpack
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

__all__ = ["default_serde", "pack_typed", "unpack_typed"]


def default_serde() -> SerializerProtocol:
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
