"""FT query building and filter logic of the store (no I/O).

Vector docs carry ``nsp``: a TAG with one digest per prefix of the item's namespace
(``()`` included), so a namespace-prefix condition is one exact TAG match, whatever
the labels contain. Declared ``filter_fields`` get a TAG ``f<i>`` (digest of the
value's canonical form, for ``$eq``/``$ne``) and a NUMERIC ``n<i>`` (for ranges).
Pushed-down conditions only narrow the candidates; every hit is checked again with
:func:`matches`, whose semantics are InMemoryStore's.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from typing import Any

from langgraph.store.base import MatchCondition

from langgraph_valkey_cache._keys import digest
from langgraph_valkey_cache._search import escape_tag

__all__ = [
    "FilterFields",
    "does_match",
    "index_schema",
    "knn_filter",
    "matches",
    "ns_tag",
    "ns_tags",
]

_RANGE = {"$gt": ("(", None), "$gte": ("", None), "$lt": (None, "("), "$lte": (None, "")}


@functools.lru_cache(maxsize=4096)
def _ns_tag(labels: tuple[str, ...]) -> str:
    return digest("ns", *labels)


def ns_tag(labels: Sequence[str]) -> str:
    return _ns_tag(tuple(labels))


def ns_tags(namespace: Sequence[str]) -> str:
    """The ``nsp`` TAG value: every prefix of ``namespace``, comma separated."""
    return ",".join(ns_tag(namespace[:i]) for i in range(len(namespace) + 1))


def _canonical(value: Any) -> str:
    # Python's == makes True == 1 == 1.0; the TAG must not tell them apart.
    if value is None:
        return "null"
    if isinstance(value, (bool, int, float)):
        return "n:" + repr(float(value))
    if isinstance(value, str):
        return "s:" + value
    return "j:" + json.dumps(value, sort_keys=True, default=str)


def _number(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def _at(value: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class FilterFields:
    """The dotted value paths copied onto vector docs for filter push-down."""

    def __init__(self, fields: Sequence[str]) -> None:
        self.paths = [tuple(f.split(".")) for f in fields]
        self._pos = {p: i for i, p in enumerate(self.paths)}

    def doc_fields(self, value: dict[str, Any]) -> list[Any]:
        """Flat field/value pairs for one vector doc."""
        out: list[Any] = []
        for i, path in enumerate(self.paths):
            v = _at(value, path)
            out += [f"f{i}", digest(_canonical(v))]
            n = _number(v) if not isinstance(v, (dict, list)) else None
            if n is not None:
                out += [f"n{i}", repr(n)]
        return out

    def pushdown(self, filter: dict[str, Any] | None) -> list[str]:
        """Query clauses for the conditions that hit a declared field."""
        clauses: list[str] = []
        if not filter or not self.paths:
            return clauses

        def walk(cond: Any, path: tuple[str, ...]) -> None:
            if isinstance(cond, dict) and cond and not any(k.startswith("$") for k in cond):
                for k, v in cond.items():
                    walk(v, (*path, k))
                return
            i = self._pos.get(path)
            if i is None:
                return
            ops = cond if isinstance(cond, dict) and cond else {"$eq": cond}
            for op, operand in ops.items():
                if op in ("$eq", "$ne"):
                    if isinstance(operand, (dict, list, tuple)):
                        continue
                    clause = f"@f{i}:{{{escape_tag(digest(_canonical(operand)))}}}"
                    clauses.append(clause if op == "$eq" else "-" + clause)
                elif op in _RANGE and not isinstance(operand, bool):
                    n = _number(operand)
                    if n is None:
                        continue
                    lo, hi = _RANGE[op]
                    low = "-inf" if lo is None else lo + repr(n)
                    high = "+inf" if hi is None else hi + repr(n)
                    clauses.append(f"@n{i}:[{low} {high}]")

        for key, cond in filter.items():
            walk(cond, (key,))
        return clauses


def index_schema(
    prefix: str,
    dims: int,
    algorithm: str,
    params: dict[str, Any],
    n_filter_fields: int,
) -> list[Any]:
    """``FT.CREATE`` arguments after the index name."""
    vec = ["TYPE", "FLOAT32", "DIM", dims, "DISTANCE_METRIC", "COSINE"]
    for name, value in params.items():
        if name.upper() != "EF_RUNTIME":
            vec += [name.upper(), value]
    schema: list[Any] = ["nsp", "TAG", "SEPARATOR", ","]
    schema += ["vec", "VECTOR", algorithm, len(vec), *vec]
    for i in range(n_filter_fields):
        schema += [f"f{i}", "TAG", f"n{i}", "NUMERIC"]
    return ["ON", "HASH", "PREFIX", 1, prefix, "SCHEMA", *schema]


def knn_filter(namespace_prefix: Sequence[str], clauses: Sequence[str]) -> str:
    """The KNN pre-filter: the namespace prefix TAG (every doc has one) and pushed-down
    clauses. The KNN itself is built by :func:`langgraph_valkey_cache._search.knn_command`."""
    return " ".join([f"@nsp:{{{escape_tag(ns_tag(namespace_prefix))}}}", *clauses])


# -- exact semantics (InMemoryStore's) ------------------------------------------------


def matches(value: dict[str, Any], filter: dict[str, Any] | None) -> bool:
    if not filter:
        return True
    return all(_compare(value.get(k), v) for k, v in filter.items())


def _compare(item_value: Any, filter_value: Any) -> bool:
    if isinstance(filter_value, dict):
        if any(k.startswith("$") for k in filter_value):
            return all(_apply(item_value, op, v) for op, v in filter_value.items())
        if not isinstance(item_value, dict):
            return False
        return all(_compare(item_value.get(k), v) for k, v in filter_value.items())
    if isinstance(filter_value, (list, tuple)):
        return (
            isinstance(item_value, (list, tuple))
            and len(item_value) == len(filter_value)
            and all(_compare(a, b) for a, b in zip(item_value, filter_value, strict=True))
        )
    return bool(item_value == filter_value)


def _apply(value: Any, op: str, operand: Any) -> bool:
    if op == "$eq":
        return bool(value == operand)
    if op == "$ne":
        return bool(value != operand)
    if op in _RANGE:
        # InMemoryStore raises on a value float() rejects (e.g. a missing field): no match.
        try:
            a, b = float(value), float(operand)
        except (TypeError, ValueError, OverflowError):
            return False
        return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]
    raise ValueError(f"Unsupported operator: {op}")


def does_match(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = zip(namespace, path, strict=False)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(namespace), reversed(path), strict=False)
    else:
        raise ValueError(f"Unsupported match type: {condition.match_type}")
    return all(p == "*" or n == p for n, p in pairs)
