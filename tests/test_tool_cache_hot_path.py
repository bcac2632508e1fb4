"""ToolCache's hit path: a plain GET, memoised call keys, the hit's message; real servers."""

from __future__ import annotations

import datetime
import enum
from types import SimpleNamespace
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from langgraph.prebuilt.tool_node import ToolCallRequest

from langgraph_valkey_cache import ToolCache
from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache.cache.tools import canonical_args
from langgraph_valkey_cache.testing import count_commands


class Color(enum.Enum):
    RED = "red"


# values that compare equal in Python (1 == True == 1.0, 0.0 == -0.0) but not in JSON,
# containers of each kind, non-str dict keys and values without a JSON form of their own
LOOK_ALIKES: list[Any] = [
    1, True, 1.0, 0, False, 0.0, -0.0, None, "1", "true", [1], (1,), [True], [1.0],
    {"a": 1}, {"a": True}, {1: "a"}, {"1": "a"}, {"a": {"b": [1, {"c": 2}]}},
    {"a": {"b": [1, {"c": 2.0}]}}, datetime.date(2026, 1, 2), "2026-01-02", Color.RED, "red",
    10**30, 1e30,
]  # fmt: skip


def request(args: dict[str, Any], call_id: str, fn: Any, name: str = "echo") -> ToolCallRequest:
    return ToolCallRequest(
        tool_call={"name": name, "args": args, "id": call_id, "type": "tool_call"},
        tool=fn,
        state={},
        runtime=SimpleNamespace(config={}),  # type: ignore[arg-type]
    )


def test_memoised_keys_are_the_keys_of_a_fresh_cache(client: Any, prefix: str) -> None:
    """The memo (keyed by a structural form of the arguments) never hands one call
    another's key: every key equals the one a cache that never saw the others computes,
    and two calls share a key exactly when their canonical JSON is the same."""
    warm = ToolCache(client, prefix=prefix, metrics=False)
    for _ in range(2):  # the second round is served from the memo
        for value in LOOK_ALIKES:
            args = {"x": value, "y": "z"}
            fresh = ToolCache(client, prefix=prefix, metrics=False)
            assert warm.key_for("t", args) == fresh.key_for("t", args), value
    for a in LOOK_ALIKES:
        for b in LOOK_ALIKES:
            same_json = canonical_args({"x": a}) == canonical_args({"x": b})
            same_key = warm.key_for("t", {"x": a}) == warm.key_for("t", {"x": b})
            assert same_key == same_json, (a, b)
    # argument names and nesting are part of the form, order is not part of the key
    shapes: list[dict[str, Any]] = [
        {"x": "a"}, {"y": "a"}, {"x": "a", "y": "b"}, {"x": "b", "y": "a"},
        {"x": {"a": "b"}}, {"x": {"b": "a"}}, {"x": {"c": "a"}}, {"x": ["a", "b"]},
        {"x": ["b", "a"]},
        {"x": [["a"], "b"]}, {"x": ["a", ["b"]]}, {"x": "a", "y": {"z": "b"}},
    ]  # fmt: skip
    for _ in range(2):
        keys = [warm.key_for("t", a) for a in shapes]
        assert len(set(keys)) == len(shapes)
        assert warm.key_for("t", {"y": "b", "x": "a"}) == keys[2]
    for bad in (float("nan"), float("inf"), {"a": float("nan")}, object()):
        for _ in range(2):  # never memoised: not cacheable every time
            with pytest.raises((TypeError, ValueError)):
                warm.key_for("t", {"x": bad})


def test_memoised_keys_through_a_schema(client: Any, prefix: str) -> None:
    @tool
    def scale(x: float, unit: str = "m") -> str:
        """Scale."""
        return str(x)

    warm = ToolCache(client, prefix=prefix, metrics=False, tools=[scale])
    for args in ({"x": 1}, {"x": 1.0}, {"x": "1"}, {"x": 1, "unit": "m"}, {"x": -0.0}):
        for _ in range(2):
            fresh = ToolCache(client, prefix=prefix, metrics=False, tools=[scale])
            assert warm.key_for("scale", args) == fresh.key_for("scale", args), args
    # the schema coerces 1, 1.0 and "1" to 1.0 and fills the default: one entry
    assert len({warm.key_for("scale", a) for a in ({"x": 1}, {"x": "1"}, {"x": 1.0})}) == 1
    assert warm.key_for("scale", {"x": 1}) != warm.key_for("scale", {"x": 1, "unit": "km"})
    assert warm.key_for("scale", {"x": 0.0}) != warm.key_for("scale", {"x": -0.0})


@pytest.mark.parametrize(
    "content", ["sunny", "", ["part", {"type": "text", "text": "t"}]], ids=["str", "empty", "list"]
)
def test_a_hit_is_the_message_the_constructor_builds(
    client: Any, prefix: str, content: Any
) -> None:
    @tool(response_format="content_and_artifact")
    def echo(q: str) -> tuple[Any, Any]:
        """Echo."""
        return content, {"q": q, "ids": [1]}

    def execute(req: ToolCallRequest) -> ToolMessage:
        artifact = {"q": req.tool_call["args"]["q"], "ids": [1]}
        return ToolMessage(
            content=content, artifact=artifact, name="echo", tool_call_id=req.tool_call["id"]
        )

    cache = ToolCache(client, prefix=prefix, metrics=False)
    cache.wrap(request({"q": "a"}, "c0", echo), execute)
    with count_commands() as log:
        hits = [cache.wrap(request({"q": "a"}, f"c{i}", echo), execute) for i in (1, 2)]
    assert log.commands == ["GET", "GET"]
    expected = ToolMessage(
        content=content, artifact={"q": "a", "ids": [1]}, name="echo", tool_call_id="c1"
    )
    first, second = hits
    assert isinstance(first, ToolMessage)
    assert first == expected and first.__dict__ == expected.__dict__
    assert first.model_fields_set == expected.model_fields_set
    assert first.__pydantic_extra__ == expected.__pydantic_extra__
    assert first.model_dump() == expected.model_dump()
    assert second.tool_call_id == "c2"
    # nothing mutable is shared between two hits' messages
    for field, value in first.__dict__.items():
        if isinstance(value, (dict, list)):
            assert value is not second.__dict__[field], field
    first.additional_kwargs["x"] = 1
    first.response_metadata["y"] = 2
    assert second.additional_kwargs == {} and second.response_metadata == {}


@pytest.mark.parametrize("single_flight", [True, False])
def test_undecodable_entry_is_recomputed_and_overwritten(
    client: Any, prefix: str, single_flight: bool, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[str] = []

    @tool
    def echo(q: str) -> str:
        """Echo."""
        runs.append(q)
        return q

    def execute(req: ToolCallRequest) -> ToolMessage:
        out = echo.invoke(req.tool_call["args"])
        return ToolMessage(content=out, name="echo", tool_call_id=req.tool_call["id"])

    cache = ToolCache(client, prefix=prefix, metrics=False, single_flight=single_flight)
    key = cache.key_for("echo", {"q": "a"}, echo)
    client.set(key, b"garbage")
    msg = cache.wrap(request({"q": "a"}, "c0", echo), execute)
    assert msg.content == "a" and runs == ["a"]
    assert "undecodable tool cache entry" in caplog.text
    with count_commands() as log:
        again = cache.wrap(request({"q": "a"}, "c1", echo), execute)
    assert again.content == "a" and again.tool_call_id == "c1" and runs == ["a"]
    assert log.commands == ["GET"]


async def test_async_hit_is_one_get(valkey_url: str, prefix: str) -> None:
    aclient = client_from_url(valkey_url, asyncio=True)
    runs: list[str] = []

    @tool
    def echo(q: str) -> str:
        """Echo."""
        runs.append(q)
        return q

    async def execute(req: ToolCallRequest) -> ToolMessage:
        out = echo.invoke(req.tool_call["args"])
        return ToolMessage(content=out, name="echo", tool_call_id=req.tool_call["id"])

    cache = ToolCache(aclient, prefix=prefix, metrics=False, stats_flush_interval=3600)
    await cache.awrap(request({"q": "a"}, "c0", echo), execute)
    await cache.awrap(request({"q": "a"}, "c1", echo), execute)  # policies read
    with count_commands() as log:
        msg = await cache.awrap(request({"q": "a"}, "c2", echo), execute)
    assert log.commands == ["GET"] and runs == ["a"]
    assert msg.tool_call_id == "c2" and msg.content == "a"
    await aclient.aclose()
