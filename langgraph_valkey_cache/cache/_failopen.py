"""The caches' failure policy in one place: a server error is a miss, and a dead or
stalled server is skipped for a while.

Usage::

    breaker = Breaker(cooldown=5)
    if not breaker.closed:
        return None  # the server failed recently: a miss, at once
    try:
        raw = client.get(key)
    except CACHE_ERRORS as exc:
        breaker.fail(telemetry, "lookup", exc)
        raw = None

Without a breaker, every call to a stalled server would wait for the socket timeout
(and the client's retries); with one, an outage costs one timeout per ``cooldown``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from valkey.exceptions import ValkeyError

from langgraph_valkey_cache._telemetry import Telemetry

__all__ = ["CACHE_ERRORS", "Breaker", "report_failure"]

logger = logging.getLogger("langgraph_valkey_cache.cache")

# What a cache swallows: server/connection errors and timeouts, never programming errors.
CACHE_ERRORS: tuple[type[BaseException], ...] = (ValkeyError, OSError, asyncio.TimeoutError)


def report_failure(
    telemetry: Telemetry, operation: str, exc: BaseException, *, log: bool = True
) -> None:
    """Log a warning and count an error; the caller then proceeds as on a miss."""
    if log:
        logger.warning(
            "%s cache %s failed, continuing without cache: %s: %s",
            telemetry.tier, operation, type(exc).__name__, exc,
        )  # fmt: skip
    else:
        logger.debug("%s cache %s failed again: %s", telemetry.tier, operation, exc)
    telemetry.error(operation)
    telemetry.result("error")


class Breaker:
    """Skip the server for ``cooldown`` seconds after an error (fail fast while it is down).

    One breaker is shared by a cache and everything it drives (its single-flight, its
    embedding store) so that one failure bypasses them all. Every failure counts an
    error metric; the warning is logged once per cooldown (calls that were already in
    flight when the server went away log at debug level). ``cooldown=0`` disables it:
    every call tries the server and every failure logs.

    Example:
        ```python
        breaker = Breaker(cooldown=5)
        if breaker.closed:
            try:
                ...  # talk to the server
            except CACHE_ERRORS as exc:
                breaker.fail(telemetry, "lookup", exc)
        ```
    """

    def __init__(self, cooldown: float = 5.0) -> None:
        if cooldown < 0:
            raise ValueError("failure_cooldown must be >= 0 seconds")
        self.cooldown = cooldown
        self._open_until = 0.0
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        """True when the server may be used."""
        return time.monotonic() >= self._open_until

    def fail(self, telemetry: Telemetry, operation: str, exc: BaseException) -> None:
        """Report a server error (metric always, warning once per cooldown) and open."""
        now = time.monotonic()
        with self._lock:
            first = self.cooldown <= 0 or now >= self._open_until
            if self.cooldown > 0:
                self._open_until = now + self.cooldown
        report_failure(telemetry, operation, exc, log=first)

    def reset(self) -> None:
        """Close the breaker now (the next call tries the server)."""
        self._open_until = 0.0
