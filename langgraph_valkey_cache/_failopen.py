"""The fail-open executor every cache runs on: one breaker per server, one budget, one
place where errors are classified, counted and logged.

A cache operation is a *plan*: a generator that yields I/O steps (:class:`Cmd`,
:class:`Pipe`, :class:`Script`, :class:`Scan`), pauses (:class:`Sleep`), "run the
user's function now" (:data:`COMPUTE`) and counts (:class:`Tally`), and returns the
operation's result. It does no I/O itself, so the same plan runs on a sync client
(:meth:`Executor.run`) and an async one (:meth:`Executor.arun`).

The executor alone owns the failure policy (DESIGN.md, "Faults"):

* **Breaker.** One per server and process (:func:`breaker_for`), shared by every cache
  on that server. A transient failure (connection refused or reset, timeout) opens it;
  while open, every I/O step is refused at once (no round trip). After a cooldown one
  caller's step is let through as the probe (half-open); success closes the breaker.
  The cooldown starts at 0.25 s and doubles, up to 1 s, only while probes time out
  (each costs its caller the budget); a refused connection costs nothing, so a dead
  server is probed every 0.25 s. Caching therefore resumes about a second after the server's
  return. One warning per outage, one info line when the server is back.
* **Budget.** Async steps run under a deadline of ``timeout`` seconds each, whatever the
  client (a user's client without timeouts included): on the lean path the wire keeps it
  (one timer per event loop aborts an exchange past its deadline), elsewhere
  ``asyncio.timeout``. Sync steps are bounded by the
  client's socket timeout; clients built by :func:`cache_client_from_url` get the
  budget as socket timeout, no retries and no health-check PINGs.
* **Classification.** A failed step is thrown into the plan as :class:`CacheUnavailable`
  (with the cause chained), so flows that must go on (single-flight computes anyway)
  can. If it escapes, the operation returns its ``default`` (a miss, a no-op).
  Permanent errors (ACL, OOM, wrong type, unknown command, no search module, cluster
  routing) are logged loudly once per cache and reason; any other exception from our
  own code fails open too, logged once with its traceback. Only the user's own
  function (:data:`COMPUTE`) may raise through a cache.
* **Counting.** Spans, the duration histogram, error metrics by reason, hit/miss
  metrics and the shared stats: all recorded here, from the plan's :class:`Tally`
  steps and the outcome of the run.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

from valkey.exceptions import (
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    ValkeyClusterException,
    ValkeyError,
)
from valkey.exceptions import (
    ConnectionError as VConnectionError,
)
from valkey.exceptions import (
    TimeoutError as VTimeoutError,
)

from langgraph_valkey_cache._client import is_async_client, is_cluster, scan_keys
from langgraph_valkey_cache._stats import SharedStats
from langgraph_valkey_cache._telemetry import Telemetry
from langgraph_valkey_cache._wire import wire_for

__all__ = [
    "BYPASS",
    "COMPUTE",
    "Breaker",
    "CacheUnavailable",
    "Call",
    "Cmd",
    "Executor",
    "Pipe",
    "Plan",
    "Scan",
    "Script",
    "Sleep",
    "Tally",
    "breaker_for",
]

logger = logging.getLogger("langgraph_valkey_cache.cache")

DEFAULT_BUDGET = 0.25

if sys.version_info >= (3, 11):
    _timeout = asyncio.timeout
else:  # pragma: no cover - Python 3.10
    _timeout = None


# --- plan steps ------------------------------------------------------------------------


@dataclass(slots=True)
class Cmd:
    """One command: ``client.execute_command(*args)``. ``node="random"`` routes a
    keyless command (``FT.*``) to one primary of a cluster; ``node="primaries"`` sends it
    to every primary (one node when standalone) and replies a list, a server's error
    reply (``ResponseError``) standing in the list as a value."""

    args: tuple[Any, ...]
    node: str | None = None


@dataclass(slots=True)
class Pipe:
    """Several commands in one round trip (never a MULTI: cluster pipelines can't be).
    ``node="random"``: keyless commands (``FT.*``), all sent to one primary of a cluster
    (sync: one pipeline to it; async: sent to it concurrently)."""

    cmds: tuple[tuple[Any, ...], ...]
    node: str | None = None


@dataclass(slots=True)
class Script:
    """A Lua script from ``registry`` (a :class:`~._scripts.ScriptRegistry`)."""

    registry: Any
    name: str
    keys: Sequence[Any]
    args: Sequence[Any]


@dataclass(slots=True)
class Scan:
    """Reply: every key matching ``pattern`` (SCAN per primary, never KEYS)."""

    pattern: str


@dataclass(slots=True)
class Sleep:
    seconds: float


@dataclass(slots=True)
class Call:
    """Call a dependency that has a sync and an async form (an embedder, a judge model):
    the sync driver calls ``sync(*args)``, the async one awaits ``async_(*args)``. Not a
    server step: no breaker, no budget; an exception it raises is thrown into the plan."""

    sync: Callable[..., Any]
    async_: Callable[..., Any]
    args: tuple[Any, ...] = ()


@dataclass(slots=True)
class Tally:
    """Count outcomes (no I/O): metrics and the shared stats (``stats_key`` overrides
    the cache's hash, e.g. one per tool).

    The savings ledger: ``tokens_saved`` / ``saved_usd`` (LLM hits: the cached
    response's tokens and price), ``saved_ms`` (tool hits), ``calls_saved`` (embedding
    hits); ``provider_*``: what the provider's own prompt cache did on a fresh response
    (its input tokens, cache reads and writes, and the saving priced). ``model`` /
    ``tool`` label the figures (bounded per tier, see :meth:`Telemetry.label`); ``more``:
    further tallies counted with this one (a batch spanning several models)."""

    hits: int = 0
    misses: int = 0
    saved_usd: float = 0.0
    saved_ms: int = 0
    stored_bytes: int = 0
    stats_key: str | None = None
    fields: dict[str, int | float] | None = None  # more shared-stats counters
    tokens_saved: int = 0
    calls_saved: int = 0
    model: str | None = None
    tool: str | None = None
    provider_input_tokens: int = 0
    provider_read_tokens: int = 0
    provider_write_tokens: int = 0
    provider_saved_usd: float = 0.0  # net: read saving minus write premium
    provider_premium_usd: float = 0.0  # the write premium alone (>= 0)
    more: tuple[Tally, ...] = ()
    bypassed: int = 0  # lookups not made on purpose (skip, refresh, unscoped, uncacheable)


#: Yielded by a plan that skips the cache on purpose (``cache_control`` skip or refresh,
#: no scope value, an uncacheable call): counted as ``bypass``, the span says so.
BYPASS = Tally(bypassed=1)


class _Compute:
    __slots__ = ()

    def __repr__(self) -> str:
        return "COMPUTE"


#: Yielded by a plan: run the user's function now; its result (or exception) comes back.
COMPUTE = _Compute()

Step = Cmd | Pipe | Script | Scan | Sleep | Call | Tally | _Compute
Plan = Generator[Any, Any, Any]


class CacheUnavailable(Exception):
    """Thrown into a plan when a step could not run (breaker open, server error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- error classification ----------------------------------------------------------------

_TRANSIENT: tuple[type[BaseException], ...] = (
    VConnectionError,
    VTimeoutError,
    OSError,
    asyncio.TimeoutError,
    TimeoutError,
)
_PERMANENT_PREFIXES = (
    ("NOPERM", "acl"),
    ("OOM", "oom"),
    ("WRONGTYPE", "wrongtype"),
    ("unknown command", "unknown_command"),
    ("ERR unknown command", "unknown_command"),
    ("NOSCRIPT", "noscript"),
    ("CROSSSLOT", "routing"),
    ("MOVED", "routing"),
    ("ASK", "routing"),
    ("CLUSTERDOWN", "cluster_down"),
    ("TRYAGAIN", "cluster_down"),
    ("BUSY", "busy"),
    ("LOADING", "loading"),
)


def classify(exc: BaseException) -> tuple[str, bool]:
    """``(reason, transient)`` for an exception raised while talking to the server."""
    if isinstance(exc, (VTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return "timeout", True
    if isinstance(exc, _TRANSIENT):
        return "unavailable", True
    if isinstance(exc, RecursionError):  # a client reconnect loop on a dead server
        return "client_recursion", True
    if isinstance(exc, NoPermissionError):
        return "acl", False
    if isinstance(exc, OutOfMemoryError):
        return "oom", False
    if isinstance(exc, (BusyLoadingError, ReadOnlyError)):
        return "loading" if isinstance(exc, BusyLoadingError) else "readonly", True
    if isinstance(exc, ResponseError):
        text = str(exc)
        if "No permissions" in text or "NOPERM" in text:
            return "acl", False
        lowered = text.lower()
        # before the prefixes: valkey-py strips "ERR ", so this starts "unknown command"
        if "unknown command" in lowered and "ft." in lowered:
            return "no_search_module", False
        for prefix, reason in _PERMANENT_PREFIXES:
            if text.startswith(prefix) or text.startswith("ERR " + prefix):
                return reason, reason in ("busy", "loading", "cluster_down")
        if "index" in lowered and ("not found" in lowered or "no such" in lowered):
            return "no_index", False
        return "response_error", False
    if isinstance(exc, ValkeyClusterException):
        return "routing", False
    if isinstance(exc, ValkeyError):
        return "client_error", False
    return "bug", False


# --- the breaker ---------------------------------------------------------------------


class Breaker:
    """Closed, open until a deadline, or half-open with one probe in flight.

    ``first_cooldown`` doubles on every failed probe up to ``max_cooldown`` and resets
    when the server answers. Thread-safe; the async driver uses the same object (its
    operations never block).
    """

    def __init__(
        self, name: str = "", first_cooldown: float = 0.25, max_cooldown: float = 1.0
    ) -> None:
        if first_cooldown < 0 or max_cooldown < first_cooldown:
            raise ValueError("cooldowns must satisfy 0 <= first_cooldown <= max_cooldown")
        self.name = name
        self.first_cooldown = first_cooldown
        self.max_cooldown = max_cooldown
        self._cooldown = first_cooldown
        self._open_until = 0.0
        self._down = False  # an outage is in progress (for the once-per-outage warning)
        self._probing = False
        self._probe_started = 0.0
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return not self._down

    def allow(self) -> bool:
        """May a step go to the server now? (Claims the probe when half-open.)"""
        if not self._down:
            return True
        now = time.monotonic()
        with self._lock:
            if not self._down:
                return True
            if now < self._open_until:
                return False
            # a probe that never reported (its task was cancelled) frees the slot
            if self._probing and now - self._probe_started < max(self._cooldown, 1.0):
                return False
            self._probing = True
            self._probe_started = now
            return True

    def success(self) -> None:
        if self._down:
            with self._lock:
                was_down = self._down
                self._down = False
                self._probing = False
                self._cooldown = self.first_cooldown
            if was_down:
                logger.info("Valkey %s answers again: caching resumed", self.name)

    def failure(self, exc: BaseException, who: str = "cache", slow: bool = True) -> None:
        """A step failed. ``slow``: it cost its caller the budget (a timeout), so the
        next probe waits longer; a fast failure (connection refused) costs nothing and
        is retried after ``first_cooldown`` again."""
        now = time.monotonic()
        with self._lock:
            first = not self._down
            if first:
                self._cooldown = self.first_cooldown
            elif self._probing and slow:
                self._cooldown = min(self._cooldown * 2, self.max_cooldown)
            elif not slow:
                self._cooldown = self.first_cooldown
            self._down = True
            self._probing = False
            self._open_until = now + self._cooldown
        if first:
            logger.warning(
                "%s failed, continuing without the cache: Valkey %s unavailable (%s: %s); "
                "every cache on it fails open until it answers (next try in %.2fs)",
                who, self.name, type(exc).__name__, str(exc) or "no reply within the budget",
                self._cooldown,
            )  # fmt: skip

    def reset(self) -> None:
        with self._lock:
            self._down = False
            self._probing = False
            self._cooldown = self.first_cooldown
            self._open_until = 0.0


_breakers: dict[str, Breaker] = {}
_breakers_lock = threading.Lock()


def server_name(client: Any) -> str:
    """A stable name of the server (or cluster) a client talks to."""
    try:
        if is_cluster(client):
            nodes = getattr(client, "startup_nodes", None) or getattr(
                client.nodes_manager, "startup_nodes", {}
            )
            names = nodes.keys() if isinstance(nodes, dict) else [n.name for n in nodes]
            return "cluster:" + ",".join(sorted(names))
        kw = client.connection_pool.connection_kwargs
        if kw.get("path"):
            return f"unix:{kw['path']}"
        return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
    except Exception:  # an unusual client: one breaker of its own
        return f"client:{id(client)}"


def breaker_for(client: Any) -> Breaker:
    """The process-wide breaker of the server ``client`` talks to."""
    name = server_name(client)
    found = _breakers.get(name)
    if found is None:
        with _breakers_lock:
            found = _breakers.setdefault(name, Breaker(name))
    return found


# --- the executor ----------------------------------------------------------------------

_UNSET: Any = object()


class Executor:
    """Runs cache plans on one client, fail-open.

    Args:
        client: a sync or async valkey-py client (standalone or cluster).
        telemetry: the owning cache's spans and metrics.
        stats: the owning cache's shared stats (``None``: metrics only).
        timeout: the latency budget of one I/O step in seconds (async: enforced by a
            deadline; sync: by the client's socket timeout).
        breaker: defaults to the process-wide breaker of the client's server.
    """

    def __init__(
        self,
        client: Any,
        telemetry: Telemetry,
        stats: SharedStats | None = None,
        *,
        timeout: float = DEFAULT_BUDGET,
        breaker: Breaker | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be a positive number of seconds")
        self.client = client
        self.is_async = is_async_client(client)
        self.cluster = is_cluster(client)
        self.telemetry = telemetry
        self.stats = stats
        self.timeout = timeout
        self.breaker = breaker or breaker_for(client)
        self.wire: Any = wire_for(client)  # the lean command path (standalone clients)
        self._logged: set[str] = set()  # reasons logged loudly already (once each)
        if not self.is_async:
            self._warn_unbounded(client)

    def _warn_unbounded(self, client: Any) -> None:
        try:
            kw = (
                client.get_default_node().valkey_connection.connection_pool.connection_kwargs
                if self.cluster
                else client.connection_pool.connection_kwargs
            )
        except Exception:
            return
        if kw.get("socket_timeout") is None:
            logger.warning(
                "%s cache: this sync client has no socket_timeout, so a stalled server holds "
                "each cache call until the OS gives up; build it with "
                "langgraph_valkey_cache.cache_client_from_url or pass socket_timeout=",
                self.telemetry.tier,
            )

    # -- shared bookkeeping (no I/O) ----------------------------------------------------

    def tally(self, t: Tally) -> None:
        """The one place a plan's counts reach the metrics and the shared stats."""
        tel = self.telemetry
        if t.hits:
            tel.result("hit", t.hits)
        if t.misses:
            tel.result("miss", t.misses)
        if t.bypassed:
            tel.result("bypass", t.bypassed)
        if t.stored_bytes:
            tel.stored(t.stored_bytes)
        model = tel.label("model", t.model) if t.model else None
        if t.saved_usd or t.tokens_saved or t.saved_ms or t.calls_saved:
            tel.savings(t, model, tel.label("tool", t.tool) if t.tool else None)
        if t.provider_input_tokens or t.provider_read_tokens or t.provider_write_tokens:
            tel.provider_cache(t, model)
        if self.stats is not None:
            # only the counters that moved: this runs on every hit
            f: dict[str, int | float] = {}
            if t.hits:
                f["hits"] = t.hits
            if t.misses:
                f["misses"] = t.misses
            if t.saved_usd:
                f["saved_usd"] = t.saved_usd
            if t.saved_ms:
                f["saved_ms"] = t.saved_ms
            if t.tokens_saved:
                f["tokens_saved"] = t.tokens_saved
            if t.calls_saved:
                f["calls_saved"] = t.calls_saved
            if t.provider_input_tokens:
                f["provider.input_tokens"] = t.provider_input_tokens
                f["provider.read_tokens"] = t.provider_read_tokens
                f["provider.write_tokens"] = t.provider_write_tokens
                f["provider.saved_usd"] = t.provider_saved_usd
            if model is not None and f:
                by = f"model.{model}."
                if t.hits:
                    f[by + "hits"] = t.hits
                    f[by + "tokens_saved"] = t.tokens_saved
                    f[by + "saved_usd"] = t.saved_usd
                if t.provider_input_tokens:
                    f[by + "provider.read_tokens"] = t.provider_read_tokens
                    f[by + "provider.saved_usd"] = t.provider_saved_usd
            if t.fields:
                f.update(t.fields)
            if f:
                self.stats.record(t.stats_key, **f)
        for more in t.more:
            self.tally(more)

    def _failed_step(self, op: str, exc: BaseException) -> CacheUnavailable:
        reason, transient = classify(exc)
        if transient:
            self.breaker.failure(exc, f"{self.telemetry.tier} cache {op}", reason == "timeout")
        else:
            self._log_once(op, reason, exc, trace=False)
        self._count_error(op, reason)
        err = CacheUnavailable(reason)
        err.__cause__ = exc
        return err

    def _count_error(self, op: str, reason: str) -> None:
        self.telemetry.error(op, reason)
        if self.stats is not None:
            self.stats.record(None, errors=1, **{f"errors.{reason}": 1})

    def _log_once(self, op: str, reason: str, exc: BaseException, *, trace: bool) -> None:
        if reason in self._logged:
            logger.debug("%s cache %s failed again (%s): %s", self.telemetry.tier, op, reason, exc)
            return
        self._logged.add(reason)
        logger.error(
            "%s cache %s failed (%s), continuing without the cache: %s: %s",
            self.telemetry.tier, op, reason, type(exc).__name__, exc,
            exc_info=exc if trace else None,
        )  # fmt: skip

    def _recoverable(
        self,
        exc: BaseException,
        user_exc: BaseException | None,
        strict: bool,
        op: str,
        lookups: int,
    ) -> bool:
        """Should a plan that raised ``exc`` fail open? (Never the user's own exception,
        a strict plan's, or a ``BaseException`` such as cancellation.)"""
        if strict or exc is user_exc or not isinstance(exc, Exception):
            return False
        self._failed_run(op, exc, lookups)
        return True

    def _failed_run(self, op: str, exc: BaseException, lookups: int) -> None:
        """The plan raised: a miss (``lookups``) and, for our own bugs, a loud log."""
        if not isinstance(exc, CacheUnavailable):
            self._log_once(op, "bug", exc, trace=True)
            self._count_error(op, "bug")
        if lookups:
            self.tally(Tally(misses=lookups))

    # -- the one operation loop (no I/O): both drivers run it ---------------------------

    def _operation(
        self,
        plan: Plan,
        op: str,
        default: Any,
        lookups: int,
        computes: bool,
        fallback: Callable[[Any], Any] | None,
        strict: bool,
    ) -> Generator[Any, Any, Any]:
        """Drive ``plan`` and own everything but I/O: tallies, the breaker, error
        classification, the span and the fail-open outcome. Yields only the steps a
        driver must perform (I/O, ``Sleep``, ``Call``, ``COMPUTE``) and receives their
        result, or their exception thrown in."""
        tel = self.telemetry
        span = tel.start(op)
        start = time.perf_counter()
        breaker = self.breaker
        reply: Any = None
        error: BaseException | None = None
        computed: Any = _UNSET
        user_exc: BaseException | None = None
        hits = misses = bypassed = 0  # for the span's outcome
        failed: str | None = None  # why a step or the plan failed open
        try:
            while True:
                try:
                    step = plan.send(reply) if error is None else plan.throw(error)
                except StopIteration as stop:
                    return stop.value
                reply = error = None
                t = type(step)
                if t is Tally:
                    self.tally(step)
                    hits += step.hits
                    misses += step.misses
                    bypassed += step.bypassed
                    for more in step.more:
                        hits += more.hits
                        misses += more.misses
                elif t is _Compute:
                    try:
                        reply = computed = yield step
                    except BaseException as exc:
                        error = user_exc = exc
                elif t is Sleep:
                    yield step
                elif t is Call:
                    try:
                        reply = yield step
                    except Exception as exc:
                        error = exc
                elif strict:
                    reply = yield step
                    breaker.success()
                elif not breaker.allow():
                    error = CacheUnavailable("breaker_open")
                    failed = failed or "breaker_open"
                else:
                    try:
                        reply = yield step
                    except Exception as exc:
                        error = self._failed_step(op, exc)
                        failed = error.reason
                    else:
                        breaker.success()
        except BaseException as exc:
            if not self._recoverable(exc, user_exc, strict, op, lookups):
                raise
            misses += lookups
            failed = exc.reason if isinstance(exc, CacheUnavailable) else "bug"
            if not computes:
                return default
            if computed is _UNSET:
                computed = yield COMPUTE
            return fallback(computed) if fallback else computed
        finally:
            plan.close()
            tel.finish(op, start, span, outcome=(hits, misses, bypassed, failed))

    # -- sync -------------------------------------------------------------------------------

    def _on_wire(self, step: Any, **budget: float) -> Any:
        """A ``Cmd``, ``Pipe`` or ``Script`` on the lean path of a standalone client: the
        reply (``Wire``) or an awaitable of it (``AsyncWire``, which then bounds the step
        by ``budget=`` itself), so both drivers share it."""
        wire = self.wire
        t = type(step)
        if t is Cmd:
            if step.node == "primaries":  # the one primary: its reply or error, in a list
                return wire.pipeline((step.args,), raise_on_error=False, **budget)
            return wire.call(step.args, **budget)
        if t is Pipe:
            return wire.pipeline(step.cmds, **budget)
        if t is Script:
            script = step.registry.bind(self.client)[step.name]
            return wire.evalsha(script, step.keys, step.args, **budget)
        raise TypeError(f"unexpected plan step {step!r}")

    def _io(self, step: Any) -> Any:
        t = type(step)
        if self.wire is not None and t is not Scan:
            return self._on_wire(step)
        client = self.client
        if t is Cmd:
            if step.node == "primaries":
                nodes = client.get_primaries() if self.cluster else [None]
                out = []
                for node in nodes:
                    extra = {} if node is None else {"target_nodes": node}
                    try:
                        out.append(client.execute_command(*step.args, **extra))
                    except ResponseError as exc:
                        out.append(exc)
                return out
            if step.node is not None and self.cluster:
                return client.execute_command(*step.args, target_nodes=client.get_random_node())
            return client.execute_command(*step.args)
        if t is Pipe:
            if step.node is not None and self.cluster:  # one node's own client
                client = client.get_valkey_connection(client.get_random_node())
                node_wire = wire_for(client)
                if node_wire is not None:
                    return node_wire.pipeline(step.cmds)
            pipe = client.pipeline(transaction=False)
            for cmd in step.cmds:
                pipe.execute_command(*cmd)
            return pipe.execute()
        if t is Script:
            return step.registry.bind(client)[step.name](keys=step.keys, args=step.args)
        if t is Scan:
            return list(scan_keys(client, step.pattern))
        raise TypeError(f"unexpected plan step {step!r}")

    def run(
        self,
        plan: Plan,
        op: str,
        *,
        default: Any = None,
        lookups: int = 0,
        compute: Callable[[], Any] | None = None,
        fallback: Callable[[Any], Any] | None = None,
        strict: bool = False,
    ) -> Any:
        """Run ``plan``; on any failure of ours, return ``default`` (or, for a plan that
        computes, ``fallback(value)`` with ``compute()``'s value, computed at most once).
        ``strict=True`` (clear, invalidate, reading stats): errors raise instead."""
        steps = self._operation(plan, op, default, lookups, compute is not None, fallback, strict)
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as stop:
                return stop.value
            error = None
            try:
                t = type(step)
                if t is _Compute:
                    reply = compute()  # type: ignore[misc]
                elif t is Sleep:
                    time.sleep(step.seconds)
                    reply = None
                elif t is Call:
                    reply = step.sync(*step.args)
                else:
                    reply = self._io(step)
            except BaseException as exc:
                error = exc

    # -- async ------------------------------------------------------------------------------

    async def _aio(self, step: Any) -> Any:
        if not self.is_async:  # a sync client only: its I/O in a worker thread
            return await asyncio.to_thread(self._io, step)
        t = type(step)
        if self.wire is not None and t is not Scan:
            return await self._on_wire(step)
        client = self.client
        if t is Cmd and step.node == "primaries":
            if self.cluster:
                await client.initialize()
            nodes = client.get_primaries() if self.cluster else [None]
            out = []
            for node in nodes:
                extra = {} if node is None else {"target_nodes": node}
                try:
                    out.append(await client.execute_command(*step.args, **extra))
                except ResponseError as exc:
                    out.append(exc)
            return out
        if t is Cmd:
            if step.node is not None and self.cluster:
                # the async cluster client learns its nodes on its first command: before
                # that get_random_node() has none to pick (a no-op once initialised)
                await client.initialize()
                return await client.execute_command(
                    *step.args, target_nodes=client.get_random_node()
                )
            return await client.execute_command(*step.args)
        if t is Pipe:
            if step.node is not None and self.cluster:
                await client.initialize()
                node = client.get_random_node()
                return list(
                    await asyncio.gather(
                        *(client.execute_command(*cmd, target_nodes=node) for cmd in step.cmds)
                    )
                )
            pipe = client.pipeline(transaction=False)
            for cmd in step.cmds:
                pipe.execute_command(*cmd)
            return await pipe.execute()
        if t is Script:
            return await step.registry.bind(client)[step.name](keys=step.keys, args=step.args)
        if t is Scan:
            from langgraph_valkey_cache._client import ascan_keys

            return [k async for k in ascan_keys(client, step.pattern)]
        raise TypeError(f"unexpected plan step {step!r}")

    async def _abounded(self, step: Any) -> Any:
        if self.cluster and getattr(self.client, "_initialize", False):
            # an async cluster client's first use discovers the slots (several round
            # trips to every node): allowed up to a second, once, then the budget holds
            await asyncio.wait_for(self.client.initialize(), max(self.timeout, 1.0))
        if self.wire is not None and self.is_async and type(step) is not Scan:
            # the lean path keeps the budget with its loop's one deadline timer: a timer
            # per step here cost as much CPU as the round trip's syscalls
            return await self._on_wire(step, budget=self.timeout)
        if _timeout is not None:
            async with _timeout(self.timeout):
                return await self._aio(step)
        return await asyncio.wait_for(self._aio(step), self.timeout)  # pragma: no cover

    async def arun(
        self,
        plan: Plan,
        op: str,
        *,
        default: Any = None,
        lookups: int = 0,
        compute: Callable[[], Any] | None = None,
        fallback: Callable[[Any], Any] | None = None,
        strict: bool = False,
    ) -> Any:
        """Async :meth:`run`: ``compute`` is an async callable; every I/O step has a
        deadline of ``timeout`` seconds."""
        steps = self._operation(plan, op, default, lookups, compute is not None, fallback, strict)
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as stop:
                return stop.value
            error = None
            try:
                t = type(step)
                if t is _Compute:
                    reply = await compute()  # type: ignore[misc]
                elif t is Sleep:
                    await asyncio.sleep(step.seconds)
                    reply = None
                elif t is Call:
                    reply = await step.async_(*step.args)
                elif strict:
                    reply = await self._aio(step)
                else:
                    reply = await self._abounded(step)
            except BaseException as exc:
                error = exc

    # -- stats flush (rides on a normal call) ------------------------------------------------

    def _flush_plan(self, force: bool) -> Plan:
        stats = self.stats
        if stats is None:
            return None
        pending = stats.take(force)
        if not pending:
            return None
        try:
            # the first flush also names the cache in the registry (``stats`` finds it)
            yield Pipe(stats.flush_commands(pending))
        except CacheUnavailable:
            stats.restore(pending)
        else:
            stats.flushed()
        return None

    def maybe_flush(self, force: bool = False) -> None:
        if self.stats is not None and self.stats.due(force):
            self.run(self._flush_plan(force), "stats")

    async def amaybe_flush(self, force: bool = False) -> None:
        if self.stats is not None and self.stats.due(force):
            await self.arun(self._flush_plan(force), "stats")
