"""Prometheus counters and histograms that cost a few dict operations per update.

prometheus_client's ``Counter`` / ``Histogram`` take a lock and run Python-level checks
on every update (~1 us each), and every cache or checkpoint operation makes two or
three. Here each thread adds to dicts of its own (monotonic totals per label set;
only that thread writes them, so no lock and no lost update), and the collector sums
copies of every thread's dicts when the registry is scraped. The exposition is the one
a plain ``Counter`` / ``Histogram`` gives for the same updates (names, help, labels,
buckets, ``_created``), and it includes every update made before the scrape.

A family is cut into slices by its leading label values (the tier): a component binds
its slice once, and an update is then keyed by the remaining label value, a plain
string whose hash Python caches. A thread that ends leaves its totals behind: its
shard is folded into the slice's retired totals at the next scrape or the next
thread's first update, so memory stays bounded by live threads times label sets
(which are low-cardinality).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

import prometheus_client.metrics
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["CounterSlice", "HistogramSlice", "ShardedCounter", "ShardedHistogram"]

#: All label values of a series, in the family's label order.
Key = tuple[str, ...]
#: A series within a slice: the one remaining label value, or a tuple of them.
Rest = str | Key
V = TypeVar("V")
S = TypeVar("S", bound="_Slice[Any]")


class _Owner:
    """Lives in one thread's ``threading.local``: it dies with the thread, and a weak
    reference to it tells the slice that thread's shard will not change again."""

    __slots__ = ("__weakref__",)


class _Slice(Generic[V]):
    """The series of one family whose leading label values are ``prefix``."""

    def __init__(self, family: _Family[Any, V], prefix: Key) -> None:
        self._family = family
        self._prefix = prefix
        self._rest_len = len(family._labelnames) - len(prefix)
        self._local = threading.local()
        self._live: dict[weakref.ref[_Owner], dict[Rest, V]] = {}
        self._ended: deque[weakref.ref[_Owner]] = deque()
        self._retired: dict[Rest, V] = {}

    def _series(self, rest: Rest, zero: V) -> V:
        """This thread's entry for ``rest``, made on its first update."""
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self._local.shard = self._join()
        if rest not in shard:
            self._family._new_key(self.key(rest))
        return shard.setdefault(rest, zero)

    def _join(self) -> dict[Rest, V]:
        shard: dict[Rest, V] = {}
        owner = self._local.owner = _Owner()
        # the callback runs when the thread's locals are cleared (it ended): a deque
        # append takes no lock, so it is safe wherever that happens
        ref = weakref.ref(owner, self._ended.append)
        with self._family._lock:
            self._fold()
            self._live[ref] = shard
        return shard

    def key(self, rest: Rest) -> Key:
        full = self._prefix + ((rest,) if isinstance(rest, str) else rest)
        if len(full) != len(self._family._labelnames) or not all(type(v) is str for v in full):
            raise ValueError(
                f"{self._family._name}: labels {full!r} for {self._family._labelnames}"
            )
        return full

    def _fold(self) -> None:
        """Move the shards of ended threads into the retired totals (lock held)."""
        add = self._family._add
        while self._ended:
            shard = self._live.pop(self._ended.popleft(), None)
            for rest, value in (shard or {}).items():
                self._retired[rest] = add(self._retired.get(rest), value)

    def _totals(self, into: dict[Key, V]) -> None:
        """Add every series' total now to ``into`` (lock held for the retired part)."""
        add = self._family._add
        self._fold()
        totals = {rest: add(None, v) for rest, v in self._retired.items()}
        for shard in list(self._live.values()):
            # dict.copy() is atomic under the GIL: the owning thread may be mid-update
            for rest, value in shard.copy().items():
                totals[rest] = add(totals.get(rest), value)
        for rest, value in totals.items():
            key = self.key(rest)
            into[key] = add(into.get(key), value)


class CounterSlice(_Slice[float]):
    def inc(self, rest: Rest, amount: float = 1) -> None:
        """Add ``amount`` (>= 0: a count or a length; not checked, this is the hot path
        and a counter only grows) to the series ``rest``."""
        try:
            # one read-modify-write with no call inside it: nothing (not even a
            # finalizer run by the GC in this thread) can update the entry in between
            self._local.shard[rest] += amount
        except (AttributeError, KeyError):
            self._series(rest, 0.0)
            self._local.shard[rest] += amount


class HistogramSlice(_Slice[list[float]]):
    """A series' entry is ``[count per bucket..., count above the last bound, sum]``:
    not cumulative, so an observation touches one bucket."""

    def __init__(self, family: _Family[Any, list[float]], prefix: Key) -> None:
        super().__init__(family, prefix)
        assert isinstance(family, ShardedHistogram)
        self._bounds = family._bounds
        self._empty = family._empty

    def observe(self, rest: Rest, value: float) -> None:
        try:
            h = self._local.shard[rest]
        except (AttributeError, KeyError):
            h = self._series(rest, self._empty.copy())
        # bounds are inclusive (le): a value on a bound counts in that bound's bucket
        h[bisect_left(self._bounds, value)] += 1
        h[-1] += value


class _Family(Generic[S, V]):
    """One metric family in one registry: its slices and the collector protocol."""

    _slice_type: type[S]

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
        # each series' first update in any thread, in that order: plain
        # prometheus_client exports children in creation order with this timestamp
        self._created: dict[Key, float] = {}
        _families.add(self)
        registry.register(self)

    def slice(self, *prefix: str) -> S:
        """The series whose leading label values are ``prefix`` (made once)."""
        found = self._slices.get(prefix)
        if found is None:
            with self._lock:
                found = self._slices.setdefault(prefix, self._slice_type(self, prefix))
        return found

    def _new_key(self, key: Key) -> None:
        self._created.setdefault(key, time.time())

    def _add(self, total: V | None, value: V) -> V:
        raise NotImplementedError

    def _totals(self) -> dict[Key, V]:
        """Every series' total now, in creation order."""
        totals: dict[Key, V] = {}
        with self._lock:
            slices = list(self._slices.values())
            for s in slices:
                s._totals(totals)
        return {k: totals[k] for k in self._created.copy() if k in totals}

    def _family(self) -> Metric:
        raise NotImplementedError

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name})"


class ShardedCounter(_Family[CounterSlice, float]):
    """A labelled counter: ``c.slice("checkpoint").inc("ok")``, or ``c.inc(labels)``."""

    _slice_type = CounterSlice

    def inc(self, labels: Key, amount: float = 1) -> None:
        self.slice(*labels).inc((), amount)

    def _add(self, total: float | None, value: float) -> float:
        return value if total is None else total + value

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        created = self._created if _use_created() else {}
        for key, value in self._totals().items():
            family.add_metric(key, value, created=created.get(key))
        yield family


class ShardedHistogram(_Family[HistogramSlice, list[float]]):
    """A labelled histogram with fixed bucket bounds:
    ``h.slice("checkpoint").observe("put", seconds)``, or ``h.observe(labels, v)``."""

    _slice_type = HistogramSlice

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
        self._bounds = tuple(bounds)
        self._le = (*(floatToGoString(b) for b in bounds), "+Inf")
        self._empty = [0.0] * (len(bounds) + 2)
        super().__init__(name, documentation, labelnames, registry)

    def observe(self, labels: Key, value: float) -> None:
        self.slice(*labels).observe((), value)

    def _add(self, total: list[float] | None, value: list[float]) -> list[float]:
        snap = value.copy()  # atomic: the owning thread may be mid-update
        if total is None:
            return snap
        return [a + b for a, b in zip(total, snap, strict=True)]

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        created = self._created if _use_created() else {}
        for key, h in self._totals().items():
            acc = 0.0
            buckets: list[tuple[str, float]] = []
            for le, n in zip(self._le, h[:-1], strict=True):
                acc += n
                buckets.append((le, acc))
            family.add_metric(key, buckets, h[-1])
            ts = created.get(key)
            if ts is not None:
                labels = dict(zip(self._labelnames, key, strict=True))
                family.samples.append(Sample(f"{self._name}_created", labels, ts))
        yield family


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
