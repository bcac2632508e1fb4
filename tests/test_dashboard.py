"""docs/grafana-dashboard.json (issue 13): every panel's query names metrics the package
exports, with labels those metrics have; the panels the issue asks for are there; and a
cache in use emits the series the ledger panels read."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage, calc_price
from prometheus_client import CollectorRegistry

from langgraph_valkey_cache import ValkeyCache
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache._telemetry import get_metrics
from tests.test_savings import IN, OUT, priced_model

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"
_METRIC = re.compile(r"\blanggraph_valkey_cache_[a-z_]+")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)\s*\"")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def _exported() -> dict[str, set[str]]:
    """Every series name the package's metric families expose -> their label names."""
    registry = CollectorRegistry()
    metrics = get_metrics(registry)
    labels = {
        getattr(metrics, f).describe()[0].name: set(getattr(metrics, f)._labelnames)
        for f in metrics.__dataclass_fields__
    }
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        for suffix in _SUFFIXES[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            out[family.name + suffix] = labels[family.name] | extra
    return out


def _queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    found = [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            found.append((f"${var['name']}", var["definition"]))
    return found


def test_every_query_names_exported_metrics_and_their_labels() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exported = _exported()
    queries = _queries(dash)
    assert len(queries) >= 12
    for title, expr in queries:
        names = set(_METRIC.findall(expr))
        assert names, f"{title}: no package metric in {expr!r}"
        unknown = names - set(exported)
        assert not unknown, f"{title}: {sorted(unknown)} not exported"
        have = set.intersection(*(exported[n] for n in names))
        used = {m for m in _MATCHER.findall(expr)}
        for group in _BY.findall(expr):
            used |= {g.strip() for g in group.split(",") if g.strip()}
        assert used <= have, f"{title}: labels {sorted(used - have)} not on {sorted(names)}"


def test_the_panels_the_issue_asks_for() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}," in exprs
    for metric in (
        "requests_total", "errors_total", "tokens_saved_total", "cost_saved_usd_total",
        "provider_cache_tokens_total", "provider_cache_saved_usd_total",
        "provider_cache_write_premium_usd_total",
    ):  # fmt: skip
        assert f"langgraph_valkey_cache_{metric}" in exprs
    assert "sum by (tier, reason)" in exprs  # errors by reason
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        for t in p["targets"]:
            for legend in re.findall(r"\{\{(\w+)\}\}", t["legendFormat"]):
                grouped = {g.strip() for by in _BY.findall(t["expr"]) for g in by.split(",")}
                assert legend in grouped, f"{p['title']}: legend {legend} is not grouped by"


def test_a_cache_in_use_emits_the_ledger_series(valkey_url: str, prefix: str) -> None:
    registry = CollectorRegistry()
    client = client_from_url(valkey_url)
    cache = ValkeyCache(client, prefix=prefix, metrics=registry)
    model = priced_model(cache=cache, cache_read=256)
    for _ in range(3):
        model.invoke("dashboard")
    ns = "langgraph_valkey_cache"

    def value(name: str, **labels: str) -> float:
        got = registry.get_sample_value(name, {"tier": "llm_cache", **labels})
        assert got is not None, (name, labels)
        return got

    assert value(f"{ns}_requests_total", result="hit") == 2
    assert value(f"{ns}_tokens_saved_total", model="gpt-4o-mini") == 2 * (IN + OUT)
    assert value(f"{ns}_cost_saved_usd_total") > 0
    assert value(f"{ns}_model_saved_usd_total", model="gpt-4o-mini") == pytest.approx(
        value(f"{ns}_cost_saved_usd_total")
    )
    assert value(f"{ns}_provider_cache_tokens_total", model="gpt-4o-mini", kind="read") == 256
    assert value(f"{ns}_provider_cache_tokens_total", model="gpt-4o-mini", kind="input") == IN
    assert value(f"{ns}_provider_cache_saved_usd_total", model="gpt-4o-mini") > 0
    assert value(f"{ns}_operation_duration_seconds_count", operation="lookup") == 3
    # a model that bills cache writes above the input rate: the premium series
    claude = priced_model(cache=cache, model_name="claude-sonnet-4-5", cache_creation=500)
    claude.invoke("dashboard")
    premium = value(f"{ns}_provider_cache_write_premium_usd_total", model="claude-sonnet-4-5")
    full = calc_price(Usage(input_tokens=IN), "claude-sonnet-4-5").input_price
    billed = calc_price(Usage(input_tokens=IN, cache_write_tokens=500), "claude-sonnet-4-5")
    assert premium == pytest.approx(float(billed.input_price - full)) and premium > 0
    client.close()
