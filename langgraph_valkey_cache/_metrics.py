"""Prometheus counters and histograms whose update is one list append.

prometheus_client's ``Counter`` / ``Histogram`` take a lock and run Python-level checks
on every update: ~1 us each in a tight loop, and several us inside a real operation
whose own work has pushed that code and data out of the CPU caches. Here an update
appends the amount (or the observed value) to its series' list of pending values:
``list.append`` is atomic, so concurrent threads lose nothing, and it touches little
memory. Pending values are folded into the series' totals in batches, under a lock,
by the thread whose append fills a batch (if no one else holds the lock) and by every
scrape, which folds everything first: the exposition includes every update made
before it and is the one a plain ``Counter`` / ``Histogram`` gives for the same
updates (names, help, labels, buckets, ``_created``).

A family is cut into slices by its leading label values (the tier): a component binds
its slice once, and an update is then keyed by the remaining label value, a plain
string whose hash Python caches. Memory is one list of at most about
:data:`BATCH` pending values per series; label sets are low-cardinality.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from functools import partial, reduce
from operator import add
from typing import Any, Generic, Protocol, TypeVar

import prometheus_client.metrics
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = [
    "BATCH",
    "BatchedCounter",
    "BatchedHistogram",
    "CounterPart",
    "CounterSlice",
    "HistogramPart",
    "HistogramSlice",
    "counter_family",
    "histogram_family",
]

#: Pending values per series that make the appending thread fold them.
BATCH = 256

#: All label values of a series, in the family's label order.
Key = tuple[str, ...]
#: A series within a slice: the one remaining label value, or a tuple of them.
Rest = str | Key
T = TypeVar("T")
S = TypeVar("S", bound="_Slice")


class _Series(Generic[T]):
    """One label set: values not yet folded, the folded total, the first update's time."""

    __slots__ = ("created", "key", "pending", "total")

    def __init__(self, key: Key, total: T) -> None:
        self.key = key
        self.pending: list[float] = []
        self.total = total
        self.created = time.time()


class _Slice:
    """The series of one family whose leading label values are ``prefix``."""

    def __init__(self, family: _Family[Any, Any], prefix: Key) -> None:
        self._family = family
        self._prefix = prefix
        self._pending: dict[Rest, list[float]] = {}
        self._series: dict[Rest, _Series[Any]] = {}

    def _append(self, rest: Rest, value: float = 1) -> None:
        """Add ``value`` to the series ``rest`` (the remaining label value, or values).
        ``list.append`` is atomic: no lock, and no thread's update is lost."""
        try:
            pending = self._pending[rest]
        except KeyError:
            pending = self._new(rest)
        pending.append(value)
        if len(pending) >= BATCH:
            self._full(rest)

    def _new(self, rest: Rest) -> list[float]:
        # no lock: dict.setdefault is atomic, so racing threads agree on one series, and
        # a finalizer run here by the GC in the middle of a scrape cannot deadlock
        series = self._family._new_series(self.key(rest))
        self._series.setdefault(rest, series)
        return self._pending.setdefault(rest, series.pending)

    def _full(self, rest: Rest) -> None:
        # never wait on the hot path: a scrape or another thread that holds the lock
        # folds these too, or the next append retries
        lock = self._family._lock
        if lock.acquire(blocking=False):
            try:
                self._family._fold(self._series[rest])
            finally:
                lock.release()

    def key(self, rest: Rest) -> Key:
        family = self._family
        full = self._prefix + ((rest,) if isinstance(rest, str) else rest)
        if len(full) != len(family._labelnames) or not all(type(v) is str for v in full):
            raise ValueError(f"{family._name}: labels {full!r} for {family._labelnames}")
        return full


class CounterSlice(_Slice):
    #: ``inc(rest, amount)``: add ``amount`` (>= 0, a count or a length: not checked on
    #: the hot path) to the series ``rest``. An alias, not a wrapper: one call less.
    inc = _Slice._append


class HistogramSlice(_Slice):
    #: ``observe(rest, value)``: count ``value`` in the series ``rest``.
    observe = _Slice._append


class _Family(Generic[S, T]):
    """One metric family in one registry: its slices, its series in creation order
    (plain prometheus_client exports children in that order) and the collector
    protocol."""

    _slice_type: type[S]
    _metric_type: Any  # CounterMetricFamily or HistogramMetricFamily

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._slices: dict[Key, S] = {}
        self._all: dict[Key, _Series[T]] = {}
        _families.add(self)
        registry.register(self)

    def slice(self, *prefix: str) -> S:
        """The series whose leading label values are ``prefix`` (made once)."""
        found = self._slices.get(prefix)
        if found is None:
            found = self._slices.setdefault(prefix, self._slice_type(self, prefix))
        return found

    def _new_series(self, key: Key) -> _Series[T]:
        """The series of ``key``, made on its first update; two slices may name the
        same key (``slice("a").inc("b")`` and ``inc(("a", "b"))``)."""
        found = self._all.get(key)
        if found is None:
            found = self._all.setdefault(key, _Series(key, self._zero()))
        return found

    def _fold(self, series: _Series[T]) -> None:
        """Move ``series``' pending values into its total (lock held). Appends go on
        while this runs: they land after the first ``n`` values, which only a folder
        (serialised by the lock) removes."""
        pending = series.pending
        n = len(pending)
        if n:
            batch = pending[:n]
            del pending[:n]
            series.total = self._folded(series.total, batch)

    def _totals(self) -> list[tuple[Key, T, float]]:
        """Every series' total now, in creation order, with its creation time."""
        with self._lock:
            out = []
            for series in list(self._all.values()):
                self._fold(series)
                out.append((series.key, self._copy(series.total), series.created))
        return out

    def _zero(self) -> T:
        raise NotImplementedError

    def _folded(self, total: T, batch: list[float]) -> T:
        raise NotImplementedError

    def _copy(self, total: T) -> T:
        return total

    def _metric(self) -> Metric:
        return self._metric_type(self._name, self._documentation, labels=self._labelnames)

    def _add(self, family: Any, key: Key, total: T, created: float | None) -> None:
        """Add one series' samples to ``family`` (``created``: None when disabled)."""
        raise NotImplementedError

    def describe(self) -> list[Metric]:
        return [self._metric()]

    def collect(self) -> Iterator[Metric]:
        family = self._metric()
        created = _use_created()
        for key, total, ts in self._totals():
            self._add(family, key, total, ts if created else None)
        yield family

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name})"


class BatchedCounter(_Family[CounterSlice, float]):
    """A labelled counter: ``c.slice("checkpoint").inc("ok")``, or ``c.inc(labels)``."""

    _slice_type = CounterSlice
    _metric_type = CounterMetricFamily

    def inc(self, labels: Key, amount: float = 1) -> None:
        self.slice(*labels).inc((), amount)

    def _zero(self) -> float:
        return 0.0

    def _folded(self, total: float, batch: list[float]) -> float:
        # left to right, as prometheus_client adds each increment in turn
        return reduce(add, batch, total)

    def _add(self, family: Any, key: Key, total: float, created: float | None) -> None:
        family.add_metric(key, total, created=created)


class BatchedHistogram(_Family[HistogramSlice, list[float]]):
    """A labelled histogram with fixed bucket bounds:
    ``h.slice("checkpoint").observe("put", seconds)``, or ``h.observe(labels, v)``.

    A series' total is ``[count per bucket..., count above the last bound, sum]``,
    not cumulative (the scrape accumulates)."""

    _slice_type = HistogramSlice
    _metric_type = HistogramMetricFamily

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds and bounds[-1] == float("inf"):
            bounds.pop()
        if not bounds or bounds != sorted(bounds) or bounds[0] < 0:
            raise ValueError(f"{name}: bucket bounds must be sorted and non-negative")
        # bounds are inclusive (le): a value on a bound counts in that bound's bucket
        self._bucket_of = partial(bisect_left, tuple(bounds))
        self._le = (*(floatToGoString(b) for b in bounds), "+Inf")
        super().__init__(name, documentation, labelnames, registry)

    def observe(self, labels: Key, value: float) -> None:
        self.slice(*labels).observe((), value)

    def _zero(self) -> list[float]:
        return [0.0] * (len(self._le) + 1)

    def _folded(self, total: list[float], batch: list[float]) -> list[float]:
        for i in map(self._bucket_of, batch):
            total[i] += 1
        total[-1] = reduce(add, batch, total[-1])  # in order, as prometheus_client sums
        return total

    def _copy(self, total: list[float]) -> list[float]:
        return total.copy()

    def _add(self, family: Any, key: Key, total: list[float], created: float | None) -> None:
        acc = 0.0
        buckets: list[tuple[str, float]] = []
        for le, n in zip(self._le, total[:-1], strict=True):
            acc += n
            buckets.append((le, acc))
        family.add_metric(key, buckets, total[-1])
        if created is not None:
            labels = dict(zip(self._labelnames, key, strict=True))
            family.samples.append(Sample(f"{self._name}_created", labels, created))


def _use_created() -> bool:
    # prometheus_client's switch (PROMETHEUS_DISABLE_CREATED_SERIES or
    # disable_created_metrics()), read per scrape as its own metrics do
    return bool(getattr(prometheus_client.metrics, "_use_created", True))


_families: weakref.WeakSet[_Family[Any, Any]] = weakref.WeakSet()


def _after_fork() -> None:
    # a lock another thread held at fork time would stay held in the child forever
    for family in list(_families):
        family._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


# -- prometheus_client's multiprocess mode ------------------------------------------------


class CounterPart(Protocol):
    """What a component holds of a counter family: its tier's slice."""

    def inc(self, rest: Rest, value: float = 1) -> None: ...


class HistogramPart(Protocol):
    def observe(self, rest: Rest, value: float) -> None: ...


def multiprocess_mode() -> bool:
    """prometheus_client's multiprocess mode (gunicorn-style workers; its environment
    variable picks it before the first metric): values live in files that its
    ``MultiProcessCollector`` sums over the worker processes, which a collector of our
    own cannot take part in. The families are plain prometheus_client ones then."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ


class _PlainSlice:
    """A tier's slice of a plain prometheus_client family: children bound once."""

    def __init__(self, metric: Any, prefix: Key) -> None:
        self._metric = metric
        self._prefix = prefix
        self._children: dict[Rest, Any] = {}

    def _child(self, rest: Rest) -> Any:
        child = self._children.get(rest)
        if child is None:
            labels = self._prefix + ((rest,) if isinstance(rest, str) else rest)
            child = self._children.setdefault(rest, self._metric.labels(*labels))
        return child

    def inc(self, rest: Rest, value: float = 1) -> None:
        self._child(rest).inc(value)

    def observe(self, rest: Rest, value: float) -> None:
        self._child(rest).observe(value)


class _PlainFamily:
    """A plain prometheus_client ``Counter`` / ``Histogram`` behind the batched families'
    ``slice`` interface (it registers itself; this wrapper is not a collector)."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._labelnames = tuple(metric._labelnames)
        self._slices: dict[Key, _PlainSlice] = {}

    def slice(self, *prefix: str) -> _PlainSlice:
        found = self._slices.get(prefix)
        if found is None:
            found = self._slices.setdefault(prefix, _PlainSlice(self._metric, prefix))
        return found

    def describe(self) -> list[Metric]:
        return list(self._metric.describe())


def counter_family(
    name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
) -> BatchedCounter | _PlainFamily:
    """A labelled counter: batched, or plain in prometheus_client's multiprocess mode."""
    if multiprocess_mode():
        return _PlainFamily(Counter(name, documentation, labelnames, registry=registry))
    return BatchedCounter(name, documentation, labelnames, registry)


def histogram_family(
    name: str,
    documentation: str,
    labelnames: Sequence[str],
    registry: CollectorRegistry,
    buckets: Sequence[float],
) -> BatchedHistogram | _PlainFamily:
    """A labelled histogram: batched, or plain in prometheus_client's multiprocess mode."""
    if multiprocess_mode():
        metric = Histogram(name, documentation, labelnames, registry=registry, buckets=buckets)
        return _PlainFamily(metric)
    return BatchedHistogram(name, documentation, labelnames, registry, buckets=buckets)
