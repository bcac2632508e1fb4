"""``python -m langgraph_valkey_cache demo | threads | inspect THREAD | stats``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from langchain_core.runnables import RunnableConfig

from langgraph_valkey_cache._stats import DEFAULT_PREFIXES as _DEFAULT_PREFIXES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m langgraph_valkey_cache")
    parser.add_argument(
        "--url",
        default=os.environ.get("VALKEY_URL"),
        help="server URL (default: $VALKEY_URL; the demo starts an embedded server if unset)",
    )
    parser.add_argument("--prefix", default="lgv:cp", help="checkpointer key prefix")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the agent demo")
    sub.add_parser("threads", help="list checkpoint threads")
    inspect = sub.add_parser("inspect", help="print a thread's checkpoint history")
    inspect.add_argument("thread_id")
    stats = sub.add_parser(
        "stats", help="hits, misses, hit rate and cost/time saved of every cache tier"
    )
    for tier, default in _DEFAULT_PREFIXES.items():
        stats.add_argument(
            f"--{tier}-prefix", default=default, help=f"{tier} cache key prefix ({default})"
        )
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    if args.command == "demo":
        from langgraph_valkey_cache.demo import run_demo

        run_demo(args.url)
        return 0
    if not args.url:
        parser.error(f"{args.command} needs --url or VALKEY_URL")
    if args.command == "stats":
        prefixes = {tier: getattr(args, f"{tier}_prefix") for tier in _DEFAULT_PREFIXES}
        return _print_stats(args.url, prefixes, as_json=args.json)
    from langgraph_valkey_cache.checkpoint import ValkeySaver

    with ValkeySaver.from_conn_string(args.url, prefix=args.prefix) as saver:
        if args.command == "threads":
            # names only: a SCAN of the thread markers, no checkpoint is read
            for name in sorted(saver.thread_ids()):
                print(name)
        else:
            config: RunnableConfig = {"configurable": {"thread_id": args.thread_id}}
            for tup in saver.list(config):
                conf = tup.config["configurable"]
                print(
                    f"{conf['checkpoint_ns'] or '(root)'} {conf['checkpoint_id']} "
                    f"step={tup.metadata.get('step')} source={tup.metadata.get('source')} "
                    f"writes={len(tup.pending_writes or [])}"
                )
    return 0


def _print_stats(url: str, prefixes: dict[str, str], *, as_json: bool) -> int:
    from langgraph_valkey_cache._client import client_from_url
    from langgraph_valkey_cache._stats import read_tiers

    client = client_from_url(url)
    try:
        found = read_tiers(client, prefixes)
    finally:
        client.close()
    if as_json:
        print(json.dumps({tier: {"prefix": p, **st.as_dict()} for tier, p, st in found}))
        return 0
    if not found:
        print("no cache stats under " + ", ".join(prefixes.values()))
        return 0
    print(f"{'tier':<9} {'prefix':<16} {'hits':>9} {'misses':>9} {'hit rate':>8} "
          f"{'saved USD':>10} {'saved time':>10}")  # fmt: skip
    for tier, prefix, st in found:
        saved_time = f"{st.saved_ms / 1000:.1f}s" if st.saved_ms else "-"
        print(
            f"{tier:<9} {prefix:<16} {st.hits:>9} {st.misses:>9} {st.hit_rate:>8.1%} "
            f"{st.saved_usd:>10.4f} {saved_time:>10}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
