"""What the send-time checks of a batch of jobs read, in one go.

For every claimed job the executor needs its instance (exited? whose contact? which
vars?), the contact, the contact's suppressions (sends only) and the times of its recent
marketing messages (marketing sends only). Read job by job that is four queries a job;
read for the batch it is four queries a batch. Synchronous, so that it runs whole on one
connection (:meth:`AsyncConnection.run_sync`). It only reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from actions.registry import SEND_CHANNELS
from engine.db.schema import contacts, instances, jobs, messages, suppressions
from engine.instance import Contact
from engine.timeutil import aware


@dataclass(frozen=True)
class Owner:
    """The instance a job belongs to, as far as its checks care."""

    status: str
    contact_id: str | None
    vars: MappingProxyType[str, Any]


@dataclass
class Scene:
    owners: dict[str, Owner] = field(default_factory=dict)
    contacts: dict[str, Contact] = field(default_factory=dict)
    suppressed: dict[str, set[str]] = field(default_factory=dict)
    marketing_sent: dict[str, list[datetime]] = field(default_factory=dict)

    def contact_of(self, job: Any) -> Contact | None:
        owner = self.owners.get(job.instance_id)
        return self.contacts.get(owner.contact_id) if owner is not None and owner.contact_id else None

    def contact_id_of(self, job: Any) -> str | None:
        owner = self.owners.get(job.instance_id)
        return owner.contact_id if owner is not None else None


def contact_from_row(row: Any) -> Contact:
    return Contact(row.id, row.phone, row.email, row.timezone, row.locale,
                   MappingProxyType(dict(row.attributes or {})))


def load_scene(conn: Connection, claimed: Sequence[Any]) -> Scene:
    scene = Scene()
    instance_ids = sorted({job.instance_id for job in claimed})
    for i in conn.execute(select(instances.c.id, instances.c.status, instances.c.contact_id, instances.c.vars)
                          .where(instances.c.id.in_(instance_ids))):
        scene.owners[i.id] = Owner(i.status, i.contact_id, MappingProxyType(dict(i.vars or {})))
    contact_ids = sorted({o.contact_id for o in scene.owners.values() if o.contact_id})
    if contact_ids:
        for c in conn.execute(select(contacts).where(contacts.c.id.in_(contact_ids))):
            scene.contacts[c.id] = contact_from_row(c)
    senders = sorted({who for job in claimed if job.action in SEND_CHANNELS and (who := scene.contact_id_of(job))})
    read_suppressions(conn, scene, senders)
    marketers = sorted({who for job in claimed if job.action in SEND_CHANNELS and job.priority == "marketing"
                        and (who := scene.contact_id_of(job))})
    if marketers:
        for m in conn.execute(select(messages.c.contact_id, messages.c.created_at)
                              .join(jobs, jobs.c.id == messages.c.job_id)
                              .where(messages.c.contact_id.in_(marketers), jobs.c.priority == "marketing")):
            scene.marketing_sent.setdefault(m.contact_id, []).append(aware(m.created_at))
    return scene


def read_suppressions(conn: Connection, scene: Scene, contact_ids: Iterable[str]) -> None:
    """(Re)read the suppressions of *contact_ids* into *scene*."""
    wanted = sorted(set(contact_ids))
    if not wanted:
        return
    for contact_id in wanted:
        scene.suppressed[contact_id] = set()
    for r in conn.execute(select(suppressions.c.contact_id, suppressions.c.channel)
                          .where(suppressions.c.contact_id.in_(wanted))):
        scene.suppressed[r.contact_id].add(r.channel)


__all__ = ["Owner", "Scene", "contact_from_row", "load_scene", "read_suppressions"]
