"""The SQLite group commit in a process of its own (``journeys serve``).

Writing a group costs about as much as receiving its requests: resolving contacts,
building rows, SQLite's inserts, the commit. In a thread of the server's process all of it
is paid by the one core that runs the event loop, whether the interpreter lock is held
(SQLAlchemy, the rows) or handed back and forth around every call into SQLite. In a process
of its own it runs on the other core while the event loop reads, verifies and normalizes
the next group's requests.

The server sends each group over the child's stdin and reads the outcome on its stdout:
a 4-byte length, then a pickle (the two ends are the same program). The child answers the
groups in the order they came, and the Committer keeps the next group queued behind the
one being written, so the child never waits for the server. The child polls for SQLite's write lock
like the writer thread does, and checkpoints the write-ahead log between groups. It exits
when its stdin closes, which includes the server dying: nothing is left running.

An error in a group comes back as an error, and that group's requests get 503. A child
that dies takes its group with it (503 as well) and is started again for the next group.
"""

from __future__ import annotations

import asyncio
import copyreg
import logging
import pickle
import sys
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, BinaryIO, NamedTuple

from ingest.group import Outcome, Submitted
from ingest.incoming import Incoming
from journeys.config import Policies

log = logging.getLogger("journeys.ingest")

_LENGTH = 4


def _read_only(value: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(value)


def _proxy(proxy: MappingProxyType[Any, Any]) -> tuple[Any, tuple[dict[Any, Any]]]:
    return _read_only, (dict(proxy),)  # a function of ours: pickle cannot name the type itself


# Payloads keep their data read-only (MappingProxyType), which pickle cannot take as it is.
copyreg.pickle(MappingProxyType, _proxy)


class _Request(NamedTuple):
    """A request's share of a group, as the child receives it (see ingest.group.Submitted)."""

    source: str
    provider: str
    items: list[Incoming]
    received_at: datetime


class WriterError(Exception):
    """The writer process could not write a group (its message says why), or is gone."""


class WriterProcess:
    """The server's end: starts the child, sends it groups, reads their outcomes.

    Several groups may be in flight: the child writes them in the order sent and answers
    in that order, so each answer goes to the oldest group still waiting."""

    def __init__(self, url: str, policies: Policies, checkpoint_every: int) -> None:
        self.url = url
        self.policies = policies
        self.checkpoint_every = checkpoint_every
        self._child: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        # the groups sent to the child, oldest first, waiting for its answers
        self._waiting: deque[asyncio.Future[list[Outcome]]] = deque()
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        await self._started()

    async def _started(self) -> tuple[asyncio.subprocess.Process, deque[asyncio.Future[list[Outcome]]]]:
        async with self._starting:
            if self._child is None:
                child = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "ingest.writer", stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE)
                self._send(child, (self.url, self.policies, self.checkpoint_every))
                self._child, self._waiting = child, deque()
                self._reader = asyncio.create_task(self._answers(child, self._waiting))
            return self._child, self._waiting

    @staticmethod
    def _send(child: asyncio.subprocess.Process, message: Any) -> None:
        assert child.stdin is not None
        frame = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        child.stdin.write(len(frame).to_bytes(_LENGTH, "big") + frame)

    async def write(self, requests: Sequence[Submitted], now: datetime) -> list[Outcome]:
        """Write one group in the child; its outcomes, or WriterError."""
        child, waiting = await self._started()
        answer: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        waiting.append(answer)
        try:
            self._send(child, ([_Request(r.source, r.provider, r.items, r.received_at) for r in requests], now))
            assert child.stdin is not None
            await child.stdin.drain()
        except OSError:
            pass  # the child is gone: its reader fails every group that waits, this one too
        return await answer

    async def _answers(self, child: asyncio.subprocess.Process,
                       waiting: deque[asyncio.Future[list[Outcome]]]) -> None:
        """Hand each answer to the oldest group waiting; when the child ends, fail the rest."""
        assert child.stdout is not None
        try:
            while True:
                length = int.from_bytes(await child.stdout.readexactly(_LENGTH), "big")
                kind, answer = pickle.loads(await child.stdout.readexactly(length))
                oldest = waiting.popleft()
                if kind == "error":
                    oldest.set_exception(WriterError(answer))
                else:
                    oldest.set_result([Outcome(stored, duplicates) for stored, duplicates in answer])
        except (OSError, asyncio.IncompleteReadError) as exc:
            # gone (killed, out of memory, closed): its groups are lost to it, the next starts a new one
            if self._child is child:
                self._child = None
            if child.returncode is None:
                child.kill()
            await child.wait()
            while waiting:
                waiting.popleft().set_exception(
                    WriterError(f"the ingest writer process ended ({type(exc).__name__})"))

    async def close(self) -> None:
        """Close the child's stdin and wait for it to finish (it checkpoints as it closes)."""
        child, reader, self._child = self._child, self._reader, None
        if child is None or reader is None:
            return
        assert child.stdin is not None
        child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), timeout=30)
        except TimeoutError:
            log.error("the ingest writer process did not finish in 30 s; killing it")
            child.kill()
        await reader


def _read(stream: BinaryIO) -> Any:
    head = stream.read(_LENGTH)
    if len(head) < _LENGTH:
        return None  # stdin closed: the server is done (or gone)
    return pickle.loads(stream.read(int.from_bytes(head, "big")))


def _write(stream: BinaryIO, message: Any) -> None:
    frame = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(frame).to_bytes(_LENGTH, "big") + frame)
    stream.flush()


def main() -> int:
    """The child: ``python -m ingest.writer``, started by WriterProcess."""
    from engine.db.database import checkpoint, sqlite_writer
    from ingest.group import write_group

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries frames only
    init = _read(source)
    if init is None:
        return 0
    url, policies, checkpoint_every = init
    engine = sqlite_writer(url)
    conn = engine.connect()  # kept: a connection per group costs a pool round trip and a rollback
    since_checkpoint = 0
    try:
        while (message := _read(source)) is not None:
            requests, now = message
            try:
                with conn.begin():
                    outcomes = write_group(conn, requests, now, policies)
            except Exception as exc:  # the server answers 503; the provider will retry
                log.exception("storing a group of %d requests failed", len(requests))
                _write(sink, ("error", f"{type(exc).__name__}: {exc}"))
                continue
            _write(sink, ("ok", [(o.stored, o.duplicates) for o in outcomes]))
            since_checkpoint += sum(len(r.items) for r in requests)
            if since_checkpoint >= checkpoint_every:
                # the requests are answered: the next group waits in the pipe meanwhile
                since_checkpoint = 0
                try:
                    checkpoint(conn)
                except Exception:  # the next one tries again; nothing waits on this
                    log.exception("WAL checkpoint failed")
    finally:
        conn.close()
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
