"""``python -m langgraph_valkey_cache demo | threads | inspect | diff | stats``.

Every command but ``demo`` takes ``--url``, ``--prefix`` and ``--json`` anywhere on the
line. Errors are one line on stderr with a non-zero exit code: 1 nothing found (unknown
thread or checkpoint), 2 usage (bad arguments, bad URL), 3 server unreachable or refusing
(``LGV_CLI_TRACEBACK=1`` re-raises an unexpected error with its traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig

from langgraph_valkey_cache._stats import DEFAULT_PREFIXES as _DEFAULT_PREFIXES

PROG = "python -m langgraph_valkey_cache"
EXIT_NOT_FOUND, EXIT_USAGE, EXIT_SERVER = 1, 2, 3
_DEFAULT_CP_PREFIX = "lgv:cp"
_DEFAULT_WIDTH = 100
# channels LangGraph keeps for its own bookkeeping (__start__, __pregel_tasks,
# branch:to:<node>, join:<a+b>:<node>): hidden from values and diffs unless --internal
_INTERNAL = re.compile(r"^(__|branch:|join:)")
_START, _TASKS = "__start__", "__pregel_tasks"
_CONTROL_WRITES = {"__interrupt__", "__error__", "__scheduled__", "__resume__"}


class CliError(Exception):
    """A failure reported as one line and an exit code, never a traceback."""

    def __init__(self, message: str, code: int = EXIT_NOT_FOUND) -> None:
        super().__init__(message)
        self.code = code


def _common(*, top: bool) -> argparse.ArgumentParser:
    """Options every command accepts, before or after its name.

    The subcommands' copies default to SUPPRESS: argparse copies a subparser's defaults
    over the values parsed before the subcommand, so only given options may land.
    """
    p = argparse.ArgumentParser(add_help=False)

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    p.add_argument(
        "--url",
        default=default(os.environ.get("VALKEY_URL")),
        help="server URL (default: $VALKEY_URL; the demo starts an embedded server if unset)",
    )
    p.add_argument(
        "--prefix",
        default=default(_DEFAULT_CP_PREFIX),
        help=f"checkpointer key prefix (default: {_DEFAULT_CP_PREFIX})",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print one JSON object or array instead of text",
    )
    return p


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, parents=[_common(top=True)])
    common = _common(top=False)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the agent demo", parents=[common])
    demo.add_argument(
        "--keep",
        action="store_true",
        help="leave the demo's data (and an embedded server) in place and print the "
        "commands that explore it",
    )
    sub.add_parser("threads", help="list checkpoint threads (SCAN only)", parents=[common])

    view = argparse.ArgumentParser(add_help=False)
    view.add_argument("--ns", default="", help="checkpoint namespace (default: the root graph)")
    view.add_argument(
        "--width",
        type=int,
        default=_DEFAULT_WIDTH,
        help=f"truncate each value to this many characters, 0: never (default {_DEFAULT_WIDTH})",
    )
    view.add_argument(
        "--internal",
        action="store_true",
        help="also show LangGraph's own channels (branch:to:*, __start__, __pregel_tasks)",
    )
    inspect = sub.add_parser(
        "inspect",
        help="a checkpoint's values, next nodes, pending writes and metadata",
        parents=[common, view],
    )
    inspect.add_argument("thread_id")
    inspect.add_argument(
        "checkpoint",
        nargs="?",
        default=None,
        help="an id, a unique id prefix, latest or latest~N (default: the latest, with history)",
    )
    inspect.add_argument(
        "--history",
        type=int,
        default=20,
        metavar="N",
        help="list the thread's N newest checkpoints, every namespace (default 20, 0: all)",
    )
    diff = sub.add_parser(
        "diff", help="channel values added, changed and removed from A to B", parents=[common, view]
    )
    diff.add_argument("thread_id")
    diff.add_argument("a", help="checkpoint: an id, a unique id prefix, latest or latest~N")
    diff.add_argument("b", help="checkpoint: an id, a unique id prefix, latest or latest~N")

    stats = sub.add_parser(
        "stats",
        help="hits, misses, hit rate and cost/time saved of every cache tier",
        parents=[common],
    )
    for tier, default in _DEFAULT_PREFIXES.items():
        stats.add_argument(
            f"--{tier}-prefix",
            default=None,
            help=f"read only this {tier} cache (default: every cache the server's registry "
            f"names, plus {default})",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except CliError as exc:
        _fail(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line for the user, never a traceback
        if os.environ.get("LGV_CLI_TRACEBACK"):
            raise
        message, code = _describe(exc, args.url)
        _fail(message)
        return code


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        if args.json:
            raise CliError("demo has no --json output", EXIT_USAGE)
        from langgraph_valkey_cache.demo import run_demo

        run_demo(args.url, keep=args.keep)
        return 0
    if not args.url:
        raise CliError(f"{args.command} needs --url or VALKEY_URL", EXIT_USAGE)
    _check_url(args.url)
    if args.command == "stats":
        # prefixes given: exactly those caches; none: every cache the registry names
        prefixes = {
            tier: [getattr(args, f"{tier}_prefix")]
            for tier in _DEFAULT_PREFIXES
            if getattr(args, f"{tier}_prefix")
        }
        return _print_stats(args.url, prefixes or None, as_json=args.json)
    from langgraph_valkey_cache.checkpoint import ValkeySaver

    with ValkeySaver.from_conn_string(args.url, prefix=args.prefix) as saver:
        if args.command == "threads":
            # names only: a SCAN of the thread markers, no checkpoint is read
            names = sorted(saver.thread_ids())
            _out(names, args.json, lambda: "\n".join(names))
        elif args.command == "inspect":
            _inspect(saver, args)
        else:
            _diff(saver, args)
    return 0


def _check_url(url: str) -> None:
    """Refuse a URL the client cannot parse before anything connects."""
    from langgraph_valkey_cache._client import client_from_url

    try:
        client_from_url(url).close()  # builds a pool; connects on the first command
    except (ValueError, TypeError) as exc:
        raise CliError(f"bad URL {_redact(url)!r}: {_first_line(exc)}", EXIT_USAGE) from exc


def _fail(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {message}\n")


def _describe(exc: Exception, url: str | None) -> tuple[str, int]:
    """A one-line message and exit code for an exception from the client or saver."""
    import valkey.exceptions as vexc

    where = _redact(url or "")
    if isinstance(exc, vexc.AuthenticationError | vexc.AuthorizationError):
        return f"{where} refused the connection: {_first_line(exc)}", EXIT_SERVER
    unreachable = (
        vexc.ConnectionError,
        vexc.TimeoutError,
        OSError,
        vexc.ValkeyClusterException,  # no node of a cluster URL answered
        vexc.ClusterDownError,
    )
    if isinstance(exc, unreachable):
        return f"cannot reach {where}: {_first_line(exc)}", EXIT_SERVER
    if isinstance(exc, vexc.ResponseError):
        return f"server error from {where}: {_first_line(exc)}", EXIT_SERVER
    if isinstance(exc, vexc.InvalidResponse):  # something else listens there
        return f"{where} does not answer like Valkey: {_first_line(exc)}", EXIT_SERVER
    if isinstance(exc, ValueError | TypeError):  # our own argument checks (ids, names)
        return f"{_first_line(exc)}", EXIT_USAGE
    return (
        f"{type(exc).__name__}: {_first_line(exc)} (LGV_CLI_TRACEBACK=1 shows the traceback)",
        EXIT_NOT_FOUND,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _redact(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _out(value: Any, as_json: bool, text: Callable[[], str]) -> None:
    if as_json:
        print(json.dumps(value, default=_json_default, ensure_ascii=False))
    else:
        rendered = text()
        if rendered:
            print(rendered)


# -- inspect ------------------------------------------------------------------------------


def _inspect(saver: Any, args: argparse.Namespace) -> None:
    tup = _resolve(saver, args.thread_id, args.ns, args.checkpoint or "latest")
    live = args.checkpoint is None
    report = _report(tup, args.internal, live=live)
    if args.checkpoint is None:
        config: RunnableConfig = {"configurable": {"thread_id": args.thread_id}}
        limit = args.history + 1 if args.history > 0 else None  # one more: are there more?
        history = [_summary(t) for t in saver.list(config, limit=limit)]
        report["history_truncated"] = limit is not None and len(history) == limit
        report["history"] = history[: args.history] if limit else history
    _out(report, args.json, lambda: _render_report(report, args.width))


def _report(tup: Any, internal: bool, *, live: bool) -> dict[str, Any]:
    conf = tup.config["configurable"]
    parent = (tup.parent_config or {}).get("configurable", {})
    values = tup.checkpoint["channel_values"]
    names = task_nodes(tup)
    writes = tup.pending_writes or []
    return {
        "thread_id": conf["thread_id"],
        "checkpoint_ns": conf.get("checkpoint_ns", ""),
        "checkpoint_id": conf["checkpoint_id"],
        "parent_checkpoint_id": parent.get("checkpoint_id"),
        "ts": tup.checkpoint.get("ts"),
        "step": tup.metadata.get("step"),
        "source": tup.metadata.get("source"),
        "next": next_nodes(tup, live=live),
        "values": {k: values[k] for k in sorted(values) if internal or not _INTERNAL.match(k)},
        "interrupts": [
            {"node": names.get(task), "value": getattr(i, "value", i)}
            for task, channel, value in writes
            if channel == "__interrupt__"
            for i in (value if isinstance(value, list | tuple) else [value])
        ],
        "pending_writes": [
            {"task_id": task, "node": names.get(task), "channel": channel, "value": value}
            for task, channel, value in writes
        ],
        "metadata": dict(tup.metadata),
    }


def _summary(tup: Any) -> dict[str, Any]:
    conf = tup.config["configurable"]
    return {
        "checkpoint_ns": conf.get("checkpoint_ns", ""),
        "checkpoint_id": conf["checkpoint_id"],
        "step": tup.metadata.get("step"),
        "source": tup.metadata.get("source"),
        "writes": len(tup.pending_writes or []),
    }


def _render_report(report: dict[str, Any], width: int) -> str:
    lines = [
        f"thread      {report['thread_id']}",
        f"namespace   {report['checkpoint_ns'] or '(root)'}",
        f"checkpoint  {report['checkpoint_id']}",
        f"parent      {report['parent_checkpoint_id'] or '-'}",
        f"created     {report['ts']}",
        f"step        {report['step']} ({report['source']})",
        f"next        {', '.join(report['next']) or '(none: the run is done)'}",
    ]
    for i in report["interrupts"]:
        lines.append(f"interrupt   {i['node'] or '?'}: {_short(i['value'], width)}")
    lines.append("values")
    lines += _render_mapping(report["values"], width) or ["  (none)"]
    lines.append("pending writes (task's node or id, channel, value)")
    writes = report["pending_writes"]
    who = [w["node"] or w["task_id"][:8] for w in writes]
    wpad = max(map(len, who), default=0)
    pad = max((len(w["channel"]) for w in writes), default=0)
    for name, w in zip(who, writes, strict=True):
        value = _short(w["value"], width)
        lines.append(f"  {name:<{wpad}}  {w['channel']:<{pad}}  {value}")
    if not writes:
        lines.append("  (none)")
    lines.append("metadata")
    lines += _render_mapping(report["metadata"], width) or ["  (none)"]
    if "history" in report:
        lines.append("history (newest first)")
        for h in report["history"]:
            lines.append(
                f"  {h['checkpoint_ns'] or '(root)'} {h['checkpoint_id']} step={h['step']} "
                f"source={h['source']} writes={h['writes']}"
            )
        if report["history_truncated"]:
            lines.append(f"  ... older ones left out (--history {len(report['history'])}; 0: all)")
    return "\n".join(lines)


def _render_mapping(values: Mapping[str, Any], width: int) -> list[str]:
    pad = max((len(k) for k in values), default=0)
    return [f"  {k:<{pad}}  {_short(v, width)}" for k, v in values.items()]


def next_nodes(tup: Any, *, live: bool = False) -> list[str]:
    """The nodes a checkpoint triggers, as ``StateSnapshot.next`` lists them.

    Read from the checkpoint alone (no graph): a pending ``Send`` runs its node, and a
    node runs when one of its triggers (``__start__``, ``branch:to:<node>``, a complete
    ``join:<a+b>:<node>`` barrier) has a version the node has not seen. ``live`` (the
    latest checkpoint, as LangGraph's ``get_state`` without an id) leaves out tasks that
    already finished in an interrupted step, found by recomputing LangGraph's task ids.
    """
    tasks = _tasks(tup)
    if live and tup.pending_writes:
        finished = _finished_tasks(tup.pending_writes)
        ids = _task_ids(tup, tasks)
        if ids is not None:
            tasks = [t for t, tid in zip(tasks, ids, strict=True) if tid not in finished]
    return [node for node, _, _ in tasks]


def task_nodes(tup: Any) -> dict[str, str]:
    """Task id -> node name for the tasks a checkpoint triggers (empty if unknown)."""
    tasks = _tasks(tup)
    ids = _task_ids(tup, tasks) or []
    return {tid: node for tid, (node, _, _) in zip(ids, tasks, strict=False)}


_Task = tuple[str, str, tuple[str, ...]]  # (node, kind, task id parts)


def _tasks(tup: Any) -> list[_Task]:
    """The tasks a checkpoint triggers, in LangGraph's order (Sends, then pulls)."""
    cp = tup.checkpoint
    values, versions, seen = cp["channel_values"], cp["channel_versions"], cp["versions_seen"]
    tasks: list[_Task] = []
    for idx, packet in enumerate(values.get(_TASKS) or []):
        node = getattr(packet, "node", None)
        if isinstance(node, str):
            tasks.append((node, "__pregel_push", (str(idx),)))
    triggers: dict[str, list[str]] = {}
    for channel in versions:
        node = _trigger_target(channel)
        if node is not None:
            triggers.setdefault(node, []).append(channel)
    for node in sorted(triggers):
        chans = sorted(triggers[node])
        node_seen = seen.get(node, {})
        if any(
            _available(c, values)
            and (node_seen.get(c) is None or _newer(versions[c], node_seen[c]))
            for c in chans
        ):
            tasks.append((node, "__pregel_pull", tuple(chans)))
    return tasks


def _trigger_target(channel: str) -> str | None:
    """The node a StateGraph trigger channel runs (node names cannot hold ':')."""
    if channel == _START:
        return _START
    if channel.startswith("branch:to:"):
        return channel.removeprefix("branch:to:")
    if channel.startswith("join:"):
        return channel.rsplit(":", 1)[1]
    return None


def _available(channel: str, values: Mapping[str, Any]) -> bool:
    if channel not in values:
        return False
    if channel.startswith("join:"):  # a barrier fires once every start has written
        starts = set(channel.split(":")[1].split("+"))
        return starts <= set(values[channel] or ())
    return True


def _newer(a: Any, b: Any) -> bool:
    try:
        return bool(a > b)
    except TypeError:  # mixed int/str versions from an old checkpoint
        return str(a) > str(b)


def _finished_tasks(writes: Iterable[tuple[str, str, Any]]) -> set[str]:
    """Ids of tasks that wrote output (an interrupt or an error is not a finish)."""
    return {task for task, channel, _ in writes if channel not in _CONTROL_WRITES}


def _task_ids(tup: Any, tasks: list[_Task]) -> list[str] | None:
    """LangGraph's ids for ``tasks`` (None when this langgraph computes them otherwise)."""
    import binascii

    try:
        from langgraph.pregel._algo import _uuid5_str, _xxhash_str
    except ImportError:
        return None
    cp = tup.checkpoint
    id_fn = _xxhash_str if cp.get("v", 1) > 1 else _uuid5_str
    cp_bytes = binascii.unhexlify(cp["id"].replace("-", ""))
    parent_ns = tup.config["configurable"].get("checkpoint_ns", "")
    step = str(tup.metadata.get("step", -1) + 1)
    return [
        id_fn(cp_bytes, f"{parent_ns}|{node}" if parent_ns else node, step, node, kind, *parts)
        for node, kind, parts in tasks
    ]


def _resolve(saver: Any, thread_id: str, ns: str, ref: str) -> Any:
    """The checkpoint ``ref`` names: an id, a unique id prefix, ``latest`` or ``latest~N``."""
    config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}}
    where = f"thread {thread_id!r}" + (f" namespace {ns!r}" if ns else "")
    back = re.fullmatch(r"latest(?:~(\d+))?", ref)
    if back:
        n = int(back.group(1) or 0)
        found = list(saver.list(config, limit=n + 1))
        if not found:
            raise CliError(f"no checkpoints for {where}")
        if len(found) <= n:
            raise CliError(f"{where} has only {len(found)} checkpoints, no {ref}")
        return found[n]
    try:
        exact = saver.get_tuple(
            {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": ref}}
        )
    except ValueError:  # not a whole id: try it as a prefix
        exact = None
    if exact is not None:
        return exact
    matches = [
        t for t in saver.list(config) if t.config["configurable"]["checkpoint_id"].startswith(ref)
    ]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CliError(f"{ref!r} matches {len(matches)} checkpoints of {where}", EXIT_USAGE)
    if saver.get_tuple(config) is None:
        raise CliError(f"no checkpoints for {where}")
    raise CliError(f"no checkpoint {ref!r} in {where}")


# -- diff ---------------------------------------------------------------------------------


def _diff(saver: Any, args: argparse.Namespace) -> None:
    a = _resolve(saver, args.thread_id, args.ns, args.a)
    b = _resolve(saver, args.thread_id, args.ns, args.b)
    report = diff_checkpoints(a, b, internal=args.internal)
    _out(report, args.json, lambda: _render_diff(report, args.width))


def diff_checkpoints(a: Any, b: Any, *, internal: bool = False) -> dict[str, Any]:
    """Channel values added, changed and removed from checkpoint ``a`` to ``b``.

    A list that grew by appending (a message list) is reported with only its new
    items under ``appended``.
    """
    va, vb = a.checkpoint["channel_values"], b.checkpoint["channel_values"]

    def shown(keys: Iterable[str]) -> list[str]:
        return sorted(k for k in keys if internal or not _INTERNAL.match(k))

    changed: dict[str, Any] = {}
    for k in shown(va.keys() & vb.keys()):
        before, after = va[k], vb[k]
        if _same(before, after):
            continue
        entry: dict[str, Any] = {"before": before, "after": after}
        if (
            isinstance(before, list)
            and isinstance(after, list)
            and len(after) > len(before)
            and _same(after[: len(before)], before)
        ):
            entry = {"appended": after[len(before) :]}
        changed[k] = entry
    return {
        "thread_id": b.config["configurable"]["thread_id"],
        "checkpoint_ns": b.config["configurable"].get("checkpoint_ns", ""),
        "a": {"checkpoint_id": a.config["configurable"]["checkpoint_id"], "step": _step(a)},
        "b": {"checkpoint_id": b.config["configurable"]["checkpoint_id"], "step": _step(b)},
        "added": {k: vb[k] for k in shown(vb.keys() - va.keys())},
        "removed": {k: va[k] for k in shown(va.keys() - vb.keys())},
        "changed": changed,
    }


def _step(tup: Any) -> Any:
    return tup.metadata.get("step")


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # a value whose __eq__ refuses (arrays): compare what it shows
        return repr(a) == repr(b)


def _render_diff(report: dict[str, Any], width: int) -> str:
    a, b = report["a"], report["b"]
    lines = [
        f"thread {report['thread_id']}: {a['checkpoint_id']} (step {a['step']}) -> "
        f"{b['checkpoint_id']} (step {b['step']})"
    ]
    names = [*report["added"], *report["removed"], *report["changed"]]
    pad = max(map(len, names), default=0)
    for k, v in report["added"].items():
        lines.append(f"+ {k:<{pad}}  {_short(v, width)}")
    for k, v in report["removed"].items():
        lines.append(f"- {k:<{pad}}  {_short(v, width)}")
    for k, v in report["changed"].items():
        if "appended" in v:
            new = v["appended"]
            what = f"+{len(new)} item(s): {_short(new, width, count=False)}"
        else:
            what = f"{_short(v['before'], width)} -> {_short(v['after'], width)}"
        lines.append(f"~ {k:<{pad}}  {what}")
    if len(lines) == 1:
        lines.append("(no channel changed)")
    return "\n".join(lines)


# -- values as text and JSON ----------------------------------------------------------------


def _short(value: Any, width: int, *, count: bool = True) -> str:
    text = _text(value, count=count)
    if width <= 0 or len(text) <= width:
        return text
    if isinstance(value, list | tuple) and len(value) > 1:
        # a long list (a conversation): its newest items are the ones worth the room
        head = f"[{len(value)}] …, " if count else "[…, "
        items: list[str] = []
        for item in reversed(value):
            rendered = _text(item)
            if items and len(head) + len(", ".join([rendered, *items])) > width:
                break
            items.insert(0, rendered)
        text = head + ", ".join(items) + ("" if count else "]")
        if len(text) <= width:
            return text
    return text[: max(width - 1, 1)] + "…"


def _text(value: Any, *, count: bool = True) -> str:
    """A compact one-line rendering: messages as ``type: content``."""
    from langchain_core.messages import BaseMessage

    if isinstance(value, BaseMessage):
        text = f"{value.type}: {value.content!r}"
        calls = getattr(value, "tool_calls", None)
        if calls:
            text += " calls " + ", ".join(f"{c['name']}({c['args']})" for c in calls)
        return text
    if isinstance(value, list | tuple):
        inner = ", ".join(_text(v) for v in value)
        return f"[{len(value)}] {inner}" if count and len(value) > 1 else f"[{inner}]"
    return " ".join(repr(value).split())


def _json_default(value: Any) -> Any:
    """JSON for what the serde revived: models, dataclasses, Send, bytes, sets."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "node") and hasattr(value, "arg"):  # langgraph.types.Send
        return {"send": value.node, "arg": value.arg}
    return repr(value)


# -- stats ------------------------------------------------------------------------------------


def _print_stats(url: str, prefixes: dict[str, list[str]] | None, *, as_json: bool) -> int:
    """The savings ledger of every cache (``prefixes``: tier -> prefixes; ``None``: the
    caches the server's registry names plus the default prefixes). ``--json``: one
    object, a key per tier and ``provider_prompt_cache`` (see ``_stats.report``)."""
    from langgraph_valkey_cache._client import client_from_url
    from langgraph_valkey_cache._stats import CacheStats, discover, read_tiers, report

    client = client_from_url(url)
    try:
        if prefixes is None:
            prefixes = discover(client)
        found = read_tiers(client, prefixes)
    finally:
        client.close()
    if as_json:
        print(json.dumps(report(found)))
        return 0
    if not found:
        print("no cache stats under " + ", ".join(p for ps in prefixes.values() for p in ps))
        return 0
    print(f"{'tier':<10} {'prefix':<16} {'hits':>9} {'misses':>9} {'hit rate':>8} "
          f"{'saved USD':>10} {'tokens':>10} {'saved time':>10}")  # fmt: skip
    total = CacheStats()
    for tier, prefix, st in found:
        total += st
        saved_time = f"{st.saved_ms / 1000:.1f}s" if st.saved_ms else "-"
        print(
            f"{tier:<10} {prefix:<16} {st.hits:>9} {st.misses:>9} {st.hit_rate:>8.1%} "
            f"{st.saved_usd:>10.4f} {st.tokens_saved:>10} {saved_time:>10}"
        )
    pc = total.provider_prompt_cache
    if pc["input_tokens"]:
        print(
            f"provider prompt cache: {pc['read_tokens']} of {pc['input_tokens']} input tokens "
            f"read ({pc['read_share']:.1%}), {pc['write_tokens']} written, "
            f"saved {pc['saved_usd']:.4f} USD"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
