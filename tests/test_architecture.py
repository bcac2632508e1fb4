"""The tree reads as the architecture: core modules import no tier, tiers import the core
and each other's public modules only, and every cache runs on the one executor."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "langgraph_valkey_cache"
CORE = {
    "_client",
    "_control",
    "_cachebase",
    "_failopen",
    "_keys",
    "_plans",
    "_scripts",
    "_search",
    "_serde",
    "_stats",
    "_telemetry",
    "_version",
}
TIERS = {"cache", "checkpoint", "store", "embeddings"}


def _imports(path: Path) -> set[str]:
    """Every ``langgraph_valkey_cache.x.y`` a module imports (at any depth)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("langgraph_valkey_cache.")}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("name", sorted(CORE))
def test_core_modules_import_no_tier(name: str) -> None:
    for target in _imports(PACKAGE / f"{name}.py"):
        part = target.split(".")[1]
        assert part not in TIERS, f"core module {name} imports the tier {target}"


def test_tiers_never_reach_into_other_tiers_internals() -> None:
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        own = rel.parts[0].removesuffix(".py")
        if own not in TIERS:
            continue
        for target in _imports(path):
            parts = target.split(".")[1:]
            if parts[0] == own or parts[0] not in TIERS:
                continue
            # another tier: only its public modules and names, never a _private one
            assert not any(p.startswith("_") for p in parts), f"{rel} imports {target}"
            assert parts[0] != "cache" or own != "store", f"{rel}: the store imports a cache"


def test_caches_talk_to_the_server_only_through_the_executor() -> None:
    """No cache module calls a client method or catches a server error itself."""
    for path in (PACKAGE / "cache").glob("*.py"):
        text = path.read_text()
        for needle in ("ValkeyError", "CACHE_ERRORS", ".pipeline(", "execute_command("):
            assert needle not in text, f"{path.name} uses {needle!r}: make it a plan step"
    for name in ("embeddings.py",):
        assert "ValkeyError" not in (PACKAGE / name).read_text()


def test_default_prefixes_are_defined_once() -> None:
    for path in _modules():
        if path.name == "_keys.py":
            continue
        for literal in ('"lgv:llm"', '"lgv:node"', '"lgv:tools"', '"lgv:emb"', '"lgv:llmsem"'):
            assert literal not in path.read_text(), f"{path.name} repeats {literal}"
