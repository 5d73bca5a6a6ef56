"""Opt-outs and sends on one contact, kept apart (invariant 7).

A send holds its contact's gate shared from the suppression check until the provider has
answered; an opt-out takes the gates of its contacts exclusively until its suppressions
are committed. So a send either finished before the opt-out committed, or it starts
after and sees the suppression: no message leaves after an opt-out commits.

In one process this gate is the guarantee. Across processes the same rule is kept by
:mod:`engine.db.sendlocks` on SQLite (``journeys serve`` runs ingest and the executor in
processes of their own) and by row locks on the contact on PostgreSQL: ``FOR SHARE`` by the
send, ``FOR UPDATE`` by the opt-out.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from engine.db.sendlocks import lock_order


@dataclass
class _State:
    readers: int = 0
    writer: bool = False
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


class ContactGates:
    def __init__(self) -> None:
        # Weak: a contact's state lives exactly as long as someone holds or waits for it.
        self._states: weakref.WeakValueDictionary[str, _State] = weakref.WeakValueDictionary()

    def _state(self, contact_id: str) -> _State:
        state = self._states.get(contact_id)
        if state is None:
            state = _State()
            self._states[contact_id] = state
        return state

    @asynccontextmanager
    async def sending(self, contact_id: str | None) -> AsyncIterator[None]:
        if contact_id is None:
            yield
            return
        state = self._state(contact_id)
        async with state.changed:
            await state.changed.wait_for(lambda: not state.writer)
            state.readers += 1
        try:
            yield
        finally:
            async with state.changed:
                state.readers -= 1
                state.changed.notify_all()

    @asynccontextmanager
    async def opting_out(self, contact_ids: Iterable[str]) -> AsyncIterator[None]:
        held: list[tuple[str, _State]] = []
        try:
            for contact_id in lock_order(contact_ids):  # one order everywhere: no deadlock
                state = self._state(contact_id)
                async with state.changed:
                    await state.changed.wait_for(lambda s=state: not s.writer)  # type: ignore[misc]
                    state.writer = True
                    await state.changed.wait_for(lambda s=state: s.readers == 0)  # type: ignore[misc]
                held.append((contact_id, state))
            yield
        finally:
            for _, state in held:
                async with state.changed:
                    state.writer = False
                    state.changed.notify_all()


GATES = ContactGates()
