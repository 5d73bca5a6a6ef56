"""SQLite: a group's rows in and out without SQLAlchemy's work per row.

The SQLite group commit (ingest.committer) writes a few hundred rows at a time while every
request of the group waits, so what each row costs in Python counts as much as what it
costs SQLite. Rows go in by one executemany of a prepared INSERT; rows come out of a SELECT
as one JSON array, parsed at once, instead of a Row object (and a step of the statement,
each letting go of the interpreter lock and taking it back) per row.

Values are converted by SQLAlchemy's bind processors for the dialect, so they are stored
exactly as SQLAlchemy stores them and read back by SQLAlchemy as it would read its own.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import JSON, Table
from sqlalchemy.engine import Connection

Processor = Callable[[Any], Any] | None

# (table, columns, conflict clause) -> the INSERT and each column's bind processor
_PREPARED: dict[tuple[str, tuple[str, ...], str], tuple[str, list[Processor]]] = {}


def insert_rows(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], conflict: str = "") -> int:
    """INSERT *rows* (dicts with the same keys, in the same order); how many were inserted.

    *conflict* is an ``ON CONFLICT ..`` clause."""
    if not rows:
        return 0
    columns = tuple(rows[0])
    key = (table.name, columns, conflict)
    prepared = _PREPARED.get(key)
    if prepared is None:
        sql = (f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
               f"{conflict}")
        prepared = sql, [table.c[name].type.bind_processor(conn.dialect) for name in columns]
        _PREPARED[key] = prepared
    sql, processors = prepared
    params = [tuple(value if process is None else process(value)
                    for value, process in zip(row.values(), processors, strict=True)) for row in rows]
    count: int = _cursor(conn, sql, params, many=True).rowcount
    return count


def select_rows(conn: Connection, table: Table, columns: Sequence[str], where: str,
                params: Sequence[Any]) -> list[list[Any]]:
    """The *columns* of *table*'s rows that match *where* (``?`` placeholders), in one step.

    JSON columns come back parsed, as SQLAlchemy would give them."""
    values = ", ".join(f"json({name})" if isinstance(table.c[name].type, JSON) else name for name in columns)
    sql = f"SELECT json_group_array(json_array({values})) FROM {table.name} WHERE {where}"
    rows: list[list[Any]] = json.loads(_cursor(conn, sql, tuple(params)).fetchone()[0])
    return rows


def scalar(conn: Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    """The one value *sql* selects."""
    return _cursor(conn, sql, tuple(params)).fetchone()[0]


def _cursor(conn: Connection, sql: str, params: Any, many: bool = False) -> Any:
    """Run *sql* in *conn*'s transaction; on pysqlite, on the driver's connection itself:
    SQLAlchemy's execution context costs more than a small statement."""
    raw = conn.connection.driver_connection
    if isinstance(raw, sqlite3.Connection):
        return raw.executemany(sql, params) if many else raw.execute(sql, params)
    return conn.exec_driver_sql(sql, params)
