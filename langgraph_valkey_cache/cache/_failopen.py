"""The caches' failure policy in one place: a server error is a miss.

Usage::

    try:
        raw = client.get(key)
    except CACHE_ERRORS as exc:
        report_failure(telemetry, "lookup", exc)
        raw = None
"""

from __future__ import annotations

import asyncio
import logging

from valkey.exceptions import ValkeyError

from langgraph_valkey_cache._telemetry import Telemetry

__all__ = ["CACHE_ERRORS", "report_failure"]

logger = logging.getLogger("langgraph_valkey_cache.cache")

# What a cache swallows: server/connection errors and timeouts, never programming errors.
CACHE_ERRORS: tuple[type[BaseException], ...] = (ValkeyError, OSError, asyncio.TimeoutError)


def report_failure(telemetry: Telemetry, operation: str, exc: BaseException) -> None:
    """Log a warning and count an error; the caller then proceeds as on a miss."""
    logger.warning(
        "%s cache %s failed, continuing without cache: %s: %s",
        telemetry.tier, operation, type(exc).__name__, exc,
    )  # fmt: skip
    telemetry.error(operation)
    telemetry.result("error")
