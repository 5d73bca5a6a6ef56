"""The SQLite group commit in a process of its own (``journeys serve``).

Writing a group costs about as much as receiving its requests: resolving contacts,
building rows, SQLite's inserts, the commit. In a thread of the server's process all of it
is paid by the one core that runs the event loop, whether the interpreter lock is held
(SQLAlchemy, the rows) or handed back and forth around every call into SQLite. In a process
of its own it runs on the other core while the event loop reads, verifies and normalizes
the next group's requests.

The server sends each group over the child's stdin and reads the outcome on its stdout:
a 4-byte length, then a pickle of plain tuples (the two ends are the same program). The
child answers the groups in the order they came, and the Committer keeps the next group
queued behind the one being written, so the child never waits for the server. The child
polls for SQLite's write lock like the writer thread does, and checkpoints the write-ahead
log (database.Checkpoints). It exits when its stdin closes, which includes the server dying:
nothing is left running. It ignores SIGINT and SIGTERM, which a terminal or a service manager
sends the whole process group: the server drains its requests first, then closes that stdin.
Its log lines go to the server's stderr.

An error in a group comes back as an error, and that group's requests get 503. A child
that dies takes its groups with it (503 as well) and is started again for the next group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import pickle
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, BinaryIO, NamedTuple

from ingest.group import Outcome, Submitted
from ingest.incoming import ContactRef, Incoming
from journeys.config import Policies

log = logging.getLogger("journeys.ingest")

_LENGTH = 4


class _Request(NamedTuple):
    """A request's share of a group, as the child receives it (see ingest.group.Submitted)."""

    source: str
    provider: str
    items: list[Incoming]
    received_at: datetime


# A group crosses the pipe as tuples, dicts and strings: pickle writes those in C, where a
# dataclass (and its read-only mappings) costs a Python call per object, on the event loop.
def _encode(request: Submitted) -> tuple[Any, ...]:
    return request.source, request.provider, [_encode_item(i) for i in request.items], request.received_at


def _encode_item(i: Incoming) -> tuple[Any, ...]:
    c = i.contact
    contact = None if c is None else (c.id, c.phone, c.email, c.timezone, c.locale,
                                      None if c.attributes is None else dict(c.attributes))
    return (i.type, i.provider_event_id, i.channel, contact, i.occurred_at, i.provider_message_id, i.message_id,
            i.status, i.text, dict(i.data), i.inbound)


def _decode(encoded: tuple[Any, ...]) -> _Request:
    source, provider, items, received_at = encoded
    return _Request(source, provider, [_decode_item(i) for i in items], received_at)


def _decode_item(encoded: tuple[Any, ...]) -> Incoming:
    kind, event_id, channel, c, occurred_at, provider_message_id, message_id, status, text, data, inbound = encoded
    contact = None
    if c is not None:
        contact_id, phone, email, timezone, locale, attributes = c
        contact = ContactRef(contact_id, phone, email, timezone, locale,
                             None if attributes is None else MappingProxyType(attributes))
    return Incoming(kind, event_id, channel, contact, occurred_at, provider_message_id, message_id, status, text,
                    MappingProxyType(data), inbound)


class WriterError(Exception):
    """The writer process could not write a group (its message says why), or is gone."""


Done = Callable[[list[Outcome] | BaseException], None]


class _Child(asyncio.SubprocessProtocol):
    """The child's stdout, read as it arrives: each answer calls its group's *done* at once.

    No task waits on a stream in between: under load the event loop's queue is long, and
    every hop through it (a reader task woken, then the task that sent the group) would add
    its length to every request's wait."""

    def __init__(self) -> None:
        self.waiting: deque[Done] = deque()  # one per group sent, oldest first
        self.buffer = bytearray()
        self.gone = False
        self.answered = 0
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1:
            return
        self.buffer += data
        while len(self.buffer) >= _LENGTH:
            length = int.from_bytes(self.buffer[:_LENGTH], "big")
            if len(self.buffer) < _LENGTH + length:
                return
            kind, answer = pickle.loads(self.buffer[_LENGTH:_LENGTH + length])
            del self.buffer[:_LENGTH + length]
            done = self.waiting.popleft()
            self.answered += 1
            if kind == "error":
                done(WriterError(answer))
            else:
                done([Outcome(stored, duplicates) for stored, duplicates in answer])

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._fail(f"the ingest writer process ended ({type(exc).__name__ if exc else 'its output closed'})")

    def process_exited(self) -> None:
        self._fail("the ingest writer process ended")
        if not self.exited.done():
            self.exited.set_result(None)

    def _fail(self, why: str) -> None:
        # its groups are lost to it; the next group starts a new one
        self.gone = True
        while self.waiting:
            self.waiting.popleft()(WriterError(why))


class WriterProcess:
    """The server's end: starts the child, sends it groups, hands back their outcomes.

    Several groups may be in flight: the child writes them in the order sent and answers
    in that order, so each answer goes to the oldest group still waiting."""

    # A child that ended without answering a group (it cannot import, or open the database)
    # is not started again for every group that comes: that would spend the server's CPU on
    # starting Pythons.
    RESTART_AFTER = 1.0  # seconds since the last start

    def __init__(self, url: str, policies: Policies, checkpoint_every: int) -> None:
        self.url = url
        self.policies = policies
        self.checkpoint_every = checkpoint_every
        self.command = [sys.executable, "-m", "ingest.writer"]
        self.starts = 0
        self._started_at = -math.inf
        self._transport: asyncio.SubprocessTransport | None = None
        self._child: _Child | None = None
        self._starting = asyncio.Lock()

    @property
    def running(self) -> bool:
        """Started and not gone: a group can be sent without waiting (see send)."""
        return self._child is not None and not self._child.gone

    @property
    def problem(self) -> str | None:
        """Why webhooks cannot be written now, for /readyz: the last child ended before it wrote
        anything (a crash after writing is replaced by the next group, and is no such sign)."""
        if self.running or self._child is None or self._child.answered:
            return None
        return "the ingest writer process ended before it wrote a group (see the log)"

    @property
    def pid(self) -> int | None:
        return self._transport.get_pid() if self._transport is not None and self.running else None

    async def start(self) -> None:
        async with self._starting:
            if not self.running:
                if self._transport is not None:
                    self._transport.close()  # the one that ended
                    useless = self._child is not None and not self._child.answered
                    if useless and time.monotonic() - self._started_at < self.RESTART_AFTER:
                        raise WriterError("the ingest writer process ended right after it started (see the "
                                          "log above); it is started again in a second")
                loop = asyncio.get_running_loop()
                self._started_at = time.monotonic()
                self.starts += 1
                transport, child = await loop.subprocess_exec(
                    _Child, *self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
                self._transport, self._child = transport, child
                self._send_frame((self.url, self.policies, self.checkpoint_every))

    def _send_frame(self, message: Any) -> None:
        self._write_frame(_frame(message))

    def _write_frame(self, frame: bytes) -> None:
        assert self._transport is not None
        stdin = self._transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        stdin.write(frame)

    def send(self, requests: Sequence[Submitted], now: datetime, done: Done) -> None:
        """Send one group to the running child; *done* gets its outcomes or a WriterError.

        Raises (and sends nothing) when the group cannot be encoded."""
        assert self._child is not None and self.running, "start() the writer process first"
        frame = _frame(([_encode(r) for r in requests], now))
        self._child.waiting.append(done)
        # if the child is gone, its protocol fails every group that waits, this one too
        with contextlib.suppress(OSError, RuntimeError):
            self._write_frame(frame)

    async def write(self, requests: Sequence[Submitted], now: datetime) -> list[Outcome]:
        """send(), awaited: starts the child if need be."""
        await self.start()
        answer: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()

        def done(result: list[Outcome] | BaseException) -> None:
            if isinstance(result, BaseException):
                answer.set_exception(result)
            else:
                answer.set_result(result)

        self.send(requests, now, done)
        return await answer

    async def close(self) -> None:
        """Close the child's stdin and wait for it to finish (it checkpoints as it closes)."""
        transport, child = self._transport, self._child
        self._transport = self._child = None
        if transport is None or child is None:
            return
        stdin = transport.get_pipe_transport(0)
        if stdin is not None:
            stdin.close()
        try:
            await asyncio.wait_for(asyncio.shield(child.exited), timeout=30)
        except TimeoutError:
            log.error("the ingest writer process did not finish in 30 s; killing it")
            transport.kill()
            await child.exited
        transport.close()


def _frame(message: Any) -> bytes:
    """*message* as it crosses the pipe: its length, then its pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(_LENGTH, "big") + data


def _read(stream: BinaryIO) -> Any:
    head = stream.read(_LENGTH)
    if len(head) < _LENGTH:
        return None  # stdin closed: the server is done (or gone)
    return pickle.loads(stream.read(int.from_bytes(head, "big")))


def _write(stream: BinaryIO, message: Any) -> None:
    stream.write(_frame(message))
    stream.flush()


def main() -> int:
    """The child: ``python -m ingest.writer``, started by WriterProcess."""
    from sqlalchemy.engine import make_url

    from engine.db.database import Checkpoints, sqlite_writer
    from engine.db.sendlocks import WebhookTurn
    from ingest.group import write_group

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Ctrl+C in a terminal, or a service manager stopping the whole group, signals us too: the
    # server still has groups for us while it drains, and closes our stdin when it is done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries frames only
    init = _read(source)
    if init is None:
        return 0
    url, policies, checkpoint_every = init
    engine = sqlite_writer(url)
    conn = engine.connect()  # kept: a connection per group costs a pool round trip and a rollback
    checkpoints = Checkpoints(url, checkpoint_every)
    turn = WebhookTurn(make_url(url).database or "")
    try:
        while (message := _read(source)) is not None:
            encoded, now = message
            requests = [_decode(r) for r in encoded]
            try:
                with turn.writing(), conn.begin():  # journey work waits meanwhile (sendlocks.WebhookTurn)
                    outcomes = write_group(conn, requests, now, policies)
            except Exception as exc:  # the server answers 503; the provider will retry
                log.exception("storing a group of %d requests failed", len(requests))
                _write(sink, ("error", f"{type(exc).__name__}: {exc}"))
                continue
            try:
                _write(sink, ("ok", [(o.stored, o.duplicates) for o in outcomes]))
            except BrokenPipeError:
                # The server died after sending the group (kill -9): it is committed, nobody is
                # left to tell, and the providers' resends will be counted as duplicates.
                break
            checkpoints.after_write(conn, sum(len(r.items) for r in requests))
    finally:
        turn.close()
        checkpoints.close()
        conn.close()
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
