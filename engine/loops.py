"""The one shape of every background loop in ``serve`` and ``worker``: work until told to stop.

A step returns how much it did: while it finds work it runs again at once; when it finds
none it waits (the idle delay) unless *stop* is set meanwhile; when it fails it logs, waits
a moment so a broken database is not hammered, and tries again. It never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable


async def repeat(step: Callable[[], Awaitable[int]], stop: asyncio.Event, *, idle: float, log: logging.Logger,
                 what: str, pause_on_error: float = 1.0, waker: Waker | None = None) -> None:
    """*waker*: a ring ends the idle wait at once (work was written for this loop)."""
    bell = waker or Waker()
    while not stop.is_set():
        try:
            done = await step()
        except Exception:
            log.exception("%s failed; retrying", what)
            done = 0
            if pause_on_error:
                await asyncio.sleep(pause_on_error)
        if not done:
            await bell.wait(stop, idle)


class Waker:
    """A loop's doorbell: whoever wrote work for it rings, and it looks at once instead of at
    its next poll. Rings while it works are not lost: the next wait returns at once."""

    def __init__(self) -> None:
        self._rung = asyncio.Event()

    def wake(self) -> None:
        self._rung.set()

    async def wait(self, stop: asyncio.Event, timeout: float) -> None:
        """Until rung, *stop* is set, or *timeout* seconds passed."""
        if not self._rung.is_set() and not stop.is_set():
            rung = asyncio.ensure_future(self._rung.wait())
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait((rung, stopped), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                rung.cancel()
                stopped.cancel()
        self._rung.clear()


@contextlib.asynccontextmanager
async def heartbeat(beat: Callable[[], Awaitable[None]], every: float, log: logging.Logger) -> AsyncIterator[None]:
    """Run *beat* every *every* seconds while the block runs: claims renewed while their work
    goes on, so a claim's lease can be short (a dead process's claims come back soon) without
    ever running out under a live one."""

    async def beating() -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await beat()
            except Exception:
                log.exception("heartbeat failed; trying again")

    task = asyncio.create_task(beating())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
