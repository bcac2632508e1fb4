"""Helpers for tests and benchmarks: count what a call sends to the server.

``count_commands()`` instruments valkey-py's connection classes (sync and async)
while the block runs: every ``send_packed_command`` is one round trip (a pipeline
is one), and every packed command is recorded by name. Real server, real client:
nothing is faked, only observed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import valkey.asyncio.connection as aconn
import valkey.connection as sconn

__all__ = ["CommandLog", "count_commands"]


@dataclass
class CommandLog:
    round_trips: int = 0
    commands: list[str] = field(default_factory=list)

    @property
    def n_commands(self) -> int:
        return len(self.commands)

    def reset(self) -> None:
        self.round_trips = 0
        self.commands.clear()


_lock = threading.Lock()


def _name(args: tuple[Any, ...]) -> str:
    first = args[0]
    name = first.decode() if isinstance(first, bytes) else str(first)
    return name.split(" ")[0].upper()


@contextmanager
def count_commands() -> Iterator[CommandLog]:
    """Record round trips and command names sent by any valkey-py client."""
    log = CommandLog()
    patched: list[tuple[type, str, Any]] = []

    def patch(cls: type, attr: str, make: Any) -> None:
        orig = cls.__dict__[attr]
        patched.append((cls, attr, orig))
        setattr(cls, attr, make(orig))

    def wrap_send(orig: Any) -> Any:
        def send(self: Any, *a: Any, **k: Any) -> Any:
            with _lock:
                log.round_trips += 1
            return orig(self, *a, **k)

        return send

    def wrap_asend(orig: Any) -> Any:
        async def send(self: Any, *a: Any, **k: Any) -> Any:
            with _lock:
                log.round_trips += 1
            return await orig(self, *a, **k)

        return send

    def wrap_pack(orig: Any) -> Any:
        def pack(self: Any, *args: Any) -> Any:
            with _lock:
                log.commands.append(_name(args))
            return orig(self, *args)

        return pack

    def wrap_packs(orig: Any) -> Any:
        def packs(self: Any, commands: Any) -> Any:
            commands = list(commands)
            with _lock:
                log.commands.extend(_name(tuple(c)) for c in commands)
            return orig(self, commands)

        return packs

    with _lock:
        patch(sconn.AbstractConnection, "pack_commands", wrap_packs)
        patch(sconn.AbstractConnection, "send_packed_command", wrap_send)
        patch(aconn.AbstractConnection, "send_packed_command", wrap_asend)
        patch(sconn.AbstractConnection, "pack_command", wrap_pack)
        patch(aconn.AbstractConnection, "pack_command", wrap_pack)
    try:
        yield log
    finally:
        with _lock:
            for cls, attr, orig in reversed(patched):
                setattr(cls, attr, orig)
