"""The batched metric families (_metrics): exact under threads, scraped with every
update made before the scrape, and exposed exactly as plain prometheus_client
Counter / Histogram families would be for the same updates."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.parser import text_string_to_metric_families

from langgraph_valkey_cache._metrics import BATCH, BatchedCounter, BatchedHistogram
from langgraph_valkey_cache._telemetry import Telemetry, get_metrics

_NS = "langgraph_valkey_cache"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)


def _threads(n: int, body: Callable[[], None]) -> None:
    threads = [threading.Thread(target=body) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_concurrent_updates_on_one_series_are_exact() -> None:
    registry = CollectorRegistry()
    tel = Telemetry("checkpoint", metrics=registry)
    threads, per_thread = 8, 20_000
    go = threading.Event()
    done = threading.Event()
    seen: list[tuple[float, float, float]] = []
    failures: list[BaseException] = []

    def sample() -> tuple[float, float, float]:
        hits = registry.get_sample_value(
            f"{_NS}_requests_total", {"tier": "checkpoint", "result": "hit"}
        )
        count = registry.get_sample_value(
            f"{_NS}_operation_duration_seconds_count", {"tier": "checkpoint", "operation": "put"}
        )
        stored = registry.get_sample_value(f"{_NS}_stored_bytes_total", {"tier": "checkpoint"})
        return hits or 0.0, count or 0.0, stored or 0.0

    def scrape() -> None:
        try:
            while not done.is_set():
                seen.append(sample())
                generate_latest(registry)  # the text exposition too, mid-update
        except BaseException as exc:  # pragma: no cover - reported by the assert below
            failures.append(exc)

    def work() -> None:
        go.wait()
        for _ in range(per_thread):
            tel.finish("put", 0.0, None)
            tel.result("hit")
            tel.stored(3)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    scraper = threading.Thread(target=scrape)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: mid-append, mid-fold, mid-scrape
    try:
        for t in (*workers, scraper):
            t.start()
        go.set()
        for t in workers:
            t.join()
        done.set()
        scraper.join()
    finally:
        sys.setswitchinterval(interval)

    assert not failures
    total = threads * per_thread
    assert sample() == (total, total, 3 * total)
    assert len(seen) > 1
    for earlier, later in zip(seen, seen[1:], strict=False):
        assert all(a <= b for a, b in zip(earlier, later, strict=True)), (earlier, later)


def test_pending_values_stay_bounded_without_scrapes() -> None:
    registry = CollectorRegistry()
    counter = BatchedCounter("appends", "Appends", ["tier"], registry)
    part = counter.slice("t")

    def work() -> None:
        for _ in range(3 * BATCH):
            part.inc((), 2)

    for _ in range(5):
        _threads(4, work)
    # folded by the appending threads as batches filled, no scrape in between
    assert len(part._pending[()]) < BATCH
    assert registry.get_sample_value("appends_total", {"tier": "t"}) == 5 * 4 * 3 * BATCH * 2
    assert not part._pending[()]


def test_histogram_buckets_are_cumulative_with_inclusive_bounds() -> None:
    registry = CollectorRegistry()
    hist = BatchedHistogram("lat", "Latency", ["op"], registry, buckets=(0.1, 1, 5))
    values = [0.05, 0.1, 0.5, 1.0, 5.0, 7.0, 0.0]
    rounds = BATCH  # 7 * BATCH values: several batches folded by the appending thread
    part = hist.slice()
    for _ in range(rounds):
        for v in values[:3]:
            part.observe(("get",), v)

    def other() -> None:  # the same series through another slice, from another thread
        for _ in range(rounds):
            for v in values[3:]:
                hist.observe(("get",), v)

    _threads(1, other)

    def bucket(le: str) -> float | None:
        return registry.get_sample_value("lat_bucket", {"op": "get", "le": le})

    assert [bucket(le) for le in ("0.1", "1.0", "5.0", "+Inf")] == [
        3 * rounds,
        5 * rounds,
        6 * rounds,
        7 * rounds,
    ]
    assert registry.get_sample_value("lat_count", {"op": "get"}) == 7 * rounds
    assert registry.get_sample_value("lat_sum", {"op": "get"}) == pytest.approx(
        sum(values) * rounds
    )
    assert registry.get_sample_value("lat_bucket", {"op": "put", "le": "+Inf"}) is None


def _updates(
    observe: Callable[[str, str, float], None],
    result: Callable[[str, str, float], None],
    error: Callable[[str, str, str], None],
    stored: Callable[[str, float], None],
) -> None:
    """The same sequence of updates, in the same order, for either implementation."""
    for i, v in enumerate((0.0, 0.0005, 0.0007, 0.005, 1, 1.5, 5, 9.0, 0.0123)):
        observe("checkpoint", ("put", "get_tuple", "list")[i % 3], v)
        observe("llm_cache", "lookup", v / 3)
    for tier, res, n in (("llm_cache", "hit", 1), ("llm_cache", "miss", 2), ("store", "ok", 5)):
        result(tier, res, n)
    result("llm_cache", "hit", 3)
    error("store", "put", "timeout")
    error("store", "put", "timeout")
    error("checkpoint", "list", "error")
    stored("checkpoint", 1234)
    stored("store", 7)
    stored("checkpoint", 66)


def _lines(text: bytes, names: set[str]) -> tuple[list[str], set[str]]:
    """The exposition lines of these families, and the series that have ``_created``
    (a timestamp that differs between two registries)."""
    keep, created = [], set()
    for line in text.decode().splitlines():
        words = line.split(" ")
        if line == "# EOF":
            continue
        name = words[2] if line.startswith("#") else line.split("{")[0].split(" ")[0]
        base = name.removesuffix("_total")
        for suffix in ("_bucket", "_count", "_sum", "_created"):
            base = base.removesuffix(suffix)
        if base not in names:
            continue
        if name.endswith("_created") and not line.startswith("#"):
            created.add(line.rsplit(" ", 1)[0])
        else:
            keep.append(line)
    return keep, created


def test_exposition_equals_plain_prometheus_client() -> None:
    ours = CollectorRegistry()
    by_tier = {t: Telemetry(t, metrics=ours) for t in ("checkpoint", "llm_cache", "store")}
    _updates(
        lambda tier, op, v: by_tier[tier]._duration.observe(op, v),  # type: ignore[union-attr]
        lambda tier, res, n: by_tier[tier].result(res, int(n)),
        lambda tier, op, reason: by_tier[tier].error(op, reason),
        lambda tier, n: by_tier[tier].stored(int(n)),
    )

    plain = CollectorRegistry()
    requests = Counter(
        f"{_NS}_requests", "Operations by tier and result", ["tier", "result"], registry=plain
    )
    duration = Histogram(
        f"{_NS}_operation_duration_seconds",
        "Duration of operations",
        ["tier", "operation"],
        registry=plain,
        buckets=_BUCKETS,
    )
    errors = Counter(
        f"{_NS}_errors", "Server or client errors", ["tier", "operation", "reason"], registry=plain
    )
    stored_bytes = Counter(
        f"{_NS}_stored_bytes", "Bytes written to Valkey", ["tier"], registry=plain
    )
    _updates(
        lambda tier, op, v: duration.labels(tier, op).observe(v),
        lambda tier, res, n: requests.labels(tier, res).inc(n),
        lambda tier, op, reason: errors.labels(tier, op, reason).inc(),
        lambda tier, n: stored_bytes.labels(tier).inc(n),
    )

    names = {
        f"{_NS}_requests",
        f"{_NS}_operation_duration_seconds",
        f"{_NS}_errors",
        f"{_NS}_stored_bytes",
    }
    for exposition in (generate_latest, openmetrics_latest):
        got, got_created = _lines(exposition(ours), names)
        want, want_created = _lines(exposition(plain), names)
        assert got == want
        assert got_created == want_created and len(want_created) == 11
    # and the parsed families agree too (types, label sets, values)
    parsed = {f.name: f for f in text_string_to_metric_families(generate_latest(ours).decode())}
    assert parsed[f"{_NS}_operation_duration_seconds"].type == "histogram"
    assert parsed[f"{_NS}_requests"].type == "counter"


def test_created_series_follow_prometheus_switch() -> None:
    import prometheus_client.metrics as pm

    registry = CollectorRegistry()
    BatchedCounter("c", "C", ["a"], registry).inc(("x",))
    BatchedHistogram("h", "H", ["a"], registry, buckets=(1,)).observe(("x",), 0.5)
    assert registry.get_sample_value("c_created", {"a": "x"}) is not None
    assert registry.get_sample_value("h_created", {"a": "x"}) is not None
    was = pm._use_created
    pm.disable_created_metrics()
    try:
        assert b"_created" not in generate_latest(registry)
    finally:
        pm._use_created = was


def test_a_family_registers_once_per_registry() -> None:
    registry = CollectorRegistry()
    assert get_metrics(registry) is get_metrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        BatchedCounter(f"{_NS}_requests", "again", ["tier", "result"], registry)
    with pytest.raises(ValueError, match="labels"):
        BatchedCounter("bad", "Bad", ["a", "b"], registry).inc(("only-one",))


def test_metrics_off_binds_nothing() -> None:
    tel = Telemetry("checkpoint", metrics=False)
    assert tel._metrics is None and tel._duration is None and tel._requests is None
    tel.finish("put", 0.0, None)
    tel.result("hit")
    tel.stored(10)
    tel.error("put")


_MULTIPROCESS_SCRIPT = """
import sys
from langchain_core.outputs import Generation
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from langgraph_valkey_cache import ValkeyCache
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache._metrics import multiprocess_mode

assert multiprocess_mode()
cache = ValkeyCache(client_from_url(sys.argv[1]), prefix=sys.argv[2])
cache.update("prompt", "llm", [Generation(text="x")])
for _ in range(3):
    assert cache.lookup("prompt", "llm")
registry = CollectorRegistry()
MultiProcessCollector(registry)  # what a gunicorn worker's /metrics serves
ns = "langgraph_valkey_cache"
hits = registry.get_sample_value(ns + "_requests_total", {"tier": "llm_cache", "result": "hit"})
n = registry.get_sample_value(
    ns + "_operation_duration_seconds_count", {"tier": "llm_cache", "operation": "lookup"}
)
print(hits, n)
"""


def test_prometheus_multiprocess_mode_gets_plain_families(
    valkey_url: str, prefix: str, tmp_path: Any
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set (gunicorn-style workers), the families are
    prometheus_client's own, so its MultiProcessCollector sums them over the workers:
    a real cache in a fresh process, read back through that collector."""
    import os
    import subprocess

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", _MULTIPROCESS_SCRIPT, valkey_url, prefix],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert out.stdout.split() == ["3.0", "3.0"], out.stderr
