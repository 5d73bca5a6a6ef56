"""events by contact through the partition index

The partition of an event with a contact is ``contact:<contact_id>``, so
``ix_events_partition`` (partition_key, status, seq) finds a contact's events as well, and
``ix_events_contact`` was a second index with random keys on the busiest table: each one
costs every webhook a page written (and checkpointed) at commit.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 21:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_contact")


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_contact", ["contact_id", "seq"], unique=False)
