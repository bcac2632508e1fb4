"""Run LangGraph's own test suite against our saver, store and node cache.

LangGraph's tests (shipped in the ``langgraph`` sdist) take their persistence from five
fixtures in ``tests/conftest.py``: ``sync_checkpointer``, ``async_checkpointer``,
``sync_store``, ``async_store`` and ``cache``. This script:

1. downloads the sdist of the *installed* langgraph version once (``pip download
   --no-binary :all: --no-deps``) into ``.cache/langgraph-suite/`` and extracts only
   ``tests/`` and ``pyproject.toml`` (so the installed langgraph is what runs);
2. rewrites their ``conftest.py`` without those five fixtures (and the imports only
   they used: postgres, sqlite, redis), everything else untouched;
3. runs pytest with this module as a plugin (``-p langgraph_suite``), which defines the
   five fixtures on ``ValkeySaver``/``AsyncValkeySaver``, ``ValkeyStore``/
   ``AsyncValkeyStore`` and ``ValkeyNodeCache`` (one param each, so no other
   implementation runs) on a ``valkey-server`` from ``EmbeddedValkey``, and deselects
   every test that takes none of them;
4. does so with ``LANGGRAPH_STRICT_MSGPACK`` unset and set to ``true``, and prints
   passed/failed per mode.

One thing of the environment is made to match LangGraph's test environment, which has
no ``langchain`` package: langchain-core would add its version to model metadata that
``test_weather_subgraph`` compares (see ``pytest_configure``).

Our savers keep their default serde in both modes (LangGraph's conftest swaps in
``JsonPlusSerializer(allowed_msgpack_modules=None)`` for its own savers in strict mode,
which is what ``JsonPlusSerializer()`` is when the variable is set).

Usage::

    python bench/langgraph_suite.py                  # both modes
    python bench/langgraph_suite.py --mode true -- -k interrupt -x
    python bench/langgraph_suite.py --target cluster # a 3-primary cluster instead
    python bench/langgraph_suite.py --target memory  # LangGraph's in-memory reference
    python bench/langgraph_suite.py --fetch          # download only (CI: before the netns)

Exit status 0 when no test failed or errored in any mode. Needs the ``test`` extra
(pytest-mock, syrupy, anyio come with it).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import secrets
import subprocess
import sys
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO / ".cache" / "langgraph-suite"
# LangGraph's persistence fixtures, replaced by ours
REPLACED = ("sync_checkpointer", "async_checkpointer", "sync_store", "async_store", "cache")
MODES = {"unset": None, "true": "true"}
REPORT_ENV = "LVC_SUITE_REPORT"
CLUSTER_ENV = "LVC_SUITE_CLUSTER"
IMPL_ENV = "LVC_SUITE_IMPL"


# --- the sdist -------------------------------------------------------------------------


def ensure_suite(version: str, cache_dir: Path = CACHE_DIR) -> Path:
    """Root of langgraph ``version``'s test tree (tests/ + pyproject.toml), cached."""
    root = cache_dir / f"langgraph-{version}"
    sdist = cache_dir / f"langgraph-{version}.tar.gz"
    if not sdist.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
        spec = [f"langgraph=={version}", "--no-binary", ":all:", "-d", str(cache_dir)]
        if subprocess.run([*pip, *spec]).returncode != 0:
            raise SystemExit(
                f"could not download the langgraph {version} sdist; run "
                "`python bench/langgraph_suite.py --fetch` where PyPI is reachable "
                f"(it is kept in {cache_dir})"
            )
    if not (root / "tests").is_dir():
        with tarfile.open(sdist) as tar:
            top = f"langgraph-{version}/"
            members = [
                m
                for m in tar.getmembers()
                if m.name.startswith(top + "tests/") or m.name == top + "pyproject.toml"
            ]
            tar.extractall(cache_dir, members=members, filter="data")
    # always regenerated from the pristine copy in the tarball
    (root / "tests" / "conftest.py").write_text(patched_conftest(original_conftest(sdist)))
    return root


def original_conftest(sdist: Path) -> str:
    with tarfile.open(sdist) as tar:
        member = tar.extractfile(f"{sdist.name.removesuffix('.tar.gz')}/tests/conftest.py")
        assert member is not None
        return member.read().decode()


def _bound_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    return [(a.asname or a.name).split(".")[0] for a in node.names]


def patched_conftest(source: str) -> str:
    """LangGraph's conftest without the fixtures in REPLACED and the imports only they used."""
    tree = ast.parse(source)
    defs = {
        n.name
        for n in tree.body
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in REPLACED
    }
    if missing := set(REPLACED) - defs:
        raise RuntimeError(f"langgraph's conftest.py no longer defines {sorted(missing)}")
    body = [
        n
        for n in tree.body
        if not (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name in REPLACED)
    ]
    used = {
        sub.id
        for n in body
        if not isinstance(n, (ast.Import, ast.ImportFrom))
        for sub in ast.walk(n)
        if isinstance(sub, ast.Name)
    }
    kept: list[ast.stmt] = []
    for n in body:
        if isinstance(n, ast.ImportFrom) and n.module == "__future__":
            kept.append(n)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            n.names = [a for a, b in zip(n.names, _bound_names(n), strict=True) if b in used]
            if n.names:
                kept.append(n)
        else:
            kept.append(n)
    header = (
        "# Generated by langgraph-valkey-cache's bench/langgraph_suite.py from langgraph's\n"
        f"# conftest.py: {', '.join(REPLACED)} come from the langgraph_suite plugin.\n"
    )
    return header + ast.unparse(ast.Module(body=kept, type_ignores=[])) + "\n"


def suite_files(root: Path) -> list[str]:
    """Test files that mention one of the replaced fixtures (others are not collected)."""
    word = re.compile(r"\b(" + "|".join(REPLACED) + r")\b")
    return sorted(
        str(p.relative_to(root))
        for p in (root / "tests").glob("test_*.py")
        if word.search(p.read_text())
    )


# --- the pytest plugin (loaded in the child with -p langgraph_suite) ---------------------


def _prefix(kind: str) -> str:
    # not uuid4: their deterministic_uuids fixture patches it and counts the calls
    return f"lgsuite:{kind}:{secrets.token_hex(6)}"


def pytest_configure(config: pytest.Config) -> None:
    # langchain-core adds `langchain`'s version to every model's metadata when that
    # package is installed (our test extra has it, LangGraph's test environment does
    # not); test_weather_subgraph compares that metadata, so answer as their env would
    from langchain_core.language_models import base

    if hasattr(base, "_get_langchain_version"):
        setattr(base, "_get_langchain_version", lambda: None)  # noqa: B010  (typed lru_cache)


# --reference: the same selection on LangGraph's in-memory implementations, built as
# their conftest builds them (param "memory" also turns on their snapshot assertions)
REFERENCE = os.environ.get(IMPL_ENV) == "memory"
SYNC_ID, ASYNC_ID = ("memory", "memory") if REFERENCE else ("valkey", "valkey_aio")


def _strict_env() -> bool:
    return os.environ.get("LANGGRAPH_STRICT_MSGPACK", "false").lower() in ("1", "true", "yes")


@contextmanager
def _memory_saver() -> Iterator[Any]:
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
    from tests.memory_assert import MemorySaverAssertImmutable  # their test helper

    if _strict_env():
        yield MemorySaverAssertImmutable(serde=JsonPlusSerializer(allowed_msgpack_modules=None))
    else:
        yield MemorySaverAssertImmutable()


@pytest.fixture(scope="session")
def lvc_url() -> Iterator[str]:
    from langgraph_valkey_cache.embedded import EmbeddedCluster, EmbeddedValkey

    server = EmbeddedCluster(3) if os.environ.get(CLUSTER_ENV) else EmbeddedValkey()
    with server:
        yield server.url


@pytest.fixture(params=[SYNC_ID])
def sync_checkpointer(request: pytest.FixtureRequest) -> Iterator[Any]:
    if REFERENCE:
        with _memory_saver() as memory:
            yield memory
        return
    from langgraph_valkey_cache import ValkeySaver

    url = request.getfixturevalue("lvc_url")
    with ValkeySaver.from_conn_string(url, prefix=_prefix("cp")) as saver:
        saver.setup()
        yield saver


@pytest.fixture(params=[ASYNC_ID])
async def async_checkpointer(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if REFERENCE:
        with _memory_saver() as memory:
            yield memory
        return
    from langgraph_valkey_cache import AsyncValkeySaver

    url = request.getfixturevalue("lvc_url")
    async with AsyncValkeySaver.from_conn_string(url, prefix=_prefix("cp")) as saver:
        await saver.asetup()
        yield saver


@pytest.fixture(params=[SYNC_ID])
def sync_store(request: pytest.FixtureRequest) -> Iterator[Any]:
    if REFERENCE:
        from langgraph.store.memory import InMemoryStore

        yield InMemoryStore()
        return
    from langgraph_valkey_cache import ValkeyStore

    url = request.getfixturevalue("lvc_url")
    with ValkeyStore.from_conn_string(url, prefix=_prefix("store")) as store:
        store.setup()
        yield store


@pytest.fixture(params=[ASYNC_ID])
async def async_store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if REFERENCE:
        from langgraph.store.memory import InMemoryStore

        yield InMemoryStore()
        return
    from langgraph_valkey_cache import AsyncValkeyStore

    url = request.getfixturevalue("lvc_url")
    async with AsyncValkeyStore.from_conn_string(url, prefix=_prefix("store")) as store:
        await store.asetup()
        yield store


@pytest.fixture(params=[SYNC_ID])
def cache(request: pytest.FixtureRequest) -> Iterator[Any]:
    if REFERENCE:
        from langgraph.cache.memory import InMemoryCache

        yield InMemoryCache()
        return
    # a sync fixture, as theirs (sync and async tests share it): without an aclient the
    # a* methods run the sync client in a worker thread
    from langgraph_valkey_cache import ValkeyNodeCache
    from langgraph_valkey_cache._client import client_from_url

    client = client_from_url(request.getfixturevalue("lvc_url"))
    try:
        yield ValkeyNodeCache(client, prefix=_prefix("node"))
    finally:
        client.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        names = getattr(item, "fixturenames", ())
        (keep if any(n in names for n in REPLACED) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_terminal_summary(terminalreporter: Any) -> None:
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    stats = terminalreporter.stats
    # "error" holds setup/teardown failures and collection errors: all count
    counts = {
        k: len(stats.get(k, []))
        for k in ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
    }
    counts["deselected"] = len(stats.get("deselected", []))
    failed = sorted(
        {r.nodeid for k in ("failed", "error") for r in stats.get(k, []) if hasattr(r, "nodeid")}
    )
    Path(path).write_text(json.dumps({"counts": counts, "failed": failed}))


# --- the runner ----------------------------------------------------------------------------


TARGETS = {
    "standalone": "one valkey-server (EmbeddedValkey)",
    "cluster": "a 3-primary Valkey Cluster (EmbeddedCluster)",
    "memory": "LangGraph's in-memory saver, store and cache (the reference)",
}


def run_mode(
    root: Path, mode: str, target: str, files: list[str], extra: list[str], log: Path
) -> dict[str, Any]:
    """One pytest child over ``files``; returns its counts, failing ids and wall time."""
    env = {k: v for k, v in os.environ.items() if k != "LANGGRAPH_STRICT_MSGPACK"}
    strict = MODES[mode]
    if strict is not None:
        env["LANGGRAPH_STRICT_MSGPACK"] = strict
    env.pop(CLUSTER_ENV, None)
    env.pop(IMPL_ENV, None)
    if target == "cluster":
        env[CLUSTER_ENV] = "1"
    elif target == "memory":
        env[IMPL_ENV] = "memory"
    report = log.with_suffix(".json")
    report.unlink(missing_ok=True)
    env[REPORT_ENV] = str(report)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")])
    )
    # langgraph's test environment has no pytest-asyncio (anyio runs their async tests);
    # --full-trace from their addopts would bury the summary
    plugins = ["-p", "langgraph_suite", "-p", "no:asyncio", "-p", "no:cacheprovider"]
    options = ["-q", "--tb=short", "-o", "addopts=--strict-markers --snapshot-warn-unused"]
    cmd = [sys.executable, "-m", "pytest", *plugins, *options, "--timeout=300", *files, *extra]
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if not report.exists():
        raise RuntimeError(f"pytest exited {proc.returncode} without a report; see {log}")
    result: dict[str, Any] = json.loads(report.read_text())
    result.update(mode=mode, seconds=round(seconds, 1), returncode=proc.returncode, log=str(log))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mode",
        choices=[*MODES, "both"],
        default="both",
        help="LANGGRAPH_STRICT_MSGPACK unset, 'true', or both (default)",
    )
    parser.add_argument(
        "--target",
        choices=list(TARGETS),
        default="standalone",
        help="; ".join(f"{k}: {v}" for k, v in TARGETS.items()),
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--fetch", action="store_true", help="only download and extract the sdist (needs PyPI)"
    )
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    version = dist_version("langgraph")
    root = ensure_suite(version)
    if args.fetch:
        print(root)
        return 0
    files = suite_files(root)
    modes = list(MODES) if args.mode == "both" else [args.mode]
    results = []
    for mode in modes:
        log = CACHE_DIR / f"langgraph-{version}-{args.target}-{mode}.log"
        results.append(run_mode(root, mode, args.target, files, args.pytest_args, log))
    if args.json:
        print(json.dumps({"langgraph": version, "target": args.target, "results": results}))
    else:
        where = f"{TARGETS[args.target]}, {len(files)} files naming a fixture"
        print(f"langgraph {version}'s tests on {where}")
        for r in results:
            c = r["counts"]
            print(
                f"LANGGRAPH_STRICT_MSGPACK={r['mode']}: {c['passed']} passed, {c['failed']} "
                f"failed, {c['error']} errors, {c['skipped']} skipped, {c['xfailed']} xfailed "
                f"in {r['seconds']} s (log: {r['log']})"
            )
            for nodeid in r["failed"]:
                print(f"  FAILED {nodeid}")
    bad = any(
        r["counts"]["failed"] or r["counts"]["error"] or r["returncode"] not in (0, 1)
        for r in results
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
