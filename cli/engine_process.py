"""The journey work of ``journeys serve`` (engine, timers, actions) in a process of its own.

Webhooks come first: a provider must get its answer at once whatever the journeys are
doing. In the server's process the engine, the timers and the executor took the event
loop and the core from the requests whenever both were busy. Here they run in a child
process at the lowest CPU priority (Linux's SCHED_IDLE: it runs on CPU time nobody else
wants; elsewhere nice 10), except on SQLite the thread that writes its transactions, which
must not be starved while it holds the lock the webhooks wait for. When the machine is
busy, the kernel gives the webhook path the cores and journey work lags; the events table
is the buffer, and the child catches up when the burst is over. On SQLite it also lets the
webhook writer go first at the database's one write lock (engine.db.sendlocks.WebhookTurn),
and writes each transaction in one go from a thread (Database.transaction), so a
transaction holds the lock as briefly as it can.

The child is woken rather than polling: after every group commit that stored new events
the server sends it SIGUSR1 (signals do not queue, so a burst of them costs one wake-up),
and the engine, the executor and the timers wake each other in the child. It still looks
every few hundred milliseconds on its own, for what other processes write.

Life cycle: the child says ``ready`` on its stdout once its handlers are in place (before
that a SIGUSR1 would kill it). It exits when its stdin closes, which includes the server
dying, or on SIGTERM, after its batch in progress (the jobs in flight finish and are
written, claimed events are given back). It ignores SIGINT, which a terminal sends to the
whole process group: the server drains its requests first, then closes the child's stdin.
A child that dies is started again after a second; its claims come back to the new one
when their leases end (seconds). Its log lines go to the server's stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger("journeys.serve")

NICE = 10  # the child's CPU priority below the server's: weight 110 against 1024 when both want a core
RESTART_AFTER = 1.0  # seconds before a child that died is started again
STOP_WITHIN = 30.0  # seconds the child has to finish its batch when the server stops
READY = b"ready\n"


class EngineProcess:
    """The server's side: starts the child, restarts it if it dies, wakes it, stops it."""

    def __init__(self, folder: Path, environ: Mapping[str, str]) -> None:
        self.folder = folder
        self.environ = dict(environ)
        self._proc: asyncio.subprocess.Process | None = None
        self._ready = False
        self.problem: str | None = "the engine process is starting"

    def wake(self) -> None:
        """New events were committed: the child looks now (cheap: one kill(2))."""
        proc = self._proc
        if proc is not None and self._ready and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGUSR1)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._one(stop)
            except Exception:
                log.exception("the engine process could not be started")
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RESTART_AFTER)

    async def _one(self, stop: asyncio.Event) -> None:
        self._ready = False
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.engine_process", str(self.folder),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=self.environ)
        self._proc = proc
        assert proc.stdout is not None and proc.stdin is not None
        ready = asyncio.ensure_future(proc.stdout.readline())
        ended = asyncio.ensure_future(proc.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((ready, ended, stopped), return_when=asyncio.FIRST_COMPLETED)
            if ready.done() and ready.result() == READY:
                self._ready = True
                self.problem = None
                await asyncio.wait((ended, stopped), return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set() and proc.returncode is None:
                proc.stdin.close()  # the child finishes its batch and exits
                try:
                    await asyncio.wait_for(asyncio.shield(ended), STOP_WITHIN)
                except TimeoutError:
                    log.error("the engine process did not stop within %g s; killing it", STOP_WITHIN)
                    proc.kill()
                    await ended
            elif proc.returncode is not None:
                self.problem = f"the engine process exited with status {proc.returncode}; restarting it"
                log.error("%s", self.problem)
        finally:
            self._ready = False
            for task in (ready, stopped):
                task.cancel()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def _lowest_priority() -> None:
    """This thread, and the threads it starts from now on, at the lowest CPU priority."""
    os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + NICE)  # this thread, on Linux
    if hasattr(os, "SCHED_IDLE"):
        # Linux: run only on CPU time nobody else wants. Nice 10 alone still took a tenth of a
        # busy core from the webhooks.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def child(folder: Path) -> int:
    """The child's side: the processing loops of ``journeys engine``, woken by SIGUSR1."""
    from cli.serve import logs, prepare, processing, settle
    from journeys.deployment import load_deployment

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops us, after draining its requests
    logs()
    deployment = load_deployment(str(folder))

    async def main() -> None:
        db, engine = await prepare(folder, deployment, registered=True)
        # SQLite: the thread that writes the transactions keeps the normal priority (it holds
        # the write lock webhooks wait for: it must not be starved meanwhile); everything the
        # event loop does, and every thread started after this, runs at the lowest.
        if db.is_sqlite:
            await db.reading(lambda conn: None)
        _lowest_priority()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, engine.wake)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        tasks = [asyncio.create_task(run(stop)) for run in processing(folder, deployment, db, engine)]
        # stdin closing (the server is done with us, or died) stops us
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        sys.stdout.buffer.write(READY)
        sys.stdout.buffer.flush()
        closed = asyncio.ensure_future(reader.read())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait((closed, stopped), return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        closed.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException):
                logging.getLogger("journeys.engine").error("loop ended with %r", result)
        await db.dispose()

    settle()
    asyncio.run(main())
    return 0


if __name__ == "__main__":
    sys.exit(child(Path(sys.argv[1])))
