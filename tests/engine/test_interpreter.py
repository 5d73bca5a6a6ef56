"""The interpreter's rules, one by one (the journey language and the order of message statuses)."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest

from engine.compiled import CompiledJourney, compile_journey
from engine.decision import Decision
from engine.events import Event
from engine.instance import Contact, History, Instance
from engine.interpreter import decide
from journeys.loader import journey_from_text

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
ANA = Contact(id="c-1", phone="+4915112345678", email="ana@example.com")
_ids = iter(range(1, 1_000_000))


def journey(text: str) -> CompiledJourney:
    return compile_journey(journey_from_text(textwrap.dedent(text)))


def ev(type: str, at: datetime = T0, **fields: Any) -> Event:
    data = fields.pop("data", {})
    fields.setdefault("contact_id", ANA.id)
    return Event(id=f"e{next(_ids)}", type=type, occurred_at=at, data=MappingProxyType(data), **fields)


def run(cj: CompiledJourney, *events: Event, contact: Contact = ANA, **kw: Any) -> list[Decision]:
    """Feed events in order to one instance (started by the first), like the runtime would."""
    out, instance = [], None
    for event in events:
        decision = decide(cj, instance, event, event.occurred_at, contact, **kw)
        out.append(decision)
        if decision.instance is not None:
            instance = decision.instance
    return out


def timer_event(decision: Decision, index: int = 0) -> Event:
    timer = decision.timers_set[index]
    return Event(id=f"timer:{timer.id}", type="timer.fired", occurred_at=timer.due_at,
                 data=MappingProxyType({"instance_id": timer.instance_id, "state": timer.state, "seq": timer.seq,
                                        "index": timer.idx}))


BASIC = """
journey: basic
version: 1
trigger:
  - on: order.created
    when: "event.data.total > 10"
  - on: order.imported
vars:
  total: "{{ event.data.total }}"
  label: "order of {{ vars.total }}"
exit:
  - on: order.cancelled
  - on: order.refunded
    to: refunded
goal: {on: order.paid, within: 2d}
initial: waiting
states:
  waiting:
    enter: [{action: send_sms, with: {body: "Total {{ vars.total }}"}}]
    on:
      order.paid:
        to: done
        do: [{action: http, with: {url: "https://x.example/{{ instance.id }}", json: {n: "{{ vars.total }}"}}}]
      order.cancelled: done
      order.note:
        - when: "event.text == 'a'"
          to: a
        - when: "event.text == 'b'"
          to: b
      order.touched: waiting
    after: {1h: reminded, 1d: done}
  reminded:
    enter: [{action: send_email, with: {subject: "Reminder", body: "{{ vars.label }}"}}]
    on: {order.paid: done}
    after: {1h: done}
  a: {on: {order.paid: done}}
  b: {on: {order.paid: done}}
  done: {enter: [{action: emit, with: {type: order.closed}}], final: true}
  refunded: {final: true}
"""


@pytest.fixture(scope="module")
def basic() -> CompiledJourney:
    return journey(BASIC)


class TestStart:
    def test_trigger_with_guard_starts(self, basic: CompiledJourney) -> None:
        [d] = run(basic, ev("order.created", data={"total": 40}))
        assert d.outcome == "started" and d.instance is not None
        assert (d.instance.state, d.instance.status, d.instance.seq) == ("waiting", "active", 1)
        assert dict(d.instance.vars) == {"total": 40, "label": "order of 40"}
        assert [a.action for a in d.actions] == ["send_sms"]
        assert d.actions[0].inputs["body"] == "Total 40"
        assert [(t.delay, t.due_at) for t in d.timers_set] == [("1h", T0 + timedelta(hours=1)),
                                                               ("1d", T0 + timedelta(days=1))]

    def test_guard_false_and_no_trigger(self, basic: CompiledJourney) -> None:
        [d] = run(basic, ev("order.created", data={"total": 5}))
        assert (d.outcome, d.instance) == ("not_started", None)
        [d] = run(basic, ev("order.paid"))
        assert d.outcome == "not_started" and "no trigger on order.paid" in d.reason

    def test_second_trigger_in_the_list(self, basic: CompiledJourney) -> None:
        [d] = run(basic, ev("order.imported", data={"total": 1}))
        assert d.outcome == "started"

    def test_trigger_guard_error_starts_nothing(self, basic: CompiledJourney) -> None:
        [d] = run(basic, ev("order.created", data={}))
        assert d.outcome == "not_started" and "no attribute 'total'" in d.reason

    def test_vars_error_fails_the_instance(self, basic: CompiledJourney) -> None:
        [d] = run(basic, ev("order.imported", data={}))
        assert d.outcome == "failed" and d.instance is not None and d.instance.status == "failed"
        assert d.actions == () and d.timers_set == ()
        assert "total" in (d.instance.error or "")

    def test_instance_ids_are_deterministic(self, basic: CompiledJourney) -> None:
        event = ev("order.created", data={"total": 40})
        first = decide(basic, None, event, T0, ANA)
        again = decide(basic, None, event, T0, ANA)
        assert first == again
        assert first.instance is not None and first.instance.id.startswith("i-")


class TestReentry:
    CJ = """
    journey: re
    version: 1
    trigger: {on: a.b}
    reentry: REENTRY
    initial: s
    states: {s: {on: {c.d: e}}, e: {final: true}}
    """

    @pytest.mark.parametrize("mode,after,started", [
        ("never", timedelta(days=365), False),
        ("always", timedelta(0), True),
        ("7d", timedelta(days=6), False),
        ("7d", timedelta(days=7), True),
    ])
    def test_after_an_end(self, mode: str, after: timedelta, started: bool) -> None:
        cj = journey(self.CJ.replace("REENTRY", mode))
        history = History(count=1, last_ended_at=T0)
        d = decide(cj, None, ev("a.b", T0 + after), T0 + after, ANA, history=history)
        assert (d.outcome == "started") is started

    def test_ended_instance_counts_as_history(self) -> None:
        cj = journey(self.CJ.replace("REENTRY", "never"))
        _first, second = run(cj, ev("a.b"), ev("c.d"))
        assert second.instance is not None and second.instance.status == "completed"
        d = decide(cj, second.instance, ev("a.b"), T0, ANA)
        assert d.outcome == "not_started" and "reentry: never" in d.reason

    def test_one_active_instance_per_subject(self) -> None:
        cj = journey(self.CJ.replace("REENTRY", "always"))
        first, again = run(cj, ev("a.b"), ev("a.b"))
        assert again.outcome == "ignored" and again.instance is not None and first.instance is not None
        # the same instance, in the same state; it only remembers that it saw the event
        assert again.instance.evolve(recent_events=()) == first.instance.evolve(recent_events=())
        assert again.actions == () and again.timers_set == ()


class TestSubject:
    def test_conversation_and_expression(self) -> None:
        base = "journey: s\nversion: 1\nsubject: SUBJECT\ntrigger: {on: a.b}\ninitial: s\nstates: {s: {final: true}}\n"
        conv = journey(base.replace("SUBJECT", "conversation"))
        [d] = run(conv, ev("a.b", conversation_id="sms:+49"))
        assert d.instance is not None and d.instance.subject == "sms:+49"
        [d] = run(conv, ev("a.b"))
        assert d.outcome == "not_started" and "no subject" in d.reason
        expr = journey(base.replace("SUBJECT", "\"event.data.order_id\""))
        [d] = run(expr, ev("a.b", data={"order_id": 7}))
        assert d.instance is not None and d.instance.subject == "7"


class TestTransitions:
    def test_do_runs_before_enter_with_ordered_keys(self, basic: CompiledJourney) -> None:
        start, paid = run(basic, ev("order.created", data={"total": 40}), ev("order.paid"))
        assert paid.outcome == "ended" and paid.instance is not None
        assert (paid.instance.state, paid.instance.status) == ("done", "completed")
        assert [(a.action, a.idx, a.seq) for a in paid.actions] == [("http", 0, 2), ("emit", 1, 2)]
        assert paid.actions[0].inputs == {"url": f"https://x.example/{start.instance.id}",  # type: ignore[union-attr]
                                          "json": {"n": 40}}
        assert paid.actions[0].key == f"{start.instance.id}:2:0"  # type: ignore[union-attr]
        assert set(paid.timers_cancelled) == {t.id for t in start.timers_set}
        assert paid.timers_set == ()

    def test_guarded_list_first_match_wins_and_no_match_is_ignored(self, basic: CompiledJourney) -> None:
        _, a = run(basic, ev("order.created", data={"total": 40}), ev("order.note", text="a"))
        assert a.instance is not None and a.instance.state == "a"
        _, b = run(basic, ev("order.created", data={"total": 40}), ev("order.note", text="b"))
        assert b.instance is not None and b.instance.state == "b"
        _, c = run(basic, ev("order.created", data={"total": 40}), ev("order.note", text="c"))
        assert c.outcome == "ignored" and "no transition on order.note" in c.reason

    def test_self_transition_re_enters(self, basic: CompiledJourney) -> None:
        start, again = run(basic, ev("order.created", data={"total": 40}),
                           ev("order.touched", T0 + timedelta(minutes=30)))
        assert again.outcome == "transitioned" and again.instance is not None
        assert (again.instance.state, again.instance.seq) == ("waiting", 2)
        assert [a.action for a in again.actions] == ["send_sms"]
        assert set(again.timers_cancelled) == {t.id for t in start.timers_set}
        assert [t.due_at for t in again.timers_set] == [T0 + timedelta(minutes=90), T0 + timedelta(days=1, minutes=30)]
        assert not {t.id for t in again.timers_set} & {t.id for t in start.timers_set}

    def test_timer_fires_and_stale_timer_is_ignored(self, basic: CompiledJourney) -> None:
        start = run(basic, ev("order.created", data={"total": 40}))[0]
        assert start.instance is not None
        fired = decide(basic, start.instance, timer_event(start, 0), T0 + timedelta(hours=1), ANA)
        assert fired.outcome == "transitioned" and fired.instance is not None
        assert fired.instance.state == "reminded"
        assert [a.action for a in fired.actions] == ["send_email"]
        assert fired.actions[0].inputs["body"] == "order of 40"
        stale = decide(basic, fired.instance, timer_event(start, 1), T0 + timedelta(days=1), ANA)
        assert stale.outcome == "ignored" and "stale timer" in stale.reason

    def test_ended_instances_do_not_move(self, basic: CompiledJourney) -> None:
        decisions = run(basic, ev("order.created", data={"total": 40}), ev("order.paid"), ev("order.note", text="a"))
        assert decisions[2].outcome == "not_started"


class TestExitAndGoal:
    def test_exit_wins_over_a_state_transition(self, basic: CompiledJourney) -> None:
        _, cancelled = run(basic, ev("order.created", data={"total": 40}), ev("order.cancelled"))
        assert cancelled.outcome == "ended" and cancelled.instance is not None
        # exit without `to`: exited, where it was, and no enter actions of `done`
        assert (cancelled.instance.status, cancelled.instance.state) == ("exited", "waiting")
        assert cancelled.actions == ()
        assert len(cancelled.timers_cancelled) == 2

    def test_exit_to_a_final_state_completes(self, basic: CompiledJourney) -> None:
        _, refunded = run(basic, ev("order.created", data={"total": 40}), ev("order.refunded"))
        assert refunded.instance is not None
        assert (refunded.instance.status, refunded.instance.state) == ("completed", "refunded")
        assert [s.kind for s in refunded.steps] == ["exited", "completed"]

    def test_goal_within_the_window(self, basic: CompiledJourney) -> None:
        _, paid = run(basic, ev("order.created", data={"total": 40}), ev("order.paid", T0 + timedelta(days=1)))
        assert paid.instance is not None and paid.instance.goal_reached_at == T0 + timedelta(days=1)
        assert next(s.kind for s in paid.steps) == "goal"

    def test_goal_too_late(self, basic: CompiledJourney) -> None:
        _, paid = run(basic, ev("order.created", data={"total": 40}), ev("order.paid", T0 + timedelta(days=3)))
        assert paid.instance is not None and paid.instance.goal_reached_at is None


class TestFailures:
    CJ = """
    journey: f
    version: 1
    trigger: {on: a.b}
    initial: s
    states:
      s:
        on:
          action.failed: handled
          c.d:
            - when: "event.data.n > 0"
              to: e
        after: {1h: e}
      handled: {final: true}
      e: {final: true}
    """

    def test_guard_error_fails_the_instance(self) -> None:
        cj = journey(self.CJ)
        start, bad = run(cj, ev("a.b"), ev("c.d", data={}))
        assert bad.outcome == "failed" and bad.instance is not None and bad.instance.status == "failed"
        assert "no attribute 'n'" in (bad.instance.error or "")
        assert bad.actions == () and bad.timers_set == ()
        assert set(bad.timers_cancelled) == {t.id for t in start.timers_set}
        assert [s.kind for s in bad.steps] == ["failed"]

    def test_action_failed_is_an_event_like_any_other(self) -> None:
        cj = journey(self.CJ)
        start = run(cj, ev("a.b"))[0]
        assert start.instance is not None
        other = decide(cj, start.instance, ev("action.failed", data={"instance_id": "i-other"}), T0, ANA)
        assert other.outcome == "ignored"
        mine = decide(cj, start.instance, ev("action.failed", data={"instance_id": start.instance.id}), T0, ANA)
        assert mine.instance is not None and mine.instance.state == "handled"


class TestMessagesAndDuplicates:
    CJ = """
    journey: m
    version: 1
    trigger: {on: a.b}
    initial: s
    states:
      s:
        on:
          message.delivered: s
          message.sent: s
          message.opened: s
        after: {1d: e}
      e: {final: true}
    """

    @pytest.mark.parametrize("status,event_type,passes", [
        (None, "message.sent", True),
        ("sent", "message.delivered", True),
        ("delivered", "message.sent", False),
        ("delivered", "message.delivered", False),
        ("read", "message.delivered", False),
        ("failed", "message.delivered", False),
        ("delivered", "message.opened", True),
        ("failed", "message.opened", True),
    ])
    def test_status_order(self, status: str | None, event_type: str, passes: bool) -> None:
        cj = journey(self.CJ)
        start = run(cj, ev("a.b"))[0]
        d = decide(cj, start.instance, ev(event_type, message_id="m1"), T0, ANA, message_status=status)
        assert (d.outcome == "transitioned") is passes
        if not passes:
            assert d.reason.startswith("stale status")

    def test_duplicate_event_changes_nothing(self) -> None:
        cj = journey(self.CJ)
        start = run(cj, ev("a.b"))[0]
        event = ev("message.opened", message_id="m1")
        first = decide(cj, start.instance, event, T0, ANA)
        assert first.outcome == "transitioned"
        again = decide(cj, first.instance, event, T0, ANA)
        assert again.outcome == "duplicate" and again.actions == () and again.instance == first.instance
        assert not again.changed


def test_version_mismatch_is_ignored() -> None:
    cj = journey(BASIC)
    other = Instance(id="i-x", journey="basic", version=2, subject="c-1", state="waiting", status="active",
                     started_at=T0, entered_at=T0)
    assert decide(cj, other, ev("order.paid"), T0, ANA).outcome == "ignored"
