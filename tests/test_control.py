"""The shared per-request control and scope parser (``_control``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from langgraph_valkey_cache._control import (
    CacheControl,
    normalize_scope,
    read_control,
    scope_values,
    warn_missing_scope,
)


def _cfg(**conf: object) -> dict[str, object]:
    return {"configurable": conf}


def test_read_control_defaults() -> None:
    for config in (None, {}, _cfg(), _cfg(cache_control=None), {"configurable": "x"}):
        c = read_control(config)
        assert c == CacheControl() and c.reads and c.writes and c.ttl_ms(5) == 5


def test_read_control_fields() -> None:
    c = read_control(_cfg(cache_control={"skip": True}))
    assert not c.reads and not c.writes
    c = read_control(_cfg(cache_control={"refresh": True, "ttl": 2.5}))
    assert not c.reads and c.writes and c.ttl_ms(None) == 2500 and c.ttl == 2.5
    assert read_control(_cfg(cache_control={"ttl": 0.0001})).ttl_ms(None) == 1
    given = CacheControl(skip=True)
    assert read_control(_cfg(cache_control=given)) is given


@pytest.mark.parametrize(
    "bad",
    [{"skp": True}, {"ttl": 0}, {"ttl": -1}, {"ttl": "10"}, {"ttl": True}, ["skip"]],
)
def test_read_control_rejects_malformed(bad: object) -> None:
    with pytest.raises(ValueError):
        read_control(_cfg(cache_control=bad))


def test_normalize_scope() -> None:
    assert normalize_scope(None) == ()
    assert normalize_scope("user_id") == ("user_id",)
    assert normalize_scope(["a", "b"]) == ("a", "b")
    for bad in (("a", "a"), ("",), (1,)):
        with pytest.raises(ValueError):
            normalize_scope(bad)  # type: ignore[arg-type]


@dataclass
class _Ctx:
    tenant: str


def test_scope_values() -> None:
    assert scope_values(None, ()) == ()
    assert scope_values(_cfg(user_id="a"), ("user_id",)) == ("a",)
    assert scope_values(_cfg(user_id=7), ("user_id",)) == ("7",)
    assert scope_values(_cfg(user_id={"b": 1, "a": 2}), ("user_id",)) == ('{"a":2,"b":1}',)
    assert scope_values(_cfg(), ("user_id",)) is None
    assert scope_values(_cfg(user_id=None), ("user_id",)) is None
    # configurable first, then the runtime context (mapping or object)
    assert scope_values(_cfg(user_id="a"), ("user_id", "tenant"), _Ctx("t")) == ("a", "t")
    assert scope_values(_cfg(tenant="c"), ("tenant",), {"tenant": "x"}) == ("c",)
    assert scope_values(None, ("tenant",), {"tenant": "x"}) == ("x",)
    assert scope_values(_cfg(user_id="a"), ("user_id", "tenant")) is None


def test_warn_missing_scope_once_per_owner(caplog: pytest.LogCaptureFixture) -> None:
    class Owner:
        pass

    a, b = Owner(), Owner()
    with caplog.at_level(logging.WARNING, logger="langgraph_valkey_cache.cache"):
        for _ in range(3):
            warn_missing_scope(a, ("user_id",))
        warn_missing_scope(b, ("user_id",))
        warn_missing_scope(a, ("tenant",))
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 3 and all("bypassed" in m for m in msgs)


def test_scope_values_from_the_langgraph_runtime_context() -> None:
    class Runtime:
        context = {"user_id": "r"}

    config = {"configurable": {"__pregel_runtime": Runtime()}}
    assert scope_values(config, ("user_id",)) == ("r",)
    assert scope_values(config, ("user_id",), {"user_id": "explicit"}) == ("explicit",)


def test_cache_config_sets_the_current_config() -> None:
    from langgraph_valkey_cache._control import cache_config, current_config

    before = current_config()
    with cache_config({"configurable": {"user_id": "a"}}):
        assert scope_values(current_config(), ("user_id",)) == ("a",)
    assert current_config() == before
