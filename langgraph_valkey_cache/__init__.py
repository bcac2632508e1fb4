"""Every caching and persistence tier LangGraph and LangChain agents need, on Valkey.

Public classes are imported lazily, so ``import langgraph_valkey_cache`` stays cheap
and a tier's optional dependencies are only needed when that tier is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from langgraph_valkey_cache._version import __version__

_EXPORTS: dict[str, str] = {
    "ValkeySaver": "langgraph_valkey_cache.checkpoint",
    "AsyncValkeySaver": "langgraph_valkey_cache.checkpoint.aio",
    "ValkeyStore": "langgraph_valkey_cache.store",
    "AsyncValkeyStore": "langgraph_valkey_cache.store.aio",
    "client_from_url": "langgraph_valkey_cache._client",
    "cache_client_from_url": "langgraph_valkey_cache._client",
    "default_serde": "langgraph_valkey_cache._serde",
    "EmbeddedValkey": "langgraph_valkey_cache.embedded",
    "EmbeddedCluster": "langgraph_valkey_cache.embedded",
    "ValkeyNodeCache": "langgraph_valkey_cache.cache.node",
    "ToolCache": "langgraph_valkey_cache.cache.tools",
    "cached": "langgraph_valkey_cache.cache.decorator",
    "ValkeyCache": "langgraph_valkey_cache.cache.llm",
    "ValkeySemanticCache": "langgraph_valkey_cache.cache.semantic",
    "ValkeyByteStore": "langgraph_valkey_cache.embeddings",
    "CachedEmbeddings": "langgraph_valkey_cache.embeddings",
    "ModelCacheMiddleware": "langgraph_valkey_cache.cache.middleware",
    "cached_stream": "langgraph_valkey_cache.cache.middleware",
    "acached_stream": "langgraph_valkey_cache.cache.middleware",
    "CacheStats": "langgraph_valkey_cache._stats",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'langgraph_valkey_cache' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
