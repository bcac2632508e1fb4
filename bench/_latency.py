"""A TCP proxy that adds a fixed one-way delay, to benchmark as if over a network.

Loopback round trips cost ~50 µs, so savings in round trips barely show locally; a
managed Valkey in the same region answers in 200-1000 µs. ``DelayProxy(port,
one_way_ms)`` forwards to 127.0.0.1:port and delays every chunk in each direction,
preserving order (threads and ``time.sleep``: an event loop's timers are too coarse
for sub-millisecond delays). Both sides of a comparison go through the same proxy.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from typing import Any


class DelayProxy:
    def __init__(self, target_port: int, one_way_ms: float) -> None:
        self.target_port = target_port
        self.delay = one_way_ms / 1000.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False

    @property
    def url(self) -> str:
        return f"valkey://127.0.0.1:{self.port}"

    def __enter__(self) -> DelayProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pipe(client, upstream)
            self._pipe(upstream, client)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def read() -> None:
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                chunks.put((time.perf_counter() + self.delay, data))
                if not data:
                    return

        def write() -> None:
            while True:
                due, data = chunks.get()
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                try:
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()


def spawn(target_port: int, one_way_ms: float) -> tuple[Any, str]:
    """Run the proxy in its own process (no GIL contention with the benchmark)."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, __file__, str(target_port), str(one_way_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"valkey://127.0.0.1:{port}"


def measured_rtt_ms(url: str, n: int = 200) -> float:
    import valkey

    client = valkey.Valkey.from_url(url)
    client.ping()
    start = time.perf_counter()
    for _ in range(n):
        client.ping()
    client.close()
    return (time.perf_counter() - start) / n * 1000


if __name__ == "__main__":
    import sys

    proxy = DelayProxy(int(sys.argv[1]), float(sys.argv[2]))
    print(proxy.port, flush=True)
    proxy.__enter__()
    while True:
        time.sleep(3600)
