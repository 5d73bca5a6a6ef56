"""The tables, one schema for SQLite and PostgreSQL.

Times are stored as timezone-aware UTC. JSON columns hold plain data only. Alembic
migrations in ``engine/db/migrations`` create exactly these tables; a test keeps the two
equal.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
})

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (autoincrementing).
SeqType = BigInteger().with_variant(Integer(), "sqlite")
UTC = DateTime(timezone=True)

events = Table(
    "events", metadata,
    # arrival order: events of one partition are applied in this order
    Column("seq", SeqType, primary_key=True, autoincrement=True),
    Column("id", String(200), nullable=False, unique=True),
    Column("source", String(100), nullable=False),
    Column("provider", String(50)),
    Column("provider_event_id", String(300), nullable=False),
    Column("type", String(200), nullable=False),
    Column("channel", String(20)),
    Column("contact_id", String(200)),
    Column("conversation_id", String(300)),
    Column("message_id", String(200)),
    Column("provider_message_id", String(300)),
    Column("occurred_at", UTC, nullable=False),
    Column("received_at", UTC, nullable=False),
    Column("status_text", String(50)),  # the provider's own status word
    Column("text", Text),
    Column("data", JSON, nullable=False),
    Column("schema_version", Integer, nullable=False, server_default="1"),
    # processing
    Column("partition_key", String(300), nullable=False),
    Column("status", String(20), nullable=False, server_default="pending"),
    Column("not_before", UTC),  # set while an event waits for the message it is about
    Column("claimed_by", String(100)),
    Column("lease_until", UTC),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("outcome", Text),
    Column("error", Text),
    Column("processed_at", UTC),
    Column("duplicates", Integer, nullable=False, server_default="0"),
    UniqueConstraint("source", "provider_event_id"),
)
Index("ix_events_pending", events.c.status, events.c.seq)
Index("ix_events_partition", events.c.partition_key, events.c.status, events.c.seq)
# A contact's events: partition_key = "contact:<id>" (engine.store.contact_partition), not an
# index on contact_id: one index with random keys less to write at every ingest commit.

contacts = Table(
    "contacts", metadata,
    Column("id", String(200), primary_key=True),
    Column("phone", String(32), unique=True),
    Column("email", String(320), unique=True),
    Column("timezone", String(64)),
    Column("locale", String(35)),
    Column("attributes", JSON, nullable=False),
    Column("created_at", UTC, nullable=False),
    Column("updated_at", UTC, nullable=False),
)

suppressions = Table(
    "suppressions", metadata,
    Column("contact_id", String(200), primary_key=True),
    Column("channel", String(20), primary_key=True),
    Column("reason", Text),
    Column("event_id", String(200)),
    Column("created_at", UTC, nullable=False),
)

journey_versions = Table(
    "journey_versions", metadata,
    Column("journey", String(63), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("content_hash", String(64), nullable=False),
    Column("definition", JSON, nullable=False),
    Column("file", Text),
    Column("registered_at", UTC, nullable=False),
)

instances = Table(
    "instances", metadata,
    Column("id", String(64), primary_key=True),
    Column("journey", String(63), nullable=False),
    Column("version", Integer, nullable=False),
    Column("subject", String(300), nullable=False),
    Column("contact_id", String(200)),
    Column("state", String(64), nullable=False),
    Column("status", String(20), nullable=False),
    Column("vars", JSON, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("started_at", UTC, nullable=False),
    Column("entered_at", UTC, nullable=False),
    Column("ended_at", UTC),
    Column("goal_reached_at", UTC),
    Column("error", Text),
    Column("recent_events", JSON, nullable=False),
    Column("updated_at", UTC, nullable=False),
)
# One active instance per (journey, subject), enforced by the database itself.
Index("uq_instances_active", instances.c.journey, instances.c.subject, unique=True,
      sqlite_where=text("status = 'active'"), postgresql_where=text("status = 'active'"))
Index("ix_instances_journey_subject", instances.c.journey, instances.c.subject, instances.c.ended_at)
Index("ix_instances_contact", instances.c.contact_id, instances.c.started_at)

steps = Table(
    "steps", metadata,
    Column("id", SeqType, primary_key=True, autoincrement=True),
    Column("instance_id", String(64), nullable=False),
    Column("at", UTC, nullable=False),
    Column("kind", String(20), nullable=False),
    Column("event_id", String(200)),
    Column("event_type", String(200)),
    Column("from_state", String(64)),
    Column("to_state", String(64)),
    Column("detail", Text),
)
Index("ix_steps_instance", steps.c.instance_id, steps.c.id)

timers = Table(
    "timers", metadata,
    Column("id", String(120), primary_key=True),
    Column("instance_id", String(64), nullable=False),
    Column("partition_key", String(300), nullable=False),
    Column("due_at", UTC, nullable=False),
    Column("state", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("delay", String(40), nullable=False),
    Column("status", String(20), nullable=False, server_default="pending"),
)
Index("ix_timers_due", timers.c.status, timers.c.due_at)
Index("ix_timers_instance", timers.c.instance_id)

jobs = Table(
    "jobs", metadata,
    Column("id", String(140), primary_key=True),  # the idempotency key
    Column("instance_id", String(64), nullable=False),
    Column("journey", String(63), nullable=False),
    Column("action", String(100), nullable=False),
    Column("inputs", JSON, nullable=False),
    Column("retry", JSON, nullable=False),
    Column("priority", String(20), nullable=False),
    Column("status", String(20), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTC, nullable=False),
    Column("claimed_by", String(100)),
    Column("lease_until", UTC),
    Column("last_error", Text),
    Column("result", JSON),
    Column("created_at", UTC, nullable=False),
    Column("updated_at", UTC, nullable=False),
)
Index("ix_jobs_due", jobs.c.status, jobs.c.next_attempt_at)
Index("ix_jobs_instance", jobs.c.instance_id)

messages = Table(
    "messages", metadata,
    Column("id", String(64), primary_key=True),
    Column("channel", String(20), nullable=False),
    Column("provider", String(50), nullable=False),
    Column("provider_message_id", String(300)),
    Column("status", String(20), nullable=False),
    Column("body", Text),
    Column("to", String(320)),
    Column("instance_id", String(64)),
    Column("contact_id", String(200)),
    Column("job_id", String(140)),
    Column("created_at", UTC, nullable=False),
    Column("updated_at", UTC, nullable=False),
    UniqueConstraint("provider", "provider_message_id"),
)
Index("ix_messages_contact", messages.c.contact_id, messages.c.created_at)
