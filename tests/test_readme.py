"""Every ```python block of README.md runs, against a real embedded server.

Each block is one test. ``valkey://localhost:6379`` in a block becomes the URL of a
server of this module's own (with an FT.* module, so store search runs too). A block runs in a
fresh namespace holding what the README's prose assumes the reader already has (see
:func:`_context`: ``url``, ``client``, ``aclient``, ``builder``, ``model``, ``tools``,
``agent``, ``inputs``, ``config``, ``index``, ``expensive``). Top-level ``await`` is
allowed: such a block runs in its own event loop.

A block can be skipped only with a visible reason, an HTML comment on the line right
before its fence: ``<!-- readme-test: skip: why -->``. The commands of the "Command line"
section's ```bash block run too (the other bash blocks install, test and benchmark).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from langgraph_valkey_cache.testing import ScriptedModel

README = Path(__file__).resolve().parent.parent / "README.md"
README_URL = "valkey://localhost:6379"
_SKIP = re.compile(r"<!--\s*readme-test:\s*skip:\s*(?P<reason>\S.*?)\s*-->")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    section: str
    source: str
    skip: str | None

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")[:40]
        return f"L{self.line}-{slug}"


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text, with the heading each sits under."""
    blocks: list[Block] = []
    section, lines = "(top)", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        fence = re.match(r"^(\s*)```(\S*)", line)
        if fence:
            indent, lang = fence.group(1), fence.group(2)
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith("```"):
                end += 1
            if lang == "python":
                body = [
                    ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[i + 1 : end]
                ]
                skip = _SKIP.search(lines[i - 1]) if i else None
                blocks.append(
                    Block(i + 1, section, "\n".join(body) + "\n", skip and skip["reason"])
                )
            i = end
        i += 1
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks_and_few_skips() -> None:
    assert len(BLOCKS) >= 8
    assert sum(b.skip is not None for b in BLOCKS) <= 2


def test_block_extraction() -> None:
    text = (
        "# A\n```python\nx = 1\n```\n## B\n<!-- readme-test: skip: needs a GPU -->\n"
        "```python\ny = 2\n```\n```bash\nls\n```\n- item\n\n  ```python\n  z = 3\n  ```\n"
    )
    got = python_blocks(text)
    assert [(b.line, b.section, b.source, b.skip) for b in got] == [
        (2, "A", "x = 1\n", None),
        (7, "B", "y = 2\n", "needs a GPU"),
        (15, "B", "z = 3\n", None),
    ]


# -- what the prose assumes you have ------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"sunny in {city}"


def _context(url: str) -> dict[str, Any]:
    from langgraph.graph import START, MessagesState, StateGraph

    from langgraph_valkey_cache import cache_client_from_url

    model = ScriptedModel(script=["hello"])  # every prompt, the same text (no API key)

    def chat(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    def expensive(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage("expensive result")]}

    builder = StateGraph(MessagesState)
    builder.add_node("chat", chat)
    builder.add_edge(START, "chat")
    from langchain.agents import create_agent

    return {
        "agent": create_agent(model, [get_weather]),
        "inputs": {"messages": [("user", "hi")]},
        "__name__": "readme",
        "url": url,
        "client": cache_client_from_url(url),
        "builder": builder,
        "model": model,
        "tools": [get_weather],
        "config": {"configurable": {"thread_id": "readme"}},
        "index": {"dims": 16, "embed": DeterministicFakeEmbedding(size=16), "fields": ["text"]},
        "expensive": expensive,
    }


@pytest.fixture(scope="module")
def readme_url() -> Iterator[str]:
    """A server of the README's own: its blocks write under the default prefixes (and the
    caches' registry), which no other test's server should see."""
    from langgraph_valkey_cache.embedded import EmbeddedValkey, redisearch_module_path

    with EmbeddedValkey(search=redisearch_module_path()) as server:
        yield server.url


@pytest.fixture
def context(readme_url: str) -> Iterator[dict[str, Any]]:
    from langchain_core.globals import set_llm_cache

    ns = _context(readme_url)
    yield ns
    set_llm_cache(None)
    ns["client"].close()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block: Block, context: dict[str, Any], readme_url: str) -> None:
    if block.skip:
        pytest.skip(f"README line {block.line}: {block.skip}")
    source = block.source.replace(README_URL, readme_url)
    code = compile(source, f"README.md:{block.line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & inspect.CO_COROUTINE:
        asyncio.run(_run_async(code, context))
    else:
        exec(code, context)


async def _run_async(code: Any, ns: dict[str, Any]) -> None:
    from langgraph_valkey_cache import cache_client_from_url

    ns["aclient"] = cache_client_from_url(ns["url"], asyncio=True)
    try:
        await eval(code, ns)
    finally:
        await ns["aclient"].aclose()


# -- the TTL table's units, measured ------------------------------------------------------


def _pttls(client: Any, prefix: str) -> list[int]:
    """PTTL (ms) of every key under ``prefix`` that expires (not the checkpointer's
    thread index keys, ``{%ix}``: they outlive the threads they name, 1.5 TTL)."""
    keys = [k for k in client.scan_iter(match=f"{prefix}*", count=1000) if b"{%ix}" not in k]
    ttls = [int(client.pttl(k)) for k in keys]
    return [t for t in ttls if t > 0]


def test_ttl_units_are_the_tables(valkey_url: str, prefix: str) -> None:
    """2 minutes for the saver and store, 120 seconds for the caches: all ~120 s."""
    from langchain_core.outputs import Generation

    from langgraph_valkey_cache import (
        ToolCache,
        ValkeyByteStore,
        ValkeyCache,
        ValkeyNodeCache,
        ValkeySaver,
        ValkeyStore,
        cache_client_from_url,
        cached,
        client_from_url,
    )

    admin = client_from_url(valkey_url)
    cclient = cache_client_from_url(valkey_url)
    with ValkeySaver.from_conn_string(
        valkey_url, prefix=f"{prefix}sv", ttl={"default_ttl": 2}
    ) as saver:
        graph = _context(valkey_url)["builder"].compile(checkpointer=saver)
        graph.invoke({"messages": [("user", "hi")]}, {"configurable": {"thread_id": "t"}})
    with ValkeyStore.from_conn_string(valkey_url, prefix=f"{prefix}st") as store:
        store.put(("docs",), "a", {"text": "hello"}, ttl=2)
    llm = ValkeyCache(cclient, prefix=f"{prefix}llm", ttl=120, metrics=False)
    llm.update("prompt", "model", [Generation(text="hi")])
    tools = ToolCache(cclient, prefix=f"{prefix}tl", ttl=120, metrics=False)

    @cached(tools, name="double")
    def double(x: int) -> int:
        return 2 * x

    assert double(2) == 4
    ValkeyNodeCache(cclient, prefix=f"{prefix}nd", metrics=False).set({(("n",), "k"): (1, 120)})
    ValkeyByteStore(cclient, prefix=f"{prefix}bs", ttl=120).mset([("k", b"v")])
    for tier in ("sv", "st", "llm", "tl", "nd", "bs"):
        ttls = _pttls(admin, f"{prefix}{tier}")
        assert ttls, tier
        # the longest-lived key carries the TTL asked for (the saver may keep shorter-lived
        # bookkeeping keys, e.g. a refresh throttle at a tenth of it)
        assert 100_000 < max(ttls) <= 120_000, (tier, ttls)
    admin.close()
    cclient.close()


# -- the command-line block ---------------------------------------------------------------

_CLI = "python -m langgraph_valkey_cache"
_ID_PLACEHOLDER = "1f0c6b2e"  # the README's example checkpoint id prefix


def cli_lines(text: str) -> list[str]:
    """The CLI invocations in the ```bash blocks of the "Command line" section."""
    section = text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            if line.startswith(_CLI):
                lines.append(line.split("#", 1)[0].strip())
    return lines


def test_readme_cli_block_runs(readme_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each command of the block, on a thread T1 that ran (``$URL`` and the example id
    prefix replaced; the demo lines are tests/test_demo.py's)."""
    import shlex

    from langgraph_valkey_cache import ValkeySaver
    from langgraph_valkey_cache.__main__ import main

    with ValkeySaver.from_conn_string(readme_url) as saver:  # the default prefix
        graph = _context(readme_url)["builder"].compile(checkpointer=saver)
        graph.invoke({"messages": [("user", "hi")]}, {"configurable": {"thread_id": "T1"}})
        ids = [
            t.config["configurable"]["checkpoint_id"]
            for t in saver.list({"configurable": {"thread_id": "T1"}})
        ]
    assert len(ids) >= 3
    # the shortest prefix of the second newest id that names it alone
    size = next(n for n in range(8, 37) if sum(i.startswith(ids[1][:n]) for i in ids) == 1)
    ran = 0
    for line in cli_lines(README.read_text(encoding="utf-8")):
        argv = shlex.split(line)[len(_CLI.split()) :]
        if argv[0] == "demo":
            continue
        argv = [
            readme_url if a == "$URL" else ids[1][:size] if a == _ID_PLACEHOLDER else a
            for a in argv
        ]
        code = main(argv)
        out, err = capsys.readouterr()
        assert (code, err) == (0, ""), line
        assert out.strip(), line
        ran += 1
    assert ran >= 5
