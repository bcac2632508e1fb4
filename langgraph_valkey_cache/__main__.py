"""``python -m langgraph_valkey_cache demo | threads | inspect THREAD``."""

from __future__ import annotations

import argparse
import os
import sys

from langchain_core.runnables import RunnableConfig


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
    args = parser.parse_args(argv)

    if args.command == "demo":
        from langgraph_valkey_cache.demo import run_demo

        run_demo(args.url)
        return 0
    if not args.url:
        parser.error(f"{args.command} needs --url or VALKEY_URL")
    from langgraph_valkey_cache.checkpoint import ValkeySaver

    with ValkeySaver.from_conn_string(args.url, prefix=args.prefix) as saver:
        if args.command == "threads":
            seen: set[str] = set()
            for tup in saver.list(None):
                thread = tup.config["configurable"]["thread_id"]
                if thread not in seen:
                    seen.add(thread)
                    print(thread)
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


if __name__ == "__main__":
    sys.exit(main())
