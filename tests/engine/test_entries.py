"""The generated entries (engine.entries): what entering a state produces, for every way in."""

from __future__ import annotations

from datetime import timedelta

from engine.interpreter import action_key, decide, timer_id
from tests.engine.test_interpreter import BASIC, T0, ev, journey, run, timer_event

TIMED = """
journey: timed
version: 3
trigger: [{on: order.created}]
vars: {n: "{{ event.data.n }}"}
exit:
  - on: order.refunded
    to: refunded
initial: waiting
states:
  waiting:
    enter: [{action: send_sms, with: {body: "n={{ vars.n }}"}}]
    on:
      order.note:
        to: noted
        do: [{action: http, with: {url: "https://x.example/{{ instance.state }}/{{ instance.entered_at }}"}}]
      order.check:
        - when: "instance.state == 'waiting' and instance.entered_at < now"
          to: noted
    after:
      1h:
        to: done
        do: [{action: http, with: {url: "https://x.example/late", json: {n: "{{ vars.n }}"}}}]
  noted:
    after: {2h: done}
  done: {enter: [{action: emit, with: {type: order.closed}}], final: true}
  refunded: {final: true}
"""


def test_an_exit_cancels_the_timers_of_whichever_state_it_leaves() -> None:
    cj = journey(BASIC)
    started, refunded = run(cj, ev("order.created", data={"total": 20}), ev("order.refunded"))
    instance = started.instance
    assert instance is not None
    assert refunded.timers_cancelled == (timer_id(instance.id, 1, 0), timer_id(instance.id, 1, 1))
    assert refunded.steps[0].from_state == "waiting" and refunded.instance is not None
    assert (refunded.instance.state, refunded.instance.status) == ("refunded", "completed")

    started = run(cj, ev("order.created", data={"total": 20}))[0]
    reminded = decide(cj, started.instance, timer_event(started), T0 + timedelta(hours=1), None)
    assert reminded.instance is not None and reminded.instance.state == "reminded"
    refunded = decide(cj, reminded.instance, ev("order.refunded"), T0 + timedelta(hours=2), None)
    assert refunded.timers_cancelled == (timer_id(reminded.instance.id, 2, 0),)
    assert refunded.steps[0].from_state == "reminded" and refunded.reason == "exit on order.refunded to refunded"


def test_a_timer_with_do_into_a_final_state() -> None:
    cj = journey(TIMED)
    started = run(cj, ev("order.created", data={"n": 7}))[0]
    instance = started.instance
    assert instance is not None and started.timers_set[0].delay == "1h"
    fired = decide(cj, instance, timer_event(started), T0 + timedelta(hours=1), None)
    assert (fired.outcome, fired.reason) == ("ended", "after 1h: waiting -> done")
    assert [(a.key, a.action, a.idx, a.seq, a.state) for a in fired.actions] == [
        (action_key(instance.id, 2, 0), "http", 0, 2, "done"),
        (action_key(instance.id, 2, 1), "emit", 1, 2, "done"),
    ]
    assert fired.actions[0].inputs == {"url": "https://x.example/late", "json": {"n": 7}}
    assert [(s.kind, s.from_state, s.to_state) for s in fired.steps] == [
        ("transition", "waiting", "done"), ("completed", None, "done")]
    assert fired.timers_set == () and fired.timers_cancelled == (timer_id(instance.id, 1, 0),)
    assert fired.instance is not None
    assert (fired.instance.status, fired.instance.ended_at, fired.instance.seq) == ("completed", fired.steps[0].at, 2)


def test_inputs_see_the_instance_as_entered_and_guards_as_it_was() -> None:
    cj = journey(TIMED)
    later = T0 + timedelta(minutes=5)
    _, noted = run(cj, ev("order.created", data={"n": 1}), ev("order.note", at=later))
    assert noted.actions[0].inputs == {"url": f"https://x.example/noted/{later}"}
    assert noted.timers_set[0].due_at == later + timedelta(hours=2)
    _, checked = run(cj, ev("order.created", data={"n": 1}), ev("order.check", at=later))
    assert checked.outcome == "transitioned" and checked.instance is not None and checked.instance.state == "noted"


PLAIN = """
journey: plain
version: 1
{extra}
trigger: [{{on: order.created, when: "event.data.n > 0"}}]
vars: {{n: "{{{{ event.data.n }}}}"}}
initial: waiting
states:
  waiting:
    enter: [{{action: send_sms, with: {{body: "n={{{{ vars.n }}}} at {{{{ now }}}}"}}}}]
    on: {{order.note: done}}
    after: {{1h: done}}
  done: {{final: true}}
"""


def test_scopes_leave_instance_out_only_where_nothing_could_read_it() -> None:
    plain = journey(PLAIN.format(extra=""))
    named = journey(PLAIN.format(extra='description: "one instance per order"'))
    assert not plain.instance_in_scope
    assert named.instance_in_scope and journey(BASIC).instance_in_scope
    # Leaving it out changes no decision.
    events = [ev("order.created", data={"n": 3}), ev("order.note", at=T0 + timedelta(minutes=1))]
    for a, b in zip(run(plain, *events), run(named, *events), strict=True):
        assert a == b
