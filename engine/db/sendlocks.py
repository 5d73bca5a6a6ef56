"""Sends and opt-outs on one contact kept apart across processes on SQLite (invariant 7).

A send holds its contact's lock shared from the suppression check until the provider has
answered; an opt-out takes its contacts' locks exclusively until its suppressions are
committed. So a send either finished before the opt-out committed, or it starts after and
sees the suppression.

Inside one process :mod:`actions.gate` keeps the two apart with asyncio. On PostgreSQL,
processes are kept apart by row locks (``FOR SHARE`` by a send, ``FOR UPDATE`` by an
opt-out). SQLite has no row locks, and ``journeys serve`` runs ingest and the executor in
different processes, so on SQLite the lock is a byte of a lock file beside the database
(``journeys.db-sendlocks``), locked with POSIX record locks (``fcntl.lockf``): byte
``hash(contact) % SLOTS``. Two contacts sharing a byte only wait for each other now and
then. The kernel drops the locks of a process that dies, so a killed executor never leaves
an opt-out waiting.

POSIX record locks belong to a process, not to a coroutine: a second shared lock of the
same process on the same byte is no new lock, and one unlock frees it for all. So the
process counts its holders of each byte and locks on the first, unlocks on the last. An
opt-out in the same process first waits, in :mod:`actions.gate`, until that process's own
sends to its contacts are over, so a byte is never held shared and exclusive by one process.

Locks are taken without blocking and tried again every millisecond: a blocking ``lockf``
would stop the event loop. What must never do I/O here: nothing but the lock file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: one process is all SQLite gets there
    fcntl = None  # type: ignore[assignment]

SLOTS = 1 << 20
RETRY = 0.001  # seconds between tries for a lock another process holds
SUFFIX = "-sendlocks"


def _slot(contact_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(contact_id.encode(), digest_size=8).digest(), "big") % SLOTS


def lock_order(contact_ids: Iterable[str]) -> list[str]:
    """The one order in which every process and coroutine takes several contacts' locks (their
    bytes first): taken in different orders, two holders could each wait for the other."""
    return sorted(set(contact_ids), key=lambda c: (_slot(c), c))


class SendLocks:
    """The lock file of one SQLite database; :meth:`none` where no file is needed."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._held: Counter[int] = Counter()  # this process's shared holders of each byte
        self._exclusive: set[int] = set()  # bytes this process holds for an opt-out
        self._turns: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()

    @classmethod
    def none(cls) -> SendLocks:
        return cls(None)

    @classmethod
    def for_sqlite_file(cls, database: str) -> SendLocks:
        return cls(Path(database + SUFFIX)) if fcntl is not None else cls.none()

    def _file(self) -> int:
        if self._fd is None:
            assert self.path is not None
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    async def _lock(self, slot: int, mode: int) -> None:
        fd = self._file()
        while True:
            try:
                fcntl.lockf(fd, mode | fcntl.LOCK_NB, 1, slot)
                return
            except OSError:  # held by another process: an opt-out or a send in flight
                await asyncio.sleep(RETRY)

    def _unlock(self, slot: int) -> None:
        fcntl.lockf(self._file(), fcntl.LOCK_UN, 1, slot)

    @contextlib.asynccontextmanager
    async def sending(self, contact_id: str | None) -> AsyncIterator[None]:
        if self.path is None or contact_id is None:
            yield
            return
        slot = _slot(contact_id)
        turn = self._turns.get(slot)
        if turn is None:
            turn = self._turns[slot] = asyncio.Lock()
        async with turn:  # one sender locks the byte; those that come meanwhile wait for it
            while slot in self._exclusive:  # another contact on the same byte opts out here
                await asyncio.sleep(RETRY)
            if not self._held[slot]:
                await self._lock(slot, fcntl.LOCK_SH)
            self._held[slot] += 1
        try:
            yield
        finally:
            self._held[slot] -= 1
            if not self._held[slot]:
                del self._held[slot]
                self._unlock(slot)

    @contextlib.asynccontextmanager
    async def opting_out(self, contact_ids: Iterable[str]) -> AsyncIterator[None]:
        if self.path is None:
            yield
            return
        slots = sorted({_slot(c) for c in contact_ids})  # one order everywhere: no deadlock
        taken: list[int] = []
        try:
            for slot in slots:
                # a send of this process to another contact on the same byte: our lock would
                # turn its shared lock into ours, and our unlock would end it
                while self._held[slot] or slot in self._exclusive:
                    await asyncio.sleep(RETRY)
                self._exclusive.add(slot)
                taken.append(slot)
                await self._lock(slot, fcntl.LOCK_EX)
            yield
        finally:
            for slot in taken:
                self._exclusive.discard(slot)
                self._unlock(slot)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None




class WebhookTurn:
    """On SQLite, webhooks go first at the one write lock.

    SQLite has one writer at a time and no queue: whoever asks when the lock comes free gets
    it. Journey work (the engine, timers, executor) writes in many transactions, and each one
    that starts while a group of webhooks waits makes the providers wait too. So the webhook
    writer holds a byte of the lock file (past the contacts' bytes) while it writes a group,
    and journey work, before it starts a transaction, waits while that byte is held: between
    groups it goes on, during a burst it lags, and it never waits longer than YIELD_AT_MOST
    for one transaction (so a steady stream of webhooks cannot stop it for good)."""

    BYTE = SLOTS + 1
    YIELD_AT_MOST = 0.25  # seconds

    def __init__(self, database: str) -> None:
        self.path = Path(database + SUFFIX) if fcntl is not None else None
        self._fd: int | None = None

    def _file(self) -> int | None:
        if self.path is None:
            return None
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """The webhook writer's side, around the write of a group (blocking: it waits only for
        another process's look, which lasts microseconds)."""
        fd = self._file()

        @contextlib.contextmanager
        def held() -> Iterator[None]:
            if fd is None:
                yield
                return
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, self.BYTE)
            try:
                yield
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, self.BYTE)

        return held()

    async def wait_for_webhooks(self) -> None:
        """Journey work's side: returns when no group of webhooks is being written, or after
        YIELD_AT_MOST."""
        fd = self._file()
        if fd is None:
            return
        deadline = asyncio.get_running_loop().time() + self.YIELD_AT_MOST
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, self.BYTE)
            except OSError:
                if asyncio.get_running_loop().time() >= deadline:
                    return
                await asyncio.sleep(RETRY)
                continue
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, self.BYTE)
            return

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


__all__ = ["SendLocks", "WebhookTurn", "lock_order"]
