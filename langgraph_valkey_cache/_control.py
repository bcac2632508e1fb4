"""Per-request cache control and cache scopes, read from a run's config (no I/O).

Every cache tier reads the same two things from the current ``RunnableConfig``:

* ``configurable["cache_control"] = {"skip": bool, "refresh": bool, "ttl": seconds}``
  (:func:`read_control`): ``skip`` bypasses the cache (no read, no write), ``refresh``
  recomputes and overwrites (no read, a write), ``ttl`` is the lifetime of the entry
  this request writes (instead of the cache's default). Any key may be left out.
* the values of a cache's ``scope=("user_id", ...)`` names (:func:`scope_values`),
  from ``configurable`` first and then the runtime context (a mapping or an object
  with those attributes); they become part of the key, so a scoped cache never
  answers across scopes. A missing value (absent or ``None``) means "no scope": the
  cache is bypassed (:func:`warn_missing_scope` logs it once per cache and name).

Keys are built in ``_keys``; this module only says what goes into them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables.config import var_child_runnable_config

__all__ = [
    "CONTROL_KEY",
    "NO_CONTROL",
    "CacheControl",
    "cache_config",
    "current_config",
    "normalize_scope",
    "read_control",
    "scope_values",
    "warn_missing_scope",
]

logger = logging.getLogger("langgraph_valkey_cache.cache")

#: The ``configurable`` key every cache reads its per-request control from.
CONTROL_KEY = "cache_control"
# where LangGraph keeps the run's Runtime (langgraph._internal._constants.CONFIG_KEY_RUNTIME)
_RUNTIME_KEY = "__pregel_runtime"
_FIELDS = frozenset({"skip", "refresh", "ttl"})


@dataclass(frozen=True, slots=True)
class CacheControl:
    """What one request asks of the cache (see the module docstring)."""

    skip: bool = False
    refresh: bool = False
    ttl: float | None = None

    @property
    def reads(self) -> bool:
        """Whether a cached answer may be served."""
        return not (self.skip or self.refresh)

    @property
    def writes(self) -> bool:
        """Whether the computed answer is stored."""
        return not self.skip

    def ttl_ms(self, default_ms: int | None) -> int | None:
        """The entry's TTL in milliseconds: this request's, else the cache's default."""
        return default_ms if self.ttl is None else max(1, int(self.ttl * 1000))


NO_CONTROL = CacheControl()


def _configurable(config: Any) -> Mapping[str, Any]:
    if not isinstance(config, Mapping):
        return {}
    conf = config.get("configurable")
    return conf if isinstance(conf, Mapping) else {}


def current_config() -> Mapping[str, Any] | None:
    """The config of the runnable being run in this context (LangChain sets it for the
    duration of every runnable's ``invoke``/``ainvoke``: a graph node, an agent, a chain
    step), so ``BaseCache.lookup`` can read it."""
    return var_child_runnable_config.get()


@contextlib.contextmanager
def cache_config(config: Mapping[str, Any]) -> Iterator[None]:
    """Make ``config`` the current run's config for the caches in this block.

    LangChain hands ``BaseCache.lookup`` no config; the caches read the running
    runnable's (a graph node, chain or agent sets it). A bare ``model.invoke(x,
    config)`` sets none, so its scope and ``cache_control`` need this::

        with cache_config({"configurable": {"user_id": "a"}}):
            model.invoke("hi")
    """
    token = var_child_runnable_config.set(config)  # type: ignore[arg-type]
    try:
        yield
    finally:
        var_child_runnable_config.reset(token)


def read_control(config: Any) -> CacheControl:
    """The :class:`CacheControl` of ``config["configurable"]["cache_control"]``.

    Absent means the defaults (read and write, the cache's TTL). A malformed value
    (unknown key, a ``ttl`` that is not a positive number) raises ``ValueError``: a
    typo must not silently serve or keep what the caller meant to bypass.
    """
    raw = _configurable(config).get(CONTROL_KEY)
    if raw is None:
        return NO_CONTROL
    if isinstance(raw, CacheControl):
        return raw
    if not isinstance(raw, Mapping):
        raise ValueError(f"configurable[{CONTROL_KEY!r}] must be a dict, got {type(raw).__name__}")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ValueError(
            f"configurable[{CONTROL_KEY!r}] has unknown keys {sorted(unknown)}; "
            f"allowed: {sorted(_FIELDS)}"
        )
    ttl = raw.get("ttl")
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
            raise ValueError(f"cache_control ttl must be a positive number of seconds, got {ttl!r}")
        ttl = float(ttl)
    control = CacheControl(skip=bool(raw.get("skip")), refresh=bool(raw.get("refresh")), ttl=ttl)
    return NO_CONTROL if control == NO_CONTROL else control


def normalize_scope(scope: Sequence[str] | str | None) -> tuple[str, ...]:
    """A cache's ``scope=`` argument as a tuple of names (``"user_id"`` alone is allowed)."""
    if scope is None:
        return ()
    names = (scope,) if isinstance(scope, str) else tuple(scope)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"scope names must be non-empty strings, got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"scope names repeat: {names!r}")
    return names


def _scope_text(value: Any) -> str:
    # a string is itself and an int its digits, so user_id="7" and user_id=7 are one
    # scope (the same user whichever way the app spells it); anything else as JSON
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _from_context(context: Any, name: str) -> Any:
    if context is None:
        return None
    if isinstance(context, Mapping):
        return context.get(name)
    return getattr(context, name, None)


def scope_values(config: Any, scope: Sequence[str], context: Any = None) -> tuple[str, ...] | None:
    """The values of the ``scope`` names as strings, in order, or ``None`` if any is missing.

    Each name is looked up in ``config["configurable"]``, then in ``context`` (the
    runtime context of an agent or graph: a mapping or an object). ``()`` for an
    unscoped cache. The tuple goes to ``_keys`` as is (which encodes it injectively).
    Without ``context``, inside a LangGraph run, the run's runtime context is used
    (``graph.invoke(..., context=...)``).
    """
    if not scope:
        return ()
    conf = _configurable(config)
    if context is None:  # inside a LangGraph run: the runtime context it passes along
        context = getattr(conf.get(_RUNTIME_KEY), "context", None)
    out = []
    for name in scope:
        value = conf.get(name)
        if value is None:
            value = _from_context(context, name)
        if value is None:
            return None
        out.append(_scope_text(value))
    return tuple(out)


_warned: weakref.WeakKeyDictionary[Any, set[tuple[str, ...]]] = weakref.WeakKeyDictionary()
_warned_lock = threading.Lock()


def warn_missing_scope(owner: object, scope: Sequence[str]) -> None:
    """Log once per cache object and scope that a request had no scope value (the cache
    was bypassed: the model or tool ran, nothing was stored)."""
    names = tuple(scope)
    with _warned_lock:
        try:
            seen = _warned.setdefault(owner, set())
        except TypeError:  # not weak-referenceable: warn every time rather than never
            seen = set()
        if names in seen:
            return
        seen.add(names)
    logger.warning(
        "%s is scoped by %s but this run's config has no value for it: the cache is "
        "bypassed (nothing read or stored). Pass it in config['configurable'] or the "
        "runtime context; a bare model.invoke(x, config) hands the cache no config: "
        "wrap it in cache_config(config).",
        type(owner).__name__,
        ", ".join(names),
    )
