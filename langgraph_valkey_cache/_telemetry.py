"""OpenTelemetry spans and Prometheus metrics shared by every tier.

Spans come from ``opentelemetry-api`` only: with no SDK configured they are no-ops.
Metrics go to a Prometheus registry (the default one unless injected); pass
``metrics=False`` to a component to turn them off. Labels stay low-cardinality
(tier, operation, result): never keys, prompts or thread ids.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from langgraph_valkey_cache._version import __version__

__all__ = ["Metrics", "Telemetry", "get_metrics"]

logger = logging.getLogger("langgraph_valkey_cache")
_tracer = trace.get_tracer("langgraph_valkey_cache", __version__)
_NS = "langgraph_valkey_cache"


@dataclass(frozen=True)
class Metrics:
    requests: Counter
    duration: Histogram
    errors: Counter
    stored_bytes: Counter
    cost_saved: Counter


_metrics_by_registry: dict[int, Metrics] = {}


def get_metrics(registry: CollectorRegistry | None = None) -> Metrics:
    """The package's metric family, registered once per registry."""
    reg = registry or REGISTRY
    found = _metrics_by_registry.get(id(reg))
    if found is None:
        found = Metrics(
            requests=Counter(
                f"{_NS}_requests", "Operations by tier and result", ["tier", "result"], registry=reg
            ),
            duration=Histogram(
                f"{_NS}_operation_duration_seconds",
                "Duration of operations",
                ["tier", "operation"],
                registry=reg,
                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            ),
            errors=Counter(
                f"{_NS}_errors",
                "Server or client errors",
                ["tier", "operation", "reason"],
                registry=reg,
            ),
            stored_bytes=Counter(
                f"{_NS}_stored_bytes", "Bytes written to Valkey", ["tier"], registry=reg
            ),
            cost_saved=Counter(
                f"{_NS}_cost_saved_usd",
                "Estimated cost saved by cache hits",
                ["tier"],
                registry=reg,
            ),
        )
        _metrics_by_registry[id(reg)] = found
    return found


def _tracing_on() -> bool:
    """True once spans would go somewhere: an OpenTelemetry SDK provider is configured
    (or ``_tracer`` was replaced by a real tracer). Reads the API's global directly:
    ``get_tracer_provider()`` consults ``os.environ`` on every call."""
    tracer = _tracer
    if isinstance(tracer, trace.ProxyTracer):
        provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
        if provider is None and not _PROVIDER_FROM_ENV:
            return False
        if provider is None:  # set lazily from OTEL_PYTHON_TRACER_PROVIDER
            provider = _UNKNOWN
        if provider is _UNKNOWN:  # another opentelemetry-api layout: the public way
            provider = trace.get_tracer_provider()
        return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
    return not isinstance(tracer, trace.NoOpTracer)


_UNKNOWN = object()
_PROVIDER_FROM_ENV = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


class Telemetry:
    """Per-component handle: ``with telemetry.operation("put"):`` wraps one public call.

    The same context manager serves sync and async code (it does no I/O). With no
    OpenTelemetry SDK configured no span is created at all (an API no-op span still
    costs ~15 us), and metric children are bound once per label set, so an operation
    costs one ``perf_counter`` pair and one histogram observation.
    """

    def __init__(
        self,
        tier: str,
        *,
        metrics: bool | CollectorRegistry = True,
        server_address: str | None = None,
    ) -> None:
        self.tier = tier
        self._metrics: Metrics | None = None
        if metrics is not False:
            self._metrics = get_metrics(None if metrics is True else metrics)
        self._attrs: dict[str, Any] = {
            "db.system.name": "valkey",
            "langgraph_valkey_cache.tier": tier,
        }
        if server_address:
            self._attrs["server.address"] = server_address
        self._bound: dict[tuple[str, ...], Any] = {}

    def _child(self, family: str, *labels: str) -> Any:
        key = (family, *labels)
        child = self._bound.get(key)
        if child is None:
            assert self._metrics is not None
            child = getattr(self._metrics, family).labels(self.tier, *labels)
            self._bound[key] = child
        return child

    # -- spans --------------------------------------------------------------------------

    def start(self, name: str) -> Any:
        """Open the span of one operation (``None`` when tracing is off)."""
        if not _tracing_on():
            return None
        span = _tracer.start_span(
            f"{self.tier}.{name}", kind=trace.SpanKind.CLIENT, attributes=self._attrs
        )
        return span, otel_context.attach(trace.set_span_in_context(span))

    def finish(
        self, name: str, start: float, span: Any, error: BaseException | None = None
    ) -> None:
        """Close what :meth:`start` opened and observe the duration."""
        if self._metrics is not None:
            self._child("duration", name).observe(time.perf_counter() - start)
        if span is not None:
            s, token = span
            if error is not None:
                s.record_exception(error)
                s.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
            try:
                otel_context.detach(token)
            except Exception:  # detached in another context (a generator closed late)
                pass
            s.end()

    @contextmanager
    def operation(self, name: str) -> Iterator[Any]:
        start = time.perf_counter()
        span = self.start(name)
        error: BaseException | None = None
        try:
            yield span[0] if span is not None else trace.INVALID_SPAN
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):
                error = exc
                self.error(name)
            raise
        finally:
            self.finish(name, start, span, error)

    # -- counters -------------------------------------------------------------------------

    def result(self, result: str, n: int = 1) -> None:
        """Count an outcome: ``hit``, ``miss``, ``ok``, ``error``..."""
        if self._metrics is not None:
            self._child("requests", result).inc(n)

    def error(self, operation: str, reason: str = "error") -> None:
        if self._metrics is not None:
            self._child("errors", operation, reason).inc()

    def stored(self, nbytes: int) -> None:
        if self._metrics is not None and nbytes:
            self._child("stored_bytes").inc(nbytes)

    def saved(self, usd: float) -> None:
        if self._metrics is not None and usd > 0:
            self._child("cost_saved").inc(usd)
