"""OpenTelemetry spans and Prometheus metrics shared by every tier.

Spans come from ``opentelemetry-api`` only: with no SDK configured they are no-ops.
Metrics go to a Prometheus registry (the default one unless injected); pass
``metrics=False`` to a component to turn them off. Labels stay low-cardinality
(tier, operation, result): never keys, prompts or thread ids.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from prometheus_client import REGISTRY, CollectorRegistry

from langgraph_valkey_cache._metrics import (
    CounterPart,
    HistogramPart,
    counter_family,
    histogram_family,
)
from langgraph_valkey_cache._version import __version__

__all__ = ["Metrics", "Telemetry", "get_metrics"]

logger = logging.getLogger("langgraph_valkey_cache")
_tracer = trace.get_tracer("langgraph_valkey_cache", __version__)
_NS = "langgraph_valkey_cache"


@dataclass(frozen=True)
class Metrics:
    # _metrics.BatchedCounter / BatchedHistogram, one list append per update (plain
    # prometheus_client families in its multiprocess mode: _metrics.multiprocess_mode);
    # these four by (nearly) every operation, the rest by every cache hit (savings) or
    # fresh LLM response
    requests: Any
    duration: Any
    errors: Any
    stored_bytes: Any
    cost_saved: Any
    tokens_saved: Any
    model_saved: Any
    time_saved: Any
    calls_saved: Any
    provider_tokens: Any
    provider_saved: Any
    provider_premium: Any


_metrics_by_registry: dict[int, Metrics] = {}


def get_metrics(registry: CollectorRegistry | None = None) -> Metrics:
    """The package's metric family, registered once per registry."""
    reg = registry or REGISTRY
    found = _metrics_by_registry.get(id(reg))
    if found is None:
        found = Metrics(
            requests=counter_family(
                f"{_NS}_requests", "Operations by tier and result", ["tier", "result"], reg
            ),
            duration=histogram_family(
                f"{_NS}_operation_duration_seconds",
                "Duration of operations",
                ["tier", "operation"],
                reg,
                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            ),
            errors=counter_family(
                f"{_NS}_errors", "Server or client errors", ["tier", "operation", "reason"], reg
            ),
            stored_bytes=counter_family(
                f"{_NS}_stored_bytes", "Bytes written to Valkey", ["tier"], reg
            ),
            cost_saved=counter_family(
                f"{_NS}_cost_saved_usd",
                "Estimated cost saved by cache hits",
                ["tier"],
                reg,
            ),
            tokens_saved=counter_family(
                f"{_NS}_tokens_saved",
                "Input plus output tokens of the cached responses LLM-cache hits served",
                ["tier", "model"],
                reg,
            ),
            model_saved=counter_family(
                f"{_NS}_model_saved_usd",
                "Price of the cached responses LLM-cache hits served, by model",
                ["tier", "model"],
                reg,
            ),
            time_saved=counter_family(
                f"{_NS}_time_saved_seconds",
                "Run time of the tool calls tool-cache hits avoided",
                ["tier", "tool"],
                reg,
            ),
            calls_saved=counter_family(
                f"{_NS}_calls_saved",
                "Embedding calls (texts) embedding-cache hits avoided",
                ["tier"],
                reg,
            ),
            provider_tokens=counter_family(
                f"{_NS}_provider_cache_tokens",
                "Input tokens of fresh model responses, all (kind=input) and those read "
                "from (read) or written to (write) the provider's prompt cache",
                ["tier", "model", "kind"],
                reg,
            ),
            provider_saved=counter_family(
                f"{_NS}_provider_cache_saved_usd",
                "What provider prompt-cache reads saved on fresh responses (read at the "
                "cached rate against the input rate; the write premium is apart)",
                ["tier", "model"],
                reg,
            ),
            provider_premium=counter_family(
                f"{_NS}_provider_cache_write_premium_usd",
                "What provider prompt-cache writes cost above the input rate on fresh "
                "responses (net saving = provider_cache_saved_usd minus this)",
                ["tier", "model"],
                reg,
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
    costs ~15 us); the per-operation metrics are one list append each (see
    :mod:`._metrics`; a component binds its tier's slice of each family once), so an
    operation costs one ``perf_counter`` pair and two or three appends (an LLM-cache hit
    a few more: the savings).
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
        # this tier's slices of the per-operation families, bound once
        self._duration: HistogramPart | None = None
        self._requests: CounterPart | None = None
        self._errors: CounterPart | None = None
        self._stored: CounterPart | None = None
        if metrics is not False:
            m = self._metrics = get_metrics(None if metrics is True else metrics)
            self._duration = m.duration.slice(tier)
            self._requests = m.requests.slice(tier)
            self._errors = m.errors.slice(tier)
            self._stored = m.stored_bytes.slice(tier)
        self._attrs: dict[str, Any] = {
            "db.system.name": "valkey",
            "langgraph_valkey_cache.tier": tier,
        }
        if server_address:
            self._attrs["server.address"] = server_address
        self._bound: dict[str, CounterPart] = {}

    def _part(self, family: str) -> CounterPart:
        """This tier's slice of counter family ``family`` (bound on first use)."""
        found = self._bound.get(family)
        if found is None:
            assert self._metrics is not None
            found = self._bound[family] = getattr(self._metrics, family).slice(self.tier)
        return found

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
        self,
        name: str,
        start: float,
        span: Any,
        error: BaseException | None = None,
        outcome: tuple[int, int, int, str | None] | None = None,
    ) -> None:
        """Close what :meth:`start` opened and observe the duration.

        ``outcome``: ``(hits, misses, bypassed, failed)`` of an executor run. The span
        gets ``langgraph_valkey_cache.outcome``: ``error`` (a step or the plan failed
        open; ERROR status, ``error.type`` = the reason), ``bypass`` (the server's
        breaker was open, no round trip: ``error.type=breaker_open``; or the cache was
        skipped on purpose: ``cache_control``, no scope value, an uncacheable call),
        ``hit`` (only hits) or ``miss``; a batch also gets its hit and miss counts.
        Nothing else: no keys, prompts, arguments or thread ids."""
        duration = self._duration
        if duration is not None:
            duration.observe(name, perf_counter() - start)
        if span is not None:
            s, token = span
            if outcome is not None:
                _set_outcome(s, *outcome)
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
        start = perf_counter()
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
        requests = self._requests
        if requests is not None:
            requests.inc(result, n)

    def error(self, operation: str, reason: str = "error") -> None:
        if self._errors is not None:
            self._errors.inc((operation, reason))

    def stored(self, nbytes: int) -> None:
        stored = self._stored
        if stored is not None and nbytes:
            stored.inc((), nbytes)

    def saved(self, usd: float) -> None:
        if self._metrics is not None and usd > 0:
            self._part("cost_saved").inc((), usd)

    def label(self, kind: str, name: str) -> str:
        """``name`` as a metric label / stats field, from a bounded set: the first
        :data:`MAX_LABELS` distinct names per tier and kind (``model``, ``tool``) in
        this process keep theirs, later ones count as ``other``."""
        name = name[:_LABEL_CHARS]
        seen = _labels.get((self.tier, kind))
        if seen is not None and name in seen:
            return name
        with _labels_lock:
            seen = _labels.setdefault((self.tier, kind), set())
            if name not in seen:
                if len(seen) >= MAX_LABELS:
                    return "other"
                seen.add(name)
        return name

    def savings(self, t: Any, model: str | None, tool: str | None) -> None:
        """A :class:`~._failopen.Tally`'s savings: dollars, tokens, time, calls."""
        if self._metrics is None:
            return
        if t.saved_usd > 0:
            self._part("cost_saved").inc((), t.saved_usd)
            if model is not None:
                self._part("model_saved").inc(model, t.saved_usd)
        if t.tokens_saved:
            self._part("tokens_saved").inc(model or "unknown", t.tokens_saved)
        if t.saved_ms:
            self._part("time_saved").inc(tool or "unknown", t.saved_ms / 1000)
        if t.calls_saved:
            self._part("calls_saved").inc((), t.calls_saved)

    def provider_cache(self, t: Any, model: str | None) -> None:
        """What the provider's prompt cache did on a fresh response."""
        if self._metrics is None:
            return
        m = model or "unknown"
        for kind, n in (
            ("input", t.provider_input_tokens),
            ("read", t.provider_read_tokens),
            ("write", t.provider_write_tokens),
        ):
            if n:
                self._part("provider_tokens").inc((m, kind), n)
        # counters only grow: the read saving and the write premium apart (net = the
        # difference, what stats() reports as provider_saved_usd)
        read_saving = t.provider_saved_usd + t.provider_premium_usd
        if read_saving > 0:
            self._part("provider_saved").inc(m, read_saving)
        if t.provider_premium_usd > 0:
            self._part("provider_premium").inc(m, t.provider_premium_usd)


#: Distinct model / tool names per tier and process that keep their own label.
MAX_LABELS = 50
_LABEL_CHARS = 100
_labels: dict[tuple[str, str], set[str]] = {}
_labels_lock = threading.Lock()


def _set_outcome(span: Any, hits: int, misses: int, bypassed: int, failed: str | None) -> None:
    if failed is not None:
        if failed == "breaker_open":
            span.set_attribute(_OUTCOME, "bypass")
        else:
            span.set_attribute(_OUTCOME, "error")
            span.set_status(trace.Status(trace.StatusCode.ERROR, failed))
        span.set_attribute("error.type", failed)
    elif misses:
        span.set_attribute(_OUTCOME, "miss")
    elif hits:
        span.set_attribute(_OUTCOME, "hit")
    elif bypassed:
        span.set_attribute(_OUTCOME, "bypass")
    if hits + misses > 1:
        span.set_attribute("langgraph_valkey_cache.hits", hits)
        span.set_attribute("langgraph_valkey_cache.misses", misses)


_OUTCOME = "langgraph_valkey_cache.outcome"
