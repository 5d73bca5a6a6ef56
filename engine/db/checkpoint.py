"""Copying SQLite's write-ahead log back into the database file, beside the writers.

By default the connection whose commit finds the log over 1,000 pages copies it back
(a checkpoint), and that commit waits for the copy and its fsync: a few milliseconds at
random, tens at worst. The ingest writer turns that off (Database.sqlite_writer) and a
Checkpointer does the copying on a connection and thread of its own. A PASSIVE checkpoint
takes no lock that writers wait for; SQLite does its I/O without Python's interpreter lock.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("journeys.db")


class Checkpointer:
    def __init__(self, path: str, every: float = 1.0) -> None:
        self.path = path
        self.every = every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="journeys-wal-checkpoint", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after one last checkpoint."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                stopping = self._stop.wait(self.every)
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next round tries again; writers are not affected
                    log.warning("WAL checkpoint of %s failed: %s", self.path, exc)
                if stopping:
                    return
        finally:
            connection.close()
