"""Waiting on a condition with a deadline (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["wait_until", "wait_until_async"]

POLL_S = 0.02


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Return as soon as ``predicate()`` holds; raise TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(POLL_S)


async def wait_until_async(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str
) -> None:
    """:func:`wait_until` for a predicate that must be awaited (an HTTP probe, a broker call)."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(POLL_S)
