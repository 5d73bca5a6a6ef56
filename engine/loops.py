"""The one shape of every background loop in ``serve`` and ``worker``: work until told to stop.

A step returns how much it did: while it finds work it runs again at once; when it finds
none it waits (the idle delay) unless *stop* is set meanwhile; when it fails it logs, waits
a moment so a broken database is not hammered, and tries again. It never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable


async def repeat(step: Callable[[], Awaitable[int]], stop: asyncio.Event, *, idle: float, log: logging.Logger,
                 what: str, pause_on_error: float = 1.0) -> None:
    while not stop.is_set():
        try:
            done = await step()
        except Exception:
            log.exception("%s failed; retrying", what)
            done = 0
            if pause_on_error:
                await asyncio.sleep(pause_on_error)
        if not done:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=idle)
