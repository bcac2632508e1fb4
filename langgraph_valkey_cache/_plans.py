"""Drivers for *plans*: generators that yield I/O requests and receive the replies.

The I/O-free halves of the checkpointer and the store describe each operation as a
plan; the sync and async shells only supply an ``execute`` function. These four
drivers are the whole difference between the sync and the async code paths.
A plan may also yield :class:`Emit` to hand an item to the consumer of a listing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Emit", "aiter_plan", "arun_plan", "iter_plan", "run_plan"]


@dataclass(frozen=True)
class Emit:
    """Not an I/O request: hand ``item`` to whoever iterates the plan."""

    item: Any


Plan = Generator[Any, Any, Any]


def run_plan(plan: Plan, execute: Callable[[Any], Any]) -> Any:
    reply = None
    while True:
        try:
            op = plan.send(reply)
        except StopIteration as done:
            return done.value
        reply = execute(op)


async def arun_plan(plan: Plan, execute: Callable[[Any], Awaitable[Any]]) -> Any:
    reply = None
    while True:
        try:
            op = plan.send(reply)
        except StopIteration as done:
            return done.value
        reply = await execute(op)


def iter_plan(plan: Plan, execute: Callable[[Any], Any]) -> Iterator[Any]:
    reply = None
    while True:
        try:
            op = plan.send(reply)
        except StopIteration:
            return
        if isinstance(op, Emit):
            reply = None
            yield op.item
        else:
            reply = execute(op)


async def aiter_plan(plan: Plan, execute: Callable[[Any], Awaitable[Any]]) -> AsyncIterator[Any]:
    reply = None
    while True:
        try:
            op = plan.send(reply)
        except StopIteration:
            return
        if isinstance(op, Emit):
            reply = None
            yield op.item
        else:
            reply = await execute(op)
