"""Alembic environment: migrations run on a connection that journeys hands over.

``journeys db upgrade`` (and ``serve`` on a new database) open an async connection and
run Alembic on its synchronous face; there is no alembic.ini to keep in step.
"""

from __future__ import annotations

from alembic import context

from engine.db.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reached when run outside journeys
    raise RuntimeError("run migrations with `journeys db upgrade`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,  # SQLite can only ALTER by copying tables; batch mode does that
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
